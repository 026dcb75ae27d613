"""PMRF mechanics on a tiny flow made by the training script, and its Euler-step calibration."""

import dataclasses
import shutil

import pytest
import torch

from restore.priors import registry
from restore.solvers import base
from restore.tasks import parse

from conftest import make_image_folder


@pytest.fixture(scope="module")
def flow(tmp_path_factory):
    from restore.train import flow as train

    d = tmp_path_factory.mktemp("flow")
    models = d / "models"
    models.mkdir()
    for f in ("score-natural.pt", "score-natural.json"):  # the mean denoiser the flow is trained against
        shutil.copy(registry.models_dir() / f, models / f)
    make_image_folder(d / "data", 3, 70, 80)
    mp = pytest.MonkeyPatch()
    mp.setenv("RESTORE_MODELS", str(models))
    train.main(["--data", str(d / "data"), "--out", str(models / "flow-natural"), "--ckpt", str(d / "ck.pt"),
                "--nc", "8", "16", "16", "16", "--nb", "1", "--batch", "2", "--patch", "32", "--val-images", "1",
                "--steps", "2", "--ckpt-every", "1", "--threads", "1"])
    yield registry.load("flow-natural")
    mp.undo()


def _run(task, x, prior, n=3, seed=0, **cfg):
    y, physics = parse(task).simulate(x, torch.Generator().manual_seed(3))
    return y, base.get("pmrf", **cfg)(y, physics, prior, n_samples=n, generator=torch.Generator().manual_seed(seed))


def test_card_and_shapes_diversity_and_the_flow_moves_the_mean(flow, clean_rgb):
    assert flow.kind == "flow" and flow.card["steps"] == 2 and flow.card["sigma_s"] == 0.025
    y, post = _run("denoise:gaussian:sigma=0.1", clean_rgb, flow, flow_steps=5)
    assert post.mean.shape == clean_rgb.shape and post.samples.shape == (3, 3, 48, 48)
    assert float(post.std.mean()) > 0  # samples differ through the source noise
    assert post.meta["mean_vs_output_rmse"] > 1e-4  # the ODE moved the posterior mean


def test_deterministic_and_grey(flow, clean_rgb, clean_grey):
    _, a = _run("denoise:gaussian:sigma=0.1", clean_rgb, flow, n=2, seed=1, flow_steps=3)
    _, b = _run("denoise:gaussian:sigma=0.1", clean_rgb, flow, n=2, seed=1, flow_steps=3)
    _, c = _run("denoise:gaussian:sigma=0.1", clean_rgb, flow, n=2, seed=2, flow_steps=3)
    assert torch.equal(a.samples, b.samples) and not torch.equal(a.samples, c.samples)
    _, g = _run("denoise:gaussian:sigma=0.1", clean_grey, flow, n=2, flow_steps=3)
    assert g.mean.shape == (1, 1, 48, 48)


def test_mean_from_another_solver(flow, clean_rgb):
    y, post = _run("deblur:gaussian:sigma=1.5,noise=0.01", clean_rgb, flow, n=2, flow_steps=3,
                   mean_source="reddiff")
    assert post.mean.shape == clean_rgb.shape
    # provenance names both solvers (the inner one at its own defaults) and both priors' files
    from restore import stale

    prov = post.meta["provenance"]
    assert [(s["name"], s["options"]) for s in prov["solvers"]] == [("pmrf", {"flow_steps": 3, "mean_source": "reddiff"}),
                                                                    ("reddiff", {})]
    assert prov["solvers"][1]["config"]["steps"] == dataclasses.asdict(base.get("reddiff").config)["steps"]
    # the inner RED-Diff ran on its preferred int8 copy of the mean denoiser, and provenance says so
    assert prov["priors"] == {"flow-natural": flow.digest, "score-natural": registry.digest("score-natural"),
                              "score-natural@int8": registry.digest("score-natural")}
    assert stale.reasons(prov) == []
    card = registry.models_dir() / "flow-natural.json"
    text = card.read_text()
    try:  # a recalibrated card (new Euler steps) makes the result stale
        card.write_text(text.replace("{", '{"recalibrated": true, ', 1))
        assert stale.reasons(prov) == ["prior flow-natural: files changed"]
    finally:
        card.write_text(text)
    assert stale.reasons(prov) == []
    with pytest.raises(base.SolverError, match="for denoising tasks"):
        _run("deblur:gaussian:sigma=1.5", clean_rgb, flow, n=1, mean_source="denoiser")
    with pytest.raises(base.SolverError, match="its own output"):
        _run("deblur:gaussian:sigma=1.5", clean_rgb, flow, n=1, mean_source="pmrf")


def _denoising_physics():
    return parse("denoise:gaussian:sigma=0.1").physics((1, 3, 48, 48))


def test_euler_steps_come_from_the_config_the_card_or_the_paper(flow):
    from restore.solvers.pmrf import PAPER_STEPS, PMRFSolver

    physics = _denoising_physics()
    blur = parse("deblur:gaussian:sigma=1").physics((1, 3, 48, 48))
    card = {**flow.card, "euler_steps": {"denoise": 2}}
    prior = dataclasses.replace(flow, card=card)
    assert PMRFSolver().flow_steps(physics, prior) == (2, "card (denoise)")
    assert PMRFSolver().flow_steps(blur, prior) == (PAPER_STEPS, "paper")  # no entry for the family
    assert PMRFSolver(flow_steps=7).flow_steps(physics, prior) == (7, "config")
    with pytest.raises(base.SolverError, match="flow_steps must be >= 1"):
        PMRFSolver(flow_steps=0).flow_steps(physics, prior)
    y, post = _run("denoise:gaussian:sigma=0.1", torch.rand(1, 3, 48, 48, generator=torch.Generator().manual_seed(0)),
                   prior, n=2)
    assert post.meta["flow_steps"] == 2 and post.meta["flow_steps_from"] == "card (denoise)"


