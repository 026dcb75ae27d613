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
import os
import sys
import time
import warnings
from pathlib import Path
from typing import List, Optional

import typer

from restore import recommend

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Bayesian image restoration with uncertainty.")
SUBCOMMANDS = ("run", "batch", "list", "bench", "ui")
# the solvers whose default_quant is int8 (tests/test_cli.py checks this list against them)
QUANT_HELP = ("int8 (real kernels), w8a8/w4a8 (simulated), none (float); default: the solver's own (int8 for "
              "reddiff, langevin and scoredvi, whose denoiser runs forward-only; float for the others)")


def _say_recommended(task: str) -> None:
    """Print which solver runs when none is named, and why (restore.recommend.WHY); a bad task spec is left to the
    caller's own error."""
    try:
        typer.echo(f"solver {recommend.recommended_reason(task)} (the recommended one; -s to choose another)")
    except ValueError:
        pass


def _parse_options(options: list[str]) -> dict:
    """``--option key=value`` pairs -> solver config overrides (numbers parsed, true/false as booleans)."""
    out = {}
    for item in options or []:
        if "=" not in item:
            raise typer.BadParameter(f"--option takes key=value; got {item!r}")
        k, v = item.split("=", 1)
        if k.strip() == "prior":
            raise typer.BadParameter(f"name the prior with --prior, not --option ({item!r})")
        try:
            val = json.loads(v)
        except json.JSONDecodeError:
            val = v
        out[k.strip()] = val
    return out


