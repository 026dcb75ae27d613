"""Synthetic camera-like noise, for choosing real-noise solver settings without touching real-noise test pairs.

Real sensor noise after a camera pipeline is signal-dependent (shot + read: variance a * x + b) and spatially and
across-channel correlated (demosaicking, denoising in the ISP). This model has both, with three levels roughly at the
residual stds of the real-noise sets (CC15 ~3-5/255, SIDD ~18-22/255, its noisiest scenes ~33/255). It is a stand-in
for tuning only: the real-noise benchmark (``benchmarks.realnoise``) measures on real pairs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# (a, b) of the per-pixel variance a * x + b, x in [0, 1]: about 4, 20 and 35/255 std at mid-grey (real-noise sets
# span 2.5-33/255 in residual std: CC15's light noise to SIDD's darkest, noisiest scenes)
LEVELS = {"light": (2 * (3.5 / 255) ** 2, (2 / 255) ** 2), "heavy": (2 * (18 / 255) ** 2, (8 / 255) ** 2),
          "very_heavy": (2 * (32 / 255) ** 2, (12 / 255) ** 2)}


def simulate(x: torch.Tensor, level: str, generator: torch.Generator, scale: float = 1.0) -> torch.Tensor:
    """Noisy copy of x (B, C, H, W) in [0, 1] with :data:`LEVELS` ``level`` noise, clamped to [0, 1]. The white
    draw is mixed with its 3x3-smoothed copy (unit variance kept) and, per pixel, with the channel mean, so the
    noise is correlated in space and colour like a demosaicked photo's. ``scale`` multiplies the noise std."""
    if level not in LEVELS:
        raise ValueError(f"unknown camera-noise level {level!r}; known: {', '.join(LEVELS)}")
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
