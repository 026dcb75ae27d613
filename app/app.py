"""Gradio web app: `restore ui` (or `python -m app.app`). No solver logic here: everything goes through `restore`.

Offline and safe by default: analytics off, binds 127.0.0.1, PNG outputs (Gradio's default webp is lossy), upload
and image-size limits with clear messages, one solve at a time through a bounded queue, temporary outputs deleted
after an hour.
"""

from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported: no outbound calls
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import functools  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

MAX_UI_PIXELS = 1024 * 1024  # per image in the app; the CLI takes up to restore.io.MAX_PIXELS
MAX_UPLOAD = "20mb"
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


def mask_from_editor(editor, shape: tuple[int, int], out_dir: Path) -> str | None:
    """Write the drawn strokes of an ImageEditor value as a mask PNG (white = observed); None if nothing drawn."""
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

    path = out_dir / "mask.png"
    write_image(path, (~painted).astype(np.float32))
    return str(path)


def _check_image(image, what: str) -> np.ndarray:
    if image is None:
        raise UserError(f"upload {what} first")
    arr = np.asarray(image)
    if arr.ndim < 2 or arr.shape[0] * arr.shape[1] > MAX_UI_PIXELS:
        raise UserError(f"{what} is {arr.shape[1]}x{arr.shape[0]} pixels; the app takes at most "
                        f"{MAX_UI_PIXELS / 1e6:.1f} megapixels (use the `restore` command line for larger images)")
    return arr


NOISE_SLIDER_MAX = 75  # the noise slider's range, /255


def estimate_noise_level(image) -> tuple[float | None, str]:
    """The noise std of an uploaded image for the noise slider (on the 0-255 scale, rounded to its step and clipped
    to its range; None when there is no estimate) and a Markdown line saying what was estimated and how."""
    from restore import io
    from restore.noise import estimate_noise

    try:
        est = estimate_noise(io.to_tensor(_check_image(image, "an image")))
    except ValueError as exc:  # UserError too: no image, too large, too small to estimate
        return None, f"noise std not estimated: {exc}"
    value = min(round(round(est.sigma255 / 0.05) * 0.05, 2), NOISE_SLIDER_MAX)  # the slider's step
    beyond = f", above the slider's {NOISE_SLIDER_MAX}" if est.sigma255 > NOISE_SLIDER_MAX else ""
    return value, f"estimated noise std: {est.sigma255:.1f} /255 ({est.method}{beyond})"


def _restorer(solver: str, prior: str | None, options: dict, quant: str = "none"):
    from restore import Restorer

    key = (solver, prior, quant, json.dumps(options, sort_keys=True))
    if key not in _restorers:
        _restorers[key] = Restorer(solver, prior or None, quant=quant, **options)
    return _restorers[key]


# each browser session's last estimate and its at-risk overlay (for the overlay toggle), newest last; a gr.State would
# do it too, but makes Gradio hold a heartbeat connection open per page
_VIEWS: dict = {}
MAX_SESSIONS = 256


def _remember_views(request, views: dict) -> None:
    key = getattr(request, "session_hash", None)
    if key is None:
        return
    _VIEWS.pop(key, None)
    _VIEWS[key] = views
    while len(_VIEWS) > MAX_SESSIONS:
        _VIEWS.pop(next(iter(_VIEWS)))


def _fresh_dir() -> Path:
    OUT_ROOT.mkdir(parents=True, exist_ok=True)
    now = time.time()
    for old in OUT_ROOT.iterdir():  # temp files of finished requests go after an hour
        if now - old.stat().st_mtime > OUTPUT_TTL_S:
            shutil.rmtree(old, ignore_errors=True)
    return Path(tempfile.mkdtemp(dir=OUT_ROOT))


def _to_uint8(t: torch.Tensor) -> np.ndarray:
    from restore.io import to_numpy_image

    return np.round(to_numpy_image(t) * 255).astype(np.uint8)


