"""Fit a solver's calibration table (``restore.calibration``) on held-out training crops; resumable.

    python -m restore.train.calibration --solver vble                 # every family, the solver's default prior
    python -m restore.train.calibration --solver pmrf --families denoise --fit 8 --cal 60 --heldout 4

For each cell (task family x noise level in :data:`GRID`) the solver runs, at its default settings with K samples,
on random crops of the training images (BSD432-train minus the 8 files the priors held out):
``--fit`` of them (plus ``EXTRA_FIT``'s more for deblurring) fit the error-scale weights (least squares of log|error|
on the features), ``--cal`` others give the conformal score curves and the self-check's chi2 range, and
``--heldout`` crops of the priors' 8 held-out files measure the gap between images the priors trained on and
images they never saw (reported in the table, not used). ``--data`` may name a folder of photos no prior trained on
(``train_data/CQ100``, made by ``scripts/get_cq100.py``): its crops are then unseen images like a user's, and the
table and each cell say so (``images``).
Families pool task parameters the way users vary them (blur kernels, missing fractions, box sizes), so each cell's
guarantee is marginal over that mix. Each run is cached under ``--runs`` (the solver's outputs for one crop), so a
rerun only does what is missing; the table goes to ``models/calibration/SOLVER.PRIOR.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import re
import time
from pathlib import Path

import numpy as np
import torch

from restore import calibration as cal
from restore.files import save_atomic, write_json_atomic
from restore.provenance import canonical, without_prior
from restore.stale import settings_changed

S = 1 / 255
# the deblurring mix, crop i gets DEBLUR_KERNELS[i % 8]: Gaussian and motion kernels of four sizes each, so the
# per-image signals' weights (EXTRA_FEATURES) are fitted across kernels of both shapes (with 4 kernels, 2026-12-03/04,
# the scale could not follow shape and width at once: Gaussian sigma 1 over-covered, docs/calibration.md)
DEBLUR_KERNELS = ("gaussian:sigma=1", "motion:size=9,seed={i}", "gaussian:sigma=1.5", "motion:size=15,seed={i}",
                  "gaussian:sigma=2", "motion:size=19,seed={i}", "gaussian:sigma=3", "motion:size=25,seed={i}")
# family -> (noise levels, spec of crop i at noise n)
GRID = {
    "denoise": ((2.55 * S, 5 * S, 15 * S, 25 * S, 50 * S), lambda i, n: f"denoise:gaussian:sigma={n:.6f}"),
    "deblur": ((0.01, 0.03), lambda i, n: f"deblur:{DEBLUR_KERNELS[i % len(DEBLUR_KERNELS)].format(i=i)},"
               f"noise={n:.6f}"),
    "sr2": ((0.01,), lambda i, n: f"sr:bicubic:factor=2,noise={n:.6f}"),
    "sr4": ((0.01,), lambda i, n: f"sr:bicubic:factor=4,noise={n:.6f}"),
    "inpaint-random": ((0.01,), lambda i, n: f"inpaint:random:missing={(0.3, 0.5, 0.7)[i % 3]},seed={i},noise={n:.6f}"),
    "inpaint-region": ((0.01,), lambda i, n: f"inpaint:box:size={(0.2, 0.3, 0.4)[i % 3]},noise={n:.6f}"),
    # unknown real noise (solvers that estimate it): one cell, crop i gets camera_noise level CAMERA_MIX[i % 6]
    cal.REAL_FAMILY: ((0.0,), lambda i, n: "denoise:real"),
    # the same camera-like noise given to a Gaussian solver at sigma=auto (solvers that need a noise level): the
    # cell calibration.apply takes when the self-check says the noise is not white Gaussian (cal.camera_cell)
    cal.CAMERA_FAMILY: ((0.0,), lambda i, n: "denoise:gaussian:sigma=auto"),
}
CAMERA_FAMILIES = (cal.REAL_FAMILY, cal.CAMERA_FAMILY)  # the families whose observations are camera_noise's
# (level, std scale) of restore.train.camera_noise: about 2, 4, 9, 19, 16 and 32/255 residual std
CAMERA_MIX = (("light", 0.5), ("light", 1.0), ("heavy", 0.5), ("heavy", 1.0), ("very_heavy", 0.5),
              ("very_heavy", 1.0))


def flat_window(fam: str, i: int) -> bool:
    """Whether crop ``i`` of family ``fam`` is its file's least textured window instead of a random crop under
    ``--flattest-windows``: half the real-noise family's crops. Real-noise photos are often flat (walls, sky,
    backdrops: the CC15 / SIDD test crops have a 3x3-Laplacian std of 2-10/255 where random BSD432 crops have 28-60),
    and there ScoreDVI's raw spread covers 0.99 of the true pixels at 90 % (2026-12-06, ``tune --crop-at
    flattest``). Alternating within each block of 6 and flipping phase between blocks gives every ``CAMERA_MIX``
    level both kinds of crop. Not the default: the pooled cell came out narrower everywhere rather than following
    texture (held-out 90 % coverage flat 0.963 -> 0.949, random crops 0.846 -> 0.794; docs/calibration.md)."""
    return fam == cal.REAL_FAMILY and (i + i // len(CAMERA_MIX)) % 2 == 1

# per-image signals a family's cells add to cal.FEATURES. The deblurring mix pools kernels that erase very different
# shares of the spectrum: with one pooled scale PMRF's 90 % interval covered 0.97 on mild kernels and 0.88 on strong
# ones, and 0.85 on CBSD68's camera-shake kernel; the operator's Wiener error (cal.wiener_rmse) lets the scale follow
# how hard the kernel and noise make the problem, and its elongation (cal.kernel_anisotropy) tells motion kernels,
# whose learned-solver error runs higher for their Wiener error, from Gaussian ones (docs/calibration.md)
EXTRA_FEATURES = {"deblur": ("log_wiener", "log_anisotropy", "motion", "log_wiener_motion")}
# the per-image signals whose weights a second stage refits (:func:`image_stage`). The first stage fits the mean of
# log|error|, but how far the error's tail reaches past that mean differs between kernels too: with one stage PMRF's
# calibration crops covered 0.83-0.96 per kernel under the pooled 90 % multiplier (sd over the 8 kernels 0.051 at
# noise 0.01, Gaussian sigma 2-3 lowest); the second stage, fitted on the 96 fit crops' own 90 % score quantiles,
# 0.86-0.95 (sd 0.029), and with each kernel left out of the fit mean |coverage - 0.9| 0.053 -> 0.033 (2026-12-07,
# docs/calibration.md)
IMAGE_STAGE = {"deblur": ("bias", "log_wiener", "motion", "log_wiener_motion")}
IMAGE_STAGE_LEVEL = 0.9
# signals a solver's cells add (after the family's), and the families whose cells do: PMRF's parametric bootstrap
# (cal.BOOT_FEATURES; one more run with one sample). First fitted on its cached runs (PMRF deblurring at noise 0.01
# and denoising at 25/255, 2026-12-06): the per-image spread of log RMS error around its prediction fell 0.35 -> 0.30
# and 0.15 -> 0.08, 90 % coverage on CelebA training faces 0.960 -> 0.948 and 0.945 -> 0.928 at 7-13 % narrower
# intervals, std-|error| Spearman +0.02-0.04. With every cell refitted it helped denoising, deblurring and SR on the
# held-out crops and the CelebA faces (scripts/calibration_shift_check.py) but not inpainting (held-out region
# inpainting's PSNR ranking 0.63 -> 0.57, faces level), where the observed-pixel signals already tell where the
# solver invents; those cells do without it and its cost (docs/calibration.md). Never the real-noise family: its
# observations are camera noise, which the task cannot simulate.
SOLVER_FEATURES = {"pmrf": (cal.BOOT_FEATURES, ("denoise", "deblur", "sr2", "sr4"))}
# more fit crops for a family whose cells carry per-image signals: their weights rest on the fit images alone, and
# with 2 crops a kernel the Wiener weight came out noisy (PMRF at noise 0.01: 1.93 on 8 crops, 1.09 on 16); 24 more
# gave 4 a kernel (2026-12-04); 88 more (12 a kernel, since 2026-12-07) for the second stage (IMAGE_STAGE), whose
# fit on 32 crops explained the kernels' tails no better than chance (F test p 0.36-0.82 in PMRF's and VBLE's cells)
# and on 96 did (PMRF at noise 0.01: p 0.017), with the same signs and sizes of adjustment. Taken from the end of
# the shuffled file order (no fit or calibration image's file), run indices 2000+.
EXTRA_FIT = {"deblur": 88}
PRIOR_HELD_OUT = 8  # the priors' training scripts hold out the last 8 files of BSD432-train
SAMPLES = 8  # posterior samples a calibration run draws (--samples); runs with another K are only approximate
FIT_PIXELS = 20_000  # pixels per fit image in the least squares (plenty for len(FEATURES) weights)


def crops(files: list[Path], size: int, seed: int) -> list[torch.Tensor]:
    """One random (1, 3, size, size) crop in [0, 1] of each file (positions drawn from ``seed``)."""
    from restore.train.common import load_uint8_images

    g = torch.Generator().manual_seed(seed)
    out = []
    for img in load_uint8_images(files):
        h, w = img.shape[-2:]
        top, left = (int(torch.randint(d - size + 1, (1,), generator=g)) for d in (h, w))
        out.append(img[None, :, top:top + size, left:left + size].float() / 255)
    return out


def plan_files(files: list[Path], n: int, extra: int, seed: int) -> tuple[list[Path], list[Path]]:
    """(the first ``n`` files of one seeded shuffle, ``extra`` more from its other end), disjoint.

    The first ``--fit`` of the ``n`` fit the weights, the rest calibrate; a larger ``--cal`` appends files, so the
    runs already cached keep their images."""
    if n + extra > len(files):
        raise SystemExit(f"{n} fit and calibration images and {extra} extra fit images need more than the "
                         f"{len(files)} files there are")
    order = [files[j] for j in np.random.default_rng(seed).permutation(len(files))]
    return order[:n], order[len(order) - extra:][::-1]


def priors_trained_on(folder: str | Path) -> list[str]:
    """The shipped priors whose model card names ``folder``'s name in its training data (BSD432-train: all of
    them; a folder of other photos, e.g. CQ100: none)."""
    from restore.priors import registry

    named = re.compile(rf"(?<![\w-]){re.escape(Path(folder).name)}(?![\w-])")  # the whole name, not "train"
    return [n for n, p in registry.PRIORS.items()
            if p.file and named.search(str(registry.read_card(p.file).get("training_data", "")))]


def remember_today(today: dict, unit: dict) -> None:
    """Keep the solvers' settings and the priors' digests a fresh ``unit`` ran with in ``today``, unless it already
    holds a probe's (the first fresh run of a cell stands for all its folders)."""
    if not today:
        today.update(solvers=unit["solvers"], priors=unit["priors"])


