"""Synthetic camera-like noise, for choosing real-noise solver settings without touching real-noise test pairs.

Two models, both stand-ins for tuning only (the real-noise benchmark, ``benchmarks.realnoise``, measures on real pairs):

- ``light`` / ``heavy`` / ``very_heavy`` (the first model, behind the shipped ScoreDVI table): signal-dependent white
  noise (variance a * x + b in sRGB) mixed with its 3x3-smoothed copy and, per pixel, with the channel mean. Three
  levels roughly at the residual stds of the real-noise sets (CC15 ~3-5/255, SIDD ~18-22/255, its noisiest scenes
  ~33/255).
- ``raw_light`` / ``raw_heavy`` / ``raw_very_heavy``: noise added where a camera adds it, in raw, after
  *unprocessing* the photo (Brooks et al., "Unprocessing Images for Learned Raw Denoising", CVPR 2019): sRGB ->
  inverse tone curve -> linear (gamma 2.2) -> camera colour space (a random convex mix of four cameras' XYZ -> camera
  matrices, rows normalised) -> inverse white balance (gains 1 / N(0.8, 0.1) overall, red U(1.9, 2.4), blue
  U(1.5, 1.9), highlights protected) -> RGGB Bayer mosaic -> shot + read noise (variance shot * x + read, per raw
  pixel, read from shot by the paper's log-linear fit, log read = 2.18 log shot + 1.20 + N(0, 0.26)) -> bilinear
  demosaic -> white balance, colour matrix, gamma, tone curve back to sRGB. The noise that reaches the photo is then
  signal-dependent through the raw shot noise, gamma and tone curve (it peaks in the mid-tones and fades in deep
  shadows and highlights, where the tone curve is flat; the first model's grows with brightness), correlated between
  neighbours by the demosaic and mixed across channels by the colour matrix. The shot levels
  put the residual std near the first model's (about 4, 20 and 33/255 over natural crops). The camera constants and
  the noise fit are the paper's; the code is ours.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# (a, b) of the per-pixel variance a * x + b, x in [0, 1]: about 4, 20 and 35/255 std at mid-grey (real-noise sets
# span 2.5-33/255 in residual std: CC15's light noise to SIDD's darkest, noisiest scenes)
LEVELS = {"light": (2 * (3.5 / 255) ** 2, (2 / 255) ** 2), "heavy": (2 * (18 / 255) ** 2, (8 / 255) ** 2),
          "very_heavy": (2 * (32 / 255) ** 2, (12 / 255) ** 2)}
# raw shot-noise variance per unit signal (Brooks et al. sample it in [1e-4, 1.2e-2]); chosen so the sRGB residual
# std lands near the first model's levels (about 4, 20 and 33/255 over natural crops)
RAW_LEVELS = {"raw_light": 1.5e-4, "raw_heavy": 4e-3, "raw_very_heavy": 1.1e-2}

# XYZ -> camera matrices of four cameras, and linear sRGB -> XYZ (D65), as in Brooks et al.
_XYZ2CAMS = [[[1.0234, -0.2969, -0.2266], [-0.5625, 1.6328, -0.0469], [-0.0703, 0.2188, 0.6406]],
             [[0.4913, -0.0541, -0.0202], [-0.6130, 1.3513, 0.2906], [-0.1564, 0.2151, 0.7183]],
             [[0.8380, -0.2630, -0.0639], [-0.2887, 1.0725, 0.2496], [-0.0627, 0.1427, 0.5438]],
             [[0.6596, -0.2079, -0.0562], [-0.4782, 1.3016, 0.1933], [-0.0970, 0.1581, 0.5181]]]
_RGB2XYZ = [[0.4124564, 0.3575761, 0.1804375], [0.2126729, 0.7151522, 0.0721750], [0.0193339, 0.1191920, 0.9503041]]


def simulate(x: torch.Tensor, level: str, generator: torch.Generator, scale: float = 1.0) -> torch.Tensor:
    """Noisy copy of x (B, C, H, W) in [0, 1] with ``level`` camera noise (:data:`LEVELS` or :data:`RAW_LEVELS`),
    clamped to [0, 1]. ``scale`` multiplies the noise std. Draws come only from ``generator``."""
    if level in RAW_LEVELS:
        return simulate_raw(x, RAW_LEVELS[level], generator, scale)
    if level not in LEVELS:
        raise ValueError(f"unknown camera-noise level {level!r}; known: {', '.join([*LEVELS, *RAW_LEVELS])}")
    a, b = LEVELS[level]
    w = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    k = torch.tensor([1.0, 2.0, 1.0], dtype=x.dtype, device=x.device)
    k = (k[:, None] * k[None, :]) / (k[:, None] * k[None, :]).norm()  # unit energy: smoothed noise keeps variance 1
    c = x.shape[1]
    smooth = F.conv2d(F.pad(w, (1, 1, 1, 1), mode="reflect"), k.expand(c, 1, 3, 3), groups=c)
    n = 0.6 * w + 0.8 * smooth  # variance renormalised below
    n = 0.7 * n + 0.7 * n.mean(1, keepdim=True)  # a share common to the channels
    n = n / n.std()
    return (x + scale * (a * x.clamp(0, 1) + b).sqrt() * n).clamp(0, 1)


def _uniform(generator: torch.Generator, lo: float, hi: float, *shape) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(shape or (1,), generator=generator, dtype=torch.float64)


def _camera(generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A random camera: the linear sRGB -> camera matrix (3, 3; rows sum to 1) and the white-balance gains (3,) the
    camera's pipeline multiplies raw by (red, green, blue)."""
    weights = _uniform(generator, 1e-8, 1.0, 4)
    xyz2cam = (torch.tensor(_XYZ2CAMS, dtype=torch.float64) * weights[:, None, None]).sum(0) / weights.sum()
    rgb2cam = xyz2cam @ torch.tensor(_RGB2XYZ, dtype=torch.float64)
    rgb2cam = rgb2cam / rgb2cam.sum(1, keepdim=True)
    rgb_gain = 1.0 / (0.8 + 0.1 * torch.randn(1, generator=generator, dtype=torch.float64)).clamp(min=0.5)
    red, blue = _uniform(generator, 1.9, 2.4), _uniform(generator, 1.5, 1.9)
    gains = torch.cat([red, torch.ones(1, dtype=torch.float64), blue]) * rgb_gain
    return rgb2cam, gains


