"""Quality and calibration of every registered solver, plus baselines, on CBSD68 crops.

    python -m benchmarks.quality --quick     # 4 fixed images (benchmarks.common.QUICK_CBSD68), 128x128 centre crops
    python -m benchmarks.quality             # all 68 images, 256x256 centre crops
    python -m benchmarks.quality --quick --paper-settings --samples 4 --jobs 2   # quick images, paper settings

Tasks (noise std on the /255 scale, as in notes/vble.md and DESIGN.md): Gaussian denoising 25; deblurring with the VBLE
paper's gaussian_std1 kernel at 2.55 and the levin09_0 motion kernel at 7.65; x4 bicubic SR at 2.55; inpainting of 50%
random pixels and of a centred box (30% of each side) at 2.55. Each image's observation is seeded by its index.
Baselines on the same observations: the degraded input (or bicubic upsampling for SR), PnP-ULA on our score prior
(the `langevin` solver with prior score-natural), deepinv's DiffPIR on our score prior, and two classical point
estimates through deepinv (``benchmarks.classical``): Wiener-Hunt deconvolution (denoising and deblurring) and
TV-regularised least squares (every task), their weights scanned on BSD432 training crops. Metrics per DESIGN.md:
PSNR, SSIM, LPIPS when its backbone is on disk, coverage of the 90% interval, std-|error| Spearman correlation,
sample diversity, seconds per image. A solver that cannot run a task gets a row saying why.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path
from typing import NamedTuple

import torch

from benchmarks import classical
from benchmarks.common import (PAIRED_COLUMNS, QUICK_CBSD68, RESULTS, check_cards_exclude, hold_results_lock,
                               extra_tasks, in_processes, load_set, paired_against, spread, summary_row, table,
                               tasks, write_results)



def methods(quick: bool) -> dict[str, dict]:
    """name -> {solver, prior, options}; 'baseline' entries are computed here, not by a registered solver."""
    from restore.solvers import base

    # --quick trades iterations for time so every solver fits in 15 minutes on 2 cores; the full run uses the
    # solvers' default (paper) settings. Both are recorded in the JSON.
    # Measured with --jobs 2 (4 crops, 6 tasks, 2 samples): 617 s on 2026-11-23 with the settings before these, and
    # 1121 s with them on 2026-12-01, on a machine where the same denoiser call took 1.8x as long; so they were cut
    # (Langevin 150 -> 100 iterations, RED-Diff and PMRF's mean 30 -> 20 steps, ScoreDVI 40 -> 30 iterations, APS 6 x 8
    # -> 4 x 6 steps, PnP-ULA 50 -> 25, DiffPIR 10 -> 8). ScoreDVI gets 30 of its 400 iterations at 3x its paper lr
    # (at 1e-3 it stays below the noisy input after 40 iterations: 19.8 dB vs 20.4).
    # Since 2026-12-02 RED-Diff, Langevin and PMRF default to fast settings (restore.train.tune picked them on
    # held-out training crops), so --quick runs them as they are; the paper-settings rows use preset="paper".
    # ScoreDVI's fast default (2026-12-02: a warm start, 100 iterations) fits the quick run as it is
    # APS's fast default (2026-12-02: 8 x 3 steps at lr 1.0) fits it too
    # VBLE ran with 32 of its 100 decoded samples here until 2026-12-07: a setting no calibration table covers, so
    # the quick calibration table showed its raw spread (90 % coverage 0.59) as if it were the product's; it now
    # runs as a user gets it (about 2x the time of that row)
    quick_opts: dict[str, dict] = {}
    out = {"input": {"baseline": "input"}}
    for name in base.names():
        out[name] = {"solver": name, "prior": None, "options": quick_opts.get(name, {}) if quick else {}}
    # the paper's fixed iteration count beside our early-stopped default (full runs, or name it in --methods)
    out["vble (paper: fixed iterations)"] = {"solver": "vble", "prior": None, "full_only": True,
                                              "options": {"preset": "paper", **({"stat_samples": 32} if quick else {})}}
    # PMRF's default Euler step count is the flow card's per task family; the paper's K = 25 beside it (with the
    # posterior mean from RED-Diff's paper settings)
    out["pmrf (paper: 25 Euler steps)"] = {"solver": "pmrf", "prior": None, "full_only": True,
                                           "options": {"preset": "paper"}}
    out["scoredvi (paper: 400 iterations)"] = {"solver": "scoredvi", "prior": None, "full_only": True,
                                               "options": {"preset": "paper"}}
    out["aps (paper: 16 x 30 steps)"] = {"solver": "aps", "prior": None, "full_only": True,
                                         "options": {"preset": "paper"}}
    out["reddiff (paper: 100 steps)"] = {"solver": "reddiff", "prior": None, "full_only": True,
                                         "options": {"preset": "paper"}}
    # PnP-ULA: the paper's one chain per sample at 500 iterations, and the weight-free wavelet prior
    out["langevin (paper: 500 iterations)"] = {"solver": "langevin", "prior": None, "full_only": True,
                                               "options": {"preset": "paper"}}
    out["langevin (wavelet)"] = {"solver": "langevin", "prior": "wavelet",
                                 "options": {"prior_sigma": 0.05, **({} if quick else {"preset": "paper"})}}
    out["diffpir (score-natural)"] = {"baseline": "diffpir", "max_iter": 8 if quick else 100}
    # classical point estimates (benchmarks.classical): no posterior, so PSNR and SSIM only
    out["wiener-hunt"] = {"baseline": "wiener", "weights": dict(classical.WEIGHTS["wiener"])}
    out["tv least squares"] = {"baseline": "tv", "weights": dict(classical.WEIGHTS["tv"]),
                               "iterations": classical.TV_ITERATIONS}
    # APS cannot beat its tokenizer: the PSNR of tokenizer(x) against x is its ceiling (same on every task)
    out["tokenizer ceiling (tokens-natural)"] = {"baseline": "tokenizer"}
    return out


def run_diffpir(y, physics, prior, max_iter: int, n_samples: int, seed: int):
    """deepinv's DiffPIR on our denoiser; K samples from K seeds (it draws from the global RNG, seeded here)."""
    import deepinv as dinv

    from restore.posterior import Posterior
    from restore.solvers.base import noise_sigma

    sigma = noise_sigma(physics, y)
    algo = dinv.sampling.DiffPIR(prior.module, data_fidelity=dinv.optim.L2(), sigma=sigma, max_iter=max_iter,
                                 verbose=False)
    samples = []
    for k in range(n_samples):
        torch.manual_seed(seed * 1000 + k)
        with torch.no_grad():
            samples.append(algo(y, physics).clamp(0, 1))
    s = torch.cat(samples)
    return Posterior(mean=s.mean(0, keepdim=True), samples=s)


