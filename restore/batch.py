"""Folder restoration: one pure per-image function, run in this process or on Ray workers.

``run_job(settings, job)`` restores one file into its own output folder (written atomically) and returns its
metrics row; it never raises for a bad file, so one failure never stops a batch. Engines:

- ``local``: the jobs one after another in this process (memory: one image's solve at a time).
- ``ray`` (``pip install 'restore[distributed]'``): the same function as Ray tasks, one CPU each, on a local Ray
  instance or an existing cluster (``address``); at most ``2 x CPUs`` tasks are in flight, and rows are written by
  the driver as tasks finish, so a kill loses at most the images in flight.
"""

from __future__ import annotations

import json
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional


@dataclass(frozen=True)
class BatchSettings:
    task: str
    solver: str
    prior: Optional[str] = None
    device: str = "cpu"
    tile: int = 256
    options: tuple = field(default_factory=tuple)  # sorted (key, value) pairs of solver overrides
    samples: int = 8
    simulate: bool = False
    bit_depth: int | None = None  # None: as each input file (io.source_bit_depth)
    std_format: str = "npy"
    quant: Optional[str] = None


@dataclass(frozen=True)
class Job:
    source: str  # input file
    rel: str  # its path relative to the input folder (posix)
    target: str  # output folder for this image
    seed: int
    truth: Optional[str] = None  # ground-truth file, if any
    error: Optional[str] = None  # a problem found while planning (e.g. missing ground truth)


def image_seed(seed: int, rel: str) -> int:
    """Per-image seed from the global seed and the file's relative path: stable across runs and machines."""
    return (int(seed) + zlib.crc32(rel.encode("utf-8"))) % (2**31)


