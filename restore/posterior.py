"""The one result type every solver returns."""

from __future__ import annotations

import json
import re
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch


@dataclass
class Posterior:
    """Posterior summary for one image.

    Attributes:
        mean: (1, C, H, W) MMSE estimate in [0, 1].
        samples: (K, C, H, W) posterior samples in [0, 1], K >= 1.
        std: (1, C, H, W) pixel-wise standard deviation (same units as the image): the calibrated one
            (``restore.calibration``) when a table covers the run, else the raw ``spread``.
        spread: (1, C, H, W) the solver's own std: its posterior std where it gives one (e.g. from a long chain),
            else the unbiased std of ``samples`` (0 when K == 1). Not calibrated.
        meta: solver, prior, task, config, seed, timings (seconds), versions; ``meta['uncertainty']`` says whether
            ``std`` and ``interval`` are calibrated, by which table, with what guarantee, and the self-check.
        calibration: the :class:`restore.calibration.Calibration` behind ``std`` and ``interval``, or None.
        icc_profile: the ICC colour profile of the input file (bytes), or None; ``save`` embeds it in the images
            that live in the input's colour space (mean, samples, observation), not in the colour-mapped std.
    """

    mean: torch.Tensor
    samples: torch.Tensor
    std: torch.Tensor | None = None
    meta: dict = field(default_factory=dict)
    spread: torch.Tensor | None = None
    calibration: object | None = None
    icc_profile: bytes | None = field(default=None, repr=False)  # the input file's colour profile, kept by save()

    def __post_init__(self):
        if self.samples.ndim != 4:
            raise ValueError(f"samples must be (K, C, H, W); got {tuple(self.samples.shape)}")
        if self.mean.ndim == 3:
            self.mean = self.mean[None]
        if self.mean.shape[1:] != self.samples.shape[1:] or self.mean.shape[0] != 1:
            raise ValueError(f"mean {tuple(self.mean.shape)} does not match samples {tuple(self.samples.shape)}")
        if self.std is None:
            k = self.samples.shape[0]
            self.std = self.samples.std(dim=0, keepdim=True) if k > 1 else torch.zeros_like(self.mean)
        self.mean = self.mean.detach().float()
        self.samples = self.samples.detach().float()
        self.std = self.std.detach().float()
        if self.spread is None:
            self.spread = self.std

    @property
    def n_samples(self) -> int:
        return int(self.samples.shape[0])

    def quantile(self, q: float) -> torch.Tensor:
        """Pixel-wise empirical quantile of the samples, (1, C, H, W); q in [0, 1]."""
        if not 0 <= q <= 1:
            raise ValueError(f"quantile q must be in [0, 1]; got {q}")
        return torch.quantile(self.samples, q, dim=0, keepdim=True)

    @property
    def calibrated(self) -> bool:
        return self.calibration is not None

    def interval(self, level: float = 0.9, method: str = "auto", guarantee: str = "crc",
                 delta: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
        """Pixel-wise central interval (lower, upper) at ``level``, each (1, C, H, W).

        ``method='auto'`` gives the calibrated interval when the posterior is calibrated (``meta['uncertainty']``
        states its guarantee: ``guarantee='crc'`` bounds the expected fraction of pixels outside by 1 - level;
        ``'rcps'`` does so with probability >= 1 - ``delta`` over the calibration draw, and is wider), else the raw
        one. The raw forms, always available: ``'quantile'``, the samples' empirical quantiles, and ``'gaussian'``,
        mean +- z * spread; ``'raw'`` picks quantiles when there are enough samples to resolve the tails
        (K >= 2 / (1 - level)), else the Gaussian form.
        """
        if not 0 < level < 1:
            raise ValueError(f"credible level must be in (0, 1); got {level}")
        if method == "auto" and self.calibration is not None:
            return self.calibration.interval(self.mean, level, guarantee, delta)
        if method in ("auto", "raw"):
            method = "quantile" if self.n_samples >= 2 / (1 - level) else "gaussian"
        if method == "quantile":
            a = (1 - level) / 2
            return self.quantile(a), self.quantile(1 - a)
        if method == "gaussian":
            z = float(torch.distributions.Normal(0, 1).icdf(torch.tensor(0.5 + level / 2)))
            return self.mean - z * self.spread, self.mean + z * self.spread
        raise ValueError(f"unknown interval method {method!r}; use 'auto', 'raw', 'quantile' or 'gaussian'")

    def save(self, directory: str | os.PathLike, bit_depth: int = 8, std_format: str = "npy",
             max_samples: int | None = None, extras: dict | None = None,
             truth: torch.Tensor | None = None) -> Path:
        """Write the posterior to ``directory`` (replaced as a whole, atomically; a folder holding files ``save``
        does not write is refused with :class:`OutputError`, never deleted):

        ``mean.png``, ``samples/sample_000.png``..., ``std.npy`` or ``std.tiff`` (float32, (H, W, C)),
        ``spread.npy``/``.tiff`` (the raw sample spread) and ``data_fit.png`` (the self-check's local chi2 map) when
        ``std`` is calibrated, ``std.png`` (colour-mapped with a colour bar) and ``std_scale.json`` (the value range of its colours),
        ``samples_grid.png``, ``meta.json``, any ``extras`` (file name -> image tensor, e.g. the observation) and,
        given the ``truth``, ``error_vs_std.png`` (|error| beside std on one colour scale). PNGs are 8- or 16-bit; the
        input's ICC profile (``icc_profile``) goes into the mean, the samples and the extras.
        Returns the directory.
        """
        from restore import io, viz

        if std_format not in ("npy", "tiff"):
            raise ValueError(f"std_format must be 'npy' or 'tiff'; got {std_format!r}")
        given = Path(directory)
        out = given.resolve()  # "." names its folder too
        check_replaceable(out, extras)
        tmp = out.with_name(f".{out.name}.partial")
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        try:
            io.write_image(tmp / "mean.png", self.mean, bit_depth, self.icc_profile)
            n = self.n_samples if max_samples is None else min(max_samples, self.n_samples)
            for k in range(n):
                io.write_image(tmp / "samples" / f"sample_{k:03d}.png", self.samples[k], bit_depth, self.icc_profile)
            io.write_array(tmp / f"std.{std_format}", self.std[0].permute(1, 2, 0).numpy())
            if self.calibration is not None:  # the solver's own spread beside the calibrated std, and the self-check
                io.write_array(tmp / f"spread.{std_format}", self.spread[0].permute(1, 2, 0).numpy())
                viz.save_data_fit_map(self.calibration.data_fit, tmp / "data_fit.png")
            scale = viz.save_std_heatmap(self.std, tmp / "std.png")
            viz.save_sample_grid(self.samples[:16], tmp / "samples_grid.png")
            if truth is not None:
                viz.save_error_vs_std(self.mean, self.std, truth, tmp / "error_vs_std.png")
            io.write_text(tmp / "std_scale.json", json.dumps(scale, indent=2) + "\n")
            for fname, img in (extras or {}).items():
                io.write_image(tmp / fname, img, bit_depth, self.icc_profile)
            io.write_text(tmp / "meta.json", json.dumps(_jsonable(self.meta), indent=2) + "\n")
            if out.exists():
                shutil.rmtree(out)
            os.replace(tmp, out)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp)
        return given