class Previous(NamedTuple):
    """What ``previous_results`` keeps of an earlier run."""

    kept: list  # per-image results still valid
    seconds: float  # time the earlier run had spent
    changed: list  # methods rerun because their benchmark settings changed
    stale: dict  # method -> why some of its results are rerun (solver defaults or prior files changed since)
    provenances: dict  # the provenance table of the kept results (key -> provenance)
    carried: dict = {}  # method -> its settings in the file, for the ``carry`` methods found there


def _default_scheme(cfg: dict) -> str | None:
    """The quantisation scheme a method's Restorer applies now (``Solver.preferred_quant``; methods name none): None
    for a weight-free prior (wavelet, tv), which has no quantised form and runs in float."""
    from restore.priors import registry
    from restore.solvers import base

    if "solver" not in cfg:
        return None
    spec = registry.PRIORS.get(cfg.get("prior") or "")
    if spec is not None and spec.file is None:
        return None
    try:
        return base.get(cfg["solver"], **cfg.get("options", {})).preferred_quant()
    except (ValueError, KeyError):
        return None


def stale_checker(provenances: dict, tasks: dict):
    """``why_stale(provenance key, task name)``: why a stored result would come out differently now
    (``restore.stale.reasons`` for its recorded provenance and the task's family; empty when it would not or the key
    is unknown), memoised per (provenance, family): a per-family default only touches its own family.
    provenances: a result file's provenance table; tasks: its task name -> spec."""
    from restore.stale import reasons as stale_reasons

    families = {name: _family(spec) for name, spec in tasks.items()}
    memo = {}

    def why_stale(key, task) -> list[str]:
        at = (key, families.get(task))
        if at not in memo:
            memo[at] = stale_reasons(provenances[key], at[1]) if isinstance(key, str) and key in provenances else []
        return memo[at]
    return why_stale


