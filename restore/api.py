"""The Python API: ``restore(image, task, ...)`` and ``Restorer`` (keeps loaded priors for many images)."""

from __future__ import annotations

import time
import warnings

import torch

from restore import calibration, io, metrics, tiling
from restore.posterior import Posterior
from restore.priors import registry
# the recommended solver per task (torch-free: the CLI's help reads it); re-exported as part of the API
from restore.recommend import (DEFAULT_SOLVER, RECOMMENDED, RECOMMENDED_BY_PARAM,  # noqa: F401
                               recommended_exceptions, recommended_for, recommended_reason, recommended_solver,
                               recommended_summary)
from restore.solvers import base
from restore.tasks import FAMILIES, Task, TaskError, parse


def keep_colour_profile(post: Posterior, source) -> None:
    """Give ``post`` the ICC colour profile of its input (a file path or a PIL image; none for arrays and tensors),
    kept by ``Posterior.save``, and say so in ``meta['colour_profile']``: a phone's Display P3 photo saved without
    it would look duller in a colour-managed viewer, which assumes sRGB."""
    profile = io.icc_profile(source)
    if profile and io.profile_channels(profile) != post.mean.shape[1]:
        profile = None  # e.g. a CMYK file's profile, after the conversion to RGB: it would mislabel the output
    post.icc_profile = profile
    if profile:
        post.meta["colour_profile"] = (f"the input's ICC profile ({len(profile)} bytes) is embedded in the saved "
                                       "mean, samples and observation; the restoration ran on the stored values")


