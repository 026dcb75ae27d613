"""Noise-conditional denoiser / score prior.

``ScoreDenoiser`` implements deepinv's ``Denoiser.forward(x, sigma)`` contract, so deepinv's PnP, RED, ULA,
DiffPIR and DPS run on it unchanged, and gives the score through Tweedie's formula:
``score(x, sigma) = (D(x, sigma) - x) / sigma**2``.

Backbone: deepinv's DRUNet (random init, trained here by ``python -m restore.train.denoiser``), wrapped with
EDM-style preconditioning (Karras et al. 2022) so one network covers sigma from ~1e-3 up to ~2 on the [0, 1] scale:

    D(x, sigma) = 0.5 + c_skip * (x - 0.5) + c_out * F(c_in * (x - 0.5), c_noise)

with ``c_skip = s_d^2 / (sigma^2 + s_d^2)``, ``c_out = sigma * s_d / sqrt(sigma^2 + s_d^2)``,
``c_in = 1 / sqrt(sigma^2 + s_d^2)`` and ``c_noise = log(sigma) / 4`` fed to DRUNet as its noise-level map.
Grey images are run through the colour network as three equal channels and averaged back.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from deepinv.models import Denoiser, DRUNet

SIGMA_DATA = 0.25  # std of natural images on the [0, 1] scale (EDM's 0.5 on [-1, 1])
SIGMA_MIN = 1e-3  # below this the denoiser is the identity to within float precision


def _as_batch_sigma(sigma, x: torch.Tensor) -> torch.Tensor:
    """Noise level as a (B, 1, 1, 1) or (B, 1, H, W) tensor, clamped to SIGMA_MIN."""
    s = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    if s.ndim == 0:
        s = s.expand(x.shape[0])
    if s.ndim == 1:
        if s.shape[0] not in (1, x.shape[0]):
            raise ValueError(f"sigma has {s.shape[0]} entries for a batch of {x.shape[0]} images")
        s = s.expand(x.shape[0]).view(-1, 1, 1, 1)
    elif s.ndim == 4:
        if s.shape[1] != 1 or s.shape[2:] not in ((1, 1), x.shape[2:]):
            raise ValueError(f"sigma map of shape {tuple(s.shape)} does not fit images of shape {tuple(x.shape)}")
    else:
        raise ValueError(f"sigma must be a float, (B,) or (B,1,H,W); got shape {tuple(s.shape)}")
    return s.clamp_min(SIGMA_MIN)


class ScoreDenoiser(Denoiser):
    """MMSE Gaussian denoiser ``D(x, sigma) ~ E[x0 | x0 + sigma * n = x]``.

    Args:
        nc: DRUNet channel widths per scale.
        nb: residual blocks per scale.

    ``forward(x, sigma)``: x (B, C, H, W) with C in {1, 3}, any H, W; sigma a float, a (B,) tensor or a
    (B, 1, H, W) noise map, on the [0, 1] scale. Returns (B, C, H, W).
    """

    def __init__(self, nc=(32, 64, 128, 256), nb: int = 2):
        super().__init__()
        self.nc = tuple(int(c) for c in nc)
        self.nb = int(nb)
        self.net = DRUNet(in_channels=3, out_channels=3, nc=self.nc, nb=self.nb, pretrained=None)

    @property
    def config(self) -> dict:
        return {"nc": list(self.nc), "nb": self.nb}

    def forward(self, x: torch.Tensor, sigma, *args, **kwargs) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"expected images of shape (B, 1 or 3, H, W); got {tuple(x.shape)}")
        grey = x.shape[1] == 1
        s = _as_batch_sigma(sigma, x)
        h, w = x.shape[-2:]
        xc = x - 0.5
        if grey:
            xc = xc.expand(-1, 3, -1, -1)
        s2 = s * s + SIGMA_DATA**2
        c_in = torch.rsqrt(s2)
        c_skip = SIGMA_DATA**2 / s2
        c_out = s * SIGMA_DATA * c_in
        out = run_unet(self.net, c_in * xc, torch.log(s) / 4)
        den = c_skip * xc + c_out * out
        if grey:
            den = den.mean(dim=1, keepdim=True)
        return den + 0.5

    def score(self, x: torch.Tensor, sigma) -> torch.Tensor:
        """Tweedie score estimate grad log p_sigma(x) = (D(x, sigma) - x) / sigma^2."""
        s = _as_batch_sigma(sigma, x)
        return (self.forward(x, sigma) - x) / (s * s)


def run_unet(net: DRUNet, inp: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
    """DRUNet's U-Net on (B, 3, H, W) ``inp`` with a conditioning map ``cond`` ((B, 1, 1, 1) or (B, 1, H, W)) as its
    fourth channel; any H, W (reflect-padded to a multiple of 8, at least 32, since DRUNet downsamples 3 times)."""
    h, w = inp.shape[-2:]
    ph, pw = max(32, -(-h // 8) * 8) - h, max(32, -(-w // 8) * 8) - w
    if ph or pw:
        mode = "reflect" if (ph < h and pw < w) else "replicate"
        inp = F.pad(inp, (0, pw, 0, ph), mode=mode)
        if cond.shape[-2:] != (1, 1):
            cond = F.pad(cond, (0, pw, 0, ph), mode="replicate")
    cond = cond.expand(inp.shape[0], 1, *inp.shape[-2:])
    return net.forward_unet(torch.cat([inp, cond], dim=1))[..., :h, :w]


def count_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())