def _family(spec: str) -> str | None:
    """The settings family ('denoise', 'sr4', 'inpaint-region', ...: ``Task.family``) of a benchmark task spec, None
    for one that does not parse."""
    from restore.tasks import TaskError, parse

    try:
        return parse(spec).family
    except TaskError:
        return None


def previous_results(path, settings: dict, carry=(), rerun=()) -> Previous:
    """Per-image results (and seconds spent) of an earlier run written to ``path`` with the same images, crop,
    samples and tasks, kept for the methods whose settings are unchanged. A result that recorded its provenance is
    also dropped when that no longer holds (``restore.stale.reasons``: a solver default or a prior's weights or
    card changed since); results from before provenance was recorded are kept as they are. Methods named in
    ``carry`` (not being run now: ``--methods`` picked others) keep their results and settings untouched; the results
    of the tasks in ``rerun`` are dropped for the methods being run (a code change provenance cannot see)."""
    from restore.priors import registry

    path = Path(path)
    if not path.exists():
        return Previous([], 0.0, [], {}, {})
    old = json.loads(path.read_text())
    differ = [k for k, v in settings.items() if k != "methods" and
              json.dumps(old.get(k), sort_keys=True, default=str) != json.dumps(v, sort_keys=True, default=str)]
    if differ:
        raise SystemExit(f"{path} was written with other settings ({', '.join(differ)}); "
                         "use another --out or drop --resume")
    if "per_image" not in old:
        raise SystemExit(f"{path} predates per-image results and cannot be resumed; drop --resume")
    old_methods = old.get("methods", {})
    changed = sorted(m for m, cfg in settings["methods"].items() if m in old_methods and
                     json.dumps(old_methods[m], sort_keys=True) != json.dumps(cfg, sort_keys=True))
    table_ = old.get("provenances", {})
    why_stale = stale_checker(table_, settings.get("tasks", {}))
    schemes = {m: _default_scheme(cfg) for m, cfg in settings["methods"].items()}
    carried = {m: old_methods[m] for m in carry if m in old_methods and m not in settings["methods"]}
    kept, stale = [], {}
    for r in old["per_image"]:
        if r["method"] in carried:
            kept.append(r)
            continue
        if r["method"] not in settings["methods"] or r["method"] in changed:
            continue
        if r.get("task") in rerun:
            stale.setdefault(r["method"], [f"--rerun {' '.join(rerun)}"])
            continue
        why = list(why_stale(r.get("provenance"), r.get("task")))
        ran = {registry.split_name(n)[1] for n in table_.get(r.get("provenance"), {}).get("priors", {})}
        if r.get("provenance") in table_ and schemes.get(r["method"]) not in ran:  # e.g. RED-Diff's int8 default
            why.append(f"the solver now runs its prior as {schemes[r['method']] or 'float'}")
        if why:
            stale.setdefault(r["method"], sorted(set(why)))
            continue
        kept.append(r)
    used = {r["provenance"] for r in kept if "provenance" in r}
    return Previous(kept, float(old.get("total_seconds", 0.0)), changed, stale,
                    {k: v for k, v in table_.items() if k in used}, carried)


