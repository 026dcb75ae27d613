"""The solver interface and registry.

Every solver is called the same way::

    posterior = solver(y, physics, prior, n_samples=K, generator=g, progress=cb)

with y the observation (1, C, h, w), physics a deepinv ``LinearPhysics`` acting on images of the restored size,
prior a loaded :class:`restore.priors.registry.Prior`, g a ``torch.Generator`` (the only source of randomness) and
cb an optional ``progress(fraction in [0, 1], message)`` callable. It returns a :class:`restore.Posterior`.

Defaults live in a dataclass config per solver; any field can be overridden by keyword:
``get("langevin", iterations=2000)``. Where a default trades the paper's settings for speed, ``preset="paper"``
(``-O preset=paper`` on the command line) restores them; explicit options still win over a preset. Adding a
solver = one new module defining a ``Solver`` subclass + one line in ``SOLVERS`` below.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import platform
import time
import warnings
from typing import Callable, ClassVar

import torch
import torch.nn.functional as F

from restore import provenance
from restore.posterior import Posterior

ProgressFn = Callable[[float, str], None]

# name -> module defining it (imported on first use, so `import restore` stays light)
SOLVERS: dict[str, str] = {
    "langevin": "restore.solvers.langevin",
    "reddiff": "restore.solvers.reddiff",
    "scoredvi": "restore.solvers.scoredvi",
    "vble": "restore.solvers.vble",
    "pmrf": "restore.solvers.pmrf",
    "aps": "restore.solvers.aps",
}


class SolverError(ValueError):
    """A solver cannot run on this input (unknown name, unsupported task or prior, bad observation)."""


class Solver:
    """Base class: validates inputs, times the run, fills ``Posterior.meta``; subclasses implement ``_solve``."""

    name: ClassVar[str] = ""
    config_cls: ClassVar[type] = type(None)
    prior_kinds: ClassVar[tuple[str, ...]] = ("denoiser",)
    default_prior: ClassVar[str] = ""
    tasks: ClassVar[tuple[str, ...]] = ("denoise", "deblur", "sr", "inpaint")
    needs_noise_level: ClassVar[bool] = True  # False for solvers that estimate unknown (real) noise
    # whether the Restorer imputes an observation's values clipped at 0 or 1 before this solver runs
    # (restore.censoring); a solver that measured worse with it opts out
    impute_clipped: ClassVar[bool] = True
    needs_prior_gradients: ClassVar[bool] = False  # True: back-propagates through the prior (no real int8)
    # real int8 allowed? None: only when no gradients flow through the prior; True: the parts that int8 touches
    # run forward-only (APS: quant.quantize leaves the tokenizer float and int8s the transformer)
    int8_ok: ClassVar[bool | None] = None
    # the quantisation scheme a Restorer applies when the user names none (RED-Diff: "int8", 3x faster per step for
    # -0.05 dB); the "paper" preset runs the paper's float network. None: float.
    default_quant: ClassVar[str | None] = None
    paper: ClassVar[str] = ""
    # named option sets; "paper" restores the paper's own settings where our defaults trade them for speed
    presets: ClassVar[dict[str, dict]] = {}
    # accuracy floors: option -> (the smallest value measured within 1 dB of the defaults' PSNR on every task of a
    # held-out scan, that scan's command); an explicit value below it runs, with a warning (``settings_warning``)
    work_floor: ClassVar[dict[str, tuple[int, str]]] = {}
    # where the prior caps the result: ((card section, key) of the PSNR at which it reconstructs clean held-out photos,
    # the margin in dB above it from which a denoising input gets run_warning (one number, or one per prior name with
    # the smallest for a prior not listed), what the number is, what to use instead)
    ceiling: ClassVar[tuple[tuple[str, str], float | dict[str, float], str, str] | None] = None
    # options added with a default that changed what the solver does: option -> the value that reproduces the code
    # before the option existed. A recorded result or table without the option ran with that value
    # (``restore.stale.default_config``), so it shows as stale where the new default differs.
    former_defaults: ClassVar[dict] = {}

    def __init__(self, config=None, preset: str | None = None, **overrides):
        base = config if config is not None else self.config_cls()
        known = {f.name for f in dataclasses.fields(base)}
        unknown = set(overrides) - known
        if unknown:
            raise SolverError(f"{self.name} has no option {', '.join(sorted(unknown))}; options: "
                              f"{', '.join(sorted(known | {'preset'}))}")
        if preset is not None and preset not in self.presets:
            names = ", ".join(self.presets) or "none"
            raise SolverError(f"{self.name} has no preset {preset!r}; presets: {names}")
        chosen = {**(self.presets[preset] if preset is not None else {}), **overrides}  # explicit options win
        self.config = dataclasses.replace(base, **chosen)
        # as given, for provenance: replaying them shows whether defaults changed
        self.options = {**({"preset": preset} if preset is not None else {}), **overrides}
        if self.settings_warning():
            warnings.warn(self.settings_warning(), RuntimeWarning, stacklevel=3)

    def settings_warning(self) -> str | None:
        """Why the explicitly given options cannot be trusted to reach the defaults' quality (one below its
        :attr:`work_floor`), or None. Also in ``Posterior.meta['settings_warning']`` and the uncertainty line."""
        notes = []
        for option, (floor, scan) in self.work_floor.items():
            value = self.options.get(option)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value < floor:
                notes.append(f"{self.name} {option}={value} is below {floor}, under which held-out PSNR fell more "
                             f"than 1 dB short of the defaults' ({scan}): expect a poorer image")
        return "; ".join(notes) or None

    def settings_for(self, family: str | None) -> tuple:
        """(config, family settings): the config a task of this family (a kind, or a finer family such as
        'inpaint-region': ``restore.provenance.family_entry``) runs with, its ``per_family`` entry applied where no
        explicit option (:meth:`_fixed_options`) overrides it, and that entry ({} for a config without a table)."""
        family_settings = provenance.family_entry(getattr(self.config, "per_family", None), family)
        fixed = self._fixed_options()
        return (dataclasses.replace(self.config, **{k: v for k, v in family_settings.items() if k not in fixed}),
                family_settings)

    def prior_for(self, family: str | None) -> str:
        """The prior a run of a task of ``family`` (``Task.family``; None: no task yet) loads when none is named: the
        config's ``prior`` as that family runs it (VBLE picks its CAE's rate per family; an explicit ``prior`` option
        wins), else :attr:`default_prior`."""
        config, _ = self.settings_for(family)
        return getattr(config, "prior", None) or self.default_prior

    @classmethod
    def inert_settings(cls, config: dict, family: str | None) -> set[str]:
        """The fields of canonical ``config`` that change nothing on a task of ``family`` (``Task.family``; None:
        unknown, so none), so that a recorded result or table does not go stale over them (``restore.stale``)."""
        return set()

    def _fixed_options(self) -> set[str]:
        """The config fields a per-family entry must leave alone: those given explicitly."""
        return set(self.options)

    def run_warning(self, y: torch.Tensor, physics, prior) -> str | None:
        """Why this run's result is expected to be poorer than its observation itself, or None: on denoising, a
        noisy input already :attr:`ceiling`'s margin above the PSNR at which the prior reconstructs clean held-out
        photos (its card). Warned about and kept, with any settings warning, in ``Posterior.meta['settings_warning']``
        (the CLI's and the app's uncertainty line show it)."""
        if self.ceiling is None or type(physics).__name__ != "Denoising":
            return None
        (section, key), margin, what, instead = self.ceiling
        ceiling = ((getattr(prior, "card", None) or {}).get(section) or {}).get(key)
        if ceiling is None:
            return None
        if isinstance(margin, dict):
            from restore.priors.registry import split_name

            margin = margin.get(split_name(prior.name)[0], min(margin.values()))
        sigma = noise_sigma(physics, y)
        input_psnr = -20 * math.log10(max(sigma, 1e-6))
        if input_psnr < ceiling + margin:
            return None
        return (f"{self.name} with {prior.name} (which {what} {ceiling:.1f} dB) is expected to be below this noisy "
                f"input itself ({input_psnr:.1f} dB at noise {255 * sigma:.2g}/255; benchmarks.lownoise). Use "
                f"{instead}")

    def bf16(self, device) -> bool:
        """Whether this run's networks go under bf16 autocast: the config's ``precision`` ("auto" | "bf16" | "float")
        resolved for ``device`` (restore.precision); a bad value is a SolverError naming this solver."""
        from restore import precision

        try:
            return precision.use_bf16(self.config.precision, device)
        except ValueError as exc:
            raise SolverError(f"{self.name} {exc}") from None

    def preferred_quant(self) -> str | None:
        """The scheme to run when the user names none: :attr:`default_quant`, float under the paper preset."""
        return None if self.options.get("preset") == "paper" else self.default_quant

    def supports(self, task) -> str | None:
        """None if the solver can run ``task`` (a restore.tasks.Task), else the reason it cannot."""
        if task.kind not in self.tasks:
            return f"solver {self.name!r} does not support {task.kind} tasks (it supports: {', '.join(self.tasks)})"
        if task.variant == "real" and self.needs_noise_level:
            return (f"solver {self.name!r} needs a known noise level; for denoise:real (unknown noise) use a solver that "
                    "estimates it")
        return None

    def __call__(self, y: torch.Tensor, physics, prior, *, n_samples: int = 8, generator: torch.Generator | None = None,
                 progress: ProgressFn | None = None) -> Posterior:
        if not isinstance(n_samples, int) or n_samples < 1:
            raise SolverError(f"n_samples must be a whole number >= 1; got {n_samples!r}")
        if y.ndim != 4 or y.shape[0] != 1:
            raise SolverError(f"y must have shape (1, C, H, W); got {tuple(y.shape)}")
        if not torch.isfinite(y).all():
            raise SolverError("the observation contains NaN or infinite values")
        if prior is not None and prior.kind not in self.prior_kinds:
            raise SolverError(f"solver {self.name!r} runs on {' or '.join(self.prior_kinds)} priors; "
                              f"{prior.name!r} is a {prior.kind} prior")
        if generator is None:
            generator = torch.Generator(device=y.device).manual_seed(0)
        run_note = self.run_warning(y, physics, prior)
        if run_note:
            warnings.warn(run_note, RuntimeWarning, stacklevel=2)
        report = progress or (lambda f, m: None)
        t0 = time.perf_counter()
        with provenance.recording() as used:
            provenance.note_solver(self.name, self.options, dataclasses.asdict(self.config))
            if prior is not None:
                provenance.note_prior(prior.name, getattr(prior, "digest", None))
            post = self._solve(y, physics, prior, n_samples=n_samples, generator=generator, progress=report)
        seconds = time.perf_counter() - t0
        report(1.0, "done")
        post.meta.setdefault("timings", {})["total_s"] = round(seconds, 4)
        post.meta.update({
            "solver": self.name,
            "prior": getattr(prior, "name", None),
            "config": dataclasses.asdict(self.config),
            "n_samples": n_samples,
            "versions": versions(),
            "provenance": used.as_dict(),
        })
        notes = [n for n in (self.settings_warning(), run_note) if n]
        if notes:
            post.meta["settings_warning"] = "; ".join(notes)
        return post

    def _solve(self, y, physics, prior, *, n_samples, generator, progress) -> Posterior:  # pragma: no cover
        raise NotImplementedError

    def cost(self, task, samples: int, prior=None) -> float | None:
        """The work of one run, in forward passes of a DRUNet-size network (batch 1) at the restored size, for the
        time estimate shown before a run (``restore.estimate``); None when unknown. ``task`` is a restore Task,
        ``prior`` the loaded prior when at hand (some counts read its card)."""
        return None


def versions() -> dict:
    import deepinv

    import restore

    return {"restore": restore.__version__, "torch": torch.__version__, "deepinv": deepinv.__version__,
            "python": platform.python_version()}


def names() -> list[str]:
    return list(SOLVERS)


def solver_class(name: str) -> type[Solver]:
    if name not in SOLVERS:
        raise SolverError(f"unknown solver {name!r}; known solvers: {', '.join(SOLVERS)}")
    module = importlib.import_module(SOLVERS[name])
    return module.SOLVER


def config_has(name: str, option: str) -> bool:
    """Whether solver ``name``'s config has the field ``option`` (e.g. 'prior': VBLE's, which picks its CAE)."""
    return option in {f.name for f in dataclasses.fields(solver_class(name).config_cls)}


def get(name: str, config=None, **overrides) -> Solver:
    """A configured solver instance by name; keyword overrides replace config fields."""
    return solver_class(name)(config, **overrides)


# ---- helpers shared by solvers ---------------------------------------------------------------------------------

def noise_sigma(physics, y: torch.Tensor) -> float:
    """Gaussian std standing for the physics' noise model (Poisson: sqrt(gain * mean(y) + sigma^2)), floored at 1e-3."""
    nm = getattr(physics, "noise_model", None)
    sigma = float(getattr(nm, "sigma", 0.0) or 0.0) if nm is not None else 0.0
    gain = getattr(nm, "gain", None)
    var = sigma**2
    if gain is not None and type(nm).__name__ != "GaussianNoise":
        var += float(gain) * float(y.clamp_min(0).mean())
    return max(math.sqrt(var), 1e-3)


