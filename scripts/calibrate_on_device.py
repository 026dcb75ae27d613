"""Fit the slow paper presets' calibration tables on a lent GPU, within a deadline, and leave the tables in $OUT.

    python scripts/calibrate_on_device.py --minutes 8                       # on the device (scripts/calibrate_on_device.sh)
    python scripts/calibrate_on_device.py --device cpu --minutes 3 --solvers reddiff \\
        --fit 2 --cal 9 --heldout 1 --crop 32 --samples 2 --out-dir /tmp/t   # the same plan, tiny, on the CPU

On this CPU a calibration run (96 px, 8 samples, one thread) of the paper presets takes 33 s for RED-Diff (100 steps)
and 1.5-10 min for APS (16 x 30 steps), PnP-ULA (500 iterations) and ScoreDVI (400 iterations), and a table needs
about 72 runs a cell: hours to days. On a GPU a run takes seconds. Each solver gets one process (they share the
GPU), which works through its cells in :data:`CELL_ORDER` (the benchmark's tasks first; cells its table already
holds at the current settings are skipped, e.g. RED-Diff's, fitted on this CPU), each cell one
``python -m restore.train.calibration --options preset=paper`` call whose runs are cached under ``--runs`` (a rerun
on the same warm machine resumes). At the deadline the processes
stop; every cell whose runs are all cached is then fitted (``--fit-only``, one call per family, naming the levels
it ran; the table's other cells stay) into ``models/calibration/SOLVER.PRIOR+preset=paper.json``, and the tables and
logs are copied to ``--out-dir`` ($OUT). Commit them with MODELS.md rows and rerun
``python -m benchmarks.calibration --source quality_paper_quick`` on the CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# (family, noise levels or None for the grid's): the quality benchmark's six tasks first (denoise 25/255, deblurring
# at 0.01 for both kernels, x4 SR, both inpaintings), then the rest of the grid
CELL_ORDER = (("denoise", "0.098039"), ("deblur", "0.01"), ("sr4", None), ("inpaint-random", None),
              ("inpaint-region", None), ("denoise", "0.058824"), ("denoise", "0.196078"), ("deblur", "0.03"),
              ("sr2", None), ("denoise", "0.019608"), ("denoise", "0.01"), ("denoise-camera", None),
              ("denoise-real", None))
SLOW_PRESETS = ("reddiff", "langevin", "aps", "scoredvi")


def cells_for(solver: str) -> list[tuple[str, str | None]]:
    """The cells of :data:`CELL_ORDER` whose family ``solver`` runs under its paper preset."""
    from restore.solvers import base
    from restore.train.calibration import supported_families

    families = set(supported_families(base.get(solver, preset="paper")))
    return [(f, s) for f, s in CELL_ORDER if f in families]


def preset_table(solver: str, args):
    """The paper preset's restorer (uncalibrated) and the path of its table (``--tables-dir`` or the shipped one)."""
    from restore.api import Restorer
    from restore.priors import registry

    restorer = Restorer(solver, calibrate=False, preset="paper")
    path = registry.calibration_table_path(solver, restorer.prior().name, restorer.solver.options)
    return restorer, (Path(args.tables_dir) / path.name if args.tables_dir else path)


def cells_to_fit(solver: str, args) -> list[tuple[str, str | None]]:
    """:func:`cells_for` without the cells the preset's table already holds at the current settings, prior and
    sample count (fitted on the CPU, or by an earlier lease): their runs are not on the device, and a refit of other
    levels keeps them (``restore.train.calibration.kept_cells``)."""
    import dataclasses

    from restore.calibration import at_level
    from restore.priors import registry
    from restore.provenance import canonical
    from restore.train.calibration import GRID, SAMPLES, kept_cells

    restorer, path = preset_table(solver, args)
    held = []
    if path.exists():
        config = canonical(dataclasses.asdict(restorer.solver.config))
        held = kept_cells(json.loads(path.read_text()), [], config, canonical(restorer.solver.options),
                          registry.digest(restorer.prior().name), args.samples or SAMPLES)

    def fitted(family: str, level: float) -> bool:
        return any(c["family"] == family and at_level(c, level) for c in held)

    return [(f, s) for f, s in cells_for(solver)
            if not all(fitted(f, float(v)) for v in (s.split(",") if s else GRID[f][0]))]


def cell_args(solver: str, family: str, sigmas: str | None, args) -> list[str]:
    cmd = [sys.executable, "-m", "restore.train.calibration", "--solver", solver, "--options", "preset=paper",
           "--device", args.device, "--runs", args.runs, "--data", args.data, "--threads", str(args.threads),
           "--families", family]
    if sigmas:
        cmd += ["--sigmas", sigmas]
    for k in ("fit", "cal", "heldout", "crop", "samples"):
        if getattr(args, k) is not None:
            cmd += [f"--{k}", str(getattr(args, k))]
    return cmd


