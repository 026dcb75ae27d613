"""ScoreDVI float32 vs bf16 networks (``-O precision=bf16``) on held-out BSD432 crops: PSNR, seconds and 90 % coverage
under the shipped calibration table (its cell applied by hand, since the table covers only the default precision).

    python scripts/scoredvi_precision_check.py 96   # the crop size

Its numbers are in benchmarks/results/tune_scoredvi_precision.json.

Each crop is observed and run as a calibration run of the same family would be (``restore.train.calibration.run_unit``:
crop i gets camera-noise level CAMERA_MIX[i % 6] on real noise, the task's seeded noise otherwise).
"""
import json
import sys

import numpy as np
import torch

from restore import calibration as cal
from restore.api import Restorer
from restore.train.calibration import run_unit, unit_signals
from restore.train.common import centre_crops, list_images, load_uint8_images

torch.set_num_threads(1)
size = int(sys.argv[1]) if len(sys.argv) > 1 else 96
files = list_images("../shared/data/BSD432-train")[-8:]  # the files every prior held out
imgs = centre_crops(load_uint8_images(files), size)
table = json.load(open("models/calibration/scoredvi.score-natural@int8.json"))
table["file"] = "t"
cells = [(cal.REAL_FAMILY, 0.0), ("denoise", 15 / 255), ("denoise", 50 / 255)]
res = {}
for i, (f, x) in enumerate(zip(files, imgs)):
    for fam, sigma in cells:
        cell, _, _ = cal.find_cell(table, fam, sigma)
        lam = cal.calibrated_lambda(cell["scores"], 0.9)
        for prec in ("float", "bf16"):
            unit = run_unit(Restorer("scoredvi", calibrate=False, precision=prec), fam, sigma, 8, i, f.name, x[None],
                            "heldout")
            feats, err, _ = unit_signals(unit, cell.get("features", cal.FEATURES))
            cov = 1 - float((err > lam * cal.scale_map(cell["weights"], feats)).float().mean())
            psnr = float(-10 * torch.log10((err ** 2).mean()))
            res.setdefault((unit["spec"], prec), []).append((psnr, cov, unit["seconds"]))
            print(i, unit["spec"], prec, f"{psnr:.3f} dB cov {cov:.3f} {unit['seconds']:.1f} s", flush=True)
for (spec, prec), v in res.items():
    a = np.array(v)
    print(f"{spec:35s} {prec:6s} psnr {a[:, 0].mean():.3f} cov90 {a[:, 1].mean():.4f} s {a[:, 2].mean():.1f}")