def intern_provenance(result: dict, table_: dict) -> dict:
    """``result`` with its provenance replaced by a key into ``table_`` (added there): results of one method share
    one entry, which keeps the file small."""
    prov = result.get("provenance")
    if not isinstance(prov, dict):
        return result
    import hashlib

    key = hashlib.sha256(json.dumps(prov, sort_keys=True).encode()).hexdigest()[:12]
    table_.setdefault(key, prov)
    return {**result, "provenance": key}


# Cost of one (task, image) unit of a method, averaged over the tasks: --jobs runs the cheapest methods first, so a
# run cut short (and resumed later) has whole rows for most methods rather than a few images of every one.
# Quick settings: rough relative costs. Paper settings: seconds measured on one thread at 128 px with 4 samples
# (quality_paper_quick.json); ScoreDVI runs only denoising, 1550-1584 s an image, twice that when the paper's restart
# fires (1 image of 4), so about 300 s a unit.
COST = {"scoredvi": 15.0, "aps": 8.0, "diffpir (score-natural)": 3.0, "reddiff": 2.0, "pmrf": 2.0, "langevin": 2.0}
PAPER_COST = {"langevin (paper: 500 iterations)": 764.0, "scoredvi (paper: 400 iterations)": 300.0,
              "aps (paper: 16 x 30 steps)": 400.0, "aps": 25.0,
              "scoredvi": 15.0,
              "reddiff (paper: 100 steps)": 181.0, "langevin (wavelet)": 131.0, "pmrf (paper: 25 Euler steps)": 79.0,
              "diffpir (score-natural)": 72.0, "vble (paper: fixed iterations)": 39.0, "vble": 15.0, "reddiff": 10.0,
              "langevin": 10.0, "pmrf": 8.0}


class Context:
    """What evaluating one method needs, loaded once per process: its Restorer, the score prior, the tokenizer."""

    def __init__(self, method_cfgs: dict, device: str):
        from restore.api import Restorer
        from restore.priors import registry

        self.device = device
        self.ready = set(registry.available())
        self.restorers = {m: Restorer(c["solver"], c["prior"], device, **c["options"])
                          for m, c in method_cfgs.items() if "solver" in c}
        baselines = {c.get("baseline") for c in method_cfgs.values()}
        self.score = (registry.load("score-natural", device)
                      if "diffpir" in baselines and "score-natural" in self.ready else None)
        self.tokenizer = (registry.load("tokens-natural", device).module.tokenizer
                          if "tokenizer" in baselines and "tokens-natural" in self.ready else None)


def cannot_run(spec: str, mname: str, cfg: dict, ctx: Context) -> str | None:
    """'n/a: why' when the method cannot run the task here (no weights, unsupported task); None when it can."""
    from restore.tasks import parse

    if "solver" in cfg:
        restorer = ctx.restorers[mname]
        if restorer.prior_name_for(spec) not in ctx.ready:
            return f"n/a: prior {restorer.prior_name_for(spec)} has no weights yet"
        reason = restorer.solver.supports(parse(spec))
        return f"n/a: {reason}" if reason else None
    if cfg.get("baseline") == "diffpir" and ctx.score is None:
        return "n/a: score-natural weights missing"
    if cfg.get("baseline") == "tokenizer" and ctx.tokenizer is None:
        return "n/a: tokens-natural weights missing"
    if cfg.get("baseline") in classical.ESTIMATORS:
        reason = classical.supports(cfg["baseline"], parse(spec).kind)
        return f"n/a: {reason}" if reason else None
    return None