def _metrics_row(name: str, meta: dict) -> list:
    m = meta.get("metrics", {})
    r = lambda v, d=3: None if v is None else round(float(v), d)  # noqa: E731
    return [name, r(m.get("psnr"), 2), r(m.get("ssim")), r(m.get("coverage_90")), r(m.get("std_error_spearman")),
            r(m.get("mean_std"), 4), r(meta["timings"]["total_s"], 1)]


def restore_image(image, simulate: bool, task: str, solver: str, prior: str | None, samples: int, seed: int,
                  ground_truth=None, options: str = "", progress=None, quant: str = "none") -> dict:
    """Run one restoration for the app. ``image``: HxW[xC] uint8 array; ``task``: spec string. Returns a dict of
    outputs (paths and arrays) for the components; raises UserError with a readable message."""
    from restore import io, tasks
    from restore.solvers.base import SolverError

    arr = _check_image(image, "an image")
    try:
        opts = json.loads(options) if options and options.strip() else {}
        if not isinstance(opts, dict):
            raise ValueError
    except ValueError:
        raise UserError('solver options must be a JSON object, e.g. {"iterations": 300}') from None
    out_dir = _fresh_dir()
    try:
        t = tasks.parse(task)
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
                truth = io.to_tensor(_check_image(ground_truth, "the ground truth"))
        cb = (lambda f, msg: progress(f, desc=msg)) if progress is not None else None
        post = r(y, t, samples=int(samples), seed=int(seed), ground_truth=truth, progress=cb)
    except (ValueError, FileNotFoundError, SolverError) as exc:
        raise UserError(str(exc)) from None
    post.save(out_dir / "result", extras={"observation.png": y},
              truth=truth if truth is not None and truth.shape == post.mean.shape else None)
    res = out_dir / "result"
    io.write_array(res / "std.tiff", post.std[0].permute(1, 2, 0).numpy())
    from restore import viz
    from restore.batch import describe_uncertainty

    at_risk = viz.save_risk_overlay(post, res / "at_risk.png")
    u = post.meta.get("uncertainty", {})
    alarm = (u.get("status") in (None, "uncalibrated") or u.get("self_check", {}).get("verdict") == "poor fit"
             or "warning" in u)
    uncertainty = describe_uncertainty(post.meta)
    uncertainty = f"\n\n{'**' + uncertainty + '**' if alarm else uncertainty}. Regions at risk (90 % interval " \
                  f"wider than the local signal): {100 * at_risk:.1f} % of the image."
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
                 f"{'' if quant in (None, 'none') else f' ({quant})'}, seed {post.meta['seed']}, "
                 f"{post.n_samples} samples, {post.meta['timings']['total_s']:.1f} s. Std colour scale: "
                 f"{json.loads((res / 'std_scale.json').read_text())['vmax']:.4f} at the top (see std_scale.json)."
                 + uncertainty),
        "at_risk": str(res / "at_risk.png"),
        "files": [str(res / f) for f in ("mean.png", "std.png", "std.npy", "std.tiff", "meta.json")],
        "posterior": post,
    }


def compare_solvers(image, simulate: bool, task: str, solvers: list[str], samples: int, seed: int,
                    progress=None) -> dict:
    """The same input through several solvers (default priors): means, std maps on one colour scale, metrics."""
    from restore import viz

    if not solvers:
        raise UserError("pick at least one solver to compare")
    results = {}
    for i, s in enumerate(solvers):
        cb = None
        if progress is not None:
            cb = lambda f, msg, i=i, s=s: progress((i + f) / len(solvers), desc=f"{s}: {msg}")  # noqa: E731
        results[s] = restore_image(image, simulate, task, s, None, samples, seed, progress=_Adapter(cb))
    vmax = max(float(np.percentile(r["posterior"].std.mean(1).numpy(), 99.5)) for r in results.values())
    out_dir = _fresh_dir()
    stds = []
    for s, r in results.items():
        p = out_dir / f"std_{s}.png"
        viz.save_std_heatmap(r["posterior"].std, p, vmax=vmax)
        stds.append((str(p), s))
    return {"means": [(r["mean"], s) for s, r in results.items()], "stds": stds,
            "metrics": [row for r in results.values() for row in r["metrics"]],
            "info": f"Std maps share one colour scale: 0 to {vmax:.4f}."}


