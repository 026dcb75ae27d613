"""PMRF mechanics on a tiny flow made by the training script (the shipped flow is still to be trained; issue 4)."""

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
    with pytest.raises(base.SolverError, match="for denoising tasks"):
        _run("deblur:gaussian:sigma=1.5", clean_rgb, flow, n=1, mean_source="denoiser")
    with pytest.raises(base.SolverError, match="its own output"):
        _run("deblur:gaussian:sigma=1.5", clean_rgb, flow, n=1, mean_source="pmrf")
