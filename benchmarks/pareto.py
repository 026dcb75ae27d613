"""Speed against quality: each solver from its fastest setting to the paper's, on the quick CBSD68 crops.

    python -m benchmarks.pareto            # runs what the quality files lack, writes pareto.json + pareto.png
    python -m benchmarks.pareto --jobs 2   # two processes of one thread each
    python -m benchmarks.pareto --resume --rerun inpaint_box --solvers pmrf   # redo one task after a code change
                                                 # (results whose solver defaults or prior changed rerun by themselves)

Each row is one (solver, setting): mean seconds per image, PSNR and 90 % coverage per task, on the benchmark's 4 quick
CBSD68 crops (128 px) with 4 posterior samples. Settings go from fastest to the paper's (``SETTINGS``). A setting
that ``quality_paper_quick.json`` already holds (same solver, prior, options, images and samples: the defaults and
the paper presets) is read from there, not rerun; the rest run here, and their per-image results are kept in
pareto.json so ``--resume`` continues. deepinv's DiffPIR on our score prior is the reference curve beside our
PnP-ULA (``langevin``: deepinv's ScorePrior + L2 in our chain loop), and TV least squares the classical line.
The plot has one panel per task: PSNR against seconds (log scale).
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

from benchmarks.common import (QUICK_CBSD68, RESULTS, hold_results_lock, load_set, summary_row, table, tasks,
                               write_results)

SAMPLES = 4
# solver -> [(label, method config)], fastest first; "paper" entries are the solver's paper settings
SETTINGS = {
    "pmrf": [("default", {"options": {}}), ("8 Euler steps", {"options": {"flow_steps": 8}}),
             ("paper", {"options": {"preset": "paper"}})],
    "vble": [("default (early stop)", {"options": {}}), ("paper", {"options": {"preset": "paper"}})],
    "reddiff": [("15 steps", {"options": {"steps": 15}}), ("default", {"options": {}}),
                ("paper", {"options": {"preset": "paper"}})],
    "langevin": [("40 iterations", {"options": {"iterations": 40}}), ("default", {"options": {}}),
                 ("paper", {"options": {"preset": "paper"}})],
    "aps": [("4 x 6 steps, lr 0.3", {"options": {"steps": 4, "inner_steps": 6, "lr": 0.3}}),
            ("default (8 x 3 steps)", {"options": {}}), ("paper", {"options": {"preset": "paper"}})],
    "scoredvi": [("default (warm start, 100 iterations)", {"options": {}}),
                 ("paper", {"options": {"preset": "paper"}})],
    "diffpir (deepinv)": [("8 steps", {"baseline": "diffpir", "max_iter": 8}),
                          ("20 steps", {"baseline": "diffpir", "max_iter": 20}),
                          ("100 steps", {"baseline": "diffpir", "max_iter": 100})],
}
CLASSICAL = "tv least squares"


def method_config(solver: str, setting: dict) -> dict:
    """A quality-benchmark method config for one setting."""
    if "baseline" in setting:
        return dict(setting)
    return {"solver": solver, "prior": None, "options": dict(setting["options"])}


def same_method(a: dict, b: dict) -> bool:
    """Whether two method configs run the same thing (the quality file's 'full_only' flag aside)."""
    strip = lambda c: {k: v for k, v in c.items() if k != "full_only"}  # noqa: E731
    return json.dumps(strip(a), sort_keys=True) == json.dumps(strip(b), sort_keys=True)


def from_quality_file(quality: dict, cfg: dict) -> tuple[str | None, list[dict]]:
    """(method name, per-image results) of ``cfg`` in a quality results file, or (None, [])."""
    for name, c in quality.get("methods", {}).items():
        if same_method(c, cfg):
            return name, [r for r in quality["per_image"] if r["method"] == name]
    return None, []


def plot(rows: list[dict], task_names: list[str], tv: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(13, 7.5))
    for ax, t in zip(axes.flat, task_names):
        for n, solver in enumerate(SETTINGS):  # one colour per solver in every panel, drawn or not
            pts = [(r["seconds"], r[t]) for r in rows if r["solver"] == solver and r.get(t) is not None]
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, ys, "o-" if "deepinv" not in solver else "s--", label=solver, ms=4, color=f"C{n}")
        if tv.get(t) is not None:
            ax.axhline(tv[t], color="grey", ls=":", label=CLASSICAL)
        ax.set_xscale("log")
        ax.set_title(t)
        ax.set_xlabel("seconds per 128 px image (K = 4, 1 thread)")
        ax.set_ylabel("PSNR (dB)")
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def rerun_unit(result: dict, tasks_to_rerun, solvers) -> bool:
    """Whether a kept per-image result is one ``--rerun`` asks for again: its task is named and its solver (the
    method name's part before ':') is among ``solvers`` (all when None)."""
    solver = result["method"].split(":")[0]
    return result["task"] in tasks_to_rerun and (not solvers or solver in solvers)


def stale_unit(result: dict, task_specs: dict, options: dict) -> list[str]:
    """Why a kept per-image result would come out differently if its setting (solver ``options`` as SETTINGS passes
    them today) ran now: ``restore.stale.reasons`` for its recorded provenance, with the setting's solver read at
    today's options, and its task's family (a solver default the setting does not fix, or a prior's weights,
    changed since); empty when it would not. ``--resume`` reruns these, as ``benchmarks.quality --resume`` does."""
    from benchmarks.quality import _family
    from restore.stale import reasons

    provenance = dict(result.get("provenance") or {})
    solver = result["method"].split(":")[0]
    provenance["solvers"] = [{**s, "options": options} if s.get("name") == solver else s
                             for s in provenance.get("solvers", [])]
    return reasons(provenance, _family(task_specs[result["task"]]))


