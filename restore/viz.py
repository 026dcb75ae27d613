"""Uncertainty visualisation: std heat-maps with a value scale, sample grids, |error| beside std, reliability plots.

All functions draw with matplotlib's Agg backend (no display needed) and write PNG files.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

CMAP = "magma"


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _grey_map(t: torch.Tensor) -> np.ndarray:
    """(1, C, H, W) or (C, H, W) -> (H, W), averaging channels (std maps are shown per pixel)."""
    if t.ndim == 4:
        t = t[0]
    return t.detach().float().mean(0).cpu().numpy()


def std_scale(std: torch.Tensor, vmax: float | None = None) -> dict:
    """The value range a std heat-map uses: 0 to the 99.5th percentile (robust to a few hot pixels)."""
    m = _grey_map(std)
    top = float(np.percentile(m, 99.5)) if vmax is None else float(vmax)
    return {"vmin": 0.0, "vmax": max(top, 1e-6), "colormap": CMAP, "units": "posterior std on the [0, 1] image scale",
            "reduction": "mean over colour channels"}


def _save(fig, path):
    from restore.io import _atomic

    path = Path(path)
    _atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight"))
    _plt().close(fig)
    return path


def _map_figure(maps, titles, vmax, label):
    plt = _plt()
    h, w = maps[0].shape
    n = len(maps)
    fig, axes = plt.subplots(1, n, figsize=(min(4.5 * n, 16), 4.5 * h / max(w, 1) + 0.6), squeeze=False)
    im = None
    for ax, m, title in zip(axes[0], maps, titles):
        im = ax.imshow(m, cmap=CMAP, vmin=0, vmax=vmax, interpolation="nearest")
        ax.set_title(title)
        ax.axis("off")
    cb = fig.colorbar(im, ax=list(axes[0]), fraction=0.046 / n ** 0.5, pad=0.02)
    cb.set_label(label)
    return fig


def save_std_heatmap(std: torch.Tensor, path, vmax: float | None = None) -> dict:
    """Colour-mapped std map with a colour bar; returns the scale (vmin, vmax, colormap) it used."""
    scale = std_scale(std, vmax)
    fig = _map_figure([_grey_map(std)], ["posterior std"], scale["vmax"], "std ([0, 1] scale)")
    _save(fig, path)
    return scale


def save_error_vs_std(mean: torch.Tensor, std: torch.Tensor, truth: torch.Tensor, path) -> dict:
    """|error| of the mean and the posterior std side by side on one colour scale; returns the scale."""
    err = (mean - truth).abs()
    vmax = float(np.percentile(np.concatenate([_grey_map(err).ravel(), _grey_map(std).ravel()]), 99.5))
    fig = _map_figure([_grey_map(err), _grey_map(std)], ["|error| of the mean", "posterior std"], max(vmax, 1e-6),
                      "[0, 1] scale")
    _save(fig, path)
    return {"vmin": 0.0, "vmax": vmax, "colormap": CMAP}


def sample_grid(samples: torch.Tensor, ncol: int = 4) -> np.ndarray:
    """(K, C, H, W) -> one (rows*H, ncol*W, C) float image in [0, 1], 2-pixel white gutters."""
    k, c, h, w = samples.shape
    ncol = min(ncol, k)
    nrow = -(-k // ncol)
    g = 2
    grid = np.ones((nrow * h + (nrow - 1) * g, ncol * w + (ncol - 1) * g, c), dtype=np.float32)
    s = samples.detach().float().clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()
    for i in range(k):
        r, q = divmod(i, ncol)
        grid[r * (h + g):r * (h + g) + h, q * (w + g):q * (w + g) + w] = s[i]
    return grid[:, :, 0] if c == 1 else grid


def save_sample_grid(samples: torch.Tensor, path, ncol: int = 4):
    from restore.io import write_image

    return write_image(path, sample_grid(samples, ncol))


def save_reliability_plot(curve: dict, path, title: str = "calibration"):
    """Plot nominal vs empirical coverage. ``curve`` maps solver name -> {"levels": [...], "coverage": [...]}."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    for name, c in curve.items():
        ax.plot(c["levels"], c["coverage"], "o-", label=name)
    ax.set_xlabel("nominal credible level")
    ax.set_ylabel("empirical coverage of the truth")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


def save_data_fit_map(chi2: torch.Tensor, path) -> None:
    """The local chi2 ratio of the mean against the observation (``restore.calibration.data_fit_map``) on a fixed
    0-4 scale: about 1 where the estimate explains the observation, bright where it does not."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.5, 4))
    im = ax.imshow(_grey_map(chi2), cmap=CMAP, vmin=0.0, vmax=4.0)
    ax.set_title("data fit: local chi2 ratio (1 = explained)", fontsize=9)
    ax.axis("off")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    _save(fig, path)


RISK_MIN_HALF_WIDTH = 0.05  # an interval narrower than +-5 % of the range is never "at risk"


def risk_map(post, level: float = 0.9) -> torch.Tensor:
    """(H, W) bool: pixels whose ``level`` interval is wide relative to the signal, where detail is likely invented:
    the half-width exceeds both ``RISK_MIN_HALF_WIDTH`` and the mean's local contrast (5x5 std), channel-averaged."""
    from restore.calibration import local_std

    lo, hi = post.interval(level)
    half = ((hi - lo) / 2).mean(1)[0]
    contrast = local_std(post.mean.mean(1, keepdim=True), 5)[0, 0]
    return (half > RISK_MIN_HALF_WIDTH) & (half > contrast)


def save_risk_overlay(post, path, level: float = 0.9) -> float:
    """The estimate with the regions at risk (:func:`risk_map`) tinted red, as a PNG; returns their area fraction."""
    from restore import io

    risk = risk_map(post, level)
    img = post.mean[0].clamp(0, 1).expand(3, -1, -1).clone()
    red = torch.tensor([1.0, 0.1, 0.1]).view(3, 1, 1)
    img = torch.where(risk[None], 0.45 * img + 0.55 * red, img)
    io.write_image(path, img[None])
    return float(risk.float().mean())
