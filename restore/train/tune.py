"""Scan a solver's options on held-out training crops: PSNR, 90 % coverage and seconds per setting and task.

    python -m restore.train.tune --solver reddiff --grid steps=20,30,100 lr_final=none,0.005 \
        --out benchmarks/results/tune_reddiff.json

Every combination of the ``--grid`` values (``name=v1,v2,...``; ``none`` is None) runs on the benchmark's six
tasks (``benchmarks.common.tasks``) over centre crops of the last ``--images`` files of ``--data`` (BSD432-train's
last 8 files are the ones every prior here held out of training), never an evaluation set. This is where solver
defaults are chosen: the evaluation sets only measure them afterwards. ``--fixed name=value`` adds options to every
setting (e.g. ``preset=paper``), ``--quant int8`` runs the prior quantised. ``--tasks camera_light camera_heavy``
runs ``denoise:real`` on synthetic camera-like noise (``restore.train.camera_noise``; ``camera_raw_light`` etc. add
it in raw through an unprocessed camera pipeline), for ScoreDVI; ``--tasks sr2`` runs x2 SR (2.55/255), which the
benchmarks do not. ``--crop-at flattest`` takes each file's least textured window instead of its centre: real-noise
test photos (CC15, SIDD) are mostly flat (their 64 px crops' Laplacian std is 2-10/255 against 28-60 for held-out
natural centre crops), and on real noise a choice must hold on both kinds of crop (ScoreDVI's module docstring).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
import warnings
from pathlib import Path

import torch

from restore.files import write_json_atomic
from restore.train import camera_noise


def parse_value(text: str):
    """'none' -> None, else JSON (numbers, true/false, {"steps": 30}), else the string itself."""
    if text.lower() == "none":
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_grid(items: list[str]) -> dict[str, list]:
    """['steps=20,30', 'lr=0.05'] -> {'steps': [20, 30], 'lr': [0.05]}; raises ValueError naming a bad item."""
    grid = {}
    for item in items:
        name, sep, values = item.partition("=")
        if not sep or not name or not values:
            raise ValueError(f"grid item {item!r} is not name=v1,v2,...")
        # commas split values, except inside a JSON object or list
        parts, depth, cur = [], 0, ""
        for ch in values:
            depth += (ch in "{[") - (ch in "}]")
            if ch == "," and depth == 0:
                parts.append(cur)
                cur = ""
            else:
                cur += ch
        grid[name] = [parse_value(v) for v in [*parts, cur]]
    return grid


def settings(grid: dict[str, list]) -> list[dict]:
    """Every combination of the grid's values, in grid order."""
    names = list(grid)
    return [dict(zip(names, combo)) for combo in itertools.product(*(grid[n] for n in names))]


# tasks for tuning only, beside the benchmark's six: x2 SR (the calibration grid has it; the benchmarks run x4), and
# denoising / Gaussian deblurring at a lighter and a heavier noise than the benchmark's (does a choice hold off it?)
EXTRA = {"sr2": f"sr:bicubic:factor=2,noise={2.55 / 255:.6f}",
         "denoise10": f"denoise:gaussian:sigma={10 / 255:.6f}", "denoise50": f"denoise:gaussian:sigma={50 / 255:.6f}",
         "deblur_gauss1_noise03": "deblur:gaussian:sigma=1,noise=0.03"}
# task name -> restore.train.camera_noise level (spec denoise:real); raw_* is the unprocessed raw-pipeline model
CAMERA = {"camera_light": "light", "camera_heavy": "heavy", "camera_very_heavy": "very_heavy",
          **{f"camera_{level}": level for level in camera_noise.RAW_LEVELS}}


