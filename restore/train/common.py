"""Shared pieces of the training scripts: image loading, random patches, EMA, the cosine lr schedule, atomic
resumable checkpoints."""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from restore.files import save_atomic

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}


def list_images(folder: str | Path) -> list[Path]:
    """Image files under ``folder``, recursively, sorted by relative path."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"training folder not found: {folder}")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"no images in {folder}")
    return files


def load_uint8_images(files: list[Path]) -> list[torch.Tensor]:
    """Decode every file once into a (3, H, W) uint8 tensor (grey files are repeated to 3 channels)."""
    out = []
    for f in files:
        arr = np.asarray(Image.open(f).convert("RGB"))
        out.append(torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous())
    return out


def random_patches(images: list[torch.Tensor], batch: int, patch: int, gen: torch.Generator,
                   grey_fraction: float = 0.0, colour_fraction: float = 0.0) -> torch.Tensor:
    """A (batch, 3, patch, patch) float batch in [0, 1]: random image, crop, flip and 90-degree rotation.

    A ``grey_fraction`` of the patches is made grey (three equal channels) so a colour network also learns grey images.
    A ``colour_fraction`` of the patches gets a random colour change (:func:`colour_jitter`) so a network trained on
    432 mostly earthy photos also meets saturated and rare hues.
    """
    out = torch.empty(batch, 3, patch, patch)
    idx = torch.randint(len(images), (batch,), generator=gen)
    for b, i in enumerate(idx.tolist()):
        img = images[i]
        h, w = img.shape[-2:]
        top = int(torch.randint(h - patch + 1, (1,), generator=gen))
        left = int(torch.randint(w - patch + 1, (1,), generator=gen))
        p = img[:, top:top + patch, left:left + patch].float() / 255.0
        k = int(torch.randint(4, (1,), generator=gen))
        if k:
            p = torch.rot90(p, k, dims=(1, 2))
        if torch.rand(1, generator=gen).item() < 0.5:
            p = p.flip(-1)
        if grey_fraction and torch.rand(1, generator=gen).item() < grey_fraction:
            p = p.mean(0, keepdim=True).expand(3, -1, -1)
        elif colour_fraction and torch.rand(1, generator=gen).item() < colour_fraction:
            p = colour_jitter(p, gen)
        out[b] = p
    return out


def colour_jitter(patch: torch.Tensor, gen: torch.Generator, max_saturation: float = 2.5) -> torch.Tensor:
    """A (3, H, W) patch in [0, 1] with its channels permuted and its saturation scaled by a factor in [1, max].

    Permuting RGB moves hues (a red flower becomes a blue one) without changing any local statistic a photo has;
    scaling the chroma about the pixel's grey value, then clipping, makes the saturated, clipped colours of flower
    close-ups and signs that BSD's landscapes rarely have.
    """
    order = torch.randperm(3, generator=gen).tolist()
    s = 1.0 + (max_saturation - 1.0) * torch.rand(1, generator=gen).item()
    return push_colours(patch, order, s)


def push_colours(x: torch.Tensor, order: list[int], saturation: float) -> torch.Tensor:
    """(..., 3, H, W) in [0, 1] with its channels taken in ``order`` and its chroma scaled by ``saturation`` about
    each pixel's grey value, clipped to [0, 1]."""
    p = x[..., order, :, :]
    grey = p.mean(-3, keepdim=True)
    return (grey + saturation * (p - grey)).clamp(0.0, 1.0)


def centre_crops(images: list[torch.Tensor], size: int) -> torch.Tensor:
    """(N, 3, size, size) float centre crops in [0, 1] (for validation)."""
    crops = []
    for img in images:
        h, w = img.shape[-2:]
        t, l = (h - size) // 2, (w - size) // 2
        crops.append(img[:, t:t + size, l:l + size].float() / 255.0)
    return torch.stack(crops)


def texture(x: torch.Tensor) -> torch.Tensor:
    """Per-image texture of (N, 3, H, W) images in [0, 1]: the std of each one's 3x3 Laplacian, x 255 (N,). Camera
    real-noise crops (CC15, SIDD) measure 2-10 at 64 px, held-out natural-photo crops 28-60."""
    k = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]], dtype=x.dtype).expand(3, 1, 3, 3)
    return torch.nn.functional.conv2d(x, k, groups=3).flatten(1).std(1) * 255


def flattest_crops(images: list[torch.Tensor], size: int) -> torch.Tensor:
    """(N, 3, size, size) float crops in [0, 1], each image's least textured window (:func:`texture`) on a grid of
    stride size // 4: the flat content of real-noise test photos (walls, sky, studio backdrops), which centre crops
    of natural photos lack."""
    crops = []
    for img in images:
        x = img.float()[None] / 255.0
        h, w = x.shape[-2:]
        stride = max(1, size // 4)
        windows = [(t, l) for t in range(0, h - size + 1, stride) for l in range(0, w - size + 1, stride)]
        cands = torch.cat([x[..., t:t + size, l:l + size] for t, l in windows])
        crops.append(cands[int(texture(cands).argmin())])
    return torch.stack(crops)


class EMA:
    """Exponential moving average of a module's parameters and buffers."""

    def __init__(self, module: torch.nn.Module, decay: float):
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in module.state_dict().items()}

    @torch.no_grad()
    def update(self, module: torch.nn.Module, step: int):
        # warm-up as in common practice: short memory early on
        d = min(self.decay, (1 + step) / (10 + step))
        for k, v in module.state_dict().items():
            if v.dtype.is_floating_point:
                self.shadow[k].mul_(d).add_(v.detach(), alpha=1 - d)
            else:
                self.shadow[k].copy_(v)