def run_cell(restorer, fam: str, sigma: float, units: list, samples: int, cache: Path,
             today: dict | None = None) -> list[dict]:
    """Run (or read back) the solver on every (role, index, file, crop) unit of one cell. ``today`` (filled here
    when empty: the solvers' settings and priors' digests of a fresh run) may be shared by the calls of one cell, so
    the folders of a several-folder fit need one probe run between them."""
    results, today = [], {} if today is None else today
    for role, i, name, x in units:
        path = cache / f"{fam}-{sigma:.5f}" / f"{role}-{i:03d}.pt"
        if path.exists():
            unit = torch.load(path, weights_only=True)
            if not today:  # what this code runs now (every nested solver's config), from one fresh run
                remember_today(today, run_unit(restorer, fam, sigma, samples, i, name, x, role))
            # one cached with other settings or weights, or for another image (other --fit / --cal / --seed draw
            # other files), is rerun
            if (ran_as_today(unit, today["solvers"], today["priors"], fam) and same_crop(unit, name, x)
                    and unit.get("spec") == planned_spec(fam, sigma, i)):
                if lacks_bootstrap(restorer, unit, fam):  # cached before the solver's cells used the bootstrap
                    save_atomic(with_bootstrap(restorer, unit, fam), path)
                results.append(unit)
                continue
            print(f"{path}: cached with other solver settings, prior weights, image or task, rerun", flush=True)
        unit = run_unit(restorer, fam, sigma, samples, i, name, x, role)
        remember_today(today, unit)
        save_atomic(unit, path)
        print(f"{fam} sigma {sigma:.4f} {role} {i}: {unit['seconds']:.1f} s, "
              f"{10 * math.log10(1 / float(((unit['mean'] - x) ** 2).mean())):.2f} dB", flush=True)
        results.append(unit)
    return results


