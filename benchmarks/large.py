"""A whole large photo (default 2048x1536, colour) restored through tiling: time, peak memory, seam check.

    python -m benchmarks.large [--solver langevin] [--iterations 50] [--width 2048 --height 1536]

The photo is scikit-image's `chelsea` resized up; the task is Gaussian denoising at 25/255. Iterations are cut
(default 50) so the run takes minutes; the point is the memory bound and that the tiles blend without seams
(column-wise error at tile boundaries vs elsewhere).
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import torch

from benchmarks.common import table, write_results
from benchmarks.speed import ITERATION_FIELD, PeakRSS


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--solver", default="langevin")
    ap.add_argument("--iterations", type=int, default=50)
    ap.add_argument("--width", type=int, default=2048)
    ap.add_argument("--height", type=int, default=1536)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--tile", type=int, default=256)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    import skimage.data

    from restore.api import Restorer
    from restore.metrics import psnr
    from restore.tiling import tile_starts

    x = torch.from_numpy(skimage.data.chelsea().astype(np.float32) / 255).permute(2, 0, 1)[None]
    x = torch.nn.functional.interpolate(x, size=(args.height, args.width), mode="bicubic").clamp(0, 1)
    task = f"denoise:gaussian:sigma={25 / 255:.6f}"
    field = ITERATION_FIELD.get(args.solver)
    r = Restorer(args.solver, tile=args.tile, **({field: args.iterations} if field else {}))
    r.prior(task)
    y = r.simulate(x, task, seed=0)
    with PeakRSS() as peak:
        t0 = time.perf_counter()
        post = r(y, task, samples=args.samples, seed=0)
        seconds = time.perf_counter() - t0
    col_err = (post.mean - x).abs().mean(dim=(0, 1, 2))
    seams = [s for s in tile_starts(args.width, args.tile, r.overlap)[1:]]
    seams = [c for s in seams for c in range(s, s + r.overlap)]
    inner = sorted(set(range(args.width)) - set(seams))
    row = {"solver": args.solver, "size": f"{args.width}x{args.height}", "megapixels": args.width * args.height / 1e6,
           "tiles": post.meta["tiling"]["tiles"], f"{field or 'iterations'}": args.iterations,
           "samples": args.samples, "seconds": seconds, "peak_MiB": peak.mib,
           "MiB_per_megapixel": peak.mib / (args.width * args.height / 1e6),
           "psnr_input": float(psnr(y, x)), "psnr_mean": float(psnr(post.mean, x)),
           "seam_to_inner_error_ratio": float(col_err[seams].mean() / col_err[inner].mean())}
    print(table([row], list(row)))
    path = write_results("large", {"rows": [row], "task": task})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
