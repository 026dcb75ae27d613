"""Calibrated uncertainty (restore.calibration): risk bounds, a fitted table end to end, fallbacks and self-check."""

import json
import math
import re
import warnings
from types import SimpleNamespace

import imageio.v3 as iio
import numpy as np
import pytest
import skimage.data
import torch

from restore import calibration as cal
from restore import metrics


def _curves(n, pixels=4000, scale=1.0, seed=0):
    """Score quantile curves of n images whose normalised scores are |N(0, scale^2)|."""
    rng = np.random.default_rng(seed)
    return np.stack([np.quantile(np.abs(rng.normal(0, scale, pixels)), cal.SCORE_PROBS) for _ in range(n)])


def test_hb_bound_matches_the_known_minimum_sample_size():
    # notes/calibration.md: at empirical risk 0 the HB bound is 0.0994 for n = 22 and 0.104 for n = 21
    assert cal.hb_ucb(0.0, 22, 0.1) == pytest.approx(0.0994, abs=2e-3)
    assert cal.hb_ucb(0.0, 21, 0.1) == pytest.approx(0.104, abs=2e-3)
    assert cal.hb_ucb(0.05, 200, 0.1) > 0.05


def test_crc_lambda_covers_new_images_and_rcps_is_wider():
    curves = _curves(40)
    lam = cal.calibrated_lambda(curves, 0.9)
    # for |N(0,1)| scores the oracle is 1.645; CRC's finite-sample term asks for a little more
    assert 1.645 < lam < 2.2
    fresh = _curves(200, seed=1)
    miss = cal._miss_fractions(fresh, lam).mean()
    assert 0.04 < miss <= 0.1
    assert cal.calibrated_lambda(curves, 0.9, "rcps") > lam
    assert cal.calibrated_lambda(curves, 0.5) < lam
    # 5 images cannot certify a 90 % interval (1/(n+1) > 0.1): the whole range
    assert math.isinf(cal.calibrated_lambda(curves[:5], 0.9))
    with pytest.raises(ValueError, match="unknown guarantee"):
        cal.calibrated_lambda(curves, 0.9, "bogus")


def test_self_check_flags_a_mean_that_does_not_explain_y(clean_rgb, gen):
    from restore.tasks import parse

    task = parse("deblur:gaussian:sigma=2,noise=0.02")
    y, physics = task.simulate(clean_rgb, gen)
    good = cal.self_check(clean_rgb, y, physics, 0.02, (0.8, 1.2))
    assert good["verdict"] == "consistent" and good["chi2_ratio"] == pytest.approx(1.0, abs=0.15)
    bad = cal.self_check(torch.full_like(clean_rgb, 0.5), y, physics, 0.02, (0.8, 1.2))
    assert bad["verdict"] == "poor fit" and bad["chi2_ratio"] > 10
    y_noisy, denoising = parse("denoise:gaussian:sigma=0.02").simulate(clean_rgb, gen)
    # returning the noisy observation itself explains every bit of the noise
    assert cal.self_check(y_noisy, y_noisy, denoising, 0.02, (0.8, 1.2))["verdict"] == "fits the noise"


def _crop_folder(folder, n=24, size=64):
    """n colour PNG crops of scikit-image's photos (a stand-in training set; the last 8 play the priors' held-out)."""
    folder.mkdir()
    photos = [skimage.data.astronaut(), skimage.data.chelsea(), skimage.data.coffee(), skimage.data.rocket()]
    rng = np.random.default_rng(0)
    for i in range(n):
        img = photos[i % 4]
        t, l = rng.integers(0, img.shape[0] - size), rng.integers(0, img.shape[1] - size)
        iio.imwrite(folder / f"{i:02d}.png", img[t:t + size, l:l + size])
    return folder


@pytest.fixture(scope="module")
def fitted_models(tmp_path_factory):
    """A models folder holding the shipped priors and a PMRF denoising table fitted here at two noise levels."""
    from restore.priors import registry
    from restore.train import calibration as train

    root = tmp_path_factory.mktemp("cal")
    models = root / "models"
    (models / "calibration").mkdir(parents=True)
    for f in registry.models_dir().glob("*.*"):
        (models / f.name).symlink_to(f)
    data = _crop_folder(root / "data")
    train.main(["--solver", "pmrf", "--families", "denoise", "--sigmas", "0.05,0.1", "--data", str(data),
                "--fit", "3", "--cal", "12", "--heldout", "1", "--crop", "48", "--samples", "4",
                "--runs", str(root / "runs"), "--out", str(models / "calibration" / "pmrf.flow-natural.json")])
    return models


def test_fitted_table_has_provenance(fitted_models):
    table = json.loads((fitted_models / "calibration" / "pmrf.flow-natural.json").read_text())
    assert [c["sigma"] for c in table["cells"]] == [0.05, 0.1]
    assert table["solver_config"]["flow_steps"] is None and table["n_samples"] == 4
    assert len(table["images"]["cal"]) == 12 and not set(table["images"]["cal"]) & set(table["images"]["fit"])
    cell = table["cells"][0]
    # PMRF's cells add the bootstrap signals to the shared ones
    assert cell["features"] == [*cal.FEATURES, *cal.BOOT_FEATURES] and len(cell["weights"]) == len(cell["features"])
    assert len(cell["scores"]) == 12
    assert cell["chi2_range"][0] <= cell["chi2_range"][1]
    assert "coverage_90" in cell["prior_held_out_images"]


def test_priors_trained_on_reads_the_cards():
    from restore.train.calibration import priors_trained_on

    assert {"score-natural", "flow-natural", "cae-natural-q2"} <= set(priors_trained_on("../x/BSD432-train"))
    assert priors_trained_on("train_data/CQ100") == [] and priors_trained_on("x/train") == []


def test_a_fit_on_two_folders_pools_their_calibration_crops(fitted_models, tmp_path, monkeypatch):
    """A second folder adds its own fit, calibration and check crops; the first folder's cached runs are reused,
    and a refit from the cache probes today's settings with one fresh run for both folders."""
    from restore.train import calibration as train

    root = fitted_models.parent
    other = _crop_folder(tmp_path / "photos")
    out = tmp_path / "pmrf.json"
    argv = ["--solver", "pmrf", "--families", "denoise", "--sigmas", "0.05", "--data", f"{root / 'data'},{other}",
            "--fit", "3", "--cal", "12", "--heldout", "1", "--crop", "48", "--samples", "4",
            "--runs", str(root / "runs"), "--out", str(out)]
    train.main(argv)
    table = json.loads(out.read_text())
    assert [i["source"] for i in table["images"]] == ["data", "photos"]
    assert all(len(i["cal"]) == 12 for i in table["images"])
    cell = table["cells"][0]
    assert len(cell["scores"]) == 24 and cell["prior_held_out_images"]["n"] == 2
    assert cell["images"] == [{"source": "data", "priors_trained_on_it": False},
                              {"source": "photos", "priors_trained_on_it": False}]
    assert (root / "runs" / "pmrf.flow-natural" / "photos" / "denoise-0.05000").is_dir()
    probes = []
    run_unit = train.run_unit
    monkeypatch.setattr(train, "run_unit", lambda *a, **k: probes.append(a[6]) or run_unit(*a, **k))
    train.main(argv + ["--fit-only"])  # both folders' runs are cached now
    assert len(probes) == 1
    assert json.loads(out.read_text())["cells"][0]["scores"] == cell["scores"]


def test_calibrated_intervals_cover_better_than_the_raw_spread(fitted_models, clean_rgb, monkeypatch, tmp_path):
    monkeypatch.setenv("RESTORE_MODELS", str(fitted_models))
    from restore.api import Restorer

    r = Restorer("pmrf")
    raw, calibrated, widths = [], [], []
    for seed, (t, l) in enumerate([(0, 0), (200, 100), (300, 300)]):
        truth = torch.from_numpy(skimage.data.astronaut()[t:t + 48, l:l + 48] / 255.0).float().permute(2, 0, 1)[None]
        y = r.simulate(truth, "denoise:gaussian:sigma=0.1", seed=seed)
        post = r(y, "denoise:gaussian:sigma=0.1", samples=4, seed=seed, ground_truth=truth)
        m = post.meta["metrics"]
        assert post.calibrated and post.meta["uncertainty"]["status"] == "calibrated"
        assert "conformal risk control" in post.meta["uncertainty"]["guarantee"]
        raw.append(m["coverage_90_raw"])
        calibrated.append(m["coverage_90"])
        widths.append(m["interval_width_90"])
        assert m["predicted_psnr"] > 15
    # PMRF's spread is near-Dirac: its raw interval misses; the calibrated one reaches the nominal level
    assert np.mean(calibrated) >= 0.85 > np.mean(raw)
    assert max(widths) < 1.0  # not the trivial [0, 1]
    lo, hi = post.interval(0.9, guarantee="rcps")
    assert float((hi - lo).mean()) >= widths[-1] - 1e-6
    boot = post.meta["uncertainty"]["bootstrap"]  # the table's bootstrap signals made one more run, timed
    assert boot["change_rmse"] > 0 and post.meta["timings"]["calibration_bootstrap_s"] == boot["seconds"]
    seen = []
    again = r(y, "denoise:gaussian:sigma=0.1", samples=4, seed=seed, progress=lambda f, m: seen.append((f, m)))
    assert torch.equal(again.std, post.std)  # the bootstrap's noise comes from the run's seed: same seed, same std
    # one progress bar over the run and its rerun: forward only, to 1, the rerun named
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0)
    assert any(m.startswith("calibration (bootstrap run)") for _, m in seen)
    assert not any(m.startswith("calibration") for f, m in seen if f < 0.5 * fractions[-1])
    out = post.save(tmp_path / "res")
    assert (out / "spread.npy").exists() and (out / "std.npy").exists() and (out / "data_fit.png").exists()
    # the denoised mean explains the noisy observation about to the noise level, everywhere
    assert 0.5 < float(post.calibration.data_fit.mean()) < 1.5
    assert not np.allclose(np.load(out / "spread.npy"), np.load(out / "std.npy"))


