"""Real camera noise: ScoreDVI on its own task, against the Gaussian solvers run at an estimated noise level.

    python -m benchmarks.realnoise --quick --jobs 2   # 2 CC15 + 2 SIDD-val-80 pairs (QUICK_PAIRS), 64x64 centre crops
    python -m benchmarks.realnoise --jobs 2           # all 15 CC15 + 80 SIDD-val-80 pairs, 128x128 centre crops
    python -m benchmarks.realnoise --device cuda --jobs 4 --resume   # the same on a lent GPU, in resumable pieces
    python -m benchmarks.realnoise --per-set 8 --methods input "scoredvi (default beta0)" --out F.json  # a subset

The pairs are real photographs with a reference (CC15: mean of many shots of a static scene; SIDD: the dataset's
ground truth), so the noise is signal-dependent and spatially correlated, not the i.i.d. Gaussian noise our priors
were trained on. Methods, all at their default (paper) settings:
  - ``input``: the noisy photo itself;
  - ``scoredvi``: the only solver built for unknown noise, run on ``denoise:real`` with the paper's Gamma prior
    beta_0 for the set (0.01 CC, 0.02 SIDD, from the reference code's settings);
  - ``<solver> (sigma estimated)``: every Gaussian-noise solver on ``denoise:gaussian:sigma=auto``, the level the
    product estimates (``restore.noise``, as the app does for an upload and the Restorer for ``auto``; the row's
    ``sigma_used_255``). This is what a user without ScoreDVI gets. ``sigma_estimated_255`` in every row is the
    paper's estimate (``restore.solvers.scoredvi.estimate_noise_std``: wavelet MAD on 4x4 pixel-shuffled
    sub-images); ScoreDVI's rows give the level it ran at (its warm start, lam and beta0 follow it) as
    ``sigma_used_255``: by default the product's estimate (``restore.noise``), the paper's in
    ``scoredvi (wavelet estimate)`` (the default until 2026-12-06) and the paper preset; ``scoredvi (noise prior
    at 2x the reading)`` sets beta0 = alpha0 (2 s_hat)^2 instead of by the default's fixed thresholds, and
    ``scoredvi (local noise prior)`` blends the two per pixel by the local texture (``noise_prior="local"``);
    ``scoredvi (200 iterations)`` and ``(400 iterations)`` are the default run longer (the trade-off between its
    100 and the paper's fresh-network 400);
  - ``<solver> (oracle sigma)``: the same at the true residual std (noisy - clean), an oracle no user has, which tells
    the noise estimate's share of the gap from the Gaussian model's.
Per pair the JSON records the estimate and the true residual std (noisy - clean), so a reader can see how far the
estimate is off. Metrics as in ``benchmarks.quality``: PSNR, SSIM, 90% coverage, std-|error| Spearman, diversity.
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch

from benchmarks.common import (RESULTS, centre_crop, check_cards_exclude, data_root, in_processes, summary_row, table,
                               write_results)

# The fixed quick pairs: the 1st and 8th CC15 files and the 1st and 41st SIDD-val-80 files by sorted name.
QUICK_PAIRS = {"CC15": ("5dmark3_iso3200_1.png", "d800_iso1600_2.png"), "SIDD-val-80": ("10_1.png", "30_1.png")}
SETS = ("CC15", "SIDD-val-80")
BETA0 = {"CC15": 0.01, "SIDD-val-80": 0.02}  # ScoreDVI's Gamma prior rate per data set (reference code's values)
# cheapest first when --jobs spreads the units: seconds a unit at 64 px on one thread (realnoise_quick.json)
COST = {"scoredvi": 15.0, "aps": 61.0, "langevin": 19.0, "reddiff": 14.0, "vble": 4.0, "pmrf": 0.8}


def methods() -> dict[str, dict]:
    """name -> {solver, task: "real" or "gaussian", sigma: "oracle" for the true std}; 'input' is the noisy photo."""
    from restore.solvers import base

    out = {"input": {"baseline": "input"}, "scoredvi": {"solver": "scoredvi", "task": "real"},
           "scoredvi (paper: 400 iterations)": {"solver": "scoredvi", "task": "real", "options": {"preset": "paper"}},
           # what a user gets: the default beta0 on every set, so its calibration table applies (the per-set beta0
           # above changes the solver's config, which no table covers)
           "scoredvi (default beta0)": {"solver": "scoredvi", "task": "real", "options": {"beta0": None}},
           # the former default (to 2026-12-06): the paper's pixel-shuffled wavelet reading of the noise level
           "scoredvi (wavelet estimate)": {"solver": "scoredvi", "task": "real",
                                           "options": {"beta0": None, "noise_estimator": "wavelet"}},
           # the alternative noise prior: its mean noise std at twice the reading instead of the fixed thresholds
           "scoredvi (noise prior at 2x the reading)": {"solver": "scoredvi", "task": "real",
                                                         "options": {"beta0": None, "noise_prior": "estimate"}},
           # per pixel between the two: the thresholds' rate where y is flat, the scaled one where it is textured
           "scoredvi (local noise prior)": {"solver": "scoredvi", "task": "real",
                                            "options": {"beta0": None, "noise_prior": "local"}},
           # the speed/quality trade-off on real noise: the default with longer runs (its table covers only its own
           # 100 iterations, so these show the raw spread)
           "scoredvi (200 iterations)": {"solver": "scoredvi", "task": "real",
                                         "options": {"beta0": None, "iterations": 200}},
           "scoredvi (400 iterations)": {"solver": "scoredvi", "task": "real",
                                         "options": {"beta0": None, "iterations": 400}}}
    gaussian = [n for n in base.names() if n != "scoredvi"]
    for name in gaussian:
        out[f"{name} (sigma estimated)"] = {"solver": name, "task": "gaussian", "sigma": "auto"}
    # oracle: the true residual std, read from the clean reference; separates the estimate's error from the
    # mismatch of a Gaussian model with camera noise (no user has this number)
    for name in gaussian:
        out[f"{name} (oracle sigma)"] = {"solver": name, "task": "gaussian", "sigma": "oracle"}
    return out


def load_pairs(sets, crop: int, quick: bool, per_set: int | None = None) -> list[dict]:
    """``make_pair`` dicts with (1, 3, crop, crop) tensors in [0, 1], sorted by set then file name; ``per_set``:
    that many pairs of each set, evenly spaced in name order."""
    from restore.io import read_image

    pairs = []
    for s in sets:
        folder = data_root() / s
        names = sorted(p.name for p in (folder / "noisy").iterdir())
        if quick:
            missing = set(QUICK_PAIRS[s]) - set(names)
            if missing:
                raise SystemExit(f"{folder / 'noisy'} lacks {', '.join(sorted(missing))}")
            names = list(QUICK_PAIRS[s])
        elif per_set:
            names = names[::max(1, len(names) // per_set)][:per_set]
        for n in names:
            noisy, clean = read_image(folder / "noisy" / n), read_image(folder / "clean" / n)
            if noisy.shape != clean.shape:
                raise SystemExit(f"{s}/{n}: noisy {tuple(noisy.shape)} and clean {tuple(clean.shape)} differ in shape")
            pairs.append(make_pair(s, n, centre_crop(noisy, crop), centre_crop(clean, crop)))
    return pairs


def make_pair(set_name: str, image: str, noisy: torch.Tensor, clean: torch.Tensor) -> dict:
    """One pair with its noise std, on the [0, 1] scale, worked out once: ScoreDVI's estimate from the noisy photo
    (``restore.solvers.scoredvi.estimate_noise_std``) and the true residual std (noisy - clean)."""
    from restore.solvers.scoredvi import estimate_noise_std

    return {"set": set_name, "image": image, "noisy": noisy, "clean": clean,
            "sigma_estimated": estimate_noise_std(noisy), "sigma_true": float((noisy - clean).std())}


def evaluate_pair(mname: str, cfg: dict, pair: dict, samples: int, seed: int, restorers: dict,
                  device: str = "cpu") -> dict:
    """Metrics of one method on one noisy/clean pair (or a note saying why there are none)."""
    from restore import metrics
    from restore.api import Restorer

    y, x = pair["noisy"], pair["clean"]
    sigma_hat, sigma_true = pair["sigma_estimated"], pair["sigma_true"]
    out = {"set": pair["set"], "image": pair["image"], "method": mname, "sigma_estimated_255": 255 * sigma_hat,
           "sigma_true_255": 255 * sigma_true}
    t0 = time.perf_counter()
    if cfg.get("baseline") == "input":
        return {**out, "psnr": float(metrics.psnr(y, x)), "ssim": float(metrics.ssim(y, x))}
    options = dict(cfg.get("options", {}))
    if cfg["task"] == "real":  # ScoreDVI: the set's noise-precision prior, as the reference code sets it
        options.setdefault("beta0", BETA0.get(pair["set"], 0.01))  # None (kept): the solver's own default rule
        spec = "denoise:real"
    else:
        if cfg.get("sigma") == "auto":
            spec = "denoise:gaussian:sigma=auto"  # the Restorer estimates it (restore.noise)
        else:
            sigma = sigma_true if cfg.get("sigma") == "oracle" else sigma_hat
            spec = f"denoise:gaussian:sigma={sigma:.6f}"
            out["sigma_used_255"] = 255 * sigma
    key = (mname, options.get("beta0"))
    try:
        if key not in restorers:
            restorers[key] = Restorer(cfg["solver"], None, device, **options)
        post = restorers[key](y.to(device), spec, samples=samples, seed=seed)
    except Exception as exc:  # one failing method must not lose the others' rows
        return {**out, "note": f"failed: {exc}"[:200]}
    m = metrics.report(post, x.to(device))
    if "noise_estimate" in post.meta:
        out["sigma_used_255"] = post.meta["noise_estimate"]["sigma_255"]
    elif "noise_std_used" in post.meta:  # ScoreDVI's own reading (its noise_estimator)
        out["sigma_used_255"] = 255 * post.meta["noise_std_used"]
    return {**out, **{k: v for k, v in m.items() if isinstance(v, float)}, "seconds": time.perf_counter() - t0,
            "provenance": post.meta["provenance"]}


def summarise(per_image: list[dict], method_names, pairs: list[dict]) -> list[dict]:
    """One row per set x method (``common.summary_row``: metric means over its pairs or a note)."""
    sizes = {s: sum(p["set"] == s for p in pairs) for s in dict.fromkeys(p["set"] for p in pairs)}
    return [summary_row({"set": s, "method": m}, [r for r in per_image if r["set"] == s and r["method"] == m], n,
                        "pairs") for s, n in sizes.items() for m in method_names]


_PAIRS: list = []
_RESTORERS: dict = {}


def _worker_init(pairs: list):
    _PAIRS[:] = [{**p, "noisy": torch.from_numpy(p["noisy"]), "clean": torch.from_numpy(p["clean"])} for p in pairs]


def _worker(mname, cfg, i, samples, device):
    return evaluate_pair(mname, cfg, _PAIRS[i], samples, i, _RESTORERS, device)


def run_units(todo: list, pairs: list, samples: int, jobs: int, finished, device: str = "cpu") -> None:
    """Evaluate every (method name, config, pair index) in ``todo``, calling ``finished(result)`` as each is done;
    jobs > 1: that many spawned processes of one thread each, cheapest methods first. Pair i is seeded by i."""
    if jobs <= 1:
        restorers: dict = {}
        for m, c, i in todo:
            finished(evaluate_pair(m, c, pairs[i], samples, i, restorers, device))
        return
    todo = sorted(todo, key=lambda u: COST.get(u[1].get("solver"), 0.0))
    in_processes(jobs, _worker, [(m, c, i, samples, device) for m, c, i in todo], _worker_init,
                 [{**p, "noisy": p["noisy"].numpy(), "clean": p["clean"].numpy()} for p in pairs], finished)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="the 4 QUICK_PAIRS at 64 px instead of all 95 at 128 px")
    ap.add_argument("--sets", nargs="*", default=list(SETS), choices=SETS)
    ap.add_argument("--methods", nargs="*", default=None, help="subset of method names")
    ap.add_argument("--crop", type=int, default=None, help="centre-crop size in px (default 64 quick, 128 full)")
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--per-set", type=int, default=None,
                    help="that many pairs of each set, evenly spaced in name order (default: all; not with --quick)")
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--out", default=None)
    ap.add_argument("--device", default="cpu", help="torch device for every method (e.g. cuda on a lent GPU)")
    ap.add_argument("--resume", action="store_true",
                    help="keep the results in the output file written with the same pairs, crop and samples (methods "
                         "whose settings changed, and results whose provenance no longer holds, are rerun)")
    ap.add_argument("--rerun", action="store_true",
                    help="with --resume: rerun the --methods named even where their settings and provenance hold "
                         "(a code change provenance cannot see); the other methods' results are kept")
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    from benchmarks.quality import intern_provenance, previous_results
    from restore.priors import registry

    for s in args.sets:
        check_cards_exclude(s, [n for n in registry.available() if registry.PRIORS[n].file])
    crop = args.crop or (64 if args.quick else 128)
    if args.quick and args.per_set:
        raise SystemExit("--per-set picks from all pairs; --quick has its own 4")
    pairs = load_pairs(args.sets, crop, args.quick, args.per_set)
    defined = methods()
    unknown = set(args.methods or ()) - set(defined)
    if unknown:
        raise SystemExit(f"unknown method(s) {', '.join(sorted(unknown))}; known: {', '.join(defined)}")
    chosen = {m: c for m, c in defined.items() if not args.methods or m in args.methods}
    settings = {"pairs": [f"{p['set']}/{p['image']}" for p in pairs], "crop": crop, "samples": args.samples}
    name = "realnoise_quick" if args.quick else "realnoise"
    path = RESULTS / f"{name}.json" if args.out is None else args.out
    per_image, provenances, spent, in_file = [], {}, 0.0, chosen
    if args.resume:  # a --methods run keeps the other methods' results (carried), and adds its own
        prev = previous_results(path, {**settings, "methods": chosen},
                                carry=[m for m in defined if m not in chosen] if args.methods else ())
        per_image, spent, provenances = prev.kept, prev.seconds, prev.provenances
        if args.rerun:
            if not args.methods:
                raise SystemExit("--rerun needs --methods (which methods to rerun)")
            per_image = [r for r in per_image if r["method"] not in chosen]
            print(f"rerunning {', '.join(chosen)}: --rerun", flush=True)
        in_file = {m: c for m, c in defined.items() if m in chosen or m in prev.carried}
        print(f"resuming: {len(per_image)} results kept"
              + (f"; rerunning {', '.join(prev.changed)} (settings changed)" if prev.changed else ""), flush=True)
        for m, why in prev.stale.items():
            print(f"rerunning {m}: {'; '.join(why)}", flush=True)
    done = {(r["set"], r["image"], r["method"]) for r in per_image}
    todo = [(m, c, i) for m, c in chosen.items() for i, p in enumerate(pairs) if (p["set"], p["image"], m) not in done]
    t_start = time.time() - spent

    def save(complete: bool):
        return write_results(name, {**settings, "methods": in_file, "beta0": BETA0, "jobs": args.jobs,
                                    "device": args.device, "complete": complete,
                                    "rows": summarise(per_image, in_file, pairs),
                                    "per_image": per_image, "provenances": provenances,
                                    "total_seconds": time.time() - t_start}, args.out)

    def finished(result: dict):
        per_image.append(intern_provenance(result, provenances))
        save(complete=False)
        print(f"[{time.time() - t_start:6.0f}s] {result['set']:<12} {result['image']:<22} {result['method']:<28} "
              + (f"PSNR {result['psnr']:.2f}" if "psnr" in result else result.get("note", "")), flush=True)

    run_units(todo, pairs, args.samples, args.jobs, finished, args.device)
    cols = ["set", "method", "psnr", "ssim", "coverage_90", "std_error_spearman", "mean_std", "sigma_estimated_255",
            "sigma_used_255", "sigma_true_255", "seconds", "note"]
    print(table(summarise(per_image, in_file, pairs), cols))
    out = save(complete=len(per_image) == len(in_file) * len(pairs))
    print(f"wrote {out} in {time.time() - t_start:.0f}s")


if __name__ == "__main__":
    main()
