"""A Gaussian solver at ``sigma=auto`` on synthetic camera-like noise and on Gaussian noise, with its calibration:
how often the self-check says the noise is not white Gaussian, which cell calibrated the run, and how the 90 %
intervals cover, on crops of the priors' 8 held-out BSD432 files (no calibration table fitted on them, no evaluation
set).

    python scripts/camera_noise_check.py --solver pmrf --out runs/camera_check_pmrf.json
    python scripts/camera_noise_check.py --solver pmrf --without-camera-cell --out runs/camera_check_pmrf_before.json
    python scripts/camera_noise_check.py --solver vble --prior cae-natural-q4 --out runs/camera_check_vble_q4.json

Noise per crop: Gaussian at 5 / 15 / 25 / 50/255, and ``restore.train.camera_noise``'s two models at three levels each
(the first model's levels are the ones the camera cell was fitted on; the raw-pipeline ones it never saw).
``--without-camera-cell`` runs as before the cell existed (``restore.calibration.camera_cell`` answers None), for a
before/after on the same crops and seeds; ``--without-imputation`` hands the solver the clipped values as they are
(before ``restore.censoring``). The observations are clipped to [0, 1] like a file's; ``--dark 0.3`` scales the
crops to 30 % first (shadows: where clipping and camera noise differ most from the Gaussian model).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CONDITIONS = ("gauss5", "gauss15", "gauss25", "gauss50", "light", "heavy", "very_heavy", "raw_light", "raw_heavy",
              "raw_very_heavy")


def observe(x: torch.Tensor, condition: str, seed: int) -> torch.Tensor:
    """(1, 3, H, W) noisy observation of ``x`` in [0, 1] under ``condition`` (:data:`CONDITIONS`)."""
    from restore.train import camera_noise

    g = torch.Generator().manual_seed(seed)
    if condition.startswith("gauss"):
        return (x + int(condition[5:]) / 255 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    return camera_noise.simulate(x, condition, g)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--solver", default="pmrf")
    ap.add_argument("--prior", default=None, help="a registered prior other than the solver's default (its table)")
    ap.add_argument("--data", default="../shared/data/BSD432-train")
    ap.add_argument("--crop", type=int, default=128)
    ap.add_argument("--conditions", default=",".join(CONDITIONS))
    ap.add_argument("--without-camera-cell", action="store_true")
    ap.add_argument("--without-imputation", action="store_true", help="hand the solver the clipped values as they "
                    "are (restore.censoring off)")
    ap.add_argument("--dark", type=float, default=1.0, help="scale the clean crops by this first (default 1: as they are)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    from restore import calibration as cal
    from restore.api import Restorer
    from restore.train import calibration as tc
    from restore.train.common import list_images

    torch.set_num_threads(args.threads)
    if args.without_camera_cell:
        cal.camera_cell = lambda *a, **k: None
    files = list_images(args.data)[-tc.PRIOR_HELD_OUT:]
    crops = [x * args.dark for x in tc.crops(files, args.crop, 7)]
    restorer = Restorer(args.solver, args.prior)
    if args.without_imputation:
        restorer.uncensor = lambda y, task, seed, **k: (y, None)
    out = {"solver": args.solver, "prior": restorer.prior_name, "crop": args.crop, "files": [f.name for f in files],
           "without_camera_cell": args.without_camera_cell, "without_imputation": args.without_imputation,
           "dark": args.dark,
           "command": " ".join(["python", *sys.argv]),
           "conditions": {}}
    for condition in args.conditions.split(","):
        rows = []
        for i, x in enumerate(crops):
            y = observe(x, condition, seed=100 + i)
            post = restorer(y, "denoise:gaussian:sigma=auto", samples=8, seed=i, ground_truth=x)
            m, u = post.meta["metrics"], post.meta.get("uncertainty", {})
            rows.append({"file": files[i].name, "sigma_255": post.meta["noise_estimate"]["sigma_255"],
                         "verdict": u.get("self_check", {}).get("verdict"), "status": u.get("status"),
                         "chi2_ratio": u.get("self_check", {}).get("chi2_ratio"),
                         "expected_range": u.get("self_check", {}).get("expected_range"),
                         "camera_cell": str(u.get("cell", "")).startswith(cal.CAMERA_NOTE),
                         "imputed": bool(post.meta.get("censored", {}).get("imputed")),
                         "psnr_input": m.get("psnr_input"), "psnr": m["psnr"],
                         **{k: m[k] for k in ("coverage_50", "coverage_90", "coverage_95", "interval_width_90",
                                              "std_error_spearman")}})
        a = {k: np.array([r[k] for r in rows], dtype=float) for k in ("coverage_50", "coverage_90", "coverage_95",
                                                                      "interval_width_90", "psnr")}
        summary = {"n": len(rows), "camera_cell": sum(r["camera_cell"] for r in rows),
                   "imputed": sum(r["imputed"] for r in rows),
                   "fits_the_noise": sum(r["verdict"] == "fits the noise" for r in rows),
                   **{k: round(float(v.mean()), 4) for k, v in a.items()},
                   "coverage_90_range": [round(float(a["coverage_90"].min()), 4),
                                         round(float(a["coverage_90"].max()), 4)]}
        out["conditions"][condition] = {"summary": summary, "rows": rows}
        print(f"{condition:15s} " + " ".join(f"{k}={v}" for k, v in summary.items()), flush=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    return out


if __name__ == "__main__":
    main()