@pytest.mark.parametrize("spec, options, status, reason", [
    ("denoise:gaussian:sigma=0.07", {}, "approximate", "interpolated"),
    ("denoise:gaussian:sigma=0.3", {}, "uncalibrated", "outside the calibrated grid"),
    ("denoise:gaussian:sigma=0.1", {"flow_steps": 3}, "uncalibrated", "settings differ .*flow_steps"),
    ("sr:bicubic:factor=2,noise=0.01", {}, "uncalibrated", "no cell for sr2"),
])
def test_runs_the_table_does_not_cover_say_so(fitted_models, clean_rgb, monkeypatch, spec, options, status, reason):
    monkeypatch.setenv("RESTORE_MODELS", str(fitted_models))
    from restore.api import Restorer

    r = Restorer("pmrf", **options)
    y = r.simulate(clean_rgb, spec)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        post = r(y, spec, samples=4)
    u = post.meta["uncertainty"]
    assert u["status"] == status
    if status == "uncalibrated":
        assert re.search(reason, u["reason"]) and not post.calibrated
        assert any(issubclass(w.category, cal.UncalibratedWarning) for w in caught)
        assert torch.equal(post.std, post.spread)
        # the data fit is still reported, without a calibrated range to judge it by
        assert u["self_check"]["verdict"] == "no reference range" and u["self_check"]["chi2_ratio"] > 0
    else:
        assert re.search(reason, u["cell"])
        assert post.calibrated and "approximately" in u["guarantee"]


def test_a_table_fitted_with_options_serves_runs_with_those_options(fitted_models, clean_rgb, monkeypatch, tmp_path):
    """A preset or other explicit options get their own table (SOLVER.PRIOR+k=v.json, where the fit writes it by
    default); runs without them keep the defaults' table, and options no table was fitted with fall back."""
    from restore.priors import registry
    from restore.train import calibration as train

    models = tmp_path / "models"
    (models / "calibration").mkdir(parents=True)
    for f in fitted_models.glob("*.*"):
        (models / f.name).symlink_to(f.resolve())
    (models / "calibration" / "pmrf.flow-natural.json").symlink_to(
        (fitted_models / "calibration" / "pmrf.flow-natural.json").resolve())
    monkeypatch.setenv("RESTORE_MODELS", str(models))
    train.main(["--solver", "pmrf", "--options", "flow_steps=3", "--families", "denoise", "--sigmas", "0.1",
                "--data", str(_crop_folder(tmp_path / "data")), "--fit", "3", "--cal", "12", "--heldout", "1",
                "--crop", "48", "--samples", "4", "--runs", str(tmp_path / "runs")])
    fitted = models / "calibration" / "pmrf.flow-natural+flow_steps=3.json"
    assert json.loads(fitted.read_text())["solver_config"]["flow_steps"] == 3
    assert registry.split_table_name(fitted.stem) == ("pmrf", "flow-natural", {"flow_steps": "3"})
    from restore.api import Restorer

    spec = "denoise:gaussian:sigma=0.1"
    for options, table in (({"flow_steps": 3}, fitted.name), ({}, "pmrf.flow-natural.json")):
        r = Restorer("pmrf", **options)
        post = r(r.simulate(clean_rgb, spec), spec, samples=4)
        assert post.calibrated and post.meta["uncertainty"]["table"].endswith(table), post.meta["uncertainty"]
    r = Restorer("pmrf", flow_steps=5)
    with pytest.warns(cal.UncalibratedWarning, match="settings differ .*flow_steps"):
        post = r(r.simulate(clean_rgb, spec), spec, samples=4)
    assert not post.calibrated


def _with_edited_table(fitted_models, folder, edit):
    """A models folder like ``fitted_models`` whose PMRF table went through ``edit(table)``."""
    table = json.loads((fitted_models / "calibration" / "pmrf.flow-natural.json").read_text())
    edit(table)
    (folder / "calibration").mkdir(parents=True)
    for f in fitted_models.glob("*.*"):
        (folder / f.name).symlink_to(f.resolve())
    (folder / "calibration" / "pmrf.flow-natural.json").write_text(json.dumps(table))
    return folder


def test_retrained_prior_makes_the_table_stale(fitted_models, clean_rgb, monkeypatch, tmp_path):
    models = _with_edited_table(fitted_models, tmp_path / "models", lambda t: t.update(prior_digest="0" * 16))
    monkeypatch.setenv("RESTORE_MODELS", str(models))
    from restore.api import Restorer

    r = Restorer("pmrf")
    with pytest.warns(cal.UncalibratedWarning, match="changed since"):
        post = r(r.simulate(clean_rgb, "denoise:gaussian:sigma=0.1"), "denoise:gaussian:sigma=0.1", samples=2)
    assert not post.calibrated


def test_metrics_report_raw_and_calibrated_side_by_side(clean_rgb):
    from restore.posterior import Posterior

    s = clean_rgb + 0.01 * torch.randn(4, *clean_rgb.shape[1:], generator=torch.Generator().manual_seed(0))
    post = Posterior(mean=s.mean(0, keepdim=True), samples=s)
    m = metrics.report(post, clean_rgb)
    assert m["calibrated"] is False and "coverage_90_raw" not in m
    assert m["interval_width_90"] == pytest.approx(metrics.interval_width(post, 0.9, method="raw"))


def test_image_harder_than_every_calibration_image_is_flagged(fitted_models, clean_rgb, monkeypatch, tmp_path):
    from restore.batch import describe_uncertainty

    def easy_calibration_images(table):  # every calibration image "easier" than anything real
        for cell in table["cells"]:
            cell["predicted_psnr_range"] = [99.0, 100.0]

    models = _with_edited_table(fitted_models, tmp_path / "models", easy_calibration_images)
    monkeypatch.setenv("RESTORE_MODELS", str(models))
    from restore.api import Restorer

    r = Restorer("pmrf")
    post = r(r.simulate(clean_rgb, "denoise:gaussian:sigma=0.1"), "denoise:gaussian:sigma=0.1", samples=4)
    assert post.calibrated and "below every calibration image" in post.meta["uncertainty"]["warning"]
    assert "WARNING" in describe_uncertainty(post.meta)


def test_a_cell_fitted_with_other_solver_settings_is_not_used(fitted_models, clean_rgb, monkeypatch, tmp_path):
    """Each cell records every solver behind its runs; a run whose solvers ran otherwise (e.g. PMRF's posterior-mean
    solver after a change of its defaults, which PMRF's own config does not show) falls back to the raw spread."""
    table = json.loads((fitted_models / "calibration" / "pmrf.flow-natural.json").read_text())
    assert all(c["solvers"][0][0] == "pmrf" for c in table["cells"])  # recorded at fit time

    def other_mean_solver(t):
        for cell in t["cells"]:
            cell["solvers"] = [*cell["solvers"], ["reddiff", {"steps": 7}]]

    models = _with_edited_table(fitted_models, tmp_path / "models", other_mean_solver)
    monkeypatch.setenv("RESTORE_MODELS", str(models))
    from restore.api import Restorer

    r = Restorer("pmrf")
    with pytest.warns(cal.UncalibratedWarning, match=r"solvers behind this run \(reddiff\) ran with other settings"):
        post = r(r.simulate(clean_rgb, "denoise:gaussian:sigma=0.1"), "denoise:gaussian:sigma=0.1", samples=4)
    assert not post.calibrated


def test_real_noise_table_from_synthetic_camera_noise(tmp_path, clean_rgb, monkeypatch):
    """ScoreDVI's real-noise family: one cell pooled over synthetic camera-like noise, applied with the solver's own
    noise estimate; its guarantee is stated as approximate (real sensors differ from the stand-in)."""
    from restore.priors import registry
    from restore.train import calibration as train
    from restore.train import camera_noise

    from restore.solvers import base

    # "all" families means those the solver runs: real noise only for the solver that estimates it (and camera noise
    # given as Gaussian at sigma=auto, like every Gaussian denoiser)
    assert train.supported_families(base.get("scoredvi")) == ["denoise", "denoise-real", "denoise-camera"]
    assert "denoise-real" not in train.supported_families(base.get("aps"))
    models = tmp_path / "models"
    (models / "calibration").mkdir(parents=True)
    for f in registry.models_dir().glob("*.*"):
        (models / f.name).symlink_to(f)
    data = _crop_folder(tmp_path / "data", n=22, size=32)
    table_path = models / "calibration" / "scoredvi.score-natural.json"
    train.main(["--solver", "scoredvi", "--families", "denoise-real", "--data", str(data), "--fit", "3",
                "--cal", "10", "--heldout", "1", "--crop", "32", "--samples", "2", "--quant", "none",
                "--runs", str(tmp_path / "runs"), "--out", str(table_path), "--options", "iterations=4"])
    table = json.loads(table_path.read_text())
    (cell,) = table["cells"]
    assert cell["family"] == "denoise-real" and len(cell["scores"]) == 10 and table["solver_config"]["iterations"] == 4
    assert table["camera_noise_mix"][0] == ["light", 0.5]
    monkeypatch.setenv("RESTORE_MODELS", str(models))
    from restore.api import Restorer

    r = Restorer("scoredvi", quant="none", iterations=4)
    y = camera_noise.simulate(clean_rgb, "heavy", torch.Generator().manual_seed(5))
    post = r(y, "denoise:real", samples=2, seed=0, ground_truth=clean_rgb)
    u = post.meta["uncertainty"]
    assert post.calibrated and u["status"] == "approximate" and "synthetic camera-like noise" in u["guarantee"]
    assert u["self_check"]["chi2_ratio"] > 0 and not torch.equal(post.std, post.spread)
    assert 0 < post.meta["metrics"]["coverage_90"] <= 1
    # other settings than the table's: the raw spread, said out loud
    with pytest.warns(cal.UncalibratedWarning, match="settings differ"):
        assert not Restorer("scoredvi", quant="none", iterations=5)(y, "denoise:real", samples=2).calibrated


