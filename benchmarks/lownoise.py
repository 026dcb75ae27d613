"""Light Gaussian noise: each solver's estimate against the noisy input and the plain MMSE denoiser D(y).

    python -m benchmarks.lownoise                       # 6 held-out BSD432 crops, 128 px, 2.55-25 /255
    python -m benchmarks.lownoise --images 3 --levels 2.55 10
    python -m benchmarks.lownoise --solvers scoredvi --add    # one more column on the same rows
    python -m benchmarks.lownoise --solvers vble:cae-natural-q2 --add   # SOLVER:PRIOR, a named prior's column

A restored photo must not be worse than the photo: at light noise a method that trades distortion for realism (PMRF's
flow) can fall below its input. The crops are the priors' held-out training files (the last ``--images`` of
BSD432-train, which no prior trained on), never an evaluation set, so the table may steer defaults. Columns: PSNR of
the noisy input, of D(y, sigma) (``score-natural`` on its own: the learned posterior mean), of each solver's
``Posterior.mean`` at its defaults, and of PMRF's flow average (its samples' mean), the estimate PMRF reported on
denoising before 2026-12-03.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
import warnings

import torch

from benchmarks.common import data_root, table, write_results

SOLVERS = ("pmrf", "langevin", "reddiff", "vble", "aps", "scoredvi")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=6, help="the last N files of BSD432-train (the priors' held-out)")
    ap.add_argument("--crop", type=int, default=128)
    ap.add_argument("--levels", type=float, nargs="*", default=[2.55, 5, 7.5, 10, 15, 25], help="noise std /255")
    ap.add_argument("--solvers", nargs="*", default=list(SOLVERS))
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--out", default=None)
    ap.add_argument("--add", action="store_true",
                    help="add these solvers' columns to the rows already in the results file (same files, crop, "
                         "samples and levels), so one solver can be measured without rerunning the others")
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    from restore import Restorer, metrics
    from restore.priors import registry
    from restore.tasks import parse
    from restore.train.common import centre_crops, list_images, load_uint8_images

    files = list_images(data_root() / "BSD432-train")[-args.images:]
    crops = centre_crops(load_uint8_images(files), args.crop)
    den = registry.load("score-natural")
    restorers = {n: Restorer(*n.split(":", 1)) for n in args.solvers}  # SOLVER or SOLVER:PRIOR
    rows, t0 = [], time.time()
    for level in args.levels:
        spec = f"denoise:gaussian:sigma={level / 255:.6f}"
        task = parse(spec)
        psnr: dict[str, list[float]] = {}
        for i in range(len(crops)):
            x = crops[i:i + 1]
            y, _ = task.simulate(x, torch.Generator().manual_seed(i))
            psnr.setdefault("input", []).append(float(metrics.psnr(y, x)))
            with torch.no_grad():
                psnr.setdefault("D(y)", []).append(float(metrics.psnr(den.module(y, level / 255).clamp(0, 1), x)))
            for name, r in restorers.items():
                post = r(y, spec, samples=args.samples, seed=i)
                psnr.setdefault(name, []).append(float(metrics.psnr(post.mean, x)))
                if name == "pmrf":
                    psnr.setdefault("pmrf flow average", []).append(
                        float(metrics.psnr(post.samples.mean(0, keepdim=True), x)))
        rows.append({"sigma_255": level, **{k: sum(v) / len(v) for k, v in psnr.items()}})
        print(f"[{time.time() - t0:5.0f}s] sigma {level}/255: " + ", ".join(f"{k} {v:.2f}" for k, v in rows[-1].items()
                                                                         if k != "sigma_255"), flush=True)
    seconds = time.time() - t0
    if args.add:
        rows, seconds = merged_rows(rows, files, args, seconds)
    print(table(rows, list(rows[0])))
    out = write_results("lownoise", {"files": [f.name for f in files], "crop": args.crop, "samples": args.samples,
                                     "rows": rows, "seconds": seconds}, args.out)
    print(f"wrote {out}")


def merged_rows(rows: list[dict], files, args, seconds: float) -> tuple[list[dict], float]:
    """``rows`` (this run's columns) joined onto the results file's rows at the same levels; the earlier file must have
    measured the same files, crop and samples, else the columns would not compare and this refuses."""
    import json

    from benchmarks.common import RESULTS

    path = Path(args.out) if args.out else RESULTS / "lownoise.json"
    old = json.loads(path.read_text())
    same = (old.get("files") == [f.name for f in files], old.get("crop") == args.crop,
            old.get("samples") == args.samples)
    if not all(same):
        raise SystemExit(f"--add: {path} measured other files, crop or samples; rerun without --add")
    measured = {r["sigma_255"] for r in old["rows"]}
    missing = [r["sigma_255"] for r in rows if r["sigma_255"] not in measured]
    if missing:
        raise SystemExit(f"--add: {path} has no rows at noise {missing}; rerun without --add")
    new = {r["sigma_255"]: r for r in rows}
    merged = [{**r, **new.get(r["sigma_255"], {})} for r in old["rows"]]  # levels not run here keep their rows
    return merged, float(old.get("seconds", 0.0)) + seconds


if __name__ == "__main__":
    main()
