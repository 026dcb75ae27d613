"""Plug-and-play HQS (PMRF's deblurring first stage) on the shipped denoiser, and how PMRF picks its mean source."""

import dataclasses

import pytest
import torch

from restore import metrics, stale
from restore.priors import registry
from restore.solvers import base, hqs
from restore.solvers.base import initial_estimate
from restore.tasks import parse


def _blurred(clean, spec="deblur:gaussian:sigma=1.5,noise=0.01"):
    return parse(spec).simulate(clean, torch.Generator().manual_seed(0))


def test_hqs_deblurs_past_its_start_and_the_observation(clean_rgb):
    y, physics = _blurred(clean_rgb)
    den = registry.load("score-natural")
    steps = []
    x = hqs.pnp_hqs(y, physics, lambda z, s: den.module(z, s), hqs.HQSSettings(),
                    progress=lambda i, k: steps.append((i, k)))
    assert x.shape == clean_rgb.shape and float(x.min()) >= 0 and float(x.max()) <= 1
    assert steps[-1] == (8, 8)
    start = initial_estimate(y, physics)
    gain = float(metrics.psnr(x, clean_rgb)) - float(metrics.psnr(start, clean_rgb))
    assert gain > 1.0, gain


def test_schedule_and_settings_errors():
    s = hqs.sigma_schedule(hqs.HQSSettings(steps=5, sigma_max=0.2), 0.01)
    assert len(s) == 5 and s[0] == pytest.approx(0.2) and s[-1] == pytest.approx(0.01)
    assert all(a > b for a, b in zip(s, s[1:]))
    assert hqs.sigma_schedule(hqs.HQSSettings(steps=3, sigma_max=0.05), 0.1) == pytest.approx([0.1] * 3)
    assert hqs.HQSSettings.from_options({"lambda_": 0.3}).lambda_ == 0.3
    with pytest.raises(base.SolverError, match="hqs has no option lr"):
        hqs.HQSSettings.from_options({"lr": 0.1})
    with pytest.raises(base.SolverError, match="steps >= 1"):
        hqs.HQSSettings.from_options({"steps": 0})


def test_pmrf_takes_its_deblurring_and_sr_mean_from_hqs_unless_told_otherwise():
    from restore.solvers.pmrf import PMRFSolver

    assert [PMRFSolver().mean_source_for(k) for k in ("denoise", "deblur", "sr", "inpaint")] == \
        ["denoiser", "hqs", "hqs", "reddiff"]
    assert PMRFSolver().settings_for("sr")[0].mean_options["steps"] == 16  # SR's own scan (pmrf docstring)
    assert PMRFSolver(mean_source="reddiff").mean_source_for("deblur") == "reddiff"
    # mean options given for the default source keep the family from switching it
    assert PMRFSolver(mean_options={"steps": 20}).mean_source_for("deblur") == "reddiff"
    assert PMRFSolver(preset="paper").mean_source_for("deblur") == "reddiff"
    cfg, family = PMRFSolver().settings_for("deblur")
    assert cfg.mean_options == family["mean_options"] and hqs.HQSSettings.from_options(cfg.mean_options)
    # the time estimate counts the HQS passes, far fewer than a RED-Diff run
    task = parse("deblur:gaussian:sigma=1,noise=0.01")
    assert PMRFSolver().cost(task, 8) < PMRFSolver(mean_source="reddiff").cost(task, 8)


def test_a_result_from_before_the_change_is_stale_only_for_the_families_it_moved():
    """Provenance compares settings per task kind: switching deblurring's and SR's mean source stales their results,
    not the other families' (whose settings did not change)."""
    from restore.provenance import canonical

    now = canonical(dataclasses.asdict(base.get("pmrf").config))
    then = {k: v for k, v in now.items() if k != "per_family"}  # the config as recorded before per_family existed
    prov = {"solvers": [{"name": "pmrf", "options": {}, "config": then}], "priors": {}}
    assert stale.reasons(prov, "denoise") == [] and stale.reasons(prov, "inpaint-region") == []
    for family in ("deblur", "sr"):
        reasons = stale.reasons(prov, family)
        assert len(reasons) == 1 and "mean_source" in reasons[0] and "mean_options" in reasons[0]


