"""Atomic file writes: write to a temporary name beside the target, then rename, so a kill or a full disk never
leaves a truncated checkpoint, cache entry or results file behind (readers see the old file or the new one)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch


def _replace_via_tmp(path: str | Path, write) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def save_atomic(obj, path: str | Path) -> Path:
    """``torch.save(obj, path)``, atomically."""
    return _replace_via_tmp(path, lambda tmp: torch.save(obj, tmp))


def write_json_atomic(obj, path: str | Path) -> Path:
    """``obj`` as indented JSON (plus a final newline) at ``path``, atomically."""
    return _replace_via_tmp(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=2) + "\n"))
