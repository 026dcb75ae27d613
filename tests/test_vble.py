"""VBLE mechanics on a tiny CAE made by the training script (the shipped CAE is still to be trained; issue 3)."""

import pytest
import torch

from restore.priors import registry
from restore.solvers import base
from restore.tasks import parse

from conftest import make_image_folder


@pytest.fixture(scope="module")
def tiny_cae(tmp_path_factory):
    from restore.train import cae

    d = tmp_path_factory.mktemp("cae")
    make_image_folder(d / "data", 3, 80, 96)
    cae.main(["--data", str(d / "data"), "--out", str(d / "models" / "cae-natural-q4"), "--ckpt", str(d / "ck.pt"),
              "--N", "16", "--M", "24", "--batch", "2", "--patch", "64", "--val-images", "1", "--val-size", "64",
              "--steps", "3", "--ckpt-every", "3", "--val-every", "100", "--threads", "1"])
    mp = pytest.MonkeyPatch()
    mp.setenv("RESTORE_MODELS", str(d / "models"))
    yield registry.load("cae-natural-q4")
    mp.undo()


def _run(task, x, prior, n=3, seed=0, **cfg):
    y, physics = parse(task).simulate(x, torch.Generator().manual_seed(3))
    # lr 0.02: the 3-step CAE here is untrained, and the paper's 0.1 can make it diverge
    post = base.get("vble", **{"iterations": 30, "stat_samples": 8, "lr": 0.02, **cfg})(
        y, physics, prior, n_samples=n, generator=torch.Generator().manual_seed(seed))
    return y, post


@pytest.mark.parametrize("task", ["deblur:gaussian:sigma=1.5,noise=0.01", "sr:x2", "inpaint:random:missing=0.5"])
def test_shapes_std_and_measurement_fit_improves(task, clean_rgb, tiny_cae):
    y, post = _run(task, clean_rgb, tiny_cae)
    assert post.mean.shape == clean_rgb.shape and post.samples.shape == (3, 3, 48, 48)
    assert float(post.std.mean()) > 0
    hist = post.meta["datafit_history"]
    assert hist[-1] < hist[0]  # the data-fidelity term decreases: gradients reach the latents through g_s


def test_grey_and_determinism(clean_rgb, clean_grey, tiny_cae):
    _, a = _run("denoise:gaussian:sigma=0.1", clean_rgb, tiny_cae, n=2, seed=5)
    _, b = _run("denoise:gaussian:sigma=0.1", clean_rgb, tiny_cae, n=2, seed=5)
    _, c = _run("denoise:gaussian:sigma=0.1", clean_rgb, tiny_cae, n=2, seed=6)
    assert torch.equal(a.samples, b.samples) and not torch.equal(a.samples, c.samples)
    _, g = _run("denoise:gaussian:sigma=0.1", clean_grey, tiny_cae, n=2)
    assert g.mean.shape == (1, 1, 48, 48) and torch.isfinite(g.mean).all()


def test_refuses_quantized_cae_and_wrong_prior_kind(clean_rgb, tiny_cae):
    y, physics = parse("denoise:gaussian:sigma=0.1").simulate(clean_rgb)
    fake = registry.Prior("q", "cae", tiny_cae.module, {"quantized": "int8"})
    with pytest.raises(base.SolverError, match="zero gradients"):
        base.get("vble")(y, physics, fake, n_samples=1)
    wavelet = registry.load("wavelet")
    with pytest.raises(base.SolverError, match="runs on cae priors"):
        base.get("vble")(y, physics, wavelet, n_samples=1)


def test_missing_cae_weights_is_a_clear_error(clean_rgb, tmp_path, monkeypatch):
    from restore import restore

    monkeypatch.setenv("RESTORE_MODELS", str(tmp_path))
    with pytest.raises(registry.PriorError, match="checkpoint not found"):
        restore(clean_rgb, "denoise:gaussian:sigma=0.1", solver="vble", samples=1)


def test_rate_matches_compressai_forward(tiny_cae):
    """Our likelihood evaluation equals the CAE's own training-mode likelihoods at the same noisy latents."""
    from restore.solvers.vble import _hyper_params, _likelihoods

    net = tiny_cae.module
    x = torch.rand(1, 3, 64, 64)
    torch.manual_seed(0)
    with torch.no_grad():
        z = net.g_a(x)
        h = net.h_a(z)
        _, lik_h_ref = net.entropy_bottleneck(h, training=False)  # eval mode: rounds around the medians
        h_hat = net.entropy_bottleneck.quantize(h, "dequantize", net.entropy_bottleneck._get_medians())
        scales, means = _hyper_params(net, h_hat, z)
        _, lik_h = _likelihoods(net, z, h_hat, scales, means)
    assert torch.allclose(torch.log(lik_h).sum(), torch.log(lik_h_ref).sum(), rtol=1e-4)


