"""The reference solver through the common interface: PSNR gains, determinism, uncertainty that means something."""

import pytest
import torch

from restore import metrics
from restore.priors import registry
from restore.solvers import base
from restore.tasks import parse


@pytest.fixture(scope="module")
def wavelet():
    return registry.load("wavelet")


def _run(task, x, prior, n=4, seed=0, **cfg):
    y, physics = parse(task).simulate(x, torch.Generator().manual_seed(7))
    # the wavelet prior's threshold: the learned denoisers' default 0.02 (the paper's epsilon) is too low for it
    solver = base.get("langevin", **{"iterations": 120, "prior_sigma": 0.05, "chains": None, **cfg})
    post = solver(y, physics, prior, n_samples=n, generator=torch.Generator().manual_seed(seed))
    return y, post


@pytest.mark.parametrize("task", ["denoise:gaussian:sigma=0.1", "inpaint:random:missing=0.5,noise=0.01"])
def test_psnr_gain_over_input(task, clean_rgb, wavelet):
    y, post = _run(task, clean_rgb, wavelet)
    gain = float(metrics.psnr(post.mean, clean_rgb) - metrics.psnr(y, clean_rgb))
    assert gain > 1.0, gain
    assert post.mean.shape == clean_rgb.shape and post.samples.shape == (4, 3, 48, 48)
    assert float(post.std.min()) >= 0 and float(post.std.mean()) > 1e-3
    assert metrics.diversity(post) > 1e-3


def test_deblur_gain_and_sr_shape(clean_rgb, wavelet):
    y, post = _run("deblur:gaussian:sigma=1.5,noise=0.01", clean_rgb, wavelet, iterations=200)
    assert float(metrics.psnr(post.mean, clean_rgb)) > float(metrics.psnr(y, clean_rgb)) + 0.3
    y, post = _run("sr:x2", clean_rgb, wavelet, n=2)
    assert y.shape == (1, 3, 24, 24) and post.mean.shape == (1, 3, 48, 48)


def test_grey_images(clean_grey, wavelet):
    y, post = _run("denoise:gaussian:sigma=0.1", clean_grey, wavelet)
    assert post.mean.shape == (1, 1, 48, 48)
    assert float(metrics.psnr(post.mean, clean_grey)) > float(metrics.psnr(y, clean_grey)) + 1


def test_same_seed_same_output_other_seed_differs(clean_rgb, wavelet):
    _, a = _run("denoise:gaussian:sigma=0.1", clean_rgb, wavelet, n=2, seed=3, iterations=30)
    _, b = _run("denoise:gaussian:sigma=0.1", clean_rgb, wavelet, n=2, seed=3, iterations=30)
    _, c = _run("denoise:gaussian:sigma=0.1", clean_rgb, wavelet, n=2, seed=4, iterations=30)
    assert torch.equal(a.samples, b.samples) and torch.equal(a.mean, b.mean)
    assert not torch.equal(a.samples, c.samples)


def test_std_is_larger_where_pixels_are_missing(clean_rgb, wavelet):
    _, post = _run("inpaint:box:size=0.4,noise=0.01", clean_rgb, wavelet, iterations=150)
    mask = parse("inpaint:box:size=0.4").mask(clean_rgb.shape)
    std = post.std.mean(1, keepdim=True)
    assert float(std[mask == 0].mean()) > 2 * float(std[mask == 1].mean())


def test_progress_callback_and_meta(clean_rgb, wavelet):
    seen = []
    y, physics = parse("denoise:gaussian:sigma=0.1").simulate(clean_rgb, torch.Generator().manual_seed(0))
    post = base.get("langevin", iterations=40, prior_sigma=0.05)(y, physics, wavelet, n_samples=2,
                                               generator=torch.Generator().manual_seed(0),
                                               progress=lambda f, m: seen.append(f))
    assert seen[0] == 0 and seen[-1] == 1.0 and seen == sorted(seen)
    assert post.meta["solver"] == "langevin" and post.meta["prior"] == "wavelet"
    assert post.meta["config"]["iterations"] == 40 and post.meta["timings"]["total_s"] > 0
    assert {"torch", "deepinv", "restore"} <= set(post.meta["versions"])