def test_cached_runs_are_rerun_when_the_prior_weights_change(tmp_path, monkeypatch):
    """The calibration fit's run cache keys on the solvers' settings and the priors' digests: retrained weights
    (same solver settings) rerun every unit instead of fitting on the old prior's outputs."""
    from restore.train import calibration as cal

    digest = {"value": "aaaa"}
    calls = []

    def fake_run_unit(restorer, fam, sigma, samples, i, name, x, role):
        calls.append((role, i))
        return {"role": role, "index": i, "seconds": 0.0, "x": x, "mean": x + 0.01, "file": name,
                "spec": cal.planned_spec(fam, sigma, i),
                "solvers": [{"name": "vble", "config": {"lr": 0.1}}], "priors": {"cae-natural-q2": digest["value"]}}

    monkeypatch.setattr(cal, "run_unit", fake_run_unit)
    units = [("cal", i, f"f{i}", torch.full((1, 3, 4, 4), 0.5)) for i in range(3)]
    cal.run_cell(None, "denoise", 0.1, units, 2, tmp_path)
    assert len(calls) == 3
    calls.clear()
    cal.run_cell(None, "denoise", 0.1, units, 2, tmp_path)  # same weights: one probe run, the rest from the cache
    assert len(calls) == 1
    calls.clear()
    digest["value"] = "bbbb"
    out = cal.run_cell(None, "denoise", 0.1, units, 2, tmp_path)
    assert len(calls) == 1 + 3 and all(u["priors"] == {"cae-natural-q2": "bbbb"} for u in out)
    # a run cached for another task (the family's mix changed what crop i gets) is rerun too
    calls.clear()
    stale = torch.load(tmp_path / "denoise-0.10000" / "cal-001.pt", weights_only=True)
    torch.save({**stale, "spec": "denoise:gaussian:sigma=0.2"}, tmp_path / "denoise-0.10000" / "cal-001.pt")
    cal.run_cell(None, "denoise", 0.1, units, 2, tmp_path)
    assert calls == [("cal", 0), ("cal", 1)]


def test_table_mismatch_names_what_changed():
    """The shipped PMRF table applies at PMRF's defaults; a changed setting or retrained weights are named (this is
    also what `restore list` shows beside a solver whose table went stale)."""
    import dataclasses

    from restore import calibration
    from restore.priors import registry
    from restore.solvers import base

    table = registry.calibration_table("pmrf", "flow-natural")
    defaults = dataclasses.asdict(base.get("pmrf").config)
    assert calibration.table_mismatch(table, "flow-natural", defaults) is None
    assert "(flow_steps)" in calibration.table_mismatch(table, "flow-natural", {**defaults, "flow_steps": 7})
    assert "prior flow-natural changed" in calibration.table_mismatch({**table, "prior_digest": "0" * 16},
                                                                       "flow-natural", defaults)
    odd = calibration.table_mismatch({**table, "features": ["bias", "log_sharpness_3"]}, "flow-natural", defaults)
    assert "does not compute (log_sharpness_3)" in odd and table["file"] in odd
    # a feature only some cells list is checked too, and named once however many cells list it
    cells = [{**c, "features": [*table["features"], "log_sharpness_3"]} for c in table["cells"][:2]]
    odd = calibration.table_mismatch({**table, "cells": cells}, "flow-natural", defaults)
    assert odd.count("log_sharpness_3") == 1 and "does not compute (log_sharpness_3)" in odd
    cut = {**table, "cells": [{**table["cells"][0], "weights": table["cells"][0]["weights"][:-1]}]}
    assert "is damaged" in calibration.table_mismatch(cut, "flow-natural", defaults)


def test_a_per_family_default_changed_for_one_kind_leaves_the_other_kinds_calibrated():
    """RED-Diff's per-family settings: a table fitted when SR ran otherwise still applies to deblurring (what that
    kind runs is unchanged) but not to SR, and an explicit option is compared as given, not as the family's."""
    import dataclasses

    from restore import calibration
    from restore.priors import registry
    from restore.solvers import base

    table = registry.calibration_table("reddiff", "score-natural@int8")
    now = dataclasses.asdict(base.get("reddiff").config)
    assert calibration.table_mismatch(table, table["prior"], now, "sr") is None
    fitted = table["solver_config"]
    old_sr = {**table, "solver_config": {**fitted, "per_family": {"sr": {**fitted["per_family"]["sr"],
                                                                           "lambda_": 0.1}}}}
    assert calibration.table_mismatch(old_sr, table["prior"], now, "deblur") is None
    assert "(lambda_)" in calibration.table_mismatch(old_sr, table["prior"], now, "sr")
    assert "(per_family)" in calibration.table_mismatch(old_sr, table["prior"], now)  # no kind: the whole config
    # an explicit lambda_ on SR is what ran: compared against the table's SR setting, it differs
    given = dataclasses.asdict(base.get("reddiff", lambda_=0.2).config)
    assert "(lambda_)" in calibration.table_mismatch(table, table["prior"], given, "sr", {"lambda_": 0.2})
    assert calibration.table_mismatch(table, table["prior"], now, "sr", {}) is None


def test_a_partial_refit_keeps_the_cells_whose_family_runs_unchanged():
    """PMRF's deblurring and SR mean sources changed (per_family): refitting those cells keeps the other families'
    cells, since those run as before; a changed setting every family sees, other weights or another sample count
    drop them all. An entry for region inpainting alone (RED-Diff's longer schedule, tried and not kept) leaves the
    random-inpainting cells valid."""
    import dataclasses

    from restore.provenance import canonical
    from restore.solvers import base
    from restore.train.calibration import kept_cells

    now = canonical(dataclasses.asdict(base.get("pmrf").config))
    before = {k: v for k, v in now.items() if k != "per_family"}  # deblurring's mean came from RED-Diff then
    cells = [{"family": f} for f in ("denoise", "deblur", "sr4", "inpaint-random")]
    old = {"features": list(cal.FEATURES), "prior_digest": "d1", "n_samples": 8, "solver_config": before,
           "cells": cells}
    assert [c["family"] for c in kept_cells(old, ["deblur", "sr4"], now, {}, "d1", 8)] == ["denoise",
                                                                                           "inpaint-random"]
    # a family not refitted whose kind now runs otherwise goes too (SR's mean is HQS as well since 2026-12-05)
    assert [c["family"] for c in kept_cells(old, ["deblur"], now, {}, "d1", 8)] == ["denoise", "inpaint-random"]
    assert [c["family"] for c in kept_cells(old, ["sr4"], now, {}, "d1", 8)] == ["denoise", "inpaint-random"]
    assert kept_cells(old, ["deblur"], {**now, "sigma_s": 0.05}, {}, "d1", 8) == []
    assert kept_cells(old, ["deblur"], now, {}, "d2", 8) == []
    assert kept_cells(old, ["deblur"], now, {}, "d1", 4) == []
    red_before = canonical(dataclasses.asdict(base.get("reddiff").config))
    red = {**red_before, "per_family": {**red_before["per_family"], "inpaint-region": {"sigma_max": 0.5}}}
    cells = [{"family": f} for f in ("denoise", "sr4", "inpaint-random", "inpaint-region")]
    old = {**old, "solver_config": red_before, "cells": cells}
    assert [c["family"] for c in kept_cells(old, ["sr4"], red, {}, "d1", 8)] == ["denoise", "inpaint-random"]
    # a table fitted before Langevin had its init options: the families that run at their defaults keep their cells,
    # those that now start from HQS (deblurring, random inpainting) do not
    lang = canonical(dataclasses.asdict(base.get("langevin").config))
    cells = [{"family": f} for f in ("denoise", "deblur", "sr4", "inpaint-random")]
    old = {**old, "solver": "langevin", "cells": cells,
           "solver_config": {k: v for k, v in lang.items() if k not in ("init", "init_options", "per_family")}}
    assert [c["family"] for c in kept_cells(old, ["inpaint-region"], lang, {}, "d1", 8)] == ["denoise", "sr4"]


