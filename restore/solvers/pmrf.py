"""PMRF: posterior-mean rectified flow (Ohayon, Michaeli, Elad; ICLR 2025).

As in the reference code (ohayonguy/PMRF ``mmse_rectified_flow.py``; notes/reddiff-pmrf-scoredvi.md): first a
posterior-mean estimate f(y), then Euler integration of the learned flow ODE from ``z0 = f(y) + sigma_s n`` over K
uniform steps, ``z <- z + v(z, i / K) / K``, and ``clip(z, 0, 1)``. The flow is unconditional (it never sees y).
K posterior samples come from K source-noise draws, run as one batch; the std map is their spread.

The number of Euler steps K: ``flow_steps=None`` (default) takes the flow card's ``euler_steps`` for the task's
family (denoise / deblur / sr / inpaint), chosen on held-out training crops by ``python -m restore.train.flow_steps``
as the least-distortion K among those whose outputs come closest to clean images in power spectrum. Our one flow
serves every task, and run to the paper's K = 25 it over-sharpens the sharp means of denoising and deblurring (the
calibration and ``benchmarks.pmrf`` measure it), so there the card asks for fewer steps; ``flow_steps=25`` is the
paper's setting, and a card without ``euler_steps`` gets 25 too.

The posterior mean comes from a configurable source: ``mean_source="denoiser"`` (D(y, sigma_y) from the flow card's
``mean_denoiser``; denoising only), ``"hqs"`` (plug-and-play half-quadratic splitting on that denoiser,
``restore.solvers.hqs``) or any registered solver name (``reddiff``) run once, taking its ``Posterior.mean``. ``"auto"``
(default) takes the denoiser on denoising and RED-Diff elsewhere, except where ``per_family`` says otherwise: deblurring
and SR take HQS up to observation noise 0.05 (HQS's ``max_noise``; above it RED-Diff, which led HQS by 0.5-1.6 dB at
0.07-0.1 on held-out crops). The paper trains a dedicated MMSE network for each task; we have one denoiser for all
tasks, and which approximation of the posterior mean serves best is measured per family. On deblurring HQS beat RED-Diff
clearly (2026-12-04, 8 held-out BSD432 crops of 128 px, the benchmark's Gaussian sigma 1 / noise 2.55 and Levin
camera-shake / noise 7.65 tasks, 8 samples: PMRF 29.88 / 25.69 dB with RED-Diff's mean, 30.62 / 27.13 with HQS's, in 4.7
s a run instead of 8.8; ``python -m restore.train.tune --solver pmrf --tasks deblur_gauss1 deblur_motion --images 8
--crop 128 --samples 8 --grid mean_source=reddiff,hqs``; HQS's settings' scan is in ``restore.solvers.hqs``). On SR HQS
with 16 passes took over on 2026-12-05: against the one RED-Diff run PMRF's first stage had been, on the 8 held-out 128
px crops, level at x4 (24.29 / 24.29 dB) and ahead at x2 (28.07 against 27.69), in 7.6 s a run instead of 16.6 (``python
-m restore.train.tune --solver pmrf --tasks sr2 sr4 --images 8 --crop 128 --samples 8 --grid per_family=...``,
``benchmarks/results/tune_pmrf_sr_mean.json``; 24 passes at lambda 0.3 gave 24.32 / 28.09 in 9.4 s). On inpainting
RED-Diff stays far ahead. PMRF approximates a deterministic transport of the mean, so the samples differ little (sigma_s
is small): read the std as sensitivity to the source noise, not a calibrated posterior std. The flow runs forward-only,
so a quantised backbone is allowed here.

What ``Posterior.mean`` holds (ours, ``estimate="auto"``): the first stage, with the flow outputs as the samples,
except on deblurring with a RED-Diff first stage (noise above HQS's ``max_noise``, or ``mean_source=reddiff``), where
the average of the flow outputs measured level or better (held-out Gaussian deblurring at noise 0.01: 30.19 against
RED-Diff's 29.78 dB; at noise 0.07, 8 held-out 128 px crops: Gaussian sigma 2 23.66 / 23.67, Levin motion 23.30 /
23.22, flow average / first stage). Everywhere else the flow average lost to its own first stage: with HQS's mean at
the earlier flow's 2 steps 30.26 / 26.49 against HQS's 30.54 / 26.54 (Gaussian / motion deblurring); with RED-Diff's
mean on the 8 held-out 128 px crops x4 SR 24.11 / 24.29, 50 % random inpainting 28.09 / 28.23 and 30 % boxes 29.18 /
29.33 (``python -m restore.train.tune --solver pmrf --tasks sr4 inpaint_random50 inpaint_box --images 8 --crop 128
--samples 8 --grid estimate=first-stage,flow-average``, 2026-12-05), and more on recent photos (4 CQ100 crops:
28.28 / 28.87 random, 27.51 / 28.44 box: the unconditional flow moves the observed pixels of sharp photos).
``estimate="flow-average"`` (the paper preset) reports the average anyway. The flow trades distortion for realism,
and on denoising it costs a lot where the noise is light: on 6 held-out 128 px BSD432 crops (``python -m
benchmarks.lownoise``, ``benchmarks/results/lownoise.json``) the flow average had 37.59 / 35.61 / 34.06 / 32.86 /
31.14 dB at noise 2.55 / 5 / 7.5 / 10 / 15 /255 against D(y)'s 44.20 / 39.44 / 36.71 / 34.87 / 32.48, and at
2.55/255 it was 2.5 dB below the noisy input (40.08); the 40 000-step flow shipped 2026-12-07, at its 3 steps, 35.39
/ 34.03 / 32.89 / 31.95 / 30.54 (sharper samples, farther from a near-clean photo). Starting the flow later where the
noise is below sigma_s (at t0 = 1 - sigma_y / sigma_s, from mean + sigma_y n; tried 2026-12-07 on the 8 held-out
crops at 2.55-6/255; a scratch script, not kept) raised single samples by 0.0-1.3 dB but lowered their average by
0.2-1.1 dB and moved them farther from clean images' spectrum: the flow's own distortion, not its source noise, sets
how far the samples fall from the mean, so the paper's start stays. ``meta["estimate"]`` says which the run reports.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import torch

from restore import precision
from restore.posterior import Posterior
from restore.solvers.base import Solver, SolverError, noise_sigma, randn
from restore.solvers.hqs import HQSSettings
from restore.tasks import kind_of

PAPER_STEPS = 25  # K in the paper's inference.sh
ESTIMATES = ("auto", "first-stage", "flow-average")  # PMRFConfig.estimate


@dataclass
class PMRFConfig:
    flow_steps: int | None = None  # K; None: the flow card's euler_steps for the task family, else the paper's 25
    sigma_s: float | None = None  # None: the value the flow was trained with (its card)
    mean_source: str = "auto"  # "auto": the denoiser on denoising, else per_family, else reddiff; or "hqs" / a solver
    mean_prior: str | None = None  # None: the flow card's mean_denoiser
    mean_options: dict | None = None  # config overrides for the mean-source solver, e.g. {"steps": 30} for reddiff
    precision: str = "auto"  # the flow (and the denoiser mean) under bf16 autocast where the CPU has native bf16
    # what Posterior.mean holds: "first-stage" (the posterior-mean stage), "flow-average" (the average of the flow
    # samples, the paper's output averaged) or "auto": the first stage except deblurring from RED-Diff (docstring)
    estimate: str = "auto"
    # task families whose posterior mean comes from elsewhere (unless given explicitly): deblurring from plug-and-play
    # HQS on the denoiser (restore.solvers.hqs), +0.7 / +1.4 dB over RED-Diff's mean on held-out Gaussian / camera-shake
    # blur in about half the time (module docstring); HQS's own defaults, written out so that provenance sees a change.
    # SR from HQS with 16 passes: level on x4 and +0.38 dB on x2 against one RED-Diff run, in half the time
    per_family: dict | None = field(default_factory=lambda: {
        "deblur": {"mean_source": "hqs",
                   "mean_options": {k: getattr(HQSSettings, k) for k in ("steps", "lambda_", "sigma_max")}},
        "sr": {"mean_source": "hqs", "mean_options": {"steps": 16, "lambda_": 0.5, "sigma_max": 1.0}}})


class PMRFSolver(Solver):
    name = "pmrf"
    config_cls = PMRFConfig
    prior_kinds = ("flow",)
    default_prior = "flow-natural"
    paper = "Ohayon, Michaeli, Elad, Posterior-Mean Rectified Flow, ICLR 2025"
    # the paper's K = 25, with the posterior mean from RED-Diff's paper settings (the default mean uses its fast ones)
    presets = {"paper": {"flow_steps": 25, "mean_options": {"preset": "paper"}, "precision": "float",
                         "per_family": None, "estimate": "flow-average"}}
    # the flow runs forward-only, so int8 is allowed (`--quant int8`), but not the default: at 256 px it saved 1.7 s
    # on denoising and lost 0.25 dB there (benchmarks.speed --targets --solvers pmrf), where bf16 (precision="auto")
    # loses nothing

    def __init__(self, config=None, preset: str | None = None, **overrides):
        super().__init__(config, preset, **overrides)
        if self.config.estimate not in ESTIMATES:
            raise SolverError(f"pmrf estimate must be one of {', '.join(ESTIMATES)}; got {self.config.estimate!r}")

    def _fixed_options(self) -> set[str]:
        """The explicitly given options (:meth:`Solver.settings_for`), with a mean source and its options as one: either
        given explicitly keeps the family's pair out (options meant for RED-Diff must not reach HQS, nor HQS's
        RED-Diff)."""
        given = set(self.options)
        if "mean_source" in given or self.options.get("mean_options") is not None:
            given |= {"mean_source", "mean_options"}
        return given

    def posterior_mean(self, y, physics, prior, generator, progress) -> torch.Tensor:
        from restore.priors import registry
        from restore.solvers import base, hqs

        kind = kind_of(physics)
        cfg, _ = self.settings_for(kind)
        den_name = cfg.mean_prior or prior.card.get("mean_denoiser", "score-natural")
        source, options = self.mean_plan(kind, noise_sigma(physics, y))
        den = registry.load(den_name, y.device)
        if source == "denoiser":
            if type(physics).__name__ != "Denoising":
                raise SolverError("mean_source='denoiser' is for denoising tasks; use a solver name (e.g. reddiff)")
            with torch.no_grad(), precision.autocast(self._bf16(y), y.device):
                return den.module(y, noise_sigma(physics, y)).float().clamp(0, 1)
        if source == "hqs":
            settings = hqs.HQSSettings.from_options(options)
            bf16 = self._bf16(y)

            def denoise(x, sigma):
                with precision.autocast(bf16, y.device):
                    return den.module(x, sigma).float()

            return hqs.pnp_hqs(y, physics, denoise, settings,
                               progress=lambda i, k: progress(0.5 * i / k, f"posterior mean (hqs): step {i}/{k}"))
        if source == self.name:
            raise SolverError("pmrf cannot take its own output as the posterior mean")
        solver = base.get(source, **options)
        cb = lambda f, m: progress(0.5 * f, f"posterior mean ({source}): {m}")  # noqa: E731
        # the mean solver runs as a user running it would: under its own preferred scheme (RED-Diff: int8)
        return solver(y, physics, _mean_prior(den, solver.preferred_quant()), n_samples=1, generator=generator,
                      progress=cb).mean

    def mean_plan(self, kind: str | None, sigma_y: float | None = None) -> tuple[str, dict]:
        """(where the posterior mean comes from, the options it runs with) for a task kind and observation noise std
        ``sigma_y`` (None: not known yet): the config's source and ``mean_options`` (after the family's settings),
        or for 'auto' the denoiser on denoising and RED-Diff otherwise; 'hqs' is plug-and-play HQS on the denoiser
        (restore.solvers.hqs), which hands over to RED-Diff at its defaults above its ``max_noise`` (HQS's options
        are not RED-Diff's)."""
        from restore.solvers import hqs

        cfg, _ = self.settings_for(kind)
        options = dict(cfg.mean_options or {})
        if cfg.mean_source == "hqs" and not hqs.HQSSettings.from_options(options).handles(sigma_y):
            return "reddiff", {}
        if cfg.mean_source != "auto":
            return cfg.mean_source, options
        return ("denoiser" if kind == "denoise" else "reddiff"), options

    def reports_first_stage(self, kind: str | None, source: str) -> bool:
        """Whether ``Posterior.mean`` is the first stage (else the flow average) for a task kind and mean source."""
        if self.config.estimate != "auto":
            return self.config.estimate == "first-stage"
        return not (kind == "deblur" and source not in ("denoiser", "hqs"))

    def mean_source_for(self, kind: str | None, sigma_y: float | None = None) -> str:
        """Where the posterior mean comes from (:meth:`mean_plan`'s source)."""
        return self.mean_plan(kind, sigma_y)[0]

    def flow_steps(self, physics, prior) -> tuple[int, str]:
        """(K, where it came from) for this task: the config's, the card's for the task family, or the paper's."""
        return self.steps_for(kind_of(physics), prior.card)

    def _bf16(self, y, prior=None) -> bool:
        if prior is not None and prior.card.get("quantized"):
            return False  # an int8 flow is already the fast path; autocast would only add casts around it
        return self.bf16(y.device)

    def steps_for(self, kind: str | None, card: dict) -> tuple[int, str]:
        """flow_steps for a task kind and the flow's card."""
        if self.config.flow_steps is not None:
            if int(self.config.flow_steps) < 1:
                raise SolverError(f"flow_steps must be >= 1; got {self.config.flow_steps}")
            return int(self.config.flow_steps), "config"
        card_steps = card.get("euler_steps", {})  # the flow card keeps its Euler step count per task kind
        if kind in card_steps:
            return int(card_steps[kind]), f"card ({kind})"
        return PAPER_STEPS, "paper"

    def cost(self, task, samples: int, prior=None) -> float:
        from restore.solvers import base, hqs

        steps, _ = self.steps_for(task.kind, prior.card if prior is not None else {})
        source, options = self.mean_plan(task.kind, None if task.auto else task.noise_sigma)
        if source == "denoiser":
            mean = 1.0
        elif source == "hqs":
            mean = hqs.cost(hqs.HQSSettings.from_options(options), task)
        else:
            mean = base.get(source, **options).cost(task, 1) or 0.0
        fast = precision.estimate_bf16(self.config.precision)
        # the flow network is the denoiser's size; bf16 autocast halves it (restore.precision)
        return mean + steps * samples * (0.5 if fast else 1.0)

    def _solve(self, y, physics, prior, *, n_samples, generator, progress):
        cfg = self.config
        sigma_s = cfg.sigma_s if cfg.sigma_s is not None else float(prior.card.get("sigma_s", 0.025))
        steps, steps_from = self.flow_steps(physics, prior)
        mean = self.posterior_mean(y, physics, prior, generator, progress)
        bf16 = self._bf16(y, prior)

        def velocity(z, t):
            with precision.autocast(bf16, y.device):
                return prior.module(z, t).float()

        samples = flow_transport(mean, velocity, n_samples=n_samples, sigma_s=sigma_s, steps=steps,
                                 generator=generator,
                                 progress=lambda i, k: progress(0.5 + 0.5 * i / k, f"flow step {i}/{k}"))
        average = samples.mean(0, keepdim=True)
        # the estimate: the first stage, a posterior-mean approximation (the flow trades distortion for realism and
        # lost 0.1-6.6 dB to it on held-out crops, module docstring), except a RED-Diff stage on deblurring, where
        # the flow average measured level or better
        source = self.mean_source_for(kind_of(physics), noise_sigma(physics, y))
        first_stage = self.reports_first_stage(kind_of(physics), source)
        return Posterior(mean=mean if first_stage else average, samples=samples,
                         meta={"sigma_s": sigma_s, "flow_steps": steps, "flow_steps_from": steps_from,
                               "precision": "bf16" if bf16 else "float32", "mean_source": source,
                               "estimate": f"posterior-mean stage ({source})" if first_stage else
                                           "average of the flow samples",
                               "mean_vs_output_rmse": float(((average - mean) ** 2).mean().sqrt())})


_MEAN_PRIORS: dict = {}  # (name, scheme, device) -> quantised mean prior, so a batch quantises once


def _mean_prior(den, scheme: str | None):
    """``den`` under ``scheme`` (None: as is); float with a warning where this machine lacks the kernels."""
    if not scheme or den.card.get("quantized"):
        return den
    key = (den.name, den.digest, scheme, str(next(den.module.parameters()).device))
    if key not in _MEAN_PRIORS:
        from restore.quant import QuantError, quantize

        try:
            _MEAN_PRIORS[key] = quantize(den, scheme)
        except QuantError:
            _MEAN_PRIORS[key] = den  # no quantised form: float
        except (RuntimeError, NotImplementedError, AssertionError) as exc:
            warnings.warn(f"{den.name}: {scheme} kernels unavailable here ({exc}); the PMRF mean ran in float",
                          RuntimeWarning, stacklevel=3)
            _MEAN_PRIORS[key] = den
    return _MEAN_PRIORS[key]


@torch.no_grad()
def flow_transport(mean: torch.Tensor, velocity, *, n_samples: int, sigma_s: float, steps: int,
                   generator: torch.Generator | None, progress=None) -> torch.Tensor:
    """PMRF's second stage: K Euler steps of dz/dt = v(z, t) from z0 = mean + sigma_s n, t = 0 -> 1.

    mean: (1, C, H, W) posterior-mean estimate in [0, 1]; velocity(z, t) -> dz/dt. Returns (n_samples, C, H, W) in
    [0, 1], one sample per source-noise draw (run as one batch)."""
    z = mean.expand(n_samples, -1, -1, -1) + sigma_s * randn((n_samples, *mean.shape[1:]), generator, mean)
    for i in range(steps):
        z = z + velocity(z, i / steps) / steps
        if progress is not None:
            progress(i + 1, steps)
    return z.clamp(0, 1)


SOLVER = PMRFSolver
