"""Console script ``restore``.

    restore IMAGE -t TASK [-s SOLVER] [-p PRIOR] [-n SAMPLES] [--seed S] [-o OUT_DIR]   one image
    restore batch IN_DIR OUT_DIR -t TASK [...]                                           a folder, resumable
    restore list                                                                          solvers, priors, tasks
    restore bench NAME [--quick ...]                                                      benchmarks/NAME.py
    restore ui [--host 127.0.0.1] [--port 7860]                                           the web app
"""

from __future__ import annotations

import csv
import io as _io
import json
import sys
import time
import zlib
from pathlib import Path
from typing import List, Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Bayesian image restoration with uncertainty.")
SUBCOMMANDS = ("run", "batch", "list", "bench", "ui")


def _parse_options(options: list[str]) -> dict:
    """``--option key=value`` pairs -> solver config overrides (numbers parsed, true/false as booleans)."""
    out = {}
    for item in options or []:
        if "=" not in item:
            raise typer.BadParameter(f"--option takes key=value; got {item!r}")
        k, v = item.split("=", 1)
        try:
            val = json.loads(v)
        except json.JSONDecodeError:
            val = v
        out[k.strip()] = val
    return out


def _fail(msg: str, code: int = 2):
    typer.secho(f"error: {msg}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def _restore_one(restorer, image_path: Path, task, out_dir: Path, samples: int, seed: int, simulate: bool,
                 truth_path: Optional[Path], bit_depth: int, std_format: str, progress=None) -> dict:
    """Restore one file into ``out_dir`` (written atomically); returns the metrics row."""
    from restore import io

    truth = None
    if simulate:
        truth = io.read_image(image_path)
        y = restorer.simulate(truth, task, seed=seed)
    else:
        y = io.read_image(image_path)
        if truth_path is not None:
            truth = io.read_image(truth_path)
    post = restorer(y, task, samples=samples, seed=seed, ground_truth=truth, progress=progress)
    post.meta["input_file"] = str(image_path)
    post.save(out_dir, bit_depth=bit_depth, std_format=std_format, extras={"observation.png": y},
              truth=truth if truth is not None and truth.shape == post.mean.shape else None)
    row = {"seed": seed, "seconds": post.meta["timings"]["total_s"]}
    for k, v in post.meta.get("metrics", {}).items():
        if isinstance(v, (int, float)) or v is None:
            row[k] = v
    return row


@app.command("run")
def run(
    image: Path = typer.Argument(..., help="degraded image (or a clean one with --simulate)"),
    task: str = typer.Option(..., "-t", "--task", help="task spec, e.g. deblur:gaussian:sigma=2,noise=0.01"),
    solver: str = typer.Option(None, "-s", "--solver", help="solver name (see `restore list`)"),
    prior: Optional[str] = typer.Option(None, "-p", "--prior", help="prior name; default: the solver's"),
    samples: int = typer.Option(8, "-n", "--samples", help="posterior samples K"),
    seed: int = typer.Option(0, "--seed"),
    out: Path = typer.Option(Path("restore_out"), "-o", "--out", help="output folder"),
    device: str = typer.Option("cpu", "--device"),
    ground_truth: Optional[Path] = typer.Option(None, "--ground-truth", help="clean image: adds metrics"),
    simulate: bool = typer.Option(False, "--simulate", help="IMAGE is clean: degrade it with the task first"),
    bit_depth: int = typer.Option(8, "--bit-depth", help="8 or 16-bit PNG outputs"),
    std_format: str = typer.Option("npy", "--std-format", help="npy or tiff"),
    option: List[str] = typer.Option([], "--option", "-O", help="solver option key=value (repeatable)"),
    tile: int = typer.Option(256, "--tile", help="solve images above 4 tiles' worth of pixels in tiles of this size; 0: never"),
):
    """Restore one image: writes mean.png, samples/, std.npy|tiff, std.png, meta.json into OUT."""
    from restore import api

    try:
        restorer = api.Restorer(solver or api.DEFAULT_SOLVER, prior, device, tile=tile, **_parse_options(option))
        t0 = time.time()
        bar = _progress_printer()
        row = _restore_one(restorer, image, _task(task), out, samples, seed, simulate, ground_truth, bit_depth,
                           std_format, progress=bar)
    except (ValueError, FileNotFoundError, NotImplementedError) as exc:
        _fail(str(exc))
    typer.echo(f"\nrestored {image} in {time.time() - t0:.1f}s -> {out}/ (mean.png, samples/, std.{std_format}, "
               "std.png, meta.json)")
    if "psnr" in row:
        typer.echo("metrics: " + ", ".join(f"{k}={v:.4g}" for k, v in row.items() if isinstance(v, float)))