def evaluate_image(tname: str, spec: str, mname: str, cfg: dict, images: list, i: int, samples: int,
                   ctx: Context) -> dict:
    """Metrics of one method on image i of ``images`` for one task (its observation seeded by i, drawn on the CPU so
    every device sees the same), or a note saying why there are none."""
    from restore import metrics
    from restore.priors import registry
    from restore.tasks import parse

    name, x = images[i]
    out = {"task": tname, "method": mname, "image": name}
    reason = cannot_run(spec, mname, cfg, ctx)
    if reason:
        return {**out, "note": reason}
    task = parse(spec)
    y, physics = task.simulate(x, torch.Generator().manual_seed(i))
    x, y, physics = x.to(ctx.device), y.to(ctx.device), physics.to(ctx.device)
    if mname in ctx.restorers:  # load (and quantise) the prior outside the timing: a --jobs worker loads it per method
        ctx.restorers[mname].prior(task)
    t0 = time.perf_counter()
    if cfg.get("baseline") in ("input", "tokenizer", *classical.ESTIMATORS):
        if cfg["baseline"] == "tokenizer":
            with torch.no_grad():
                est = ctx.tokenizer(x).clamp(0, 1)
        elif cfg["baseline"] in classical.ESTIMATORS:
            est = classical.ESTIMATORS[cfg["baseline"]](y, physics, cfg["weights"][task.kind],
                                                        **({"iterations": cfg["iterations"]} if "iterations" in cfg else {}))
        else:
            est = y if y.shape == x.shape else torch.nn.functional.interpolate(
                y, scale_factor=task.scale, mode="bicubic").clamp(0, 1)
        m = {"psnr": float(metrics.psnr(est, x)), "ssim": float(metrics.ssim(est, x))}
        if cfg["baseline"] == "tokenizer":
            out["provenance"] = {"solvers": [], "priors": {"tokens-natural": registry.digest("tokens-natural")}}
    else:
        try:
            if cfg.get("baseline") == "diffpir":
                post = run_diffpir(y, physics, ctx.score, cfg["max_iter"], samples, seed=i)
            else:
                post = ctx.restorers[mname](y, task, samples=samples, seed=i)
        except Exception as exc:  # one failing method must not lose the others' rows
            return {**out, "note": f"failed on image {i}: {exc}"[:200]}
        m = metrics.report(post, x)
        out["provenance"] = ({"solvers": [], "priors": {ctx.score.name: ctx.score.digest}}  # DiffPIR: our denoiser
                             if cfg.get("baseline") == "diffpir" else post.meta["provenance"])
    return {**out, **{k: v for k, v in m.items() if isinstance(v, float)}, "seconds": time.perf_counter() - t0}


TV_BASELINE = "tv least squares"


def summarise(per_image: list[dict], task_names, method_names, n_images: int) -> list[dict]:
    """One row per task x method, in task-then-method order (``common.summary_row``: metric means or a note)."""
    return [summary_row({"task": t, "method": m}, [r for r in per_image if r["task"] == t and r["method"] == m],
                        n_images) for t in task_names for m in method_names]


_CONTEXTS: dict = {}
_IMAGES: list = []


def _worker_init(images: list):
    """Each worker gets the images once, as numpy arrays (``common.in_processes``)."""
    _IMAGES[:] = [(n, torch.from_numpy(a)) for n, a in images]


def _worker_image(tname, spec, mname, cfg, i, samples, device) -> dict:
    if mname not in _CONTEXTS:  # each worker loads a method's priors once
        _CONTEXTS[mname] = Context({mname: cfg}, device)
    return evaluate_image(tname, spec, mname, cfg, _IMAGES, i, samples, _CONTEXTS[mname])