def same_crop(unit: dict, name: str, x: torch.Tensor) -> bool:
    """Whether a cached run is of file ``name``'s crop ``x``: another ``--crop`` size or window (:func:`flat_window`)
    keeps the file and the cache path but not the pixels."""
    return unit.get("file", name) == name and (x is None or torch.equal(unit["x"], x))


def planned_spec(fam: str, sigma: float, i: int) -> str:
    """The task spec crop ``i`` of a cell runs (as the task prints it, the form a cached run records)."""
    from restore.tasks import parse

    return str(parse(GRID[fam][1](i, sigma)))


def feature_names(solver: str, fam: str) -> list[str]:
    """The signals ``solver``'s cells of family ``fam`` are fitted on: cal.FEATURES, the family's per-image ones
    (EXTRA_FEATURES), the solver's (SOLVER_FEATURES)."""
    own, families = SOLVER_FEATURES.get(solver, ((), ()))
    return list(cal.FEATURES) + list(EXTRA_FEATURES.get(fam, ())) + (list(own) if fam in families else [])


def lacks_bootstrap(restorer, unit: dict, fam: str) -> bool:
    """Whether ``unit`` has no bootstrap estimate though ``restorer``'s solver's cells of ``fam`` use one (False
    without a restorer: a cache-only caller cannot tell)."""
    return (restorer is not None and "boot" not in unit
            and cal.needs_bootstrap(feature_names(restorer.solver.name, fam)))


def with_bootstrap(restorer, unit: dict, fam: str) -> dict:
    """``unit`` with its bootstrap estimate (``boot``: ``Restorer.bootstrap_mean`` with the run's seed, its index)
    where the solver's cells of ``fam`` use it; a cached run from before gets it added (without a restorer, as it
    is)."""
    if lacks_bootstrap(restorer, unit, fam):
        unit["boot"] = restorer.bootstrap_mean(unit["mean"].to(restorer.device), unit["spec"],
                                               seed=unit["index"]).cpu()
    return unit


def run_unit(restorer, fam: str, sigma: float, samples: int, i: int, name: str, x, role: str) -> dict:
    """One calibration run: the crop, its observation, the solver's mean and spread, the solvers that ran, and
    where the solver's cells use it the bootstrap estimate (:func:`with_bootstrap`)."""
    from restore.tasks import parse

    task = parse(GRID[fam][1](i, sigma))
    extra = {}
    if fam in CAMERA_FAMILIES:
        from restore.train import camera_noise

        level, scale = CAMERA_MIX[i % len(CAMERA_MIX)]
        y = camera_noise.simulate(x, level, torch.Generator().manual_seed(i), scale)
        extra["camera_noise"] = [level, scale]
    else:
        y = restorer.simulate(x, task, seed=i)
    t0 = time.perf_counter()
    post = restorer(y, task, samples=samples, seed=i)
    if fam == cal.REAL_FAMILY:  # the self-check's noise level: the solver's own estimate, as at run time
        extra["sigma_used"] = float(post.meta["estimated_noise_std"])
    elif fam == cal.CAMERA_FAMILY:  # the level sigma=auto read, and the task it made (the features' physics)
        extra["sigma_used"] = float(post.meta["noise_estimate"]["sigma"])
        extra["resolved_spec"] = post.meta["task"]
    # cached on the CPU whatever ran the solver (--device cuda: the fit and every later use read them here)
    unit = {"role": role, "index": i, "file": name, "spec": str(task), "x": x, "y": y.cpu(), "mean": post.mean.cpu(),
            "spread": post.spread.cpu(), "seconds": time.perf_counter() - t0,
            "solvers": post.meta["provenance"]["solvers"], "priors": post.meta["provenance"]["priors"], **extra}
    return with_bootstrap(restorer, unit, fam)