def half_state_dict(state: dict) -> dict:
    """Float tensors stored as float16 for shipping (loaders cast back to float32), except those float16 cannot hold:
    an overflow, or an underflow to 0 of a value that matters in its tensor (at least 1e-3 of the tensor's largest
    magnitude, e.g. compressai's likelihood bound 1e-9): they stay float32. A conv weight whose few tiny entries
    underflow is still halved (their loss is far below float16's own rounding of the large entries)."""
    def to_half(v):
        if not v.dtype.is_floating_point or v.numel() == 0:
            return v
        h = v.half()
        lost = (h == 0) & (v != 0) & (v.abs() >= 1e-3 * v.abs().max())
        fits = bool(torch.isfinite(h).all() == torch.isfinite(v).all() and not lost.any())
        return h if fits else v

    return {k: to_half(v) for k, v in state.items()}


def cosine_lr(step: int, total: int, lr: float, lr_end: float) -> float:
    """The learning rate at ``step`` of a cosine decay from ``lr`` (step 0) to ``lr_end`` (step ``total`` and after)."""
    frac = min(1.0, max(0.0, step / max(total, 1)))
    return lr_end + (lr - lr_end) * 0.5 * (1 + math.cos(math.pi * frac))


class Clock:
    """Wall time accumulated across resumed runs."""

    def __init__(self, previous_seconds: float = 0.0):
        self.previous = previous_seconds
        self.start = time.time()

    @property
    def total(self) -> float:
        return self.previous + time.time() - self.start


def training_device(name: str, threads: int) -> torch.device:
    """The torch device to train on; on CUDA, cuDNN autotuning and TF32 (the priors are trained in bf16/TF32)."""
    torch.set_num_threads(threads)
    dev = torch.device(name)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return dev


def shipped_weights(out: str | Path) -> tuple[dict, dict] | None:
    """``(float32 state_dict, card)`` of a shipped ``OUT.pt`` + ``OUT.json``, for warm starts; None if absent.

    Warm starts resume the weights and the step count of the card, with a fresh optimiser (its state is never
    committed)."""
    from restore.priors.registry import load_checkpoint

    pt, js = Path(out).with_suffix(".pt"), Path(out).with_suffix(".json")
    if not pt.exists():
        return None
    card = json.loads(js.read_text()) if js.exists() else {}
    return load_checkpoint(pt)["state_dict"], card


class Deadline:
    """``--stop-after MINUTES``: lets a run end (checkpoint + export) inside a time-limited session."""

    def __init__(self, minutes: float | None):
        self.end = None if minutes is None else time.time() + 60 * minutes

    @property
    def passed(self) -> bool:
        return self.end is not None and time.time() > self.end


class Checkpointer:
    """The resumable state of one training run, in one file written atomically: the state of every registered
    object (modules and optimisers by ``state_dict``, an :class:`EMA` by its shadow, a ``torch.Generator`` by its RNG
    state) plus plain fields (step, seconds, log, command, ...). ``non_strict`` names modules loaded with
    ``strict=False`` (a compressai model's entropy tables change size after ``update()``)."""

    def __init__(self, path: str | Path, non_strict: tuple[str, ...] = (), **objects):
        self.path, self.objects, self.non_strict = Path(path), objects, set(non_strict)

    def save(self, **fields):
        state = {}
        for name, obj in self.objects.items():
            if isinstance(obj, torch.Generator):
                state[name] = obj.get_state()
            elif isinstance(obj, EMA):
                state[name] = obj.shadow
            else:
                state[name] = obj.state_dict()
        save_atomic({**state, **fields}, self.path)

    def resume(self, device) -> dict | None:
        """Load the checkpoint into the registered objects; its plain fields, or None when there is no checkpoint."""
        if not self.path.exists():
            return None
        ck = torch.load(self.path, map_location=device, weights_only=False)
        for name, obj in self.objects.items():
            if isinstance(obj, torch.Generator):
                obj.set_state(ck[name].cpu())
            elif isinstance(obj, EMA):
                obj.shadow = ck[name]
            elif isinstance(obj, torch.nn.Module):
                obj.load_state_dict(ck[name], strict=name not in self.non_strict)
            else:
                obj.load_state_dict(ck[name])
        print(f"resumed from {self.path} at step {ck.get('step')}", flush=True)
        return {k: v for k, v in ck.items() if k not in self.objects}


def warm_start(out: str | Path, model: torch.nn.Module, ema: EMA | None = None, strict: bool = True) -> dict | None:
    """With no checkpoint: load the shipped ``OUT.pt`` into ``model`` (and the EMA); returns its card, or None when
    nothing is shipped. The optimisers start fresh (their state is never committed)."""
    shipped = shipped_weights(out)
    if shipped is None:
        return None
    weights, card = shipped
    model.load_state_dict(weights, strict=strict)
    if ema is not None:
        ema.shadow = {k: v.clone() for k, v in model.state_dict().items()}
    print(f"warm start from the shipped {Path(out).with_suffix('.pt')} at step {card.get('steps')} "
          "(fresh optimiser state)", flush=True)
    return card


def training_command(module: str, argv) -> str:
    """How a run was started, as a user would type it."""
    return " ".join([f"python -m {module}"] + (sys.argv[1:] if argv is None else list(argv)))
