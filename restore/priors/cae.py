"""Compressive autoencoders (compressai) as priors for VBLE.

Our own small CAEs are compressai's architectures at reduced width, trained here by ``python -m restore.train.cae``
and stored like every prior (``{"config", "state_dict"}`` in float16 + a card). compressai's published zoo
checkpoints load by name for users who are online (``compressai:mbt2018-mean:4``), or from a local state-dict file;
offline, the zoo gives a clear error instead of a hang.
"""

from __future__ import annotations

from pathlib import Path

import torch

ARCHITECTURES = {
    "mbt2018-mean": "MeanScaleHyperprior",  # Minnen et al. 2018 mean-scale hyperprior (no context model)
    "mbt2018": "JointAutoregressiveHierarchicalPriors",  # with the autoregressive context model (VBLE's "mbt")
    "bmshj2018-hyperprior": "ScaleHyperprior",
}


def build(arch: str, N: int, M: int) -> torch.nn.Module:
    """A fresh compressai model of the named architecture with widths N (transforms) and M (latent channels)."""
    import compressai.models as cm

    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown CAE architecture {arch!r}; known: {', '.join(ARCHITECTURES)}")
    return getattr(cm, ARCHITECTURES[arch])(N=N, M=M)


def load_zoo(name: str, local_file: str | Path | None = None) -> torch.nn.Module:
    """compressai zoo model ``compressai:ARCH:QUALITY`` (MSE-trained), e.g. ``compressai:mbt2018-mean:4``.

    With ``local_file`` (a state dict saved from the zoo model, as torch.hub caches it) nothing is downloaded.
    Without it, compressai downloads the published weights; offline this raises a RuntimeError that says so.
    """
    from compressai.zoo import image_models

    parts = name.split(":")
    if len(parts) != 3 or parts[0] != "compressai":
        raise ValueError(f"zoo names look like compressai:mbt2018-mean:4; got {name!r}")
    arch, quality = parts[1], parts[2]
    if arch not in image_models:
        raise ValueError(f"unknown compressai architecture {arch!r}; known: {', '.join(image_models)}")
    if not quality.isdigit() or not 1 <= int(quality) <= 8:
        raise ValueError(f"compressai quality must be 1..8; got {quality!r}")
    if local_file is not None:
        net = image_models[arch](quality=int(quality), metric="mse", pretrained=False)
        state = torch.load(local_file, map_location="cpu", weights_only=True)
        net.load_state_dict(state)
        return net.eval()
    try:
        return image_models[arch](quality=int(quality), metric="mse", pretrained=True, progress=False).eval()
    except Exception as exc:  # URLError / HTTPError / socket errors when offline
        raise RuntimeError(f"cannot download compressai's {arch} quality {quality} weights ({type(exc).__name__}: "
                           f"{exc}); offline, pass a local state-dict file instead") from None
