"""Blind noise-level estimation for one image: the std a Gaussian-noise solver should be told.

    from restore.noise import estimate_noise, estimate_noise_std
    sigma = estimate_noise_std(y)          # y: (1, C, H, W) float in [0, 1]; sigma on the [0, 1] scale
    est = estimate_noise(y)                # NoiseEstimate(sigma, method, per_channel, details)

Method: weak-texture patches with a correlation-aware noise model (``METHOD``). It follows the weak-texture idea of
Liu, Tanaka and Okutomi (2013, "Single-image noise level estimation for blind denoising", IEEE TIP 22(12)): find the
patches that are consistent with pure noise under the current noise model, re-estimate the model from them, repeat.
Their estimate is the smallest eigenvalue of the selected patches' covariance, as is Chen, Zhu and Heng's (2015, "An
efficient statistical method for image noise level estimation", ICCV) over all patches; both are exact for i.i.d.
noise but read the *floor of the noise spectrum*, which for real camera noise (demosaiced, denoised, compressed:
spatially correlated) is far below its per-pixel std (on a 3x3-box-correlated field of std 15/255 they read 4-7).
So here, per channel, on the full-resolution image (no pixel shuffling, whose sub-sampling doubles the texture):

1. every 8x8 patch on a grid (stride 1 up to ~190 px, coarser above: at most 32768 patches a channel), with its
   best-fitting plane (mean and ramps) removed, so smooth shading is not read as noise; patches with more than two
   pixels at exactly 0 or 1 (clipped: their noise is truncated) are left out when the image lies in [0, 1];
2. each patch's energy in three 2-D DCT bands (low, u+v <= 2; middle, <= 5; high, the rest);
3. the noise model is stationary Gaussian noise with any autocovariance up to a lag of 4 px (``CORR_RANGE``; 41
   numbers, i.i.d. noise being the special case), started from the 10 % of patches with the least energy. A patch
   counts as flat when each band energy is below the band's 0.5^(1/3) quantile under the model, so a pure-noise
   patch passes with probability 0.5 whatever the correlation. The quantiles and what the selection does to pure
   noise (flat-looking patches hold less noise than average: ~0.9 of it) come from 4000 fixed-seed Monte-Carlo
   draws of the model;
4. the noise level is the fixed point "mean energy of the patches that pass, corrected for that selection, equals
   the model's"; the model's autocovariance is then refitted (least squares, through the plane removal) to the
   passing patches' covariance plus what the selection removed from simulated noise; up to 8 rounds;
5. the per-pixel variance is the fitted autocovariance at lag 0; sigma = sqrt(mean over channels of it).

What it estimates: the per-pixel std of the noise (for real noise, the std of noisy - clean in the image's flat
regions), not its i.i.d. part alone. Deterministic (fixed Monte-Carlo seed, CPU float64); about 0.2-0.4 s for a
512x512 RGB image on one core.

Measured (``python -m benchmarks.noise_estimate``, results in ``benchmarks/results/noise_estimate.json``): i.i.d.
Gaussian noise on 128 px BSD432 training crops reads 4-11 % high at 15-50 /255 (texture) and ~40 % high at 5 /255
(texture, and the photos' own grain and JPEG artefacts, which count as noise); on skimage's photographs it is
within ~3 %. Noise correlated by a 3x3 box or a Gaussian blur of std 1 px reads within ~7 %. Real camera noise
(CC15, SIDD-val-80, never tuned on) reads 0.86-0.93 of the residual std on 64 px crops, 0.83-0.89 on 128 px crops
and 0.57 (CC15) / 0.86 (SIDD) on whole images.

Known failure modes:
  - texture mistaken for noise: an image with no flat regions at the noise scale (foliage, fabric, gravel) reads
    high, most at low noise (clean BSD crops read 1-5 /255, a 128 px crop more than a whole image): there the
    estimate is an upper bound. Grain, JPEG artefacts and sensor noise already in a "clean" picture count as noise;
  - correlation longer than ~4 px (strong in-camera denoising, heavy JPEG, upscaled images) is under-read: noise
    blurred by a Gaussian of std 2 px reads ~17 % low;
  - signal-dependent noise is read where the flat regions are: real camera noise is often stronger in textured or
    dark areas than in the flat ones found (one global model, no noise-level function), so real noise tends to read
    low (see the benchmark);
  - the residual noisy - clean of a real pair also holds what is not noise (misalignment, a smoothed reference),
    which no blind estimate sees; tiny images (< 16 px) are refused, and images with fewer than 30 flat patches
    fall back to the 10 % least-energetic patches (``method`` says so).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

METHOD = "weak-texture patches, correlated-noise model"
PATCH = 8                 # patch side
FLAT_QUANTILE = 0.5       # c: a pure-noise patch passes the flatness test with this probability
BAND_EDGES = (0, 2, 5, 2 * PATCH)  # DCT bands by u + v: (0, 2], (2, 5], (5, 14]; u + v = 0 (DC) is removed
CORR_RANGE = 4            # the noise may be correlated up to this lag (Chebyshev, pixels), not beyond
INIT_FRACTION = 0.1       # the start: the least-energetic 10 % of patches
ROUNDS = 8                # at most, re-estimations of the noise model
TOLERANCE = 1e-3          # stop when the variance changes less than this, relatively
MC_DRAWS = 4000
MC_SEED = 20131201
MAX_PATCHES = 32768       # per channel: the grid stride grows for large images
MIN_SIDE = 16
MIN_FLAT = 30             # fewer flat patches than this: fall back


@dataclass(frozen=True)
class NoiseEstimate:
    """``sigma``: noise std on the [0, 1] scale (RMS over channels); ``per_channel``: each channel's std;
    ``method``: how it was found (``METHOD``, or a fallback); ``details``: stride, patches used, flat fraction."""

    sigma: float
    method: str
    per_channel: tuple[float, ...]
    details: dict = field(default_factory=dict)

    @property
    def sigma255(self) -> float:
        return 255.0 * self.sigma


def estimate_noise_std(y: torch.Tensor) -> float:
    """Noise std of ``y`` (1, C, H, W) float in [0, 1], on the [0, 1] scale: the level a Gaussian-noise solver
    should be given (``denoise:gaussian:sigma=...``). See the module docstring for the method and its failure modes;
    ``estimate_noise`` returns the same number with per-channel values and details."""
    return estimate_noise(y).sigma


def estimate_noise(y: torch.Tensor) -> NoiseEstimate:
    """``NoiseEstimate`` of ``y`` (1, C, H, W) float in [0, 1] (values a little outside, as from unclipped synthetic
    noise, are fine). Raises ValueError for anything else: another shape, fewer than 16x16 pixels, NaN or inf, or a
    range that looks like 0-255."""
    x = _check(y)
    clipped = bool(x.min() >= 0 and x.max() <= 1)  # only a clipped image has truncated noise at 0 and 1
    h, w = x.shape[-2:]
    stride = 1
    while ((h - PATCH) // stride + 1) * ((w - PATCH) // stride + 1) > MAX_PATCHES:
        stride += 1
    per_channel, flat, used, fallback = [], [], [], False
    for c in range(x.shape[1]):
        var, info = _channel_variance(x[0, c], stride, clipped)
        per_channel.append(math.sqrt(max(var, 0.0)))
        flat.append(info["flat_fraction"])
        used.append(info["patches"])
        fallback |= info["fallback"]
    sigma = math.sqrt(sum(s * s for s in per_channel) / len(per_channel))
    method = METHOD + ("; fallback in some channel: too few flat patches, least-energetic 10 %" if fallback else "")
    return NoiseEstimate(sigma, method, tuple(per_channel),
                         {"patch": PATCH, "stride": stride, "patches": used, "flat_fraction": flat,
                          "fallback": fallback})


def _check(y) -> torch.Tensor:
    if not isinstance(y, torch.Tensor):
        raise ValueError(f"noise estimation needs a torch.Tensor of shape (1, C, H, W), got {type(y).__name__}")
    if y.ndim != 4 or y.shape[0] != 1 or y.shape[1] < 1:
        raise ValueError(f"noise estimation needs one image of shape (1, C, H, W), got shape {tuple(y.shape)}")
    if min(y.shape[-2:]) < MIN_SIDE:
        raise ValueError(f"image of {y.shape[-1]}x{y.shape[-2]} pixels is too small to estimate its noise "
                         f"(at least {MIN_SIDE}x{MIN_SIDE})")
    if not (y.is_floating_point()):
        raise ValueError(f"noise estimation needs a float image in [0, 1], got dtype {y.dtype}")
    x = y.detach().to("cpu", torch.float64)
    if not torch.isfinite(x).all():
        raise ValueError("image has NaN or infinite values: cannot estimate its noise")
    lo, hi = float(x.min()), float(x.max())
    if lo < -1 or hi > 2:
        raise ValueError(f"image values span [{lo:.3g}, {hi:.3g}]: noise estimation expects the [0, 1] scale "
                         "(divide 8-bit values by 255)")
    return x


@lru_cache(maxsize=2)
def _constants(p: int):
    """DCT basis (d, d), band membership (d, 3), the projector P off planes (d, d), the stationary lag basis
    (K, d, d) with its least-squares inverse (K, d*d) for P S P, Monte-Carlo normals (MC_DRAWS, d)."""
    d = p * p
    n = torch.arange(p, dtype=torch.float64)
    b = torch.cos(math.pi * (2 * n[None, :] + 1) * n[:, None] / (2 * p)) * math.sqrt(2 / p)
    b[0] /= math.sqrt(2)
    dct = torch.kron(b, b)  # rows: 2-D basis functions, orthonormal, row-major like unfold
    freq = (n[:, None] + n[None, :]).flatten()
    bands = torch.stack([((freq > lo) & (freq <= hi)).double() for lo, hi in itertools.pairwise(BAND_EDGES)], 1)
    ii, jj = torch.meshgrid(n, n, indexing="ij")
    ii, jj = ii.flatten(), jj.flatten()
    planes, _ = torch.linalg.qr(torch.stack([torch.ones(d, dtype=torch.float64), ii - ii.mean(), jj - jj.mean()], 1))
    proj = torch.eye(d, dtype=torch.float64) - planes @ planes.T
    dy, dx = ii[None, :] - ii[:, None], jj[None, :] - jj[:, None]
    span = range(-CORR_RANGE, CORR_RANGE + 1)
    lags = [(0, 0)] + [(a, c) for a in range(CORR_RANGE + 1) for c in span if a > 0 or c > 0]  # half of the lags
    basis = torch.stack([(((dy == a) & (dx == c)) | ((dy == -a) & (dx == -c))).double() for a, c in lags])
    design = torch.stack([(proj @ t @ proj).flatten() for t in basis], 1)  # (d*d, K): lag values -> P S P
    draws = torch.randn(MC_DRAWS, d, generator=torch.Generator().manual_seed(MC_SEED), dtype=torch.float64)
    return dct, bands, proj, basis, torch.linalg.pinv(design), draws


def _sqrt_psd(s: torch.Tensor) -> torch.Tensor:
    lam, v = torch.linalg.eigh(s)
    return (v * lam.clamp_min(0).sqrt()) @ v.T


def _channel_variance(ch: torch.Tensor, stride: int, clipped: bool) -> tuple[float, dict]:
    """Noise variance of one (H, W) float64 channel (see the module docstring, steps 1-5)."""
    p = PATCH
    dct, bands, proj, basis, fit, draws = _constants(p)
    patches = F.unfold(ch[None, None], p, stride=stride)[0]  # (d, N)
    if clipped:
        bad = ((patches <= 0) | (patches >= 1)).sum(0) > 2
        if int((~bad).sum()) >= 4 * MIN_FLAT:  # a nearly all-saturated image keeps its patches
            patches = patches[:, ~bad]
    coef = (dct @ proj) @ patches       # DCT coefficients of the patches with planes (mean and ramps) removed
    energy = coef.T ** 2 @ bands        # (N, 3) band energies
    total = (coef ** 2).sum(0)          # = |r|^2, r = proj @ patch
    info = {"patches": patches.shape[1], "fallback": False}
    selected = total <= torch.quantile(total, INIT_FRACTION)
    rs = proj @ patches[:, selected]
    lags = fit @ (rs @ rs.T / rs.shape[1]).flatten()
    cb = FLAT_QUANTILE ** (1 / bands.shape[1])
    for _ in range(ROUNDS):
        model = (lags[:, None, None] * basis).sum(0)
        trace = float(model.trace())
        if trace <= 1e-20 or lags[0] <= 0:  # noise-free (a constant or a plane)
            return 0.0, {**info, "flat_fraction": float(selected.double().mean())}
        z = draws @ _sqrt_psd(model / trace) @ proj  # pure noise of the model's shape, unit trace, planes removed
        ez = (z @ dct.T) ** 2 @ bands
        thresholds = torch.quantile(ez, cb, dim=0)
        passed = (ez <= thresholds).all(1)
        z2 = (z ** 2).sum(1)
        bias, kept = float(z2[passed].mean() / z2.mean()), float(z2.mean())
        # a patch passes at level L when L >= its largest band energy / threshold: sort once, then the fixed point
        # "L = mean |r|^2 of the patches that pass, corrected" is a walk on the cumulative means
        need = (energy / thresholds).amax(1)
        order = torch.argsort(need)
        need_sorted = need[order].numpy()
        cummean = (torch.cumsum(total[order], 0) / torch.arange(1, len(order) + 1, dtype=torch.float64)).numpy()
        level, count = trace, 0
        for _ in range(500):
            count = int(np.searchsorted(need_sorted, level, side="right"))
            if count < MIN_FLAT:
                break
            new = float(cummean[count - 1]) / bias / kept
            done = abs(new - level) <= 1e-6 * level
            level = new
            if done:
                break
        sel = need <= level
        if int(sel.sum()) < MIN_FLAT:
            info["fallback"] = True
            break
        selected = sel
        rs = proj @ patches[:, sel]
        zl, zp = z * math.sqrt(level), z[passed] * math.sqrt(level)
        # the selected patches' covariance, plus what the selection removed from pure noise of this model
        cov = rs @ rs.T / rs.shape[1] + zl.T @ zl / zl.shape[0] - zp.T @ zp / zp.shape[0]
        previous, lags = float(lags[0]), fit @ cov.flatten()
        if abs(float(lags[0]) - previous) <= TOLERANCE * abs(previous):
            break
    info["flat_fraction"] = float(selected.double().mean())
    return max(float(lags[0]), 0.0), info
