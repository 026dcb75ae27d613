"""Time estimates before a run: the solvers' work counts, and estimates against measured runs."""

import time

import pytest
import torch

from restore import estimate
from restore.api import Restorer
from restore.solvers import base
from restore.tasks import parse


def test_work_counts_follow_the_settings():
    denoise, sr = parse("denoise:gaussian:sigma=0.1"), parse("sr:x4")
    assert base.get("reddiff").cost(denoise, 8) == 30 * 8 + 1
    assert base.get("reddiff").cost(sr, 8) == 50 * 8 + 1  # SR's family settings
    assert base.get("reddiff", preset="paper").cost(denoise, 8) == 100 * 8
    assert base.get("langevin").cost(denoise, 8) == 100 * 2  # two chains, thinned
    assert base.get("langevin", preset="paper").cost(denoise, 8) == 500 * 8
    assert base.get("pmrf", flow_steps=3, precision="float").cost(denoise, 8) == 1 + 3 * 8
    assert base.get("pmrf", flow_steps=3, precision="bf16").cost(denoise, 8) == 1 + 3 * 8 / 2  # bf16 flow
    # SR's mean: HQS, 16 denoiser passes with 30 CG iterations each (restore.solvers.hqs.cost); or one RED-Diff run
    assert base.get("pmrf", flow_steps=3, precision="float").cost(sr, 8) == pytest.approx(16 * (1 + 30 * 0.010) + 3 * 8)
    assert base.get("pmrf", flow_steps=3, precision="float", mean_source="reddiff").cost(sr, 8) == 50 + 1 + 3 * 8
    for name in base.names():
        assert base.get(name).cost(denoise, 4) > 0, name


def test_describe():
    assert [estimate.describe(s) for s in (0.2, 8.4, 200, 9000, None)] == [
        "about 1 s", "about 8 s", "about 3 min", "about 2.5 h", "unknown"]


@pytest.mark.parametrize("solver", ["reddiff", "pmrf"])
def test_estimate_is_within_a_few_times_the_measured_run(solver, clean_rgb):
    r = Restorer(solver, calibrate=False, tile=0)
    x = torch.nn.functional.interpolate(clean_rgb, size=(96, 96), mode="bilinear").clamp(0, 1)
    task = "denoise:gaussian:sigma=0.1" if solver == "reddiff" else "inpaint:random:missing=0.5,noise=0.01"
    y = r.simulate(x, task)
    r(y, task, samples=2)  # loads the prior, warms up
    t0 = time.perf_counter()
    r(y, task, samples=2)
    measured = time.perf_counter() - t0
    guess = r.estimate_seconds(task, x.shape, samples=2)
    assert guess is not None and 0.25 < measured / guess < 4, (measured, guess)
    # a 4x larger image is estimated ~4x longer; tiling adds the overlap
    big = Restorer(solver, tile=256, overlap=32).estimate_seconds(task, (1, 3, 1024, 1024), samples=2)
    assert big > 100 * guess