def test_a_refit_naming_noise_levels_replaces_only_those_cells_of_its_family():
    # `--sigmas` refits those levels: the family's cells at other levels stay (fitted earlier, or on another machine
    # whose cached runs are not here), unless they went stale like any other kept cell
    import dataclasses

    from restore.provenance import canonical
    from restore.solvers import base
    from restore.train.calibration import kept_cells

    now = canonical(dataclasses.asdict(base.get("reddiff").config))
    cells = [{"family": "denoise", "sigma": 0.098039}, {"family": "denoise", "sigma": 0.196078},
             {"family": "deblur", "sigma": 0.01}]
    old = {"features": list(cal.FEATURES), "prior_digest": "d1", "n_samples": 8, "solver_config": now,
           "cells": cells}

    def kept(levels):
        return [(c["family"], c["sigma"]) for c in kept_cells(old, ["denoise"], now, {}, "d1", 8, levels)]

    assert kept({"denoise": [0.058823529]}) == [("denoise", 0.098039), ("denoise", 0.196078), ("deblur", 0.01)]
    assert kept({"denoise": [50 / 255]}) == [("denoise", 0.098039), ("deblur", 0.01)]  # the cell's own level goes
    assert kept({"denoise": [25 / 255, 50 / 255]}) == [("deblur", 0.01)]
    assert kept(None) == [("deblur", 0.01)]  # the whole grid refitted
    assert kept_cells(old, ["denoise"], now, {}, "d2", 8, {"denoise": [0.01]}) == []  # another prior: nothing kept


def test_dropping_the_cells_of_changed_families_keeps_the_rest_valid():
    """``--drop``: a default changed for some families before their refit removes just their cells and records the
    new config, so those families fall back to the raw spread while the others stay calibrated; a kept cell whose
    family runs otherwise too is refused."""
    import dataclasses

    from restore import calibration
    from restore.priors import registry
    from restore.provenance import canonical
    from restore.solvers import base
    from restore.train.calibration import dropped

    lang = canonical(dataclasses.asdict(base.get("langevin").config))
    before = {k: v for k, v in lang.items() if k not in ("init", "init_options", "per_family")}
    table = registry.calibration_table("langevin", "score-natural@int8")
    old = {**table, "solver_config": before}
    assert "(init)" in calibration.table_mismatch(old, table["prior"], lang, "deblur")
    new = dropped(old, ["deblur", "inpaint-random"], lang, {}, "cmd")
    assert {c["family"] for c in new["cells"]} == {c["family"] for c in table["cells"]} - {"deblur", "inpaint-random"}
    assert new["dropped"]["families"] == ["deblur", "inpaint-random"]
    assert calibration.table_mismatch(new, table["prior"], lang) is None
    assert calibration.find_cell(new, "deblur", 0.01)[0] is None and calibration.find_cell(new, "sr4", 0.01)[0]
    with pytest.raises(SystemExit, match="inpaint-random cells were fitted with other settings"):
        dropped(old, ["deblur"], lang, {}, "cmd")


def test_cached_calibration_runs_are_reused_where_their_family_runs_unchanged():
    """A refit reads back cached runs whose solvers ran the cell's family as the code does now: a per-family setting
    added for another family, or an option added since at its default, keeps them; a change for their own family,
    another solver or other options reruns them."""
    import dataclasses

    from restore.provenance import canonical
    from restore.solvers import base
    from restore.train.calibration import same_settings

    lang = canonical(dataclasses.asdict(base.get("langevin").config))
    now = [{"name": "langevin", "options": {}, "config": lang}]
    deblur_only = {k: v for k, v in lang.items() if k != "init_options"}
    deblur_only["per_family"] = {"deblur": lang["per_family"]["deblur"]}
    cached = [{"name": "langevin", "options": {}, "config": deblur_only}]
    assert same_settings(cached, now, "deblur") and same_settings(cached, now, "sr4")
    assert not same_settings(cached, now, "inpaint-random")  # its warm start is new
    assert not same_settings([{**cached[0], "options": {"iterations": 50}}], now, "deblur")
    assert not same_settings([{**cached[0], "name": "reddiff"}], now, "deblur")
    assert not same_settings(None, now, "deblur")


def test_a_table_is_applied_with_the_features_it_was_fitted_on():
    """Tables list their per-pixel signals by name and are applied with exactly those: one fitted before a signal was
    added (the 14 of 2026-12-02) gets its own 14, each the same map as in today's full set. The unsmoothed signals
    (window 1) tell observed from missing pixels in random inpainting, which no smoothed one can."""
    from restore.tasks import parse

    g = torch.Generator().manual_seed(0)
    physics = parse("inpaint:random:missing=0.5,noise=0.01").physics((1, 3, 32, 32))
    x = torch.rand(1, 3, 32, 32, generator=g)
    y = physics(x)
    mean, spread = (x + 0.05 * torch.randn(x.shape, generator=g)).clamp(0, 1), 0.1 * torch.rand(x.shape, generator=g)
    full = cal.features(mean, spread, y, physics)
    old = ["bias", "log_spread_3", "log_spread_7", "log_grey_spread_5", "log_contrast_3", "log_contrast_5",
           "log_contrast_9", "log_grey_contrast_5", "log_residual_3", "log_residual_5", "log_residual_11",
           "log_unobserved_9", "log_unobserved_33", "brightness"]
    assert set(old) < set(cal.FEATURES) and all(cal.known_feature(n) for n in cal.FEATURES)
    subset = cal.features(mean, spread, y, physics, old)
    assert subset.shape[0] == 14
    for i, name in enumerate(old):
        assert torch.equal(subset[i], full[cal.FEATURES.index(name)]), name
    missing = physics.A(torch.ones_like(x)) == 0
    unobserved = full[cal.FEATURES.index("log_unobserved_1")][None]
    assert unobserved[missing].min() > unobserved[~missing].max()  # exactly the missing pixels stand out
    with pytest.raises(ValueError, match="unknown calibration feature"):
        cal.features(mean, spread, y, physics, ["log_sharpness_3"])


@pytest.mark.parametrize("solver", ["langevin", "reddiff", "vble", "pmrf", "aps", "scoredvi"])
def test_every_shipped_table_applies_at_its_solvers_defaults(solver):
    """A default change or retrained weights without a refit would silently leave users uncalibrated: each solver's
    shipped table must match its default settings and its default prior's current weights."""
    import dataclasses

    from restore import calibration
    from restore.priors import registry
    from restore.solvers import base

    cls = base.solver_class(solver)
    prior = registry.quantised_name(cls.default_prior, cls.default_quant)
    table = registry.calibration_table(solver, prior)
    assert table is not None, f"no shipped table for {solver} with {prior}"
    assert calibration.table_mismatch(table, prior, dataclasses.asdict(cls.config_cls())) is None


def test_every_shipped_table_matches_its_prior_and_solver():
    """Not only the default priors' tables: a retrained non-default prior (e.g. cae-natural-q4) must come with its
    refitted table, or users who pick it are silently left with the raw spread."""
    import dataclasses

    from restore import calibration
    from restore.priors import registry
    from restore.solvers import base

    files = sorted((registry.models_dir() / "calibration").glob("*.json"))
    assert len(files) >= 6
    for f in files:
        solver, prior, options = registry.split_table_name(f.stem)  # SOLVER.PRIOR or SOLVER.PRIOR+preset=paper
        table = registry.calibration_table(solver, prior, options)  # the loader run time uses, file name and all
        assert (table["solver"], table["prior"], table["file"]) == (solver, prior, f"calibration/{f.name}"), f.name
        config = dataclasses.asdict(base.get(solver, **options).config)  # the defaults, or the preset's settings
        assert calibration.table_mismatch(table, table["prior"], config, None, options) is None, f.name


def test_wiener_error_orders_operators_by_how_hard_they_make_the_problem():
    """The deblurring cells' per-image signal: the RMS error a Wiener filter would make on a 1/f^2 image. It grows
    with the blur width and with the noise, and a 19 px motion kernel (which keeps most of the spectrum) sits below
    Gaussian sigma 1; the feature is that number's log at every pixel."""
    from restore.tasks import parse

    shape = (1, 3, 64, 64)
    hard = {spec: cal.wiener_rmse(parse(spec).physics(shape), shape) for spec in
            ("denoise:gaussian:sigma=0.01", "deblur:motion:size=19,seed=3,noise=0.01",
             "deblur:gaussian:sigma=1,noise=0.01", "deblur:gaussian:sigma=3,noise=0.01",
             "deblur:gaussian:sigma=3,noise=0.03")}
    values = list(hard.values())
    assert values == sorted(values) and len(set(values)) == len(values), hard
    assert values[0] < 0.011  # no blur: at most the noise itself
    physics = parse("deblur:gaussian:sigma=3,noise=0.01").physics(shape)
    x = torch.rand(shape, generator=torch.Generator().manual_seed(0))
    feat = cal.features(x, 0.1 * x, physics(x), physics, ["bias", "log_wiener"])
    assert torch.allclose(feat[1], torch.full_like(x[0], math.log(values[3])))


