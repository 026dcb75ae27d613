"""Calibrated uncertainty: a solver's raw output turned into per-pixel intervals and a std that mean what they say.

How it works (see ../shared/notes/calibration.md; Angelopoulos et al. 2022, "Image-to-image regression with
distribution-free uncertainty quantification"; Angelopoulos et al., "Conformal risk control"):

1. **Error scale.** A per-pixel scale ``s_hat`` (1, C, H, W) > 0 from cheap signals of the run (:data:`FEATURES`):
   the samples' spread, the mean's local contrast, the data-fit residual A^T(y - A mean) (each at a few window
   sizes, window 1 = the pixel itself), how much of the neighbourhood the operator observes, the brightness; for
   PMRF also a parametric bootstrap (the solver once more on a fresh degradation of its own mean,
   :data:`BOOT_FEATURES`). ``log s_hat = w . features``, with ``w`` fitted per cell by least squares of log|error|
   on fit images (``restore.train.calibration``). Near-Dirac solvers (RED-Diff, PMRF) get a useful scale from the
   other signals; the spread alone is not one.
2. **Normalised scores** |x - mean| / s_hat on calibration images disjoint from the fit images. The image is the
   unit: each calibration image keeps its score quantile function, and L_i(l) = fraction of image i's pixels whose
   score exceeds l.
3. **Intervals** mean +- l * s_hat (clipped to [0, 1], which keeps coverage since images live there), with l from
   - ``guarantee="crc"`` (default; conformal risk control): l = inf{l : n/(n+1) R_n(l) + 1/(n+1) <= alpha}. Then
     E[fraction of a new image's pixels outside] <= alpha, in expectation over the calibration and test draws.
   - ``guarantee="rcps"`` (risk-controlling prediction set, Hoeffding-Bentkus bound): with probability >= 1 - delta
     over the calibration draw, a new image's expected fraction of pixels outside is at most alpha.
   Both assume the new image is exchangeable with the calibration images of its cell.
   **Groups.** Where the operator leaves pixels unobserved (inpainting), the observed and the missing pixels are
   calibrated apart (group-conditional, "Mondrian" conformal risk control): each group keeps its own score curves
   and multiplier, so the guarantee holds for the fraction of a new image's *missing* pixels outside, and for its
   observed ones, not only for their mix. Pooled, the few hole pixels (9 % of a box inpainting) sat far outside
   their intervals while the many observed ones over-covered (PMRF box inpainting, 6 held-out crops: 0.58 inside the
   hole, 0.95 outside, 0.92 overall).
   The calibrated **std** is the half-width of the calibrated 68.27 % interval (what a Gaussian's std would be).
4. **Self-check**: chi2 ratio ||y - A mean||^2 / (m sigma^2) of the mean against the observation, compared with the
   range the calibration images gave (:func:`self_check`). Above it, the mean does not explain y: the result says
   so and the calibrated scale widens by sqrt(ratio / upper bound).

A cell is (solver, prior, task family, noise level); the tables live in ``models/calibration/SOLVER.PRIOR.json``
(loaded through ``restore.priors.registry.calibration_table``) with their provenance: solver config, prior digest,
images, date. A noise level between two grid points interpolates the weights and the score curves in log sigma
(status "approximate": the guarantee no longer holds exactly), unless the two cells' scale models read the image more
than 2x apart, when their calibrated widths are averaged (:func:`disagreeing_neighbours`); outside the grid, for
another solver config or a retrained prior, the status is "uncalibrated" and the raw spread is used, with a warning.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field, replace

import numpy as np
import torch
import torch.nn.functional as F

FEATURES = ("bias", "log_spread_1", "log_spread_3", "log_spread_7", "log_grey_spread_5", "log_contrast_3",
            "log_contrast_5", "log_contrast_9", "log_grey_contrast_5", "log_residual_3", "log_residual_5",
            "log_residual_11", "log_residual_1", "log_unobserved_1", "log_unobserved_9", "log_unobserved_33",
            "brightness")
# the windowed signals a feature name can ask for, ``<kind>_<odd window>``
WINDOWED = ("log_spread", "log_grey_spread", "log_contrast", "log_grey_contrast", "log_residual", "log_unobserved",
            "log_boot")
# Parametric-bootstrap signals (2026-12-06): the solver run once more, with one sample, on a fresh observation of its
# own estimate, A mean + new noise; its change e* = mean* - mean is an error the solver makes on an image like this
# one. Its local RMS (windows 3, 9) and the image's whole RMS (``log_boot_image``) let the scale follow how hard the
# image is for the solver (faces, flat photos: easier than the calibration crops, which the other signals miss).
# A table whose cells list them makes every calibrated run pay that extra run (:func:`needs_bootstrap`).
BOOT_FEATURES = ("log_boot_3", "log_boot_9", "log_boot_image")
BOOT_SEED = 1_000_003  # the bootstrap observation's noise seed: the run's seed plus this
# The per-pixel signals new tables are fitted on. A table lists the ones it was fitted on and is applied with those,
# so tables fitted before a signal was added keep working (those before 2026-12-03 lack the unsmoothed spread and
# observed-pixel signals, window 1, which let a std map separate observed from missing pixels in random inpainting).
# probabilities at which each calibration image's score quantile function is stored: 0.01 steps up to 0.9, then
# 0.001 steps, so the tails behind 90-99.9 % intervals are resolved
SCORE_PROBS = np.concatenate([np.linspace(0.0, 0.9, 91), np.linspace(0.9, 1.0, 101)[1:]])
GAUSS_STD_LEVEL = 0.6826894921370859  # P(|z| <= 1) for a standard normal
EPS = 1e-3  # floor of every log feature and of |error|: a quarter of an 8-bit level
SELF_CHECK_MARGIN = 1.25  # how far outside the calibration images' chi2 range a result is flagged
SIGMA_MATCH = 0.03  # relative distance in sigma within which a noise level counts as a grid point
# relative distance beyond the grid's first or last noise level within which that cell still applies ('approximate'):
# sigma=auto reads 50/255 noise as up to 0.217 on textured crops (+11 %; 8 held-out BSD432 crops, 2026-12-06), which
# fell outside the grid (top 0.196) and lost its calibration (90 % coverage of the raw spread 0.30-0.46)
EDGE_MARGIN = 0.15
# Between two grid levels the blend mixes the neighbours' log scales. Where their scale models read the image more than
# this far apart (median |log s_b / s_a|), one or both extrapolate far from their level (ScoreDVI's weights put
# exponents near 3 on the spread; RED-Diff's read a 26-28/255 crop 3x apart) and the log blend follows the narrower:
# at sigma=auto on 25 and 35/255 crops of the priors' held-out files ScoreDVI covered 0.75 / 0.73, RED-Diff 0.88 /
# 0.85. There the two cells' calibrated half-widths are averaged instead (:func:`disagreeing_neighbours`, 2026-12-07).
BLEND_AGREEMENT = math.log(2.0)
# unknown real noise: one cell pooled over synthetic camera-like noise (restore.train.camera_noise), keyed by
# sigma 0; its self-check uses the solver's own noise estimate (meta 'estimated_noise_std')
REAL_FAMILY = "denoise-real"
REAL_NOTE = ("real camera noise, calibrated on a mix of synthetic camera-like noise (signal-dependent, correlated, "
             "about 2-32/255): real sensors differ, so the guarantee holds only approximately")


# a Gaussian solver run at sigma=auto on a photo whose noise is not white Gaussian (a camera's): one cell pooled over
# the same synthetic camera-like noise, the level estimated as at run time; :func:`apply` switches to it when the
# self-check against the Gaussian cell says the observation is explained far better than the estimate predicts
CAMERA_FAMILY = "denoise-camera"
# the switch: chi2 below this share of the Gaussian cell's lowest calibration ratio. Chosen on the priors' held-out
# BSD432 crops at 128 px (PMRF, scripts/camera_noise_check.py, 2026-12-07): Gaussian noise at 5-50/255 read at
# sigma=auto, its clipped values imputed, never went below 0.97 of it (left as the file has them, as sigma=auto runs
# now do, 1 of 32 crops did, at 50/255); camera-like noise went to 0.43-1.05 (the 'fits the noise' verdict's 0.8
# left 4 of 24 first-model crops and 14 of 16 heavy raw-pipeline ones on the Gaussian cell, at 0.58-0.80 coverage)
CAMERA_SWITCH = 0.9
CAMERA_NOTE = ("noise unlike white Gaussian noise (the self-check at the estimated level), calibrated on synthetic "
               "camera-like noise (signal-dependent, correlated, about 2-32/255) with the level estimated as here: "
               "real sensors differ, so the guarantee holds only approximately")


class UncalibratedWarning(UserWarning):
    """The run's uncertainty is the solver's raw spread: no calibration table covers it (the message says why)."""


# ---- cells -----------------------------------------------------------------------------------------------------

def family(task) -> tuple[str | None, str]:
    """(calibration family of a task or None, why none). Families pool what one table can stand for: every blur
    kernel is 'deblur' (calibrated on a mix of Gaussian and motion kernels), each SR factor its own, random-pixel and
    region inpainting apart (``Task.family``: user masks count as regions)."""
    if task.kind == "denoise":
        if task.variant in ("gaussian", "real"):
            return task.family, ""  # 'denoise', or REAL_FAMILY for real noise
        return None, f"{task.variant} noise is not calibrated"
    if task.kind in ("deblur", "sr", "inpaint"):
        return task.family, ""
    return None, f"task kind {task.kind} is not calibrated"


# ---- per-pixel signals -----------------------------------------------------------------------------------------

def _box(x: torch.Tensor, k: int) -> torch.Tensor:
    return F.avg_pool2d(F.pad(x, (k // 2,) * 4, mode="replicate"), k, stride=1)


def local_std(x: torch.Tensor, k: int) -> torch.Tensor:
    """Per-pixel std of ``x`` (B, C, H, W) over a k x k window (replicate padding)."""
    return (_box(x**2, k) - _box(x, k) ** 2).clamp_min(0).sqrt()


def features(mean: torch.Tensor, spread: torch.Tensor, y: torch.Tensor, physics,
             names: tuple[str, ...] | list[str] = FEATURES, boot: torch.Tensor | None = None) -> torch.Tensor:
    """The per-pixel signals behind the error scale, (len(names), C, H, W) for a (1, C, H, W) mean, in the order of
    ``names`` (default :data:`FEATURES`; a table passes its own list): the spread and the mean's local contrast (per
    channel and channel-averaged) and the data-fit residual A^T(y - A mean) at a few window sizes, how much of the
    neighbourhood the operator observes, the brightness, and per-image numbers: the log of the operator's Wiener
    error (:func:`wiener_rmse`, ``log_wiener``) and of its blur's elongation (:func:`kernel_anisotropy`,
    ``log_anisotropy``), how much the blur is a motion blur (:func:`motion_share`, ``motion``) and its product with
    the first (``log_wiener_motion``), and the parametric bootstrap's (:data:`BOOT_FEATURES`: the local and the
    whole-image RMS of ``boot - mean``). A name is ``log_<signal>_<window>``, "bias", "brightness", "log_wiener",
    "log_anisotropy", "motion", "log_wiener_motion" or "log_boot_image".

    mean, spread: the solver's estimate and its samples' std, [0, 1] units; y: the observation; physics: its
    deepinv operator (noiseless ``A`` / ``A_adjoint`` are used); boot: the bootstrap estimate (:func:`bootstrap`),
    (1, C, H, W), needed only by the ``log_boot`` names."""
    with torch.no_grad():
        log = lambda t: torch.log(t + EPS)  # noqa: E731
        cache = {}

        def once(key, make):
            if key not in cache:
                cache[key] = make()
            return cache[key]

        def observed():
            return observed_weight(physics, mean)

        # the operator's per-image numbers, each probed once however many names use it
        def log_wiener() -> float:
            return once("log_wiener", lambda: math.log(wiener_rmse(physics, tuple(mean.shape))))

        def anisotropy() -> float:
            return once("anisotropy", lambda: kernel_anisotropy(physics, tuple(mean.shape)))

        def signal(name: str) -> torch.Tensor:
            if not known_feature(name):
                raise ValueError(f"unknown calibration feature {name!r}")
            if name == "bias":
                return torch.ones_like(mean)
            if name == "log_wiener":
                return torch.full_like(mean, log_wiener())
            if name == "log_anisotropy":
                return torch.full_like(mean, anisotropy())
            if name == "motion":
                return torch.full_like(mean, motion_share(anisotropy()))
            if name == "log_wiener_motion":
                return torch.full_like(mean, log_wiener() * motion_share(anisotropy()))
            if name == "brightness":
                return mean
            if name.startswith("log_boot"):
                if boot is None:
                    raise ValueError(f"calibration feature {name!r} needs the bootstrap estimate (boot=)")
                change = once("boot", lambda: (boot - mean) ** 2)
                if name == "log_boot_image":
                    return torch.full_like(mean, 0.5 * math.log(float(change.mean()) + 1e-12))
                return log(_box(change, int(name.rpartition("_")[2])).sqrt())
            kind, _, size = name.rpartition("_")
            k = int(size)
            if kind == "log_spread":
                return log(_box(spread, k))
            if kind == "log_grey_spread":
                return log(_box(spread.mean(1, keepdim=True).expand_as(mean), k))
            if kind == "log_contrast":
                return log(local_std(mean, k))
            if kind == "log_grey_contrast":
                return log(local_std(mean.mean(1, keepdim=True).expand_as(mean), k))
            if kind == "log_residual":
                residual = once("residual", lambda: physics.A_adjoint(y - physics.A(mean)) ** 2)
                return log(_box(residual, k).sqrt())
            return torch.log(1 + 1e-2 - _box(once("observed", observed), k).clamp(0, 1))  # log_unobserved

        return torch.cat([signal(n) for n in names], 0)


# power of natural images' spectrum at spatial frequency f (cycles / pixel), [0, 1] units: about 1e-3 / f^2
NATURAL_SPECTRUM = 1e-3


def centre_impulse(shape: tuple[int, ...]) -> torch.Tensor:
    """A unit impulse at the centre pixel of every channel, (1, C, H, W), zeros elsewhere: probes an operator."""
    delta = torch.zeros((1, *shape[1:]))
    delta[:, :, shape[2] // 2, shape[3] // 2] = 1
    return delta


def wiener_rmse(physics, shape: tuple[int, ...]) -> float:
    """How hard the operator makes the problem, as one number: the RMS error of the linear MMSE (Wiener) estimate
    of an image with natural images' 1 / f^2 power spectrum, from A (its impulse response at the image centre,
    first channel) and the noise level of ``physics.noise_model``. It grows with the share of the spectrum a kernel
    erases below the noise and with the noise, whatever the kernel's shape: Gaussian blur sigma 1 / 3 at noise 0.01
    give 0.058 / 0.095 at 96 px, 19 px motion kernels 0.039-0.044."""
    with torch.no_grad():
        _, _, h, w = shape
        # |K(f)|^2, from A^T A's impulse response
        gain = torch.fft.fft2(torch.fft.ifftshift(physics.A_adjoint(physics.A(centre_impulse(shape)))[0, 0])).abs()
        fy, fx = torch.fft.fftfreq(h), torch.fft.fftfreq(w)
        f2 = (fy[:, None] ** 2 + fx[None, :] ** 2).clamp_min(1.0 / (h * w))
        power = NATURAL_SPECTRUM / f2
        sigma = float(torch.as_tensor(getattr(physics.noise_model, "sigma", 0.0)).max())
        var = max(sigma, 1e-4) ** 2
        return math.sqrt(float((power * var / (gain * power + var)).mean()))


def kernel_anisotropy(physics, shape: tuple[int, ...]) -> float:
    """How elongated the operator's blur is, as one number: the log ratio of the two principal second moments (in
    px^2, each + 0.25) of its impulse response at the image centre (first channel). 0 for any isotropic blur
    (Gaussian, identity, decimation), 0.5-3 for camera-shake and motion kernels. With :func:`wiener_rmse` it separates
    kernels the Wiener error alone ranks together: a learned solver's error on a motion kernel is larger, relative to
    its Wiener error, than on a Gaussian one."""
    with torch.no_grad():
        _, _, h, w = shape
        k = physics.A(centre_impulse(shape))[0, 0].abs().double()
        if k.shape != (h, w):  # an operator that changes the size (SR): isotropic by construction
            return 0.0
        k = k / k.sum().clamp_min(1e-12)
        yy, xx = torch.meshgrid(torch.arange(h, dtype=k.dtype), torch.arange(w, dtype=k.dtype), indexing="ij")
        dy, dx = yy - (k * yy).sum(), xx - (k * xx).sum()
        cov = torch.stack([torch.stack([(k * dy * dy).sum(), (k * dy * dx).sum()]),
                           torch.stack([(k * dy * dx).sum(), (k * dx * dx).sum()])])
        low, high = torch.linalg.eigvalsh(cov).tolist()
        return math.log((high + 0.25) / (max(low, 0.0) + 0.25))


MOTION_ANISOTROPY = 0.3  # the elongation (kernel_anisotropy) at which a blur counts as three quarters motion


def motion_share(anisotropy: float) -> float:
    """How much a blur of elongation ``anisotropy`` (:func:`kernel_anisotropy`) is a motion (camera-shake) blur
    rather than an isotropic one, in [0, 1): tanh of it over :data:`MOTION_ANISOTROPY`; 0 for Gaussian blur, 0.75-1
    for motion kernels. With its product with ``log_wiener`` it lets the error scale follow kernel width one way for
    isotropic blur and another for motion blur (a learned solver's tail of errors grows with a Gaussian kernel's
    width, not with a motion kernel's length)."""
    return math.tanh(anisotropy / MOTION_ANISOTROPY)


def known_feature(name: str) -> bool:
    """Whether :func:`features` computes ``name`` (a table naming another one needs a newer restore)."""
    kind, _, size = name.rpartition("_")
    return (name in ("bias", "brightness", "log_wiener", "log_anisotropy", "motion", "log_wiener_motion",
                     "log_boot_image")
            or (kind in WINDOWED and size.isdigit() and int(size) % 2 == 1))


def needs_bootstrap(names) -> bool:
    """Whether features ``names`` include a bootstrap signal (the run must then restore once more)."""
    return any(n.startswith("log_boot") for n in names)


def bootstrap_needed(solver: str, prior: str, task, options: dict | None = None) -> bool:
    """Whether a calibrated run of ``solver`` / ``prior`` (with explicit solver ``options``) on ``task`` pays the
    bootstrap rerun: its table's cell for the task lists a bootstrap signal (for the time estimate; a cell not found
    costs nothing extra)."""
    from restore.priors import registry

    table = registry.calibration_table(solver, prior, options)
    fam, _ = family(task)
    if table is None or fam is None:
        return False
    cell, _, _ = find_cell(table, fam, 0.0 if fam == REAL_FAMILY else float(task.noise_sigma or 0.0))
    return cell is not None and needs_bootstrap(cell_features(table, cell))


def bootstrap(rerun, mean: torch.Tensor, task, seed: int) -> torch.Tensor:
    """The parametric bootstrap's estimate: ``rerun(y_star)`` (the solver with one sample, as the run was made) on
    y_star, ``task``'s degradation of ``mean`` with fresh noise drawn from ``seed + BOOT_SEED``. mean: (1, C, H, W) in
    [0, 1] on the restored grid; returns the same shape."""
    g = torch.Generator(device=mean.device).manual_seed(int(seed) + BOOT_SEED)
    y_star, _ = task.simulate(mean.clamp(0, 1), g)
    return rerun(y_star)


def scale_map(weights, feats: torch.Tensor) -> torch.Tensor:
    """s_hat = exp(w . features), (1, C, H, W)."""
    w = torch.as_tensor(weights, dtype=feats.dtype).view(-1, 1, 1, 1)
    return torch.exp((w * feats).sum(0, keepdim=True).clamp(-20, 5))


def chi2_ratio(mean: torch.Tensor, y: torch.Tensor, physics, sigma: float) -> float:
    """||y - A mean||^2 / (m sigma^2) over the m observed values: about 1 when the mean explains y to the noise."""
    with torch.no_grad():
        r = y - physics.A(mean)
        observed = physics.A(torch.ones_like(mean)) != 0
        m = int(observed.sum())
        return float((r[observed] ** 2).sum() / (max(m, 1) * sigma**2))


GROUPS = ("observed", "missing")  # the pixel groups of an operator that leaves pixels unobserved


def observed_weight(physics, like: torch.Tensor) -> torch.Tensor:
    """How much of each pixel the operator observes: A^T A 1 scaled to a maximum of 1, shaped like A^T's output
    (``like``'s shape for every task here). 0 in inpainting's holes."""
    with torch.no_grad():
        seen = physics.A_adjoint(physics.A(torch.ones_like(like)))
        return seen / seen.abs().amax().clamp_min(1e-12)


def missing_pixels(physics, like: torch.Tensor) -> torch.Tensor | None:
    """Where the operator observes nothing, (1, C, H, W) bool like ``like``, or None when it observes every pixel
    (denoising, blur, SR: A^T A 1 > 0 everywhere) or none. Inpainting's holes and dropped pixels."""
    seen = observed_weight(physics, like)
    if seen.shape != like.shape:
        return None
    missing = seen.abs() <= 1e-6
    return missing if bool(missing.any()) and not bool(missing.all()) else None


def group_curves(score: torch.Tensor, missing: torch.Tensor | None) -> dict[str, list] | None:
    """Each pixel group's score quantile function (at :data:`SCORE_PROBS`) of one image's normalised scores
    (1, C, H, W), or None when ``missing`` is None."""
    if missing is None:
        return None
    return {g: np.quantile(score[m].flatten().numpy(), SCORE_PROBS).tolist()
            for g, m in (("observed", ~missing), ("missing", missing))}


# ---- risk bounds -----------------------------------------------------------------------------------------------

def _miss_fractions(curves: np.ndarray, lam: float) -> np.ndarray:
    """L_i(lam) for each image: 1 - F_i(lam), from its stored score quantiles (rows of ``curves``)."""
    return np.array([1.0 - np.interp(lam, q, SCORE_PROBS, left=0.0, right=1.0) for q in curves])


def hb_ucb(risk: float, n: int, delta: float) -> float:
    """Hoeffding-Bentkus upper confidence bound on a mean loss in [0, 1] from its empirical mean over n draws."""
    from scipy.stats import binom

    def p_value(r):
        a = min(risk, r)
        h1 = (a * math.log(a / r) if a > 0 else 0.0) + ((1 - a) * math.log((1 - a) / (1 - r)) if a < 1 else 0.0)
        return min(math.exp(-n * h1), math.e * binom.cdf(math.ceil(n * risk), n, r))

    lo, hi = risk, 1.0 - 1e-12
    if p_value(hi) >= delta:
        return 1.0
    for _ in range(60):  # p_value falls as r rises above the empirical risk: bisect its crossing of delta
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if p_value(mid) >= delta else (lo, mid)
    return hi


def calibrated_lambda(curves, level: float, guarantee: str = "crc", delta: float = 0.1) -> float:
    """The multiplier l of the interval mean +- l * s_hat at ``level`` from the calibration images' score curves
    (n, len(SCORE_PROBS)); ``inf`` when n images cannot certify it (then the interval is all of [0, 1])."""
    curves = np.asarray(curves, dtype=np.float64)
    n, alpha = len(curves), 1.0 - level
    if guarantee == "crc":
        def ok(lam):
            return n / (n + 1) * _miss_fractions(curves, lam).mean() + 1 / (n + 1) <= alpha
    elif guarantee == "rcps":
        def ok(lam):
            return hb_ucb(float(_miss_fractions(curves, lam).mean()), n, delta) <= alpha
    else:
        raise ValueError(f"unknown guarantee {guarantee!r}; use 'crc' or 'rcps'")
    hi = float(curves.max()) * (1 + 1e-9) + 1e-9
    if not ok(hi):
        return math.inf
    lo = 0.0
    for _ in range(50):  # the loss only falls as l grows: bisect
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if ok(mid) else (mid, hi)
    return hi


GUARANTEES = {
    "crc": "conformal risk control: expected fraction of a new image's pixels outside the {p:g} % interval <= "
           "{a:g} %, over calibration and test draws, for images exchangeable with the {n} calibration images",
    "rcps": "risk-controlling prediction set (Hoeffding-Bentkus): with probability >= {c:g} % over the calibration "
            "draw, a new image's expected fraction of pixels outside the {p:g} % interval is <= {a:g} %",
}
GROUPED = "; for the observed and the missing pixels separately (each group calibrated apart)"


# ---- tables ----------------------------------------------------------------------------------------------------

def at_level(cell: dict, sigma: float) -> bool:
    """Whether a run at noise level ``sigma`` takes ``cell`` as its own (within :data:`SIGMA_MATCH` of the level it
    was fitted at); a refit at ``sigma`` replaces that cell (``restore.train.calibration.kept_cells``)."""
    return abs(sigma - cell["sigma"]) <= SIGMA_MATCH * cell["sigma"]


def find_cell(table: dict, fam: str, sigma: float) -> tuple[dict | None, str, str]:
    """(cell, status, note) for a family and noise level: the grid cell ('calibrated'), a blend of the two
    neighbours in log sigma ('approximate'), or None ('uncalibrated') outside the grid."""
    cells = sorted((c for c in table["cells"] if c["family"] == fam), key=lambda c: c["sigma"])
    if not cells:
        return None, "uncalibrated", f"no cell for {fam} in {table['file']}"
    for c in cells:
        if at_level(c, sigma):
            return c, "calibrated", f"{fam} at noise sigma {c['sigma']:.4g}"
    grid = ", ".join(f"{c['sigma']:.4g}" for c in cells)
    for a, b in zip(cells, cells[1:]):
        if a["sigma"] < sigma < b["sigma"]:
            t = (math.log(sigma) - math.log(a["sigma"])) / (math.log(b["sigma"]) - math.log(a["sigma"]))
            if np.shape(a["scores"]) != np.shape(b["scores"]) or a.get("features") != b.get("features"):
                # fitted with other image counts or other features: the nearer one
                nearer = a if t < 0.5 else b
                return nearer, "approximate", (f"{fam} at noise sigma {sigma:.4g}, using the calibrated "
                                               f"{nearer['sigma']:.4g}: the guarantee holds only approximately")
            blend = {"family": fam, "sigma": sigma, **({"features": a["features"]} if "features" in a else {}),
                     "weights": ((1 - t) * np.asarray(a["weights"]) + t * np.asarray(b["weights"])).tolist(),
                     "scores": ((1 - t) * np.asarray(a["scores"]) + t * np.asarray(b["scores"])).tolist(),
                     **({"group_scores": {g: ((1 - t) * np.asarray(a["group_scores"][g])
                                              + t * np.asarray(b["group_scores"][g])).tolist() for g in GROUPS}}
                        if "group_scores" in a and "group_scores" in b else {}),
                     "mse_scale": (1 - t) * a["mse_scale"] + t * b["mse_scale"], "solvers": a.get("solvers"),
                     "predicted_psnr_range": [min(c.get("predicted_psnr_range", [-math.inf])[0] for c in (a, b))],
                     "chi2_range": [min(a["chi2_range"][0], b["chi2_range"][0]),
                                    max(a["chi2_range"][1], b["chi2_range"][1])],
                     "neighbours": (a, b), "t": t}  # for apply's agreement check (disagreeing_neighbours)
            return blend, "approximate", (f"{fam} at noise sigma {sigma:.4g}, interpolated between the calibrated "
                                          f"{a['sigma']:.4g} and {b['sigma']:.4g}: the guarantee holds only "
                                          "approximately")
    for edge in (cells[0], cells[-1]):  # just past an end of the grid: a noise estimate's own error, not a new regime
        if edge["sigma"] / (1 + EDGE_MARGIN) <= sigma <= edge["sigma"] * (1 + EDGE_MARGIN):
            return edge, "approximate", (f"{fam} at noise sigma {sigma:.4g}, just outside the calibrated grid "
                                         f"({grid}): using the calibrated {edge['sigma']:.4g}; the guarantee holds "
                                         "only approximately")
    return None, "uncalibrated", f"noise sigma {sigma:.4g} is outside the calibrated grid for {fam} ({grid})"


@dataclass
class Calibration:
    """A posterior's calibrated uncertainty: the per-pixel error scale and the cell's score curves.

    ``scale`` (1, C, H, W) is s_hat after any self-check widening; ``interval_multiplier(level)`` is l.
    """

    scale: torch.Tensor
    scores: np.ndarray
    status: str  # 'calibrated' or 'approximate'
    table: str
    note: str
    mse_scale: float
    widening: float = 1.0
    data_fit: torch.Tensor | None = None  # data_fit_map of the run, (1, 1, h, w) on the observation's grid
    # pixels the operator did not observe, (1, C, H, W) bool, and each group's score curves (n, len(SCORE_PROBS)):
    # set together for a cell calibrated by groups (inpainting), else None and the pooled ``scores`` apply everywhere
    missing: torch.Tensor | None = None
    group_scores: dict | None = None
    _cache: dict = field(default_factory=dict, repr=False)

    @property
    def grouped(self) -> bool:
        return self.missing is not None and self.group_scores is not None

    def interval_multiplier(self, level: float, guarantee: str = "crc", delta: float = 0.1,
                            group: str | None = None) -> float:
        """l at ``level`` from the pooled score curves, or from those of pixel ``group`` ('observed' / 'missing')."""
        key = (round(level, 6), guarantee, delta, group)
        if key not in self._cache:
            curves = self.scores if group is None else self.group_scores[group]
            self._cache[key] = calibrated_lambda(curves, level, guarantee, delta)
        return self._cache[key]

    def pooled(self) -> "Calibration":
        """The same calibration with one multiplier for all pixels (the pooled score curves): what a cell not
        calibrated by groups would give; a new object with its own multiplier cache."""
        return replace(self, missing=None, group_scores=None, _cache={})

    def multiplier(self, level: float, guarantee: str = "crc", delta: float = 0.1) -> float | torch.Tensor:
        """l per pixel: a (1, C, H, W) map of each group's multiplier for a grouped cell, else the pooled number."""
        if not self.grouped:
            return self.interval_multiplier(level, guarantee, delta)
        observed, missing = (self.interval_multiplier(level, guarantee, delta, g) for g in GROUPS)
        return torch.where(self.missing, torch.tensor(missing, dtype=self.scale.dtype),
                           torch.tensor(observed, dtype=self.scale.dtype))

    def interval(self, mean: torch.Tensor, level: float, guarantee: str = "crc", delta: float = 0.1):
        lam = self.multiplier(level, guarantee, delta)
        if not torch.is_tensor(lam) and math.isinf(lam):
            return torch.zeros_like(mean), torch.ones_like(mean)
        # a group its calibration images cannot certify gets all of [0, 1] (inf * scale clamps there)
        return (mean - lam * self.scale).clamp(0, 1), (mean + lam * self.scale).clamp(0, 1)

    def std(self) -> torch.Tensor:
        return self.multiplier(GAUSS_STD_LEVEL) * self.scale

    def predicted_rmse(self) -> float:
        """Root of the predicted mean squared error, mse_scale * mean(s_hat^2); mse_scale is the geometric mean of the
        ratio on the cell's fit and calibration images."""
        return math.sqrt(self.mse_scale * float((self.scale**2).mean()))

    def guarantee(self, level: float = 0.9, guarantee: str = "crc", delta: float = 0.1) -> str:
        text = GUARANTEES[guarantee].format(p=100 * level, a=100 * (1 - level), c=100 * (1 - delta),
                                            n=len(self.scores)) + (GROUPED if self.grouped else "")
        return text if self.status == "calibrated" else f"approximately ({self.note}): {text}"


def _uncalibrated(post, reason: str, y: torch.Tensor, physics, task) -> None:
    post.meta["uncertainty"] = {"status": "uncalibrated", "reason": reason,
                                "std": "raw sample spread (not calibrated)"}
    sigma = task.noise_sigma
    if sigma and task.poisson_gain is None:  # the data fit, without a calibrated range to judge it by
        post.meta["uncertainty"]["self_check"] = {"chi2_ratio": round(chi2_ratio(post.mean, y, physics, sigma), 4),
                                                  "expected_range": None, "verdict": "no reference range"}
    warnings.warn(f"uncertainty not calibrated: {reason}; the std and intervals are the solver's raw sample spread",
                  UncalibratedWarning, stacklevel=4)


def cell_features(table: dict, cell: dict) -> list[str]:
    """The features a cell's weights go with: its own list (cells of some families add per-image signals, e.g.
    deblurring's ``log_wiener``) or the table's."""
    return list(cell.get("features") or table["features"])


def table_mismatch(table: dict, prior: str, config: dict, task_family: str | None = None,
                   options: dict | None = None) -> str | None:
    """Why ``table`` does not apply to a run of ``prior`` with solver ``config`` (its features, the prior's weights or
    the solver's settings differ from what it was fitted on), or None when it applies. With the ``task_family``
    (a kind or a calibration family: ``restore.provenance.family_entry``) and the run's explicit ``options``, settings
    are compared as that family runs them (a per-family default changed for another family, e.g. RED-Diff's SR
    settings, leaves a deblurring cell valid)."""
    from restore import provenance
    from restore.priors import registry

    listed = dict.fromkeys([*(table.get("features") or ["(none listed)"]),
                            *(n for c in table.get("cells", []) for n in c.get("features", ()))])
    unknown = [n for n in listed if not known_feature(n)]
    if unknown:
        return (f"{table['file']} was fitted on per-pixel features this version does not compute "
                f"({', '.join(unknown)}): refit it (python -m restore.train.calibration)")
    bad = [f"{c.get('family')} {c.get('sigma')}" for c in table.get("cells", [])
           if len(c.get("weights", ())) != len(cell_features(table, c))]
    if bad:
        return (f"{table['file']} is damaged: cells {', '.join(bad)} do not have one weight per feature "
                "they list; refit it (python -m restore.train.calibration)")
    if table.get("prior_digest") and (prior_digest := registry.digest(prior)) != table["prior_digest"]:
        return f"prior {prior} changed since {table['file']} was fitted ({prior_digest} vs {table['prior_digest']})"
    from restore.stale import settings_changed

    changed = settings_changed(table.get("solver", ""), provenance.canonical(config), table["solver_config"],
                               provenance.canonical(options or {}), task_family)
    if changed:
        return f"solver settings differ from the calibrated ones ({', '.join(changed)})"
    return None


def apply(post, y: torch.Tensor, physics, task, rerun=None, estimated: bool = False) -> None:
    """Calibrate ``post`` in place when a table covers its solver, prior, settings and task: sets
    ``post.calibration`` and ``post.std`` (calibrated) and ``post.meta['uncertainty']`` (status, table, guarantee,
    self-check, predicted RMSE/PSNR). Otherwise the raw spread stays, with status 'uncalibrated' and a warning.
    ``rerun(y_star) -> mean`` restores another observation as this run was made, with one sample: the bootstrap
    signals (:data:`BOOT_FEATURES`) need it where the cell lists them. ``estimated``: the task's noise level was
    read from the observation (sigma=auto); a Gaussian denoising whose mean then fits y far better than that level
    predicts takes the table's :data:`CAMERA_FAMILY` cell where it has one (:func:`camera_cell`)."""
    from restore.priors import registry

    solver, prior = post.meta.get("solver"), post.meta.get("prior")
    ran = post.meta.get("provenance", {}).get("solvers", [])
    top_options = ran[0].get("options", {}) if ran else {}
    table = registry.calibration_table(solver, prior, top_options)  # a preset's own table where one is shipped
    fallback = lambda reason: _uncalibrated(post, reason, y, physics, task)  # noqa: E731
    if table is None:
        return fallback(f"no calibration table for solver {solver} with prior {prior}")
    fam, why = family(task)
    if fam is None:
        return fallback(why)
    if (reason := table_mismatch(table, prior, post.meta.get("config", {}), fam, top_options)) is not None:
        return fallback(reason)
    sigma = task.noise_sigma
    if fam == REAL_FAMILY:  # the cell is pooled over noise levels; the self-check needs the solver's estimate
        sigma = post.meta.get("estimated_noise_std")
        if not sigma:
            return fallback(f"solver {solver} reports no noise estimate, which the real-noise calibration needs")
        cell, status, note = find_cell(table, fam, 0.0)
        if cell is not None:
            status, note = "approximate", REAL_NOTE
    else:
        cell, status, note = find_cell(table, fam, float(sigma or 0.0))
    if cell is None:
        return fallback(note)
    if estimated and fam == "denoise" and (camera := camera_cell(table, cell, post.mean, y, physics, sigma)):
        fam, cell, status, note = CAMERA_FAMILY, camera, "approximate", CAMERA_NOTE
    if cell.get("solvers") is not None and ran:
        from restore.stale import settings_changed

        # as this task's family runs them: a per-family default changed for another family does not count
        now = {s["name"]: s for s in ran}
        then = dict(cell["solvers"])
        differ = sorted(n for n in set(now) | set(then) if n not in now or n not in then
                        or settings_changed(n, now[n]["config"], then[n], now[n].get("options", {}), fam))
    else:
        differ = []
    if differ:
        return fallback(f"the solvers behind this run ({', '.join(differ)}) ran with other settings than the "
                        f"calibrated ones; refit {table['file']} (python -m restore.train.calibration)")
    if post.n_samples != table["n_samples"]:
        status, note = "approximate", f"{note}; calibrated with {table['n_samples']} samples, run with {post.n_samples}"
    names = cell_features(table, cell)
    boot, boot_note = None, None
    if needs_bootstrap(names):
        if rerun is None:
            return fallback(f"{table['file']} needs the bootstrap rerun of the solver, which this caller cannot make "
                            "(restore through restore.Restorer)")
        from restore.tasks import TaskError

        t0 = time.perf_counter()
        try:
            boot = bootstrap(rerun, post.mean, task, int(post.meta.get("seed", 0)))
        except TaskError as exc:  # a task that cannot be simulated (real noise) has no bootstrap
            return fallback(f"{table['file']} needs a bootstrap rerun, which this task cannot make ({exc})")
        boot_note = {"seconds": round(time.perf_counter() - t0, 4),
                     "change_rmse": round(float(((boot - post.mean) ** 2).mean().sqrt()), 6),
                     "what": "the solver once more, with one sample, on a fresh degradation of its own estimate; "
                             "how far that moves sets how hard the image is (restore.calibration.BOOT_FEATURES)"}
        post.meta.setdefault("timings", {})["calibration_bootstrap_s"] = boot_note["seconds"]
    feats = features(post.mean, post.spread, y, physics, names, boot)
    scale = scale_map(cell["weights"], feats)
    if "neighbours" in cell and (averaged := disagreeing_neighbours(cell, feats)) is not None:
        scale, note = averaged
    check = self_check(post.mean, y, physics, float(sigma), cell["chi2_range"])
    widening = max(1.0, math.sqrt(check["chi2_ratio"] / cell["chi2_range"][1]))
    missing = missing_pixels(physics, post.mean) if cell.get("group_scores") else None
    cal = Calibration(scale * widening, np.asarray(cell["scores"]), status, table["file"], note,
                      float(cell["mse_scale"]), widening, data_fit_map(post.mean, y, physics, float(sigma)),
                      missing, ({g: np.asarray(c) for g, c in cell["group_scores"].items()}
                                if missing is not None else None))
    post.calibration = cal
    post.std = cal.std()
    rmse = cal.predicted_rmse()
    predicted_psnr = -20 * math.log10(max(rmse, 1e-6))
    post.meta["uncertainty"] = {
        "status": status, "table": table["file"], "cell": note, "guarantee": cal.guarantee(0.9),
        "std": "calibrated: half-width of the calibrated 68.27 % interval (raw spread in posterior.spread)",
        "self_check": check, "widening": round(widening, 4),
        "predicted_rmse": round(rmse, 6), "predicted_psnr": round(predicted_psnr, 3)}
    if boot_note is not None:
        post.meta["uncertainty"]["bootstrap"] = boot_note
    if cal.grouped:
        post.meta["uncertainty"]["groups"] = {
            "missing_fraction": round(float(missing.float().mean()), 4),
            "multiplier_90": {g: round(cal.interval_multiplier(0.9, group=g), 4) for g in GROUPS}}
    lowest = cell.get("predicted_psnr_range", [-math.inf])[0]
    if predicted_psnr < lowest:  # harder than every calibration image: the exchangeability behind the guarantee is
        # doubtful (an unusual image for this prior, e.g. colours it never saw); say so
        post.meta["uncertainty"]["warning"] = (
            f"predicted PSNR {predicted_psnr:.1f} dB is below every calibration image's ({lowest:.1f} dB): an unusual "
            "image for this solver and prior; treat the result and its intervals with caution")


def disagreeing_neighbours(blend: dict, feats: torch.Tensor) -> tuple[torch.Tensor, str] | None:
    """(scale, note) for a ``blend`` of two grid cells (:func:`find_cell`) whose scale models read this image more
    than :data:`BLEND_AGREEMENT` apart (median over pixels of |log s_b - log s_a| on the run's features ``feats``):
    the two cells' calibrated 90 % half-widths l * s averaged with the blend's weights, expressed as a scale for the
    blend's own multiplier. An average of widths follows the wider where a log blend follows the narrower, which an
    extrapolating model can make arbitrarily narrow. None when they agree (the log blend stands)."""
    a, b = blend["neighbours"]
    t = blend["t"]
    s_a, s_b = scale_map(a["weights"], feats), scale_map(b["weights"], feats)
    apart = float((torch.log(s_b) - torch.log(s_a)).abs().median())
    lam = [calibrated_lambda(np.asarray(c["scores"]), 0.9) for c in (a, b, blend)]
    if apart <= BLEND_AGREEMENT or not all(math.isfinite(v) and v > 0 for v in lam):
        return None
    scale = ((1 - t) * lam[0] * s_a + t * lam[1] * s_b) / lam[2]
    return scale, (f"{blend['family']} at noise sigma {blend['sigma']:.4g}, between the calibrated {a['sigma']:.4g} "
                   f"and {b['sigma']:.4g}, whose scale models read this image {math.exp(apart):.1f}x apart: their "
                   "calibrated widths averaged; the guarantee holds only approximately")


def camera_cell(table: dict, cell: dict, mean: torch.Tensor, y: torch.Tensor, physics, sigma: float) -> dict | None:
    """The table's camera-noise cell for a Gaussian denoising at an estimated level ``sigma`` when the mean explains
    y better than :data:`CAMERA_SWITCH` times the Gaussian ``cell``'s best-fitting calibration image did, else None.
    At an estimated level a fit that good cannot mean a mis-stated level: it means noise the Gaussian model reads
    wrongly (correlated, signal-dependent), left partly in the result, where the Gaussian cell's intervals covered
    0.51-0.93 of the true pixels at 90 % (PMRF, scripts/camera_noise_check.py, 2026-12-07)."""
    camera, _, _ = find_cell(table, CAMERA_FAMILY, 0.0)
    if camera is None or chi2_ratio(mean, y, physics, float(sigma)) >= CAMERA_SWITCH * cell["chi2_range"][0]:
        return None
    return camera


NOT_GAUSSIAN_WARNING = (
    "the observation is explained far better than its estimated noise level predicts: the noise looks unlike white "
    "Gaussian noise (a camera's is correlated and signal-dependent), part of it may remain in the result and the "
    "intervals are likely too narrow; for camera noise use denoise:real (ScoreDVI)")
# the same finding where the table's camera-noise cell took over (:func:`camera_cell`): the intervals are then that
# cell's, but the result still carries what a Gaussian denoiser leaves of camera noise
CAMERA_CELL_WARNING = (
    "the observation is explained far better than its estimated noise level predicts: the noise looks unlike white "
    "Gaussian noise (a camera's is correlated and signal-dependent) and part of it may remain in the result; the "
    "intervals come from this solver's calibration on camera-like noise (approximate); for camera noise "
    "denoise:real (ScoreDVI) restores better")


def warn_if_not_gaussian(meta: dict) -> None:
    """For a run whose noise level was estimated from the image (sigma=auto): a 'fits the noise' self-check cannot
    mean a mis-stated level, and on real camera photos it meant noise left in the result and intervals too narrow
    (PMRF on 8 CC15 crops of 128 px, 2026-12-06: 6 got the verdict, 90 % coverage 0.52-0.72; 24 held-out crops with
    Gaussian noise at 15-50/255 never did), so ``meta['uncertainty']`` gets a warning saying so; where the camera
    cell took over (:func:`camera_cell`), one saying that the intervals are that cell's."""
    u = meta.get("uncertainty", {})
    if str(u.get("cell", "")).startswith(CAMERA_NOTE):
        text = CAMERA_CELL_WARNING
    elif u.get("self_check", {}).get("verdict") == "fits the noise":
        text = NOT_GAUSSIAN_WARNING
    else:
        return
    u["warning"] = f"{u['warning']}; {text}" if u.get("warning") else text


def data_fit_map(mean: torch.Tensor, y: torch.Tensor, physics, sigma: float, window: int = 9) -> torch.Tensor:
    """The self-check as a map on the observation's grid, (1, 1, h, w): the local chi2 ratio (squared residual
    y - A mean over sigma^2, averaged over channels and a ``window`` box); about 1 where the mean explains y, 0 where
    nothing is observed (inpainting holes)."""
    with torch.no_grad():
        r2 = ((y - physics.A(mean)) ** 2).mean(1, keepdim=True) / sigma**2
        return _box(r2, window)


def self_check(mean: torch.Tensor, y: torch.Tensor, physics, sigma: float, chi2_range) -> dict:
    """How well the mean explains the observation: the chi2 ratio against the range the calibration images gave
    (their min and max: a new in-distribution image exceeds the max with probability <= 1/(n+1)). Any ratio above
    the max widens the calibrated scale by sqrt(ratio / max) (in :func:`apply`); the verdict is 'poor fit' (the
    mean does not explain y: divergence, wrong operator or noise level, an image unlike the training data) beyond
    ``SELF_CHECK_MARGIN`` times the max, 'fits the noise' (over-fitting; intervals unchanged) below the min divided
    by it, else 'consistent'."""
    ratio = chi2_ratio(mean, y, physics, sigma)
    lo, hi = chi2_range
    verdict = ("poor fit" if ratio > SELF_CHECK_MARGIN * hi else "fits the noise" if ratio < lo / SELF_CHECK_MARGIN
               else "consistent")
    return {"chi2_ratio": round(ratio, 4), "expected_range": [round(lo, 4), round(hi, 4)], "verdict": verdict}
