"""Observations clipped to [0, 1]: what an image file holds, and what the solvers do not assume.

A noisy photo on disk is clip(A x + n, 0, 1) (then quantised): where the noise pushed a pixel past 0 or 1 the file
says only "at most 0" or "at least 1". Every solver's likelihood, and every calibration table (fitted on simulated,
unclipped observations), assumes y = A x + n everywhere, so clipped noise reads as a bias towards mid-grey in dark
and bright areas. Measured (PMRF, Gaussian denoising, the priors' 8 held-out BSD432 files, 128 px crops, 8-bit
clipped observations, 2026-12-07): at 50/255 1.58 dB lost and 90 % coverage 0.90 -> 0.81 (RED-Diff 0.55 dB and
0.90 -> 0.80); at 25/255 0.39 dB and 0.90 -> 0.87; at 15/255 0.20 dB.

:func:`uncensor` gives the solver what it assumes: each clipped value is replaced by a draw of (A x + n) from its
Gaussian truncated to the side the file reports, centred on the current estimate of A x, with the estimate
refined on the completed observation (a short data-augmentation / stochastic-EM loop, Tanner & Wong 1987). The
estimate of A x is the shipped denoiser on the observation itself (a blurred or low-resolution image is still an
image). With it those crops came back to 27.15 dB / 0.899 at 50/255 (unclipped 27.22 / 0.901) and to within
0.02 dB at 15 and 25/255. Pixels the file holds strictly inside (0, 1) are never changed.

Only for white Gaussian noise (``restore.api.Restorer.uncensor``; Langevin opts out). Camera noise is weaker in the
shadows and its black level crushed, so Gaussian draws there add noise the photo never had: on held-out crops
darkened to 30 % with the raw-pipeline camera noise PMRF at ``sigma=auto`` lost 0.16 dB and its 90 % coverage fell
0.85 -> 0.78 with the imputation, and on the real-noise benchmark's two SIDD crops the Gaussian solvers lost 0.8-1.7
dB. Yet Gaussian noise in a file at ``sigma=auto`` needs it most (PMRF on the same crops darkened, 50/255: 90 %
coverage 0.41 without, 0.91 with). So at a stated level the clipped values are always imputed; at an estimated one
only when they and the noise look like white Gaussian noise at that level (:func:`clipping_unlike_gaussian`);
``meta["censored"]`` says which and why.
"""

from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F

ROUNDS = 2  # estimate refinements after the first (a third changed the 50/255 crops by < 0.01 dB)
DENOISER = "score-natural"  # the estimate of A x; int8 where this machine has the kernels
TILE = 512  # the denoiser runs on tiles of this size (plus PAD context each side) to bound memory on large photos
PAD = 16
SEED_OFFSET = 2_000_003  # the draws' generator: the run's seed plus this (apart from the bootstrap's)
_U_MIN = 1e-12  # the inverse normal CDF's floor: 7 sigma into the tail
# a bound hit more than this many times as often as Gaussian noise at the stated level would hit it (given the
# refined estimate) is left alone. Held-out crops with clipped Gaussian noise (15-50/255, normal and darkened to
# 30 %) reached at most 1.39; a camera's crushed blacks (whole shadows at 0) far more
CRUSHED = 1.5
# At a level estimated from the image (``sigma=auto``) the clipped values are imputed only where they and the noise
# look like white Gaussian noise at that level (:func:`clipping_unlike_gaussian`): at least MIN_CLIPPED of the values
# at a bound; the more-hit bound crossed at least GAUSSIAN_CLIPPING times as often as Gaussian noise at that level
# would cross it (camera noise, weaker in the shadows, crosses less); and the denoised estimate leaving a residual of
# at least GAUSSIAN_FIT sigma^2 per unclipped value (camera noise read at an image-wide level leaves far less: the
# level fits its bright areas, not its shadows). Chosen on the priors' 8 held-out BSD432 crops (128 px, as they are
# and darkened to 30 %, PMRF; runs/auto_impute, 2026-12-07): clipped Gaussian noise at 15-50/255 that passed the
# clipping test left 0.63-1.28 (the few below 0.7 barely changed with the imputation), the two camera models 0.31-0.73,
# 16 CC15 / SIDD crops 0.23-0.47; the clipping test alone let through heavy camera noise where imputing cost PMRF
# 0.1-0.4 dB; below 0.3 % clipped the imputation changed < 0.03 dB.
GAUSSIAN_CLIPPING = 0.9
GAUSSIAN_FIT = 0.7
MIN_CLIPPED = 0.003