class _Adapter:
    """Lets compare_solvers pass a (fraction, message) callback where restore_image expects gr.Progress."""

    def __init__(self, cb):
        self.cb = cb

    def __call__(self, fraction, desc=""):
        if self.cb:
            self.cb(fraction, desc)


# ---- the Blocks app -------------------------------------------------------------------------------------------

def build_demo():
    import gradio as gr

    from restore.api import DEFAULT_SOLVER, recommended_solver
    from restore.priors import registry
    from restore.solvers import base

    solver_names = base.names()
    kinds = {n: base.solver_class(n) for n in solver_names}

    def priors_for(solver):
        cls = kinds[solver]
        names = [p for p in registry.available() if registry.PRIORS[p].kind in cls.prior_kinds]
        return gr.Dropdown(choices=names, value=cls.default_prior if cls.default_prior in names else None)

    def gr_error(fn):
        @functools.wraps(fn)  # Gradio reads the signature for its special (progress, request) parameters
        def wrapped(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except UserError as exc:
                raise gr.Error(str(exc)) from None
        return wrapped

    with gr.Blocks(title="restore: Bayesian image restoration", delete_cache=(OUTPUT_TTL_S, OUTPUT_TTL_S)) as demo:
        gr.Markdown("# restore\nRestore a degraded image and see **how sure** the result is: posterior samples, "
                    "a pixel-wise standard-deviation map and, with a clean reference, calibration metrics.")
        with gr.Tab("Restore"):
            with gr.Row():
                with gr.Column(scale=1):
                    inp = gr.Image(label="Image", type="numpy", image_mode="RGB", sources=["upload", "clipboard"],
                                   format="png", elem_id="inp")
                    simulate = gr.Checkbox(value=True, label="The image is clean: degrade it with the task first",
                                           elem_id="simulate")
                    kind = gr.Dropdown(TASK_KINDS, value="denoise", label="Task", elem_id="task")
                    noise = gr.Slider(0, NOISE_SLIDER_MAX, value=25, step=0.05,
                                      label="Noise std (on the 0-255 scale)", elem_id="noise")
                    noise_note = gr.Markdown(elem_id="noise_estimate")
                    blur = gr.Slider(0.5, 5, value=2, step=0.1, label="Gaussian blur sigma (pixels)", visible=False)
                    motion = gr.Slider(5, 41, value=19, step=2, label="Motion kernel size", visible=False)
                    factor = gr.Radio([2, 4], value=4, label="SR factor", visible=False)
                    mode = gr.Radio(["random pixels", "centred box", "draw"], value="random pixels",
                                    label="Missing region", visible=False, elem_id="mode")
                    missing = gr.Slider(0.1, 0.9, value=0.5, step=0.05, label="Missing fraction", visible=False)
                    box = gr.Slider(0.1, 0.8, value=0.3, step=0.05, label="Box size", visible=False)
                    editor = gr.ImageEditor(label="Paint the region to fill", type="numpy", layers=False,
                                            transforms=(), visible=False, elem_id="editor",
                                            brush=gr.Brush(colors=["#ffffff"], color_mode="fixed", default_size=8))
                    solver = gr.Radio(solver_names, value=DEFAULT_SOLVER, label="Solver (preset: the recommended one "
                                      "for the task)", elem_id="solver")
                    prior = gr.Dropdown(choices=registry.available(), value=kinds[DEFAULT_SOLVER].default_prior,
                                        label="Prior", elem_id="prior")
                    samples = gr.Slider(1, 32, value=8, step=1, label="Posterior samples", elem_id="samples")
                    seed = gr.Number(value=0, precision=0, label="Seed", elem_id="seed")
                    with gr.Accordion("Ground truth (optional, for metrics)", open=False):
                        truth = gr.Image(label="Clean reference", type="numpy", image_mode="RGB", format="png",
                                         elem_id="truth")
                    with gr.Accordion("Advanced solver options", open=False):
                        options = gr.Textbox(label='JSON, e.g. {"iterations": 300}', value="", elem_id="options")
                        quant = gr.Dropdown(["none", "int8", "w8a8", "w4a8"], value="none", elem_id="quant",
                                            label="Quantised backbone (int8: real kernels, ~2.8x faster denoiser; "
                                                  "w8a8/w4a8: simulated)")
                    run = gr.Button("Restore", variant="primary", elem_id="run")
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

            def toggle(k, m, im):
                return (gr.Slider(visible=k.startswith("deblur (g")), gr.Slider(visible=k == "deblur (motion)"),
                        gr.Radio(visible=k == "super-resolution"), gr.Radio(visible=k == "inpaint"),
                        gr.Slider(visible=k == "inpaint" and m == "random pixels"),
                        gr.Slider(visible=k == "inpaint" and m == "centred box"),
                        gr.ImageEditor(visible=k == "inpaint" and m == "draw",
                                       value=im if k == "inpaint" and m == "draw" else None))

            for trigger in (kind.change, mode.change):
                trigger(toggle, [kind, mode, inp], [blur, motion, factor, mode, missing, box, editor], queue=False,
                        api_visibility="private")
            # the usual noise level of each task (the benchmarks' settings): 25/255 for denoising, 2.55/255 otherwise
            kind.change(lambda k: gr.Slider(value=25 if k == "denoise" else 2.55), kind, noise, queue=False,
                        api_visibility="private")
            # the recommended solver per task (restore.api.RECOMMENDED): VBLE for motion blur, PMRF otherwise
            kind.change(lambda k: gr.Radio(value=recommended_solver(task_spec(k, 2.55))), kind, solver, queue=False,
                        api_visibility="private")
            solver.change(priors_for, solver, prior, queue=False, api_visibility="private")
            demo.load(priors_for, solver, prior, queue=False, api_visibility="private")

            @gr_error
            def on_run(image, simulate_, kind_, noise_, blur_, motion_, factor_, mode_, missing_, box_, editor_,
                       solver_, prior_, samples_, seed_, truth_, options_, quant_, request: gr.Request,
                       progress=gr.Progress()):
                mask_path = None
                if kind_ == "inpaint" and mode_ == "draw" and image is not None:
                    mask_path = mask_from_editor(editor_, np.asarray(image).shape[:2], _fresh_dir())
                spec = task_spec(kind_, noise_, blur_, motion_, factor_, mode_, missing_, box_, mask_path)
                r = restore_image(image, simulate_, spec, solver_, prior_, samples_, seed_, truth_, options_,
                                  progress=progress, quant=quant_)
                _remember_views(request, {"mean": r["mean"], "at_risk": r["at_risk"]})
                return (r["info"], r["slider"], r["mean"], r["std"], r["error_vs_std"], r["gallery"], r["metrics"],
                        r["files"])

            def shown_estimate(at_risk, request: gr.Request):
                views_ = _VIEWS.get(getattr(request, "session_hash", None), {})
                return views_.get("at_risk" if at_risk else "mean", gr.skip())

            # Gradio finds the request parameter by its annotation, which `from __future__ import annotations` leaves
            # as a string naming this function's local `gr`: give it the class
            for fn in (shown_estimate, on_run.__wrapped__):
                fn.__annotations__["request"] = gr.Request

            run.click(on_run, [inp, simulate, kind, noise, blur, motion, factor, mode, missing, box, editor, solver,
                               prior, samples, seed, truth, options, quant],
                      [info, slider, mean, std, err, gallery, metrics, files], api_name="restore",
                      concurrency_limit=1, time_limit=1800
                      ).then(shown_estimate, show_risk, mean, queue=False, api_visibility="private")
            show_risk.change(shown_estimate, show_risk, mean, queue=False, api_visibility="private")

            def estimated_noise(image, simulate_):
                """An uploaded noisy photo (not to be degraded first): its estimated noise level on the slider."""
                if image is None or simulate_:
                    return gr.skip(), ""
                value, note = estimate_noise_level(image)
                return (gr.skip() if value is None else gr.Slider(value=value)), note

            for trigger in (inp.change, simulate.change):
                trigger(estimated_noise, [inp, simulate], [noise, noise_note], queue=False, api_visibility="private")
            if EXAMPLES.is_dir():
                gr.Examples([[str(p)] for p in sorted(EXAMPLES.glob("*.png"))], inputs=[inp], label="Examples")

        with gr.Tab("Compare solvers"):
            with gr.Row():
                with gr.Column(scale=1):
                    c_inp = gr.Image(label="Image", type="numpy", image_mode="RGB", format="png", elem_id="c_inp")
                    c_sim = gr.Checkbox(value=True, label="The image is clean: degrade it with the task first")
                    c_task = gr.Textbox(value="denoise:gaussian:sigma=0.1", label="Task spec (see `restore list`)",
                                        elem_id="c_task")
                    c_solvers = gr.CheckboxGroup(solver_names, value=solver_names[:2], label="Solvers",
                                                 elem_id="c_solvers")
                    c_samples = gr.Slider(1, 16, value=4, step=1, label="Posterior samples")
                    c_seed = gr.Number(value=0, precision=0, label="Seed")
                    c_run = gr.Button("Compare", variant="primary", elem_id="c_run")
                with gr.Column(scale=2):
                    c_info = gr.Markdown(elem_id="c_info")
                    c_means = gr.Gallery(label="MMSE estimates", columns=3, format="png", elem_id="c_means")
                    c_stds = gr.Gallery(label="Posterior std (one colour scale)", columns=3, format="png",
                                        elem_id="c_stds")
                    c_metrics = gr.Dataframe(headers=METRIC_COLUMNS, label="Metrics", elem_id="c_metrics")

            @gr_error
            def on_compare(image, sim, spec, solvers_, samples_, seed_, progress=gr.Progress()):
                r = compare_solvers(image, sim, spec, solvers_, samples_, seed_, progress=progress)
                return r["info"], r["means"], r["stds"], r["metrics"]

            c_run.click(on_compare, [c_inp, c_sim, c_task, c_solvers, c_samples, c_seed],
                        [c_info, c_means, c_stds, c_metrics], api_name="compare", concurrency_limit=1,
                        time_limit=3600)
    return demo


# small results (a 64 px crop) fill their panel like the std heat-map beside them, pixels kept sharp, not smoothed
CSS = "#mean img, #c_means .preview img {width: 100%; height: 100%; object-fit: contain; image-rendering: pixelated;}"


def launch(host: str = "127.0.0.1", port: int | None = None, share: bool = False, block: bool = True,
           auth: list[tuple[str, str]] | None = None):
    """Start the app (queue of at most 8 waiting jobs, one solve at a time); ``auth``: (user, password) pairs that
    may log in (``restore ui`` requires them for an exposed host), None for none."""
    demo = build_demo()
    demo.queue(max_size=8, default_concurrency_limit=1).launch(
        server_name=host, server_port=port, share=share, max_file_size=MAX_UPLOAD, footer_links=["api"],
        show_error=True, prevent_thread_lock=not block, quiet=not block, css=CSS, auth=auth)
    return demo


if __name__ == "__main__":
    launch()
