"""Gaussian denoising quality of the score prior on CBSD68 (colour), beside published numbers.

    python -m benchmarks.denoiser            # all 68 images, sigma 15/25/50 (/255)
    python -m benchmarks.denoiser --quick    # the 4-image quick subset

PSNR on full images, [0, 1] scale, no border crop; noise seeded per image; one denoiser call at the true sigma.
"""

from __future__ import annotations

import argparse
import time

import torch

from benchmarks.common import QUICK_CBSD68, check_cards_exclude, load_set, table, write_results

PUBLISHED_CBSD68 = {  # PSNR (dB), colour, from the DRUNet paper (Zhang et al., TPAMI 2021, Table 3); published, not ours
    "CBM3D": {"15": 33.52, "25": 30.71, "50": 27.38},
    "DnCNN": {"15": 33.90, "25": 31.24, "50": 27.95},
    "DRUNet": {"15": 34.30, "25": 31.69, "50": 28.51},
}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--prior", default="score-natural")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--sigmas", type=int, nargs="+", default=[15, 25, 50])
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)

    from restore.metrics import psnr, ssim
    from restore.priors import registry

    check_cards_exclude("CBSD68", [args.prior])
    prior = registry.load(args.prior)
    images = load_set("CBSD68", files=QUICK_CBSD68 if args.quick else None)
    rows, per_image = [], {}
    for s255 in args.sigmas:
        ps, ss, t_total = [], [], 0.0
        for i, (name, x) in enumerate(images):
            g = torch.Generator().manual_seed(1000 * s255 + i)
            y = x + (s255 / 255) * torch.randn(x.shape, generator=g)
            t0 = time.perf_counter()
            with torch.no_grad():
                out = prior.module(y, s255 / 255).clamp(0, 1)
            t_total += time.perf_counter() - t0
            ps.append(float(psnr(out, x)))
            ss.append(float(ssim(out, x)))
            per_image.setdefault(str(s255), {})[name] = round(ps[-1], 3)
        row = {"sigma_255": s255, "psnr": sum(ps) / len(ps), "ssim": sum(ss) / len(ss),
               "seconds_per_image": t_total / len(images)}
        for k, v in PUBLISHED_CBSD68.items():
            row[f"{k} (published)"] = v.get(str(s255))
        rows.append(row)
    cols = ["sigma_255", "psnr", "ssim", "seconds_per_image"] + [f"{k} (published)" for k in PUBLISHED_CBSD68]
    print(f"CBSD68 {'quick subset ' + str(QUICK_CBSD68) if args.quick else 'all 68'}; prior {args.prior} "
          f"({prior.card.get('steps', '?')} training steps)")
    print(table(rows, cols))
    path = write_results("denoiser_quick" if args.quick else "denoiser", {
        "prior": args.prior, "prior_card_steps": prior.card.get("steps"), "images": [n for n, _ in images],
        "rows": rows, "per_image_psnr": per_image,
        "published_note": "CBM3D/DnCNN/DRUNet: published numbers (DRUNet paper, Table 3), not run here"}, args.out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
