"""Gradio web app: `restore ui` (or `python -m app.app`). No solver logic here: everything goes through `restore`.

Offline and safe by default: analytics off, binds 127.0.0.1, PNG outputs (Gradio's default webp is lossy), an upload
limit, images above MAX_UI_PIXELS downscaled or cropped as the user chooses (the size shown before running), one solve
at a time through a bounded queue (requests beyond it are refused with "queue is full"), temporary outputs deleted
after an hour. Both tabs build their task and large-image controls with the same functions.
"""

from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported: no outbound calls
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import concurrent.futures  # noqa: E402
import functools  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

MAX_UI_PIXELS = 1024 * 1024  # per image in the app; the CLI takes up to restore.io.MAX_PIXELS
MAX_UPLOAD = "20mb"
QUEUE_SIZE = 8  # jobs waiting for the solver; more are refused ("queue is full"), not held
OUTPUT_TTL_S = 3600
OUT_ROOT = Path(tempfile.gettempdir()) / "restore-ui"
EXAMPLES = Path(__file__).resolve().parents[1] / "data" / "samples"
TASK_KINDS = ["denoise", "deblur (gaussian)", "deblur (motion)", "super-resolution", "inpaint"]
METRIC_COLUMNS = ["estimate", "PSNR [dB]", "SSIM", "coverage 90%", "std-|error| Spearman", "mean std", "seconds"]

_restorers: dict = {}


class UserError(ValueError):
    """A problem with what the user gave; shown as a message in the app."""


# ---- pure helpers (tested without a server) -------------------------------------------------------------------

def task_spec(kind: str, noise255: float, blur_sigma: float = 2.0, motion_size: int = 19, sr_factor: int = 4,
              inpaint_mode: str = "random pixels", missing: float = 0.5, box_size: float = 0.3,
              mask_path: str | None = None) -> str:
    """The task spec string for the app's controls (noise on the /255 scale as shown in the UI)."""
    noise = f"{float(noise255) / 255:.6f}"
    if kind == "denoise":
        if float(noise255) <= 0:
            raise UserError("denoising needs a noise level above 0")
        return f"denoise:gaussian:sigma={noise}"
    if kind == "deblur (gaussian)":
        return f"deblur:gaussian:sigma={float(blur_sigma)},noise={noise}"
    if kind == "deblur (motion)":
        return f"deblur:motion:size={int(motion_size)},seed=0,noise={noise}"
    if kind == "super-resolution":
        return f"sr:bicubic:factor={int(sr_factor)},noise={noise}"
    if kind == "inpaint":
        if inpaint_mode == "random pixels":
            return f"inpaint:random:missing={float(missing)},noise={noise}"
        if inpaint_mode == "centred box":
            return f"inpaint:box:size={float(box_size)},noise={noise}"
        if not mask_path:
            raise UserError("draw the region to fill on the image (the mask editor), or pick another mask mode")
        return f"inpaint:mask:path={mask_path},noise={noise}"
    raise UserError(f"unknown task {kind!r}")


def mask_from_editor(editor, shape: tuple[int, int], out_dir: Path, fit: Fit | None = None) -> str | None:
    """Write the drawn strokes of an ImageEditor value as a mask PNG (white = observed); None if nothing drawn.
    ``shape``: the uploaded image's (H, W); ``fit``: its crop/downscale for the app (plan_fit), applied to the mask."""
    if not editor or not editor.get("layers"):
        return None
    painted = np.zeros(shape, bool)
    for layer in editor["layers"]:
        if layer is None:
            continue
        arr = np.asarray(layer)
        if arr.ndim == 3 and arr.shape[2] == 4 and arr.shape[:2] == shape:
            painted |= arr[..., 3] > 0
    if not painted.any():
        return None
    from restore.io import write_image

    if fit is not None and not fit.identity:
        painted = fit.apply(painted)
    path = out_dir / "mask.png"
    write_image(path, (~painted).astype(np.float32))
    return str(path)


def _check_image(image, what: str) -> np.ndarray:
    if image is None:
        raise UserError(f"upload {what} first")
    arr = np.asarray(image)
    if arr.ndim < 2 or arr.shape[0] * arr.shape[1] > MAX_UI_PIXELS:
        raise UserError(f"{what} is {arr.shape[1]}x{arr.shape[0]} pixels; the app takes at most "
                        f"{MAX_UI_PIXELS / 1e6:.1f} megapixels: pick {' / '.join(FIT_MODES)} for larger images "
                        f"({CLI_HINT})")
    return arr


# ---- large images: restore a centre crop, a chosen region or a downscaled copy ------------------------------------

FIT_MODES = ["downscale to fit", "centre crop", "region"]
FIT_DEFAULT = FIT_MODES[0]
CLI_HINT = "the `restore` command line restores full-size images, in tiles"


@dataclass(frozen=True)
class Fit:
    """How an image of ``shape`` becomes one the app restores: crop ``box`` (top, left, height, width) in input pixels,
    then resize to ``size`` (height, width); ``description`` says so, e.g. '4032x3024 -> 1182x886 (downscaled)'."""

    shape: tuple[int, int]
    box: tuple[int, int, int, int]
    size: tuple[int, int]
    description: str

    @property
    def identity(self) -> bool:
        return self.box == (0, 0, *self.shape) and self.size == self.shape

    def apply(self, arr: np.ndarray) -> np.ndarray:
        """The fitted copy of ``arr`` (HxW[xC], the shape planned for; bool masks stay masks)."""
        arr = np.asarray(arr)
        if tuple(arr.shape[:2]) != self.shape:
            raise UserError(f"an array of {arr.shape[1]}x{arr.shape[0]} pixels does not match the planned "
                            f"{self.shape[1]}x{self.shape[0]} image")
        t, l, h, w = self.box
        out = arr[t:t + h, l:l + w]
        return out if (h, w) == self.size else _resize(out, self.size)

    def scaled(self, r: int) -> Fit:
        """The same fit for an image ``r`` times larger a side (a super-resolution reference)."""
        return Fit((self.shape[0] * r, self.shape[1] * r), tuple(v * r for v in self.box),
                   (self.size[0] * r, self.size[1] * r), self.description)


