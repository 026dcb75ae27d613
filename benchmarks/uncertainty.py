"""Calibrated uncertainty, measured: coverage, width and std-|error| ranking before and after calibration.

    python -m benchmarks.uncertainty --solvers vble,pmrf            # 12 CBSD68 crops + the shifted sets
    python -m benchmarks.uncertainty --solvers vble --images 4 --resume
    python -m benchmarks.uncertainty --solvers pmrf --options preset=paper --out benchmarks/results/uncertainty_paper_pmrf.json

Each calibrated solver (a table in ``models/calibration/``) runs at its defaults, or with ``--options`` (a preset's
own table, e.g. ``preset=paper``; rows then name the solver ``pmrf (preset=paper)``), with 8 samples on
- ``CBSD68``: 128 px centre crops, the 6 tasks of ``benchmarks.quality`` plus Gaussian denoising at 15 and 50/255;
- ``FFHQ-test-15`` (faces, a content shift: the tables were fitted on BSD432 landscapes, animals, buildings);
- ``CBSD68 off-grid``: noise levels between the grid points (denoising 35/255, Gaussian deblurring at 0.02), where
  the tables interpolate and claim only an approximate guarantee;
- ``CBSD68 user masks``: inpainting with masks of shapes the tables never saw (``benchmarks.masks``: strokes and
  ellipses), calibrated with the region cell as every user mask is;
- ``CQ100 (photos no prior saw)``: 128 px centre crops of recent photos (``train_data/CQ100``, made by
  ``scripts/get_cq100.py``; skipped when absent), the 6 tasks: how tables fitted on Berkeley's scans hold on the
  photos users bring.
Per task: PSNR, coverage of the 50/90/95 % intervals raw (the samples' spread) and calibrated, the fraction of
images below 90 - 3 % coverage, the 90 % coverage inside inpainting's holes (the pixels the solver invents), mean
90 % interval width, std-|error| Spearman raw and calibrated beside its
ceiling (the same rank correlation for the true error's own local RMS in a 5x5 window: no smooth std map can do
much better; a per-pixel signal such as the inpainting mask can), how well the predicted PSNR ranks the actual PSNR
across images, and how often the self-check flags a result. A reliability diagram (nominal vs empirical coverage, raw and calibrated) goes beside the JSON.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.common import REPO, RESULTS, S, hold_results_lock, load_set, spread, table, tasks, write_results

LEVELS = (0.1, 0.3, 0.5, 0.7, 0.8, 0.9, 0.95)
TARGET_GAP = 0.03  # the design's tolerance around the nominal level


CQ100_SET, CQ100_FOLDER = "CQ100 (photos no prior saw)", "train_data/CQ100"


def task_sets(crop: int = 128) -> dict[str, tuple[str, dict[str, str]]]:
    """set name -> (image set, task name -> spec); the user masks are drawn at ``crop`` px (``benchmarks.masks``)."""
    from benchmarks.masks import mask_file

    base = tasks()
    cbsd = {"denoise15": f"denoise:gaussian:sigma={15 * S:.6f}", **base,
            "denoise50": f"denoise:gaussian:sigma={50 * S:.6f}"}
    return {
        "CBSD68": ("CBSD68", cbsd),
        "FFHQ-test-15 (faces)": ("FFHQ-test-15", {k: base[k] for k in ("denoise25", "deblur_gauss1", "sr4")}),
        "CBSD68 off-grid": ("CBSD68", {"denoise35": f"denoise:gaussian:sigma={35 * S:.6f}",
                                       "deblur_gauss1 noise 0.02": base["deblur_gauss1"].rsplit(",noise=", 1)[0]
                                       + ",noise=0.020000"}),
        # masks of shapes calibration never saw: strokes (scratches, wires) and ellipses (objects removed)
        "CBSD68 user masks": ("CBSD68", {f"inpaint_{k}": f"inpaint:mask:path={mask_file(k, crop)},noise=0.010000"
                                         for k in ("strokes", "ellipses")}),
        # photos of today (Wikimedia Commons, 2010s cameras) that no prior and no table saw: the shift from
        # Berkeley's 1990s film scans to the photos users bring (python scripts/get_cq100.py makes the folder)
        CQ100_SET: (CQ100_FOLDER, base),
    }


def oracle_spearman(mean: torch.Tensor, truth: torch.Tensor) -> float:
    """Spearman of |error| with the true error's local RMS (5x5): the ceiling of a smooth std map's ranking."""
    from restore.metrics import spearman

    err = (mean - truth).abs().mean(1, keepdim=True)
    local = F.avg_pool2d(F.pad(err**2, (2, 2, 2, 2), mode="replicate"), 5, stride=1).sqrt()
    return spearman(local, err)


def evaluate(restorer, spec: str, truth: torch.Tensor, seed: int, samples: int) -> dict:
    import warnings

    from restore.calibration import UncalibratedWarning, missing_pixels
    from restore.metrics import coverage, fraction_inside, psnr
    from restore.tasks import parse

    y = restorer.simulate(truth, spec, seed=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UncalibratedWarning)
        post = restorer(y, spec, samples=samples, seed=seed, ground_truth=truth)
    m, u = post.meta["metrics"], post.meta["uncertainty"]
    row = {"psnr": m["psnr"], "psnr_input": float(psnr(y, truth)[0]) if y.shape == truth.shape else None,
           "status": u["status"], "seconds": post.meta["timings"]["total_s"],
           "spearman_ceiling": oracle_spearman(post.mean, truth)}
    row["reliability_raw"] = [coverage(post, truth, lv, method="raw") for lv in LEVELS]
    # inpainting: how the intervals hold inside the holes, where the solver invents what it shows
    missing = missing_pixels(parse(spec).physics(tuple(truth.shape)), truth)
    if missing is not None:
        row["coverage_90_missing_raw"] = coverage(post, truth, 0.9, method="raw", where=missing)
        if post.calibrated:
            row["coverage_90_missing"] = coverage(post, truth, 0.9, where=missing)
        if post.calibrated and post.calibration.grouped:  # what one multiplier for all pixels would have given there
            pooled = post.calibration.pooled()
            row["coverage_90_missing_pooled"] = fraction_inside(truth, *pooled.interval(post.mean, 0.9), missing)
    if post.calibrated:
        row.update({k: m[k] for k in ("coverage_50", "coverage_90", "coverage_95", "coverage_50_raw",
                                      "coverage_90_raw", "coverage_95_raw", "interval_width_90",
                                      "interval_width_90_raw", "std_error_spearman", "std_error_spearman_raw",
                                      "predicted_psnr")})
        row["reliability"] = [coverage(post, truth, lv) for lv in LEVELS]
        row["self_check"] = u["self_check"]["verdict"]
        row["chi2_ratio"] = u["self_check"]["chi2_ratio"]
    else:
        row.update({"coverage_90_raw": m["coverage_90"], "coverage_50_raw": m["coverage_50"],
                    "coverage_95_raw": m["coverage_95"], "interval_width_90_raw": m["interval_width_90"],
                    "std_error_spearman_raw": m["std_error_spearman"], "reason": u["reason"]})
    return row


def summarise(units: list[dict]) -> list[dict]:
    from restore.metrics import spearman

    rows = []
    groups: dict[tuple, list] = {}
    for u in units:
        groups.setdefault((u["set"], u["solver"], u["task"]), []).append(u)
    for (set_name, solver, task), us in groups.items():
        row = {"set": set_name, "solver": solver, "task": task, "images": len(us),
               "status": "/".join(sorted({u["status"] for u in us}))}
        for k in ("psnr", "coverage_50_raw", "coverage_50", "coverage_90_raw", "coverage_90", "coverage_95_raw",
                  "coverage_95", "interval_width_90_raw", "interval_width_90", "std_error_spearman_raw",
                  "std_error_spearman", "spearman_ceiling", "predicted_psnr", "coverage_90_missing_raw",
                  "coverage_90_missing", "coverage_90_missing_pooled"):
            vals = [u[k] for u in us if u.get(k) is not None]
            row[k] = float(np.mean(vals)) if vals else None
        cov = [u["coverage_90"] for u in us if "coverage_90" in u]
        row["below_87"] = float(np.mean([c < 0.9 - TARGET_GAP for c in cov])) if cov else None
        pred = [(u["predicted_psnr"], u["psnr"]) for u in us if u.get("predicted_psnr") is not None]
        row["psnr_rank_corr"] = spearman(*map(torch.tensor, zip(*pred))) if len(pred) >= 3 else None
        row["flagged"] = float(np.mean([u.get("self_check") == "poor fit" for u in us])) if cov else None
        rows.append(row)
    return rows


COLUMNS = ["set", "solver", "task", "images", "status", "psnr", "coverage_90_raw", "coverage_90", "below_87",
           "coverage_90_missing_raw", "coverage_90_missing",
           "coverage_50_raw", "coverage_50", "coverage_95", "interval_width_90_raw", "interval_width_90",
           "std_error_spearman_raw", "std_error_spearman", "spearman_ceiling", "psnr_rank_corr", "flagged"]


def reliability(units: list[dict], path) -> dict:
    from restore.viz import save_reliability_plot

    curves = {}
    in_set = [u for u in units if u["set"] == "CBSD68"] or units  # the in-distribution set when it ran
    for solver in sorted({u["solver"] for u in in_set}):
        us = [u for u in in_set if u["solver"] == solver]
        cal = [u["reliability"] for u in us if "reliability" in u]
        curves[f"{solver} raw"] = {"levels": list(LEVELS), "coverage": np.mean([u["reliability_raw"] for u in us],
                                                                               0).tolist()}
        if cal:
            curves[f"{solver} calibrated"] = {"levels": list(LEVELS), "coverage": np.mean(cal, 0).tolist()}
    save_reliability_plot(curves, path, title=f"{in_set[0]['set']}: raw vs calibrated")
    return curves


def solver_labels(solvers: list[str], options: dict) -> dict[str, str]:
    """solver -> the name its rows carry: the solver's, with the run's options beside it when there are any
    (``pmrf (preset=paper)``), so a preset's rows never mix with the defaults' in a resumed file or the report."""
    from restore.priors.registry import options_key

    return {s: f"{s} ({options_key(options)})" if options else s for s in solvers}


def kept_units(units: list[dict], rerun, solvers, sets=None) -> list[dict]:
    """The resumed units that stay: all but those of a ``rerun`` task run by one of ``solvers`` in one of ``sets``
    (every set when None): a set this run skips (not chosen, or its folder missing) keeps its rows."""
    return [u for u in units
            if not (u["task"] in rerun and u["solver"] in solvers and (sets is None or u["set"] in sets))]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--solvers", default="vble,pmrf")
    ap.add_argument("--images", type=int, default=12, help="CBSD68 images (every 68/N-th); faces: at most 8")
    ap.add_argument("--crop", type=int, default=128)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--sets", default="all", help="comma-separated set names of task_sets(), or all")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--rerun", nargs="*", default=[], metavar="TASK",
                    help="with --resume: run these tasks again for --solvers (a code change the file cannot see)")
    ap.add_argument("--options", nargs="*", default=[], metavar="NAME=VALUE",
                    help="solver options for every solver (e.g. preset=paper: the preset's own calibration table)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from restore.api import Restorer
    from restore.train.tune import parse_grid
    from restore.tasks import parse

    options = {k: v[0] for k, v in parse_grid(args.options).items()}
    labels = solver_labels(args.solvers.split(","), options)

    out = Path(args.out) if args.out else RESULTS / "uncertainty.json"
    hold_results_lock(out)
    units = json.loads(out.read_text())["units"] if args.resume and out.exists() else []
    sets = task_sets(args.crop)
    chosen = list(sets) if args.sets == "all" else args.sets.split(",")
    if args.sets == "all" and not (REPO / CQ100_FOLDER).is_dir():
        print(f"{CQ100_SET}: skipped ({CQ100_FOLDER} is missing; python scripts/get_cq100.py makes it)", flush=True)
        chosen.remove(CQ100_SET)
    units = kept_units(units, args.rerun, list(labels.values()), chosen)
    done = {(u["set"], u["solver"], u["task"], u["image"]) for u in units}
    images = {}
    for name in chosen:
        folder, _ = sets[name]
        if folder not in images:
            n = args.images if folder in ("CBSD68", CQ100_FOLDER) else min(args.images, 8)
            images[folder] = spread(load_set(folder, crop=args.crop), n)

    def save():
        rows = summarise(units)
        plot = out.with_name(f"reliability_{out.stem}.png")
        curves = reliability(units, plot) if units else {}
        write_results("uncertainty", {"solvers": list(labels.values()), "options": options, "crop": args.crop,
                                      "samples": args.samples, "levels": list(LEVELS), "rows": rows,
                                      "curves": curves, "plot": plot.name, "units": units}, args.out)
        return rows

    for solver, label in labels.items():
        restorer = Restorer(solver, **options)
        for name in chosen:
            folder, specs = sets[name]
            for task, spec in specs.items():
                if (why := restorer.solver.supports(parse(spec))) is not None:
                    print(f"{name} {label} {task}: skipped ({why})", flush=True)  # e.g. ScoreDVI beyond denoising
                    continue
                for i, (fname, truth) in enumerate(images[folder]):
                    if (name, label, task, fname) in done:
                        continue
                    row = evaluate(restorer, spec, truth, seed=i, samples=args.samples)
                    units.append({"set": name, "solver": label, "task": task, "image": fname, **row})
                    print(f"{name} {label} {task} {fname}: {row['psnr']:.2f} dB, cov90 "
                          f"{row.get('coverage_90_raw'):.3f} -> {row.get('coverage_90', math.nan):.3f}", flush=True)
                save()
    rows = save()
    print(table(rows, COLUMNS))


if __name__ == "__main__":
    main()
