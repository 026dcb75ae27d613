"""ScoreDVI float32 vs bf16 networks (``-O precision=bf16``) on held-out BSD432 crops: PSNR, seconds and 90 % coverage
under the shipped calibration table (its cell applied by hand, since the table covers only the default precision).

    python scripts/scoredvi_precision_check.py 96     # crop size; the numbers in benchmarks/results/tune_scoredvi_precision.json
"""
import json
import sys
import time

import numpy as np
import torch

from restore import calibration as cal
from restore.api import Restorer
from restore.tasks import parse
from restore.train import camera_noise
from restore.train.calibration import CAMERA_MIX
from restore.train.common import list_images, load_uint8_images

torch.set_num_threads(1)
size = int(sys.argv[1]) if len(sys.argv) > 1 else 96
files = list_images("../shared/data/BSD432-train")[-8:]
imgs = []
for im in load_uint8_images(files):
    h, w = im.shape[-2:]
    t, l = (h - size) // 2, (w - size) // 2
    imgs.append(im[None, :, t:t + size, l:l + size].float() / 255)
table = json.load(open("models/calibration/scoredvi.score-natural@int8.json"))
table["file"] = "t"
specs = ["real", "denoise:gaussian:sigma=0.058824", "denoise:gaussian:sigma=0.196078"]
res = {}
for i, x in enumerate(imgs):
    for spec in specs:
        if spec == "real":
            level, scale = CAMERA_MIX[i % 6]
            y = camera_noise.simulate(x, level, torch.Generator().manual_seed(i), scale)
            task, fam = parse("denoise:real"), cal.REAL_FAMILY
        else:
            task, fam = parse(spec), "denoise"
            y = Restorer("scoredvi", calibrate=False).simulate(x, task, seed=i)
        for prec in ("float", "bf16"):
            r = Restorer("scoredvi", calibrate=False, precision=prec)
            t0 = time.perf_counter()
            post = r(y, task, samples=8, seed=i)
            sec = time.perf_counter() - t0
            sigma = 0.0 if fam == cal.REAL_FAMILY else float(task.physics(tuple(x.shape)).noise_model.sigma)
            cell, status, _ = cal.find_cell(table, fam, sigma)
            physics = task.physics(tuple(x.shape))
            feats = cal.features(post.mean, post.spread, y, physics, cell.get("features", cal.FEATURES))
            scale = cal.scale_map(cell["weights"], feats)
            lam = cal.calibrated_lambda(cell["scores"], 0.9)
            cov = 1 - float(((post.mean - x).abs() > lam * scale).float().mean())
            psnr = float(-10 * torch.log10(((post.mean - x) ** 2).mean()))
            res.setdefault((spec, prec), []).append((psnr, cov, sec))
            print(i, spec, prec, f"{psnr:.3f} dB cov {cov:.3f} {sec:.1f} s", flush=True)
for (spec, prec), v in res.items():
    a = np.array(v)
    print(f"{spec:35s} {prec:6s} psnr {a[:, 0].mean():.3f} cov90 {a[:, 1].mean():.4f} s {a[:, 2].mean():.1f}")
