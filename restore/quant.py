"""Quantised priors: real int8 kernels for speed, simulated low-bit schemes for accuracy studies.

``quantize(prior, scheme, calibration=None) -> Prior`` returns a new Prior (the float one is untouched):

- ``"int8"``: real int8 on CPU through torch.ao's FX graph mode (x86 backend: per-channel int8 weights, per-tensor
  uint8 activations, static ranges from calibration, one set of ranges per band of noise levels / flow times). It
  applies to the DRUNet U-Net inside the denoiser and the flow network; the EDM preconditioning around it stays in
  float, and so do the transposed convolutions (their int8 version gives wrong outputs with per-channel weights
  here, measured: relative error ~1). For the token prior, the transformer's Linear layers become dynamic int8.
  Int8 graphs have no useful gradients (they silently return zeros), so solvers that back-propagate through a prior
  refuse it, and CAEs (VBLE back-propagates through the decoder) accept only the simulated schemes.
  (The PT2E + Inductor path of notes/aps-and-quantization.md needs torchao, a C++ compiler and a compile step per
  graph and shape; see the issue note for why FX stays the default.)
- ``"w8a8"`` / ``"w4a8"``: simulated ("fake") quantisation in float: weights rounded per output channel
  (symmetric, 8 or 4 bits), activations at every conv/linear input rounded per tensor (asymmetric 8 bits) with
  min/max ranges from calibration; straight-through rounding keeps gradients. Any backbone: denoiser, flow, CAE
  (encoder, decoder and hyperprior convolutions; GDN and the entropy models stay float), token transformer.
- ``keep_first_last=True`` (default, both kinds) leaves the image-facing first and last convolutions in float, the
  usual mixed-precision choice; ``float_layers`` keeps more; ``mixed_precision(prior, scheme, n)`` keeps the n
  layers that ``sensitivity`` ranks worst. Measured numbers: ``python -m benchmarks.quant`` (README).
- Calibrated copies are cached on disk (``cache_dir()``, ``$RESTORE_CACHE``), keyed by the float weights, the
  scheme, its options and the calibration images, so a second ``quantize`` of the same prior skips calibration
  (int8 denoiser: 18 s -> 2 s on one thread). ``cache=False`` never touches the disk.

Calibration inputs are images in [0, 1] (default: the bundled ``data/samples`` crops, never evaluation images); for
the denoiser they are run at noise levels across its range, for the flow at times across [0, 1], for a CAE through
its full encode / decode.
"""

from __future__ import annotations

import copy
import hashlib
import os
import threading
import warnings
from pathlib import Path

import torch
import torch.nn as nn

from restore.files import save_atomic
from restore.priors.registry import Prior, quantised_name

# torch.fx traces by patching torch.nn.Module.__call__ for the whole process: two traces at once corrupt each other, and
# a module called on another thread during a trace fails ("module is not installed as a submodule"). Traces hold this
# lock; a program that quantises must not run modules on other threads meanwhile (the app runs both on one thread).
FX_TRACE_LOCK = threading.Lock()

SCHEMES = ("int8", "w8a8", "w4a8")
BACKENDS = ("fx", "pt2e")
CACHE_FORMAT = 1  # bump when the cached layout changes
CALIB_SIGMAS = (0.01, 0.03, 0.06, 0.1, 0.2, 0.4, 0.8, 1.5)


class QuantError(ValueError):
    """An unsupported scheme or prior for quantisation."""


def default_calibration(size: int = 64) -> torch.Tensor:
    """(N, 3, size, size) centre crops of the bundled sample images (not evaluation data)."""
    from restore.io import MAX_PIXELS, read_image

    folder = Path(__file__).resolve().parents[1] / "data" / "samples"
    crops = []
    for f in sorted(folder.glob("*.png")):
        x = read_image(f, max_pixels=MAX_PIXELS)  # our own files: not subject to the user's --max-megapixels
        x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
        h, w = x.shape[-2:]
        for t in (0, h - size):
            for l in (0, w - size):  # noqa: E741
                crops.append(x[0, :, t:t + size, l:l + size])
    if not crops:
        return torch.rand(4, 3, size, size, generator=torch.Generator().manual_seed(0))
    return torch.stack(crops)