def test_pmrf_deblurring_reports_the_hqs_stage(clean_rgb, tmp_path, monkeypatch):
    """With a tiny flow: the estimate is the HQS stage itself, the samples the flow's; provenance names PMRF alone."""
    import shutil

    from conftest import make_image_folder
    from restore.train import flow as train

    models = tmp_path / "models"
    models.mkdir()
    for f in ("score-natural.pt", "score-natural.json"):
        shutil.copy(registry.models_dir() / f, models / f)
    make_image_folder(tmp_path / "data", 2, 40, 40)
    monkeypatch.setenv("RESTORE_MODELS", str(models))
    train.main(["--data", str(tmp_path / "data"), "--out", str(models / "flow-natural"), "--ckpt",
                str(tmp_path / "ck.pt"), "--nc", "8", "16", "16", "16", "--nb", "1", "--batch", "2", "--patch", "32",
                "--val-images", "1", "--steps", "1", "--ckpt-every", "1", "--threads", "1"])
    flow = registry.load("flow-natural")
    y, physics = _blurred(clean_rgb)
    solver = base.get("pmrf", flow_steps=2)
    post = solver(y, physics, flow, n_samples=2, generator=torch.Generator().manual_seed(0))
    stage = solver.posterior_mean(y, physics, flow, torch.Generator().manual_seed(0), lambda f, m: None)
    assert torch.allclose(post.mean, stage, atol=1e-6)
    assert post.meta["mean_source"] == "hqs" and post.meta["estimate"] == "posterior-mean stage (hqs)"
    assert [s["name"] for s in post.meta["provenance"]["solvers"]] == ["pmrf"]
    assert float(metrics.psnr(post.mean, clean_rgb)) > float(metrics.psnr(y, clean_rgb)) + 1.0


def test_an_explicit_mean_source_does_not_inherit_the_familys_hqs_options():
    from restore.solvers.pmrf import PMRFSolver

    cfg, _ = PMRFSolver(mean_source="reddiff").settings_for("deblur")
    assert cfg.mean_source == "reddiff" and cfg.mean_options is None
    cfg, _ = PMRFSolver(mean_source="hqs", mean_options={"steps": 4}).settings_for("deblur")
    assert cfg.mean_options == {"steps": 4}


def test_the_time_estimate_counts_the_conjugate_gradient_steps_by_kernel_size():
    small = parse("deblur:gaussian:sigma=1,noise=0.01")
    large = parse("deblur:motion:size=25,seed=1,noise=0.01")
    s = hqs.HQSSettings()
    assert s.steps < hqs.cost(s, small) < hqs.cost(s, large)
    assert hqs.cost(hqs.HQSSettings(cg_iters=60), small) > hqs.cost(s, small)
    assert hqs.cost(s, parse("denoise:gaussian:sigma=0.1")) == pytest.approx(s.steps * (1 + s.cg_iters * 0.010))


def test_hqs_is_the_start_up_to_its_noise_limit():
    """One rule for PMRF's deblurring mean and Langevin's warm start: HQS up to max_noise, and while the noise is
    not known yet."""
    s = hqs.HQSSettings()
    assert s.handles(None) and s.handles(s.max_noise) and not s.handles(1.01 * s.max_noise)
    assert hqs.HQSSettings(max_noise=0.1).handles(0.07) and not s.handles(0.07)


def test_past_its_noise_range_pmrf_hands_deblurring_to_red_diff(clean_rgb):
    """Heavy noise makes HQS's data steps amplify more than its denoiser removes: PMRF takes RED-Diff's mean there
    (at its own defaults, not HQS's options), and says so."""
    from restore.solvers.pmrf import PMRFSolver

    limit = hqs.HQSSettings().max_noise
    solver = PMRFSolver()
    assert solver.mean_source_for("deblur", limit) == "hqs"
    assert solver.mean_source_for("deblur", 2 * limit) == "reddiff"
    assert solver.mean_source_for("deblur") == "hqs"  # noise not known yet
    heavy, light = (parse(f"deblur:gaussian:sigma=1,noise={n}") for n in (2 * limit, 0.01))
    assert solver.cost(heavy, 8) > solver.cost(light, 8)  # RED-Diff's 30 steps against HQS's 8 passes
    assert solver.cost(parse("deblur:gaussian:sigma=1,noise=auto"), 8) > 0
    y, physics = _blurred(clean_rgb, f"deblur:gaussian:sigma=1,noise={2 * limit}")
    flow = registry.load("flow-natural")
    post = base.get("pmrf", flow_steps=1)(y, physics, flow, n_samples=2, generator=torch.Generator().manual_seed(0))
    assert post.meta["mean_source"] == "reddiff" and post.meta["estimate"] == "average of the flow samples"
    ran = post.meta["provenance"]["solvers"]
    assert [s["name"] for s in ran] == ["pmrf", "reddiff"] and ran[1]["options"] == {}
