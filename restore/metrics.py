"""Image-quality and calibration metrics. Images are (B, C, H, W) float tensors in [0, 1].

Definitions (fixed, so numbers are comparable across the project):
- PSNR: 10 log10(1 / MSE) on [0, 1] images, MSE over all channels and pixels, no border crop, per image.
- SSIM: ``SSIM_DEFINITION`` below (deepinv 0.5.0 -> torchmetrics), no border crop.
- LPIPS (AlexNet, the ``lpips`` package's linear heads): only when the torchvision AlexNet backbone file is on disk
  (``$TORCH_HOME/hub/checkpoints/alexnet-owt-7be5be79.pth``); otherwise ``None`` with the reason. Never downloads.
- Coverage(level): fraction of pixel values whose truth lies in the posterior's central credible interval.
- std-error rank correlation: Spearman correlation, over pixels, of the posterior std and |mean - truth|.
- Spectral gap: how far a set of images is from a reference set in radial power spectrum (see ``spectral_gap``); a
  lower bound on the squared Wasserstein-2 distance between the two distributions, so 0 is necessary (not
  sufficient) for a perfect perceptual index.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

SSIM_DEFINITION = ("SSIM of Wang et al. 2004 as computed by torchmetrics (via deepinv 0.5.0): 11x11 Gaussian window, "
                   "sigma 1.5, K1=0.01, K2=0.03, data range 1, averaged over channels and pixels, no border crop")
LPIPS_BACKBONE = "alexnet-owt-7be5be79.pth"


def psnr(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """PSNR in dB per image, shape (B,)."""
    mse = ((x.float().clamp(0, 1) - ref.float()) ** 2).flatten(1).mean(1)
    return 10 * torch.log10(1.0 / mse.clamp_min(1e-12))


def ssim(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """SSIM per image, shape (B,); see ``SSIM_DEFINITION``. Images smaller than the window are rejected."""
    from deepinv.loss.metric import SSIM

    if min(x.shape[-2:]) < 11:
        raise ValueError(f"SSIM needs images of at least 11x11 pixels; got {x.shape[-1]}x{x.shape[-2]}")
    return SSIM()(x.float().clamp(0, 1), ref.float())


def _torch_hub_checkpoints() -> Path:
    return Path(os.environ.get("TORCH_HOME", Path.home() / ".cache" / "torch")) / "hub" / "checkpoints"


def lpips_status() -> tuple[bool, str]:
    """(available, reason): LPIPS needs its backbone on disk; nothing is downloaded."""
    f = _torch_hub_checkpoints() / LPIPS_BACKBONE
    if f.exists():
        return True, f"backbone found at {f}"
    return False, f"LPIPS backbone {LPIPS_BACKBONE} not found in {f.parent} (offline: it is never downloaded)"


_LPIPS = None


def lpips(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor | None:
    """LPIPS-Alex per image (B,), or None when the backbone is not on disk (see :func:`lpips_status`)."""
    global _LPIPS
    ok, _ = lpips_status()
    if not ok:
        return None
    if _LPIPS is None:
        import lpips as lp

        _LPIPS = lp.LPIPS(net="alex", verbose=False).eval()
    with torch.no_grad():
        return _LPIPS(x.float().clamp(0, 1) * 2 - 1, ref.float() * 2 - 1).flatten()


def coverage(posterior, truth: torch.Tensor, level: float = 0.9, method: str = "auto",
             where: torch.Tensor | None = None) -> float:
    """Fraction of pixel values of ``truth`` (1, C, H, W) inside the central ``level`` credible interval; over the
    pixels where the bool mask ``where`` (broadcastable to ``truth``) is True when given, e.g. inpainting's holes."""
    return fraction_inside(truth, *posterior.interval(level, method=method), where)


def fraction_inside(truth: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, where: torch.Tensor | None = None) -> float:
    """Fraction of the values of ``truth`` within [lo, hi] (same shapes), over the pixels where ``where`` is True
    when given (a bool mask broadcastable to ``truth``)."""
    inside = (truth >= lo) & (truth <= hi)
    if where is not None:
        inside = inside[where.expand_as(inside)]
    return float(inside.float().mean())