def initial_estimate(y: torch.Tensor, physics) -> torch.Tensor:
    """A cheap image-sized estimate to start from: y for denoising/deblurring, bicubic upsampling for SR,
    a membrane fill of missing pixels for inpainting (``membrane_fill``), A^T y otherwise."""
    kind = type(physics).__name__
    if kind in ("Denoising", "Blur", "BlurFFT"):
        return y.clone()
    if kind == "Downsampling":
        return F.interpolate(y, scale_factor=physics.factor, mode="bicubic", align_corners=False).clamp(0, 1)
    if kind == "Inpainting":
        return membrane_fill(y, physics.mask.expand_as(y).float())
    return physics.A_adjoint(y).clamp(0, 1)


def membrane_fill(y: torch.Tensor, mask: torch.Tensor, smoothing: int = 60) -> torch.Tensor:
    """Fill the pixels where ``mask`` (same shape as y, 1 observed / 0 missing) is 0 with the membrane (Laplace)
    interpolant of the observed ones; observed pixels keep y. (B, C, H, W) in [0, 1].

    Coarse to fine: the observed values are averaged down a pyramid (each coarse cell weighted by its observed
    fraction) until a level has no wholly missing area left to bridge; from there each level's estimate is upsampled
    and relaxed by ``smoothing`` Jacobi sweeps of the 3x3 mean, observed cells held at their values. A large hole
    gets a smooth surface that meets its border (what TV and L2 priors converge to, and a better start for the
    solvers: on 6 held-out BSD432 crops with a 30 % box, 28.32 dB against 27.89 for a normalised-convolution fill,
    and RED-Diff +0.29 dB from it)."""
    if bool((mask > 0).all()):
        return y.clamp(0, 1)
    levels = [(y * mask, mask)]
    while min(levels[-1][1].shape[-2:]) > 4 and bool((levels[-1][1] == 0).any()):
        x, m = levels[-1]
        levels.append((F.avg_pool2d(x, 2, ceil_mode=True), F.avg_pool2d(m, 2, ceil_mode=True)))
    x, m = levels[-1]
    seen = m.sum((-2, -1), keepdim=True)
    overall = torch.where(seen > 0, x.sum((-2, -1), keepdim=True) / seen.clamp_min(1e-6), torch.full_like(seen, 0.5))
    est = overall.expand_as(x)
    for x, m in reversed(levels):
        est = F.interpolate(est, size=x.shape[-2:], mode="bilinear", align_corners=False)
        observed = x / m.clamp_min(1e-6)
        for _ in range(smoothing):
            # a partly observed coarse cell is pulled to its observed mean by the fraction it has seen
            est = m * observed + (1 - m) * F.avg_pool2d(F.pad(est, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    return est.clamp(0, 1)


def operator_norm_sq(physics, x_shape, generator: torch.Generator, iterations: int = 30) -> float:
    """||A||^2 (largest eigenvalue of A^T A) by power iteration started from ``generator``: deterministic per seed,
    unlike deepinv's ``compute_norm`` which draws its own start vector."""
    v = torch.randn(x_shape, generator=generator, device=generator.device)
    v = v / v.norm()
    lam = 0.0
    with torch.no_grad():
        for _ in range(iterations):
            w = physics.A_adjoint(physics.A(v))
            lam = float((v * w).sum())
            v = w / w.norm().clamp_min(1e-12)
    return lam


def randn(shape, generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    """Standard normal noise drawn only from ``generator``."""
    return torch.randn(shape, generator=generator, device=generator.device, dtype=like.dtype).to(like.device)
