"""One registry of priors: a name -> a loader returning a :class:`Prior` (an ``nn.Module`` plus its model card).

Weight-free priors (``wavelet``, ``tv``) need no files. Trained priors are loaded from ``models/NAME.pt`` with the
card ``models/NAME.json`` beside it; the models folder is ``$RESTORE_MODELS`` or the repository's ``models/``.
Weights are stored in float16 and cast to float32 on load. Nothing is ever downloaded.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch


class PriorError(ValueError):
    """Unknown prior name, missing or unusable checkpoint; the message says which and what to do."""


@dataclass
class Prior:
    """A loaded prior: ``module`` (eval mode, no grad on its parameters) and its ``card`` (name, kind, architecture,
    training data, steps, measured quality). ``kind`` is one of 'denoiser', 'cae', 'flow', 'tokens'."""

    name: str
    kind: str
    module: torch.nn.Module
    card: dict = field(default_factory=dict)
    digest: str | None = None  # identity of what it was loaded from (``digest``), set by ``load``; copies keep it

    def to(self, device) -> "Prior":
        self.module.to(device)
        return self


@dataclass(frozen=True)
class PriorSpec:
    kind: str
    loader: Callable[[], Prior]
    description: str
    file: str | None = None  # checkpoint stem under the models folder, if any


def models_dir() -> Path:
    """``$RESTORE_MODELS``, else the checkout's ``models/`` (a source tree or an editable install), else the copy an
    installed wheel carries (``restore/_models``)."""
    env = os.environ.get("RESTORE_MODELS")
    if env:
        return Path(env)
    package = Path(__file__).resolve().parents[1]
    checkout = package.parent / "models"
    if checkout.is_dir() and (package.parent / "pyproject.toml").exists():
        return checkout
    installed = package / "_models"
    return installed if installed.is_dir() else checkout


def _frozen(module: torch.nn.Module) -> torch.nn.Module:
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def _wavelet() -> Prior:
    from deepinv.models import WaveletDenoiser

    card = {"name": "wavelet", "kind": "denoiser", "architecture": "orthogonal db8 wavelet soft-thresholding, 3 levels "
            "(deepinv WaveletDenoiser); sigma is the threshold", "training_data": "none (weight-free)", "steps": 0}
    return Prior("wavelet", "denoiser", _frozen(WaveletDenoiser(level=3, wv="db8")), card)


def _tv() -> Prior:
    from deepinv.models import TVDenoiser

    card = {"name": "tv", "kind": "denoiser", "architecture": "isotropic total-variation proximal operator, 20 "
            "primal-dual iterations (deepinv TVDenoiser); sigma is the regularisation weight",
            "training_data": "none (weight-free)", "steps": 0}
    return Prior("tv", "denoiser", _frozen(TVDenoiser(n_it_max=20)), card)


def load_checkpoint(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.exists():
        raise PriorError(f"checkpoint not found: {path}. Train it (see models/MODELS.md) or set $RESTORE_MODELS")
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise PriorError(f"cannot load checkpoint {path}: {type(exc).__name__}: {exc}") from None
    if not isinstance(ck, dict) or "state_dict" not in ck or "config" not in ck:
        raise PriorError(f"{path} is not a restore checkpoint (expected a dict with 'config' and 'state_dict')")
    # compressai's LowerBound constants (likelihood bound 1e-9) are architecture constants that older float16 files
    # hold as 0, which makes log-likelihoods -inf: drop those so the freshly built module keeps its own (the CAE
    # loaders are non-strict)
    ck["state_dict"] = {k: (v.float() if v.is_floating_point() else v) for k, v in ck["state_dict"].items()
                        if not (k.endswith(".bound") and not bool(v.float().abs().max() > 0))}
    return ck


_DIGESTS: dict = {}


def file_digest(stem: str) -> str:
    """sha256 (16 hex digits) of ``models/STEM.pt`` and its card ``STEM.json``: the identity of a trained prior, which
    changes when it is retrained or its card recalibrated. Cached per file size and modification time."""
    files = [models_dir() / f"{stem}.pt", models_dir() / f"{stem}.json"]
    key = tuple((str(f), *((f.stat().st_size, f.stat().st_mtime_ns) if f.exists() else ())) for f in files)
    if key not in _DIGESTS:
        import hashlib

        h = hashlib.sha256()
        for f in files:
            h.update(f.read_bytes() if f.exists() else b"missing")
        _DIGESTS[key] = h.hexdigest()[:16]
    return _DIGESTS[key]


def quantised_name(name: str, scheme: str | None) -> str:
    """The run name of prior ``name`` under quantisation ``scheme``: NAME@SCHEME, or NAME in float (None)."""
    return f"{name}@{scheme}" if scheme else name


def split_name(name: str) -> tuple[str, str | None]:
    """(registered name, scheme or None) of a run name from :func:`quantised_name`."""
    base, _, scheme = name.partition("@")
    return base, scheme or None


def digest(name: str) -> str:
    """The identity of registered prior ``name`` as it would load now: its files' digest, or 'builtin' for a
    weight-free prior. A quantised copy (NAME@SCHEME) has its float weights' digest."""
    s = spec(split_name(name)[0])
    return file_digest(s.file) if s.file else "builtin"


