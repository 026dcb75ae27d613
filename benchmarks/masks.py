"""Synthetic user masks for the inpainting benchmarks, seeded and written once as PNGs (white = observed).

- ``strokes``: 10-16 straight strokes 1-3 px wide and 30-90 px long at random angles, the scratches or wires a user
  paints out (6-29 % missing at 128 px);
- ``ellipses``: three ellipses with semi-axes of 6-16 px, objects a user removes (5-8 % missing at 128 px).

Calibration never sees either: its inpainting cells were fitted on random pixels and centred boxes
(``restore.train.calibration.GRID``), so these measure how the intervals carry to masks of other shapes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from benchmarks.common import REPO

FOLDER = REPO / "benchmarks" / "masks"


def strokes(size: int, seed: int = 0) -> np.ndarray:
    """(size, size) uint8 mask, 1 = observed, 0 = a stroke pixel."""
    rng = np.random.default_rng(seed)
    m = np.ones((size, size), np.uint8)
    for _ in range(rng.integers(10, 16)):
        x, y = rng.uniform(0, size, 2)
        angle, length, width = rng.uniform(0, np.pi), rng.uniform(30, 90) * size / 128, int(rng.integers(1, 4))
        for t in np.linspace(0, length, int(length * 2)):
            cx, cy = int(x + t * np.cos(angle)), int(y + t * np.sin(angle))
            m[max(cy - width // 2, 0):cy + (width + 1) // 2, max(cx - width // 2, 0):cx + (width + 1) // 2] = 0
    return m


def ellipses(size: int, seed: int = 0) -> np.ndarray:
    """(size, size) uint8 mask, 1 = observed, 0 = inside one of three ellipses."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    m = np.ones((size, size), np.uint8)
    for _ in range(3):
        cx, cy = rng.uniform(20, size - 20, 2)
        a, b = rng.uniform(6, 16, 2) * size / 128
        m[((xx - cx) / a) ** 2 + ((yy - cy) / b) ** 2 < 1] = 0
    return m


KINDS = {"strokes": strokes, "ellipses": ellipses}


def mask_file(kind: str, size: int, seed: int = 0) -> Path:
    """The PNG of mask ``kind`` at ``size`` px, written on first use (the same pixels every time for a seed)."""
    from PIL import Image

    path = FOLDER / f"{kind}_{size}_{seed}.png"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(KINDS[kind](size, seed) * 255).save(path)
    return path