def test_kernel_anisotropy_tells_motion_kernels_from_isotropic_operators():
    """The deblurring cells' second per-image signal: 0 for every isotropic operator (Gaussian blur of any width,
    identity, decimation, a masked centre pixel), clearly positive for motion kernels, large for a straight line and
    about 0 for a ring (isotropic whatever its shape); the feature is that number at every pixel."""
    from restore.tasks import parse

    shape = (1, 3, 64, 64)
    for spec in ("denoise:gaussian:sigma=0.1", "deblur:gaussian:sigma=1,noise=0.01",
                 "deblur:gaussian:sigma=3,noise=0.01", "sr:bicubic:factor=4,noise=0.01",
                 "inpaint:random:missing=0.5,seed=0,noise=0.01"):
        assert abs(cal.kernel_anisotropy(parse(spec).physics(shape), shape)) < 1e-6, spec
    motion = [cal.kernel_anisotropy(parse(f"deblur:motion:size={n},seed={s},noise=0.01").physics(shape), shape)
              for n, s in ((9, 1), (15, 2), (19, 3), (25, 4))]
    assert min(motion) > 0.3, motion
    line = torch.zeros(1, 1, 15, 15)
    line[..., 7, :] = 1 / 15
    ring = torch.zeros(1, 1, 15, 15)
    ring[..., 3:12, 3:12] = 1
    ring[..., 4:11, 4:11] = 0
    from deepinv.physics import BlurFFT

    aniso = [cal.kernel_anisotropy(BlurFFT(img_size=shape[1:], filter=k.expand(1, 3, 15, 15)), shape)
             for k in (line, ring / ring.sum())]
    assert aniso[0] > 3 and abs(aniso[1]) < 1e-3, aniso
    physics = parse("deblur:motion:size=19,seed=3,noise=0.01").physics(shape)
    x = torch.rand(shape, generator=torch.Generator().manual_seed(0))
    feat = cal.features(x, 0.1 * x, physics(x), physics, ["log_anisotropy", "motion", "log_wiener_motion"])
    assert torch.allclose(feat[0], torch.full_like(x[0], motion[2]))
    # the motion share: 0 for isotropic blur, tanh(anisotropy / 0.3) (0.76-1) for the motion kernels
    share = math.tanh(motion[2] / cal.MOTION_ANISOTROPY)
    assert 0.75 < share < 1 and torch.allclose(feat[1], torch.full_like(x[0], share))
    assert torch.allclose(feat[2], torch.full_like(x[0], math.log(cal.wiener_rmse(physics, shape)) * share))
    gauss = parse("deblur:gaussian:sigma=2,noise=0.01").physics(shape)
    assert cal.motion_share(cal.kernel_anisotropy(gauss, shape)) == 0.0
    assert cal.known_feature("motion") and cal.known_feature("log_wiener_motion")


def test_deblur_cells_carry_the_wiener_error_and_widen_for_strong_kernels():
    """The shipped PMRF table's deblurring cells add the kernel's per-image signals (``log_wiener``,
    ``log_anisotropy``, ``motion``, ``log_wiener_motion``) to the table's features (a per-cell list, used when the
    table is applied), the Wiener error with a positive weight on isotropic blur: the harder the kernel, the wider
    the calibrated interval. The same image blurred with sigma 3 gets a wider interval than with sigma 1, relative to
    the error scale without the signals. The weights of those signals carry the second stage's adjustment, recorded
    in the cell."""
    import dataclasses

    from restore.priors import registry
    from restore.solvers import base
    from restore.tasks import parse

    table = registry.calibration_table("pmrf", "flow-natural")
    deblur = [c for c in table["cells"] if c["family"] == "deblur"]
    per_image = ["log_wiener", "log_anisotropy", "motion", "log_wiener_motion"]
    # PMRF's cells end with the bootstrap signals (but for inpainting), the deblurring ones list the kernel's first
    assert deblur and all(cal.cell_features(table, c) == [*table["features"], *per_image, *cal.BOOT_FEATURES]
                          for c in deblur)
    at = [cal.cell_features(table, deblur[0]).index(n) for n in per_image]
    # the harder the kernel, the wider; the elongation's own weight is small since the bootstrap (a rerun under the
    # same kernel) sees what made motion kernels harder for their Wiener error, and on motion blur the Wiener error's
    # slope (log_wiener's weight plus log_wiener_motion's) is smaller than on isotropic blur
    assert all(c["weights"][at[0]] > 0.3 and abs(c["weights"][at[1]]) < 0.2 for c in deblur)
    assert all(c["weights"][at[0]] + c["weights"][at[3]] < c["weights"][at[0]] for c in deblur)
    assert all(c["image_stage"]["features"] == ["bias", "log_wiener", "motion", "log_wiener_motion"]
               and c["image_stage"]["level"] == 0.9 and len(c["image_stage"]["adjustment"]) == 4 for c in deblur)
    # the per-image weights rest on 88 extra fit crops of files no other role of the table uses (12 a kernel)
    used = set(table["images"]["fit"]) | set(table["images"]["cal"]) | set(table["images"]["prior_held_out"])
    assert all(c["n_fit"] == 96 and len(set(c["extra_fit_images"])) == 88 and not used & set(c["extra_fit_images"])
               for c in deblur)
    assert all(c["image_stage"]["n_images"] == 96 and 0 < c["image_stage"]["r2"] < 1 for c in deblur)
    others = [c for c in table["cells"] if c["family"] in ("denoise", "sr2", "sr4")]
    assert others and all(cal.cell_features(table, c) == [*table["features"], *cal.BOOT_FEATURES] for c in others)
    inpainting = [c for c in table["cells"] if c["family"].startswith("inpaint")]
    assert inpainting and all(cal.cell_features(table, c) == table["features"] for c in inpainting)
    defaults = dataclasses.asdict(base.get("pmrf").config)
    assert cal.table_mismatch(table, "flow-natural", defaults) is None
    cut = {**table, "cells": [{**deblur[0], "weights": deblur[0]["weights"][:-1]}]}  # one weight short of its list
    assert "is damaged" in cal.table_mismatch(cut, "flow-natural", defaults)
    # between the two noise levels the blend keeps the cells' own feature list
    cell, status, _ = cal.find_cell(table, "deblur", 0.02)
    assert status == "approximate" and cal.cell_features(table, cell) == cal.cell_features(table, deblur[0])
    shape = (1, 3, 64, 64)
    x = torch.rand(shape, generator=torch.Generator().manual_seed(1))
    names = cal.cell_features(table, deblur[0])
    keep = [i for i, n in enumerate(names) if n not in per_image]
    ratios = []
    for spec in ("deblur:gaussian:sigma=1,noise=0.01", "deblur:gaussian:sigma=3,noise=0.01"):
        physics = parse(spec).physics(shape)
        y = physics(x)
        feats = cal.features(x, 0.02 + 0 * x, y, physics, names, boot=x + 0.01)
        with_it = cal.scale_map(deblur[0]["weights"], feats)
        without = cal.scale_map([deblur[0]["weights"][i] for i in keep], feats[keep])
        ratios.append(float((with_it / without).mean()))
    assert ratios[1] > 1.2 * ratios[0]


def test_fit_only_reads_the_planned_runs_for_their_planned_images(tmp_path):
    """A refit from the cache uses exactly the planned (role, index) runs, each for the image the plan draws: another
    --fit / --cal count draws other files under the same names, and a stale run would mix images into the wrong
    role (a calibration crop of a fit image). Missing or mismatched runs stop the refit with the file named."""
    from restore.train import calibration as train

    folder = tmp_path / "deblur-0.01000"
    folder.mkdir()
    spec = train.planned_spec("deblur", 0.01, 0)
    torch.save({"role": "fit", "index": 0, "file": "a.png", "spec": spec, "mean": torch.zeros(1)},
               folder / "fit-000.pt")
    assert train.cached_cell(tmp_path, "deblur", 0.01, [("fit", 0, "a.png", None)])[0]["file"] == "a.png"
    with pytest.raises(SystemExit, match=r"fit-000.pt: cached for a.png \(.*\), planned for b.png"):
        train.cached_cell(tmp_path, "deblur", 0.01, [("fit", 0, "b.png", None)])
    # the same image under another kernel (a run cached before the deblurring mix changed) is refused too
    torch.save({"role": "fit", "index": 1, "file": "a.png", "spec": spec, "mean": torch.zeros(1)},
               folder / "fit-001.pt")
    with pytest.raises(SystemExit, match="fit-001.pt: cached for a.png .*motion"):
        train.cached_cell(tmp_path, "deblur", 0.01, [("fit", 1, "a.png", None)])
    with pytest.raises(SystemExit, match="cal-008.pt: missing"):
        train.cached_cell(tmp_path, "deblur", 0.01, [("fit", 0, "a.png", None), ("cal", 8, "c.png", None)])


def test_more_calibration_images_append_to_the_plan():
    """A larger --cal keeps every fit and calibration file of a smaller one (their cached runs stay valid) and the
    extra fit files never overlap them; asking for more files than there are is refused."""
    from pathlib import Path

    from restore.train import calibration as train

    files = [Path(f"img{i:03d}.png") for i in range(100)]
    small, extra_small = train.plan_files(files, 36, 8, seed=0)
    large, extra_large = train.plan_files(files, 68, 8, seed=0)
    assert large[:36] == small and extra_large == extra_small
    assert len(set(large) | set(extra_large)) == 68 + 8
    assert train.plan_files(files, 36, 8, seed=1)[0] != small
    with pytest.raises(SystemExit, match="more than the 100 files"):
        train.plan_files(files, 95, 8, seed=0)


