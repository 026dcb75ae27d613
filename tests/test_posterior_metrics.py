import json
from pathlib import Path

import numpy as np
import pytest
import torch

from restore import metrics
from restore.posterior import Posterior


def _gaussian_posterior(truth, sigma, k, seed=0, bias=0.0):
    g = torch.Generator().manual_seed(seed)
    # truth behaves like one more draw from N(mean, sigma^2): a perfectly calibrated posterior
    mean = truth + sigma * torch.randn(truth.shape, generator=g) + bias
    samples = mean + sigma * torch.randn((k, *truth.shape[1:]), generator=g)
    return Posterior(mean=samples.mean(0, keepdim=True), samples=samples)


def test_std_quantile_interval_shapes():
    s = torch.rand(6, 3, 10, 12)
    p = Posterior(mean=s.mean(0, keepdim=True), samples=s)
    assert p.std.shape == (1, 3, 10, 12)
    assert torch.allclose(p.std, s.std(0, keepdim=True))
    lo, hi = p.interval(0.9, method="quantile")
    assert lo.shape == hi.shape == (1, 3, 10, 12) and bool((lo <= hi).all())
    assert torch.allclose(p.quantile(0.5), s.median(0, keepdim=True).values, atol=0.5)  # between order stats
    with pytest.raises(ValueError, match="credible level"):
        p.interval(1.5)
    single = Posterior(mean=s[:1], samples=s[:1])
    assert float(single.std.abs().max()) == 0


def test_calibrated_posterior_has_nominal_coverage():
    truth = torch.rand(1, 1, 64, 64)
    post = _gaussian_posterior(truth, sigma=0.05, k=200)
    assert metrics.coverage(post, truth, 0.9) == pytest.approx(0.9, abs=0.03)
    assert metrics.coverage(post, truth, 0.5) == pytest.approx(0.5, abs=0.04)
    assert metrics.coverage(post, truth, 0.9, method="gaussian") == pytest.approx(0.9, abs=0.03)
    overconfident = Posterior(mean=post.mean, samples=post.mean + (post.samples - post.mean) * 0.2)
    assert metrics.coverage(overconfident, truth, 0.9) < 0.4


def test_coverage_over_a_mask_counts_only_its_pixels():
    truth = torch.zeros(1, 3, 8, 8)
    mean = truth.clone()
    mean[..., :, :2] = 1.0  # the first two columns far off, inside any interval of a zero-spread posterior
    post = Posterior(mean=mean, samples=mean.expand(4, 3, 8, 8).clone())
    left = torch.zeros(1, 1, 8, 8, dtype=torch.bool)
    left[..., :, :2] = True
    assert metrics.coverage(post, truth, 0.9, method="quantile") == pytest.approx(0.75)
    assert metrics.coverage(post, truth, 0.9, method="quantile", where=left) == 0.0
    assert metrics.coverage(post, truth, 0.9, method="quantile", where=~left) == 1.0


def test_std_error_correlation_detects_informative_std():
    truth = torch.zeros(1, 1, 32, 32)
    scale = torch.linspace(0.01, 0.3, 32).view(1, 1, 1, 32).expand(1, 1, 32, 32)
    g = torch.Generator().manual_seed(0)
    samples = truth + scale * torch.randn(50, 1, 32, 32, generator=g)
    mean = truth + scale * torch.randn(1, 1, 32, 32, generator=g)
    p = Posterior(mean=mean, samples=samples)
    assert metrics.std_error_correlation(p, truth) > 0.4
    flat = Posterior(mean=mean, samples=truth + 0.1 * torch.randn(50, 1, 32, 32, generator=g))
    assert abs(metrics.std_error_correlation(flat, truth)) < 0.15


def test_psnr_ssim_values():
    x = torch.rand(2, 3, 32, 32)
    assert torch.allclose(metrics.psnr(x, x), torch.full((2,), 120.0))
    noisy = (x + 0.1).clamp(0, 1)
    mse = ((noisy - x) ** 2).flatten(1).mean(1)
    assert torch.allclose(metrics.psnr(noisy, x), 10 * torch.log10(1 / mse))
    assert torch.allclose(metrics.ssim(x, x), torch.ones(2), atol=1e-5)
    assert bool((metrics.ssim(noisy, x) < 1).all())
    with pytest.raises(ValueError, match="at least 11x11"):
        metrics.ssim(torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 8))


def test_spearman():
    a = torch.arange(100.0)
    assert metrics.spearman(a, a ** 3) == pytest.approx(1.0)
    assert metrics.spearman(a, -a) == pytest.approx(-1.0)


def test_lpips_is_null_with_reason_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    ok, reason = metrics.lpips_status()
    assert not ok and "not found" in reason
    assert metrics.lpips(torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16)) is None
    truth = torch.rand(1, 3, 16, 16)
    rep = metrics.report(_gaussian_posterior(truth, 0.05, 8), truth)
    assert rep["lpips"] is None and "not found" in rep["lpips_reason"]
    json.dumps(rep)


