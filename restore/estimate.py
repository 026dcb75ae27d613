"""How long a restore will take, said before it runs.

Each solver counts its work in forward passes of a DRUNet-size network at the restored size (``Solver.cost``: exact
counts for RED-Diff, Langevin and PMRF, constants measured by ``benchmarks.speed`` for VBLE, APS and ScoreDVI); this
machine's seconds per forward are measured once per process on a small input and scaled by the pixel count. A tiled
run (large images) adds the tiles' overlap, and a calibration table with bootstrap signals (PMRF) one more run
with one sample. The estimate is rough (within about 2x): it is for "seconds or
minutes?", and the app's progress bar counts it down.
"""

from __future__ import annotations

import functools
import time

import torch

from restore import calibration

MEASURE_SIZE = 128  # px; large enough that per-call overhead is a small share


def forward_seconds(size: int = MEASURE_SIZE, repeats: int = 3, net=None) -> float:
    """Fastest of ``repeats`` timings of one (1, 3, size, size) DRUNet-size forward here (no gradients, after a
    warm-up). ``net``: a denoiser module called as ``net(x, sigma)``; default the shipped score prior's network when
    present, else the same architecture untrained (same cost)."""
    from restore.priors import registry
    from restore.priors.denoiser import ScoreDenoiser

    if net is None:
        net = registry.load("score-natural").module if "score-natural" in registry.available() else ScoreDenoiser()
    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    times = []
    with torch.no_grad():
        net(x, 0.1)  # warm-up
        for _ in range(repeats):
            t0 = time.perf_counter()
            net(x, 0.1)
            times.append(time.perf_counter() - t0)
    return min(times)  # the machine's pace; a burst of other work only slows some repeats


@functools.lru_cache(maxsize=1)
def seconds_per_megapixel_forward() -> float:
    """Seconds of one DRUNet-size forward per megapixel here, measured once per process at MEASURE_SIZE px."""
    return forward_seconds(MEASURE_SIZE) / (MEASURE_SIZE**2 / 1e6)


_QUANTISED: dict[str, float] = {}


def _seconds_per_megapixel(prior) -> float:
    """As :func:`seconds_per_megapixel_forward`, but for a quantised denoiser (RED-Diff's default int8) its own
    forward, measured once per process: int8 graphs are ~3x faster than the float network the counts assume."""
    if prior.kind != "denoiser" or not prior.card.get("quantized"):
        return seconds_per_megapixel_forward()
    if prior.name not in _QUANTISED:
        _QUANTISED[prior.name] = forward_seconds(MEASURE_SIZE, net=prior.module) / (MEASURE_SIZE**2 / 1e6)
    return _QUANTISED[prior.name]


def estimate_seconds(restorer, task, x_shape: tuple, samples: int) -> float | None:
    """Estimated seconds for ``restorer`` (a restore.api.Restorer) to restore an image whose restored shape is
    ``x_shape`` (1, C, H, W) with ``samples`` samples; None when the solver cannot say."""
    prior = restorer.prior(task)  # loaded once, kept for the run; cards count some solvers' steps (PMRF's per family)
    forwards = restorer.solver.cost(task, samples, prior)
    if forwards is None:
        return None
    if restorer.calibrate and calibration.bootstrap_needed(restorer.solver.name, prior.name, task,
                                                                   restorer.solver.options):
        forwards += restorer.solver.cost(task, 1, prior) or 0.0  # the calibration's bootstrap rerun, one sample
    h, w = int(x_shape[-2]), int(x_shape[-1])
    pixels = h * w
    if restorer.tile and pixels > restorer.tile_above:
        step = restorer.tile - restorer.overlap
        pixels = -(-max(h - restorer.overlap, 1) // step) * -(-max(w - restorer.overlap, 1) // step) * restorer.tile**2
    return float(forwards) * _seconds_per_megapixel(prior) * pixels / 1e6


def describe(seconds: float | None) -> str:
    """'about 8 s', 'about 3 min', 'about 1.5 h', or 'unknown'."""
    if seconds is None:
        return "unknown"
    if seconds < 90:
        return f"about {max(1, round(seconds))} s"
    if seconds < 5400:
        return f"about {round(seconds / 60)} min"
    return f"about {seconds / 3600:.1f} h"