def _fail(msg: str, code: int = 2):
    typer.secho(f"error: {msg}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def _set_pixel_limit(megapixels: Optional[float]):
    """--max-megapixels: this process's pixel limit (restore.io.pixel_limit reads it; Ray's workers get it too)."""
    from restore import io

    if megapixels is None:
        return
    if not 0 < megapixels < float("inf"):
        _fail(f"--max-megapixels must be a positive number; got {megapixels}")
    os.environ[io.LIMIT_ENV] = repr(float(megapixels))


def _check_bit_depth(bits: Optional[int]):
    if bits not in (None, 8, 16):
        _fail(f"--bit-depth must be 8 or 16; got {bits}")


@app.command("run")
def run(
    image: Path = typer.Argument(..., help="degraded image (or a clean one with --simulate)"),
    task: str = typer.Option(..., "-t", "--task", help="task spec, e.g. deblur:gaussian:sigma=2,noise=0.01; "
                             "denoise:gaussian:sigma=auto (or noise=auto when deblurring) estimates the level"),
    solver: str = typer.Option(None, "-s", "--solver", help="solver name (see `restore list`); default: the "
                               f"recommended one for the task ({recommend.recommended_summary()})"),
    prior: Optional[str] = typer.Option(None, "-p", "--prior", help="prior name; default: the solver's"),
    samples: int = typer.Option(8, "-n", "--samples", help="posterior samples K"),
    seed: int = typer.Option(0, "--seed"),
    out: Path = typer.Option(Path("restore_out"), "-o", "--out", help="output folder"),
    device: str = typer.Option("cpu", "--device"),
    ground_truth: Optional[Path] = typer.Option(None, "--ground-truth", help="clean image: adds metrics"),
    simulate: bool = typer.Option(False, "--simulate", help="IMAGE is clean: degrade it with the task first"),
    bit_depth: Optional[int] = typer.Option(None, "--bit-depth", help="8 or 16-bit PNG outputs (default: as the "
                                            "input: 16 for a 16-bit PNG or TIFF, else 8)"),
    std_format: str = typer.Option("npy", "--std-format", help="npy or tiff"),
    option: List[str] = typer.Option([], "--option", "-O", help="solver option key=value (repeatable)"),
    tile: int = typer.Option(256, "--tile", help="solve images above 4 tiles' worth of pixels in tiles of this size; 0: never"),
    quant: Optional[str] = typer.Option(None, "--quant", help=QUANT_HELP),
    max_megapixels: Optional[float] = typer.Option(None, "--max-megapixels", help="refuse images above this many "
                                                   "megapixels (default 16.8; time grows with the pixels)"),
):
    """Restore one image: writes mean.png, samples/, std.npy|tiff, std.png, meta.json into OUT."""
    from restore import api
    from restore.batch import describe_clipping, describe_uncertainty, restore_file

    _set_pixel_limit(max_megapixels)
    _check_bit_depth(bit_depth)
    try:
        if solver is None:
            _say_recommended(task)
        restorer = api.Restorer(solver or api.recommended_solver(task), prior, device, tile=tile, quant=quant,
                                **_parse_options(option))
        t0 = time.time()
        _say_estimate(restorer, image, _task(task), samples, simulate)
        bar = _progress_printer()
        row = restore_file(restorer, image, _task(task), out, samples, seed, simulate, ground_truth, bit_depth,
                           std_format, progress=bar)
    except (ValueError, FileNotFoundError, NotImplementedError) as exc:
        _fail(str(exc))
    typer.echo(f"\nrestored {image} in {time.time() - t0:.1f}s -> {out}/ (mean.png, samples/, std.{std_format}, "
               "std.png, meta.json)")
    meta = json.loads((out / "meta.json").read_text())
    if note := meta.get("noise_estimate"):
        typer.echo(f"noise level estimated from the image: {note['param']}={note['sigma']:.4g} "
                   f"({note['sigma_255']:.3g}/255)")
    if clipping := describe_clipping(meta):
        typer.echo(clipping)
    typer.echo(describe_uncertainty(meta))
    if "psnr" in row:
        typer.echo("metrics: " + ", ".join(f"{k}={v:.4g}" for k, v in row.items() if isinstance(v, float)))


def _task(spec: str):
    from restore.tasks import parse

    return parse(spec)


ESTIMATE_ABOVE = 1_000_000  # restored pixels; below, a run takes seconds and timing a forward would cost a share


def _say_estimate(restorer, images, task, samples: int, simulate: bool):
    """Before a large image or batch (``ESTIMATE_ABOVE`` restored pixels in all): how long it will take here
    (restore.estimate), so that hours show up front; nothing below that. ``images``: a file or a list of files (an
    unreadable one is left out: its run says what is wrong)."""
    from PIL import Image

    shapes = []
    for image in images if isinstance(images, list) else [images]:
        try:
            with Image.open(image) as im:
                w, h = im.size
        except Exception:  # noqa: BLE001 - the run reports a bad file with its reason
            continue
        if not simulate:  # the file is the observation: SR restores it factor times larger
            h, w = h * task.scale, w * task.scale
        shapes.append((h, w))
    if sum(h * w for h, w in shapes) < ESTIMATE_ABOVE:
        return
    from restore import estimate

    each = [restorer.estimate_seconds(task, (1, 3, h, w), samples) for h, w in shapes]
    if any(s is None for s in each):
        return
    what = f"{shapes[0][1]}x{shapes[0][0]} restored" if len(shapes) == 1 else f"{len(shapes)} images"
    typer.echo(f"estimated time here: {estimate.describe(sum(each))} ({restorer.solver.name}, {what}, {samples} "
               "samples; rough, within about 2x; Ctrl-C stops it)", err=True)


def _progress_printer():
    """A one-line bar on a terminal; in a log (not a TTY), a line every 25%."""
    tty = sys.stderr.isatty()
    step = 5 if tty else 25
    state = {"last": -1}

    def cb(fraction: float, message: str):
        pct = int(100 * fraction)
        if pct // step != state["last"]:
            state["last"] = pct // step
            if tty:
                typer.echo(f"\r[{'#' * (pct // 5):<20}] {pct:3d}% {message:<40}", nl=False, err=True)
            else:
                typer.echo(f"{pct:3d}% {message}", err=True)

    return cb


def rebuild_summary(jsonl: Path, csv_path: Path, sort_by: str = "file") -> int:
    """summary.csv from every row of metrics.jsonl (the last row per file wins), sorted by the column ``sort_by``
    (ascending; rows without it last, then by file); returns the row count."""
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
    def key(r):
        v = r.get(sort_by)
        return (v is None, v if isinstance(v, (int, float)) else str(v), str(r.get("file")))

    for r in sorted(rows.values(), key=key):
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
    bit_depth: Optional[int] = typer.Option(None, "--bit-depth", help="8 or 16 (default: as each input)"),
    std_format: str = typer.Option("npy", "--std-format"),
    option: List[str] = typer.Option([], "--option", "-O", help="solver option key=value (repeatable)"),
    tile: int = typer.Option(256, "--tile", help="solve images above 4 tiles' worth of pixels in tiles of this size; 0: never"),
    engine: str = typer.Option("local", "--engine", help="local (this process) or ray (restore[distributed])"),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="an existing Ray cluster; default: start one here"),
    workers: Optional[int] = typer.Option(None, "--workers", help="CPUs for a Ray instance started here"),
    quant: Optional[str] = typer.Option(None, "--quant", help=QUANT_HELP),
    sort_by: str = typer.Option("file", "--sort-by", help="summary.csv order: any column, e.g. predicted_psnr "
                                "(the calibrated uncertainty's predicted PSNR: likely failures first)"),
    max_megapixels: Optional[float] = typer.Option(None, "--max-megapixels", help="refuse images above this many "
                                                   "megapixels (default 16.8; time grows with the pixels)"),
):
    """Restore every image under IN_DIR. Finished images are skipped on rerun; bad files are reported, not fatal."""
    from restore import api
    from restore.batch import BatchSettings, append_jsonl, plan, run_local, run_ray

    _set_pixel_limit(max_megapixels)
    _check_bit_depth(bit_depth)
    if not in_dir.is_dir():
        _fail(f"input folder not found: {in_dir}")
    if engine not in ("local", "ray"):
        _fail(f"unknown engine {engine!r}; use local or ray")
    try:
        if solver is None:
            _say_recommended(task)
        settings = BatchSettings(str(_task(task)), solver or api.recommended_solver(task), prior, device, tile,
                                 tuple(sorted(_parse_options(option).items())), samples, simulate, bit_depth,
                                 std_format, quant)
        restorer = api.Restorer(settings.solver, prior, device, tile=tile, quant=quant,
                                **dict(settings.options))  # fail early on bad names
    except (ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    jobs, skipped, n_files = plan(in_dir, out_dir, seed, ground_truth_dir)
    if not n_files:
        _fail(f"no images found under {in_dir}")
    _say_estimate(restorer, [Path(j.source) for j in jobs if j.error is None], _task(task), samples, simulate)
    out_dir.mkdir(parents=True, exist_ok=True)
    jsonl, summary = out_dir / "metrics.jsonl", out_dir / "summary.csv"
    failed, done = [], 0
    t0 = time.time()

    def on_row(row: dict):
        nonlocal done
        append_jsonl(jsonl, row)
        if row["status"] == "ok":
            done += 1
        else:
            failed.append((row["file"], row["error"]))

    if engine == "ray":
        try:
            run_ray(settings, jobs, on_row, address=ray_address, num_cpus=workers)
        except RuntimeError as exc:
            _fail(str(exc))
    else:
        run_local(settings, jobs, on_row)
    n_rows = rebuild_summary(jsonl, summary, sort_by)
    hours = (time.time() - t0) / 3600
    rate = f", {done / hours:.0f} images/hour" if done and hours > 0 else ""
    typer.echo(f"restored {done}, skipped {skipped} already done, failed {len(failed)} of {n_files}{rate}; "
               f"{summary} has {n_rows} rows")
    if failed:
        typer.secho("failed files:", fg=typer.colors.RED, err=True)
        for rel, msg in failed:
            typer.echo(f"  {rel}: {msg}", err=True)
        raise typer.Exit(1)


def family_coverage(fam: str, levels: list[float], grid_size: int) -> str:
    """How ``restore list`` names a task family whose table has cells at noise ``levels`` of a grid of ``grid_size``:
    the family alone when every grid level is fitted, else with its fitted levels ('denoise (sigma 0.098)': a slow
    preset's first cells)."""
    if len(levels) >= grid_size:
        return fam
    return f"{fam} (sigma {', '.join(f'{s:.3g}' for s in sorted(levels))})"


def preset_calibration(solver_name: str, preset: str) -> str:
    """How runs of ``solver_name`` under ``preset`` get their uncertainty: 'calibrated: families' where tables fitted
    with the preset are shipped for the priors it picks per task family (VBLE's CAE rates) and match (a family with
    cells at some of its grid's noise levels only names them: 'denoise (sigma 0.098)'), else 'uncalibrated'."""
    import dataclasses

    from restore import calibration
    from restore.priors import registry
    from restore.solvers import base
    from restore.tasks import FAMILIES
    from restore.train.calibration import GRID

    solver = base.get(solver_name, preset=preset)
    covered, stale = {}, []
    for fam in FAMILIES:
        prior = registry.quantised_name(solver.prior_for(fam), solver.preferred_quant())
        table = registry.calibration_table(solver_name, prior, solver.options)
        if table is None or "+" not in table["file"]:
            continue
        if reason := calibration.table_mismatch(table, prior, dataclasses.asdict(solver.config), fam,
                                                solver.options):
            stale.append(reason)
        elif levels := [c["sigma"] for c in table["cells"] if c["family"] == fam]:
            covered[fam] = family_coverage(fam, levels, len(GRID.get(fam, ((),))[0]))
    if covered:
        return f"calibrated: {', '.join(covered[f] for f in FAMILIES if f in covered)}"
    return f"uncalibrated: {stale[0]}" if stale else "uncalibrated"


@app.command("list")
def list_all():
    """List solvers (with the tasks and priors they take), priors (and whether their files are here) and tasks."""
    import dataclasses

    from restore import api, calibration
    from restore.priors import registry
    from restore.solvers import base
    from restore.tasks import FAMILIES, KINDS, PARAMS

    typer.echo("solvers:")
    for name in base.names():
        cls = base.solver_class(name)
        scheme = cls.default_quant  # a quantised default prior has its own table (RED-Diff: score-natural@int8)
        prior = registry.quantised_name(cls.default_prior, scheme)
        table = registry.calibration_table(name, prior)
        stale = table and calibration.table_mismatch(table, prior, dataclasses.asdict(cls.config_cls()))
        calibrated = ("uncalibrated (raw spread)" if not table else
                      f"uncalibrated at its defaults: {stale}" if stale else
                      f"calibrated ({', '.join(sorted({c['family'] for c in table['cells']}))})")
        presets = (f"; presets: {', '.join(f'-O preset={p} ({preset_calibration(name, p)})' for p in cls.presets)}"
                   if cls.presets else "")
        solver = base.get(name)
        picks = {f: solver.prior_for(f) for f in FAMILIES}
        by_family = {f: p for f, p in picks.items() if p != cls.default_prior}
        per_task = f" ({', '.join(f'{p} for {f}' for f, p in by_family.items())})" if by_family else ""
        typer.echo(f"  {name:<12} tasks: {', '.join(cls.tasks)}; priors: {'/'.join(cls.prior_kinds)}; "
                   f"default prior: {cls.default_prior}{f' ({scheme})' if scheme else ''}{per_task}; "
                   f"uncertainty: {calibrated}{presets}")
    typer.echo("priors:")
    here = set(registry.available())
    for name, spec in registry.PRIORS.items():
        typer.echo(f"  {name:<16} {spec.kind:<9} {'ready' if name in here else 'missing weights'}  {spec.description}")
    typer.echo("tasks (KIND:VARIANT:key=value,...; noise std on the [0, 1] scale; the solver run when none is named):")
    for kind, variants in KINDS.items():
        for v in variants:
            params = ",".join(f"{k}={'<required>' if d is None else d}" for k, d in PARAMS[(kind, v)].items())
            spec = f"{kind}:{v}" + (f":{params}" if params else "")
            others = "".join(f" ({e})" for e in api.recommended_exceptions(kind))
            typer.echo(f"  {spec:<48} recommended: {api.recommended_for(kind, v)}{others}")
    typer.echo("  a noise level may be 'auto' (denoise:gaussian:sigma=auto, deblur:...:noise=auto): estimated from the "
               "image (restore.noise), printed and kept in meta.json")


def _repo_on_path() -> Path:
    repo = Path(__file__).resolve().parents[1]
    if str(repo) not in sys.path:
        sys.path.insert(0, str(repo))
    return repo


def _loopback(host: str) -> bool:
    import ipaddress

    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: only localhost counts as this machine
        return False


def ui_auth(host: str, share: bool, auth: list[str], auth_file: Optional[Path], no_auth: bool,
            env: Optional[str]) -> list[tuple[str, str]] | None:
    """The (user, password) pairs ``restore ui`` serves with, from ``--auth user:password`` (repeatable),
    ``--auth-file`` (one user:password a line) and ``$RESTORE_UI_AUTH`` (comma-separated user:password); None for no
    login. An app reachable beyond this machine (a non-loopback ``--host`` or ``--share``) needs one, unless
    ``--no-auth`` says so on purpose. Raises ValueError naming the problem."""
    entries = list(auth)
    if auth_file is not None:
        if not auth_file.is_file():
            raise ValueError(f"--auth-file {auth_file} not found")
        entries += [line.strip() for line in auth_file.read_text().splitlines() if line.strip()]
    if env:
        entries += [e.strip() for e in env.split(",") if e.strip()]
    pairs = []
    for e in entries:
        user, sep, password = e.partition(":")
        if not sep or not user or not password:
            raise ValueError(f"credentials must be user:password with both parts non-empty; got {e.split(':')[0]!r}:...")
        pairs.append((user, password))
    if no_auth and pairs:
        raise ValueError("--no-auth contradicts the credentials given (--auth, --auth-file or $RESTORE_UI_AUTH)")
    exposed = share or not _loopback(host)
    if exposed and not pairs and not no_auth:
        where = "a public share link" if share else f"--host {host}"
        raise ValueError(f"{where} serves the app beyond this machine: give --auth user:password (or --auth-file, or "
                         "$RESTORE_UI_AUTH), or --no-auth to serve it to anyone on purpose")
    return pairs or None


@app.command("ui")
def ui(host: str = typer.Option("127.0.0.1", "--host", help="bind address; a non-loopback one (e.g. 0.0.0.0) "
                                "exposes the app to the network and needs --auth or --no-auth"),
       port: int = typer.Option(7860, "--port"), share: bool = typer.Option(False, "--share"),
       auth: List[str] = typer.Option([], "--auth", help="user:password allowed to log in (repeatable)"),
       auth_file: Optional[Path] = typer.Option(None, "--auth-file", help="file of user:password lines"),
       no_auth: bool = typer.Option(False, "--no-auth", help="serve a non-loopback host without a login, on purpose")):
    """Start the Gradio web app (offline: analytics off, local only unless told otherwise; a login when exposed)."""
    import importlib.util
    import os

    try:
        credentials = ui_auth(host, share, auth, auth_file, no_auth, os.environ.get("RESTORE_UI_AUTH"))
    except ValueError as exc:
        _fail(str(exc))
    if importlib.util.find_spec("app.app") is None:  # neither installed (the wheel carries it) nor on the path
        if not (_repo_on_path() / "app" / "app.py").exists():
            _fail("the web app (app/app.py) is not installed: pip install 'restore[ui]' or run from a source checkout")
    try:
        import gradio  # noqa: F401
    except ImportError:
        _fail("the web app needs gradio: pip install 'restore[ui]'")
    from app.app import launch

    login = f", login required for {len(credentials)} user(s)" if credentials else ""
    typer.echo(f"restore ui on http://{host}:{port}{login} (Ctrl-C to stop)")
    launch(host=host, port=port, share=share, auth=credentials)


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
    # a user reads "warning: <why>", not the Python source line that raised it
    warnings.formatwarning = lambda message, category, *args, **kwargs: f"warning: {message}\n"
    if argv and argv[0] not in SUBCOMMANDS and not argv[0].startswith("-"):
        argv.insert(0, "run")
    app(args=argv, prog_name="restore")


if __name__ == "__main__":
    main()