def test_fit_only_refuses_runs_cached_with_other_settings(tmp_path, monkeypatch):
    """A cache can hold runs of a setting tried and not kept (e.g. RED-Diff's longer schedule on inpainting holes):
    a refit from it would fit today's table on another solver's errors. Given the restorer, --fit-only learns
    today's settings from one fresh run and refuses the others."""
    from restore.train import calibration as train

    folder = tmp_path / "deblur-0.01000"
    folder.mkdir()
    spec = train.planned_spec("deblur", 0.01, 0)
    solvers = [{"name": "reddiff", "options": {}, "config": {"steps": 30}}]
    torch.save({"role": "fit", "index": 0, "file": "a.png", "spec": spec, "solvers": solvers, "priors": {"p": "1"}},
               folder / "fit-000.pt")
    fresh = {"solvers": solvers, "priors": {"p": "1"}}
    monkeypatch.setattr(train, "run_unit", lambda *a, **k: fresh)
    units = [("fit", 0, "a.png", None)]
    reddiff = SimpleNamespace(solver=SimpleNamespace(name="reddiff"))
    assert train.cached_cell(tmp_path, "deblur", 0.01, units, restorer=reddiff)[0]["file"] == "a.png"
    fresh["solvers"] = [{"name": "reddiff", "options": {}, "config": {"steps": 50}}]
    with pytest.raises(SystemExit, match="fit-000.pt: cached with other solver settings"):
        train.cached_cell(tmp_path, "deblur", 0.01, units, restorer=reddiff)
    fresh.update(solvers=solvers, priors={"p": "2"})  # retrained weights
    with pytest.raises(SystemExit, match="prior weights"):
        train.cached_cell(tmp_path, "deblur", 0.01, units, restorer=reddiff)
    # a solver whose cells use the bootstrap: a run cached without its estimate cannot be refitted from the cache
    fresh.update(solvers=[{"name": "pmrf", "options": {}, "config": {}}], priors={"p": "1"})
    torch.save({"role": "fit", "index": 0, "file": "a.png", "spec": spec, "solvers": fresh["solvers"],
                "priors": {"p": "1"}}, folder / "fit-000.pt")
    with pytest.raises(SystemExit, match="fit-000.pt: cached without the bootstrap estimate"):
        train.cached_cell(tmp_path, "deblur", 0.01, units, restorer=SimpleNamespace(solver=SimpleNamespace(name="pmrf")))


def test_missing_pixels_are_those_the_operator_never_sees(clean_rgb):
    from restore.tasks import parse

    shape = tuple(clean_rgb.shape)
    box = parse("inpaint:box:size=0.5,noise=0.01")
    missing = cal.missing_pixels(box.physics(shape), clean_rgb)
    assert missing.shape == clean_rgb.shape and torch.equal(missing, box.physics(shape).mask.expand(shape) == 0)
    for spec in ("denoise:gaussian:sigma=0.1", "deblur:gaussian:sigma=2", "sr:bicubic:factor=2"):
        assert cal.missing_pixels(parse(spec).physics(shape), clean_rgb) is None, spec


def test_grouped_calibration_covers_the_holes_where_pooled_scores_do_not():
    """Synthetic inpainting whose hole errors are 4x larger than the scale predicts: the pooled multiplier, dominated
    by the 90 % observed pixels, leaves most hole pixels outside; calibrating each group apart covers both, the
    union still at the level, with a wider interval only in the hole."""
    n, h = 40, 32
    rng = np.random.default_rng(0)
    missing = torch.zeros(1, 1, h, h, dtype=torch.bool)
    missing[..., 12:22, 12:22] = True  # 10 % of the pixels

    def image(seed):
        r = np.random.default_rng(seed)
        score = np.abs(r.normal(0, 1, (1, 1, h, h)))
        score[missing.numpy()] *= 4
        return torch.from_numpy(score)

    scores = [image(i) for i in range(n)]
    pooled = np.stack([np.quantile(s.flatten().numpy(), cal.SCORE_PROBS) for s in scores])
    grouped = [cal.group_curves(s, missing) for s in scores]
    group_scores = {g: np.asarray([c[g] for c in grouped]) for g in cal.GROUPS}
    mean, scale = torch.full((1, 1, h, h), 0.5), torch.full((1, 1, h, h), 0.01)
    plain = cal.Calibration(scale, pooled, "calibrated", "t.json", "", 1.0)
    split = cal.Calibration(scale, pooled, "calibrated", "t.json", "", 1.0, missing=missing,
                            group_scores=group_scores)
    assert not plain.grouped and split.grouped
    assert not split.pooled().grouped  # pooled(): one multiplier for all pixels, as plain's
    assert split.pooled().multiplier(0.9) == plain.multiplier(0.9) and split.grouped
    lam = split.multiplier(0.9)
    assert torch.is_tensor(lam) and float(lam[missing].min()) > 3 * float(lam[~missing].max())
    assert "separately" in split.guarantee(0.9) and "separately" not in plain.guarantee(0.9)
    assert float(split.std()[missing].mean()) > 3 * float(split.std()[~missing].mean())
    hole, rest = [], []
    for seed in range(100, 140):  # new images: truth = mean + score * scale, either sign
        truth = mean + image(seed) * scale * torch.from_numpy(rng.choice([-1.0, 1.0], (1, 1, h, h)))
        for c, out in ((plain, "plain"), (split, "split")):
            lo, hi = c.interval(mean, 0.9)
            inside = (truth >= lo) & (truth <= hi)
            (hole if out == "split" else rest).append((inside[missing].float().mean().item(),
                                                       inside.float().mean().item()))
    split_hole, split_all = np.mean(hole, 0)
    plain_hole, plain_all = np.mean(rest, 0)
    assert plain_hole < 0.6 and plain_all >= 0.88
    assert 0.88 <= split_hole <= 0.97 and 0.88 <= split_all <= 0.97


def test_a_blend_between_noise_levels_keeps_the_groups():
    curves = _curves(12).tolist()
    cell = lambda s, k: {"family": "inpaint-random", "sigma": s, "weights": [0.0] * len(cal.FEATURES),  # noqa: E731
                         "scores": curves, "mse_scale": 1.0, "chi2_range": [0.5, 2.0],
                         "group_scores": {"observed": curves, "missing": (k * np.asarray(curves)).tolist()}}
    table = {"file": "t.json", "cells": [cell(0.01, 2.0), cell(0.04, 4.0)]}
    blend, status, _ = cal.find_cell(table, "inpaint-random", 0.02)
    assert status == "approximate" and set(blend["group_scores"]) == set(cal.GROUPS)
    assert np.allclose(blend["group_scores"]["missing"], 3.0 * np.asarray(curves))  # halfway in log sigma


def test_neighbours_that_read_an_image_far_apart_average_their_widths_not_their_log_scales():
    """Between two grid levels the log blend stands while the neighbours' scale models agree on the image; read more
    than 2x apart (one extrapolating far from its level), the interval's half-width is the blend-weighted average of
    the two cells' calibrated half-widths (the log blend would follow the narrower), and the note says why."""
    curves = _curves(12).tolist()
    cell = lambda s, bias: {"family": "denoise", "sigma": s, "weights": [bias, 0.0],  # noqa: E731
                            "scores": curves, "mse_scale": 1.0, "chi2_range": [0.5, 2.0]}
    feats = torch.stack([torch.ones(1, 8, 8), torch.zeros(1, 8, 8)])  # ("bias", any other signal) x (C, H, W)
    table = {"file": "t.json", "cells": [cell(0.1, 0.0), cell(0.2, math.log(9.0))]}  # scales 1 and 9 on this image
    blend, status, _ = cal.find_cell(table, "denoise", 0.1 * 2 ** 0.5)  # halfway in log sigma
    assert status == "approximate" and [c["sigma"] for c in blend["neighbours"]] == [0.1, 0.2]
    assert blend["t"] == pytest.approx(0.5)
    assert torch.allclose(cal.scale_map(blend["weights"], feats), torch.tensor(3.0))  # the log blend: sqrt(1 * 9)
    scale, note = cal.disagreeing_neighbours(blend, feats)
    assert torch.allclose(scale, torch.tensor(5.0)) and "9.0x apart" in note and "averaged" in note
    table = {"file": "t.json", "cells": [cell(0.1, 0.0), cell(0.2, math.log(1.5))]}
    assert cal.disagreeing_neighbours(cal.find_cell(table, "denoise", 0.11)[0], feats) is None


def test_an_inpainting_cell_stores_each_pixel_group(clean_rgb):
    """fit_cell keeps score curves per pixel group for an operator with holes (and says how the held-out crops
    fare in each, with their own and with the pooled multiplier); a denoising cell has none."""
    from restore.tasks import parse
    from restore.train import calibration as train

    def units(fam):
        out = []
        for role, i in [("fit", 0), ("fit", 1)] + [("cal", 8 + j) for j in range(12)] + [("heldout", 1000)]:
            spec = train.planned_spec(fam, 0.01, i)
            g = torch.Generator().manual_seed(i)
            x = clean_rgb[..., :48, :48]
            y, physics = parse(spec).simulate(x, g)
            missing = cal.missing_pixels(physics, x)
            err = 0.01 * torch.randn(x.shape, generator=g) * (1 + 4 * missing.float() if missing is not None else 1)
            out.append({"role": role, "index": i, "spec": spec, "x": x, "y": y, "mean": (x + err).clamp(0, 1),
                        "spread": torch.full_like(x, 0.01), "solvers": None})
        return out

    cell = train.fit_cell(units("inpaint-region"), 0.01)
    assert set(cell["group_scores"]) == set(cal.GROUPS)
    assert all(len(cell["group_scores"][g]) == 12 for g in cal.GROUPS)
    held = cell["prior_held_out_images"]
    assert {"coverage_90_missing", "coverage_90_missing_pooled", "coverage_90_observed"} <= set(held)
    assert "group_scores" not in train.fit_cell(units("denoise"), 0.01)


