"""Wiener-Hunt deconvolution: the closed-form minimiser of 1/2 ||k * x - y||^2 + lambda/2 ||L x||^2 (L the discrete
Laplacian), computed in Fourier. A prior-free, instant estimate of a blurred image; the quality benchmark's classical
"wiener" row and the start of solvers whose own start would be the blurred observation (APS).

Our blur reflects at the border and the filter is circular, so y is reflect-padded by the kernel size first and the
result cropped back. The weight scales with the noise variance: lambda = weight x sigma^2 (sigma on [0, 1]);
``WEIGHT`` = 30 is the best of a log grid on held-out BSD432 crops (``python -m benchmarks.classical``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from restore.solvers.base import SolverError, initial_estimate, noise_sigma
from restore.tasks import kind_of

STARTS = ("observation", "wiener")  # the values of a solver's ``init_estimate`` option

WEIGHT = 30.0  # lambda / sigma^2, from benchmarks.classical's scan (results/classical.json), denoising and deblurring


@torch.no_grad()
def wiener_hunt(y: torch.Tensor, physics, weight: float = WEIGHT, sigma: float | None = None) -> torch.Tensor:
    """Wiener-Hunt estimate (B, C, H, W) in [0, 1] of a denoising or deblurring observation y (B, C, H, W) in [0, 1].

    ``physics``: a task's operator (``restore.tasks``); its blur kernel ``physics.filter`` (a unit kernel for
    denoising). ``sigma``: the noise std on [0, 1] (default: the operator's own, ``base.noise_sigma``)."""
    import deepinv as dinv

    kind = kind_of(physics)
    if kind not in ("denoise", "deblur"):
        raise ValueError(f"Wiener-Hunt deconvolution applies to denoising and deblurring, not {kind}")
    kernel = torch.ones(1, 1, 1, 1, device=y.device) if kind == "denoise" else physics.filter
    sigma = noise_sigma(physics, y) if sigma is None else sigma
    p = max(kernel.shape[-2:])
    padded = F.pad(y, (p, p, p, p), mode="reflect")
    fft = dinv.physics.BlurFFT(img_size=tuple(padded.shape[1:]), filter=kernel.to(y.device), device=y.device)
    model = dinv.models.WienerDeconvolution(lambda_reg=weight * sigma**2, prior="laplacian", device=y.device)
    return model(padded, fft)[..., p:-p, p:-p].clamp(0, 1)


@torch.no_grad()
def starting_estimate(y: torch.Tensor, physics, which: str) -> torch.Tensor:
    """The cheap estimate x0 (B, C, H, W) in [0, 1] a solver starts from: ``which="observation"`` is
    ``base.initial_estimate`` (y, bicubic y, the filled-in input); ``which="wiener"`` is, on deblurring, the
    Wiener-Hunt deconvolution of y (and the observation's estimate on other tasks). Other values raise SolverError
    (the option is a solver's)."""
    if which not in STARTS:
        raise SolverError(f"init_estimate must be 'wiener' or 'observation', not {which!r}")
    if which == "wiener" and kind_of(physics) == "deblur":
        return wiener_hunt(y, physics)
    return initial_estimate(y, physics)