def read_card(stem: str) -> dict:
    f = models_dir() / f"{stem}.json"
    return json.loads(f.read_text()) if f.exists() else {"name": stem}


def _trained(stem: str, kind: str, builder: str, strict: bool = True) -> Callable[[], Prior]:
    """Loader of a checkpoint ``models/STEM.pt``: ``builder`` ("module:callable") makes the network from the saved
    config; ``strict=False`` for compressai models, which resize their CDF buffers themselves."""
    def load() -> Prior:
        import importlib

        mod, fn = builder.split(":")
        ck = load_checkpoint(models_dir() / f"{stem}.pt")
        net = getattr(importlib.import_module(mod), fn)(**ck["config"])
        try:
            net.load_state_dict(ck["state_dict"], strict=strict)
        except RuntimeError as exc:
            raise PriorError(f"checkpoint {stem}.pt does not fit {fn}({ck['config']}): {exc}") from None
        return Prior(stem, kind, _frozen(net), read_card(stem), file_digest(stem))

    return load


def _shipped(stem: str, kind: str, builder: str, description: str, strict: bool = True) -> PriorSpec:
    return PriorSpec(kind, _trained(stem, kind, builder, strict), description, stem)


PRIORS: dict[str, PriorSpec] = {
    "wavelet": PriorSpec("denoiser", _wavelet, "weight-free wavelet soft-thresholding (baseline)"),
    "tv": PriorSpec("denoiser", _tv, "weight-free total variation (baseline)"),
    "score-natural": _shipped("score-natural", "denoiser", "restore.priors.denoiser:ScoreDenoiser",
                              "noise-conditional DRUNet denoiser / score network trained on BSD432"),
    "cae-natural-q4": _shipped("cae-natural-q4", "cae", "restore.priors.cae:build",
                               "compressai mbt2018-mean CAE (N=64, M=96) trained on BSD432 at lambda 0.0130: the "
                               "middle rate; VBLE runs it for deblurring", strict=False),
    "cae-natural-q2": _shipped("cae-natural-q2", "cae", "restore.priors.cae:build",
                               "compressai mbt2018-mean CAE (N=64, M=96) trained on BSD432 at lambda 0.0035: "
                               "the lowest rate; VBLE runs it for x4 SR",
                               strict=False),
    "cae-natural-q6": _shipped("cae-natural-q6", "cae", "restore.priors.cae:build",
                               "compressai mbt2018-mean CAE (N=64, M=96) trained on BSD432 at lambda 0.0483: "
                               "the highest rate, most detail kept; VBLE's default prior, run for denoising, x2 SR "
                               "and inpainting", strict=False),
    "flow-natural": _shipped("flow-natural", "flow", "restore.priors.flow:FlowNet",
                             "rectified-flow velocity network from posterior means to clean images (PMRF)"),
    "tokens-natural": _shipped("tokens-natural", "tokens", "restore.priors.tokens:TokenPrior",
                               "FSQ tokenizer + masked-token transformer (APS)"),
}