def solver_settings(solvers: list[dict] | None) -> list | None:
    """(name, config) of every solver a run used (the top one, then e.g. PMRF's posterior-mean solver)."""
    return None if solvers is None else [[s["name"], s["config"]] for s in solvers]


def same_settings(cached: list[dict] | None, now: list[dict], family: str) -> bool:
    """Whether a cached run's solvers (its provenance list: name, options, config) ran this ``family``'s task as the
    code now does: the same solvers in order, each config resolved for the family (``provenance.for_family``: a
    per-family setting changed for another family does not count) and an option added since counting only off its
    default (``provenance.changed``); the prior named among the options does not count (the cache is one prior's)."""
    if cached is None or [s["name"] for s in cached] != [s["name"] for s in now]:
        return False
    return not any(without_prior(a.get("options", {})) != without_prior(b.get("options", {}))
                   or settings_changed(b["name"], b["config"], a["config"], b.get("options", {}), family)
                   for a, b in zip(cached, now))


def ran_as_today(unit: dict, settings: list[dict], priors: dict, family: str) -> bool:
    """Whether a cached run was made as a fresh one is now: its solvers' settings (:func:`same_settings`) and its
    priors' digests (a run cached before runs recorded them is judged by the settings alone)."""
    return same_settings(unit.get("solvers"), settings, family) and unit.get("priors", priors) == priors


def unit_signals(unit: dict, names=cal.FEATURES) -> tuple[torch.Tensor, torch.Tensor, object]:
    """(features ``names``, |error|, physics) of one cached run."""
    from restore.tasks import parse

    task = parse(unit.get("resolved_spec", unit["spec"]))  # a sigma=auto run: the level it estimated
    physics = task.physics(tuple(unit["x"].shape))
    feats = cal.features(unit["mean"], unit["spread"], unit["y"], physics, names, unit.get("boot"))
    return feats, (unit["mean"] - unit["x"]).abs(), physics


