"""Degradation tasks: a compact string form <-> deepinv physics.

Spec grammar: ``KIND[:VARIANT][:key=value,key=value]``; noise levels are on the [0, 1] scale. Examples::

    denoise:gaussian:sigma=0.1          denoise:poisson:gain=0.05        denoise:poisson-gaussian:gain=0.05,sigma=0.02
    denoise:real                        (unknown real-world noise; only solvers that estimate it accept it)
    deblur:gaussian:sigma=2,noise=0.01  deblur:motion:size=19,seed=0,noise=0.01    deblur:kernel:path=k.npy,noise=0.01
    sr:bicubic:factor=4,noise=0.01
    inpaint:random:missing=0.5,seed=0,noise=0.01   inpaint:box:size=0.3,noise=0.01   inpaint:mask:path=mask.png
    denoise:gaussian:sigma=auto         deblur:gaussian:sigma=2,noise=auto   (the level estimated from the image)

``auto`` for a noise level (``sigma`` of ``denoise:gaussian``, ``noise`` of the deblur tasks) stands for the std
estimated from the observation itself (``restore.noise``, which reads real camera noise too); :meth:`Task.resolved`
replaces it, and ``restore.api.Restorer`` does so for every run, saying the estimate in ``meta["noise_estimate"]``.

``str(parse(s))`` is canonical and ``parse(str(task)) == task`` always holds. A task builds deepinv ``LinearPhysics``
for a given image size (:meth:`Task.physics`) and degrades clean images for demos and benchmarks
(:meth:`Task.simulate`). Blur uses ``deepinv.physics.Blur`` with reflect padding (any size, no circular
wrap-around, as in the VBLE paper); SR uses ``Downsampling`` with the bicubic filter; inpainting masks are drawn
from the spec's seed so a spec always means the same mask for a given size.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

KINDS = {
    "denoise": ("gaussian", "poisson", "poisson-gaussian", "real"),
    "deblur": ("gaussian", "motion", "kernel"),
    "sr": ("bicubic",),
    "inpaint": ("random", "box", "mask"),
}


def kind_of(physics) -> str | None:
    """The task kind ('denoise', 'deblur', 'sr', 'inpaint') of a deepinv physics built by :meth:`Task.physics`
    (or of its FFT blur), or None for another physics."""
    return {"Denoising": "denoise", "Blur": "deblur", "BlurFFT": "deblur", "Downsampling": "sr",
            "Inpainting": "inpaint"}.get(type(physics).__name__)


# Inpainting splits by the mask's geometry: scattered missing pixels ('inpaint-random': each within this many pixels
# of an observed one; 50-95 % random masks measure 2-8 px at 128-512 px) against holes wider than that
# ('inpaint-region': a 30 % box is 19-77 px deep at 128-512 px), which need the solver to build structure a
# neighbourhood cannot give. A solver's per-family settings may differ between the two (none do today: a longer
# RED-Diff schedule on regions was tried and not kept, docs/solvers.md); the calibration tables split by the spec.
REGION_RADIUS = 8
# the settings families of the tasks the benchmarks and calibration tables cover (Task.family; other SR factors give
# 'sr3', ...), for checks over all of them
FAMILIES = ("denoise", "deblur", "sr2", "sr4", "inpaint-random", "inpaint-region")


def hole_radius(mask: torch.Tensor, cap: int = 64) -> int:
    """How far (chessboard pixels) the farthest missing pixel lies from an observed one, for a mask (..., H, W)
    with 1 = observed (its first channel is read); 0 for a mask with no missing pixel, ``cap`` at most."""
    seen = (mask.reshape(-1, *mask.shape[-2:])[:1, None] > 0).float()
    if bool(seen.all()):
        return 0
    if not bool(seen.any()):
        return cap
    for r in range(1, cap + 1):
        seen = torch.nn.functional.max_pool2d(seen, 3, stride=1, padding=1)
        if bool(seen.all()):
            return r
    return cap


def family_of(physics) -> str | None:
    """The settings family of a physics built by :meth:`Task.physics`: its kind, with inpainting split by the mask
    into 'inpaint-random' and 'inpaint-region' (:data:`REGION_RADIUS`) and super-resolution by its factor ('sr2',
    'sr4'; a per-family table keyed 'sr' covers every factor: ``restore.provenance.family_entry``).
    :attr:`Task.family` names the same families from a spec, and real noise, whose physics carries no noise level,
    'denoise-real' where this says 'denoise'."""
    kind = kind_of(physics)
    if kind == "inpaint":
        return "inpaint-region" if hole_radius(physics.mask) > REGION_RADIUS else "inpaint-random"
    if kind == "sr":
        return f"sr{int(physics.factor)}"
    return kind


# Parameters each variant accepts, with defaults (None = required).
PARAMS = {
    ("denoise", "gaussian"): {"sigma": None},
    ("denoise", "poisson"): {"gain": None},
    ("denoise", "poisson-gaussian"): {"gain": None, "sigma": None},
    ("denoise", "real"): {},
    ("deblur", "gaussian"): {"sigma": 2.0, "noise": 0.01},
    ("deblur", "motion"): {"size": 19, "seed": 0, "noise": 0.01},
    ("deblur", "kernel"): {"path": None, "noise": 0.01},
    ("sr", "bicubic"): {"factor": 4, "noise": 0.01},
    ("inpaint", "random"): {"missing": 0.5, "seed": 0, "noise": 0.01},
    ("inpaint", "box"): {"size": 0.3, "noise": 0.01},
    ("inpaint", "mask"): {"path": None, "noise": 0.01},
}
MAX_SIGMA = 1.0  # a noise std above the whole [0, 1] range is treated as a mistake
AUTO = "auto"  # a noise level estimated from the observation (Task.resolved)
# where an observation is a whole image at full size: a small SR input reads its texture as noise (x4 of a 128 px
# crop: 0.046 for a true 0.01), and an inpainting's holes and masked pixels defeat the flat-patch search
AUTO_PARAMS = {("denoise", "gaussian"): "sigma", **{("deblur", v): "noise" for v in KINDS["deblur"]}}
MIN_AUTO_SIGMA = 1e-3  # an estimate of a clean-looking image still gives the solvers a positive level


class TaskError(ValueError):
    """A task spec that cannot be parsed or does not fit the image; the message says why."""


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


@dataclass(frozen=True)
class Task:
    """A degradation: ``kind`` in KINDS, ``variant`` one of its variants, ``params`` a sorted tuple of (key, value)."""

    kind: str
    variant: str
    params: tuple = field(default_factory=tuple)

    # ---- construction -------------------------------------------------------------------------------------------
    @classmethod
    def make(cls, kind: str, variant: str | None = None, **params) -> "Task":
        if kind not in KINDS:
            raise TaskError(f"unknown task kind {kind!r}; known kinds: {', '.join(KINDS)}")
        variant = variant or KINDS[kind][0]
        if variant not in KINDS[kind]:
            raise TaskError(f"unknown {kind} variant {variant!r}; known: {', '.join(KINDS[kind])}")
        spec = PARAMS[(kind, variant)]
        unknown = set(params) - set(spec)
        if unknown:
            raise TaskError(f"{kind}:{variant} takes {', '.join(spec) or 'no parameters'}; "
                            f"unknown: {', '.join(sorted(unknown))}")
        full = {}
        for key, default in spec.items():
            if key in params and str(params[key]).strip().lower() == AUTO:
                if AUTO_PARAMS.get((kind, variant)) != key:
                    raise TaskError(f"{kind}:{variant} cannot estimate {key!r}: 'auto' is for the noise level of "
                                    "denoise:gaussian (sigma) and deblur tasks (noise), whose observation is a whole "
                                    "image; give a number")
                full[key] = AUTO
            elif key in params:
                full[key] = _coerce(key, params[key])
            elif default is None:
                raise TaskError(f"{kind}:{variant} needs the parameter {key!r}")
            else:
                full[key] = default
        if (kind, variant) == ("deblur", "motion"):
            if full["size"] != int(full["size"]):
                raise TaskError(f"motion kernel size must be a whole number of pixels; got {full['size']}")
            full["size"] = int(full["size"])
        task = cls(kind, variant, tuple(sorted(full.items())))
        task._validate()
        return task

    def _validate(self):
        p = {k: v for k, v in self.p.items() if v != AUTO}
        if self.kind == "denoise" and "sigma" in p and not (0 < p["sigma"] <= MAX_SIGMA):
            raise TaskError(f"noise level sigma={p['sigma']} is out of range: give the std on the [0, 1] scale "
                            f"(e.g. 25/255 = {25 / 255:.4f}), above 0 and at most {MAX_SIGMA}")
        if "noise" in p and not (0 <= p["noise"] <= MAX_SIGMA):
            raise TaskError(f"noise level noise={p['noise']} is out of range: give the std on the [0, 1] scale "
                            f"(e.g. 2.55/255 = 0.01), between 0 and {MAX_SIGMA}")
        if self.kind == "deblur" and self.variant == "gaussian" and not (0.1 <= p["sigma"] <= 25):
            raise TaskError(f"blur sigma={p['sigma']} pixels is out of range [0.1, 25]")
        if "gain" in p and not (0 < p["gain"] <= 10):
            raise TaskError(f"Poisson gain={p['gain']} is out of range (0, 10]")
        if self.kind == "sr" and p["factor"] not in (2, 3, 4, 8):
            raise TaskError(f"SR factor must be 2, 3, 4 or 8; got {p['factor']}")
        if self.kind == "deblur" and self.variant == "motion" and not (3 <= p["size"] <= 101):
            raise TaskError(f"motion kernel size must be in [3, 101]; got {p['size']}")
        if self.kind == "inpaint" and self.variant == "random" and not (0 <= p["missing"] < 1):
            raise TaskError(f"missing fraction must be in [0, 1); got {p['missing']}")
        if self.kind == "inpaint" and self.variant == "box" and not (0 < p["size"] < 1):
            raise TaskError(f"box size (fraction of each side) must be in (0, 1); got {p['size']}")

    @property
    def p(self) -> dict:
        return dict(self.params)

    def __str__(self) -> str:
        s = f"{self.kind}:{self.variant}"
        if self.params:
            s += ":" + ",".join(f"{k}={_fmt(v)}" for k, v in self.params)
        return s

    # ---- noise ---------------------------------------------------------------------------------------------------
    @property
    def auto(self) -> bool:
        """True when the noise level is ``auto`` (to be estimated from the observation: :meth:`resolved`)."""
        return AUTO in self.p.values()

    def resolved(self, y: torch.Tensor) -> tuple["Task", dict | None]:
        """This task with an ``auto`` noise level replaced by the estimate from the observation y (1, C, h, w) in
        [0, 1] (``restore.noise``), and a note of it ({"param", "sigma", "sigma_255", "method"}); (self, None)
        when nothing is ``auto``."""
        if not self.auto:
            return self, None
        from restore.noise import estimate_noise

        est = estimate_noise(y)
        key = AUTO_PARAMS[(self.kind, self.variant)]
        sigma = float(_fmt(min(max(float(est.sigma), MIN_AUTO_SIGMA), MAX_SIGMA)))  # as str(task) writes it
        task = Task.make(self.kind, self.variant, **{**self.p, key: sigma})
        return task, {"param": key, "sigma": sigma, "sigma_255": round(255 * sigma, 3),
                      "method": est.method}

    @property
    def noise_sigma(self) -> float | None:
        """Gaussian noise std on the [0, 1] scale (None for unknown real noise)."""
        if self.auto:
            raise TaskError(f"{self} has its noise level still 'auto': resolve it against the observation first "
                            "(Task.resolved(y); restore.Restorer does this)")
        p = self.p
        if self.kind == "denoise":
            return p.get("sigma", 0.0) if self.variant != "real" else None
        return p["noise"]

    @property
    def poisson_gain(self) -> float | None:
        return self.p.get("gain")

    def effective_sigma(self, y: torch.Tensor) -> float:
        """A Gaussian std standing for the whole noise (for Gaussian likelihoods and denoiser levels).

        Poisson noise with gain g has variance g * x; with x ~ mean(y) this gives sqrt(g * mean(y) + sigma^2).
        Floored at 1e-3 so noiseless tasks keep a well-posed likelihood.
        """
        sigma = self.noise_sigma
        if sigma is None:
            raise TaskError("denoise:real has no known noise level; use a solver that estimates it (scoredvi)")
        var = sigma**2
        if self.poisson_gain:
            var += self.poisson_gain * float(y.clamp_min(0).mean())
        return max(math.sqrt(var), 1e-3)

    def noise_model(self, generator: torch.Generator | None = None):
        import deepinv as dinv

        gain, sigma = self.poisson_gain, self.noise_sigma or 0.0
        if gain and sigma:
            return dinv.physics.PoissonGaussianNoise(gain=gain, sigma=sigma, rng=generator)
        if gain:
            return dinv.physics.PoissonNoise(gain=gain, normalize=True, rng=generator)
        return dinv.physics.GaussianNoise(sigma=sigma, rng=generator)

    @property
    def family(self) -> str:
        """The settings family (:func:`family_of`) of this spec: its kind, with inpainting 'inpaint-random' for
        random masks and 'inpaint-region' for boxes and user masks (the calibration family; a solver reads the mask's
        geometry instead, and the two agree for random masks up to 95 % missing and boxes of at least 0.2 at 128-512
        px), super-resolution 'sr' with its factor ('sr2', 'sr4'), and real (unknown) noise 'denoise-real' (the
        calibration family; a per-family table keyed 'denoise' covers it: ``restore.provenance.family_entry``)."""
        if self.kind == "denoise" and self.variant == "real":
            return "denoise-real"
        if self.kind == "inpaint":
            return "inpaint-random" if self.variant == "random" else "inpaint-region"
        if self.kind == "sr":
            return f"sr{self.scale}"
        return self.kind

    # ---- geometry -----------------------------------------------------------------------------------------------
    @property
    def scale(self) -> int:
        return int(self.p["factor"]) if self.kind == "sr" else 1

    def x_shape(self, y_shape) -> tuple:
        """Shape of the restored image for an observation of shape ``y_shape`` (B, C, h, w)."""
        b, c, h, w = y_shape
        return (b, c, h * self.scale, w * self.scale)

    def y_shape(self, x_shape) -> tuple:
        b, c, h, w = x_shape
        f = self.scale
        if h % f or w % f:
            raise TaskError(f"image size {w}x{h} is not divisible by the SR factor {f}: crop it to "
                            f"{w - w % f}x{h - h % f} first")
        return (b, c, h // f, w // f)

    # ---- physics ------------------------------------------------------------------------------------------------
    def kernel(self) -> torch.Tensor | None:
        """Blur kernel (1, 1, k, k), normalised to sum 1, or None for non-blur tasks."""
        if self.kind != "deblur":
            return None
        p = self.p
        if self.variant == "gaussian":
            from deepinv.physics.functional import gaussian_blur

            return gaussian_blur(sigma=(float(p["sigma"]), float(p["sigma"])))  # always a pair: see notes/deepinv.md
        if self.variant == "motion":
            from deepinv.physics.generator import MotionBlurGenerator

            size = int(p["size"])
            gen = MotionBlurGenerator((size, size), rng=torch.Generator().manual_seed(int(p["seed"])))
            k = gen.step(1, seed=int(p["seed"]))["filter"]
        else:
            k = load_kernel(p["path"])
        return k / k.sum()

    def mask(self, x_shape, device="cpu") -> torch.Tensor | None:
        """Inpainting mask (1, 1, H, W), 1 = observed, or None for other tasks."""
        if self.kind != "inpaint":
            return None
        _, _, h, w = x_shape
        p = self.p
        if self.variant == "random":
            g = torch.Generator().manual_seed(int(p["seed"]))
            m = (torch.rand(1, 1, h, w, generator=g) >= p["missing"]).float()
        elif self.variant == "box":
            m = torch.ones(1, 1, h, w)
            bh, bw = max(1, round(h * p["size"])), max(1, round(w * p["size"]))
            t, l = (h - bh) // 2, (w - bw) // 2
            m[..., t:t + bh, l:l + bw] = 0
        else:
            m = load_mask(p["path"])
            if m.shape[-2:] != (h, w):
                raise TaskError(f"mask {p['path']} is {m.shape[-1]}x{m.shape[-2]} but the image is {w}x{h}: "
                                "they must have the same size")
        return m.to(device)

    def physics(self, x_shape, device="cpu", generator: torch.Generator | None = None,
                mask: torch.Tensor | None = None):
        """deepinv LinearPhysics acting on images of shape ``x_shape`` (B, C, H, W). ``mask`` (1, 1, H, W) replaces
        the spec's inpainting mask (tiles pass their crop of the full image's mask)."""
        import deepinv as dinv

        _, c, h, w = x_shape
        noise = self.noise_model(generator) if self.variant != "real" else dinv.physics.GaussianNoise(sigma=0.0)
        if self.kind == "denoise":
            return dinv.physics.Denoising(noise_model=noise, device=device)
        if self.kind == "deblur":
            k = self.kernel()
            if k.shape[-1] > min(h, w) or k.shape[-2] > min(h, w):
                raise TaskError(f"blur kernel {k.shape[-1]}x{k.shape[-2]} is larger than the image {w}x{h}")
            return dinv.physics.Blur(filter=k.to(device), padding="reflect", noise_model=noise, device=device)
        if self.kind == "sr":
            self.y_shape(x_shape)
            from deepinv.physics.functional.blur import bicubic_filter

            k = bicubic_filter(self.scale).shape[-1]
            if min(h, w) <= k // 2:
                raise TaskError(f"image {w}x{h} is too small for x{self.scale} SR: each side of the restored image "
                                f"must exceed {k // 2} pixels (the bicubic filter's reach)")
            return dinv.physics.Downsampling(img_size=(c, h, w), filter=bicubic_filter(self.scale), factor=self.scale,
                                             padding="reflect", noise_model=noise, device=device)
        mask = (self.mask(x_shape, device) if mask is None else mask.to(device)).expand(1, c, h, w).contiguous()
        return dinv.physics.Inpainting(img_size=(c, h, w), mask=mask, noise_model=noise, device=device)

    def simulate(self, x: torch.Tensor, generator: torch.Generator | None = None):
        """Degrade a clean image x (B, C, H, W) in [0, 1]; returns (y, physics). Same generator state, same y."""
        if self.variant == "real":
            raise TaskError("denoise:real cannot be simulated: it stands for unknown noise in a real photo")
        if self.auto:
            raise TaskError(f"{self} cannot be simulated: 'auto' estimates the noise of an observation; give the "
                            "noise level to add as a number")
        physics = self.physics(tuple(x.shape), device=x.device, generator=generator)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            y = physics(x)
        if self.kind == "inpaint":
            y = y * physics.mask  # missing pixels read as 0, not as pure noise
        return y, physics


INT_PARAMS = ("seed", "factor")


def _coerce(key: str, value):
    if key == "path":
        return str(value)
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TaskError(f"parameter {key}={value!r} is not a number") from None
    if not math.isfinite(v):
        raise TaskError(f"parameter {key}={value!r} must be finite")
    if key in INT_PARAMS:
        if v != int(v):
            raise TaskError(f"parameter {key}={value!r} must be a whole number")
        return int(v)
    return v


def parse(spec: "str | Task") -> Task:
    """Parse ``KIND[:VARIANT][:key=value,...]`` (see the module docstring). Also accepts ``sr:x4``."""
    if isinstance(spec, Task):
        return spec
    if not isinstance(spec, str) or not spec.strip():
        raise TaskError(f"a task spec must be a non-empty string like 'denoise:gaussian:sigma=0.1'; got {spec!r}")
    parts = spec.strip().split(":", 2)
    kind = parts[0].strip().lower()
    variant, params = None, {}
    rest = parts[1:]
    if rest and "=" not in rest[0]:
        variant = rest.pop(0).strip().lower()
        if kind == "sr" and variant.startswith("x") and variant[1:].isdigit():
            params["factor"] = variant[1:]
            variant = "bicubic"
    if rest:
        for item in ":".join(rest).split(","):
            if not item.strip():
                continue
            if "=" not in item:
                raise TaskError(f"cannot read {item!r} in task spec {spec!r}: parameters are key=value")
            k, v = item.split("=", 1)
            params[k.strip()] = v.strip()
    return Task.make(kind, variant, **params)


def load_kernel(path: str) -> torch.Tensor:
    """A blur kernel from .npy (2-D float array) or an image file; returned as (1, 1, k, k), non-negative."""
    p = Path(path)
    if not p.exists():
        raise TaskError(f"kernel file not found: {p}")
    if p.suffix == ".npy":
        arr = np.load(p)
    else:
        from restore.io import read_image

        arr = read_image(p).mean(1)[0].numpy()
    arr = np.asarray(arr, dtype=np.float32)
    if arr.ndim != 2 or min(arr.shape) < 1 or max(arr.shape) > 101:
        raise TaskError(f"kernel {p} must be a 2-D array of at most 101x101; got shape {arr.shape}")
    if not np.isfinite(arr).all() or arr.min() < 0 or arr.sum() <= 0:
        raise TaskError(f"kernel {p} must be finite and non-negative with a positive sum")
    return torch.from_numpy(arr)[None, None]


def load_mask(path: str) -> torch.Tensor:
    """An inpainting mask image: white (>= 0.5) = observed, black = missing; returned as (1, 1, H, W) in {0, 1}."""
    from restore.io import read_image

    p = Path(path)
    if not p.exists():
        raise TaskError(f"mask file not found: {p}")
    m = read_image(p).mean(1, keepdim=True)
    return (m >= 0.5).float()
