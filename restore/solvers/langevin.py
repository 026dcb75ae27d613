"""Reference solver: unadjusted Langevin (PnP-ULA, Laumont et al. 2022) with a plug-in denoiser prior.

Iteration, run as parallel chains in one batch::

    x <- clip( x - eta * grad f(x) - eta * alpha * (x - D(x, s)) / s^2 + sqrt(2 eta) * z ,  -1, 2 )

with f(x) = ||A x - y||^2 / (2 sigma_y^2) (deepinv ``L2``; Poisson noise through its Gaussian equivalent std) and
the prior score from deepinv's ``ScorePrior`` on the chosen denoiser: by default our trained ``score-natural``
(the paper plugs in a trained denoiser too, at s = epsilon^(1/2) = 5/255 ~ 0.02); ``-p wavelet`` is the weight-free
alternative (use prior_sigma ~ 0.05 with it). Step eta = step_scale / (||A||^2 / sigma_y^2 + alpha / s^2), the
stability bound of ULA. The posterior mean and std are pooled over all post-burn-in states of all chains.

Speed (ours): the paper runs one long chain per sample. Our default runs 2 chains of 100 iterations and draws the K
samples as post-burn-in states spread over each chain (thinning); the mean and std pool every post-burn-in state.
``preset="paper"`` gives one chain per sample and 500 iterations (the paper itself runs far longer chains; 500
was this project's reference setting). This solver stays as the baseline every benchmark compares against.

Warm start (ours; ``init``, ``init_options``, ``per_family``): the paper starts its chains from the observation, and
ULA's stationary law does not depend on the start, only the burn-in does. Short chains do depend on it: on
deblurring, 100 iterations from the blurred image stop short of what 400 reach. Deblurring therefore starts from
plug-and-play HQS on the same denoiser (``restore.solvers.hqs``: 8 denoiser passes from noise 1.0 down plus
conjugate-gradient data steps, the estimate PMRF takes as its deblurring mean), and random inpainting from 20 HQS
steps below noise 0.05 that refine the membrane fill; the chains then explore around that start, and the statistics
are still pooled after the burn-in. Large holes (box inpainting), SR and denoising start from the estimate as before.
A weight-free prior (wavelet) always does: HQS's high-noise steps need a trained denoiser.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from restore.posterior import Posterior
from restore.solvers import hqs
from restore.solvers.base import Solver, initial_estimate, noise_sigma, operator_norm_sq, randn
from restore.tasks import family_of, kind_of


# warm starts from HQS, on 4 held-out BSD432 crops (128 px, 4 samples; restore.train.tune): deblurring Gaussian
# 28.96 -> 29.87 dB and camera shake 24.03 -> 26.63 dB at 100 iterations, above 400 iterations from the observation
# (29.83 / 25.23), 90 % coverage 0.80 -> 0.83 and 0.70 -> 0.81. Random inpainting 26.81 -> 27.22 with HQS kept below
# noise 0.05 (from 1.0, as for deblurring, it fails: 19.4 dB; top 0.03 / 0.1: 27.11 / 26.89; 40 steps 27.30), where
# 400 iterations give 27.18 and 4 chains of 200 27.30 at 4x the time. Longer chains from the HQS start do not pay on
# deblurring (8 held-out crops, 128 px, 4 samples, 2026-12-06; benchmarks/results/tune_langevin_deblur_iterations.json):
# 100 / 200 / 300 iterations Gaussian 30.00 / 30.09 / 30.15 dB, motion 26.63 / 26.37 / 26.11 (the chain drifts from
# the HQS estimate towards ULA's own mean, which is below it on camera shake), so the default's 0.35 dB gap to the
# paper preset on the quick crops' Gaussian blur is not an iteration count to buy back
PER_FAMILY = {"deblur": {"init": "hqs"},
              "inpaint-random": {"init": "hqs", "init_options": {"sigma_max": 0.05, "steps": 20}}}


@dataclass
class LangevinConfig:
    iterations: int = 100  # paper preset: 500
    burnin: float = 0.3  # fraction of iterations discarded before statistics are pooled
    step_scale: float = 0.9  # fraction of the stability bound used as step size
    prior_sigma: float = 0.02  # s: the denoiser's noise level in the prior score (paper: 5/255)
    alpha: float = 1.0  # prior weight
    clip: tuple = (-1.0, 2.0)
    # parallel chains; None: one per requested sample (the K samples are the chains' final states). Fewer chains
    # than samples: the samples are post-burn-in states spread evenly over each chain's run (thinning), which costs
    # no extra iterations; the mean and std pool every post-burn-in state either way.
    chains: int | None = 2  # paper preset: None
    # where the chains start: "estimate" (y, bicubic or a membrane fill: base.initial_estimate; the paper starts from
    # the observation) or "hqs" (plug-and-play HQS on the same denoiser: restore.solvers.hqs, ~8 passes), a warm start
    # that leaves the chain less to travel; above HQS's max_noise the chains start from the estimate
    init: str = "estimate"
    init_options: dict | None = None  # HQS settings of the warm start (restore.solvers.hqs.HQSSettings), e.g. steps
    # task families whose settings differ (unless given explicitly; keys as RED-Diff's: restore.provenance.family_entry)
    per_family: dict | None = field(default_factory=lambda: {k: dict(v) for k, v in PER_FAMILY.items()})


class LangevinSolver(Solver):
    name = "langevin"
    config_cls = LangevinConfig
    prior_kinds = ("denoiser",)
    default_prior = "score-natural"
    presets = {"paper": {"iterations": 500, "chains": None, "per_family": None}}
    work_floor = {"iterations": (50, "benchmarks/results/accuracy_floors.json")}
    # the denoiser runs forward-only (its residual is the score): real int8 by default, as RED-Diff. Held-out (3
    # BSD432 crops, 96 px, 4 samples; restore.train.tune --solver langevin --quant int8 / none): 27.35 vs 27.33 dB
    # over the six tasks at 12.3 vs 26.6 s a run; the paper preset and a weight-free prior (wavelet) stay float
    default_quant = "int8"
    paper = "Laumont et al., Bayesian imaging using Plug & Play priors (PnP-ULA), SIAM J. Imaging Sci. 2022"
    # no imputation of clipped values (restore.censoring): on the priors' 8 held-out BSD432 crops (128 px, 8-bit
    # clipped Gaussian noise, 2026-12-07) it cost the chains 0.07 dB at 25/255 and 1.2 dB at 50/255 (28.41 -> 28.34,
    # 25.33 -> 24.13) at the same 90 % coverage (0.88-0.90), where it gained PMRF, RED-Diff, VBLE and APS 0.1-1.8 dB;
    # the clipped values, pulled towards the range, are closer to the truth than chains that keep some noise
    impute_clipped = False

    def n_chains(self, samples: int, cfg: LangevinConfig | None = None) -> int:
        """Chains run for ``samples`` samples: one each (chains=None), else the config's, at most one per sample."""
        cfg = cfg or self.config
        if cfg.chains is None:
            return samples
        if int(cfg.chains) < 1:
            raise ValueError(f"chains must be >= 1; got {cfg.chains}")
        return min(int(cfg.chains), samples)

    @staticmethod
    def warm_start(cfg: LangevinConfig, kind: str, sigma_y: float | None, prior=None):
        """The HQS settings (``restore.solvers.hqs.HQSSettings``) the chains under ``cfg`` start from on a task of
        this kind at observation noise std ``sigma_y`` (None: not known yet) with ``prior`` (None: not known yet), or
        None where they start from the estimate. HQS needs ``init='hqs'``, a task other than denoising (y is already
        the start), noise within HQS's range, and a trained denoiser: HQS runs it from noise 1.0 down, where a
        weight-free threshold (wavelet) wipes the image out (a 48 px Gaussian deblurring at 20 iterations: 22.7 dB
        from HQS against 23.5 from the observation)."""
        if cfg.init not in ("estimate", "hqs"):
            raise ValueError(f"init must be 'estimate' or 'hqs'; got {cfg.init!r}")
        settings = hqs.HQSSettings.from_options(cfg.init_options)
        trained = prior is None or bool((getattr(prior, "card", None) or {}).get("steps"))
        warm = cfg.init == "hqs" and kind != "denoise" and trained and settings.handles(sigma_y)
        return settings if warm else None

    def cost(self, task, samples: int, prior=None) -> float:
        cfg, _ = self.settings_for(task.family)
        passes = cfg.iterations * self.n_chains(samples, cfg)  # one prior-score pass per iteration and chain
        warm = self.warm_start(cfg, task.kind, None if task.auto else task.noise_sigma, prior)
        return passes + (hqs.cost(warm, task) if warm is not None else 0.0)

    def _solve(self, y, physics, prior, *, n_samples, generator, progress):
        import deepinv as dinv

        cfg, family = self.settings_for(family_of(physics))
        if cfg.iterations < 2 or not 0 <= cfg.burnin < 1:
            raise ValueError("iterations must be >= 2 and burnin in [0, 1)")
        sigma_y = noise_sigma(physics, y)
        warm = self.warm_start(cfg, kind_of(physics), sigma_y, prior)
        if warm is not None:
            x0 = hqs.pnp_hqs(y, physics, prior.module, warm,
                             progress=lambda i, k: progress(0.0, f"warm start (hqs): step {i}/{k}"))
        else:
            x0 = initial_estimate(y, physics)
        norm_a = operator_norm_sq(physics, x0.shape, generator)
        eta = cfg.step_scale / (norm_a / sigma_y**2 + cfg.alpha / cfg.prior_sigma**2)
        fidelity = dinv.optim.L2(sigma=sigma_y)
        score_prior = dinv.optim.ScorePrior(denoiser=prior.module)
        n_chains = self.n_chains(n_samples, cfg)
        x = x0.expand(n_chains, -1, -1, -1).clone()
        yk = y.expand(n_chains, -1, -1, -1)
        start = int(cfg.burnin * cfg.iterations)
        per_chain = -(-n_samples // n_chains)  # states kept from each chain (1: its final state)
        if cfg.iterations - start < per_chain:
            raise ValueError(f"{n_samples} samples from {n_chains} chains need at least {per_chain} post-burn-in "
                             f"iterations; got {cfg.iterations - start} (raise iterations or chains)")
        keep_at = {start + (cfg.iterations - start) * (j + 1) // per_chain - 1 for j in range(per_chain)}
        kept_states = []
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
                    kept += n_chains
                if it in keep_at:
                    kept_states.append(x.clone())
                if it % max(1, cfg.iterations // 20) == 0:
                    progress(it / cfg.iterations, f"Langevin step {it}/{cfg.iterations}")
        mean = acc / kept
        var = (acc2 / kept - mean * mean).clamp_min(0) * kept / max(kept - 1, 1)
        samples = torch.cat(kept_states)[:n_samples]
        return Posterior(mean=mean.float().clamp(0, 1), samples=samples.clamp(0, 1), std=var.sqrt().float(),
                         meta={"step_size": eta, "sigma_y": sigma_y, "norm_A": norm_a, "states_pooled": kept,
                               "chains": n_chains, "start": "estimate" if warm is None else "hqs",
                               "family_settings": family})


SOLVER = LangevinSolver