def test_save_writes_every_file(tmp_path):
    truth = torch.rand(1, 3, 20, 24)
    post = _gaussian_posterior(truth, 0.05, 5)
    post.meta = {"solver": "test", "array": np.float32(1.5), "t": torch.tensor([1.0])}
    out = post.save(tmp_path / "res", bit_depth=16, std_format="tiff", extras={"observation.png": truth},
                    truth=truth)
    names = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert names == ["error_vs_std.png", "mean.png", "meta.json", "observation.png", "samples/sample_000.png", "samples/sample_001.png",
                     "samples/sample_002.png", "samples/sample_003.png", "samples/sample_004.png", "samples_grid.png", "std.png",
                     "std.tiff", "std_scale.json"]
    import tifffile
    std = tifffile.imread(out / "std.tiff")
    assert std.dtype == np.float32 and std.shape == (20, 24, 3)
    assert np.allclose(std, post.std[0].permute(1, 2, 0).numpy())
    scale = json.loads((out / "std_scale.json").read_text())
    assert scale["vmin"] == 0 and scale["vmax"] > 0
    assert json.loads((out / "meta.json").read_text())["array"] == 1.5
    post.save(tmp_path / "res")  # overwrite is whole-directory
    assert (tmp_path / "res" / "std.npy").exists() and not (tmp_path / "res" / "std.tiff").exists()
    assert not any(p.name.endswith(".partial") for p in tmp_path.iterdir())


def test_save_never_deletes_a_folder_of_other_files(tmp_path, monkeypatch):
    # save replaces its folder as a whole: pointed at a user's folder it must refuse, not wipe it
    from restore.posterior import OutputError

    post = _gaussian_posterior(torch.rand(1, 3, 12, 12), 0.05, 2)
    user = tmp_path / "Pictures"
    user.mkdir()
    (user / "holiday.jpg").write_bytes(b"precious")
    with pytest.raises(OutputError, match=r"Pictures holds files restore did not write \(holiday.jpg\)"):
        post.save(user)
    assert (user / "holiday.jpg").read_bytes() == b"precious" and len(list(user.iterdir())) == 1
    monkeypatch.chdir(user)
    with pytest.raises(OutputError, match="holiday.jpg"):  # "." is that folder too
        post.save(".")
    with pytest.raises(OutputError, match="is a file"):
        post.save(user / "holiday.jpg")
    own = tmp_path / "Project"  # only a folder named like ours, or ours without the meta.json every result has
    (own / "samples").mkdir(parents=True)
    (own / "samples" / "cat.png").write_bytes(b"mine")
    with pytest.raises(OutputError, match="samples/cat.png"):
        post.save(own)
    (own / "samples" / "cat.png").rename(own / "samples" / "sample_000.png")
    with pytest.raises(OutputError, match=r"holds files restore did not write \(samples\)"):
        post.save(own)
    assert (own / "samples" / "sample_000.png").read_bytes() == b"mine"
    (tmp_path / "empty").mkdir()
    assert (post.save(tmp_path / "empty") / "mean.png").exists()  # an empty folder is fine
    post.save(tmp_path / "empty", extras={"observation.png": post.mean})
    assert (post.save(tmp_path / "empty") / "mean.png").exists()  # so is an earlier result, extras included
    monkeypatch.chdir(tmp_path / "empty")
    assert post.save(".") == Path(".") and (tmp_path / "empty" / "meta.json").exists()


def test_mismatched_shapes_rejected():
    with pytest.raises(ValueError, match="does not match"):
        Posterior(mean=torch.rand(1, 3, 8, 8), samples=torch.rand(4, 1, 8, 8))


def test_viz_pictures(tmp_path):
    from PIL import Image

    from restore import viz

    s = torch.rand(5, 3, 20, 30)
    grid = viz.sample_grid(s, ncol=3)
    assert grid.shape == (2 * 20 + 2, 3 * 30 + 4, 3)
    assert np.allclose(grid[:20, :30], s[0].permute(1, 2, 0).numpy())
    std = torch.zeros(1, 3, 20, 30); std[..., :10] = 0.2
    scale = viz.save_std_heatmap(std, tmp_path / "std.png")
    assert scale["vmax"] == pytest.approx(0.2) and scale["colormap"] == viz.CMAP
    img = np.asarray(Image.open(tmp_path / "std.png").convert("RGB"))
    assert img.shape[1] > img.shape[0] > 50  # the map plus its colour bar
    viz.save_error_vs_std(torch.rand(1, 3, 20, 30), std, torch.rand(1, 3, 20, 30), tmp_path / "e.png")
    viz.save_reliability_plot({"a": {"levels": [0.5, 0.9], "coverage": [0.4, 0.85]}}, tmp_path / "r.png")
    assert (tmp_path / "e.png").stat().st_size > 1000 and (tmp_path / "r.png").stat().st_size > 1000


def test_spectral_gap_sees_blur_and_over_sharpening_and_bounds_paired_mse():
    import skimage.data
    from deepinv.physics.functional import conv2d, gaussian_blur

    from restore.metrics import band_energies, spectral_gap

    x = torch.from_numpy(skimage.data.astronaut()[::4, ::4].astype("float32") / 255).permute(2, 0, 1)[None]
    blurred = conv2d(x, gaussian_blur(sigma=(1.5, 1.5)), padding="reflect")
    noisy = x + 0.05 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    assert spectral_gap(x, x) == 0.0
    assert spectral_gap(blurred, x) > 1e-4 and spectral_gap(noisy, x) > 1e-4  # too little and too much energy
    for other in (blurred, noisy):  # a lower bound on W2^2, hence on the paired MSE
        assert spectral_gap(other, x) <= float(((other - x) ** 2).mean())
    # band energies add up to the per-pixel variance; the gap ignores pairing (a shuffled set scores the same)
    assert torch.isclose(band_energies(x).sum(), ((x - x.mean((-2, -1), keepdim=True)) ** 2).mean(), rtol=1e-4)
    assert spectral_gap(torch.cat([x, blurred]), torch.cat([blurred, x])) < 1e-12  # same set, other order
    with pytest.raises(ValueError, match="one size"):
        spectral_gap(x, x[..., :64, :64])