def fit_cell(units: list[dict], sigma: float, seed: int = 0, names=cal.FEATURES, family: str = "",
             flattest: bool = False) -> dict:
    """Weights, score curves, chi2 range, MSE scale and held-out figures of one cell of ``family`` from its cached
    runs: a family in :data:`IMAGE_STAGE` gets the second stage (:func:`image_stage`), and with ``flattest`` (its
    crops mix flattest windows and random crops, :func:`flat_window`) the held-out coverage of each kind too."""
    from restore.metrics import spearman

    g = torch.Generator().manual_seed(seed)
    signals = [(u, *unit_signals(u, names)) for u in units]  # (unit, features, |error|, physics), worked out once
    rows, targets = [], []
    for u, feats, err, _ in signals:
        if u["role"] == "fit":
            flat, e = feats.flatten(1).T, err.flatten()
            pick = torch.randperm(e.numel(), generator=g)[:FIT_PIXELS]
            rows.append(flat[pick])
            targets.append(torch.log(e[pick] + cal.EPS))
    a, b = torch.cat(rows).double(), torch.cat(targets).double()
    weights = torch.linalg.lstsq(a, b[:, None]).solution[:, 0].float()
    stage = [n for n in IMAGE_STAGE.get(family, ()) if n in names]
    second = None
    if stage:
        weights, second = image_stage(weights, signals, list(names), stage)
    scales = [cal.scale_map(weights, feats) for _, feats, _, _ in signals]
    # predicted MSE = mse_scale * mean(s_hat^2): the geometric mean of the ratio over the fit and calibration images,
    # so the predicted PSNR is unbiased in dB (it carries no guarantee, so it may use both)
    mse_scale = math.exp(float(np.mean([math.log(float((err**2).mean()) / float((scale**2).mean()))
                                        for (u, _, err, _), scale in zip(signals, scales)
                                        if u["role"] in ("fit", "cal")])))

    groups = {g: {"cal": [], "heldout": []} for g in cal.GROUPS}  # each pixel group's curves, for inpainting

    def evaluate(role):
        curves, chi2, rho, rmse_pred, rmse = [], [], [], [], []
        for (u, _, err, physics), scale in zip(signals, scales):
            if u["role"] != role:
                continue
            curves.append(np.quantile((err / scale).flatten().numpy(), cal.SCORE_PROBS))
            by_group = cal.group_curves(err / scale, cal.missing_pixels(physics, u["mean"]))
            for g, c in (by_group or {}).items():
                groups[g][role].append(c)
            chi2.append(cal.chi2_ratio(u["mean"], u["y"], physics, u.get("sigma_used", sigma)))
            rho.append(spearman(scale.mean(1), err.mean(1)))
            rmse_pred.append(math.sqrt(mse_scale * float((scale**2).mean())))
            rmse.append(float((err**2).mean().sqrt()))
        return np.asarray(curves), chi2, rho, rmse_pred, rmse

    curves, chi2, rho, rmse_pred, rmse = evaluate("cal")
    out = {"sigma": sigma, "weights": [round(float(w), 6) for w in weights], "mse_scale": round(mse_scale, 6),
           "chi2_range": [round(min(chi2), 5), round(max(chi2), 5)],
           # the predicted PSNRs the calibration images got: a new image below them is harder than any of them
           "predicted_psnr_range": [round(-20 * math.log10(max(rmse_pred)), 3),
                                    round(-20 * math.log10(min(rmse_pred)), 3)],
           "scores": [[float(f"{v:.5g}") for v in c] for c in curves],
           "n_fit": sum(u["role"] == "fit" for u in units), "n_cal": len(curves),
           **({"image_stage": second} if second else {}),
           "solvers": solver_settings(units[0].get("solvers")),
           "calibration_images": {"std_error_spearman": round(float(np.mean(rho)), 4),
                                  "mean_psnr": round(float(np.mean([-20 * math.log10(r) for r in rmse])), 3),
                                  "psnr_rank_correlation": _rank_corr(rmse_pred, rmse)}}
    # calibrate the observed and the missing pixels apart when every calibration image has both (inpainting)
    grouped = all(len(groups[g]["cal"]) == len(curves) for g in cal.GROUPS)
    if grouped:
        out["group_scores"] = {g: [[float(f"{v:.5g}") for v in c] for c in groups[g]["cal"]] for g in cal.GROUPS}
    if any(u["role"] == "heldout" for u in units):
        h_curves, h_chi2, h_rho, h_pred, h_rmse = evaluate("heldout")
        lam = {lv: cal.calibrated_lambda(curves, lv) for lv in (0.5, 0.9, 0.95)}
        out["prior_held_out_images"] = {
            "n": len(h_curves),
            **{f"coverage_{int(100 * lv)}": round(float(1 - cal._miss_fractions(h_curves, lam[lv]).mean()), 4)
               for lv in lam},
            "std_error_spearman": round(float(np.mean(h_rho)), 4),
            "chi2_ratios": [round(c, 4) for c in h_chi2],
            "mean_psnr": round(float(np.mean([-20 * math.log10(r) for r in h_rmse])), 3),
            "predicted_psnr": round(float(np.mean([-20 * math.log10(r) for r in h_pred])), 3)}
        out["calibration_images"].update(
            {f"coverage_{int(100 * lv)}": round(float(1 - cal._miss_fractions(curves, lam[lv]).mean()), 4)
             for lv in lam})
        kinds = {"flat": [], "random": []}
        for u, curve in zip((u for u in units if u["role"] == "heldout"), h_curves):
            kinds["flat" if flattest and flat_window(family, u["index"]) else "random"].append(curve)
        if kinds["flat"]:  # the guarantee is marginal over the mix; how each kind fares under it
            for kind, kind_curves in kinds.items():
                out["prior_held_out_images"][f"coverage_90_{kind}_crops"] = round(
                    float(1 - cal._miss_fractions(np.asarray(kind_curves), lam[0.9]).mean()), 4)
        if grouped and all(groups[g]["heldout"] for g in cal.GROUPS):
            # per group, with each group's own multiplier, and what the pooled one gave there
            for g in cal.GROUPS:
                lam_g = cal.calibrated_lambda(groups[g]["cal"], 0.9)
                out["prior_held_out_images"][f"coverage_90_{g}"] = round(
                    float(1 - cal._miss_fractions(groups[g]["heldout"], lam_g).mean()), 4)
                out["prior_held_out_images"][f"coverage_90_{g}_pooled"] = round(
                    float(1 - cal._miss_fractions(groups[g]["heldout"], lam[0.9]).mean()), 4)
    return out


def image_stage(weights: torch.Tensor, signals: list, names: list[str], stage: list[str]):
    """(weights, record): the first stage's ``weights`` with those of the per-image signals ``stage`` (constant
    over an image, e.g. the kernel's ``log_wiener`` and ``motion``) moved by the least-squares fit of each fit
    image's :data:`IMAGE_STAGE_LEVEL` quantile of log(|error| / s_hat) on those signals (``record``: the signals,
    the adjustment, the number of images, R^2 and the F test's p-value, kept in the cell). The first stage
    fits where an image's errors sit; this one, where their tail ends, so that the pooled conformal multiplier
    covers about as much on every kernel of the mix. Fitted on the fit images only: the calibration images' scores
    stay exchangeable with a new image's, and the guarantee is untouched."""
    at = [names.index(n) for n in stage]
    rows, targets = [], []
    for u, feats, err, _ in signals:
        if u["role"] != "fit":
            continue
        score = (err / cal.scale_map(weights, feats)).flatten().numpy()
        targets.append(math.log(float(np.quantile(score, IMAGE_STAGE_LEVEL))))
        rows.append([float(feats[i].flatten()[0]) for i in at])
    a, b = torch.tensor(rows, dtype=torch.float64), torch.tensor(targets, dtype=torch.float64)
    adjustment = torch.linalg.lstsq(a, (b - b.mean())[:, None]).solution[:, 0]
    moved = weights.clone()
    moved[at] += adjustment.float()
    # how much of the spread of the fit images' quantiles the signals explain, and the F test's p-value of that
    # (with a bias among the signals; reported, not used: the leave-one-kernel-out check is in docs/calibration.md)
    from scipy.stats import f as f_dist

    total = float(((b - b.mean()) ** 2).sum())
    left = float(((b - b.mean() - a @ adjustment) ** 2).sum())
    n, k = len(targets), len(stage)
    r2 = 1 - left / total if total > 0 else 0.0
    p = (float(f_dist.sf((total - left) / (k - 1) / (left / (n - k)), k - 1, n - k))
         if n > k and left > 0 and k > 1 else None)
    return moved, {"features": list(stage), "level": IMAGE_STAGE_LEVEL,
                   "adjustment": [round(float(v), 6) for v in adjustment], "n_images": n, "r2": round(r2, 4),
                   "p_value": None if p is None else round(p, 4)}


