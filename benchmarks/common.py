"""Shared benchmark plumbing: evaluation images, the train/eval separation check, tables, JSON with provenance."""

from __future__ import annotations

import os
import platform
import sys
import time
from pathlib import Path

import torch

from restore.files import write_json_atomic

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
EVAL_SETS = ("CBSD68", "BSD68", "Set12", "CC15", "SIDD-val-80", "RNI15", "CelebA-test-41", "CelebAHQ-56", "FFHQ-test-15")
# The fixed quick subset: these CBSD68 files (the 1st, 18th, 35th and 52nd by sorted name).
S = 1 / 255  # noise levels below are given on the /255 scale


def tasks() -> dict[str, str]:
    """The benchmark tasks every solver table shares: name -> task spec (the evaluation protocol in DESIGN.md)."""
    k = data_root() / "kernels"
    return {
        "denoise25": f"denoise:gaussian:sigma={25 * S:.6f}",
        "deblur_gauss1": f"deblur:kernel:path={k / 'gaussian_std1.npy'},noise={2.55 * S:.6f}",
        "deblur_motion": f"deblur:kernel:path={k / 'levin09_0.npy'},noise={7.65 * S:.6f}",
        "sr4": f"sr:bicubic:factor=4,noise={2.55 * S:.6f}",
        "inpaint_random50": f"inpaint:random:missing=0.5,noise={2.55 * S:.6f}",
        "inpaint_box": f"inpaint:box:size=0.3,noise={2.55 * S:.6f}",
    }


def extra_tasks() -> dict[str, str]:
    """Tasks beside the shared six, run only when a benchmark's ``--tasks`` names them: x2 SR (2.55/255), which the
    calibration grid has (its cell sr2) and the tuning scans (``restore.train.tune.EXTRA``)."""
    from restore.train.tune import EXTRA

    return dict(EXTRA)


QUICK_CBSD68 = ("101085.png", "143090.png", "19021.png", "253055.png")


def data_root() -> Path:
    """``$RESTORE_DATA`` or the shared data folder beside the repository."""
    root = Path(os.environ.get("RESTORE_DATA", REPO.parent / "shared" / "data"))
    if not root.is_dir():
        raise SystemExit(f"evaluation data not found at {root}: set RESTORE_DATA to the folder holding CBSD68/ "
                         "(see data/README.md)")
    return root


def image_paths(name: str) -> list[Path]:
    """Image files of the data set folder ``name`` under the data root, or of a folder of this checkout when ``name``
    is one (``train_data/CQ100``, made by a script: data/README.md), sorted by name."""
    folder = REPO / name if "/" in name and (REPO / name).is_dir() else data_root() / name
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp", ".tif"))


def centre_crop(x: torch.Tensor, crop: int | None) -> torch.Tensor:
    """The central crop x crop window of (..., H, W) ``x`` (``x`` itself when crop is None)."""
    if not crop:
        return x
    h, w = x.shape[-2:]
    t, l = (h - crop) // 2, (w - crop) // 2
    return x[..., t:t + crop, l:l + crop]


def load_set(name: str, crop: int | None = None, files: tuple[str, ...] | None = None) -> list[tuple[str, torch.Tensor]]:
    """[(file name, (1, C, H, W) tensor in [0, 1])] of an evaluation set, optionally centre-cropped to crop x crop."""
    from restore.io import read_image

    paths = image_paths(name)
    if files is not None:
        paths = [p for p in paths if p.name in files]
        if len(paths) != len(files):
            raise SystemExit(f"{data_root() / name} lacks some of {files}")
    return [(p.name, centre_crop(read_image(p), crop)) for p in paths]