def work_through(solver: str, args, deadline: float, log) -> list[tuple[str, str | None]]:
    """Run ``solver``'s cells in order until the deadline; the cells that finished (their one-cell fit wrote)."""
    done = []
    for family, sigmas in cells_to_fit(solver, args):
        left = deadline - time.time()
        if left < 5:
            break
        scratch = Path(args.runs) / "cells" / f"{solver}-{family}-{sigmas or 'grid'}.json"
        scratch.parent.mkdir(parents=True, exist_ok=True)
        cmd = cell_args(solver, family, sigmas, args) + ["--out", str(scratch)]
        log.write(f"$ {' '.join(cmd)}\n")
        log.flush()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True)
        try:
            rc = proc.wait(timeout=left)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait()
            log.write(f"deadline: {family} {sigmas or ''} stopped (its finished runs stay cached)\n")
            break
        if rc == 0:
            done.append((family, sigmas))
        else:
            log.write(f"{family} {sigmas or ''}: exit {rc}\n")
    return done


def assemble(solver: str, done: list[tuple[str, str | None]], args, log) -> Path | None:
    """Fit the finished cells into the solver's preset table, one ``--fit-only`` call per family (naming the levels
    it ran, so the table's cells at other levels stay)."""
    _, path = preset_table(solver, args)
    by_family: dict[str, list[str]] = {}
    for family, sigmas in done:
        by_family.setdefault(family, []).extend(sigmas.split(",") if sigmas else [])
    for family, sigmas in by_family.items():
        cmd = cell_args(solver, family, ",".join(sigmas) or None, args) + ["--fit-only", "--out", str(path)]
        log.write(f"$ {' '.join(cmd)}\n")
        log.flush()
        if subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO).returncode != 0:
            log.write(f"assembling {family}: failed\n")
    return path if path.exists() else None


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--solvers", default=",".join(SLOW_PRESETS))
    ap.add_argument("--minutes", type=float, default=8.0, help="when the runs stop; the fit takes about a minute more")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--data", default="train_data/BSD432-train", help="carried to the device (ignored folder)")
    ap.add_argument("--runs", default="runs/calibration-paper")
    ap.add_argument("--threads", type=int, default=2, help="CPU threads per solver process")
    ap.add_argument("--out-dir", default=os.environ.get("OUT", "out"))
    ap.add_argument("--tables-dir", default=None, help="where the tables are written (default models/calibration/, "
                    "beside the shipped ones; a test run names a scratch folder)")
    for k in ("fit", "cal", "heldout", "crop", "samples"):  # default: restore.train.calibration's
        ap.add_argument(f"--{k}", type=int, default=None)
    args = ap.parse_args(argv)
    deadline = time.time() + 60 * args.minutes
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    solvers = args.solvers.split(",")
    # one process per solver: small crops leave the GPU mostly idle, so the solvers share it
    children = {}
    for solver in solvers:
        log_path = out_dir / f"calibrate_{solver}.log"
        children[solver] = subprocess.Popen(
            [sys.executable, __file__, "--worker", solver, json.dumps(vars(args)), str(deadline)],
            stdout=open(log_path, "w"), stderr=subprocess.STDOUT, cwd=REPO)
    summary = {}
    for solver, proc in children.items():
        proc.wait()
        table = out_dir / f"{solver}.table-path"
        summary[solver] = table.read_text().strip() if table.exists() else None
        table.unlink(missing_ok=True)
    for solver, path in summary.items():
        if path:
            shutil.copy(path, out_dir / Path(path).name)
            cells = [(c["family"], round(c["sigma"], 4)) for c in json.loads(Path(path).read_text())["cells"]]
            print(f"{solver}: {path} with {len(cells)} cells {cells}")
        else:
            print(f"{solver}: no cell finished (log {out_dir / f'calibrate_{solver}.log'})")


def worker(solver: str, settings: str, deadline: str):
    args = argparse.Namespace(**json.loads(settings))
    out_dir = Path(args.out_dir)
    with open(out_dir / f"calibrate_{solver}.log", "a") as log:
        done = work_through(solver, args, float(deadline), log)
        log.write(f"finished cells: {done}\n")
        path = assemble(solver, done, args, log) if done else None
        if path:
            (out_dir / f"{solver}.table-path").write_text(str(path))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(*sys.argv[2:5])
    else:
        main()