def _calibration_calls(prior: Prior, images: torch.Tensor):
    """Run the prior the way solvers do, over its input range (noise levels or flow times)."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        if prior.kind == "denoiser":
            for s in CALIB_SIGMAS:
                prior.module(images + s * torch.randn(images.shape, generator=g), s)
        elif prior.kind == "flow":
            for t in (0.0, 0.2, 0.4, 0.6, 0.8, 0.96):
                z = images + 0.05 * torch.randn(images.shape, generator=g)
                prior.module(z, t)
        elif prior.kind == "cae":
            prior.module(images)  # encoder, hyperprior and decoder on real latents
        elif prior.kind == "tokens":
            # the transformer as APS calls it: token grids with growing shares of masked positions
            tokens = prior.module.tokenizer.encode(images)
            tf = prior.module.transformer
            for ratio in (1.0, 0.8, 0.6, 0.4, 0.2, 0.05):
                mask = torch.rand(tokens.shape, generator=g) < ratio
                tf(tokens.masked_fill(mask, tf.mask_id))
        else:
            raise QuantError(f"quantisation supports denoiser, flow and token priors; {prior.name!r} is a {prior.kind} "
                             "prior")


def cache_dir() -> Path:
    """Where quantised copies are cached: ``$RESTORE_CACHE/quant`` (default ``~/.cache/restore/quant``)."""
    root = os.environ.get("RESTORE_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "restore") / "quant"


def _target(prior: Prior) -> nn.Module:
    """The network a scheme rewrites: the DRUNet of the denoiser / flow, the whole CAE (simulated only)."""
    if prior.kind in ("denoiser", "flow") and hasattr(getattr(prior.module, "net", None), "forward_unet"):
        return prior.module.net
    if prior.kind == "cae":
        return prior.module
    raise QuantError(f"prior {prior.name!r} ({prior.kind}) cannot be quantised here: only the DRUNet-based "
                     "denoiser and flow priors, the CAEs (simulated schemes) and the token prior's transformer are "
                     "supported")


def _end_layers(prior: Prior, net: nn.Module) -> set[str]:
    """The 'first and last' layers kept float by ``keep_first_last``: the image-facing convolutions (for a CAE the
    encoder's first and the decoder's last)."""
    names = [n for n, _ in _layers(net)]
    if prior.kind == "cae":
        return {next(n for n in names if n.startswith("g_a")), [n for n in names if n.startswith("g_s")][-1]}
    return {names[0], names[-1]}


def quantize(prior: Prior, scheme: str, calibration: torch.Tensor | None = None,
             keep_first_last: bool = True, bands: int = 4, float_layers: tuple[str, ...] = (),
             cache: bool | str | Path = True, backend: str = "fx") -> Prior:
    """A quantised copy of ``prior`` (see the module docstring). ``calibration``: (N, 3, H, W) images in [0, 1];
    ``bands``: int8 only, how many noise-level / time bands get their own activation ranges (and graph);
    ``float_layers``: names (as in :func:`sensitivity`) of further layers kept in float (mixed precision);
    ``cache``: True = reuse / store the calibrated copy under :func:`cache_dir`, a folder = there, False = never.
    A cached copy is keyed by the float weights, the scheme and its options and the calibration images.
    ``backend`` (int8 of the denoiser / flow only): "fx" (default) or "pt2e" (torchao + Inductor, see the module
    docstring; not cached here, Inductor keeps its own compile cache)."""
    if scheme not in SCHEMES:
        raise QuantError(f"unknown quantisation scheme {scheme!r}; known: {', '.join(SCHEMES)}")
    if backend not in BACKENDS:
        raise QuantError(f"unknown int8 backend {backend!r}; known: {', '.join(BACKENDS)}")
    if backend == "pt2e" and (scheme != "int8" or prior.kind not in ("denoiser", "flow")):
        raise QuantError("backend='pt2e' is for real int8 of the denoiser and flow U-Nets; "
                         f"{prior.name!r} with {scheme!r} uses the default backend")
    if prior.kind == "tokens":
        return _quantize_tokens(prior, scheme, calibration, keep_first_last)
    net = _target(prior)
    if scheme == "int8" and prior.kind == "cae":
        raise QuantError(f"prior {prior.name!r} is a CAE: VBLE back-propagates through its decoder, which real int8 "
                         "graphs cannot do (zero gradients); use the simulated 'w8a8' or 'w4a8'")
    names = {n for n, _ in _layers(net)}
    unknown = sorted(set(float_layers) - names)
    if unknown:
        raise QuantError(f"float_layers names no layer of {prior.name!r}: {', '.join(unknown)} (see sensitivity())")
    keep = set(float_layers) | (_end_layers(prior, net) if keep_first_last else set())
    images = default_calibration() if calibration is None else calibration
    module = copy.deepcopy(prior.module)
    q = Prior(quantised_name(prior.name, scheme), prior.kind, module, {**prior.card, "quantized": scheme},
              prior.digest)
    qnet = _target(q)
    if backend == "pt2e":
        module.net = _pt2e_unet(qnet, lambda: _calibration_calls(q, images), bands, keep)
        q.card.update(quantized_backend="pt2e", quantized_cache=None)
        module.eval()
        return q
    path = None
    if cache is not False:
        folder = cache_dir() if cache is True else Path(cache)
        path = folder / f"{prior.name}-{scheme}-{_cache_key(net, scheme, bands, keep, images)}.pt"
    stored = _read_cache(path)
    if scheme == "int8":
        if stored is not None:
            module.net = _int8_unet_from(qnet, stored, keep)
        else:
            module.net = _int8_unet(qnet, lambda: _calibration_calls(q, images), bands, keep)
            stored = {"edges": module.net.edges.tolist(), "example_shape": module.net.example_shape,
                      "graphs": [g.state_dict() for g in module.net.graphs]}
    else:
        bits = 8 if scheme == "w8a8" else 4
        chosen = [(n, m) for n, m in _layers(qnet) if n not in keep]
        if stored is not None:
            qnet.load_state_dict(stored["weights"])
            _attach_fake_activations(chosen, stored["ranges"])
        else:
            ranges = _simulate(chosen, bits, lambda: _calibration_calls(q, images))
            stored = {"weights": qnet.state_dict(), "ranges": ranges}
    if path is not None and not path.exists():
        _write_cache(path, stored)
    q.card["quantized_cache"] = str(path) if path is not None else None
    module.eval()
    return q


def _cache_key(net: nn.Module, scheme: str, bands: int, keep: set[str], images: torch.Tensor) -> str:
    h = hashlib.sha256(f"{CACHE_FORMAT}|{torch.__version__}|{scheme}|{bands}|{sorted(keep)}".encode())
    for name, t in net.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().float().contiguous().numpy().tobytes())
    h.update(images.detach().cpu().float().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _read_cache(path: Path | None) -> dict | None:
    if path is None or not path.exists():
        return None
    try:
        with warnings.catch_warnings():  # torch's deprecation notes on quantised storages, on every default RED-Diff run
            warnings.filterwarnings("ignore", category=UserWarning, module="torch")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a damaged cache file is rebuilt, not fatal
        warnings.warn(f"ignoring unreadable quantisation cache {path}: {exc}")
        return None


def _write_cache(path: Path, stored: dict):
    try:
        save_atomic(stored, path)
    except OSError as exc:  # a read-only home must not stop quantisation
        warnings.warn(f"could not cache the quantised copy at {path}: {exc}")


def _quantize_tokens(prior: Prior, scheme: str, calibration, keep_first_last: bool) -> Prior:
    """Token prior: only the masked-token transformer is quantised (APS runs it forward-only); the tokenizer stays
    float because APS back-propagates through its decoder. int8 = dynamic int8 Linear layers (weights int8 per
    channel, activations quantised on the fly, so nothing to calibrate or cache), the usual path for transformers
    on CPU."""
    module = copy.deepcopy(prior.module)
    q = Prior(quantised_name(prior.name, scheme), prior.kind, module,
              {**prior.card, "quantized": scheme, "quantized_parts": ["transformer"]}, prior.digest)
    if scheme == "int8":
        from torch.ao.quantization import quantize_dynamic

        torch.backends.quantized.engine = "x86"
        module.transformer = quantize_dynamic(module.transformer.eval(), {nn.Linear}, dtype=torch.qint8)
    else:
        images = default_calibration() if calibration is None else calibration
        images = images[..., :images.shape[-2] // 4 * 4, :images.shape[-1] // 4 * 4]
        keep = _end_layers(prior, module.transformer) if keep_first_last else set()
        chosen = [(n, m) for n, m in _layers(module.transformer) if n not in keep]
        _simulate(chosen, 8 if scheme == "w8a8" else 4, lambda: _calibration_calls(q, images))
    module.eval()
    return q


# ---- real int8 (FX graph mode) -----------------------------------------------------------------------------------

class _UNet(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net.forward_unet(x)


class _Int8UNet(nn.Module):
    """Stands in for DRUNet: ``forward_unet`` runs one converted int8 graph per band of the conditioning level
    (noise level for the denoiser, time for the flow), each with activation ranges calibrated on that band only, as
    the timestep-aware calibration of the diffusion-quantisation papers (PTQ4DM, Q-Diffusion)."""

    def __init__(self, graphs: list, edges: list[float], example_shape: tuple[int, ...]):
        super().__init__()
        self.graphs = nn.ModuleList(graphs)
        self.example_shape = example_shape
        self.register_buffer("edges", torch.tensor(edges, dtype=torch.float32))

    def forward_unet(self, x):
        # channel 3 is the constant conditioning map (see restore.priors.denoiser.run_unet)
        band = torch.bucketize(x[:, 3].mean(dim=(1, 2)), self.edges)
        if bool((band == band[0]).all()):
            return self.graphs[int(band[0])](x)
        return torch.cat([self.graphs[int(b)](x[i:i + 1]) for i, b in enumerate(band)])


def _qconfig_mapping(keep: set[str]):
    from torch.ao.quantization import get_default_qconfig_mapping

    torch.backends.quantized.engine = "x86"
    qmap = get_default_qconfig_mapping("x86")
    qmap.set_object_type(nn.ConvTranspose2d, None)  # int8 transposed convs come out wrong here: keep them float
    for name in sorted(keep):
        qmap.set_module_name(f"net.{name}", None)
    return qmap


def _banded_calibration_inputs(net, run_calibration, bands: int) -> tuple[list[list[torch.Tensor]], list[float]]:
    """The U-Net inputs of the calibration calls, split into ``bands`` contiguous bands of their conditioning level
    (channel 3), and the band edges."""
    captured = []
    original = net.forward_unet

    def capture(x):
        captured.append(x.detach().clone())
        return original(x)

    net.forward_unet = capture
    try:
        run_calibration()
    finally:
        del net.forward_unet
    # split the calibration calls' conditioning levels into contiguous bands
    level = lambda x: float(x[:, 3].mean())  # noqa: E731
    levels = sorted({round(level(x), 6) for x in captured})
    bands = max(1, min(bands, len(levels)))
    groups = [levels[i * len(levels) // bands:(i + 1) * len(levels) // bands] for i in range(bands)]
    edges = [(a[-1] + b[0]) / 2 for a, b in zip(groups, groups[1:])]
    return [[x for x in captured if round(level(x), 6) in group] for group in groups], edges


def _int8_unet(net, run_calibration, bands: int, keep: set[str]) -> _Int8UNet:
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    qmap = _qconfig_mapping(keep)
    groups, edges = _banded_calibration_inputs(net, run_calibration, bands)
    graphs = []
    with FX_TRACE_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for inputs in groups:
            prepared = prepare_fx(copy.deepcopy(_UNet(net)).eval(), qmap, example_inputs=(inputs[0],))
            with torch.no_grad():
                for x in inputs:
                    prepared(x)
            graphs.append(convert_fx(prepared))
    return _Int8UNet(graphs, edges, tuple(groups[0][0][:1].shape))


def _pt2e_unet(net, run_calibration, bands: int, keep: set[str]) -> _Int8UNet:
    """The same banded int8 U-Net through torchao's PT2E flow: ``torch.export`` with dynamic batch and size
    (multiples of 8), ``X86InductorQuantizer`` (per-channel int8 weights, per-tensor uint8 activations), calibration,
    ``convert_pt2e``, then ``torch.compile`` with weight freezing, which is what turns the q/dq pairs into int8
    kernels. The first call of each band compiles (tens of seconds on 2 cores), a new image size may recompile."""
    try:
        import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as xiq
        from torchao.quantization.pt2e import allow_exported_model_train_eval
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    except ImportError as exc:
        raise QuantError(f"backend='pt2e' needs torchao (pip install 'restore[pt2e]'): {exc}") from None
    groups, edges = _banded_calibration_inputs(net, run_calibration, bands)
    dims = {0: torch.export.Dim("batch", max=1024), 2: 8 * torch.export.Dim("h8", min=4, max=4096),
            3: 8 * torch.export.Dim("w8", min=4, max=4096)}
    graphs = []
    with FX_TRACE_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for inputs in groups:
            example = inputs[0] if inputs[0].shape[0] > 1 else inputs[0].expand(2, -1, -1, -1)  # batch 1 specialises
            exported = torch.export.export(copy.deepcopy(_UNet(net)).eval(), (example,),
                                           dynamic_shapes={"x": dims}).module()
            quantizer = xiq.X86InductorQuantizer().set_global(xiq.get_default_x86_inductor_quantization_config())
            for name in sorted(keep):
                quantizer.set_module_name_qconfig(f"net.{name}", None)
            prepared = prepare_pt2e(exported, quantizer)
            with torch.no_grad():
                for x in inputs:
                    prepared(x)
            converted = allow_exported_model_train_eval(convert_pt2e(prepared))  # so Prior.module.eval() works
            graphs.append(_Compiled(torch.compile(converted)))
    return _Int8UNet(graphs, edges, tuple(groups[0][0][:1].shape))


class _Compiled(nn.Module):
    """Holds a compiled graph so ModuleList accepts it; DRUNet needs H, W multiples of 8 (run_unet pads)."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        import torch._inductor.config as inductor_config

        with inductor_config.patch(freezing=True):  # read when a call (re)compiles
            return self.fn(x)


