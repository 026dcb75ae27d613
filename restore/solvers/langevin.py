"""Reference solver: unadjusted Langevin (PnP-ULA, Laumont et al. 2022) with a plug-in denoiser prior.

Iteration, run as K independent chains in one batch (K = n_samples)::

    x <- clip( x - eta * grad f(x) - eta * alpha * (x - D(x, s)) / s^2 + sqrt(2 eta) * z ,  -1, 2 )

with f(x) = ||A x - y||^2 / (2 sigma_y^2) (deepinv ``L2``; Poisson noise through its Gaussian equivalent std) and
the prior score from deepinv's ``ScorePrior`` on the chosen denoiser (default: weight-free wavelet thresholding,
so this runs with no trained weights). Step eta = step_scale / (||A||^2 / sigma_y^2 + alpha / s^2), the stability
bound of ULA. The posterior mean and std are pooled over all post-burn-in states of all chains; the K returned
samples are the chains' final states. This solver stays as the baseline every benchmark compares against.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from restore.posterior import Posterior
from restore.solvers.base import Solver, initial_estimate, noise_sigma, operator_norm_sq, randn


@dataclass
class LangevinConfig:
    iterations: int = 500
    burnin: float = 0.3  # fraction of iterations discarded before statistics are pooled
    step_scale: float = 0.9  # fraction of the stability bound used as step size
    prior_sigma: float = 0.05  # s: the denoiser's noise level / threshold in the prior score
    alpha: float = 1.0  # prior weight
    clip: tuple = (-1.0, 2.0)


class LangevinSolver(Solver):
    name = "langevin"
    config_cls = LangevinConfig
    prior_kinds = ("denoiser",)
    default_prior = "wavelet"
    paper = "Laumont et al., Bayesian imaging using Plug & Play priors (PnP-ULA), SIAM J. Imaging Sci. 2022"

    def _solve(self, y, physics, prior, *, n_samples, generator, progress):
        import deepinv as dinv

        cfg = self.config
        if cfg.iterations < 2 or not 0 <= cfg.burnin < 1:
            raise ValueError("iterations must be >= 2 and burnin in [0, 1)")
        sigma_y = noise_sigma(physics, y)
        x0 = initial_estimate(y, physics)
        norm_a = operator_norm_sq(physics, x0.shape, generator)
        eta = cfg.step_scale / (norm_a / sigma_y**2 + cfg.alpha / cfg.prior_sigma**2)
        fidelity = dinv.optim.L2(sigma=sigma_y)
        score_prior = dinv.optim.ScorePrior(denoiser=prior.module)
        x = x0.expand(n_samples, -1, -1, -1).clone()
        yk = y.expand(n_samples, -1, -1, -1)
        start = int(cfg.burnin * cfg.iterations)
        acc = torch.zeros_like(x0, dtype=torch.float64)
        acc2 = torch.zeros_like(acc)
        kept = 0
        with torch.no_grad():
            for it in range(cfg.iterations):
                grad = fidelity.grad(x, yk, physics) + cfg.alpha * score_prior.grad(x, cfg.prior_sigma)
                x = x - eta * grad + math.sqrt(2 * eta) * randn(x.shape, generator, x)
                x = x.clamp(*cfg.clip)
                if it >= start:
                    xd = x.double()
                    acc += xd.sum(0, keepdim=True)
                    acc2 += (xd * xd).sum(0, keepdim=True)
                    kept += n_samples
                if it % max(1, cfg.iterations // 20) == 0:
                    progress(it / cfg.iterations, f"Langevin step {it}/{cfg.iterations}")
        mean = acc / kept
        var = (acc2 / kept - mean * mean).clamp_min(0) * kept / max(kept - 1, 1)
        return Posterior(mean=mean.float().clamp(0, 1), samples=x.clamp(0, 1), std=var.sqrt().float(),
                         meta={"step_size": eta, "sigma_y": sigma_y, "norm_A": norm_a, "states_pooled": kept})


SOLVER = LangevinSolver
