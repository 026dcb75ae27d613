"""A solver's calibrated uncertainty on CelebA *training* faces: a content shift from the BSD432 crops the tables were
fitted on, on images that are no evaluation set (no prior here trained on faces), so a calibration choice may be
judged on them.

    python scripts/calibration_shift_check.py --solver pmrf --out runs/shift_pmrf.json
    RESTORE_MODELS=/path/to/other/models python scripts/calibration_shift_check.py ...   # another table

Per task of ``benchmarks.quality`` (12 faces, 80 px random crops, 8 samples, defaults): mean calibrated coverage at
50 / 90 / 95 %, 90 % interval width, std-|error| Spearman, and how the predicted PSNR tracks the actual one (mean
and sd of predicted - actual, Spearman across the faces). Used 2026-12-06 to compare PMRF's table before and after
the bootstrap signals (``benchmarks/results/calibration_shift_celeba_pmrf.json``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--solver", default="pmrf")
    ap.add_argument("--data", default="../shared/data/CelebA-train-9998")
    ap.add_argument("--images", type=int, default=12)
    ap.add_argument("--crop", type=int, default=80)
    ap.add_argument("--tasks", default=None, help="comma-separated benchmark task names (default: all six)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    from scipy.stats import spearmanr

    from benchmarks.common import tasks
    from restore.api import Restorer
    from restore.train import calibration as tc

    torch.set_num_threads(1)
    files = sorted(Path(args.data).glob("*.jpg"))[100:100 + args.images]  # past the first ids, which other checks use
    crops = tc.crops(files, args.crop, 11)
    restorer = Restorer(args.solver)
    out = {}
    every = tasks()
    chosen = every if args.tasks is None else {n: every[n] for n in args.tasks.split(",")}
    for name, spec in chosen.items():
        rows = []
        for i, x in enumerate(crops):
            y = restorer.simulate(x, spec, seed=i)
            m = restorer(y, spec, samples=8, seed=i, ground_truth=x).meta["metrics"]
            rows.append([m["coverage_50"], m["coverage_90"], m["coverage_95"], m["interval_width_90"],
                         m["std_error_spearman"], m["predicted_psnr"], m["psnr"]])
        a = np.array(rows)
        gap = a[:, 5] - a[:, 6]
        out[name] = {"coverage_50": a[:, 0].mean(), "coverage_90": a[:, 1].mean(), "coverage_95": a[:, 2].mean(),
                     "interval_width_90": a[:, 3].mean(), "std_error_spearman": a[:, 4].mean(),
                     "predicted_minus_actual_psnr": gap.mean(), "predicted_minus_actual_sd": gap.std(),
                     "psnr_rank_corr": float(spearmanr(a[:, 5], a[:, 6])[0])}
        out[name] = {k: round(float(v), 4) for k, v in out[name].items()}
        print(name, " ".join(f"{k}={v:.3f}" for k, v in out[name].items()), flush=True)
    Path(args.out).write_text(json.dumps({"solver": args.solver, "images": [f.name for f in files],
                                          "crop": args.crop, "tasks": out}, indent=1))
    return out


if __name__ == "__main__":
    main()