def _task(spec: str):
    from restore.tasks import parse

    return parse(spec)


def _progress_printer():
    state = {"last": -1}

    def cb(fraction: float, message: str):
        pct = int(100 * fraction)
        if pct // 5 != state["last"]:
            state["last"] = pct // 5
            typer.echo(f"\r[{'#' * (pct // 5):<20}] {pct:3d}% {message:<40}", nl=False, err=True)

    return cb


def image_seed(seed: int, rel: str) -> int:
    """Per-image seed from the global seed and the file's relative path: stable across runs and machines."""
    return (int(seed) + zlib.crc32(rel.encode("utf-8"))) % (2**31)


def find_images(folder: Path) -> list[Path]:
    from restore.io import IMAGE_SUFFIXES

    return sorted((p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                   and not any(part.startswith(".") for part in p.relative_to(folder).parts)),
                  key=lambda p: p.relative_to(folder).as_posix())


def _find_truth(gt_dir: Path, rel: Path) -> Optional[Path]:
    from restore.io import IMAGE_SUFFIXES

    exact = gt_dir / rel
    if exact.exists():
        return exact
    for suf in IMAGE_SUFFIXES:
        cand = (gt_dir / rel).with_suffix(suf)
        if cand.exists():
            return cand
    return None


def append_jsonl(path: Path, row: dict):
    import os

    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


def rebuild_summary(jsonl: Path, csv_path: Path) -> int:
    """summary.csv from every row of metrics.jsonl (the last row per file wins); returns the row count."""
    from restore.io import write_text

    rows = {}
    if jsonl.exists():
        for line in jsonl.read_text().splitlines():
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a kill mid-write
            rows[r.get("file")] = r
    keys: list[str] = []
    for r in rows.values():
        keys += [k for k in r if k not in keys]
    buf = _io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys)
    w.writeheader()
    for r in sorted(rows.values(), key=lambda r: str(r.get("file"))):
        w.writerow(r)
    write_text(csv_path, buf.getvalue())
    return len(rows)