def names(kind: str | None = None) -> list[str]:
    return [n for n, s in PRIORS.items() if kind is None or s.kind == kind]


def available(kind: str | None = None) -> list[str]:
    """Registered priors whose files are on disk."""
    return [n for n in names(kind) if PRIORS[n].file is None or (models_dir() / f"{PRIORS[n].file}.pt").exists()]


def spec(name: str) -> PriorSpec:
    if name not in PRIORS:
        raise PriorError(f"unknown prior {name!r}; known priors: {', '.join(PRIORS)}")
    return PRIORS[name]


_TABLES: dict = {}


def options_key(options: dict | None) -> str:
    """The file-name tag of a run's explicit solver options (``preset=paper``; several joined by ',', sorted), or ''
    for none: a table fitted with options is ``SOLVER.PRIOR+TAG.json`` (:func:`calibration_table`). The prior an
    option names is not part of it (the file name holds the prior already)."""
    return ",".join(f"{k}={v}" for k, v in sorted((options or {}).items()) if k != "prior")


def calibration_table(solver: str | None, prior: str | None, options: dict | None = None) -> dict | None:
    """The calibration table of a (solver, prior) pair, ``models/calibration/SOLVER.PRIOR.json`` (fitted by
    ``python -m restore.train.calibration``; read by ``restore.calibration``), or None when there is none.
    A quantised prior (NAME@SCHEME, e.g. RED-Diff's default int8 denoiser) has its own table, fitted with that
    scheme (``SOLVER.NAME@SCHEME.json``): its outputs differ from the float ones. A run with explicit solver
    ``options`` (``-O preset=paper``) takes the table fitted with exactly those options,
    ``SOLVER.PRIOR+preset=paper.json``, where one is shipped, and otherwise the defaults' table (which then tells
    the run that its settings differ: ``restore.calibration.table_mismatch``)."""
    if not solver or not prior:
        return None
    if options_key(options) and (found := _read_table(calibration_table_path(solver, prior, options))) is not None:
        return found
    return _read_table(calibration_table_path(solver, prior))


def calibration_table_path(solver: str, prior: str, options: dict | None = None) -> Path:
    """The file of the table of ``solver`` / ``prior`` fitted with explicit solver ``options`` (none: the defaults'
    table), where ``python -m restore.train.calibration`` writes it and :func:`calibration_table` looks."""
    tag = options_key(options)
    return models_dir() / "calibration" / f"{solver}.{prior}{f'+{tag}' if tag else ''}.json"


def split_table_name(stem: str) -> tuple[str, str, dict]:
    """(solver, prior, options) of a table file's stem, ``SOLVER.PRIOR`` or ``SOLVER.PRIOR+k=v,...`` (the
    options' values as strings)."""
    solver, rest = stem.split(".", 1)
    prior, _, tag = rest.partition("+")
    return solver, prior, dict(kv.split("=", 1) for kv in tag.split(",")) if tag else {}


def _read_table(f: Path) -> dict | None:
    key = (str(f), f.stat().st_mtime_ns if f.exists() else None)
    if key not in _TABLES:
        if key[1] is None:
            return None
        try:
            table = json.loads(f.read_text())
        except (OSError, ValueError) as exc:
            raise PriorError(f"calibration table {f} is unreadable: {exc}") from None
        table["file"] = f"calibration/{f.name}"
        _TABLES[key] = table
    return _TABLES[key]


def load(name: str, device: str | torch.device = "cpu") -> Prior:
    """Load a registered prior by name onto ``device``."""
    from restore import provenance

    prior = spec(name).loader().to(device)
    if prior.digest is None:  # a weight-free prior built in code
        prior.digest = digest(name)
    provenance.note_prior(name, prior.digest)
    return prior