def test_bad_inputs(clean_rgb, wavelet):
    y, physics = parse("denoise:gaussian:sigma=0.1").simulate(clean_rgb)
    solver = base.get("langevin", iterations=5)
    with pytest.raises(base.SolverError, match="n_samples must be"):
        solver(y, physics, wavelet, n_samples=0)
    bad = y.clone(); bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(base.SolverError, match="NaN"):
        solver(bad, physics, wavelet, n_samples=1)
    with pytest.raises(base.SolverError, match="unknown solver 'nope'; known solvers: langevin"):
        base.get("nope")
    with pytest.raises(base.SolverError, match="has no option stepsize"):
        base.get("langevin", stepsize=3)
    assert "needs a known noise level" in base.get("langevin").supports(parse("denoise:real"))


def test_fewer_chains_than_samples_thin_each_chain(clean_rgb, wavelet):
    """K samples from fewer chains are distinct post-burn-in states; the run is as cheap as its chains."""
    y, post = _run("denoise:gaussian:sigma=0.1", clean_rgb, wavelet, n=6, chains=2, iterations=60)
    assert post.samples.shape == (6, 3, 48, 48) and post.meta["chains"] == 2
    flat = post.samples.flatten(1)
    assert float(torch.cdist(flat, flat).add(torch.eye(6) * 1e9).min()) > 0  # no two samples are the same state
    assert post.meta["states_pooled"] == 2 * (60 - int(0.3 * 60))
    assert float(metrics.psnr(post.mean, clean_rgb)) > float(metrics.psnr(y, clean_rgb)) + 1
    with pytest.raises(ValueError, match="need at least 4 post-burn-in"):
        _run("denoise:gaussian:sigma=0.1", clean_rgb, wavelet, n=8, chains=2, iterations=4)


def test_deblurring_chains_start_from_hqs(clean_rgb, wavelet):
    """Deblurring's and random inpainting's family settings start the chains from plug-and-play HQS on a trained
    denoiser: a short run lands nearer the image than from the blurred observation. Other families (a large hole), a
    weight-free prior, the paper preset and an explicit init start from the estimate."""
    task = "deblur:gaussian:sigma=1.5,noise=0.01"
    learned = registry.load("score-natural")
    y, warm = _run(task, clean_rgb, learned, n=2, chains=2, iterations=20, prior_sigma=0.02)
    _, cold = _run(task, clean_rgb, learned, n=2, chains=2, iterations=20, prior_sigma=0.02, init="estimate")
    assert warm.meta["start"] == "hqs" and warm.meta["family_settings"] == {"init": "hqs"}
    assert cold.meta["start"] == "estimate"
    assert float(metrics.psnr(warm.mean, clean_rgb)) > float(metrics.psnr(cold.mean, clean_rgb)) + 0.3
    _, random = _run("inpaint:random:missing=0.5,noise=0.01", clean_rgb, learned, n=2, chains=2, iterations=10)
    assert random.meta["start"] == "hqs" and random.meta["family_settings"]["init_options"]["sigma_max"] == 0.05
    _, box = _run("inpaint:box:size=0.4,noise=0.01", clean_rgb, learned, n=2, chains=2, iterations=10)
    assert box.meta["start"] == "estimate"
    assert _run(task, clean_rgb, wavelet, n=2, chains=2, iterations=4)[1].meta["start"] == "estimate"
    paper = base.get("langevin", preset="paper")
    assert paper.settings_for("deblur")[0].init == "estimate"
    solver = base.get("langevin")
    assert solver.cost(parse(task), 8) > solver.cost(parse("denoise:gaussian:sigma=0.05"), 8) == 100 * 2
    assert solver.cost(parse(task), 8, wavelet) == 100 * 2
    # above HQS's noise range its data steps amplify noise: the chains start from the observation
    assert solver.cost(parse("deblur:gaussian:sigma=1.5,noise=0.1"), 8) == 100 * 2
    with pytest.raises(ValueError, match="init must be 'estimate' or 'hqs'"):
        _run(task, clean_rgb, wavelet, n=2, chains=2, iterations=4, init="tv")