@app.command("batch")
def batch(
    in_dir: Path = typer.Argument(..., help="folder of images (searched recursively)"),
    out_dir: Path = typer.Argument(..., help="output folder; sub-folders mirror IN_DIR"),
    task: str = typer.Option(..., "-t", "--task"),
    solver: str = typer.Option(None, "-s", "--solver"),
    prior: Optional[str] = typer.Option(None, "-p", "--prior"),
    samples: int = typer.Option(8, "-n", "--samples"),
    seed: int = typer.Option(0, "--seed", help="global seed; each image gets seed + crc32(relative path)"),
    device: str = typer.Option("cpu", "--device"),
    ground_truth_dir: Optional[Path] = typer.Option(None, "--ground-truth-dir",
                                                    help="clean images with the same relative paths: adds metrics"),
    simulate: bool = typer.Option(False, "--simulate", help="inputs are clean: degrade them with the task first"),
    bit_depth: int = typer.Option(8, "--bit-depth"),
    std_format: str = typer.Option("npy", "--std-format"),
    option: List[str] = typer.Option([], "--option", "-O", help="solver option key=value (repeatable)"),
    tile: int = typer.Option(256, "--tile", help="solve images above 4 tiles' worth of pixels in tiles of this size; 0: never"),
):
    """Restore every image under IN_DIR. Finished images are skipped on rerun; bad files are reported, not fatal."""
    from tqdm import tqdm

    from restore import api

    if not in_dir.is_dir():
        _fail(f"input folder not found: {in_dir}")
    try:
        t = _task(task)
        restorer = api.Restorer(solver or api.DEFAULT_SOLVER, prior, device, tile=tile, **_parse_options(option))
    except (ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    files = find_images(in_dir)
    if not files:
        _fail(f"no images found under {in_dir}")
    out_dir.mkdir(parents=True, exist_ok=True)
    jsonl, summary = out_dir / "metrics.jsonl", out_dir / "summary.csv"
    failed, done, skipped = [], 0, 0
    t0 = time.time()
    for f in tqdm(files, desc="restore batch", unit="img", file=sys.stderr):
        rel = f.relative_to(in_dir)
        target = out_dir / rel.with_suffix("")
        if (target / "meta.json").exists():
            skipped += 1
            continue
        s = image_seed(seed, rel.as_posix())
        truth = None
        if ground_truth_dir is not None:
            truth = _find_truth(ground_truth_dir, rel)
        try:
            if ground_truth_dir is not None and truth is None:
                raise FileNotFoundError(f"no ground truth for {rel} in {ground_truth_dir}")
            row = _restore_one(restorer, f, t, target, samples, s, simulate, truth, bit_depth, std_format)
            append_jsonl(jsonl, {"file": rel.as_posix(), "status": "ok", **row})
            done += 1
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # one bad file never stops the batch
            msg = f"{type(exc).__name__}: {exc}"
            failed.append((rel.as_posix(), msg))
            append_jsonl(jsonl, {"file": rel.as_posix(), "status": "error", "error": msg, "seed": s})
    n_rows = rebuild_summary(jsonl, summary)
    hours = (time.time() - t0) / 3600
    rate = f", {done / hours:.0f} images/hour" if done and hours > 0 else ""
    typer.echo(f"restored {done}, skipped {skipped} already done, failed {len(failed)} of {len(files)}{rate}; "
               f"{summary} has {n_rows} rows")
    if failed:
        typer.secho("failed files:", fg=typer.colors.RED, err=True)
        for rel, msg in failed:
            typer.echo(f"  {rel}: {msg}", err=True)
        raise typer.Exit(1)


@app.command("list")
def list_all():
    """List solvers (with the tasks and priors they take), priors (and whether their files are here) and tasks."""
    from restore.priors import registry
    from restore.solvers import base
    from restore.tasks import KINDS, PARAMS

    typer.echo("solvers:")
    for name in base.names():
        cls = base.solver_class(name)
        typer.echo(f"  {name:<12} tasks: {', '.join(cls.tasks)}; priors: {'/'.join(cls.prior_kinds)}; "
                   f"default prior: {cls.default_prior}")
    typer.echo("priors:")
    here = set(registry.available())
    for name, spec in registry.PRIORS.items():
        typer.echo(f"  {name:<16} {spec.kind:<9} {'ready' if name in here else 'missing weights'}  {spec.description}")
    typer.echo("tasks (KIND:VARIANT:key=value,...; noise std on the [0, 1] scale):")
    for kind, variants in KINDS.items():
        for v in variants:
            params = ",".join(f"{k}={'<required>' if d is None else d}" for k, d in PARAMS[(kind, v)].items())
            typer.echo(f"  {kind}:{v}" + (f":{params}" if params else ""))


def _repo_on_path() -> Path:
    repo = Path(__file__).resolve().parents[1]
    if str(repo) not in sys.path:
        sys.path.insert(0, str(repo))
    return repo


@app.command("ui")
def ui(host: str = typer.Option("127.0.0.1", "--host", help="bind address; 0.0.0.0 exposes the app to the network"),
       port: int = typer.Option(7860, "--port"), share: bool = typer.Option(False, "--share")):
    """Start the Gradio web app (offline: analytics off, local only unless told otherwise)."""
    repo = _repo_on_path()
    if not (repo / "app" / "app.py").exists():
        _fail("the web app (app/app.py) is not here: run `restore ui` from a source checkout")
    try:
        import gradio  # noqa: F401
    except ImportError:
        _fail("the web app needs gradio: pip install 'restore[ui]'")
    from app.app import launch

    typer.echo(f"restore ui on http://{host}:{port} (Ctrl-C to stop)")
    launch(host=host, port=port, share=share)


@app.command("bench", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def bench(ctx: typer.Context, name: str = typer.Argument(..., help="benchmark: denoiser, quality")):
    """Run a benchmark from the repository's benchmarks/ folder (extra arguments are passed on)."""
    import importlib

    repo = _repo_on_path()
    if not (repo / "benchmarks" / f"{name}.py").exists():
        known = sorted(p.stem for p in (repo / "benchmarks").glob("*.py") if p.stem not in ("__init__", "common"))
        _fail(f"unknown benchmark {name!r}; known: {', '.join(known) or 'none (benchmarks/ is not here)'}")
    importlib.import_module(f"benchmarks.{name}").main(list(ctx.args))


def main(argv: Optional[list[str]] = None):
    """Entry point: ``restore IMAGE ...`` is shorthand for ``restore run IMAGE ...``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] not in SUBCOMMANDS and not argv[0].startswith("-"):
        argv.insert(0, "run")
    app(args=argv, prog_name="restore")


if __name__ == "__main__":
    main()