def test_the_summary_line_says_when_the_holes_were_calibrated_apart():
    from restore.batch import describe_uncertainty

    u = {"status": "calibrated", "table": "calibration/pmrf.flow-natural.json", "cell": "inpaint-region at 0.01",
         "predicted_psnr": 30.0, "self_check": {"verdict": "consistent", "chi2_ratio": 1.0,
                                                "expected_range": [0.8, 1.3]},
         "groups": {"missing_fraction": 0.09, "multiplier_90": {"observed": 2.1, "missing": 5.3}}}
    line = describe_uncertainty({"uncertainty": u})
    assert "the 9 % unobserved pixels calibrated apart (90 % multiplier 5.30 there, 2.10 elsewhere)" in line
    del u["groups"]
    assert "unobserved" not in describe_uncertainty({"uncertainty": u})


def test_the_summary_line_suggests_checking_the_noise_level_when_the_fit_is_too_good():
    from restore.batch import describe_uncertainty

    u = {"status": "calibrated", "table": "calibration/pmrf.flow-natural.json", "cell": "denoise at 0.1",
         "predicted_psnr": 30.0, "self_check": {"verdict": "consistent", "chi2_ratio": 0.9,
                                                "expected_range": [0.8, 1.0]}}
    assert "less noisy than stated" not in describe_uncertainty({"uncertainty": u})
    u["self_check"] = {"verdict": "fits the noise", "chi2_ratio": 0.27, "expected_range": [0.8, 1.0]}
    line = describe_uncertainty({"uncertainty": u})
    assert "self-check fits the noise (chi2 ratio 0.27" in line and "less noisy than stated" in line
    assert "sigma=auto" in line
    # with the level estimated from the image (sigma=auto), the likelier cause is camera noise: a warning says that
    meta = {"uncertainty": u, "noise_estimate": {"sigma": 0.05, "param": "sigma"}}
    cal.warn_if_not_gaussian(meta)
    line = describe_uncertainty(meta)
    assert "less noisy than stated" not in line and "WARNING" in line and "denoise:real" in line
    assert "likely too narrow" in u["warning"]
    consistent = {"uncertainty": {"self_check": {"verdict": "consistent"}}}
    cal.warn_if_not_gaussian(consistent)
    assert "warning" not in consistent["uncertainty"]


def test_real_noise_cells_mix_flattest_windows_and_report_each_kind(tmp_path, clean_rgb):
    """Under --flattest-windows half the real-noise family's crops are their file's flattest window (every
    camera-noise level gets both kinds); other families keep the random crops. A cached run of the same file and
    task but another window is not reused, and the held-out coverage is reported per kind of crop."""
    import imageio.v3 as iio

    from restore.train import calibration as train
    from restore.train.common import texture

    real = cal.REAL_FAMILY
    flat = [i for i in range(24) if train.flat_window(real, i)]
    assert len(flat) == 12 and not any(train.flat_window("denoise", i) for i in range(24))
    for level in range(len(train.CAMERA_MIX)):  # each level gets both kinds
        assert {train.flat_window(real, i) for i in range(24) if i % len(train.CAMERA_MIX) == level} == {True, False}

    # a photo whose left half is flat: its flattest window lies there, the random crops mostly do not
    img = (clean_rgb[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)[:96, :192].copy()
    img[:, :96] = 128
    for k in range(4):
        iio.imwrite(tmp_path / f"f{k}.png", img)
    units = [("fit", i, f"f{i % 4}.png", torch.rand(1, 3, 32, 32)) for i in range(4)]
    plan = train.FolderPlan("t", True, units, [], [], tmp_path, str(tmp_path))
    assert plan.family_units("denoise", 32, True) is units and plan.family_units(real, 32, False) is units
    mixed = plan.family_units(real, 32, True)
    for (_, i, _, x), (_, _, _, before) in zip(mixed, units):
        if train.flat_window(real, i):
            assert x.shape == (1, 3, 32, 32) and float(texture(x)[0]) < 1e-6
        else:
            assert x is before

    folder = tmp_path / f"{real}-0.00000"
    folder.mkdir()
    i = flat[0]
    spec = train.planned_spec(real, 0.0, i)
    torch.save({"role": "fit", "index": i, "file": "a.png", "spec": spec, "x": torch.zeros(1, 3, 8, 8)},
               folder / f"fit-{i:03d}.pt")
    assert train.cached_cell(tmp_path, real, 0.0, [("fit", i, "a.png", torch.zeros(1, 3, 8, 8))])
    with pytest.raises(SystemExit, match=rf"fit-{i:03d}.pt: cached for a.png \(denoise:real\), another crop"):
        train.cached_cell(tmp_path, real, 0.0, [("fit", i, "a.png", torch.ones(1, 3, 8, 8))])

    def unit(role, i, err_std):
        g = torch.Generator().manual_seed(i)
        x = clean_rgb[..., :32, :32]
        y = x + 0.02 * torch.randn(x.shape, generator=g)
        return {"role": role, "index": i, "spec": "denoise:real", "x": x, "y": y, "sigma_used": 0.02,
                "mean": x + err_std * torch.randn(x.shape, generator=g), "spread": torch.full_like(x, 0.01),
                "solvers": None}

    # the flat held-out crops' errors are 4x smaller at the same spread: they are over-covered, the random ones not
    units = ([unit("fit", i, 0.01) for i in range(2)] + [unit("cal", i, 0.01) for i in range(8, 28)]
             + [unit("heldout", i, 0.0025 if train.flat_window(real, i) else 0.01) for i in range(1000, 1008)])
    held = train.fit_cell(units, 0.0, family=real, flattest=True)["prior_held_out_images"]
    assert held["coverage_90_flat_crops"] > 0.99 and 0.8 < held["coverage_90_random_crops"] < 0.97
    assert "coverage_90_flat_crops" not in train.fit_cell(units, 0.0, family=real)["prior_held_out_images"]


def test_bootstrap_signals_follow_how_far_a_rerun_moves_the_estimate():
    """The parametric bootstrap (PMRF's cells): the solver once more on the task's degradation of its own estimate,
    with noise drawn from the run's seed plus BOOT_SEED (fresh, not the observation's; same seed, same draw). Its
    signals are the local and whole-image RMS of that change; asking for them without it is an error."""
    from restore.tasks import parse

    task = parse("deblur:gaussian:sigma=1,noise=0.05")
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 3, 32, 32, generator=g)
    y, physics = task.simulate(x, torch.Generator().manual_seed(3))
    seen = []
    boot = cal.bootstrap(lambda y_star: seen.append(y_star) or x + 0.02, x, task, 3)
    assert torch.allclose(boot, x + 0.02) and seen[0].shape == y.shape
    assert torch.equal(cal.bootstrap(lambda y_star: y_star, x, task, 3), seen[0])
    noise_seen = seen[0] - physics.A(x)
    assert 0.04 < float(noise_seen.std()) < 0.06 and float((seen[0] - y).abs().max()) > 0.01  # not the run's noise
    names = list(cal.BOOT_FEATURES)
    with pytest.raises(ValueError, match="needs the bootstrap estimate"):
        cal.features(x, torch.zeros_like(x), y, physics, names)
    change = 0.01 * torch.randn(x.shape, generator=g)
    small = cal.features(x, torch.zeros_like(x), y, physics, names, boot=x + change)
    large = cal.features(x, torch.zeros_like(x), y, physics, names, boot=x + 10 * change)
    assert small.shape == (3, 3, 32, 32) and bool((large > small).all())
    image = names.index("log_boot_image")
    assert torch.allclose(small[image], torch.tensor(0.5 * math.log(float((change**2).mean()) + 1e-12)))
    assert cal.needs_bootstrap(names) and not cal.needs_bootstrap(cal.FEATURES)


def test_a_bootstrap_table_without_a_rerun_falls_back_and_only_pmrf_fits_one(fitted_models, clean_rgb, monkeypatch):
    """A caller that cannot rerun the solver (calibration.apply without ``rerun``) gets the raw spread and the
    reason, never a crash; the bootstrap is PMRF's (other solvers' cells, its inpainting cells and the real-noise
    family do without)."""
    monkeypatch.setenv("RESTORE_MODELS", str(fitted_models))
    from restore.api import Restorer
    from restore.tasks import parse
    from restore.train import calibration as train

    r = Restorer("pmrf", calibrate=False)
    task = parse("denoise:gaussian:sigma=0.1")
    y = r.simulate(clean_rgb[..., :48, :48], task, seed=0)
    post = r(y, task, samples=4, seed=0)
    post.meta["seed"] = 0
    with pytest.warns(cal.UncalibratedWarning, match="bootstrap"):
        cal.apply(post, y, task.physics(tuple(post.mean.shape)), task)
    assert post.meta["uncertainty"]["status"] == "uncalibrated" and not post.calibrated
    assert cal.needs_bootstrap(train.feature_names("pmrf", "deblur"))
    assert not cal.needs_bootstrap(train.feature_names("reddiff", "deblur"))
    assert not cal.needs_bootstrap(train.feature_names("pmrf", cal.REAL_FAMILY))
    assert not cal.needs_bootstrap(train.feature_names("pmrf", "inpaint-region"))  # it did not help there


