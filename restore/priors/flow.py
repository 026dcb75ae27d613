"""Rectified-flow velocity network for PMRF: v(x_t, t), the denoiser's DRUNet with t as its conditioning map.

Trained (``python -m restore.train.flow``) on straight paths ``x_t = t x + (1 - t) z0`` from a posterior-mean
estimate plus source noise, ``z0 = mean + sigma_s n``, to the clean image x, with target velocity ``x - z0``.
Images in [0, 1]; t in [0, 1]; grey images run as three equal channels.
"""

from __future__ import annotations

import torch
from deepinv.models import DRUNet

from restore.priors.denoiser import run_unet


class FlowNet(torch.nn.Module):
    """``forward(x, t)``: x (B, C, H, W), C in {1, 3}; t a float or (B,) tensor in [0, 1]. Returns the velocity."""

    def __init__(self, nc=(32, 64, 128, 256), nb: int = 2):
        super().__init__()
        self.nc, self.nb = tuple(int(c) for c in nc), int(nb)
        self.net = DRUNet(in_channels=3, out_channels=3, nc=self.nc, nb=self.nb, pretrained=None)

    @property
    def config(self) -> dict:
        return {"nc": list(self.nc), "nb": self.nb}

    def forward(self, x: torch.Tensor, t) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"expected images of shape (B, 1 or 3, H, W); got {tuple(x.shape)}")
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device).reshape(-1, 1, 1, 1).expand(x.shape[0], 1, 1, 1)
        grey = x.shape[1] == 1
        xc = (x - 0.5).expand(-1, 3, -1, -1) if grey else x - 0.5
        v = run_unet(self.net, xc, t)
        return v.mean(1, keepdim=True) if grey else v