def run_units(todo: list, images: list, samples: int, device: str, jobs: int, finished, cost=None) -> None:
    """Evaluate every (task name, task spec, method name, method config, image index) in ``todo``, calling
    ``finished(result)`` as each is done. jobs > 1: that many spawned processes with one thread each, cheapest
    methods first by ``cost`` (method name -> cost of a unit; default ``COST``)."""
    if jobs <= 1:
        ctx = Context({m: c for _, _, m, c, _ in todo}, device)
        for t, s, m, c, i in todo:
            finished(evaluate_image(t, s, m, c, images, i, samples, ctx))
        return
    # units a method cannot run are answered here at once (evaluate_image returns their note without work), not
    # queued behind hours of real ones
    ctx = Context({m: c for _, _, m, c, _ in todo}, device)
    runnable = []
    for t, s, m, c, i in todo:
        if cannot_run(s, m, c, ctx):
            finished(evaluate_image(t, s, m, c, images, i, samples, ctx))
        else:
            runnable.append((t, s, m, c, i))
    cost = COST if cost is None else cost
    todo = sorted(runnable, key=lambda u: cost.get(u[2], 1.0))  # stable: task order kept within a cost
    in_processes(jobs, _worker_image, [(t, s, m, c, i, samples, device) for t, s, m, c, i in todo], _worker_init,
                 [(n, x.numpy()) for n, x in images], finished)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--samples", type=int, default=None, help="posterior samples (default 2 quick, 8 full)")
    ap.add_argument("--tasks", nargs="*", default=None,
                    help="subset of task names; 'sr2' (x2 SR) runs only when named")
    ap.add_argument("--methods", nargs="*", default=None,
                    help="subset of method names; with --resume the other methods' results stay in the file")
    ap.add_argument("--images", type=int, default=None,
                    help="only the first N images of CBSD68 (of another --set: N spread evenly over it)")
    ap.add_argument("--set", default="CBSD68",
                    help="image set: a folder of the data root, or of this checkout (train_data/CQ100: photos no "
                         "prior saw, made by scripts/get_cq100.py)")
    ap.add_argument("--subset", choices=["quick", "all"], default=None,
                    help="which CBSD68 images: the 4 fixed quick ones or all 68 (default: quick with --quick)")
    ap.add_argument("--crop", type=int, default=None, help="centre-crop size in px (default 128 quick, 256 full)")
    ap.add_argument("--paper-settings", action="store_true",
                    help="with --quick: keep the quick images and crop but run every solver at its default (paper) "
                         "settings instead of the trimmed quick iteration counts")
    ap.add_argument("--jobs", type=int, default=1,
                    help="task x method x image units run in this many processes, one thread each (cheapest "
                         "methods first)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--device", default="cpu", help="torch device for every method (e.g. cuda on a lent GPU)")
    ap.add_argument("--resume", action="store_true",
                    help="keep the results already in the output file (same images, crop, samples and tasks; methods "
                         "whose settings changed are rerun) and run only the missing task x method x image units; "
                         "the file is rewritten after every unit")
    ap.add_argument("--rerun", nargs="*", default=[], metavar="TASK",
                    help="with --resume: run these tasks' units again for the methods being run, e.g. after a code "
                         "change that the results' provenance does not record")
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")

    from restore.priors import registry

    check_cards_exclude(args.set, [n for n in registry.available() if registry.PRIORS[n].file])
    crop = args.crop or (128 if args.quick else 256)
    args.samples = args.samples or (2 if args.quick else 8)
    subset = args.subset or ("quick" if args.quick else "all")
    if args.set == "CBSD68":
        images = load_set("CBSD68", crop=crop, files=QUICK_CBSD68 if subset == "quick" else None)[:args.images]
    else:  # spread over the set, as benchmarks.uncertainty picks its crops
        images = spread(load_set(args.set, crop=crop), args.images)
    shared = tasks()
    known = {**shared, **extra_tasks()}
    if set(args.tasks or []) - set(known):
        raise SystemExit(f"--tasks: unknown task(s) {', '.join(sorted(set(args.tasks) - set(known)))}; "
                         f"known: {', '.join(known)}")
    all_tasks = {k: v for k, v in known.items() if (k in args.tasks if args.tasks else k in shared)}
    if set(args.rerun) - set(all_tasks):
        raise SystemExit(f"--rerun: unknown task(s) {', '.join(sorted(set(args.rerun) - set(all_tasks)))}; "
                         f"known: {', '.join(all_tasks)}")
    if args.rerun and not args.resume:
        raise SystemExit("--rerun needs --resume (without it every unit runs anyway)")
    trimmed = args.quick and not args.paper_settings
    defined = methods(trimmed)
    if args.methods and set(args.methods) - set(defined):
        raise SystemExit(f"unknown method(s) {', '.join(sorted(set(args.methods) - set(defined)))}; "
                         f"known: {', '.join(defined)}")
    all_methods = {k: v for k, v in defined.items()
                   if (k in args.methods if args.methods else not (trimmed and v.get("full_only")))}
    settings = {"images": [n for n, _ in images], "crop": crop, "samples": args.samples, "tasks": all_tasks,
                "methods": all_methods}
    if args.set != "CBSD68":  # (files written before --set existed are CBSD68's and resume as they are)
        settings["set"] = args.set
    name = "quality_quick" if trimmed else ("quality_paper_quick" if args.quick else "quality")
    hold_results_lock(Path(args.out) if args.out else RESULTS / f"{name}.json")
    per_image, done = [], set()
    provenances: dict = {}
    file_methods = all_methods  # what the file holds: with --methods and --resume, the other methods' rows stay
    if args.resume:
        prev = previous_results(args.out or RESULTS / f"{name}.json", settings,
                                carry=[m for m in defined if m not in all_methods] if args.methods else (),
                                rerun=args.rerun)
        per_image, prev_seconds, provenances = prev.kept, prev.seconds, prev.provenances
        file_methods = {m: all_methods.get(m) or prev.carried[m] for m in defined
                        if m in all_methods or m in prev.carried}
        done = {(r["task"], r["method"], r["image"]) for r in per_image}
        print(f"resuming: {len(done)} task x method x image results kept"
              + (f"; rerunning {', '.join(prev.changed)} (settings changed)" if prev.changed else ""), flush=True)
        for m, why in prev.stale.items():
            print(f"rerunning {m}: {'; '.join(why)}", flush=True)
    else:
        prev_seconds = 0.0
    t_start = time.time() - prev_seconds
    todo = [(t, s, m, c, i) for t, s in all_tasks.items() for m, c in all_methods.items()
            for i, (n, _) in enumerate(images) if (t, m, n) not in done]

    def save(complete: bool):
        extra = {"jobs": args.jobs, "threads_per_job": 1} if args.jobs > 1 else {}
        rows = summarise(per_image, all_tasks, file_methods, len(images))
        have = {(r["task"], r["method"], r["image"]) for r in per_image}
        complete = complete and all((t, m, n) in have for t in all_tasks for m in file_methods
                                    for n, _ in images)  # a --methods run leaves the others' gaps open
        return write_results(name, {**settings, "methods": file_methods, "device": args.device, "complete": complete,
                                    **extra, "rows": rows, "against_tv": paired_against(per_image, TV_BASELINE),
                                    "per_image": per_image, "provenances": provenances,
                                    "total_seconds": time.time() - t_start}, args.out)

    def finished(result: dict):
        result = intern_provenance(result, provenances)
        per_image.append(result)
        save(complete=False)
        print(f"[{time.time() - t_start:6.0f}s] {result['task']:<16} {result['method']:<24} {result['image']:<12} "
              + (f"PSNR {result['psnr']:.2f}" if "psnr" in result else result.get("note", "")), flush=True)

    run_units(todo, images, args.samples, args.device, args.jobs, finished, COST if trimmed else PAPER_COST)
    cols = ["task", "method", "psnr", "psnr_ci95", "ssim", "lpips", "coverage_90", "std_error_spearman",
            "sample_diversity", "seconds", "note"]
    print(table(summarise(per_image, all_tasks, all_methods, len(images)), cols))
    print(f"\nPaired against {TV_BASELINE} (same images):")
    print(table(paired_against(per_image, TV_BASELINE), PAIRED_COLUMNS))
    path = save(complete=True)
    print(f"wrote {path} in {time.time() - t_start:.0f}s")


if __name__ == "__main__":
    main()