def test_choose_steps_takes_least_distortion_among_the_closest_to_clean():
    from restore.train.flow_steps import choose_steps

    rows = {1: {"spectral_gap_e4": 1.10, "psnr": 28.8}, 2: {"spectral_gap_e4": 0.32, "psnr": 28.5},
            3: {"spectral_gap_e4": 0.30, "psnr": 27.9}, 25: {"spectral_gap_e4": 1.80, "psnr": 26.9}}
    assert choose_steps(rows, mean_gap=1.0, tolerance=0.1) == 2  # 0.32 is within 0.1 of the best 0.30
    assert choose_steps(rows, mean_gap=1.0, tolerance=0.0) == 3  # strictly the closest
    rows[25] = {"spectral_gap_e4": 0.01, "psnr": 27.0}  # a flow that lands on the images keeps the paper's K
    assert choose_steps(rows, mean_gap=1.0, tolerance=0.1) == 25


def test_calibration_writes_the_card_and_the_solver_follows_it(flow, clean_rgb):
    from restore.priors import registry
    from restore.train import flow_steps

    models = registry.models_dir()
    result = flow_steps.main(["--data", str(models.parent / "data"), "--val-images", "1", "--crop", "32",
                              "--families", "denoise"])
    k = result["denoise"]["best"]
    assert k in flow_steps.CANDIDATES and set(result["denoise"]["steps"]) == set(flow_steps.CANDIDATES)
    card = registry.read_card("flow-natural")
    assert card["euler_steps"] == {"denoise": k} and card["euler_steps_calibration"]["images"] == ["data/2.png"]
    _, post = _run("denoise:gaussian:sigma=0.1", clean_rgb, registry.load("flow-natural"), n=2)
    assert post.meta["flow_steps"] == k


def test_precision_bf16_matches_float_and_bad_values_are_named(flow, clean_rgb):
    """bf16 autocast (the default where the CPU has native bf16) moves the samples by far less than their spread."""
    _, f = _run("denoise:gaussian:sigma=0.1", clean_rgb, flow, flow_steps=3, precision="float")
    _, b = _run("denoise:gaussian:sigma=0.1", clean_rgb, flow, flow_steps=3, precision="bf16")
    assert f.meta["precision"] == "float32" and b.meta["precision"] == "bf16" and b.samples.dtype == torch.float32
    assert float((f.samples - b.samples).abs().mean()) < 0.2 * float(f.std.mean())
    with pytest.raises(base.SolverError, match="pmrf precision must be one of"):
        _run("denoise:gaussian:sigma=0.1", clean_rgb, flow, precision="half")
    assert base.get("pmrf", preset="paper").config.precision == "float"


def test_pmrf_reports_its_posterior_mean_stage_and_the_flow_average_only_when_asked(flow, clean_rgb):
    """On denoising the first stage is the MMSE denoiser, so the estimate is D(y) itself (the flow, a realism-for-
    distortion trade, fell below the noisy input at light noise); on SR and inpainting RED-Diff's mean (the flow
    average lost 0.2-0.9 dB to it held out); ``estimate="flow-average"`` (the paper preset) reports the average."""
    from restore import metrics

    y, post = _run("denoise:gaussian:sigma=0.01", clean_rgb, flow, flow_steps=2)
    solver = base.get("pmrf")
    physics = parse("denoise:gaussian:sigma=0.01").physics(tuple(clean_rgb.shape))
    stage = solver.posterior_mean(y, physics, flow, torch.Generator().manual_seed(0), lambda f, m: None)
    assert torch.allclose(post.mean, stage, atol=1e-6) and post.meta["estimate"].startswith("posterior-mean stage")
    assert not torch.allclose(post.mean, post.samples.mean(0, keepdim=True), atol=1e-4)
    assert float(metrics.psnr(post.mean, clean_rgb)) > float(metrics.psnr(y, clean_rgb))
    _, sr = _run("sr:bicubic:factor=2,noise=0.01", clean_rgb, flow, flow_steps=2, mean_options={"steps": 3})
    assert sr.meta["estimate"] == "posterior-mean stage (reddiff)"
    assert not torch.allclose(sr.mean, sr.samples.mean(0, keepdim=True), atol=1e-4)
    _, avg = _run("sr:bicubic:factor=2,noise=0.01", clean_rgb, flow, flow_steps=2, mean_options={"steps": 3},
                  estimate="flow-average")
    assert torch.allclose(avg.mean, avg.samples.mean(0, keepdim=True)) and avg.meta["estimate"].startswith("average")
    assert base.get("pmrf", preset="paper").config.estimate == "flow-average"
    assert base.get("pmrf").reports_first_stage("inpaint", "reddiff")
    assert not base.get("pmrf").reports_first_stage("deblur", "reddiff")
    with pytest.raises(base.SolverError, match="estimate must be one of auto, first-stage, flow-average"):
        base.get("pmrf", estimate="median")