def test_early_stopping_stops_sooner_at_the_same_quality(clean_rgb, monkeypatch):
    """The default stops on the objective; early_stop=None runs the paper's fixed count (shipped CAE)."""
    from restore.metrics import psnr

    monkeypatch.delenv("RESTORE_MODELS", raising=False)  # the tiny_cae fixture points it elsewhere
    cae = registry.load("cae-natural-q2")
    y, physics = parse("denoise:gaussian:sigma=0.1").simulate(clean_rgb, torch.Generator().manual_seed(3))
    run = lambda **cfg: base.get("vble", stat_samples=8, **cfg)(  # noqa: E731
        y, physics, cae, n_samples=2, generator=torch.Generator().manual_seed(0))
    early, paper = run(), run(early_stop=None)
    assert paper.meta["iterations_run"] == 300 and early.meta["iterations_run"] < 300
    assert abs(float(psnr(early.mean, clean_rgb)) - float(psnr(paper.mean, clean_rgb))) < 0.5
    assert float(psnr(early.mean, clean_rgb)) > float(psnr(y, clean_rgb)) + 2


def test_inpainting_runs_its_own_short_count_and_the_paper_preset_restores_400(clean_rgb, monkeypatch):
    """Inpainting stops at inpaint_iterations (the hole drifts on longer runs); cost() follows; preset=paper: 400."""
    task = parse("inpaint:box:size=0.3,noise=0.01")
    monkeypatch.delenv("RESTORE_MODELS", raising=False)
    y, physics = task.simulate(clean_rgb, torch.Generator().manual_seed(0))
    post = base.get("vble", stat_samples=4)(y, physics, registry.load("cae-natural-q2"), n_samples=2,
                                            generator=torch.Generator().manual_seed(0))
    assert post.meta["iterations"] == 40 and post.meta["iterations_run"] == 40
    default, paper = base.get("vble"), base.get("vble", preset="paper")
    assert default.config.inpaint_iterations == 40 and paper.config.inpaint_iterations is None
    assert default.cost(task, 8) == pytest.approx(40 * 0.73)  # too short for early stopping to cut
    assert paper.cost(task, 8) == pytest.approx(400 * 0.73)
    assert default.cost(parse("sr:x2"), 8) == pytest.approx(300 * 0.73 * 0.35)


def test_deblurring_starts_from_the_encoding_of_a_wiener_deconvolution(clean_rgb, tiny_cae, monkeypatch):
    """Deblurring's latent starts at g_a(Wiener-Hunt(y)) (PER_FAMILY), which explains y better from the first
    iteration than g_a(y) (shipped CAE); an unknown start is refused."""
    monkeypatch.delenv("RESTORE_MODELS", raising=False)  # the tiny_cae fixture points it elsewhere
    cae = registry.load("cae-natural-q2")
    y, physics = parse("deblur:motion:size=9,noise=0.01").simulate(clean_rgb, torch.Generator().manual_seed(3))
    first_fit = {}
    for label in ("wiener", "observation"):
        post = base.get("vble", iterations=2, stat_samples=2, init_estimate=label)(
            y, physics, cae, n_samples=2, generator=torch.Generator().manual_seed(0))
        first_fit[label] = post.meta["datafit_history"][0]
    assert first_fit["wiener"] < 0.8 * first_fit["observation"], first_fit  # 15.7 against 24.3
    with pytest.raises(base.SolverError, match="init_estimate must be 'wiener' or 'observation'"):
        _run("deblur:gaussian:sigma=1", clean_rgb, tiny_cae, init_estimate="tv")


def test_light_noise_warns_that_the_cae_caps_the_result(clean_rgb, monkeypatch):
    """VBLE fell below a lightly noisy input on held-out crops (benchmarks.lownoise): say so, at each CAE's level."""
    import warnings

    from restore import Restorer

    monkeypatch.delenv("RESTORE_MODELS", raising=False)  # the tiny_cae fixture points it elsewhere
    r = Restorer("vble", iterations=5)
    y, _ = parse("denoise:gaussian:sigma=0.01").simulate(clean_rgb, torch.Generator().manual_seed(0))
    with pytest.warns(RuntimeWarning, match="expected to be below this noisy input"):
        post = r(y, "denoise:gaussian:sigma=0.01", samples=2)
    assert post.meta["prior"] == "cae-natural-q6" and "cae-natural-q6" in post.meta["settings_warning"]  # its pick
    y, _ = parse("denoise:gaussian:sigma=0.1").simulate(clean_rgb, torch.Generator().manual_seed(0))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # heavy noise: no such warning
        post = r(y, "denoise:gaussian:sigma=0.1", samples=2)
    assert "settings_warning" not in post.meta
    # each rate crosses the input at its own level (q2 about 28.3 dB, q6 29.2): a 29.05 dB input (9/255) warns for q2
    y, physics = parse(f"denoise:gaussian:sigma={9 / 255}").simulate(clean_rgb, torch.Generator().manual_seed(0))
    solver = base.get("vble")
    assert "cae-natural-q2" in solver.run_warning(y, physics, registry.load("cae-natural-q2"))
    assert solver.run_warning(y, physics, registry.load("cae-natural-q6")) is None