def _int8_unet_from(net, stored: dict, keep: set[str]) -> _Int8UNet:
    """Rebuild the banded int8 graphs from a cache entry: trace and convert uncalibrated graphs of the same
    structure, then load the stored int8 weights and activation scales into them."""
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    qmap = _qconfig_mapping(keep)
    example = torch.zeros(stored["example_shape"])
    graphs = []
    with FX_TRACE_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # uncalibrated observers warn; their values are replaced just below
        for state in stored["graphs"]:
            graph = convert_fx(prepare_fx(copy.deepcopy(_UNet(net)).eval(), qmap, example_inputs=(example,)))
            graph.load_state_dict(state)
            graphs.append(graph)
    return _Int8UNet(graphs, list(stored["edges"]), tuple(stored["example_shape"]))


# ---- simulated quantisation ---------------------------------------------------------------------------------------

def _ste_round(x: torch.Tensor) -> torch.Tensor:
    return x + (x.round() - x).detach()


def _fake_weight(w: torch.Tensor, bits: int, axis: int) -> torch.Tensor:
    qmax = 2 ** (bits - 1) - 1
    dims = [d for d in range(w.ndim) if d != axis]
    scale = w.detach().abs().amax(dim=dims, keepdim=True).clamp_min(1e-12) / qmax
    return _ste_round(w / scale).clamp(-qmax - 1, qmax) * scale