# what Posterior.save writes; a folder holding anything else is not replaced (OutputError)
OUTPUT_NAMES = frozenset({"mean.png", "samples", "std.npy", "std.tiff", "spread.npy", "spread.tiff", "data_fit.png",
                          "std.png", "std_scale.json", "samples_grid.png", "error_vs_std.png", "meta.json",
                          "observation.png"})  # the extra the CLI, batch and app write


class OutputError(ValueError):
    """An output folder that ``Posterior.save`` will not replace."""


def check_replaceable(out: Path, extras: dict | None = None) -> None:
    """Refuse to replace ``out`` unless it is new, empty, or an earlier restore output (only the files ``save``
    writes, ``extras`` included): save replaces its folder as a whole, and ``-o ~/Pictures`` must not delete a
    user's photos. Raises :class:`OutputError` naming the folder and what it holds."""
    if not out.exists():
        return
    if not out.is_dir():
        raise OutputError(f"output {out} is a file, not a folder: name a new or empty folder")
    entries = list(out.iterdir())
    foreign = sorted(p.name for p in entries if p.name not in OUTPUT_NAMES | set(extras or {}))
    samples = out / "samples"  # a user's own "samples" folder must not pass for ours
    if samples.is_dir():
        foreign += sorted(f"samples/{p.name}" for p in samples.iterdir()
                          if not re.fullmatch(r"sample_\d{3}\.png", p.name))
    elif samples.exists():
        foreign.append("samples")
    if entries and not foreign and not (out / "meta.json").is_file():  # every earlier result has one
        foreign = sorted(p.name for p in entries)
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise OutputError(f"output folder {out} holds files restore did not write ({shown}); results replace their "
                          "folder as a whole, so name a new or empty folder (or a previous result's)")


def _jsonable(obj):
    """Recursively turn tensors, numpy scalars and paths into JSON-friendly values."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return obj.tolist() if obj.numel() <= 16 else f"tensor{tuple(obj.shape)}"
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return str(obj)