def _resize(arr: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Area-aware (Lanczos) resize of HxW[xC] to ``size`` (h, w); uint8 through PIL directly, other dtypes per channel
    in float; bool is resized as coverage and thresholded at one half."""
    from PIL import Image

    h, w = size
    if arr.dtype == np.uint8 and (arr.ndim == 2 or arr.shape[2] in (3, 4)):
        return np.asarray(Image.fromarray(arr).resize((w, h), Image.Resampling.LANCZOS))
    chans = arr[..., None] if arr.ndim == 2 else arr
    out = np.stack([np.asarray(Image.fromarray(chans[..., c].astype(np.float32), mode="F").resize(
        (w, h), Image.Resampling.BOX if arr.dtype == bool else Image.Resampling.LANCZOS))
        for c in range(chans.shape[2])], axis=-1)
    out = out[..., 0] if arr.ndim == 2 else out
    if arr.dtype == bool:
        return out >= 0.5
    if np.issubdtype(arr.dtype, np.integer):
        info = np.iinfo(arr.dtype)
        return np.clip(np.round(out), info.min, info.max).astype(arr.dtype)
    return out.astype(arr.dtype)


def plan_fit(shape: tuple[int, ...], mode: str | None, region=None, limit: int | None = None) -> Fit:
    """How to bring an image of ``shape`` (H, W[, C]) within ``limit`` pixels. Within the limit the image is kept
    whole whatever the mode; above it ``mode`` is 'downscale to fit' (aspect ratio kept), 'centre crop' (the same
    size, from the middle) or 'region' (``region`` = (x, y, width, height) in pixels, left/top edge first, inside the
    image and within the limit). Raises UserError naming the problem (no mode above the limit, a bad region)."""
    limit = MAX_UI_PIXELS if limit is None else limit
    h, w = int(shape[0]), int(shape[1])
    if h * w <= limit:
        return Fit((h, w), (0, 0, h, w), (h, w), f"{w}x{h} (restored as is)")
    mp = f"{limit / 1e6:.1f}"
    if mode is None:
        raise UserError(f"the image is {w}x{h} pixels; the app takes at most {mp} megapixels: pick "
                        f"{' / '.join(FIT_MODES)} ({CLI_HINT})")
    if mode not in FIT_MODES:
        raise UserError(f"unknown large-image choice {mode!r}; one of: {', '.join(FIT_MODES)}")
    if mode == "region":
        if region is None or len(region) != 4 or any(v is None for v in region):
            raise UserError("give the region to restore as x, y, width and height in pixels")
        try:
            x, y, rw, rh = (int(v) for v in region)
        except (TypeError, ValueError):
            raise UserError(f"the region's x, y, width and height must be whole numbers; got {region}") from None
        if (x, y, rw, rh) != tuple(float(v) for v in region):
            raise UserError(f"the region's x, y, width and height must be whole numbers; got {tuple(region)}")
        if x < 0 or y < 0:
            raise UserError(f"the region's x and y must be 0 or more; got x={x}, y={y}")
        if rw < 8 or rh < 8:
            raise UserError(f"the region must be at least 8 pixels a side; got {rw}x{rh}")
        if x + rw > w:
            raise UserError(f"the region (x={x} + width={rw} = {x + rw}) reaches past the image's right edge "
                            f"(width {w})")
        if y + rh > h:
            raise UserError(f"the region (y={y} + height={rh} = {y + rh}) reaches past the image's bottom edge "
                            f"(height {h})")
        if rw * rh > limit:
            raise UserError(f"the region is {rw}x{rh} = {rw * rh / 1e6:.2f} megapixels; the app takes at most {mp}: "
                            "make it smaller, or pick downscale to fit")
        return Fit((h, w), (y, x, rh, rw), (rh, rw), f"{w}x{h} -> {rw}x{rh} (region at x={x}, y={y})")
    s = (limit / (h * w)) ** 0.5
    th, tw = max(1, int(h * s)), max(1, int(w * s))
    while th * tw > limit:  # float rounding
        th, tw = th - (th >= tw), tw - (tw > th)
    if mode == "centre crop":
        return Fit((h, w), ((h - th) // 2, (w - tw) // 2, th, tw), (th, tw), f"{w}x{h} -> {tw}x{th} (centre crop)")
    return Fit((h, w), (0, 0, h, w), (th, tw), f"{w}x{h} -> {tw}x{th} (downscaled)")


def fit_to_limit(image, mode: str | None, region=None, limit: int | None = None) -> tuple[np.ndarray, str]:
    """``image`` (HxW[xC]) brought within ``limit`` pixels as ``mode`` says (see plan_fit), and a description of the
    size that is restored, e.g. '4032x3024 -> 1182x886 (downscaled)'."""
    if image is None:
        raise UserError("upload an image first")
    arr = np.asarray(image)
    if arr.ndim < 2:
        raise UserError(f"not an image: an array of shape {arr.shape}")
    fit = plan_fit(arr.shape, mode, region, limit)
    return (arr if fit.identity else fit.apply(arr)), fit.description


def fit_note(shape, mode: str | None, region=None, simulate: bool = True) -> str:
    """The Markdown line under an upload: the size that will be restored, or why it cannot be."""
    if shape is None:
        return ""
    try:
        fit = plan_fit(shape, mode, region)
    except UserError as exc:
        return f"**{exc}**"
    if fit.identity:
        return f"Size: {fit.description}."
    note = f"Size: **{fit.description}** (the app restores at most {MAX_UI_PIXELS / 1e6:.1f} megapixels; {CLI_HINT})."
    if fit.size != (fit.box[2], fit.box[3]) and not simulate:
        note += (" Downscaling also shrinks the photo's own noise and blur, so the task settings may no longer match "
                 "it: crop instead to keep them.")
    return note


NOISE_SLIDER_MAX = 75  # the noise slider's range, /255


def estimate_noise_level(image, fit: str | None = None, region=None) -> tuple[float | None, str]:
    """The noise std of an uploaded image for the noise slider (on the 0-255 scale, rounded to its step and clipped
    to its range; None when there is no estimate) and a Markdown line saying what was estimated and how. A large
    image is measured as it will be restored (``fit``, ``region``: see plan_fit)."""
    from restore import io
    from restore.noise import estimate_noise

    try:
        arr = _check_image(image, "an image") if fit is None else fit_to_limit(image, fit, region)[0]
        est = estimate_noise(io.to_tensor(arr))
    except ValueError as exc:  # UserError too: no image, too large, too small to estimate
        return None, f"noise std not estimated: {exc}"
    value = min(round(round(est.sigma255 / 0.05) * 0.05, 2), NOISE_SLIDER_MAX)  # the slider's step
    beyond = f", above the slider's {NOISE_SLIDER_MAX}" if est.sigma255 > NOISE_SLIDER_MAX else ""
    return value, f"estimated noise std: {est.sigma255:.1f} /255 ({est.method}{beyond})"


def slider_holds_estimate(task, image, fit: str | None = None, region=None) -> bool:
    """Whether the task's noise level is what :func:`estimate_noise_level` puts on the slider for this upload (to
    its step): the level was then read from the photo, not known, and the restore treats it as ``sigma=auto``."""
    from restore.tasks import TaskError

    try:
        sigma = task.noise_sigma
    except TaskError:
        return False
    if not sigma or task.poisson_gain:
        return False
    value, _ = estimate_noise_level(image, fit, region)
    return value is not None and abs(255 * sigma - value) < 0.026


def _restorer(solver: str, prior: str | None, options: dict, quant: str = "auto"):
    from restore import Restorer

    if "prior" in options:
        raise UserError("choose the prior in the Prior list, not in the solver options")
    key = (solver, prior, quant, json.dumps(options, sort_keys=True))
    if key not in _restorers:
        _restorers[key] = Restorer(solver, prior or None, quant=quant, **options)
    return _restorers[key]


# each browser session's last estimate and its at-risk overlay (for the overlay toggle), newest last; a gr.State would
# do it too, but makes Gradio hold a heartbeat connection open per page
_VIEWS: dict = {}
MAX_SESSIONS = 256


def _remember_views(request, views: dict) -> None:
    _remember(_VIEWS, getattr(request, "session_hash", None), views)


def _remember(store: dict, key, value) -> None:
    """``store[key] = value``, newest last, keeping the newest MAX_SESSIONS (keys without a session are skipped)."""
    if key is None or (isinstance(key, tuple) and key[0] is None):
        return
    store.pop(key, None)
    store[key] = value
    while len(store) > MAX_SESSIONS:
        store.pop(next(iter(store)))


def _session_root(session: str | None) -> Path:
    """The folder of one browser session's files (``session``: Gradio's session hash; None: a direct Python call).
    A session may read back only files under its own folder (``_check_server_paths``)."""
    if not session:
        return OUT_ROOT / "local"
    import hashlib

    return OUT_ROOT / f"s-{hashlib.sha256(str(session).encode()).hexdigest()[:32]}"  # any string, one safe name


def _fresh_dir(session: str | None = None) -> Path:
    """A new folder for one request's files, inside its session's folder; files of finished requests go after
    OUTPUT_TTL_S, empty session folders with them."""
    OUT_ROOT.mkdir(parents=True, exist_ok=True)
    now = time.time()
    for root in OUT_ROOT.iterdir():
        for old in (root.iterdir() if root.is_dir() else []):
            if now - old.stat().st_mtime > OUTPUT_TTL_S:
                shutil.rmtree(old, ignore_errors=True)
        if root.is_dir() and not any(root.iterdir()) and now - root.stat().st_mtime > OUTPUT_TTL_S:
            shutil.rmtree(root, ignore_errors=True)
    own = _session_root(session)
    own.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(dir=own))


def _to_uint8(t: torch.Tensor) -> np.ndarray:
    from restore.io import to_numpy_image

    return np.round(to_numpy_image(t) * 255).astype(np.uint8)


def _metrics_row(name: str, meta: dict) -> list:
    m = meta.get("metrics", {})
    r = lambda v, d=3: None if v is None else round(float(v), d)  # noqa: E731
    return [name, r(m.get("psnr"), 2), r(m.get("ssim")), r(m.get("coverage_90")), r(m.get("std_error_spearman")),
            r(m.get("mean_std"), 4), r(meta["timings"]["total_s"], 1)]


def _check_server_paths(t, session: str | None = None) -> None:
    """A task spec reaching the app (e.g. /compare's spec string from a script) may name a file only among the
    session's own outputs (a mask drawn in its page); anything else would read the server's files or another
    session's. Raises UserError."""
    path = dict(t.params).get("path")
    if path is None:
        return
    root = _session_root(session).resolve()
    if root not in Path(path).resolve().parents:
        raise UserError(f"the app does not read files named in a task spec ({t.kind}:{t.variant}:path=...); draw the "
                        "mask in the page, or use the `restore` command line for a mask or kernel file")


def _countdown(progress, estimate_s: float | None):
    """A solver progress callback that shows the time left: from the estimate at first, then from the pace so far."""
    if progress is None:
        return None
    import time

    from restore.estimate import describe

    start = time.perf_counter()

    def cb(fraction: float, message: str):
        elapsed = time.perf_counter() - start
        if fraction > 0.1:
            left = elapsed / fraction - elapsed
        else:
            left = None if estimate_s is None else max(estimate_s - elapsed, 0.0)
        progress(fraction, desc=message if left is None else f"{message} ({describe(left)} left)")

    return cb


def restore_image(image, simulate: bool, task: str, solver: str, prior: str | None, samples: int, seed: int,
                  ground_truth=None, options: str = "", progress=None, quant: str = "auto", fit: str | None = None,
                  region=None, session: str | None = None) -> dict:
    """Run one restoration for the app. ``image``: HxW[xC] uint8 array; ``task``: spec string; ``fit``, ``region``:
    what to do with an image above MAX_UI_PIXELS (plan_fit; None: refuse it). Returns a dict of outputs (paths and
    arrays) for the components; raises UserError with a readable message. ``session``: the browser session, whose
    folder holds the outputs (and is the only place a spec's file may be read from)."""
    from restore import io, tasks
    from restore.solvers.base import SolverError

    if fit is None:
        arr, plan = _check_image(image, "an image"), None
    else:
        if image is None:
            raise UserError("upload an image first")
        plan = plan_fit(np.asarray(image).shape, fit, region)
        arr = np.asarray(image) if plan.identity else plan.apply(image)
    try:
        opts = json.loads(options) if options and options.strip() else {}
        if not isinstance(opts, dict):
            raise ValueError
    except ValueError:
        raise UserError('solver options must be a JSON object, e.g. {"iterations": 300}') from None
    out_dir = _fresh_dir(session)
    try:
        t = tasks.parse(task)
        _check_server_paths(t, session)
        r = _restorer(solver, prior, opts, quant)
        x = io.to_tensor(arr)
        truth = None
        if simulate:
            if t.kind == "sr":
                h, w = x.shape[-2:]
                x = x[..., : h - h % t.scale, : w - w % t.scale]
            truth = x
            y = r.simulate(x, t, seed=int(seed))
        else:
            y = x
            if ground_truth is not None:
                truth = io.to_tensor(_fitted_truth(ground_truth, plan))
        cb = _countdown(progress, r.estimate_seconds(t, t.x_shape(tuple(y.shape)), int(samples)))
        post = r(y, t, samples=int(samples), seed=int(seed), ground_truth=truth, progress=cb,
                 noise_estimated=not simulate and slider_holds_estimate(t, image, fit, region))
    except (ValueError, FileNotFoundError, SolverError) as exc:
        raise UserError(str(exc)) from None
    post.save(out_dir / "result", extras={"observation.png": y},
              truth=truth if truth is not None and truth.shape == post.mean.shape else None)
    res = out_dir / "result"
    io.write_array(res / "std.tiff", post.std[0].permute(1, 2, 0).numpy())
    from restore import viz
    from restore.batch import describe_clipping, describe_uncertainty

    at_risk = viz.save_risk_overlay(post, res / "at_risk.png")
    u = post.meta.get("uncertainty", {})
    alarm = (u.get("status") in (None, "uncalibrated") or u.get("self_check", {}).get("verdict") == "poor fit"
             or "warning" in u or "settings_warning" in post.meta)
    uncertainty = describe_uncertainty(post.meta)
    uncertainty = f"\n\n{'**' + uncertainty + '**' if alarm else uncertainty}. Regions at risk (90 % interval " \
                  f"wider than the local signal): {100 * at_risk:.1f} % of the image."
    if clipping := describe_clipping(post.meta):  # what the noisy file's values at 0 / 1 became (restore.censoring)
        uncertainty += f"\n\n{clipping[0].upper()}{clipping[1:]}."
    size_note = "" if plan is None or plan.identity else f" Image: {plan.description}."
    before = y.clamp(0, 1)
    if before.shape != post.mean.shape:  # SR: show the low-resolution input at the output size
        before = torch.nn.functional.interpolate(before, size=post.mean.shape[-2:], mode="nearest")
    return {
        "slider": (_to_uint8(before), _to_uint8(post.mean)),
        "mean": str(res / "mean.png"),
        "gallery": [(str(p), f"sample {i + 1}") for i, p in enumerate(sorted((res / "samples").glob("*.png")))],
        "std": str(res / "std.png"),
        "error_vs_std": str(res / "error_vs_std.png") if (res / "error_vs_std.png").exists() else None,
        "metrics": [_metrics_row(solver, post.meta)],
        "info": (f"**{solver}** on `{post.meta['task']}` with prior `{post.meta['prior']}`"
                 f"{'' if quant in (None, 'none', 'auto') else f' ({quant})'}, seed {post.meta['seed']}, "
                 f"{post.n_samples} samples, {post.meta['timings']['total_s']:.1f} s.{size_note} Std colour scale: "
                 f"{json.loads((res / 'std_scale.json').read_text())['vmax']:.4f} at the top (see std_scale.json)."
                 + uncertainty),
        "at_risk": str(res / "at_risk.png"),
        "files": [str(res / f) for f in ("mean.png", "std.png", "std.npy", "std.tiff", "meta.json")],
        "posterior": post,
        "size": None if plan is None else plan.description,
    }


def _fitted_truth(truth, plan: Fit | None) -> np.ndarray:
    """The clean reference cropped/downscaled like the image it belongs to (the same size, or a whole multiple of it
    a side for super-resolution)."""
    if plan is None or plan.identity:
        return _check_image(truth, "the ground truth")
    arr = np.asarray(truth)
    (h, w), (th, tw) = plan.shape, arr.shape[:2]
    r = th // h
    if r < 1 or (th, tw) != (h * r, w * r):
        raise UserError(f"the ground truth is {tw}x{th} pixels: for a large image it must be the image's size "
                        f"({w}x{h}) or a whole multiple of it, so that the same crop or downscale applies")
    return (plan if r == 1 else plan.scaled(r)).apply(arr)


def compare_solvers(image, simulate: bool, task: str, solvers: list[str], samples: int, seed: int,
                    progress=None, fit: str | None = None, region=None, session: str | None = None) -> dict:
    """The same input through several solvers (default priors): means, std maps on one colour scale, metrics.
    ``fit``, ``region``: as for restore_image."""
    from restore import viz

    if not solvers:
        raise UserError("pick at least one solver to compare")
    results = {}
    for i, s in enumerate(solvers):
        cb = None
        if progress is not None:
            cb = lambda f, msg, i=i, s=s: progress((i + f) / len(solvers), desc=f"{s}: {msg}")  # noqa: E731
        results[s] = restore_image(image, simulate, task, s, None, samples, seed, progress=_Adapter(cb), fit=fit,
                                   region=region, session=session)
    first = next(iter(results.values()))
    vmax = max(float(np.percentile(r["posterior"].std.mean(1).numpy(), 99.5)) for r in results.values())
    out_dir = _fresh_dir(session)
    stds = []
    for s, r in results.items():
        p = out_dir / f"std_{s}.png"
        viz.save_std_heatmap(r["posterior"].std, p, vmax=vmax)
        stds.append((str(p), s))
    return {"means": [(r["mean"], s) for s, r in results.items()], "stds": stds,
            "metrics": [row for r in results.values() for row in r["metrics"]],
            "info": f"Task `{first['posterior'].meta['task']}`. Std maps share one colour scale: 0 to {vmax:.4f}."
                    + (f" Image: {first['size']}." if first["size"] and "->" in first["size"] else "")}


_SOLVE_THREAD = None


def _submit_to_solve_thread(fn, *args, **kwargs):
    """A future for ``fn(*args, **kwargs)`` on the one thread that runs every solve and every model load. Gradio calls
    handlers from a pool of up to 40 worker threads, and each thread torch computes on keeps its own allocator arena
    and thread pool: measured, RSS grew by about 150 MiB over the first few threads and kept creeping; on one thread it
    stays flat (benchmarks/app_load.py). One thread also keeps a quantising load (a torch.fx trace, which patches every
    module's call process-wide: restore.quant.FX_TRACE_LOCK) from breaking a solve running beside it. The context
    (gr.Progress) goes along."""
    global _SOLVE_THREAD
    import contextvars
    from concurrent.futures import ThreadPoolExecutor

    if _SOLVE_THREAD is None:
        _SOLVE_THREAD = ThreadPoolExecutor(1, thread_name_prefix="restore-solve")
    return _SOLVE_THREAD.submit(contextvars.copy_context().run, fn, *args, **kwargs)


def _on_solve_thread(fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` on the solve thread (:func:`_submit_to_solve_thread`), waiting for its result."""
    return _submit_to_solve_thread(fn, *args, **kwargs).result()


class _Adapter:
    """Lets compare_solvers pass a (fraction, message) callback where restore_image expects gr.Progress."""

    def __init__(self, cb):
        self.cb = cb

    def __call__(self, fraction, desc=""):
        if self.cb:
            self.cb(fraction, desc)


# ---- the Blocks app -------------------------------------------------------------------------------------------

def controls_spec(image, kind: str, noise255: float, blur_sigma: float = 2.0, motion_size: int = 19,
                  sr_factor: int = 4, inpaint_mode: str = "random pixels", missing: float = 0.5, box_size: float = 0.3,
                  editor=None, fit: str | None = None, region=None, session: str | None = None) -> str:
    """task_spec for the values of the task controls (the same in both tabs); a mask drawn on the uploaded image is
    written first, cropped or downscaled as the image will be (``fit``, ``region``: see plan_fit)."""
    mask_path = None
    if kind == "inpaint" and inpaint_mode == "draw" and image is not None:
        shape = np.asarray(image).shape[:2]
        plan = None if fit is None else plan_fit(shape, fit, region)
        mask_path = mask_from_editor(editor, shape, _fresh_dir(session), plan)
    return task_spec(kind, noise255, blur_sigma, motion_size, sr_factor, inpaint_mode, missing, box_size, mask_path)


# how long the time estimate waits for the solve thread (busy with a run, or loading a prior) before saying so
ESTIMATE_WAIT_S = 20.0


def recommended_note(spec: str) -> str:
    """The Markdown line under the solver choice: which solver the task presets, and why (restore.recommend.WHY)."""
    from restore.recommend import recommended_reason

    name, _, why = recommended_reason(spec).partition(": ")
    return f"Recommended for this task: **{name}**" + (f", {why}" if why else "")


def estimate_text(image, simulate: bool, spec: str, solver: str, prior: str | None, samples: int, options: str = "",
                  quant: str = "auto", fit: str | None = None, region=None) -> str:
    """'Estimated time here: about 8 s (...)' for a run with these settings (restore.estimate), '' without an image
    or when the settings cannot run (the run itself then says why)."""
    from restore import estimate, tasks

    if image is None:
        return ""
    try:
        shape = np.asarray(image).shape[:2]
        if fit is not None:
            shape = plan_fit(shape, fit, region).size
        t = tasks.parse(spec)
        opts = json.loads(options) if options and options.strip() else {}
        h, w = shape
        if not simulate:  # the upload is the observation: SR restores it factor times larger
            h, w = h * t.scale, w * t.scale

        def seconds_here():  # loads (maybe quantises) the prior and times a forward: torch work, so on the solve thread
            r = _restorer(solver, prior, opts if isinstance(opts, dict) else {}, quant)
            return r.estimate_seconds(t, (1, 3, h, w), int(samples))

        future = _submit_to_solve_thread(seconds_here)
    except Exception:  # noqa: BLE001 - an estimate must never break the page; the run reports real errors
        return ""
    try:
        seconds = future.result(timeout=ESTIMATE_WAIT_S)
    except concurrent.futures.TimeoutError:  # a run holds the solve thread; the estimate still loads the prior then
        return "Estimated time here: shown once the run in progress has finished (change a setting to refresh)"
    except Exception:  # noqa: BLE001
        return ""
    return (f"Estimated time here: **{estimate.describe(seconds)}** ({solver}, {w}x{h} restored, {int(samples)} "
            "samples; the progress bar counts down)")


# the uploaded image's size per browser session and tab, for the size line under the upload (without the pixels)
_SHAPES: dict = {}


def _task_controls(gr, prefix: str = ""):
    """The task's controls, built by this one function for both tabs (elem_ids get ``prefix``): kind, noise and its
    estimate line, each task's parameters, the mask editor. ``inputs``: the values controls_spec takes, in order."""
    from types import SimpleNamespace

    c = SimpleNamespace()
    c.kind = gr.Dropdown(TASK_KINDS, value="denoise", label="Task", elem_id=f"{prefix}task")
    c.noise = gr.Slider(0, NOISE_SLIDER_MAX, value=25, step=0.05, label="Noise std (on the 0-255 scale)",
                        elem_id=f"{prefix}noise")
    c.noise_note = gr.Markdown(elem_id=f"{prefix}noise_estimate")
    c.blur = gr.Slider(0.5, 5, value=2, step=0.1, label="Gaussian blur sigma (pixels)", visible=False,
                       elem_id=f"{prefix}blur")
    c.motion = gr.Slider(5, 41, value=19, step=2, label="Motion kernel size", visible=False, elem_id=f"{prefix}motion")
    c.factor = gr.Radio([2, 4], value=4, label="SR factor", visible=False, elem_id=f"{prefix}factor")
    c.mode = gr.Radio(["random pixels", "centred box", "draw"], value="random pixels", label="Missing region",
                      visible=False, elem_id=f"{prefix}mode")
    c.missing = gr.Slider(0.1, 0.9, value=0.5, step=0.05, label="Missing fraction", visible=False,
                          elem_id=f"{prefix}missing")
    c.box = gr.Slider(0.1, 0.8, value=0.3, step=0.05, label="Box size", visible=False, elem_id=f"{prefix}box")
    c.editor = gr.ImageEditor(label="Paint the region to fill", type="numpy", layers=False, transforms=(),
                              visible=False, elem_id=f"{prefix}editor",
                              brush=gr.Brush(colors=["#ffffff"], color_mode="fixed", default_size=8))
    c.inputs = [c.kind, c.noise, c.blur, c.motion, c.factor, c.mode, c.missing, c.box, c.editor]
    return c


def _fit_controls(gr, prefix: str = ""):
    """What to do with an image above MAX_UI_PIXELS, built by this one function for both tabs: the size line (always),
    the choice and the region's x, y, width, height (shown for a large upload). ``inputs``: choice, x, y, w, h."""
    from types import SimpleNamespace

    f = SimpleNamespace()
    f.note = gr.Markdown(elem_id=f"{prefix}fit_note")
    f.mode = gr.Radio(FIT_MODES, value=FIT_DEFAULT, visible=False, elem_id=f"{prefix}fit",
                      label=f"The image is above {MAX_UI_PIXELS / 1e6:.1f} megapixels: restore")
    with gr.Row():
        f.region = [gr.Number(0, precision=0, minimum=0, label=label, visible=False, elem_id=f"{prefix}region_{k}")
                    for k, label in (("x", "x (left edge)"), ("y", "y (top edge)"), ("w", "width"),
                                     ("h", "height"))]
    f.inputs = [f.mode, *f.region]
    return f


def build_demo():
    import gradio as gr

    from restore import tasks
    from restore.api import DEFAULT_SOLVER, recommended_solver
    from restore.priors import registry
    from restore.solvers import base

    solver_names = base.names()
    kinds = {n: base.solver_class(n) for n in solver_names}

    def priors_for(solver, kind_=None, factor_=4):
        """The solver's priors, the one it picks for the task selected (VBLE: its CAE rate per task) chosen."""
        cls = kinds[solver]
        names = [p for p in registry.available() if registry.PRIORS[p].kind in cls.prior_kinds]
        pick = base.get(solver).prior_for(tasks.parse(task_spec(kind_, 2.55, sr_factor=factor_)).family
                                          if kind_ else None)
        return gr.Dropdown(choices=names, value=pick if pick in names else None)

    def gr_error(fn):
        @functools.wraps(fn)  # Gradio reads the signature for its special (progress, request) parameters
        def wrapped(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except UserError as exc:
                raise gr.Error(str(exc)) from None
        return wrapped

    def with_request(fn):
        # Gradio finds the request parameter by its annotation, which `from __future__ import annotations` leaves as
        # a string naming this function's local `gr`: give it the class
        getattr(fn, "__wrapped__", fn).__annotations__["request"] = gr.Request
        return fn

    private = {"queue": False, "api_visibility": "private"}

    def wire_inputs(prefix, inp, simulate, c, f):
        """The same behaviour for both tabs' image, task and large-image controls."""
        def toggle(k, m, im):
            return (gr.Slider(visible=k.startswith("deblur (g")), gr.Slider(visible=k == "deblur (motion)"),
                    gr.Radio(visible=k == "super-resolution"), gr.Radio(visible=k == "inpaint"),
                    gr.Slider(visible=k == "inpaint" and m == "random pixels"),
                    gr.Slider(visible=k == "inpaint" and m == "centred box"),
                    gr.ImageEditor(visible=k == "inpaint" and m == "draw",
                                   value=im if k == "inpaint" and m == "draw" else None))

        for trigger in (c.kind.change, c.mode.change):
            trigger(toggle, [c.kind, c.mode, inp], [c.blur, c.motion, c.factor, c.mode, c.missing, c.box, c.editor],
                    **private)
        # the usual noise level of each task (the benchmarks' settings): 25/255 for denoising, 2.55/255 otherwise
        c.kind.change(lambda k: gr.Slider(value=25 if k == "denoise" else 2.55), c.kind, c.noise, **private)

        def session_shape(request):
            return _SHAPES.get((getattr(request, "session_hash", None), prefix))

        @with_request
        def uploaded(image, fit_, simulate_, request: gr.Request):
            """A new upload: remember its size; for a large one show the choice, the region preset to the centre
            crop, and the size that will be restored."""
            shape = None if image is None else tuple(np.asarray(image).shape[:2])
            _remember(_SHAPES, (getattr(request, "session_hash", None), prefix), shape)
            big = shape is not None and shape[0] * shape[1] > MAX_UI_PIXELS
            if big:
                t, left, h, w = plan_fit(shape, "centre crop").box
                region = [gr.Number(value=v, visible=fit_ == "region") for v in (left, t, w, h)]
            else:
                region = [gr.Number(visible=False)] * 4
            region_ = (left, t, w, h) if big else None
            return gr.Radio(visible=big), *region, fit_note(shape, fit_, region_, simulate_)

        @with_request
        def fit_changed(fit_, x, y, w, h, simulate_, request: gr.Request):
            shape = session_shape(request)
            big = shape is not None and shape[0] * shape[1] > MAX_UI_PIXELS
            return (*[gr.Number(visible=big and fit_ == "region")] * 4,
                    fit_note(shape, fit_, (x, y, w, h), simulate_))

        @with_request
        def region_changed(fit_, x, y, w, h, simulate_, request: gr.Request):
            return fit_note(session_shape(request), fit_, (x, y, w, h), simulate_)

        def estimated_noise(image, simulate_, fit_, x, y, w, h):
            """An uploaded noisy photo (not to be degraded first): its estimated noise level on the slider."""
            if image is None or simulate_:
                return gr.skip(), ""
            value, note = estimate_noise_level(image, fit_, (x, y, w, h))
            return (gr.skip() if value is None else gr.Slider(value=value)), note

        fit_in = [f.mode, *f.region, simulate]
        noise_in = [inp, simulate, *f.inputs]
        inp.change(uploaded, [inp, f.mode, simulate], [f.mode, *f.region, f.note], **private).then(
            estimated_noise, noise_in, [c.noise, c.noise_note], **private)
        f.mode.change(fit_changed, fit_in, [*f.region, f.note], **private).then(
            estimated_noise, noise_in, [c.noise, c.noise_note], **private)
        for number in f.region:
            number.change(region_changed, fit_in, f.note, **private)
        simulate.change(region_changed, fit_in, f.note, **private).then(
            estimated_noise, noise_in, [c.noise, c.noise_note], **private)

    with gr.Blocks(title="restore: Bayesian image restoration", delete_cache=(OUTPUT_TTL_S, OUTPUT_TTL_S)) as demo:
        gr.Markdown("# restore\nRestore a degraded image and see **how sure** the result is: posterior samples, "
                    "a pixel-wise standard-deviation map and, with a clean reference, calibration metrics.")
        with gr.Tab("Restore"):
            with gr.Row():
                with gr.Column(scale=1):
                    inp = gr.Image(label="Image", type="numpy", image_mode="RGB", sources=["upload", "clipboard"],
                                   format="png", elem_id="inp")
                    fc = _fit_controls(gr)
                    simulate = gr.Checkbox(value=True, label="The image is clean: degrade it with the task first",
                                           elem_id="simulate")
                    tc = _task_controls(gr)
                    solver = gr.Radio(solver_names, value=DEFAULT_SOLVER, label="Solver (preset: the recommended one "
                                      "for the task)", elem_id="solver")
                    solver_note = gr.Markdown(recommended_note(task_spec("denoise", 25)), elem_id="solver_note")
                    prior = gr.Dropdown(choices=registry.available(),
                                        value=kinds[DEFAULT_SOLVER].default_prior,
                                        label="Prior", elem_id="prior")
                    samples = gr.Slider(1, 32, value=8, step=1, label="Posterior samples", elem_id="samples")
                    seed = gr.Number(value=0, precision=0, label="Seed", elem_id="seed")
                    with gr.Accordion("Ground truth (optional, for metrics)", open=False):
                        truth = gr.Image(label="Clean reference", type="numpy", image_mode="RGB", format="png",
                                         elem_id="truth")
                    with gr.Accordion("Advanced solver options", open=False):
                        options = gr.Textbox(label='JSON, e.g. {"iterations": 300}', value="", elem_id="options")
                        quant = gr.Dropdown(["auto", "none", "int8", "w8a8", "w4a8"], value="auto", elem_id="quant",
                                            label="Quantised backbone (auto: the solver's choice, int8 for RED-Diff; "
                                                  "none: float; int8: real kernels, ~2.8x faster denoiser; "
                                                  "w8a8/w4a8: simulated)")
                    run = gr.Button("Restore", variant="primary", elem_id="run")
                    eta = gr.Markdown(elem_id="eta")
                with gr.Column(scale=2):
                    info = gr.Markdown(elem_id="info")
                    slider = gr.ImageSlider(label="Before / after", type="numpy", format="png", elem_id="slider")
                    with gr.Row():
                        mean = gr.Image(label="MMSE estimate", format="png", elem_id="mean", height=340,
                                        buttons=["download", "fullscreen"])
                        std = gr.Image(label="Uncertainty (posterior std)", format="png", elem_id="std", height=340)
                    show_risk = gr.Checkbox(value=False, label="Mark regions at risk on the estimate (90 % interval "
                                            "wider than the local signal: likely invented detail)", elem_id="risk")
                    err = gr.Image(label="|error| beside std (needs a clean reference)", format="png", elem_id="err")
                    gallery = gr.Gallery(label="Posterior samples", columns=4, height=260, format="png",
                                         elem_id="gallery")
                    metrics = gr.Dataframe(headers=METRIC_COLUMNS, label="Metrics", elem_id="metrics")
                    files = gr.File(label="Downloads (PNG, std as .npy/.tiff, meta.json)", file_count="multiple",
                                    elem_id="files")

            wire_inputs("", inp, simulate, tc, fc)
            # the recommended solver per task (restore.api.RECOMMENDED): PMRF, RED-Diff for x4 SR and inpainting
            # (PMRF at x2, so the SR factor presets it too); the prior list changes in the same event as the solver,
            # so that the estimate after it sends a prior that is in the list (Gradio refuses a value outside its
            # dropdown's choices)
            def preset_solver(kind_, factor_):
                spec = task_spec(kind_, 2.55, sr_factor=factor_)
                name = recommended_solver(spec)
                return gr.Radio(value=name), priors_for(name, kind_, factor_), recommended_note(spec)

            preset_out = [solver, prior, solver_note]
            kind_changed = tc.kind.change(preset_solver, [tc.kind, tc.factor], preset_out, **private)
            factor_changed = tc.factor.change(preset_solver, [tc.kind, tc.factor], preset_out, **private)
            solver_changed = solver.change(priors_for, [solver, tc.kind, tc.factor], prior, **private)
            demo.load(priors_for, [solver, tc.kind, tc.factor], prior, **private)

            # the parameters after quant_ are newer than the API's first version: their defaults (the components'
            # initial values) keep older gradio_client calls working
            @with_request
            @gr_error
            def on_run(image, simulate_, kind_, noise_, blur_, motion_, factor_, mode_, missing_, box_, editor_,
                       solver_, prior_, samples_, seed_, truth_, options_, quant_, fit_=FIT_DEFAULT, x_=0, y_=0, w_=0,
                       h_=0, request: gr.Request = None, progress=gr.Progress()):
                region, session = (x_, y_, w_, h_), getattr(request, "session_hash", None)
                spec = controls_spec(image, kind_, noise_, blur_, motion_, factor_, mode_, missing_, box_, editor_,
                                     fit_, region, session)
                r = _on_solve_thread(restore_image, image, simulate_, spec, solver_, prior_, samples_, seed_,
                                     truth_, options_, progress=progress, quant=quant_, fit=fit_, region=region,
                                     session=session)
                _remember_views(request, {"mean": r["mean"], "at_risk": r["at_risk"]})
                return (r["info"], r["slider"], r["mean"], r["std"], r["error_vs_std"], r["gallery"], r["metrics"],
                        r["files"])

            @with_request
            def shown_estimate(at_risk, request: gr.Request):
                views_ = _VIEWS.get(getattr(request, "session_hash", None), {})
                return views_.get("at_risk" if at_risk else "mean", gr.skip())

            def on_estimate(image, simulate_, kind_, noise_, blur_, motion_, factor_, mode_, missing_, box_, editor_,
                            solver_, prior_, samples_, options_, quant_, fit_=FIT_DEFAULT, x_=0, y_=0, w_=0, h_=0):
                spec = task_spec(kind_, noise_, blur_, motion_, factor_, mode_ if mode_ != "draw" else "random pixels",
                                 missing_, box_)  # a drawn mask costs the same as a random one
                return estimate_text(image, simulate_, spec, solver_, prior_, samples_, options_, quant_, fit_,
                                     (x_, y_, w_, h_))

            eta_inputs = [inp, simulate, *tc.inputs, solver, prior, samples, options, quant, *fc.inputs]
            for comp in (inp, simulate, prior, samples, options, quant, *fc.inputs):
                comp.change(on_estimate, eta_inputs, eta, **private)
            # after the prior list has followed the solver: an estimate fired beside it would send the former solver's
            # prior against the new list, which Gradio refuses
            for changed in (kind_changed, factor_changed, solver_changed):
                changed.then(on_estimate, eta_inputs, eta, **private)

            run.click(on_run, [inp, simulate, *tc.inputs, solver, prior, samples, seed, truth, options, quant,
                               *fc.inputs],
                      [info, slider, mean, std, err, gallery, metrics, files], api_name="restore",
                      concurrency_limit=1, concurrency_id="solve", time_limit=1800
                      ).then(shown_estimate, show_risk, mean, **private)
            show_risk.change(shown_estimate, show_risk, mean, **private)
            if EXAMPLES.is_dir():
                gr.Examples([[str(p)] for p in sorted(EXAMPLES.glob("*.png"))], inputs=[inp], label="Examples")

        with gr.Tab("Compare solvers"):
            with gr.Row():
                with gr.Column(scale=1):
                    c_inp = gr.Image(label="Image", type="numpy", image_mode="RGB", sources=["upload", "clipboard"],
                                     format="png", elem_id="c_inp")
                    c_fc = _fit_controls(gr, "c_")
                    c_sim = gr.Checkbox(value=True, label="The image is clean: degrade it with the task first",
                                        elem_id="c_simulate")
                    c_tc = _task_controls(gr, "c_")
                    # for scripts only (the /compare endpoint): a task spec string that overrides the controls
                    c_spec = gr.Textbox(value="", visible=False, elem_id="c_spec",
                                        label="Task spec (API only; empty: the task controls)")
                    c_solvers = gr.CheckboxGroup(solver_names, value=solver_names[:2], label="Solvers",
                                                 elem_id="c_solvers")
                    c_samples = gr.Slider(1, 16, value=4, step=1, label="Posterior samples", elem_id="c_samples")
                    c_seed = gr.Number(value=0, precision=0, label="Seed", elem_id="c_seed")
                    c_run = gr.Button("Compare", variant="primary", elem_id="c_run")
                with gr.Column(scale=2):
                    c_info = gr.Markdown(elem_id="c_info")
                    c_means = gr.Gallery(label="MMSE estimates", columns=3, format="png", elem_id="c_means")
                    c_stds = gr.Gallery(label="Posterior std (one colour scale)", columns=3, format="png",
                                        elem_id="c_stds")
                    c_metrics = gr.Dataframe(headers=METRIC_COLUMNS, label="Metrics", elem_id="c_metrics")

            wire_inputs("c_", c_inp, c_sim, c_tc, c_fc)

            # /compare's first six parameters are those of its first version (a spec string third, "" in the UI)
            @with_request
            @gr_error
            def on_compare(image, sim, spec, solvers_, samples_, seed_, kind_="denoise", noise_=25, blur_=2,
                           motion_=19, factor_=4, mode_="random pixels", missing_=0.5, box_=0.3, editor_=None,
                           fit_=FIT_DEFAULT, x_=0, y_=0, w_=0, h_=0, request: gr.Request = None,
                           progress=gr.Progress()):
                region, session = (x_, y_, w_, h_), getattr(request, "session_hash", None)
                if not (spec or "").strip():
                    spec = controls_spec(image, kind_, noise_, blur_, motion_, factor_, mode_, missing_, box_,
                                         editor_, fit_, region, session)
                r = _on_solve_thread(compare_solvers, image, sim, spec, solvers_, samples_, seed_,
                                     progress=progress, fit=fit_, region=region, session=session)
                return r["info"], r["means"], r["stds"], r["metrics"]

            c_run.click(on_compare, [c_inp, c_sim, c_spec, c_solvers, c_samples, c_seed, *c_tc.inputs, *c_fc.inputs],
                        [c_info, c_means, c_stds, c_metrics], api_name="compare", concurrency_limit=1,
                        concurrency_id="solve", time_limit=3600)
    return demo


# small results (a 64 px crop) fill their panel like the std heat-map beside them, pixels kept sharp, not smoothed
CSS = "#mean img, #c_means .preview img {width: 100%; height: 100%; object-fit: contain; image-rendering: pixelated;}"


def launch(host: str = "127.0.0.1", port: int | None = None, share: bool = False, block: bool = True,
           auth: list[tuple[str, str]] | None = None, queue_size: int = QUEUE_SIZE):
    """Start the app (at most ``queue_size`` jobs waiting, one solve at a time across both tabs; a request beyond
    that is refused at once with "queue is full" rather than held); ``auth``: (user, password) pairs that may log in
    (``restore ui`` requires them for an exposed host), None for none."""
    demo = build_demo()
    demo.queue(max_size=queue_size, default_concurrency_limit=1).launch(
        server_name=host, server_port=port, share=share, max_file_size=MAX_UPLOAD, footer_links=["api"],
        show_error=True, prevent_thread_lock=not block, quiet=not block, css=CSS, auth=auth)
    return demo


if __name__ == "__main__":
    launch()