def find_images(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursive, hidden entries skipped), sorted by relative path."""
    from restore.io import IMAGE_SUFFIXES

    return sorted((p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                   and not any(part.startswith(".") for part in p.relative_to(folder).parts)),
                  key=lambda p: p.relative_to(folder).as_posix())


def find_truth(gt_dir: Path, rel: Path) -> Optional[Path]:
    from restore.io import IMAGE_SUFFIXES

    exact = gt_dir / rel
    if exact.exists():
        return exact
    for suf in IMAGE_SUFFIXES:
        cand = (gt_dir / rel).with_suffix(suf)
        if cand.exists():
            return cand
    return None


def plan(in_dir: Path, out_dir: Path, seed: int, gt_dir: Optional[Path] = None) -> tuple[list[Job], int, int]:
    """(jobs still to do, number already done, number of files found). Done = the output folder has meta.json."""
    files = find_images(in_dir)
    jobs, skipped = [], 0
    for f in files:
        rel = f.relative_to(in_dir)
        target = out_dir / rel.with_suffix("")
        if (target / "meta.json").exists():
            skipped += 1
            continue
        truth, error = None, None
        if gt_dir is not None:
            truth = find_truth(gt_dir, rel)
            if truth is None:
                error = f"FileNotFoundError: no ground truth for {rel.as_posix()} in {gt_dir}"
        jobs.append(Job(str(f), rel.as_posix(), str(target), image_seed(seed, rel.as_posix()),
                        None if truth is None else str(truth), error))
    return jobs, skipped, len(files)


def restore_file(restorer, image_path: Path, task, out_dir: Path, samples: int, seed: int, simulate: bool,
                 truth_path: Optional[Path], bit_depth: int | None, std_format: str, progress=None) -> dict:
    """Restore one file into ``out_dir`` (written atomically, with the file's ICC profile); returns the metrics
    row."""
    from restore import io
    from restore.api import keep_colour_profile
    from restore.posterior import check_replaceable

    check_replaceable(Path(out_dir).resolve(), {"observation.png": None})  # before the work, not after it
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
    keep_colour_profile(post, image_path)
    bit_depth = io.source_bit_depth(image_path) if bit_depth is None else bit_depth
    post.save(out_dir, bit_depth=bit_depth, std_format=std_format, extras={"observation.png": y},
              truth=truth if truth is not None and truth.shape == post.mean.shape else None)
    row = {"seed": seed, "seconds": post.meta["timings"]["total_s"], **uncertainty_columns(post.meta)}
    if note := post.meta.get("noise_estimate"):  # an 'auto' noise level: each file's own estimate
        row["noise_estimate_255"] = note["sigma_255"]
    for k, v in post.meta.get("metrics", {}).items():
        if isinstance(v, (int, float)) or v is None:
            row[k] = v
    return row


def uncertainty_columns(meta: dict) -> dict:
    """The uncertainty's status, predicted quality and self-check as flat columns (for metrics.jsonl/summary.csv):
    a batch sorted by ``predicted_psnr`` puts the results most likely to be wrong first."""
    u = meta.get("uncertainty", {})
    check = u.get("self_check", {})
    return {"uncertainty": u.get("status"), "predicted_psnr": u.get("predicted_psnr"),
            "predicted_rmse": u.get("predicted_rmse"), "self_check": check.get("verdict"),
            "chi2_ratio": check.get("chi2_ratio"), "unusual_image": "warning" in u if u else None}


def describe_clipping(meta: dict) -> str | None:
    """One line for people on the observation's values clipped at 0 or 1 (``meta['censored']``, restore.censoring),
    or None where there were none worth a word (imputed, or at least 0.3 % of the values)."""
    from restore.censoring import MIN_CLIPPED

    note = meta.get("censored")
    if not note:
        return None
    share = note["fraction_at_0"] + note["fraction_at_1"]
    if not note.get("imputed") and share < MIN_CLIPPED:
        return None
    where = f"{100 * note['fraction_at_0']:.2f} % of the values at 0, {100 * note['fraction_at_1']:.2f} % at 1"
    if note.get("imputed"):
        kept = f" (crushed, kept: {', '.join(note['crushed'])})" if note.get("crushed") else ""
        return f"clipped values: {where}; imputed as clipped Gaussian noise before the restore{kept}"
    why = note.get("why", "the clipped bounds look crushed (a camera's black or white level), not clipped noise")
    return f"clipped values: {where}; left as they are: {why}"


def describe_uncertainty(meta: dict) -> str:
    """One line for people: is the std calibrated, by what, and does the result explain its observation."""
    u = meta.get("uncertainty", {})
    settings = f"; WARNING: {meta['settings_warning']}" if meta.get("settings_warning") else ""
    if u.get("status") in (None, "uncalibrated"):
        return (f"uncertainty: NOT calibrated ({u.get('reason', 'no calibration applied')}): std is the raw sample "
                f"spread{settings}")
    check = u["self_check"]
    line = (f"uncertainty: {u['status']} by {u['table']} ({u['cell']}); predicted PSNR {u['predicted_psnr']:.1f} dB; "
            f"self-check {check['verdict']} (chi2 ratio {check['chi2_ratio']:.3g}, calibration images "
            f"{check['expected_range'][0]:.3g}-{check['expected_range'][1]:.3g})")
    if "groups" in u:  # inpainting: the unobserved pixels got their own multiplier (restore.calibration)
        g = u["groups"]
        line += (f"; the {100 * g['missing_fraction']:.0f} % unobserved pixels calibrated apart (90 % multiplier "
                 f"{g['multiplier_90']['missing']:.2f} there, {g['multiplier_90']['observed']:.2f} elsewhere)")
    if check["verdict"] == "poor fit":
        line += (f"; WARNING: the restored image does not explain the observation, intervals widened "
                 f"x{u['widening']:.2f}")
    elif check["verdict"] == "fits the noise" and not meta.get("noise_estimate"):  # y cleaner than stated
        # (an estimated level gets the warning of calibration.warn_if_not_gaussian instead)
        line += ("; NOTE: the observation is explained far better than its noise level predicts: it may be less "
                 "noisy than stated (then the result is over-smoothed and the intervals too wide); check the noise "
                 "level (sigma=auto estimates it)")
    if "warning" in u:
        line += f"; WARNING: {u['warning']}"
    return line + settings


_RESTORERS: dict = {}


def _restorer(s: BatchSettings):
    """One Restorer per settings per process (a Ray worker keeps its prior loaded across tasks)."""
    if s not in _RESTORERS:
        from restore.api import Restorer

        _RESTORERS[s] = Restorer(s.solver, s.prior, s.device, tile=s.tile, quant=s.quant, **dict(s.options))
    return _RESTORERS[s]


def run_job(settings: BatchSettings, job: Job) -> dict:
    """Restore one job; returns {"file", "status": "ok"|"error", ...}. Never raises for a bad input."""
    from restore.tasks import parse

    if job.error:
        return {"file": job.rel, "status": "error", "error": job.error, "seed": job.seed}
    try:
        row = restore_file(_restorer(settings), Path(job.source), parse(settings.task), Path(job.target),
                           settings.samples, job.seed, settings.simulate,
                           None if job.truth is None else Path(job.truth), settings.bit_depth, settings.std_format)
        return {"file": job.rel, "status": "ok", **row}
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # one bad file never stops the batch
        return {"file": job.rel, "status": "error", "error": f"{type(exc).__name__}: {exc}", "seed": job.seed}


def run_local(settings: BatchSettings, jobs: list[Job], on_row: Callable[[dict], None], progress: bool = True):
    import sys

    from tqdm import tqdm

    for job in tqdm(jobs, desc="restore batch", unit="img", file=sys.stderr, disable=not progress):
        on_row(run_job(settings, job))


def _limit_env() -> dict:
    """The pixel limit set for this process ($RESTORE_MAX_MEGAPIXELS, the CLI's --max-megapixels), for Ray's
    workers, which do not inherit the driver's environment."""
    from restore import io

    return {io.LIMIT_ENV: os.environ[io.LIMIT_ENV]} if os.environ.get(io.LIMIT_ENV) else {}


def run_ray(settings: BatchSettings, jobs: list[Job], on_row: Callable[[dict], None], address: Optional[str] = None,
            num_cpus: Optional[int] = None, progress: bool = True):
    """The same per-image function as Ray tasks (1 CPU each), at most 2 x CPUs in flight."""
    try:
        import ray
    except ImportError:
        raise RuntimeError("the ray engine needs Ray: pip install 'restore[distributed]'") from None
    import sys

    from tqdm import tqdm

    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=address, num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
                 ignore_reinit_error=True, runtime_env={"env_vars": {"OMP_NUM_THREADS": "1", **_limit_env()}})
    try:
        remote = ray.remote(num_cpus=1, max_retries=0)(run_job)
        limit = max(1, 2 * int(ray.cluster_resources().get("CPU", 1)))
        pending = iter(jobs)
        in_flight = {}
        bar = tqdm(total=len(jobs), desc="restore batch (ray)", unit="img", file=sys.stderr, disable=not progress)
        for job in _take(pending, limit):
            in_flight[remote.remote(settings, job)] = job
        while in_flight:
            ready, _ = ray.wait(list(in_flight), num_returns=1)
            job = in_flight.pop(ready[0])
            try:
                row = ray.get(ready[0])
            except Exception as exc:  # a worker that died
                row = {"file": job.rel, "status": "error", "error": f"worker failed: {exc}", "seed": job.seed}
            on_row(row)
            bar.update(1)
            for nxt in _take(pending, 1):
                in_flight[remote.remote(settings, nxt)] = nxt
        bar.close()
    finally:
        if started_here:
            ray.shutdown()


def _take(it: Iterable, n: int) -> list:
    out = []
    for _ in range(n):
        try:
            out.append(next(it))
        except StopIteration:
            break
    return out


def append_jsonl(path: Path, row: dict):
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())