def _bayer_masks(h: int, w: int, like: torch.Tensor) -> torch.Tensor:
    """(1, 3, h, w) 0/1 masks of an RGGB mosaic's red, green and blue sites."""
    m = torch.zeros(1, 3, h, w, dtype=like.dtype, device=like.device)
    m[:, 0, 0::2, 0::2] = 1
    m[:, 1, 0::2, 1::2] = 1
    m[:, 1, 1::2, 0::2] = 1
    m[:, 2, 1::2, 1::2] = 1
    return m


def _demosaic(raw: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Bilinear demosaic of (B, 1, H, W) RGGB raw into (B, 3, H, W)."""
    rb = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]], dtype=raw.dtype, device=raw.device) / 4
    g = torch.tensor([[0.0, 1.0, 0.0], [1.0, 4.0, 1.0], [0.0, 1.0, 0.0]], dtype=raw.dtype, device=raw.device) / 4
    planes = F.pad(raw * masks, (1, 1, 1, 1), mode="reflect")
    kernels = torch.stack([rb, g, rb])[:, None]
    return F.conv2d(planes, kernels, groups=3)


def simulate_raw(x: torch.Tensor, shot: float, generator: torch.Generator, scale: float = 1.0) -> torch.Tensor:
    """Noisy copy of x (B, 3, H, W) in [0, 1] through the unprocessed raw pipeline of the module docstring, with
    shot-noise variance ``shot`` per unit raw signal (raw in [0, 1]); one random camera and read level per call.
    ``scale`` multiplies the raw noise std. Odd sizes are reflect-padded to even for the mosaic and cropped back."""
    if x.shape[1] != 3:
        raise ValueError(f"raw camera noise needs colour images (B, 3, H, W); got {tuple(x.shape)}")
    dtype = x.dtype
    h, w = x.shape[-2:]
    img = x.double().clamp(0, 1)
    if h % 2 or w % 2:
        img = F.pad(img, (0, w % 2, 0, h % 2), mode="reflect")
    rgb2cam, gains = _camera(generator)
    read = math.exp(2.18 * math.log(shot) + 1.20 + 0.26 * float(torch.randn(1, generator=generator)))
    # unprocess: tone curve and gamma inverted, into camera colours, white balance undone (highlights kept)
    lin = (0.5 - torch.sin(torch.asin(1 - 2 * img) / 3)).clamp(min=1e-8) ** 2.2
    cam = torch.einsum("ij,bjhw->bihw", rgb2cam, lin)
    inv = (1.0 / gains)[None, :, None, None]
    grey = cam.mean(1, keepdim=True)
    protect = ((grey - 0.9).clamp(min=0) / 0.1) ** 2
    cam = cam * torch.maximum(protect + (1 - protect) * inv, inv)
    masks = _bayer_masks(img.shape[2], img.shape[3], img)
    raw = (cam * masks).sum(1, keepdim=True).clamp(0, 1)
    noise = torch.randn(raw.shape, generator=generator, dtype=torch.float64)
    noisy = raw + scale * (shot * raw + read).sqrt() * noise
    # a real pair's clean image (the mean of many shots) went through the same pipeline, demosaic included: the noise
    # is what the pipeline makes of the raw noise, added to x so that x stays the ground truth
    added = _process(noisy, masks, rgb2cam, gains) - _process(raw, masks, rgb2cam, gains)
    return (x.double() + added[:, :, :h, :w]).clamp(0, 1).to(dtype)


def _process(raw: torch.Tensor, masks: torch.Tensor, rgb2cam: torch.Tensor, gains: torch.Tensor) -> torch.Tensor:
    """A minimal camera pipeline, (B, 1, H, W) RGGB raw -> (B, 3, H, W) sRGB in [0, 1]: bilinear demosaic, white
    balance, camera -> linear sRGB, gamma 2.2, smoothstep tone curve."""
    cam = _demosaic(raw, masks) * gains[None, :, None, None]
    lin = torch.einsum("ij,bjhw->bihw", torch.linalg.inv(rgb2cam), cam).clamp(0, 1)
    srgb = lin.clamp(min=1e-8) ** (1 / 2.2)
    return 3 * srgb ** 2 - 2 * srgb ** 3