def _layers(net) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in net.named_modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear))]


def _simulate(chosen: list[tuple[str, nn.Module]], bits: int, run_calibration) -> dict[str, list[float]]:
    """Simulated quantisation of the chosen layers, in place: calibrate their input ranges (before any rounding),
    round their weights to ``bits``, attach 8-bit activation rounding. Returns the ranges (what a cache stores)."""
    ranges = _observe_ranges(chosen, run_calibration)
    _fake_weights(chosen, bits)
    _attach_fake_activations(chosen, ranges)
    return ranges


def _observe_ranges(chosen: list[tuple[str, nn.Module]], run_calibration) -> dict[str, list[float]]:
    """Min / max of every chosen layer's input over the calibration calls."""
    ranges: dict[str, list[float]] = {}

    def observe(name):
        def hook(mod, args):
            x = args[0].detach()
            lo, hi = float(x.min()), float(x.max())
            r = ranges.setdefault(name, [lo, hi])
            r[0], r[1] = min(r[0], lo), max(r[1], hi)
        return hook

    handles = [m.register_forward_pre_hook(observe(n)) for n, m in chosen]
    try:
        run_calibration()
    finally:
        for h in handles:
            h.remove()
    return ranges


def _fake_weights(chosen: list[tuple[str, nn.Module]], bits: int):
    """Round the chosen layers' weights in place, symmetric per output channel."""
    for _, m in chosen:
        axis = 1 if isinstance(m, nn.ConvTranspose2d) else 0
        with torch.no_grad():
            m.weight.copy_(_fake_weight(m.weight, bits, axis))