class Restorer:
    """Restores many images with one solver, loading each prior once.

    Args:
        solver: registered solver name (``restore.solvers.base.names()``).
        prior: registered prior name; None = the solver's choice for each task (``Solver.prior_for``: VBLE's CAE rate
            per task family, the default prior for the other solvers).
        device: torch device string.
        tile: restored images above ``tile_above`` pixels are solved in overlapping tiles of this size
            (``restore.tiling``), bounding memory; 0 disables tiling.
        overlap: tile overlap in pixels (keep it above a blur kernel's radius).
        tile_above: pixel count above which tiling is used (default: 4 tiles' worth, 512 x 512 for tile 256).
        quant: a scheme of ``restore.quant`` ("int8" real kernels, "w8a8"/"w4a8" simulated) applied to the prior
            once, when it is loaded; "none" runs it in float; None (or "auto") takes the solver's choice
            (``Solver.preferred_quant``: int8 for RED-Diff, float for the others and under ``preset="paper"``). When
            int8 kernels are unavailable here, the prior runs in float with a one-line warning (``quant_note``).
        calibrate: turn the raw spread into calibrated intervals and std where a calibration table covers the run
            (``restore.calibration``; ``meta['uncertainty']`` says which); False keeps the raw spread silently.
        **options: solver config overrides (e.g. ``iterations=1000``).
    """

    def __init__(self, solver: str = DEFAULT_SOLVER, prior: str | None = None, device: str = "cpu",
                 tile: int = 256, overlap: int = 32, tile_above: int | None = None, quant: str | None = None,
                 calibrate: bool = True, **options):
        if tile and (tile < 64 or not 0 <= overlap < tile // 2):
            raise ValueError(f"tile must be >= 64 pixels and overlap in [0, tile/2); got tile={tile}, overlap={overlap}")
        self.tile, self.overlap = int(tile), int(overlap)
        self.calibrate = bool(calibrate)
        self.tile_above = tile_above if tile_above is not None else 4 * self.tile**2
        if prior and base.config_has(solver, "prior"):  # recorded as an option, so it wins over a per-family choice
            options = {**options, "prior": prior}
        self.solver = base.get(solver, **options)
        from restore.quant import SCHEMES, QuantError

        if quant not in (None, "auto", "none", *SCHEMES):
            raise QuantError(f"unknown quantisation scheme {quant!r}; known: auto, none, {', '.join(SCHEMES)}")
        self.quant_chosen = quant not in (None, "auto")  # named by the user, not the solver's preference
        self.quant = (quant if self.quant_chosen else self.solver.preferred_quant()) if quant != "none" else None
        self.quant_note: str | None = None
        int8_ok = self.solver.int8_ok if self.solver.int8_ok is not None else not self.solver.needs_prior_gradients
        if self.quant == "int8" and not int8_ok:
            raise base.SolverError(f"solver {solver!r} back-propagates through its prior; real int8 gives zero "
                                   "gradients. Use quant='w8a8' or 'w4a8' (simulated) instead")
        self.prior_given = prior
        for name in {prior or self.solver.prior_for(family) for family in (None, *FAMILIES)}:
            registry.spec(name)  # fail early on an unknown name
        self.device = torch.device(device)
        self._priors: dict[str, registry.Prior] = {}
        self._censor_denoiser: registry.Prior | None = None

    @property
    def prior_name(self) -> str:
        """The prior named to this Restorer, else the solver's for no particular task (its default prior)."""
        return self.prior_name_for(None)

    def prior_name_for(self, task: str | Task | None) -> str:
        """The prior a restore of ``task`` runs on: the one named to this Restorer, else the solver's choice for the
        task's family (``Solver.prior_for``)."""
        return self.prior_given or self.solver.prior_for(None if task is None else parse(task).family)

    def prior(self, task: str | Task | None = None) -> registry.Prior:
        """The loaded (and maybe quantised) prior for ``task`` (:meth:`prior_name_for`), kept for later calls."""
        name = self.prior_name_for(task)
        if name not in self._priors:
            prior = registry.load(name, self.device)
            if self.quant:
                prior = self._quantized(prior)
            self._priors[name] = prior
        return self._priors[name]

    def _quantized(self, prior: registry.Prior) -> registry.Prior:
        """``prior`` under ``self.quant``; float when the solver's preferred scheme does not cover this prior (a
        weight-free one), or with a warning when this machine lacks the int8 kernels."""
        from restore.quant import QuantError, quantize

        try:
            return quantize(prior, self.quant)
        except QuantError:
            if self.quant_chosen:
                raise
            return prior  # the solver's preference; this prior has no quantised form
        except (RuntimeError, NotImplementedError, AssertionError) as exc:  # no quantised engine on this machine
            self.quant_note = f"{self.quant} kernels unavailable here ({type(exc).__name__}: {exc}); ran in float"
            warnings.warn(f"{prior.name}: {self.quant_note}", RuntimeWarning, stacklevel=3)
            return prior

    def __call__(self, image, task: str | Task, samples: int = 8, seed: int = 0, ground_truth=None,
                 progress: base.ProgressFn | None = None, noise_estimated: bool = False) -> Posterior:
        """Restore one degraded image.

        Args:
            image: the observation y: a path, numpy array, PIL image or tensor (see ``restore.io.to_tensor``). For
                SR it is the low-resolution image; the result is ``factor`` times larger.
            task: the degradation, a spec string (``restore.tasks``) or a Task.
            samples: number of posterior samples K >= 1.
            seed: the only source of randomness; same seed, same output.
            ground_truth: optional clean image of the restored size; adds ``meta['metrics']``.
            progress: optional ``callback(fraction, message)``.
            noise_estimated: the task's stated noise level is itself an estimate from this image (the app's noise
                slider left at its reading): treated as ``auto`` is (clipped values imputed only where they look
                like clipped white Gaussian noise; the camera calibration cell and warning where the noise looks
                unlike it).
        """
        task = parse(task)
        if not isinstance(samples, int) or isinstance(samples, bool) or samples < 1:
            raise base.SolverError(f"samples must be a whole number >= 1; got {samples!r}")
        y = io.to_tensor(image, observation=True).to(self.device)
        task, noise_note = task.resolved(y)  # an 'auto' noise level, from this observation
        reason = self.solver.supports(task)
        if reason:
            raise base.SolverError(reason)
        x_shape = task.x_shape(tuple(y.shape))
        io.check_size(x_shape[2], x_shape[3], "restored size")
        t0 = time.perf_counter()
        prior = self.prior(task)
        t_prior = time.perf_counter() - t0
        run_progress, boot_progress = self._progress_split(task, prior, samples, progress)
        observed = y
        estimated = noise_note is not None or bool(noise_estimated)
        y, censor_note = self.uncensor(y, task, seed, estimated=estimated)
        post, physics, y = self._run(y, task, x_shape, prior, samples, seed, run_progress)
        post.meta.update({"task": str(task), "seed": int(seed), "input_shape": list(y.shape)})
        if noise_note:
            post.meta["noise_estimate"] = noise_note
        elif noise_estimated:
            post.meta["noise_level_from_estimate"] = True  # stated by the caller as read from this image
        if censor_note:
            post.meta["censored"] = censor_note
        if self.quant_note:
            post.meta["quant_note"] = self.quant_note
        if self.calibrate:
            if physics is None:  # tiled: the whole image's operator, for the calibration's per-pixel signals
                physics = task.physics(x_shape, device=self.device)
                y = y * physics.mask if task.kind == "inpaint" else y
            calibration.apply(post, y, physics, task,
                              rerun=self._one_sample_rerun(task, x_shape, prior, seed, boot_progress),
                              estimated=estimated)
            if estimated:
                calibration.warn_if_not_gaussian(post.meta)
        post.meta["timings"]["prior_load_s"] = round(t_prior, 4)
        if ground_truth is not None:
            truth = io.to_tensor(ground_truth).to(self.device)
            if truth.shape[1] != post.mean.shape[1]:  # grey truth for a colour result or the reverse
                truth = truth.mean(1, keepdim=True).expand_as(post.mean)
            post.meta["metrics"] = metrics.report(post, truth, observed if observed.shape == truth.shape else None)
        keep_colour_profile(post, image)
        return post

    def uncensor(self, y: torch.Tensor, task: Task, seed: int, force: bool = False,
                 estimated: bool = False) -> tuple[torch.Tensor, dict | None]:
        """(y with its values clipped at 0 or 1 imputed, a note) for a task with Gaussian noise on a whole image
        (denoising, deblurring, SR; ``restore.censoring``) at a stated level, else (y, None). Inpainting is left
        alone: its unobserved pixels are zeros by construction, not clipped noise; so is a solver that opts out
        (``impute_clipped``) unless ``force`` (a benchmark measuring why). At a level ``estimated`` from the image
        (``auto``) only where the clipped values and the noise look like white Gaussian noise at that level
        (``censoring.clipping_unlike_gaussian``): such a photo's noise is most often a camera's, which the Gaussian
        draws misread in the shadows; else y comes back as it is and the note says why."""
        from restore import censoring

        if (task.kind not in ("denoise", "deblur", "sr") or task.variant == "real" or task.poisson_gain
                or not (self.solver.impute_clipped or force)):
            return y, None
        sigma = float(task.noise_sigma or 0.0)
        low, high = censoring.censored(y)
        if sigma <= 0 or not (low.any() or high.any()):
            return y, None
        shares = censoring.clipped_shares(low, high)
        if estimated and not force and (few := censoring.too_few_clipped(max(shares.values()))) is not None:
            # the gate would say so whatever the denoiser found: skip its passes over the whole photo
            return y, {**shares, "imputed": False, "why": _estimated_why(few)}
        if self._censor_denoiser is None:
            den = registry.load(censoring.DENOISER, self.device)
            from restore.quant import QuantError, quantize

            try:
                den = quantize(den, "int8")
            except (QuantError, RuntimeError, NotImplementedError, AssertionError):  # no int8 engine here (as
                pass  # _quantized): the float denoiser does it
            self._censor_denoiser = den
        generator = torch.Generator(device=self.device).manual_seed(int(seed) + censoring.SEED_OFFSET)
        completed, note = censoring.uncensor(y, sigma, self._censor_denoiser.module, generator)
        if note is None:
            return y, None
        note["denoiser"] = {"name": self._censor_denoiser.name, "digest": self._censor_denoiser.digest}
        if estimated and not force:
            why = censoring.clipping_unlike_gaussian(note)
            if why is not None:
                keep = {k: v for k, v in note.items() if k not in ("noise_at_0", "noise_at_1", "rounds", "what")}
                return y, {**keep, "imputed": False, "why": _estimated_why(why)}
            note["why"] = ("the noise level was estimated from the image, and the clipped values and the noise look "
                           "like white Gaussian noise at that level (restore.censoring.clipping_unlike_gaussian)")
        return completed, note

    def _run(self, y, task: Task, x_shape: tuple, prior, samples: int, seed: int, progress):
        """The solver on observation ``y`` (tiled above ``tile_above`` pixels): (posterior, physics or None when
        tiled, y as the solver saw it: inpainting zeroes the unobserved pixels). Also the calibration's bootstrap
        rerun, so that it runs exactly as the restore did."""
        t1 = time.perf_counter()
        physics = None
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=UserWarning, module="deepinv")
            if self.tile and x_shape[2] * x_shape[3] > self.tile_above:
                f = task.scale
                post = tiling.restore_tiled(
                    lambda y_t, ph, n, g, cb: self.solver(y_t, ph, prior, n_samples=n, generator=g, progress=cb),
                    y, task, x_shape, samples, int(seed), tile=self.tile - self.tile % f,
                    overlap=max(f, self.overlap - self.overlap % f), progress=progress)
                post.meta["timings"] = {"total_s": round(time.perf_counter() - t1, 4)}
            else:
                physics = task.physics(x_shape, device=self.device)
                if task.kind == "inpaint":
                    y = y * physics.mask  # unobserved pixels carry no information, whatever the file holds there
                generator = torch.Generator(device=self.device).manual_seed(int(seed))
                post = self.solver(y, physics, prior, n_samples=samples, generator=generator, progress=progress)
        return post, physics, y

    def bootstrap_mean(self, mean: torch.Tensor, task: str | Task, seed: int = 0) -> torch.Tensor:
        """The calibration's parametric-bootstrap estimate for a run with ``seed`` whose estimate is ``mean``
        (1, C, H, W) in [0, 1]: the solver with one sample on a fresh degradation of ``mean``
        (``restore.calibration.bootstrap``)."""
        task = parse(task)
        rerun = self._one_sample_rerun(task, tuple(mean.shape), self.prior(task), seed)
        return calibration.bootstrap(rerun, mean, task, seed)

    def _one_sample_rerun(self, task: Task, x_shape: tuple, prior, seed: int, progress=None):
        """``y_star -> mean``: the solver with one sample on another observation, run as this restore is (tiling,
        prior, seed); the calibration's bootstrap calls it."""
        return lambda y_star: self._run(y_star, task, x_shape, prior, 1, seed, progress)[0].mean

    def _progress_split(self, task: Task, prior, samples: int, progress):
        """(the run's progress callback, the bootstrap rerun's): where the calibration will rerun the solver
        (``calibration.bootstrap_needed``), the run reports 0 to its share of the work and the rerun the rest, so a
        progress bar and its time-left estimate move forward only."""
        if progress is None or not self.calibrate or not calibration.bootstrap_needed(self.solver.name, prior.name,
                                                                                      task, self.solver.options):
            return progress, None
        run, rerun = self.solver.cost(task, samples, prior) or samples, self.solver.cost(task, 1, prior) or 1
        share = run / (run + rerun)
        return (lambda f, m: progress(share * f, m),
                lambda f, m: progress(share + (1 - share) * f, f"calibration (bootstrap run): {m}"))

    def estimate_seconds(self, task: str | Task, x_shape: tuple, samples: int = 8) -> float | None:
        """Rough seconds (within about 2x) a restore of restored shape ``x_shape`` (1, C, H, W) would take here, or
        None when the solver cannot say (``restore.estimate``)."""
        from restore import estimate

        return estimate.estimate_seconds(self, parse(task), tuple(x_shape), samples)

    def simulate(self, clean, task: str | Task, seed: int = 0) -> torch.Tensor:
        """Degrade a clean image with the task (for demos and benchmarks); returns y (1, C, h, w)."""
        task = parse(task)
        x = io.to_tensor(clean).to(self.device)
        g = torch.Generator(device=self.device).manual_seed(int(seed))
        y, _ = task.simulate(x, g)
        return y


def _estimated_why(why: str) -> str:
    """``meta['censored']['why']`` where clipped values at an estimated noise level are left as the file has them."""
    return f"the noise level was estimated from the image and {why}; state the level to have the clipped values imputed"


def restore(image, task: str | Task, solver: str | None = None, prior: str | None = None, samples: int = 8,
            seed: int = 0, device: str = "cpu", ground_truth=None, progress: base.ProgressFn | None = None,
            tile: int = 256, overlap: int = 32, quant: str | None = None, calibrate: bool = True,
            **options) -> Posterior:
    """Restore one degraded image and return its :class:`Posterior` (mean, samples, std, meta).

    ``solver`` None: the recommended one for the task (:func:`recommended_solver`). ``options`` override the solver's
    config fields. See :class:`Restorer` for the arguments.
    """
    restorer = Restorer(solver or recommended_solver(task), prior, device, tile=tile, overlap=overlap, quant=quant,
                        calibrate=calibrate, **options)
    return restorer(image, task, samples=samples, seed=seed, ground_truth=ground_truth, progress=progress)


__all__ = ["restore", "Restorer", "DEFAULT_SOLVER", "recommended_solver", "TaskError"]