def spread(items: list, n: int | None) -> list:
    """``n`` of ``items`` spread evenly over them (every len/n-th, from the first); all of them when n is None."""
    return items if not n else items[::max(1, len(items) // n)][:n]


def check_cards_exclude(eval_set: str, prior_names: list[str]):
    """Refuse to benchmark a prior whose model card says it saw ``eval_set`` in training."""
    from restore.priors import registry

    for name in prior_names:
        card = registry.read_card(registry.PRIORS[name].file) if registry.PRIORS[name].file else {}
        data = str(card.get("training_data", ""))
        if any(s in data for s in EVAL_SETS):
            raise SystemExit(f"prior {name}'s card names an evaluation set in its training data: {data}")
        tuned = str(card.get("euler_steps_calibration", {}).get("images", ""))  # PMRF's steps, chosen on images
        if any(s in tuned for s in EVAL_SETS):
            raise SystemExit(f"prior {name}'s card was calibrated on an evaluation set: {tuned}")


def environment() -> dict:
    import deepinv

    import restore

    return {"restore": restore.__version__, "torch": torch.__version__, "deepinv": deepinv.__version__,
            "python": platform.python_version(), "machine": platform.machine(), "processor": platform.processor(),
            "cpu_threads": torch.get_num_threads(), "cuda": torch.cuda.is_available(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S")}


def write_results(name: str, payload: dict, out: str | None = None) -> Path:
    # atomic, because long runs rewrite their file after every row and --resume reads it back
    return write_json_atomic({"benchmark": name, "command": command_line(), "environment": environment(), **payload},
                             Path(out) if out else RESULTS / f"{name}.json")


_LOCKS: dict = {}  # lock path -> open lock file, held for the process's lifetime


def hold_results_lock(path: Path) -> None:
    """Refuse to run beside another run that writes ``path``: long runs rewrite their whole file after every unit from
    what they hold in memory, so two at once would each drop the other's finished results. The lock (an advisory
    ``flock`` on PATH.lock) lasts until this process ends, however it ends."""
    import fcntl

    path = Path(path)
    lock = path.with_name(path.name + ".lock").resolve()
    if lock in _LOCKS:  # this process holds it already (a later run in the same process)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(lock, "w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise SystemExit(f"another run is writing {path} (lock {handle.name}); let it finish, or pass --out to "
                         "write elsewhere") from None
    _LOCKS[lock] = handle


def command_line() -> str:
    """How this run was started, as a user would type it (``python -m benchmarks.X ...``)."""
    import shlex

    script = Path(sys.argv[0])
    args = shlex.join(sys.argv[1:])  # quoted, so a method name with spaces pastes back as one argument
    if script.suffix == ".py" and script.resolve().parent == REPO / "benchmarks":
        return f"python -m benchmarks.{script.stem} {args}".rstrip()
    return f"{script.name} {args}".rstrip()


def in_processes(jobs: int, worker, calls: list[tuple], init, init_arg, finished) -> None:
    """``worker(*call)`` for every call, in ``jobs`` spawned processes of one thread each, calling
    ``finished(result)`` as each is done. ``init(init_arg)`` runs first in every process: hand the images over there
    as numpy arrays (torch tensors would travel as shared file descriptors, one per queued unit, and run out)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"), initializer=_process_init,
                             initargs=(init, init_arg)) as pool:
        for fut in as_completed([pool.submit(worker, *call) for call in calls]):
            finished(fut.result())


def _process_init(init, init_arg):
    import warnings

    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    init(init_arg)


def summary_row(row: dict, results: list[dict], n: int, unit: str = "images") -> dict:
    """``row`` (its labels) with the mean of every float metric over ``results``, the per-image results of one
    method and group; or a note: 'not run yet' without results, the first failure's note, 'k/n <unit> so far'
    while results are missing (an interrupted run shows its gaps instead of hiding them)."""
    if not results:
        return {**row, "note": "not run yet (--resume continues the run)"}
    notes = [r["note"] for r in results if "note" in r]
    if notes:
        return {**row, "note": notes[0]}
    # a metric some results lack (a run that fell back to its raw spread reports no separate raw coverage) is left
    # out rather than averaged over a subset
    keys = [k for k in results[0] if isinstance(results[0][k], float) and all(k in r for r in results)]
    row = {**row, **{k: sum(r[k] for r in results) / len(results) for k in keys}}
    if "psnr" in keys and len(results) >= 2:
        row["psnr_ci95"] = ci95_half_width([r["psnr"] for r in results])
    if len(results) < n:
        row["note"] = f"{len(results)}/{n} {unit} so far"
    return row


def ci95_half_width(values: list[float]) -> float:
    """Half-width of the 95 % confidence interval of the mean of ``values`` (Student's t, images as the unit): the
    mean is known to about +- this much for images drawn like these."""
    from scipy.stats import t

    n = len(values)
    mean = sum(values) / n
    sd = (sum((v - mean) ** 2 for v in values) / (n - 1)) ** 0.5
    return float(t.ppf(0.975, n - 1) * sd / n ** 0.5)


PAIRED_COLUMNS = ["task", "method", "psnr_difference", "ci95", "wins", "images"]  # paired_against's rows, as shown


def paired_against(per_image: list[dict], baseline: str, metric: str = "psnr") -> list[dict]:
    """Each method's per-image ``metric`` minus ``baseline``'s on the same (task, image): the mean difference, the
    95 % confidence half-width of that mean (paired, images as the unit: far tighter than comparing two means whose
    intervals both carry the spread between images) and how many images the method wins. Rows in first-seen order;
    (task, method) pairs with fewer than 2 shared images, and the degraded input, are left out."""
    value = {(r["task"], r["method"], r["image"]): r[metric] for r in per_image if metric in r}
    tasks = list(dict.fromkeys(t for t, _, _ in value))
    methods = list(dict.fromkeys(m for _, m, _ in value if m not in (baseline, "input")))
    order = [(t, m) for t in tasks for m in methods]
    rows = []
    for task, method in order:
        diffs = [v - value[(task, baseline, image)] for (t, m, image), v in value.items()
                 if t == task and m == method and (task, baseline, image) in value]
        if len(diffs) < 2:
            continue
        rows.append({"task": task, "method": method, "baseline": baseline,
                     f"{metric}_difference": sum(diffs) / len(diffs),
                     "ci95": ci95_half_width(diffs), "wins": sum(d > 0 for d in diffs), "images": len(diffs)})
    return rows


def table(rows: list[dict], columns: list[str]) -> str:
    """A Markdown table of ``rows`` (missing values shown as '-')."""
    def fmt(v):
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:.3f}" if abs(v) < 10 else f"{v:.2f}"
        return str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)