def interval_width(posterior, level: float = 0.9, method: str = "auto") -> float:
    """Mean width of the central ``level`` interval (image units): narrower at equal coverage is better."""
    lo, hi = posterior.interval(level, method=method)
    return float((hi - lo).mean())


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman rank correlation of two equally shaped tensors (flattened); ties get arbitrary distinct ranks."""
    a, b = a.flatten().double(), b.flatten().double()
    if a.numel() < 3:
        raise ValueError("rank correlation needs at least 3 values")
    ra = torch.empty_like(a)
    ra[a.argsort()] = torch.arange(a.numel(), dtype=torch.float64)
    rb = torch.empty_like(b)
    rb[b.argsort()] = torch.arange(b.numel(), dtype=torch.float64)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = (ra.norm() * rb.norm()).item()
    return float((ra * rb).sum() / den) if den > 0 else 0.0


def std_error_correlation(posterior, truth: torch.Tensor, raw: bool = False) -> float:
    """Spearman correlation over pixels between the posterior std (the raw spread if ``raw``) and |mean - truth|
    (channel-averaged)."""
    err = (posterior.mean - truth).abs().mean(1)
    return spearman((posterior.spread if raw else posterior.std).mean(1), err)


def diversity(posterior) -> float:
    """Mean pixel-wise std of the samples (0 for a single sample): how much the samples differ."""
    if posterior.n_samples < 2:
        return 0.0
    return float(posterior.samples.std(0).mean())


def band_energies(x: torch.Tensor, bands: int = 32) -> torch.Tensor:
    """Mean energy per pixel in ``bands`` equal-width radial frequency bands, averaged over the batch: shape (bands,).

    x: (B, C, H, W). Each image's own mean (DC) is removed first; the bands split |f| in [0, sqrt(2)/2] cycles per
    pixel into equal widths; the band energies of an image sum to its variance."""
    b, c, h, w = x.shape
    f = torch.fft.fft2(x.float() - x.float().mean((-2, -1), keepdim=True), norm="ortho").abs() ** 2
    r = (torch.fft.fftfreq(h).view(-1, 1) ** 2 + torch.fft.fftfreq(w).view(1, -1) ** 2).sqrt().to(x.device)
    idx = (r / (0.5 ** 0.5) * bands).long().clamp(max=bands - 1).flatten()
    per_freq = f.sum((0, 1)).flatten() / (b * c * h * w)
    return torch.zeros(bands, dtype=per_freq.dtype, device=x.device).index_add_(0, idx, per_freq)


def spectral_gap(x: torch.Tensor, ref: torch.Tensor, bands: int = 32) -> float:
    """sum_b (sqrt(E_b(x)) - sqrt(E_b(ref)))^2 over radial frequency bands, per pixel (images in [0, 1]).

    x, ref: (B, C, H, W) sets of images of one size (they need not be paired). Since disjoint frequency bands are
    orthogonal projections and W2(P, Q) >= |sqrt(E||X||^2) - sqrt(E||Y||^2)| on each, this is a lower bound on
    W2^2(law of x, law of ref) / pixels: an estimator whose outputs are distributed like clean images has gap 0, and
    one that adds more high-frequency energy than clean images have (over-sharpening) gets a gap as surely as one
    that removes it (blur). Added to an MMSE estimate's MSE it also bounds from below the MSE of any estimator with
    a perfect perceptual index that transports that estimate (PMRF's target)."""
    if x.shape[-2:] != ref.shape[-2:]:
        raise ValueError(f"spectral_gap compares images of one size; got {tuple(x.shape)} and {tuple(ref.shape)}")
    return float(((band_energies(x, bands).sqrt() - band_energies(ref, bands).sqrt()) ** 2).sum())


def report(posterior, truth: torch.Tensor, observation: torch.Tensor | None = None) -> dict:
    """All metrics of a posterior against the ground truth, as a JSON-ready dict."""
    if truth.shape != posterior.mean.shape:
        raise ValueError(f"ground truth of shape {tuple(truth.shape)} does not match the restored image "
                         f"{tuple(posterior.mean.shape)}")
    out = {
        "psnr": float(psnr(posterior.mean, truth)[0]),
        "ssim": float(ssim(posterior.mean, truth)[0]),
        "ssim_definition": SSIM_DEFINITION,
        "coverage_50": coverage(posterior, truth, 0.5),
        "coverage_90": coverage(posterior, truth, 0.9),
        "coverage_95": coverage(posterior, truth, 0.95),
        "std_error_spearman": std_error_correlation(posterior, truth),
        "mean_std": float(posterior.std.mean()),
        "sample_diversity": diversity(posterior),
        "sample_psnr_mean": float(psnr(posterior.samples, truth.expand_as(posterior.samples)).mean()),
        "interval_width_90": interval_width(posterior, 0.9),
        "calibrated": posterior.calibrated,
    }
    if posterior.calibrated:  # the raw spread's figures beside the calibrated ones, and the predicted quality
        out.update({f"coverage_{p}_raw": coverage(posterior, truth, p / 100, method="raw") for p in (50, 90, 95)})
        out["std_error_spearman_raw"] = std_error_correlation(posterior, truth, raw=True)
        out["interval_width_90_raw"] = interval_width(posterior, 0.9, method="raw")
        out["predicted_psnr"] = posterior.meta["uncertainty"]["predicted_psnr"]
    lp = lpips(posterior.mean, truth)
    out["lpips"] = None if lp is None else float(lp[0])
    if lp is None:
        out["lpips_reason"] = lpips_status()[1]
    if observation is not None and observation.shape == truth.shape:
        out["psnr_input"] = float(psnr(observation, truth)[0])
        out["ssim_input"] = float(ssim(observation, truth)[0])
    return out