def plan(quality: dict, per_image: list[dict], task_specs: dict, images: list, solvers=None) -> tuple[list, list]:
    """(points, todo): a point per (solver, setting) that has or will get results, and the (task, spec, method,
    config, image index) units still to run. ``solvers`` limits what runs; the others keep their points when the
    quality file or the kept ``per_image`` results hold them. Pure."""
    points, todo = [], []
    for solver, settings in SETTINGS.items():
        runs_here = not solvers or solver in solvers
        for label, setting in settings:
            cfg = method_config(solver.split(" ")[0], setting)
            mname = f"{solver}: {label}"
            source, results = from_quality_file(quality, cfg)
            if source is None:
                results = [r for r in per_image if r["method"] == mname]
                if not runs_here and not results:
                    continue
                done = {(r["task"], r["image"]) for r in results}
                if runs_here:
                    todo += [(t, spec, mname, cfg, i) for t, spec in task_specs.items()
                             for i, (n, _) in enumerate(images) if (t, n) not in done]
            points.append({"solver": solver, "setting": label, "method": mname, "cfg": cfg,
                           "source": f"quality_paper_quick.json: {source}" if source else "run here"})
    return points, todo


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--solvers", nargs="*", default=None, help="subset of SETTINGS' solvers")
    ap.add_argument("--resume", action="store_true", help="keep the per-image results of an earlier pareto.json")
    ap.add_argument("--rerun", nargs="*", default=(), metavar="TASK",
                    help="with --resume: rerun these tasks for the settings run here (and --solvers'), for a code "
                         "change the kept results cannot show")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    from benchmarks.quality import run_units

    images = load_set("CBSD68", crop=128, files=QUICK_CBSD68)
    task_specs = tasks()
    quality = json.loads((RESULTS / "quality_paper_quick.json").read_text())
    if quality.get("samples") != SAMPLES or quality.get("crop") != 128:
        raise SystemExit("quality_paper_quick.json was run with other samples or crop than this benchmark")
    target = Path(args.out) if args.out else RESULTS / "pareto.json"
    hold_results_lock(target)
    previous = json.loads(target.read_text()) if args.resume and target.exists() else {}
    kept = [r for r in previous.get("per_image", []) if not rerun_unit(r, args.rerun, args.solvers)]
    options = {f"{solver}: {label}": setting.get("options", {}) for solver, settings in SETTINGS.items()
               for label, setting in settings}
    per_image = []
    for r in kept:
        runs_here = r["method"] in options and (not args.solvers or r["method"].split(":")[0] in args.solvers)
        why = stale_unit(r, task_specs, options[r["method"]]) if runs_here else []
        if why:
            print(f"rerunning {r['method']} on {r['task']} {r['image']}: {'; '.join(why)}", flush=True)
        else:
            per_image.append(r)
    points, todo = plan(quality, per_image, task_specs, images, args.solvers)
    print(f"{len(todo)} units to run", flush=True)

    def finished(result):
        per_image.append(result)
        write_results("pareto", {"per_image": per_image}, args.out)  # a cut-off run keeps what it finished

    if todo:
        run_units(todo, images, SAMPLES, "cpu", args.jobs, finished)
    rows = []
    for p in points:
        if p["source"] == "run here":
            results = [r for r in per_image if r["method"] == p["method"]]
        else:
            results = from_quality_file(quality, p["cfg"])[1]
        row = {"solver": p["solver"], "setting": p["setting"], "source": p["source"]}
        by_task = {t: summary_row({}, [r for r in results if r["task"] == t], len(images)) for t in task_specs}
        secs = [s["seconds"] for s in by_task.values() if "seconds" in s and "note" not in s]
        row["seconds"] = round(sum(secs) / len(secs), 2) if secs else None
        for t, s in by_task.items():
            row[t] = round(s["psnr"], 2) if "psnr" in s and "note" not in s else None
            row[f"cov90_{t}"] = round(s["coverage_90"], 3) if "coverage_90" in s and "note" not in s else None
        rows.append(row)
    tv_name, tv_results = from_quality_file(quality, quality["methods"].get(CLASSICAL, {}))
    tv = {t: sum(r["psnr"] for r in tv_results if r["task"] == t) / len(images) for t in task_specs} if tv_name else {}
    rows.append({"solver": CLASSICAL, "setting": "shipped weights", "source": "quality_paper_quick.json",
                 "seconds": round(sum(r["seconds"] for r in tv_results) / max(len(tv_results), 1), 2),
                 **{t: round(v, 2) for t, v in tv.items()}})
    cols = ["solver", "setting", "seconds", *task_specs]
    print(table(rows, cols))
    plot_path = RESULTS / "pareto.png"
    plot(rows, list(task_specs), tv, plot_path)
    path = write_results("pareto", {"images": [n for n, _ in images], "crop": 128, "samples": SAMPLES,
                                    "threads_per_job": 1, "jobs": args.jobs, "rows": rows, "plot": plot_path.name,
                                    "per_image": per_image}, args.out)
    print(f"wrote {path} and {plot_path}")


if __name__ == "__main__":
    main()