def _attach_fake_activations(chosen: list[tuple[str, nn.Module]], ranges: dict, act_bits: int = 8):
    """Round each chosen layer's input per tensor (asymmetric) to its calibrated range; straight-through gradient."""
    levels = 2**act_bits - 1
    for name, m in chosen:
        lo, hi = ranges.get(name, [0.0, 1.0])
        scale = max(hi - lo, 1e-8) / levels

        def act_hook(mod, args, lo=lo, scale=scale):
            x = args[0]
            return (_ste_round((x - lo) / scale).clamp(0, levels) * scale + lo,) + tuple(args[1:])

        m.register_forward_pre_hook(act_hook)


def sensitivity(prior: Prior, calibration: torch.Tensor | None = None, bits: int = 4) -> list[tuple[str, float]]:
    """Layers ranked by the PSNR (dB, vs the float output) when each alone is quantised to ``bits`` bits; the most
    sensitive first. Feed the first names to ``quantize(..., float_layers=...)`` (or use :func:`mixed_precision`)."""
    images = (default_calibration() if calibration is None else calibration)[:4]

    def outputs(p):
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            if p.kind == "denoiser":
                return p.module(images + 0.1 * torch.randn(images.shape, generator=g), 0.1)
            if p.kind == "cae":
                return p.module(images)["x_hat"]
            return p.module(images, 0.5)

    ref = outputs(prior)
    scores = []
    for name, _ in _layers(_target(prior)):
        q = Prior(prior.name, prior.kind, copy.deepcopy(prior.module), prior.card)
        chosen = [(n, m) for n, m in _layers(_target(q)) if n == name]
        _simulate(chosen, bits, lambda q=q: _calibration_calls(q, images))
        mse = float(((outputs(q) - ref) ** 2).mean())
        scores.append((name, 10 * torch.log10(torch.tensor(1.0 / max(mse, 1e-20))).item()))
    return sorted(scores, key=lambda s: s[1])


def mixed_precision(prior: Prior, scheme: str, n_float: int = 3, calibration: torch.Tensor | None = None,
                    **kwargs) -> Prior:
    """``quantize`` with the ``n_float`` layers that :func:`sensitivity` ranks most sensitive (at 4 bits) kept in
    float, besides the first and last ones (MixDQ-style mixed precision); the card lists them."""
    images = default_calibration() if calibration is None else calibration
    ranked = [n for n, _ in sensitivity(prior, images)]
    ends = _end_layers(prior, _target(prior)) if kwargs.get("keep_first_last", True) else set()
    chosen = tuple([n for n in ranked if n not in ends][:n_float])
    q = quantize(prior, scheme, images, float_layers=chosen, **kwargs)
    q.card["float_layers"] = list(chosen)
    return q