def censored(y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(exactly 0, exactly 1) masks of y (1, C, H, W): the values a clipped file cannot tell apart from anything
    further out. Values below 0 or above 1 (an unclipped float array, a simulation) are observations, kept as they
    are (imputing them cost PMRF 0.07 dB at 50/255)."""
    return y == 0, y == 1


def clipped_shares(low: torch.Tensor, high: torch.Tensor) -> dict[str, float]:
    """``meta['censored']``'s fraction of the values at 0 and at 1, from :func:`censored`'s masks."""
    return {"fraction_at_0": round(int(low.sum()) / low.numel(), 6),
            "fraction_at_1": round(int(high.sum()) / high.numel(), 6)}


def _draw_below(level: torch.Tensor, sigma: float, generator: torch.Generator) -> torch.Tensor:
    """level + sigma z with z standard normal conditioned on level + sigma z <= 0 (inverse-CDF draws)."""
    top = torch.special.ndtr(-level / sigma).clamp_min(_U_MIN)
    u = torch.rand(level.shape, generator=generator, dtype=level.dtype, device=level.device) * top
    return (level + sigma * torch.special.ndtri(u.clamp(_U_MIN, 1 - 1e-7))).clamp_max(0.0)


def impute(y: torch.Tensor, estimate: torch.Tensor, sigma: float, generator: torch.Generator,
           sigma_high: float | None = None) -> torch.Tensor:
    """y with each clipped value (:func:`censored`) replaced by a draw of estimate + N(0, s^2) truncated to the
    side y reports (<= 0 or >= 1), s = ``sigma`` at 0 and ``sigma_high`` (default the same) at 1; every other pixel
    unchanged. ``estimate``: of A x, like y."""
    low, high = censored(y)
    below = _draw_below(estimate, sigma, generator)
    above = 1.0 - _draw_below(1.0 - estimate, sigma if sigma_high is None else sigma_high, generator)
    return torch.where(low, below, torch.where(high, above, y))


def expected_crossings(distance: torch.Tensor, s: float) -> float:
    """How many values estimate + N(0, s^2) would push past a bound, summed over pixels: sum of Phi(-distance / s).
    ``distance``: every pixel's estimated distance to that bound (estimate for 0, 1 - estimate for 1), >= 0."""
    return float(torch.special.ndtr(-distance.double() / s).sum())


def clipping_sigma(distance: torch.Tensor, n_clipped: int, sigma: float, steps: int = 40) -> float:
    """The noise std s <= ``sigma`` at which estimate + N(0, s^2) would cross the bound as often as the file says:
    sum over pixels of Phi(-distance / s) = ``n_clipped`` (bisection in log s). ``distance``: every pixel's
    estimated distance to that bound (estimate for 0, 1 - estimate for 1). For white Gaussian noise this comes out
    near ``sigma``; for camera noise, which is weaker in the shadows than the image-wide level, lower, and the draws
    follow (imputing at the image-wide level cost PMRF 0.9 dB on dark SIDD crops at the oracle level)."""
    d = distance.flatten().double().clamp_min(0.0)

    def expected(s: float) -> float:
        return expected_crossings(d, s)

    if n_clipped == 0 or expected(sigma) <= n_clipped:
        return float(sigma)
    lo, hi = math.log(sigma) - 12.0, math.log(sigma)  # e^-12 sigma: clipped values at a bound the estimate sits on
    for _ in range(steps):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if expected(math.exp(mid)) < n_clipped else (lo, mid)
    return math.exp(hi)


def too_few_clipped(fraction: float) -> str | None:
    """Why a bound holding ``fraction`` of the values is too rarely hit for the imputation to matter at an estimated
    level (:data:`MIN_CLIPPED`), or None."""
    if fraction < MIN_CLIPPED:
        return (f"{100 * fraction:.2f} % of the values are clipped, too few for the imputation to matter "
                f"(< {100 * MIN_CLIPPED:g} %)")
    return None


def clipping_unlike_gaussian(note: dict) -> str | None:
    """Why the clipped values and the noise :func:`uncensor` described in ``note`` do not look like white Gaussian
    noise at the level it was given (a level estimated from the image), or None when they do (:data:`MIN_CLIPPED`,
    :data:`GAUSSIAN_CLIPPING`, :data:`GAUSSIAN_FIT`; the bound hit more often decides, a crushed one does not count)."""
    if not note.get("imputed"):
        return "every clipped bound looks crushed (a camera's black or white level), not clipped noise"
    fractions = {side: note[f"fraction_at_{side}"] for side in ("0", "1") if side not in note["crushed"]}
    side = max(fractions, key=fractions.get)
    if (why := too_few_clipped(fractions[side])) is not None:
        return why
    ratio = note["clipped_vs_expected"][side]
    if ratio < GAUSSIAN_CLIPPING:
        return (f"the values at {side} are {ratio:.2f} times as many as Gaussian noise at the estimated level would "
                f"clip (< {GAUSSIAN_CLIPPING}): noise weaker towards that end, as a camera's is")
    if note["estimate_chi2"] < GAUSSIAN_FIT:
        return (f"a denoised estimate explains the unclipped values to {note['estimate_chi2']:.2f} sigma^2 each "
                f"(< {GAUSSIAN_FIT}): the noise is weaker than the estimated level over much of the image, as a "
                "camera's is")
    return None


def denoise_tiled(denoiser, y: torch.Tensor, sigma: float, tile: int = TILE, pad: int = PAD) -> torch.Tensor:
    """denoiser(y, sigma) clamped to [0, 1], in tiles of ``tile`` px each run with ``pad`` px of context (y is
    reflect-padded at its borders), so a large photo needs a tile's memory, not the whole image's."""
    _, _, h, w = y.shape
    out = torch.empty_like(y)
    padded = F.pad(y, (pad, pad, pad, pad), mode="reflect") if min(h, w) > pad else F.pad(
        y, (pad, pad, pad, pad), mode="replicate")
    with torch.no_grad():
        for top in range(0, h, tile):
            for left in range(0, w, tile):
                bottom, right = min(top + tile, h), min(left + tile, w)
                piece = padded[..., top:bottom + 2 * pad, left:right + 2 * pad]
                out[..., top:bottom, left:right] = denoiser(piece, sigma)[..., pad:pad + bottom - top,
                                                                          pad:pad + right - left].clamp(0, 1)
    return out


def uncensor(y: torch.Tensor, sigma: float, denoiser, generator: torch.Generator,
             rounds: int = ROUNDS) -> tuple[torch.Tensor, dict | None]:
    """(y with its clipped values imputed, a note for ``meta['censored']``), or (y, None) when nothing is clipped
    or there is no noise to have clipped. y (1, C, H, W) in [0, 1]; sigma the Gaussian noise std on [0, 1];
    ``denoiser(x, sigma)`` a denoiser for images like y."""
    low, high = censored(y)
    n_low, n_high = int(low.sum()), int(high.sum())
    if sigma <= 0 or n_low + n_high == 0:
        return y, None
    t0 = time.perf_counter()
    estimate = denoise_tiled(denoiser, y, sigma)

    def sigmas(est):
        return clipping_sigma(est, n_low, sigma), clipping_sigma(1.0 - est, n_high, sigma)

    for _ in range(rounds):
        s_low, s_high = sigmas(estimate)
        estimate = denoise_tiled(denoiser, impute(y, estimate, s_low, generator, s_high), sigma)
    s_low, s_high = sigmas(estimate)
    completed = impute(y, estimate, s_low, generator, s_high)
    inside = ~(low | high)
    fit = float(((y - estimate)[inside] ** 2).mean() / sigma**2) if inside.any() else 0.0
    # a bound the file hits far more often than the noise could have pushed it there is crushed, not clipped noise
    # (a camera's black level): those values stay as the file has them
    ratios = {side: n / max(expected_crossings(distance, sigma), 1e-9)
              for side, n, distance in (("0", n_low, estimate), ("1", n_high, 1.0 - estimate)) if n > 0}
    crushed = [side for side, ratio in ratios.items() if ratio > CRUSHED]
    if "0" in crushed:
        completed = torch.where(low, y, completed)
    if "1" in crushed:
        completed = torch.where(high, y, completed)
    return completed, {
        **clipped_shares(low, high),
        "noise_at_0": round(s_low, 6), "noise_at_1": round(s_high, 6), "crushed": crushed,
        "clipped_vs_expected": {side: round(r, 4) for side, r in ratios.items()}, "estimate_chi2": round(fit, 4),
        "imputed": (n_low > 0 and "0" not in crushed) or (n_high > 0 and "1" not in crushed), "rounds": rounds,
        "seconds": round(time.perf_counter() - t0, 4),
        "what": "values the file holds at 0 or 1 (noise clipped there) replaced by draws of the noisy value from the "
                "Gaussian truncated to that side, centred on a denoised estimate (restore.censoring), so the solver "
                "and its calibration see the unclipped noise they assume"}
