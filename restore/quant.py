"""Quantised priors: real int8 kernels for speed, simulated low-bit schemes for accuracy studies.

``quantize(prior, scheme, calibration=None) -> Prior`` returns a new Prior (the float one is untouched):

- ``"int8"``: real int8 on CPU through torch.ao's FX graph mode (x86 backend: per-channel int8 weights, per-tensor
  uint8 activations, static ranges from calibration, one set of ranges per band of noise levels / flow times). It applies to the DRUNet U-Net inside the denoiser and the
  flow network; the EDM preconditioning around it stays in float, and so do the transposed convolutions (their
  int8 version gives wrong outputs with per-channel weights here, measured: relative error ~1). Int8 graphs have
  no useful gradients (they silently return zeros), so solvers that back-propagate through a prior refuse it.
  (The PT2E + Inductor path measured faster in notes/aps-and-quantization.md needs torchao and a compile step; FX
  needs neither.)
- ``"w8a8"`` / ``"w4a8"``: simulated ("fake") quantisation in float: weights rounded per output channel
  (symmetric, 8 or 4 bits), activations at every conv/linear input rounded per tensor (asymmetric 8 bits) with
  min/max ranges from calibration; straight-through rounding keeps gradients.
- ``keep_first_last=True`` (default, both kinds) leaves the U-Net's first and last convolutions in float, the usual
  mixed-precision choice; measured on 4 CBSD68 crops at sigma 25/255 (one thread): int8 with 4 bands and float
  ends -0.09 dB against float at 2.6x the speed; all-int8 -0.15 dB at 4x (``keep_first_last=False``).
- ``sensitivity(prior, calibration)`` ranks layers by the error each adds when it alone is quantised to 4 bits.

Calibration inputs are images in [0, 1] (default: the bundled ``data/samples`` crops, never evaluation images); for
the denoiser they are run at noise levels across its range, for the flow at times across [0, 1].
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import torch
import torch.nn as nn

from restore.priors.registry import Prior

SCHEMES = ("int8", "w8a8", "w4a8")
CALIB_SIGMAS = (0.01, 0.03, 0.06, 0.1, 0.2, 0.4, 0.8, 1.5)


class QuantError(ValueError):
    """An unsupported scheme or prior for quantisation."""


def default_calibration(size: int = 64) -> torch.Tensor:
    """(N, 3, size, size) centre crops of the bundled sample images (not evaluation data)."""
    from restore.io import read_image

    folder = Path(__file__).resolve().parents[1] / "data" / "samples"
    crops = []
    for f in sorted(folder.glob("*.png")):
        x = read_image(f)
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


def quantize(prior: Prior, scheme: str, calibration: torch.Tensor | None = None,
             keep_first_last: bool = True, bands: int = 4) -> Prior:
    """A quantised copy of ``prior`` (see the module docstring). ``calibration``: (N, 3, H, W) images in [0, 1];
    ``bands``: int8 only, how many noise-level / time bands get their own activation ranges (and graph)."""
    if scheme not in SCHEMES:
        raise QuantError(f"unknown quantisation scheme {scheme!r}; known: {', '.join(SCHEMES)}")
    if prior.kind == "tokens":
        return _quantize_tokens(prior, scheme, calibration, keep_first_last)
    if prior.kind not in ("denoiser", "flow") or not hasattr(getattr(prior.module, "net", None), "forward_unet"):
        raise QuantError(f"prior {prior.name!r} ({prior.kind}) cannot be quantised here: only the DRUNet-based "
                         "denoiser and flow priors and the token prior's transformer are supported")
    images = default_calibration() if calibration is None else calibration
    module = copy.deepcopy(prior.module)
    q = Prior(f"{prior.name}@{scheme}", prior.kind, module, {**prior.card, "quantized": scheme})
    if scheme == "int8":
        module.net = _int8_unet(module.net, lambda: _calibration_calls(q, images), bands, keep_first_last)
    else:
        bits = 8 if scheme == "w8a8" else 4
        _fake_quantize(module.net, bits, lambda: _calibration_calls(q, images), keep_first_last)
    module.eval()
    return q


def _quantize_tokens(prior: Prior, scheme: str, calibration, keep_first_last: bool) -> Prior:
    """Token prior: only the masked-token transformer is quantised (APS runs it forward-only); the tokenizer stays
    float because APS back-propagates through its decoder. int8 = dynamic int8 Linear layers (weights int8 per
    channel, activations quantised on the fly), the usual path for transformers on CPU."""
    module = copy.deepcopy(prior.module)
    q = Prior(f"{prior.name}@{scheme}", prior.kind, module,
              {**prior.card, "quantized": scheme, "quantized_parts": ["transformer"]})
    if scheme == "int8":
        from torch.ao.quantization import quantize_dynamic

        torch.backends.quantized.engine = "x86"
        module.transformer = quantize_dynamic(module.transformer.eval(), {nn.Linear}, dtype=torch.qint8)
    else:
        images = default_calibration() if calibration is None else calibration
        images = images[..., :images.shape[-2] // 4 * 4, :images.shape[-1] // 4 * 4]
        _fake_quantize(module.transformer, 8 if scheme == "w8a8" else 4, lambda: _calibration_calls(q, images),
                       keep_first_last)
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

    def __init__(self, graphs: list, edges: list[float]):
        super().__init__()
        self.graphs = nn.ModuleList(graphs)
        self.register_buffer("edges", torch.tensor(edges, dtype=torch.float32))

    def forward_unet(self, x):
        # channel 3 is the constant conditioning map (see restore.priors.denoiser.run_unet)
        band = torch.bucketize(x[:, 3].mean(dim=(1, 2)), self.edges)
        if bool((band == band[0]).all()):
            return self.graphs[int(band[0])](x)
        return torch.cat([self.graphs[int(b)](x[i:i + 1]) for i, b in enumerate(band)])


def _int8_unet(net, run_calibration, bands: int = 4, float_ends: bool = False) -> _Int8UNet:
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    torch.backends.quantized.engine = "x86"
    qmap = get_default_qconfig_mapping("x86")
    qmap.set_object_type(nn.ConvTranspose2d, None)  # int8 transposed convs come out wrong here: keep them float
    if float_ends:
        qmap.set_module_name("net.m_head", None).set_module_name("net.m_tail", None)
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
    graphs = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for group in groups:
            inputs = [x for x in captured if round(level(x), 6) in group]
            prepared = prepare_fx(copy.deepcopy(_UNet(net)).eval(), qmap, example_inputs=(inputs[0],))
            with torch.no_grad():
                for x in inputs:
                    prepared(x)
            graphs.append(convert_fx(prepared))
    return _Int8UNet(graphs, edges)


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


def _fake_quantize(net, bits: int, run_calibration, keep_first_last: bool, only: str | None = None,
                   act_bits: int = 8):
    """Quantise weights in place (per output channel) and attach calibrated activation fake-quant hooks."""
    layers = _layers(net)
    skip = {layers[0][0], layers[-1][0]} if keep_first_last and only is None else set()
    chosen = [(n, m) for n, m in layers if n not in skip and (only is None or n == only)]
    ranges: dict[str, list[float]] = {}

    def observe(name):
        def hook(mod, args):
            x = args[0].detach()
            lo, hi = float(x.min()), float(x.max())
            r = ranges.setdefault(name, [lo, hi])
            r[0], r[1] = min(r[0], lo), max(r[1], hi)
        return hook

    handles = [m.register_forward_pre_hook(observe(n)) for n, m in chosen]
    run_calibration()
    for h in handles:
        h.remove()
    levels = 2**act_bits - 1
    for name, m in chosen:
        axis = 1 if isinstance(m, nn.ConvTranspose2d) else 0
        with torch.no_grad():
            m.weight.copy_(_fake_weight(m.weight, bits, axis))
        lo, hi = ranges.get(name, [0.0, 1.0])
        scale = max(hi - lo, 1e-8) / levels

        def act_hook(mod, args, lo=lo, scale=scale):
            x = args[0]
            return (_ste_round((x - lo) / scale).clamp(0, levels) * scale + lo,) + tuple(args[1:])

        m.register_forward_pre_hook(act_hook)


def sensitivity(prior: Prior, calibration: torch.Tensor | None = None, bits: int = 4) -> list[tuple[str, float]]:
    """Layers ranked by the PSNR (dB, vs the float output) when each alone is quantised to ``bits`` bits; the most
    sensitive first. Use it to choose which layers stay in float."""
    images = (default_calibration() if calibration is None else calibration)[:4]

    def outputs(p):
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            if p.kind == "denoiser":
                return p.module(images + 0.1 * torch.randn(images.shape, generator=g), 0.1)
            return p.module(images, 0.5)

    ref = outputs(prior)
    scores = []
    for name, _ in _layers(prior.module.net):
        module = copy.deepcopy(prior.module)
        q = Prior(prior.name, prior.kind, module, prior.card)
        _fake_quantize(module.net, bits, lambda q=q: _calibration_calls(q, images), False, only=name)
        out = outputs(q)
        mse = float(((out - ref) ** 2).mean())
        scores.append((name, 10 * torch.log10(torch.tensor(1.0 / max(mse, 1e-20))).item()))
    return sorted(scores, key=lambda s: s[1])