def test_just_past_the_grid_the_edge_cell_applies_approximately():
    # sigma=auto reads heavy noise a few % high: 0.21 for a 0.196 grid top must not lose the calibration
    table = {"file": "t.json", "cells": [{"family": "denoise", "sigma": s} for s in (0.05, 0.1)]}
    for sigma, edge in ((0.11, 0.1), (0.1149, 0.1), (0.044, 0.05)):
        cell, status, note = cal.find_cell(table, "denoise", sigma)
        assert cell["sigma"] == edge and status == "approximate" and "just outside the calibrated grid" in note
    for sigma in (0.12, 0.04):
        cell, status, note = cal.find_cell(table, "denoise", sigma)
        assert cell is None and status == "uncalibrated" and "outside the calibrated grid" in note


def test_camera_noise_at_sigma_auto_takes_the_camera_cell(clean_rgb):
    """PMRF at sigma=auto on synthetic camera noise: the self-check against the Gaussian cell says 'fits the noise', so
    the shipped table's camera cell calibrates the run (approximate, said in meta, with its own warning) and widens
    the intervals the Gaussian cell gave; the same run with the level stated keeps the Gaussian cell, and Gaussian
    noise at sigma=auto never leaves it."""
    from restore.api import Restorer
    from restore.train import calibration as train
    from restore.train import camera_noise

    assert cal.CAMERA_FAMILY in train.supported_families(Restorer("pmrf").solver)
    # ScoreDVI too: its denoise-real cell is for camera noise named as such, this one for camera noise given as Gaussian
    assert cal.CAMERA_FAMILY in train.supported_families(Restorer("scoredvi").solver)
    x = torch.nn.functional.interpolate(clean_rgb, size=(96, 96), mode="bilinear", align_corners=False)
    y = camera_noise.simulate(x, "light", torch.Generator().manual_seed(0))
    restorer = Restorer("pmrf")
    auto = restorer(y, "denoise:gaussian:sigma=auto", samples=4, seed=0)
    u = auto.meta["uncertainty"]
    assert u["cell"].startswith(cal.CAMERA_NOTE) and u["status"] == "approximate"
    assert u["warning"].startswith(cal.CAMERA_CELL_WARNING[:60]) and "likely too narrow" not in u["warning"]
    stated = restorer(y, f"denoise:gaussian:sigma={auto.meta['noise_estimate']['sigma']}", samples=4, seed=0)
    v = stated.meta["uncertainty"]
    assert not v["cell"].startswith(cal.CAMERA_NOTE) and v["self_check"]["verdict"] == "fits the noise"
    assert float((auto.mean - stated.mean).abs().max()) < 0.02  # the stated run imputes the clipped values
    width = lambda p: float(torch.sub(*reversed(p.interval(0.9))).mean())  # noqa: E731
    assert width(auto) > 1.2 * width(stated)
    gauss = restorer(restorer.simulate(x, "denoise:gaussian:sigma=0.1", seed=0), "denoise:gaussian:sigma=auto",
                     samples=4, seed=0)
    assert not gauss.meta["uncertainty"]["cell"].startswith(cal.CAMERA_NOTE)


def test_device_script_plans_the_benchmark_cells_first_and_only_the_families_a_preset_runs(tmp_path):
    # scripts/calibrate_on_device.py: what a lent GPU fits first for the slow paper presets, and the calls it makes
    import argparse
    import importlib.util
    from pathlib import Path

    from restore.train import calibration as tcal

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("calibrate_on_device", root / "scripts" / "calibrate_on_device.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    reddiff = script.cells_for("reddiff")
    assert reddiff[:5] == [("denoise", "0.098039"), ("deblur", "0.01"), ("sr4", None), ("inpaint-random", None),
                           ("inpaint-region", None)]  # the quality benchmark's six tasks
    assert {f for f, _ in script.cells_for("scoredvi")} <= {"denoise", "denoise-camera", "denoise-real"}
    # every grid level of every family the preset runs is planned once
    from restore.solvers import base

    families = set(tcal.supported_families(base.get("reddiff", preset="paper")))
    planned = {(f, round(float(s), 4)) for f, sigmas in reddiff
               for s in (sigmas.split(",") if sigmas else tcal.GRID[f][0])}
    assert planned == {(f, round(s, 4)) for f in families for s in tcal.GRID[f][0]}
    args = argparse.Namespace(device="cuda", runs="r", data="d", threads=2, fit=None, cal=9, heldout=None,
                              crop=None, samples=None)
    # a lease skips the cells the preset's table already holds (RED-Diff's, fitted on this CPU), not the others
    name = "reddiff.score-natural+preset=paper.json"
    table = json.loads(Path(root / "models" / "calibration" / name).read_text())
    shipped = {(c["family"], round(c["sigma"], 4)) for c in table["cells"]}
    assert shipped == planned  # every cell of its grid, the last (2.55/255) since 2026-12-08
    assert script.cells_to_fit("reddiff", argparse.Namespace(tables_dir=None, samples=None)) == []
    # a table holding part of the grid (two cells taken out) leaves exactly those two to the lease
    partial = tmp_path / "partial"
    partial.mkdir()
    gone = {("denoise", 0.01), ("sr4", 0.01)}
    (partial / name).write_text(json.dumps(
        {**table, "cells": [c for c in table["cells"] if (c["family"], round(c["sigma"], 4)) not in gone]}))
    lease = argparse.Namespace(tables_dir=str(partial), samples=None)
    todo = {(f, round(float(s), 4)) for f, sigmas in script.cells_to_fit("reddiff", lease)
            for s in (sigmas.split(",") if sigmas else tcal.GRID[f][0])}
    assert todo == gone
    assert script.cells_to_fit("reddiff", argparse.Namespace(tables_dir=str(tmp_path), samples=None)) == reddiff
    assert script.cells_to_fit("reddiff", argparse.Namespace(tables_dir=None, samples=4)) == reddiff  # other K
    cmd = script.cell_args("reddiff", "deblur", "0.01", args)
    assert cmd[1:] == ["-m", "restore.train.calibration", "--solver", "reddiff", "--options", "preset=paper",
                       "--device", "cuda", "--runs", "r", "--data", "d", "--threads", "2", "--families", "deblur",
                       "--sigmas", "0.01", "--cal", "9"]


def test_the_second_stage_evens_out_coverage_across_the_kernels_of_the_mix(clean_rgb, monkeypatch):
    """Deblurring cells pool kernels whose errors have the same typical size but tails of different reach (here: the
    motion kernels' errors a log-normal multiple of the Gaussian kernels', equal mean log|error|). The first stage
    (least squares of log|error|) cannot tell them apart, so the pooled 90 % multiplier over-covers one shape and
    under-covers the other; the second stage (train.image_stage, on the fit crops' own 90 % score quantiles) moves
    the per-image weights until both shapes cover about the same, and records what it moved."""
    from restore.tasks import parse
    from restore.train import calibration as train

    x = clean_rgb[..., :48, :48]
    units = []
    for role, i in [("fit", k) for k in range(16)] + [("cal", 100 + k) for k in range(32)]:
        spec = train.planned_spec("deblur", 0.01, i)
        g = torch.Generator().manual_seed(i)
        y, _ = parse(spec).simulate(x, g)
        err = 0.02 * torch.randn(x.shape, generator=g)
        if "motion" in spec:
            err = err * torch.exp(0.8 * torch.randn(x.shape, generator=g))
        units.append({"role": role, "index": i, "spec": spec, "x": x, "y": y, "mean": x + err,
                      "spread": torch.full_like(x, 0.01), "solvers": None})
    names = train.feature_names("langevin", "deblur")
    assert {"motion", "log_wiener_motion"} <= set(names)

    def coverage_by_shape(cell):
        lam = cal.calibrated_lambda(cell["scores"], 0.9)
        by = {"gaussian": [], "motion": []}
        for u in units[16:]:
            feats, err, _ = train.unit_signals(u, names)
            score = err / cal.scale_map(cell["weights"], feats)
            by["motion" if "motion" in u["spec"] else "gaussian"].append(float((score <= lam).float().mean()))
        return {k: float(np.mean(v)) for k, v in by.items()}

    two = train.fit_cell(units, 0.01, names=names, family="deblur")
    assert two["image_stage"]["features"] == list(train.IMAGE_STAGE["deblur"])
    assert len(two["image_stage"]["adjustment"]) == 4 and two["image_stage"]["n_images"] == 16
    # the shapes' tails differ, so the signals explain much of the spread of the fit crops' quantiles
    assert two["image_stage"]["r2"] > 0.5 and two["image_stage"]["p_value"] < 0.01
    monkeypatch.setattr(train, "IMAGE_STAGE", {})
    one = train.fit_cell(units, 0.01, names=names, family="deblur")
    assert "image_stage" not in one
    before, after = coverage_by_shape(one), coverage_by_shape(two)
    assert before["gaussian"] - before["motion"] > 0.06, before  # one stage: the light tails over-cover
    assert abs(after["gaussian"] - after["motion"]) < 0.03, after
    assert abs(np.mean(list(after.values())) - 0.9) < 0.04, after  # and the pooled level still holds
