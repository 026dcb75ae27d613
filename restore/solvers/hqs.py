"""Plug-and-play half-quadratic splitting (HQS) with a noise-conditional denoiser: a fast posterior-mean estimate.

Not a solver on its own (it returns one point estimate, no samples): PMRF uses it as its first stage, the posterior
mean that its flow then transports (``PMRFConfig.per_family``), where it beats RED-Diff on deblurring by 0.7-1.4 dB
in about half the time (module docstring of ``restore.solvers.pmrf``).

The iteration is DPIR's (Zhang, Li, Zuo, Zhang, Van Gool, Timofte, "Plug-and-Play Image Restoration with Deep
Denoiser Prior", TPAMI 2021): from a cheap start x (``initial_estimate``), for sigma_k log-spaced from ``sigma_max``
down to the observation's noise level sigma_y,

    z = argmin_x ||A x - y||^2 / (2 sigma_y^2) + lambda_ ||x - x_prev||^2 / (2 sigma_k^2)   (data step)
    x = D(z, sigma_k)                                                                      (prior step)

The data step is deepinv's ``physics.prox_l2`` with gamma = sigma_k^2 / (lambda_ sigma_y^2): closed form where the
operator allows it, conjugate gradients otherwise (our blur and SR operators pad by reflection, so CG with
``cg_iters`` iterations). Where we depart from DPIR: lambda_ and the step count were chosen for our denoiser on
held-out training crops (DPIR: lambda 0.23, 8 steps from 49/255 for deblurring), and there is no x8 self-ensemble.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch

from restore.solvers.base import SolverError, initial_estimate, noise_sigma


@dataclass(frozen=True)
class HQSSettings:
    steps: int = 8  # denoiser passes (DPIR: 8 for deblurring)
    lambda_: float = 0.5  # prior weight; the data step's gamma is sigma_k^2 / (lambda_ sigma_y^2) (DPIR: 0.23)
    sigma_max: float = 1.0  # first denoiser level (DPIR: 49/255); the last is the observation's noise level
    cg_iters: int = 30  # conjugate-gradient iterations of a data step without a closed form
    cg_tol: float = 1e-5
    # above this observation noise (std on [0, 1]) HQS's data steps amplify more noise than its denoiser removes: as
    # PMRF's deblurring first stage it was level with RED-Diff at 0.05 and 0.5-1.6 dB below it at 0.07-0.1 (4 held-out
    # crops, Gaussian sigma 2 and 19 px motion), so PMRF takes RED-Diff's mean there
    max_noise: float = 0.05

    @classmethod
    def from_options(cls, options: dict | None) -> "HQSSettings":
        """Settings from a dict of overrides; an unknown name or a bad value is a SolverError naming it."""
        options = dict(options or {})
        known = {f.name for f in fields(cls)}
        unknown = set(options) - known
        if unknown:
            raise SolverError(f"hqs has no option {', '.join(sorted(unknown))}; options: {', '.join(sorted(known))}")
        s = cls(**options)
        if int(s.steps) < 1 or s.lambda_ <= 0 or s.sigma_max <= 0 or int(s.cg_iters) < 1:
            raise SolverError(f"hqs needs steps >= 1, lambda_ > 0, sigma_max > 0 and cg_iters >= 1; got {s}")
        return s

    def handles(self, sigma_y: float | None) -> bool:
        """Whether HQS is the better start at observation noise std ``sigma_y`` (on [0, 1]; None: not known yet,
        taken as yes): at most :attr:`max_noise`. PMRF's deblurring mean and Langevin's warm start both ask."""
        return sigma_y is None or sigma_y <= self.max_noise


def sigma_schedule(settings: HQSSettings, sigma_y: float) -> list[float]:
    """The denoiser levels, log-spaced from ``sigma_max`` down to ``sigma_y`` (both on [0, 1])."""
    top = max(settings.sigma_max, sigma_y)
    return torch.logspace(math.log10(top), math.log10(sigma_y), int(settings.steps), dtype=torch.float64).tolist()


@torch.no_grad()
def pnp_hqs(y: torch.Tensor, physics, denoise, settings: HQSSettings = HQSSettings(), progress=None) -> torch.Tensor:
    """HQS estimate of x from ``y`` (1, C, h, w) under deepinv ``physics``; ``denoise(x, sigma)`` is a Gaussian
    denoiser (x (B, C, H, W) in [0, 1], sigma on [0, 1]). Returns (1, C, H, W) in [0, 1]."""
    sigma_y = noise_sigma(physics, y)
    levels = sigma_schedule(settings, sigma_y)
    x = initial_estimate(y, physics)
    for i, s in enumerate(levels):
        z = physics.prox_l2(x, y, s**2 / (settings.lambda_ * sigma_y**2), max_iter=int(settings.cg_iters),
                            tol=settings.cg_tol)
        x = denoise(z, s).clamp(0, 1)
        if progress is not None:
            progress(i + 1, len(levels))
    return x


def cost(settings: HQSSettings, task) -> float:
    """Work of one HQS run in DRUNet-size forwards at the restored size: the denoiser passes plus the conjugate-gradient
    data steps, whose convolutions cost ~0.010 + 9e-5 x (kernel area) forwards per iteration (fitted 2026-12-04 at
    256 px, 2 threads: 1.4 s of CG for the 11 x 11 Gaussian kernel and 3.0 s for Levin's 19 x 19 camera shake, beside
    2.2 s of denoiser passes)."""
    kernel = task.kernel()  # None except for deblurring
    area = float(kernel.shape[-1] * kernel.shape[-2]) if kernel is not None else 0.0
    return float(settings.steps) * (1.0 + float(settings.cg_iters) * (0.010 + 9e-5 * area))