def _rank_corr(a, b) -> float | None:
    from restore.metrics import spearman

    return round(spearman(torch.tensor(a), torch.tensor(b)), 4) if len(a) >= 3 else None


def kept_cells(old: dict, refitted: list[str], config: dict, options: dict, prior_digest: str | None,
               samples: int, levels: dict[str, list[float]] | None = None) -> list[dict]:
    """The cells of the ``old`` table that a partial refit of the ``refitted`` families keeps: those of other families
    fitted on the same features, prior weights and sample count, with solver settings that run their family the same
    way as ``config`` does (a per-family default changed for another family, e.g. PMRF's deblurring mean source,
    leaves them valid; a family such as 'inpaint-region' counts apart from its kind's other families). ``levels``
    (family -> noise levels on [0, 1], from ``--sigmas``) narrows a family's refit to those levels: its cells at
    other levels are kept under the same conditions, so a cell fitted later (e.g. on a lent GPU, whose cached runs
    stay there) joins the ones fitted before. Anything else is dropped, and a table with nothing kept is replaced as
    a whole."""
    if (old.get("features") != list(cal.FEATURES) or old.get("prior_digest") != prior_digest
            or old.get("n_samples") != samples or "solver_config" not in old):
        return []

    def replaced(cell: dict) -> bool:
        named = (levels or {}).get(cell["family"])
        return cell["family"] in refitted and (named is None or any(cal.at_level(cell, s) for s in named))

    return [c for c in old.get("cells", []) if not replaced(c) and c["family"] in GRID
            and not runs_otherwise(old, config, options, c["family"])]


def runs_otherwise(old: dict, config: dict, options: dict, family: str) -> list[str]:
    """The settings in which the solver under ``config`` runs ``family`` differently than table ``old`` was fitted
    with (``restore.stale.settings_changed``: an option added since counts only off its default)."""
    return settings_changed(old.get("solver", ""), config, old["solver_config"], options, family)


def dropped(old: dict, families: list[str], config: dict, options: dict, command: str) -> dict:
    """Table ``old`` without the cells of ``families``, its solver config now ``config``: for a default changed on
    those families before their cells are refitted (their runs then fall back to the raw spread, with a warning,
    rather than use cells fitted on other settings). Every cell kept must run its family the same way under
    ``config`` as under the old one, or nothing is written (SystemExit naming them)."""
    keep = [c for c in old.get("cells", []) if c["family"] not in families]
    moved = sorted({c["family"] for c in keep if runs_otherwise(old, config, options, c["family"])})
    if moved:
        raise SystemExit(f"the {', '.join(moved)} cells were fitted with other settings too: drop or refit them")
    gone = sorted({c["family"] for c in old.get("cells", []) if c["family"] in families})
    return {**old, "solver_config": config, "cells": keep,
            "dropped": {"families": gone, "command": command, "date": datetime.date.today().isoformat()}}


def supported_families(solver) -> list[str]:
    """The families of :data:`GRID` whose tasks ``solver`` runs (e.g. denoise-real only for noise-estimating ones;
    denoise-camera for every solver of Gaussian denoising at sigma=auto, ScoreDVI too since 2026-12-07: its
    denoise-real cell calibrates camera noise named as such, not camera noise given as Gaussian)."""
    from restore.tasks import parse

    return [f for f, (levels, spec) in GRID.items() if solver.supports(parse(spec(0, levels[0]))) is None]


def cached_cell(cache: Path, fam: str, sigma: float, units: list, restorer=None, samples: int = 8,
                today: dict | None = None) -> list[dict]:
    """The cached runs of one cell's ``units`` ((role, index, file, crop), the fit's plan), each for its planned file
    and task, and, given the ``restorer``, run by today's solver settings and prior weights (learnt from one fresh run
    of the first unit, not kept; ``today`` as in :func:`run_cell`): a missing or mismatched run is an error (run
    without --fit-only), since a cache can hold runs of a setting tried and not kept."""
    folder = cache / f"{fam}-{sigma:.5f}"
    out, now = [], {} if today is None else today
    for role, i, name, x in units:
        path = folder / f"{role}-{i:03d}.pt"
        unit = torch.load(path, weights_only=True) if path.exists() else None
        spec = planned_spec(fam, sigma, i)
        if unit is None or not same_crop(unit, name, x) or unit.get("spec") != spec:
            found = ("missing" if unit is None else f"cached for {unit.get('file', name)} ({unit.get('spec')})"
                     + ("" if unit.get("file", name) != name or unit.get("spec") != spec else ", another crop"))
            raise SystemExit(f"{path}: {found}, planned for {name} ({spec}); run without --fit-only")
        if restorer is not None:
            if not now:
                remember_today(now, run_unit(restorer, fam, sigma, samples, i, name, x, role))
            if not ran_as_today(unit, now["solvers"], now["priors"], fam):
                raise SystemExit(f"{path}: cached with other solver settings or prior weights than today's; run "
                                 "without --fit-only")
            if lacks_bootstrap(restorer, unit, fam):
                raise SystemExit(f"{path}: cached without the bootstrap estimate its cell now uses; run without "
                                 "--fit-only")
        out.append(unit)
    return out


