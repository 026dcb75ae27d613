import numpy as np
import pytest
import torch
from PIL import Image

import restore
from restore import Restorer
from restore.io import ImageError
from restore.priors.registry import PriorError
from restore.solvers.base import SolverError
from restore.tasks import TaskError

FAST = {"iterations": 40}


def test_restore_accepts_path_array_pil_tensor(tmp_path, clean_rgb):
    from restore import io

    r = Restorer("langevin", **FAST)
    y = r.simulate(clean_rgb, "denoise:gaussian:sigma=0.1", seed=0)
    assert y.shape == clean_rgb.shape
    io.write_image(tmp_path / "y.png", y)
    arr = np.round(y.clamp(0, 1)[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    results = [r(src, "denoise:gaussian:sigma=0.1", samples=2, seed=1)
               for src in (tmp_path / "y.png", str(tmp_path / "y.png"), arr, Image.fromarray(arr))]
    for post in results[1:]:
        assert torch.equal(post.mean, results[0].mean)  # the same 8-bit data whatever the container
    assert r(y, "denoise:gaussian:sigma=0.1", samples=2, seed=1).mean.shape == clean_rgb.shape


def test_top_level_function_with_ground_truth(clean_rgb):
    r = Restorer("langevin", **FAST)
    y = r.simulate(clean_rgb, "inpaint:random:missing=0.5,noise=0.01", seed=0)
    post = restore.restore(y, "inpaint:random:missing=0.5,noise=0.01", solver="langevin", samples=3, seed=0,
                           ground_truth=clean_rgb, **FAST)
    m = post.meta["metrics"]
    assert m["psnr"] > m["psnr_input"] + 3
    assert 0 <= m["coverage_90"] <= 1 and "std_error_spearman" in m
    assert post.meta["task"] == "inpaint:random:missing=0.5,noise=0.01,seed=0"
    assert post.meta["seed"] == 0 and post.samples.shape[0] == 3


def test_sr_output_is_larger(clean_rgb):
    r = Restorer("langevin", **FAST)
    y = r.simulate(clean_rgb, "sr:x2", seed=0)
    post = r(y, "sr:x2", samples=2, ground_truth=clean_rgb)
    assert y.shape[-1] == 24 and post.mean.shape == clean_rgb.shape


def test_restorer_loads_prior_once(monkeypatch, clean_rgb):
    from restore.priors import registry

    calls = []
    original = registry.load
    monkeypatch.setattr(registry, "load", lambda *a, **k: calls.append(a) or original(*a, **k))
    r = Restorer("langevin", prior="tv", iterations=5)
    for _ in range(3):
        r(clean_rgb, "denoise:gaussian:sigma=0.05", samples=1)
    assert len(calls) == 1


@pytest.mark.parametrize("kwargs, error, message", [
    ({"solver": "nope"}, SolverError, "known solvers: langevin"),
    ({"prior": "nope"}, PriorError, "known priors: wavelet, tv"),
    ({"samples": 0}, SolverError, "samples must be a whole number >= 1"),
    ({"task": "denoise:real", "solver": "pmrf"}, SolverError, "needs a known noise level"),
    ({"task": "sharpen"}, TaskError, "unknown task kind"),
    ({"iterations_typo": 3}, SolverError, "has no option iterations_typo"),
])
def test_clear_errors(kwargs, error, message, clean_rgb):
    args = {"image": clean_rgb, "task": "denoise:gaussian:sigma=0.1", "samples": 1, **kwargs}
    with pytest.raises(error, match=message):
        restore.restore(**args)


def test_bad_images_rejected(clean_rgb):
    nan = clean_rgb.clone(); nan[0, 0, 3, 3] = float("nan")
    with pytest.raises(ImageError, match="NaN"):
        restore.restore(nan, "denoise:gaussian:sigma=0.1", samples=1)
    with pytest.raises(TaskError, match="same size"):
        import pathlib
        import tempfile

        from restore.io import write_image
        d = pathlib.Path(tempfile.mkdtemp())
        write_image(d / "m.png", torch.ones(1, 1, 10, 10))
        restore.restore(clean_rgb, f"inpaint:mask:path={d / 'm.png'}", samples=1)


def test_unknown_prior_file_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("RESTORE_MODELS", str(tmp_path))
    from restore.priors import registry

    assert "score-natural" not in registry.available()
    with pytest.raises(PriorError, match="checkpoint not found"):
        registry.load("score-natural")


@pytest.mark.parametrize("task, solver", [("denoise:gaussian:sigma=0.1", "pmrf"), ("deblur:motion:noise=0.01", "pmrf"),
                                          ("denoise:poisson:gain=0.1", "pmrf"), ("denoise:real", "scoredvi"),
                                          ("sr:bicubic:factor=4", "reddiff"), ("sr:bicubic:factor=2", "pmrf"),
                                          ("sr:bicubic", "reddiff"), ("inpaint:random:missing=0.5", "reddiff"),
                                          ("inpaint:box:size=0.3", "reddiff")])
def test_recommended_solver_per_task(task, solver):
    from restore.api import recommended_solver
    from restore.solvers import base

    assert recommended_solver(task) == solver
    assert base.get(solver).supports(restore.tasks.parse(task)) is None  # it can run what it is recommended for


def test_recommended_summary_is_the_table_and_loads_without_torch():
    """The CLI's help names the recommended solvers from the same table, read without importing torch."""
    import subprocess
    import sys

    from restore.recommend import RECOMMENDED, RECOMMENDED_BY_PARAM, WHY, recommended_summary

    assert set(RECOMMENDED) | set(RECOMMENDED_BY_PARAM) <= set(WHY)  # every choice can say why
    line = recommended_summary()
    assert line.startswith("pmrf;") and "pmrf at factor=2" in line
    assert all(name in line for name in RECOMMENDED.values())
    code = "import sys, restore.recommend as r; r.recommended_summary(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False", out.stderr


def test_restorer_resolves_an_auto_noise_level_and_says_so():
    import skimage.data
    import torch

    from restore import Restorer, io
    from restore.tasks import parse

    x = io.to_tensor(skimage.data.astronaut()[100:228, 150:278])  # 128 px: enough flat patches for the estimate
    y, _ = parse("denoise:gaussian:sigma=0.1").simulate(x, torch.Generator().manual_seed(0))
    post = Restorer("langevin", "tv", iterations=5, burnin=0.4)(y, "denoise:gaussian:sigma=auto", samples=2)
    note = post.meta["noise_estimate"]
    assert post.meta["task"] == f"denoise:gaussian:sigma={note['sigma']:.6g}"
    assert 0.085 < note["sigma"] < 0.115 and "patches" in note["method"]