def test_the_cae_rate_is_picked_per_task_and_a_named_prior_wins(monkeypatch):
    """The best of the three CAE rates per task family on held-out crops (PRIOR_BY_FAMILY): picked when no prior is
    named, recorded so that a result run on another rate reads as stale, and never mixed into a named prior's table."""
    from dataclasses import asdict

    from restore import Restorer, calibration, stale
    from restore.provenance import canonical

    monkeypatch.delenv("RESTORE_MODELS", raising=False)  # the tiny_cae fixture points it elsewhere
    specs = {"denoise:gaussian:sigma=0.1": "cae-natural-q6", "deblur:motion": "cae-natural-q4",
             "deblur:gaussian:sigma=1": "cae-natural-q4", "sr:x2": "cae-natural-q6", "sr:x4": "cae-natural-q2",
             "inpaint:random": "cae-natural-q6", "inpaint:box": "cae-natural-q6", "sr:x3": "cae-natural-q6"}
    assert {s: Restorer("vble").prior_name_for(s) for s in specs} == specs
    named = Restorer("vble", "cae-natural-q2")
    assert {named.prior_name_for(s) for s in specs} == {"cae-natural-q2"}
    assert named.solver.options == {"prior": "cae-natural-q2"}  # recorded with the run's provenance
    paper = Restorer("vble", preset="paper")  # the paper picks its rate per task too, without our Wiener start
    assert paper.prior_name_for("sr:x4") == "cae-natural-q2" and paper.prior_name_for("deblur:motion") == "cae-natural-q4"
    assert paper.solver.settings_for("deblur")[0].init_estimate == "observation"
    # lambda per family too (inpainting 10, x2 SR 2.5), as the paper tunes it, in the preset as well
    assert [named.solver.settings_for(f)[0].lambda_ for f in ("denoise", "sr2", "sr4", "inpaint-region")] == \
        [1.0, 2.5, 1.0, 10.0] == [paper.solver.settings_for(f)[0].lambda_ for f in ("denoise", "sr2", "sr4", "inpaint-region")]
    assert Restorer("pmrf").prior_name_for("sr:x4") == "flow-natural"  # one prior for every task elsewhere

    def ran(options: dict, prior: str, config: dict | None = None) -> dict:
        config = config or canonical(asdict(base.get("vble", **options).config))
        return {"solvers": [{"name": "vble", "options": options, "config": config}],
                "priors": {prior: registry.digest(prior)}}

    assert stale.reasons(ran({}, "cae-natural-q6"), "denoise") == []
    assert stale.reasons(ran({}, "cae-natural-q2"), "denoise") == [
        "solver vble now runs denoise on prior cae-natural-q6 (ran on cae-natural-q2)"]
    assert stale.reasons(ran({"prior": "cae-natural-q2"}, "cae-natural-q2"), "denoise") == []
    # a row from before the per-family choice (q2 for every task): still valid where q2 is the pick (x4 SR)
    before = {k: v for k, v in canonical(asdict(base.get("vble").config)).items() if k != "prior"}
    before["per_family"] = {"deblur": {"init_estimate": "wiener"}}
    assert stale.reasons(ran({}, "cae-natural-q2", before), "sr4") == []
    assert stale.reasons(ran({}, "cae-natural-q2", before), "deblur") == [
        "solver vble now runs deblur on prior cae-natural-q4 (ran on cae-natural-q2)"]
    # a table is one prior's whichever family picks it: the q2 table covers a named q2 run of every family
    table = registry.calibration_table("vble", "cae-natural-q2")
    for family in ("denoise", "deblur", "sr4", "inpaint-random"):
        assert calibration.table_mismatch(table, "cae-natural-q2", asdict(named.solver.config), family,
                                          named.solver.options) is None, family


def test_the_cae_descriptions_name_the_tasks_vble_runs_each_on():
    """`restore list` describes each CAE by what VBLE uses it for: the default names itself so, the others name
    their task families (a rate change in PRIOR_BY_FAMILY must not leave the list saying otherwise)."""
    from restore.priors import registry
    from restore.solvers.vble import PRIOR_BY_FAMILY, VBLESolver

    for name in ("cae-natural-q2", "cae-natural-q4", "cae-natural-q6"):
        text = registry.PRIORS[name].description
        assert ("VBLE's default" in text) == (name == VBLESolver.default_prior), text
        used = [f for f, p in PRIOR_BY_FAMILY.items() if p == name and name != VBLESolver.default_prior]
        words = {"deblur": "deblurring", "sr4": "x4 SR", "sr2": "x2 SR", "denoise": "denoising",
                 "inpaint": "inpainting"}
        assert all(words[f] in text for f in used), (name, used, text)