def evaluate(solver: str, options: dict, images: torch.Tensor, tasks: dict[str, str], samples: int,
             prior: str | None = None, quant: str | None = None) -> dict:
    """Mean PSNR (dB), raw 90 % coverage and seconds per image, per task, of one setting on (N, 3, H, W) crops, and
    the observation's own PSNR (``input_psnr``) on tasks that keep the image's size (denoising, deblurring,
    inpainting)."""
    from restore import metrics
    from restore.api import Restorer
    from restore.tasks import parse

    r = Restorer(solver, prior=prior, quant=quant, calibrate=False, **options)
    out = {}
    for tname, spec in tasks.items():
        if r.solver.supports(parse(spec)):
            continue
        r.prior(spec)  # loading stays outside the timings
        psnr, cover, secs, noisy = [], [], [], []
        for i, x in enumerate(images):
            if tname in CAMERA:
                y = camera_noise.simulate(x[None], CAMERA[tname], torch.Generator().manual_seed(i))
            else:
                y = r.simulate(x[None], spec, seed=i)
            if y.shape == x[None].shape:  # the observation itself, where it is an image of x's size
                noisy.append(float(metrics.psnr(y, x[None])))
            t0 = time.perf_counter()
            post = r(y, spec, samples=samples, seed=i, ground_truth=x[None])
            secs.append(time.perf_counter() - t0)
            m = post.meta["metrics"]
            psnr.append(m["psnr"])
            cover.append(m.get("coverage_90", float("nan")))
        n = len(images)
        out[tname] = {"psnr": round(sum(psnr) / n, 3), "coverage_90": round(sum(cover) / n, 3),
                      "seconds": round(sum(secs) / n, 3)}
        if noisy:
            out[tname]["input_psnr"] = round(sum(noisy) / len(noisy), 3)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--solver", required=True)
    ap.add_argument("--prior", default=None)
    ap.add_argument("--quant", default=None)
    ap.add_argument("--grid", nargs="*", default=[], help="name=v1,v2,... (every combination runs)")
    ap.add_argument("--fixed", nargs="*", default=[], help="name=value added to every setting")
    ap.add_argument("--data", default="../shared/data/BSD432-train")
    ap.add_argument("--images", type=int, default=4, help="the last N files of --data")
    ap.add_argument("--crop", type=int, default=96)
    ap.add_argument("--crop-at", choices=("centre", "flattest"), default="centre",
                    help="flattest: each image's least textured window (restore.train.common.flattest_crops), the "
                         "content of real-noise test photos")
    ap.add_argument("--samples", type=int, default=2)
    ap.add_argument("--tasks", nargs="*", default=None, help="subset of the benchmark's task names")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None, help="JSON file for the table (default: print only)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    from benchmarks.common import environment, table
    from benchmarks.common import tasks as benchmark_tasks
    from restore.train.common import centre_crops, flattest_crops, list_images, load_uint8_images, texture

    bench = benchmark_tasks()
    all_tasks = {**bench, **EXTRA, **{name: "denoise:real" for name in CAMERA}}
    unknown = set(args.tasks or []) - set(all_tasks)
    if unknown:
        raise SystemExit(f"unknown task(s) {', '.join(sorted(unknown))}; known: {', '.join(all_tasks)}")
    tasks = {k: v for k, v in all_tasks.items() if (k in args.tasks if args.tasks else k in bench)}
    files = list_images(args.data)[-args.images:]
    images = (flattest_crops if args.crop_at == "flattest" else centre_crops)(load_uint8_images(files), args.crop)
    fixed = {k: v[0] for k, v in parse_grid(args.fixed).items()}
    rows = []
    for setting in settings(parse_grid(args.grid)):
        options = {**fixed, **setting}
        res = evaluate(args.solver, options, images, tasks, args.samples, args.prior, args.quant)
        label = " ".join(f"{k}={v}" for k, v in setting.items()) or "defaults"
        row = {"setting": label, "options": options,
               "mean_psnr": round(sum(r["psnr"] for r in res.values()) / len(res), 3),
               "mean_seconds": round(sum(r["seconds"] for r in res.values()) / len(res), 3), "tasks": res}
        row.update({f"{t}": r["psnr"] for t, r in res.items()})
        row.update({f"cov_{t}": r["coverage_90"] for t, r in res.items()})
        rows.append(row)
        print(f"{label:<40} mean {row['mean_psnr']:.2f} dB  {row['mean_seconds']:.2f} s  "
              + "  ".join(f"{t} {r['psnr']:.2f}" for t, r in res.items()), flush=True)
    cols = ["setting", "mean_psnr", "mean_seconds", *tasks]
    print(table(rows, cols))
    if args.out:
        payload = {"benchmark": "tune", "solver": args.solver, "prior": args.prior, "quant": args.quant,
                   "command": "python -m restore.train.tune " + " ".join(argv if argv is not None else sys.argv[1:]),
                   "images": [f"{Path(args.data).name}/{f.name}" for f in files], "crop": args.crop,
                   "crop_at": args.crop_at, "texture_255": [round(float(t), 2) for t in texture(images)],
                   "samples": args.samples, "threads": args.threads, "environment": environment(), "rows": rows}
        write_json_atomic(payload, Path(args.out))
        print(f"wrote {args.out}")
    return rows


if __name__ == "__main__":
    main()