@dataclasses.dataclass
class FolderPlan:
    """One image folder's share of a fit: its (role, index, file, crop) units, the extra fit files and crops
    (deblurring), where its runs are cached, and whether the priors trained on it."""
    name: str
    trained: bool
    units: list
    extra_files: list
    extra_crops: list
    cache: Path
    folder: str = ""

    def family_units(self, fam: str, size: int, flattest: bool) -> list:
        """The units as family ``fam`` runs them: with ``flattest``, those :func:`flat_window` names get their
        file's flattest ``size`` window (``restore.train.common.flattest_crops``) in place of the random crop."""
        flat = [k for k, u in enumerate(self.units) if flattest and flat_window(fam, u[1])]
        if not flat:
            return self.units
        from restore.train.common import flattest_crops, load_uint8_images

        windows = flattest_crops(load_uint8_images([Path(self.folder) / self.units[k][2] for k in flat]), size)
        units = list(self.units)
        for k, window in zip(flat, windows):
            units[k] = (*units[k][:3], window[None])
        return units


def plan_folder(folder: str, args, need: int, cache: Path) -> FolderPlan:
    """``args.fit`` fit, ``args.cal`` calibration and ``args.heldout`` check crops of one folder's images. In the
    priors' training folder the last 8 files are the ones they held out; in another folder (photos no prior saw,
    e.g. CQ100) its last 8 files play that part, and the check crops then measure no train/held-out gap."""
    from restore.train.common import list_images

    files = list_images(folder)
    trained_on, held_out = files[:-PRIOR_HELD_OUT], files[-PRIOR_HELD_OUT:]
    picked, extra_files = plan_files(trained_on, args.fit + args.cal, need, args.seed)
    held = held_out[:args.heldout]
    images = crops(picked + held, args.crop, args.seed)
    units = ([("fit", i, picked[i].name, images[i]) for i in range(args.fit)]
             + [("cal", i, picked[i].name, images[i]) for i in range(args.fit, args.fit + args.cal)]
             + [("heldout", i, f.name, images[args.fit + args.cal + j]) for j, (i, f) in
                enumerate(zip(range(1000, 1000 + len(held)), held))])
    return FolderPlan(Path(folder).name, bool(priors_trained_on(folder)), units, extra_files,
                      crops(extra_files, args.crop, args.seed + 1), cache, str(folder))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--solver", required=True)
    ap.add_argument("--prior", default=None, help="default: the solver's default prior")
    ap.add_argument("--families", default="all", help=f"comma-separated, of {', '.join(GRID)}; or 'all' (those "
                    "the solver supports)")
    ap.add_argument("--data", default="../shared/data/BSD432-train", help="image folder, or comma-separated "
                    "folders (each gives --fit, --cal and --heldout crops; the cells calibrate on all of them)")
    ap.add_argument("--fit", type=int, default=8)
    # conformal risk control certifies n/(n+1) R_n + 1/(n+1) <= alpha, so with n images it aims above the level:
    # at 90 % the calibration images' mean coverage is 0.932 with 28 images, 0.915 with 60 (docs/calibration.md)
    ap.add_argument("--cal", type=int, default=60)
    ap.add_argument("--heldout", type=int, default=4, help="crops of the priors' held-out files (for the gap)")
    ap.add_argument("--crop", type=int, default=96)
    ap.add_argument("--samples", type=int, default=SAMPLES)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu", help="where the solver runs (cuda: a lent GPU, e.g. for the slow "
                    "paper presets, scripts/calibrate_on_device.sh); the runs are cached and fitted on the CPU")
    ap.add_argument("--runs", default="runs/calibration")
    ap.add_argument("--sigmas", default=None, help="comma-separated noise levels on [0, 1] replacing the grid's "
                    "(a quick or extra fit); only those levels' cells are replaced, the family's others kept")
    ap.add_argument("--out", default=None, help="table path (default models/calibration/SOLVER.PRIOR.json, with "
                    "--options SOLVER.PRIOR+k=v.json: registry.calibration_table)")
    ap.add_argument("--quant", default=None, help="quantisation scheme (default: the solver's own, e.g. RED-Diff's "
                    "int8; 'none' = float): the table is fitted for, and applies to, runs with that scheme")
    ap.add_argument("--drop", action="store_true", help="remove the --families' cells instead of fitting them (their "
                    "defaults changed and no refit ran yet: runs there get the raw spread, with a warning)")
    ap.add_argument("--flattest-windows", action="store_true", help="half the real-noise family's crops are their "
                    "file's least textured window (flat_window; tried 2026-12-06, not the shipped table's plan)")
    ap.add_argument("--fit-only", action="store_true", help="write the table from the cached runs, run nothing")
    ap.add_argument("--options", nargs="*", default=[], help="name=value solver options (the table then applies "
                    "only to runs with them; default: the solver's defaults)")
    args = ap.parse_args(argv)
    from restore.train.tune import parse_grid

    options = {k: v[0] for k, v in parse_grid(args.options).items()}
    torch.set_num_threads(args.threads)
    from restore.api import Restorer
    from restore.priors import registry
    from restore.train.common import training_command

    from restore.solvers import base

    # one table is one prior's, for every family (VBLE would otherwise pick its CAE rate per family)
    restorer = Restorer(args.solver, args.prior or base.solver_class(args.solver).default_prior, args.device,
                        calibrate=False, quant=args.quant, **options)
    prior = restorer.prior().name  # NAME@SCHEME when the solver runs it quantised (RED-Diff: int8)
    families = supported_families(restorer.solver) if args.families == "all" else args.families.split(",")
    unknown = set(families) - set(GRID)
    if unknown:
        raise SystemExit(f"unknown families {', '.join(sorted(unknown))}; known: {', '.join(GRID)}")
    out = Path(args.out) if args.out else registry.calibration_table_path(args.solver, prior,
                                                                       restorer.solver.options)
    if args.drop:
        config = canonical(dataclasses.asdict(restorer.solver.config))
        write_json_atomic(dropped(json.loads(out.read_text()), families, config,
                                  canonical(restorer.solver.options), training_command("restore.train.calibration",
                                                                                       argv)), out)
        return print(f"wrote {out} without its {', '.join(families)} cells")
    need = max((EXTRA_FIT.get(f, 0) for f in families), default=0)
    base_cache = Path(args.runs) / f"{args.solver}.{prior}"
    # the first folder's runs cache where a one-folder fit always did; a further folder's in a subfolder of its name
    plans = [plan_folder(folder, args, need, base_cache if k == 0 else base_cache / Path(folder).name)
             for k, folder in enumerate(args.data.split(","))]
    cells, seconds = [], []
    for fam in families:
        for sigma in ([float(v) for v in args.sigmas.split(",")] if args.sigmas else GRID[fam][0]):
            done, extra_fit, flat, today = [], [], [], {}  # today: one probe of the current settings for all folders
            for plan in plans:
                more = [("fit", 2000 + j, f.name, x) for j, (f, x) in
                        enumerate(zip(plan.extra_files[:EXTRA_FIT.get(fam, 0)], plan.extra_crops))]
                units = plan.family_units(fam, args.crop, args.flattest_windows) + more
                done += (cached_cell(plan.cache, fam, sigma, units, restorer, args.samples, today)
                         if args.fit_only else run_cell(restorer, fam, sigma, units, args.samples, plan.cache, today))
                extra_fit += [u[2] for u in more]
                flat += [f"{u[0]}-{u[1]:03d} {u[2]}" for u in units if args.flattest_windows and flat_window(fam, u[1])]
            seconds += [u["seconds"] for u in done]
            names = feature_names(restorer.solver.name, fam)
            extra = {"features": names} if names != list(cal.FEATURES) else {}
            if extra_fit:
                extra["extra_fit_images"] = extra_fit
            if flat:
                extra["flattest_windows"] = flat
            fitted = fit_cell(done, sigma, args.seed, names, fam, args.flattest_windows)
            cells.append({"family": fam, **extra, **fitted,
                          # the table's command and images are the last run's; a cell keeps its own
                          "images": [{"source": p.name, "priors_trained_on_it": p.trained} for p in plans],
                          "fitted": datetime.date.today().isoformat(),
                          "command": training_command("restore.train.calibration", argv)})
            print(f"fitted {fam} sigma {sigma:.4f}: {cells[-1]['calibration_images']} "
                  f"{cells[-1].get('prior_held_out_images', {})}", flush=True)
    config = canonical(dataclasses.asdict(restorer.solver.config))
    old = json.loads(out.read_text()) if out.exists() else {}
    levels = {f: [float(v) for v in args.sigmas.split(",")] for f in families} if args.sigmas else None
    keep = kept_cells(old, families, config, canonical(restorer.solver.options), registry.digest(prior),
                      args.samples, levels)
    images = [{"source": p.name, "crop": args.crop,
               "fit_and_cal": ("random crops of files the priors trained on (not their 8 held-out files)"
                               if p.trained else "random crops of photos no prior trained on"),
               "fit": [u[2] for u in p.units if u[0] == "fit"], "cal": [u[2] for u in p.units if u[0] == "cal"],
               "prior_held_out": [u[2] for u in p.units if u[0] == "heldout"]} for p in plans]
    write_json_atomic({
        "solver": args.solver, "prior": prior, "prior_digest": registry.digest(prior),
        "solver_config": config, "n_samples": args.samples,
        "features": list(cal.FEATURES), "score_probs": "restore.calibration.SCORE_PROBS",
        "fitted": datetime.date.today().isoformat(), "command": training_command("restore.train.calibration", argv),
        "images": images[0] if len(images) == 1 else images,
        "family_examples": {f: [GRID[f][1](i, GRID[f][0][0]) for i in range(len(DEBLUR_KERNELS))] for f in GRID},
        "camera_noise_mix": [list(m) for m in CAMERA_MIX],  # the real-noise family's crop i: CAMERA_MIX[i % 6]
        "mean_seconds_per_run": round(float(np.mean(seconds)), 2) if seconds else old.get("mean_seconds_per_run"),
        "cells": keep + cells}, out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
