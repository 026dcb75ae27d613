"""VBLE: variational Bayes in the latent space of a compressive autoencoder (Biquard et al., arXiv 2311.17744).

As read from the reference code (MaudBqrd/VBLE; notes/vble.md):

- Variational family: fully factorised **uniform** laws on the latent z and the hyper-latent h,
  ``q(z) = prod U(zbar - a_z/2, zbar + a_z/2)``, the same for h; log-widths start at 0 (a = 1, the width of the
  quantisation noise the CAE was trained with) and are clamped to [log 1.5e-5, log 20] with straight-through
  gradients (compressai ``LowerBound``-style).
- Objective per step, one reparameterised sample (u ~ U(0, 1)): ``z = zbar + a_z (u - 1/2)``, ``x = g_s(z)``,
  ``loss = ||A clip(x, -0.1, 1.1) - y||^2 / (2 sigma^2) / N + lambda (rate - entropy)`` with
  ``rate = -(sum log p~(z | h) + sum log p~(h)) / N`` from compressai's ``_likelihood`` functions (unit-bin masses,
  lower-bounded at 1e-9), ``entropy = (sum log a_z + sum log a_h) / N``, N = H x W. sigma = 0 becomes 4e-3.
- Init: ``zbar = g_a(x0)``, ``hbar = h_a(zbar)`` with x0 the task's cheap estimate (y, bicubic upsampling,
  interpolation of the observed pixels). On deblurring we start instead from a Wiener-Hunt deconvolution of y
  (``per_family``: ``init_estimate="wiener"``; ``restore.solvers.wiener``, prior-free, ~0.02 s at 256 px): on 8
  held-out BSD432 crops (128 px, 4 samples) motion blur gains 0.26 / 0.51 / 0.69 dB at q2 / q4 / q6 (25.56 -> 25.82,
  25.36 -> 25.87, 25.00 -> 25.69 dB), Gaussian blur is level (28.30 -> 28.28, 28.70 -> 28.69, 28.79 -> 28.82);
  ``-O init_estimate=observation`` or ``-O preset=paper`` start from y.
- Optimisation: Adam, lr 0.1, gradient-norm clipping at 20, a fixed number of iterations (300; 400 for
  inpainting), last iterate. We stop early on the objective by default (``early_stop``; None restores the paper's
  fixed count) once a window's mean objective stops falling, and run inpainting for 40 iterations
  (``inpaint_iterations``): there the objective keeps falling while the missing region drifts (held-out crops:
  +0.6 dB on random and +1.2 dB on box inpainting against the early-stopped 400).
- Which rate (the paper picks the CAE's rate per task; notes/vble.md): with no prior named, ``per_family`` picks one of
  our three (``PRIOR_BY_FAMILY``, read by ``Solver.prior_for``): the best on 8 held-out BSD432 crops (128 px, 4
  samples): q6 for denoising (+0.4 to +0.8 dB over q2 at 10-25/255, level at 50), x2 SR (+0.62) and inpainting
  (+0.27 / +0.36), q4 for deblurring (Gaussian +0.41, motion +0.05; q6 would trade 0.13 on Gaussian for -0.18 on
  motion), q2 for x4 SR (+0.29 over q6). docs/solvers.md "VBLE: which rate" has the table.
- Weight of the KL term (the paper tunes lambda per task, 0.6-10): 1 except where the same crops, at the rates above,
  preferred another (``LAMBDA_BY_FAMILY``): inpainting 10 (random 26.72 -> 27.25 dB, box 26.34 -> 26.44; random
  peaks at 16-25 with 27.34, box at 6-10) and x2 SR 2.5 (27.23 -> 27.35); denoising and deblurring are best at 1
  (0.7 and 1.5 within 0.1), x4 SR is flat from 0.7 to 2.5.
- Posterior: ``stat_samples`` (paper: 100) decoded latent samples give the MMSE-x (their mean, the paper's main
  estimate) and the std map; the first K are returned as samples.

Our choices, stated: images are reflect-padded to a multiple of 64 (g_a downsamples by 16, h_a by 4 more) and cropped
after decoding; grey images run as three equal channels, averaged back. The decoder must be differentiable: a
quantised (int8) CAE is refused with a clear message.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from restore.posterior import Posterior
from restore.solvers import wiener
from restore.solvers.base import Solver, SolverError, noise_sigma
from restore.tasks import family_of

LOG_A_MIN, LOG_A_MAX = math.log(1.5e-5), math.log(20.0)

# the CAE (its rate) each task family runs on when no prior is named: the best of q2 / q4 / q6 on 8 held-out BSD432
# crops (module docstring "Which rate"; benchmarks/results/tune_vble_rate_q*.json, tune_vble_sr2_q*.json)
PRIOR_BY_FAMILY = {"denoise": "cae-natural-q6", "deblur": "cae-natural-q4", "sr2": "cae-natural-q6",
                   "sr4": "cae-natural-q2", "inpaint": "cae-natural-q6"}
# the weight of the KL term where 1 (the exact ELBO) is not the best, as the paper tunes it per task (0.6-10): on
# the same crops at the rates above, inpainting +0.53 / +0.10 dB (random / box) at 10, x2 SR +0.12 at 2.5; denoising,
# deblurring and x4 SR are best at 1 (module docstring "Weight of the KL term"; tune_vble_lambda_*.json)
LAMBDA_BY_FAMILY = {"sr2": 2.5, "inpaint": 10.0}
# deblurring starts from g_a of a Wiener-Hunt deconvolution, not of the blurred y (module docstring: 8 held-out
# BSD432 crops, motion blur +0.26 / +0.51 / +0.69 dB at q2 / q4 / q6, Gaussian blur level)
PER_FAMILY = {family: {"prior": name, **({"lambda_": LAMBDA_BY_FAMILY[family]} if family in LAMBDA_BY_FAMILY else {}),
                       **({"init_estimate": "wiener"} if family == "deblur" else {})}
              for family, name in PRIOR_BY_FAMILY.items()}


@dataclass
class VBLEConfig:
    iterations: int | None = None  # None: 300, or inpaint_iterations for inpainting
    # inpainting's count (ours; None: the paper's 400): the objective keeps falling while the hole drifts away from
    # the image, which early stopping does not catch (6 held-out crops, 128 px, random / box: 26.30 / 25.15 dB at 30
    # iterations, 26.18 / 25.16 at 40, 26.05 / 25.14 at 50, 25.67 / 24.48 at 100, 25.57 / 23.94 at 400 early-stopped)
    inpaint_iterations: int | None = 40
    lr: float = 0.1
    lambda_: float = 1.0  # 1 = the exact ELBO; the paper tunes 0.6-10 per task (per_family: LAMBDA_BY_FAMILY)
    clip_grad: float = 20.0
    stat_samples: int = 100  # decoded samples behind the mean and std (the paper's 100)
    decode_batch: int = 4
    sigma_floor: float = 4e-3  # the noise std used when the task says 0
    # early stopping (ours; None = the paper's fixed count): stop once the objective's mean over the last
    # ``early_window`` iterations fell by less than this fraction of its magnitude against the window before.
    # Measured on the 4 quick CBSD68 crops x 6 tasks (one thread): 1e-2 runs 3.4x faster than the fixed count
    # (115 s vs 388 s) at the same PSNR within 0.16 dB on five tasks, and +4.6 dB on box inpainting, where the
    # paper's 400 iterations drift.
    early_stop: float | None = 1e-2
    early_window: int = 25
    # x0 whose encoding g_a(x0) starts the latent: "observation" (base.initial_estimate: y, bicubic y, the filled-in
    # input, the paper's) or, on deblurring, "wiener" (the Wiener-Hunt deconvolution of y); per_family sets "wiener"
    init_estimate: str = "observation"
    # the CAE a Restorer loads when none is named (None: default_prior); per_family picks one per task family, and a
    # prior named to the Restorer (``prior=``, the CLI's ``--prior``, the app's list) is set here and wins over both
    prior: str | None = None
    # task families whose settings differ (unless given explicitly; keys as RED-Diff's: restore.provenance.family_entry)
    per_family: dict | None = field(default_factory=lambda: {k: dict(v) for k, v in PER_FAMILY.items()})


class _Clamp(torch.autograd.Function):
    """Clamp in the forward pass, identity gradient (so a width stuck at a bound can come back)."""

    @staticmethod
    def forward(ctx, x, lo, hi):
        return x.clamp(lo, hi)

    @staticmethod
    def backward(ctx, g):
        return g, None, None


def _pad64(x: torch.Tensor) -> torch.Tensor:
    h, w = x.shape[-2:]
    ph, pw = (-h) % 64, (-w) % 64
    if ph == 0 and pw == 0:
        return x
    mode = "reflect" if ph < h and pw < w else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode)


def _hyper_params(net, h: torch.Tensor, z: torch.Tensor):
    """Gaussian (scales, means) of p(z | h) for mean-scale models, with the context model when there is one."""
    params = net.h_s(h)
    if hasattr(net, "context_prediction"):  # mbt2018: autoregressive context, applied in parallel as in training
        ctx = net.context_prediction(z)
        params = net.entropy_parameters(torch.cat([params, ctx], dim=1))
    if params.shape[1] == 2 * z.shape[1]:
        scales, means = params.chunk(2, dim=1)
        return scales, means
    return params, None  # scale-only hyperprior


def _likelihoods(net, z, h, scales, means):
    """Unit-bin probability masses of z under p(z | h) and of h under the factorised hyper-prior, lower-bounded as
    compressai does in training (continuous samples, no rounding)."""
    gc, eb = net.gaussian_conditional, net.entropy_bottleneck
    lik_z = gc._likelihood(z, scales, means)
    # the bottleneck's density is per channel: it expects values shaped (C, 1, -1), as its forward() arranges them
    lik_h = eb._likelihood(h.transpose(0, 1).reshape(h.shape[1], 1, -1))[0]
    if gc.use_likelihood_bound:
        lik_z = gc.likelihood_lower_bound(lik_z)
    if eb.use_likelihood_bound:
        lik_h = eb.likelihood_lower_bound(lik_h)
    return lik_z, lik_h


class VBLESolver(Solver):
    name = "vble"
    config_cls = VBLEConfig
    prior_kinds = ("cae",)
    # for a task family PRIOR_BY_FAMILY does not name (and for listings); the families' choice is in per_family
    default_prior = "cae-natural-q6"
    needs_prior_gradients = True
    paper = "Biquard et al., Variational Bayes image restoration with compressive autoencoders, arXiv 2311.17744"
    # the paper picks its CAE's rate and lambda per task too: the preset keeps our per-family choice of both, without
    # the Wiener start
    presets = {"paper": {"early_stop": None, "inpaint_iterations": None,
                         "per_family": {family: {k: v for k, v in entry.items() if k != "init_estimate"}
                                        for family, entry in PER_FAMILY.items()}}}
    # on denoising VBLE cannot do much better than its CAE codes a clean photo: held out (benchmarks.lownoise, 6 crops)
    # VBLE gave 28.3-29.1 / 29.0-29.7 / 29.1-29.8 dB with q2 / q4 / q6 at noise 2.55-10/255 against a noisy input of
    # 40.1 / 34.3 / 30.7 / 28.3 dB at 2.55 / 5 / 7.5 / 10; it crosses the input at about 28.3 / 29.1 / 29.2 dB, where
    # the CAEs code those files at 25.8 / 27.9 / 28.7 dB (their cards): warn that far above each card's number
    ceiling = (("rate_distortion_held_out", "psnr"),
               {"cae-natural-q2": 2.5, "cae-natural-q4": 1.1, "cae-natural-q6": 0.5}, "codes clean held-out photos at",
               "another solver (pmrf), or a higher-rate CAE if this is not the highest (cae-natural-q2 < -q4 < -q6)")

    def cost(self, task, samples: int, prior=None) -> float:
        # measured (benchmarks/results/speed_quick.json, 256 px): one iteration (decoder forward + backward of the
        # q2 CAE) ~0.73 denoiser forwards; early stopping ends after ~35 % of the paper's count on average
        iters = self.config.iterations or ((self.config.inpaint_iterations or 400) if task.kind == "inpaint" else 300)
        runs_all = self.config.early_stop is None or iters <= 2 * self.config.early_window  # too short to stop early
        return iters * 0.73 * (1.0 if runs_all else 0.35)

    def _solve(self, y, physics, prior, *, n_samples, generator, progress):
        if prior.card.get("quantized") == "int8":
            raise SolverError("vble back-propagates through the CAE decoder; an int8 CAE gives zero gradients. "
                              "Use the float prior (or a simulated quantisation scheme)")
        cfg, _ = self.settings_for(family_of(physics))
        net = prior.module
        kind = type(physics).__name__
        iters = cfg.iterations or ((cfg.inpaint_iterations or 400) if kind == "Inpainting" else 300)
        sigma = noise_sigma(physics, y)
        sigma = cfg.sigma_floor if sigma <= 1e-3 else sigma
        x0 = wiener.starting_estimate(y, physics, cfg.init_estimate)
        c, (h, w) = x0.shape[1], x0.shape[-2:]
        n_pix = h * w

        def to3(x):
            return x.expand(-1, 3, -1, -1) if c == 1 else x

        def decode(z):
            x = net.g_s(z)[..., :h, :w]
            return x.mean(1, keepdim=True) if c == 1 else x

        with torch.no_grad():
            zbar = net.g_a(_pad64(to3(x0)))
            hbar = net.h_a(zbar)
        zbar, hbar = zbar.clone().requires_grad_(True), hbar.clone().requires_grad_(True)
        az = torch.zeros_like(zbar, requires_grad=True)
        ah = torch.zeros_like(hbar, requires_grad=True)
        opt = torch.optim.Adam([zbar, hbar, az, ah], lr=cfg.lr)
        history, objective, skipped, ran = [], [], 0, iters
        for it in range(iters):
            log_az, log_ah = _Clamp.apply(az, LOG_A_MIN, LOG_A_MAX), _Clamp.apply(ah, LOG_A_MIN, LOG_A_MAX)
            uz = torch.rand(zbar.shape, generator=generator, device=generator.device).to(zbar)
            uh = torch.rand(hbar.shape, generator=generator, device=generator.device).to(hbar)
            z = zbar + log_az.exp() * (uz - 0.5)
            hh = hbar + log_ah.exp() * (uh - 0.5)
            x = decode(z)
            datafit = ((physics.A(x.clamp(-0.1, 1.1)) - y) ** 2).sum() / (2 * sigma**2) / n_pix
            scales, means = _hyper_params(net, hh, z)
            lik_z, lik_h = _likelihoods(net, z, hh, scales, means)
            rate = -(torch.log(lik_z).sum() + torch.log(lik_h).sum()) / n_pix
            entropy = (log_az.sum() + log_ah.sum()) / n_pix
            loss = datafit + cfg.lambda_ * (rate - entropy)
            opt.zero_grad(set_to_none=True)
            if not torch.isfinite(loss):  # keep the last finite iterate rather than poisoning Adam's state
                skipped += 1
                bad = [n for n, v in (("data fit", datafit), ("rate", rate), ("entropy", entropy))
                       if not torch.isfinite(v)]
                if skipped > max(5, iters // 10):
                    raise SolverError(f"VBLE diverged (non-finite {', '.join(bad)} in {skipped} of {it + 1} "
                                      "iterations): lower lr, or check that the CAE prior is trained")
                continue
            loss.backward()
            torch.nn.utils.clip_grad_norm_([zbar, hbar, az, ah], cfg.clip_grad)
            if not all(torch.isfinite(p.grad).all() for p in (zbar, hbar, az, ah)):
                skipped += 1
                continue
            opt.step()
            history.append(float(datafit.detach()))
            objective.append(float(loss.detach()))
            if it % max(1, iters // 20) == 0:
                progress(0.9 * it / iters, f"VBLE iteration {it}/{iters}")
            if cfg.early_stop is not None and _converged(objective, cfg.early_window, cfg.early_stop):
                ran = it + 1
                break
        # posterior samples: decode latent samples
        n_stat = max(n_samples, cfg.stat_samples)
        a_z = _Clamp.apply(az.detach(), LOG_A_MIN, LOG_A_MAX).exp()
        draws = []
        with torch.no_grad():
            for i in range(0, n_stat, cfg.decode_batch):
                b = min(cfg.decode_batch, n_stat - i)
                u = torch.rand((b, *zbar.shape[1:]), generator=generator, device=generator.device).to(zbar)
                draws.append(decode(zbar.detach() + a_z * (u - 0.5)).clamp(0, 1))
                progress(0.9 + 0.1 * (i + b) / n_stat, "VBLE posterior sampling")
            all_samples = torch.cat(draws)
        return Posterior(mean=all_samples.mean(0, keepdim=True), samples=all_samples[:n_samples],
                         std=all_samples.std(0, keepdim=True),
                         meta={"iterations": iters, "iterations_run": ran, "skipped_nonfinite": skipped,
                               "sigma": sigma, "stat_samples": n_stat,
                               "datafit_history": history[:: max(1, iters // 50)]})


def _converged(objective: list[float], window: int, rtol: float) -> bool:
    """The last window's mean objective is within ``rtol`` (relative) of the window before, or above it."""
    if len(objective) < 2 * window:
        return False
    last = sum(objective[-window:]) / window
    before = sum(objective[-2 * window:-window]) / window
    return before - last < rtol * abs(before)


SOLVER = VBLESolver
