"""The benchmark harness's own machinery: atomic result files and the quality benchmark's per-pair evaluation, serial
and across worker processes (on synthetic images, so no evaluation data is needed)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks import quality
from restore.files import save_atomic, write_json_atomic

DENOISE = "denoise:gaussian:sigma=0.1"
REPO = Path(__file__).resolve().parents[1]


def test_atomic_writes_round_trip_and_leave_no_temporary(tmp_path):
    save_atomic({"w": torch.arange(3)}, tmp_path / "sub" / "a.pt")
    assert torch.equal(torch.load(tmp_path / "sub" / "a.pt")["w"], torch.arange(3))
    write_json_atomic({"rows": [1, 2]}, tmp_path / "r.json")
    assert json.loads((tmp_path / "r.json").read_text()) == {"rows": [1, 2]}
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a.pt", "r.json", "sub"]


def test_failed_atomic_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "r.json"
    write_json_atomic({"rows": [1]}, path)
    with pytest.raises(TypeError):
        write_json_atomic({"rows": [object()]}, path)  # not JSON-serialisable: fails half-way through
    assert json.loads(path.read_text()) == {"rows": [1]}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


@pytest.fixture(scope="module")
def pairs(clean_rgb):
    images = [("a.png", clean_rgb[..., :32, :32]), ("b.png", clean_rgb[..., 16:48, 16:48])]
    methods = {"input": {"baseline": "input"},
               "langevin": {"solver": "langevin", "prior": None, "options": {"iterations": 200}},
               "scoredvi": {"solver": "scoredvi", "prior": None, "options": {}},
               "vble": {"solver": "vble", "prior": None, "options": {"stat_samples": 4, "iterations": 40,
                                                                      "early_stop": None}}}
    todo = [("denoise", DENOISE, m, c) for m, c in methods.items() if m != "scoredvi"]
    return images, methods, todo


def test_evaluate_image_scores_a_solver_above_its_input(pairs):
    images, methods, _ = pairs
    ctx = quality.Context({m: methods[m] for m in ("input", "langevin")}, "cpu")
    for i in range(len(images)):
        noisy = quality.evaluate_image("denoise", DENOISE, "input", methods["input"], images, i, 2, ctx)
        restored = quality.evaluate_image("denoise", DENOISE, "langevin", methods["langevin"], images, i, 2, ctx)
        assert noisy["image"] == images[i][0] and "coverage_90" not in noisy
        assert restored["psnr"] > noisy["psnr"] + 0.5
        assert 0.0 <= restored["coverage_90"] <= 1.0 and restored["seconds"] > 0


def test_evaluate_image_says_why_a_method_cannot_run(pairs):
    images, methods, _ = pairs
    ctx = quality.Context({"scoredvi": methods["scoredvi"]}, "cpu")
    r = quality.evaluate_image("sr", "sr:bicubic:factor=2,noise=0.01", "scoredvi", methods["scoredvi"], images, 0, 2,
                               ctx)
    assert set(r) == {"task", "method", "image", "note"} and r["note"].startswith("n/a:"), r


def test_summarise_averages_images_and_marks_partial_pairs():
    per_image = [{"task": "t", "method": "a", "image": "1", "psnr": 20.0},
                 {"task": "t", "method": "a", "image": "2", "psnr": 22.0},
                 {"task": "t", "method": "b", "image": "1", "psnr": 30.0},
                 {"task": "t", "method": "c", "image": "1", "note": "n/a: no"},
                 {"task": "t", "method": "c", "image": "2", "note": "n/a: no"}]
    rows = quality.summarise(per_image, ["t"], ["c", "b", "a", "d"], 2)
    assert [r["method"] for r in rows] == ["c", "b", "a", "d"]
    assert rows[3]["note"].startswith("not run yet")
    assert rows[0] == {"task": "t", "method": "c", "note": "n/a: no"}
    assert rows[1]["psnr"] == 30.0 and rows[1]["note"] == "1/2 images so far"
    assert rows[2]["psnr"] == 21.0 and "note" not in rows[2]
    # 95 % CI of the mean across images: t(0.975, 1) * sd / sqrt(2) = 12.706 * 1.414 / 1.414
    assert rows[2]["psnr_ci95"] == pytest.approx(12.706, abs=1e-3) and "psnr_ci95" not in rows[1]


def test_parallel_units_match_serial_ones(pairs):
    """--jobs 2 runs each image in one of two processes with one thread; seeded solvers give the same results."""
    images, _, todo = pairs
    # equality, not quality, is asserted: shorter runs than the fixture's
    short = {"langevin": {"iterations": 30}, "vble": {"iterations": 8}}
    units = [(t, s, m, {**c, "options": {**c["options"], **short[m]}} if m in short else c, i) for t, s, m, c in todo
             for i in range(len(images))]
    serial, parallel = [], []
    quality.run_units(units, images, 2, "cpu", 1, serial.append)
    quality.run_units(units, images, 2, "cpu", 2, parallel.append)
    key = {(r["method"], r["image"]): r for r in parallel}
    assert sorted(key) == sorted((r["method"], r["image"]) for r in serial)
    for r in serial:
        assert key[(r["method"], r["image"])]["psnr"] == pytest.approx(r["psnr"], abs=0.05), r


def test_resume_keeps_unchanged_methods_and_reruns_changed_ones(tmp_path):
    path = tmp_path / "q.json"
    settings = {"images": ["1"], "crop": 8, "samples": 2, "tasks": {"t": "denoise:gaussian:sigma=0.1"},
                "methods": {"a": {"solver": "a", "options": {}}, "b": {"solver": "b", "options": {"steps": 3}}}}
    per_image = [{"task": "t", "method": m, "image": "1", "psnr": 20.0} for m in ("a", "b", "gone")]
    path.write_text(json.dumps({**settings, "per_image": per_image, "total_seconds": 5.0}))
    assert quality.previous_results(path, settings) == (per_image[:2], 5.0, [], {}, {}, {})
    changed = {**settings, "methods": {**settings["methods"], "b": {"solver": "b", "options": {"steps": 4}},
                                       "c": {"solver": "c", "options": {}}}}
    prev = quality.previous_results(path, changed)
    assert [r["method"] for r in prev.kept] == ["a"] and prev.changed == ["b"] and prev.seconds == 5.0
    with pytest.raises(SystemExit, match="other settings"):
        quality.previous_results(path, {**settings, "crop": 16})
    assert quality.previous_results(tmp_path / "none.json", settings) == ([], 0.0, [], {}, {}, {})
    # --methods b with --resume: a's results and settings are carried, not dropped
    only_b = {**settings, "methods": {"b": settings["methods"]["b"]}}
    prev = quality.previous_results(path, only_b, carry=["a"])
    assert [r["method"] for r in prev.kept] == ["a", "b"] and prev.carried == {"a": settings["methods"]["a"]}
    # --rerun t: b's results of task t run again (a code change), the carried a's stay
    prev = quality.previous_results(path, only_b, carry=["a"], rerun=["t"])
    assert [r["method"] for r in prev.kept] == ["a"] and prev.stale == {"b": ["--rerun t"]}


def test_resume_reruns_results_whose_solver_defaults_or_weights_changed(tmp_path):
    from dataclasses import asdict

    from restore import stale
    from restore.priors import registry
    from restore.solvers import base

    now = {"solvers": [{"name": "reddiff", "options": {"steps": 3},
                        "config": asdict(base.get("reddiff", steps=3).config)}],
           "priors": {"score-natural@int8": registry.digest("score-natural")}}  # RED-Diff's default int8
    assert stale.reasons(now) == []
    old_default = {**now, "solvers": [{**now["solvers"][0], "config": {**now["solvers"][0]["config"], "lr": 9.0}}]}
    assert stale.reasons(old_default) == ["solver reddiff defaults changed: lr"]
    retrained = {**now, "priors": {"score-natural@int8": "0" * 16}}
    assert stale.reasons(retrained) == ["prior score-natural: files changed"]
    # a per-family default changed for SR leaves denoising results valid (what they ran is unchanged) but not SR's;
    # an explicit option (steps=3 here) still wins over the family's
    cfg = now["solvers"][0]["config"]
    old_sr = {**now, "solvers": [{**now["solvers"][0], "config": {
        **cfg, "per_family": {"sr": {**cfg["per_family"]["sr"], "lambda_": 9.0, "steps": 77}}}}]}
    assert stale.reasons(old_sr, "denoise") == [] and stale.reasons(old_sr, "deblur") == []
    assert stale.reasons(old_sr, "sr") == ["solver reddiff defaults changed: lambda_"]
    assert stale.reasons(old_sr) == ["solver reddiff defaults changed: per_family"]
    assert stale.reasons(old_sr, "inpaint-region") == [] and stale.reasons(old_sr, "sr4") != []
    # an option added since a result was recorded (absent from its config) keeps it valid at the option's default,
    # not where a family's setting departs from it (Langevin's init, 'hqs' for deblurring), nor a new per_family
    from restore.provenance import canonical

    lang = canonical(asdict(base.get("langevin").config))  # as a results file holds it
    added = ("init", "init_options", "per_family")
    before = {"solvers": [{"name": "langevin", "options": {},
                           "config": {k: v for k, v in lang.items() if k not in added}}], "priors": {}}
    assert stale.reasons(before, "denoise") == [] and stale.reasons(before, "inpaint-region") == []
    assert stale.reasons(before, "deblur") == ["solver langevin defaults changed: init"]
    assert stale.reasons(before, "inpaint-random") == ["solver langevin defaults changed: init, init_options"]
    assert stale.reasons(before) == ["solver langevin defaults changed: per_family"]
    # PMRF holds a mean source and its options as one: a row that named mean_options ran the config's mean source,
    # so a change of the family's source (and its options) leaves it valid, as it did not touch that run
    pmrf_options = {"mean_options": {"steps": 5}}
    pmrf_now = canonical(asdict(base.get("pmrf", **pmrf_options).config))
    pmrf_then = {**pmrf_now, "per_family": {**pmrf_now["per_family"],
                                            "deblur": {"mean_source": "reddiff", "mean_options": {"steps": 9}}}}
    assert stale.settings_changed("pmrf", pmrf_now, pmrf_then, pmrf_options, "deblur") == []
    assert stale.settings_changed("pmrf", pmrf_now, pmrf_then, {}, "deblur") == ["mean_options", "mean_source"]
    # an option added with a new default (ScoreDVI's noise estimator): a record without it ran the former value, so
    # it is stale where the option acts (real noise, or a blind reading) and valid where it does not
    sdvi = canonical(asdict(base.get("scoredvi").config))
    sdvi_then = {k: v for k, v in sdvi.items() if k != "noise_estimator"}
    assert stale.settings_changed("scoredvi", sdvi, sdvi_then, {}, "denoise") == []
    assert stale.settings_changed("scoredvi", sdvi, sdvi_then, {}, "denoise-real") == ["noise_estimator"]
    assert stale.settings_changed("scoredvi", sdvi, sdvi_then, {}, None) == ["noise_estimator"]
    blind = canonical(asdict(base.get("scoredvi", noise_level="estimate").config))
    assert stale.settings_changed("scoredvi", blind, {k: v for k, v in blind.items() if k != "noise_estimator"},
                                  {"noise_level": "estimate"}, "denoise") == ["noise_estimator"]
    paper = canonical(asdict(base.get("scoredvi", preset="paper").config))  # the paper's reading: as before
    assert stale.settings_changed("scoredvi", paper, {k: v for k, v in paper.items() if k != "noise_estimator"},
                                  {"preset": "paper"}, "denoise-real") == []
    # an option added at its former behaviour (ScoreDVI's noise prior, "level"): records without it stay valid; the
    # alternative acts on real noise only, and not where beta0 is given (the paper preset's 0.01)
    older = {k: v for k, v in sdvi.items() if k not in ("noise_prior", "noise_prior_scale")}
    assert stale.settings_changed("scoredvi", sdvi, older, {}, "denoise-real") == []
    alt_options = {"noise_prior": "estimate", "noise_prior_scale": 1.0}
    alt = canonical(asdict(base.get("scoredvi", **alt_options).config))
    assert stale.settings_changed("scoredvi", alt, older, alt_options, "denoise") == []
    assert stale.settings_changed("scoredvi", alt, older, alt_options,
                                  "denoise-real") == ["noise_prior", "noise_prior_scale"]
    assert stale.settings_changed("scoredvi", {**alt, "beta0": 0.01}, {**older, "beta0": 0.01},
                                  {**alt_options, "beta0": 0.01}, "denoise-real") == []
    scaled = canonical(asdict(base.get("scoredvi", noise_prior_scale=1.0).config))  # inert under "level"
    assert stale.settings_changed("scoredvi", scaled, sdvi, {"noise_prior_scale": 1.0}, "denoise-real") == []
    # the texture scale (2026-12-06) acts only under noise_prior="local": records without it stay valid
    before_texture = {k: v for k, v in sdvi.items() if k != "noise_prior_texture"}
    assert stale.settings_changed("scoredvi", sdvi, before_texture, {}, "denoise-real") == []
    textured = canonical(asdict(base.get("scoredvi", noise_prior_texture=1.0).config))
    assert stale.settings_changed("scoredvi", textured, sdvi, {"noise_prior_texture": 1.0}, "denoise-real") == []
    local = canonical(asdict(base.get("scoredvi", noise_prior="local").config))
    assert stale.settings_changed("scoredvi", local, sdvi, {"noise_prior": "local"}, "denoise-real") == ["noise_prior"]
    from restore.tasks import parse

    assert parse("denoise:real").family == "denoise-real" and parse("denoise:gaussian:sigma=0.1").family == "denoise"
    assert quality._family("sr:bicubic:factor=4,noise=0.01") == "sr4" and quality._family("blur:oops") is None
    assert quality._family("inpaint:box:size=0.3") == "inpaint-region"

    table_ = {}
    rows = [quality.intern_provenance({"task": "t", "method": m, "image": "1", "psnr": 20.0, "provenance": p},
                                      table_) for m, p in (("a", now), ("b", old_default), ("c", now))]
    rows.append({"task": "t", "method": "legacy", "image": "1", "psnr": 20.0})  # from before provenance: kept
    in_float = {**now, "priors": {"score-natural": registry.digest("score-natural")}}  # before the int8 default
    rows.append(quality.intern_provenance({"task": "t", "method": "d", "image": "1", "psnr": 20.0,
                                           "provenance": in_float}, table_))
    assert rows[0]["provenance"] == rows[2]["provenance"] and len(table_) == 3
    settings = {"images": ["1"], "crop": 8, "samples": 2, "tasks": {"t": "denoise:gaussian:sigma=0.1"},
                "methods": {m: {"solver": "reddiff", "options": {}} for m in ("a", "b", "c", "legacy", "d")}}
    path = tmp_path / "q.json"
    path.write_text(json.dumps({**settings, "per_image": rows, "provenances": table_, "total_seconds": 1.0}))
    prev = quality.previous_results(path, settings)
    assert [r["method"] for r in prev.kept] == ["a", "c", "legacy"]
    assert prev.stale == {"b": ["solver reddiff defaults changed: lr"], "d": ["the solver now runs its prior as int8"]}
    assert list(prev.provenances) == [rows[0]["provenance"]]


def test_cards_that_saw_an_evaluation_set_are_refused(tmp_path, monkeypatch):
    from benchmarks.common import check_cards_exclude

    check_cards_exclude("CBSD68", ["score-natural", "flow-natural", "tokens-natural"])  # the shipped cards are clean
    monkeypatch.setenv("RESTORE_MODELS", str(tmp_path))
    card = {"name": "flow-natural", "training_data": "BSD432-train (423 images)",
            "euler_steps_calibration": {"images": ["BSD432-train/1.png"]}}
    write_json_atomic(card, tmp_path / "flow-natural.json")
    check_cards_exclude("CBSD68", ["flow-natural"])
    card["euler_steps_calibration"]["images"] = ["CBSD68/101085.png"]
    write_json_atomic(card, tmp_path / "flow-natural.json")
    with pytest.raises(SystemExit, match="calibrated on an evaluation set"):
        check_cards_exclude("CBSD68", ["flow-natural"])
    write_json_atomic({"training_data": "CBSD68"}, tmp_path / "flow-natural.json")
    with pytest.raises(SystemExit, match="in its training data"):
        check_cards_exclude("CBSD68", ["flow-natural"])


def test_speed_rerun_of_some_solvers_keeps_the_others_rows():
    from benchmarks.speed import merge_rows

    settings = {"task": "denoise", "sizes": [128], "fraction": 0.1, "device": "cpu", "threads": 2}
    old = {**settings, "command": "python -m benchmarks.speed --quick",
           "rows": [{"solver": "vble", "size": 128, "seconds_K1": 3.0}, {"solver": "pmrf", "size": 128, "seconds_K1": 2.0}]}
    new = [{"solver": "pmrf", "size": 128, "seconds_K1": 0.5}]
    rows, sources = merge_rows(old, new, ["pmrf"], settings)
    assert {r["solver"]: r["seconds_K1"] for r in rows} == {"vble": 3.0, "pmrf": 0.5}
    assert sources == [{"command": "python -m benchmarks.speed --quick", "date": None}]
    # other settings (here the thread count): the old rows are not comparable and are dropped
    rows, sources = merge_rows(old, new, ["pmrf"], {**settings, "threads": 1})
    assert rows == new and sources == []
    assert merge_rows(None, new, ["pmrf"], settings) == (new, [])


@pytest.mark.parametrize("spec,methods", [
    ("denoise:gaussian:sigma=0.1", ("wiener", "tv")),
    ("deblur:gaussian:sigma=1.5,noise=0.01", ("wiener", "tv")),
    ("sr:bicubic:factor=2,noise=0.01", ("tv",)),
    ("inpaint:random:missing=0.5,noise=0.01", ("tv",)),
])
def test_classical_baselines_beat_the_degraded_input(clean_rgb, spec, methods):
    from benchmarks import classical
    from restore import metrics
    from restore.tasks import parse

    task = parse(spec)
    y, physics = task.simulate(clean_rgb, torch.Generator().manual_seed(0))
    base = y if y.shape == clean_rgb.shape else torch.nn.functional.interpolate(y, scale_factor=task.scale,
                                                                                mode="bicubic").clamp(0, 1)
    for m in methods:
        assert classical.supports(m, task.kind) is None
        est = classical.ESTIMATORS[m](y, physics, iterations=60) if m == "tv" else classical.wiener(y, physics)
        assert est.shape == clean_rgb.shape and 0 <= float(est.min()) and float(est.max()) <= 1
        assert float(metrics.psnr(est, clean_rgb)) > float(metrics.psnr(base, clean_rgb)) + 0.3, m
    if "wiener" not in methods:
        assert "applies to denoise and deblur tasks only" in classical.supports("wiener", task.kind)


def test_classical_weights_pick_the_best_of_a_family():
    from benchmarks.classical import family_weights

    scan = {"tv": {"a": {"family": "deblur", "psnr": {1.0: 20.0, 10.0: 22.0}},
                   "b": {"family": "deblur", "psnr": {1.0: 25.0, 10.0: 24.5}},
                   "c": {"family": "sr", "psnr": {1.0: 20.0, 10.0: 19.0}}}}
    assert family_weights(scan) == {"tv": {"deblur": 10.0, "sr": 1.0}}


def test_quality_run_answers_unrunnable_units_at_once_and_a_methods_rerun_keeps_the_rest(tmp_path, monkeypatch):
    import numpy as np

    from conftest import make_image_folder

    make_image_folder(tmp_path / "CBSD68", 1, 40, 40)
    (tmp_path / "kernels").mkdir()
    k = np.exp(-0.5 * (np.arange(-3, 4)[:, None] ** 2 + np.arange(-3, 4)[None] ** 2))
    np.save(tmp_path / "kernels" / "gaussian_std1.npy", k / k.sum())
    monkeypatch.setenv("RESTORE_DATA", str(tmp_path))
    out = tmp_path / "q.json"
    common = ["--subset", "all", "--crop", "32", "--samples", "2", "--tasks", "deblur_gauss1", "--out", str(out)]
    # scoredvi cannot deblur: its row says so without a worker ever starting it (the parallel path answers it)
    quality.main(common + ["--methods", "input", "wiener-hunt", "scoredvi", "--jobs", "2"])
    first = json.loads(out.read_text())
    rows = {r["method"]: r for r in first["rows"]}
    assert rows["scoredvi"]["note"].startswith("n/a:") and rows["wiener-hunt"]["psnr"] > rows["input"]["psnr"]
    assert first["complete"] is True
    quality.main(common + ["--methods", "tv least squares", "--resume"])
    second = json.loads(out.read_text())
    assert list(second["methods"]) == ["input", "scoredvi", "wiener-hunt", "tv least squares"]
    assert {r["method"] for r in second["per_image"]} == {"input", "scoredvi", "wiener-hunt", "tv least squares"}
    kept = {r["method"]: r for r in second["per_image"]}
    assert kept["wiener-hunt"]["psnr"] == rows["wiener-hunt"]["psnr"]
    with pytest.raises(SystemExit, match="unknown method"):
        quality.main(common + ["--methods", "no such method"])


def test_quality_on_another_set_spreads_its_images_and_records_the_set(tmp_path, monkeypatch):
    from benchmarks import report
    from conftest import make_image_folder

    make_image_folder(tmp_path / "Photos", 4, 40, 40)
    monkeypatch.setenv("RESTORE_DATA", str(tmp_path))
    out = tmp_path / "q.json"
    common = ["--set", "Photos", "--images", "2", "--crop", "32", "--samples", "2", "--tasks", "denoise25",
              "--methods", "input", "--out", str(out)]
    quality.main(common)
    data = json.loads(out.read_text())
    files = sorted(p.name for p in (tmp_path / "Photos").iterdir())
    assert data["set"] == "Photos" and data["images"] == [files[0], files[2]]
    assert "Photos crops" in report._quality(data)
    make_image_folder(tmp_path / "CBSD68", 2, 40, 40)
    with pytest.raises(SystemExit, match="other settings"):  # a CBSD68 run cannot resume a file of another set
        quality.main([a for a in common if a not in ("--set", "Photos")] + ["--subset", "all", "--resume"])


def _real_pairs(root, clean: torch.Tensor, shift_noisy: bool = False):
    """A CC15-like folder of two noisy/clean pairs whose noise is spatially correlated (blurred), like camera noise."""
    from restore.io import write_image

    g = torch.Generator().manual_seed(0)
    for sub in ("noisy", "clean"):
        (root / "CC15" / sub).mkdir(parents=True, exist_ok=True)
    for k, name in enumerate(("a.png", "b.png")):
        x = torch.roll(clean, shifts=8 * k, dims=-1)
        n = torch.nn.functional.avg_pool2d(torch.randn(x.shape, generator=g), 3, 1, 1, count_include_pad=False)
        y = (x + 0.25 * n).clamp(0, 1)  # blurred unit noise has std ~1/3, so about 0.08
        write_image(root / "CC15" / "clean" / name, x[0].permute(1, 2, 0).numpy())
        y = y[..., :40, :] if shift_noisy and k else y  # the second pair's shapes differ
        write_image(root / "CC15" / "noisy" / name, y[0].permute(1, 2, 0).numpy())


def test_realnoise_beats_the_noisy_photo_records_the_estimate_and_resumes(tmp_path, monkeypatch, capsys, clean_rgb):
    from benchmarks import realnoise

    _real_pairs(tmp_path / "data", clean_rgb)
    monkeypatch.setenv("RESTORE_DATA", str(tmp_path / "data"))
    out = tmp_path / "rn.json"
    args = ["--sets", "CC15", "--crop", "48", "--methods", "input", "vble (sigma estimated)", "--out", str(out)]
    realnoise.main(args)
    data = json.loads(out.read_text())
    rows = {r["method"]: r for r in data["rows"]}
    assert data["complete"] and data["pairs"] == ["CC15/a.png", "CC15/b.png"] and len(data["per_image"]) == 4
    assert rows["vble (sigma estimated)"]["psnr"] > rows["input"]["psnr"] + 1.0
    assert 0.0 < rows["vble (sigma estimated)"]["coverage_90"] <= 1.0
    for r in data["per_image"]:  # the estimate and the true residual std, on the /255 scale
        assert 5 < r["sigma_true_255"] < 40 and 0 < r["sigma_estimated_255"] < 60
    capsys.readouterr()
    realnoise.main(args + ["--resume"])  # nothing left to run: the four results are kept
    printed = capsys.readouterr().out
    assert "resuming: 4 results kept" in printed and "PSNR " not in printed  # a unit run prints "PSNR xx.xx"
    realnoise.main(args[:4] + ["--methods", "pmrf (oracle sigma)", "--out", str(out), "--resume", "--jobs", "2"])
    data = json.loads(out.read_text())  # a --methods run adds its rows and keeps the others'
    assert sorted(data["methods"]) == ["input", "pmrf (oracle sigma)", "vble (sigma estimated)"]
    assert len(data["per_image"]) == 6 and data["complete"]
    oracle = [r for r in data["per_image"] if r["method"] == "pmrf (oracle sigma)"]
    assert all(r["sigma_used_255"] == pytest.approx(r["sigma_true_255"], abs=1e-3) for r in oracle)
    # the product's estimate (restore.noise, through sigma=auto), not ScoreDVI's: on 48 px of a face it reads the
    # texture too (1.4x here), but it is the level the row ran at
    for r in data["per_image"]:
        if r["method"] == "vble (sigma estimated)":
            assert 0.6 < r["sigma_used_255"] / r["sigma_true_255"] < 1.6, r
    with pytest.raises(SystemExit, match=r"other settings \(crop\)"):
        realnoise.main(args[:3] + ["32"] + args[4:] + ["--resume"])
    one = tmp_path / "one.json"  # --per-set: evenly spaced pairs of each set
    realnoise.main(["--sets", "CC15", "--crop", "32", "--per-set", "1", "--methods", "input", "--out", str(one)])
    assert json.loads(one.read_text())["pairs"] == ["CC15/a.png"]
    with pytest.raises(SystemExit, match="--quick has its own"):
        realnoise.main(["--quick", "--per-set", "1", "--methods", "input", "--out", str(one)])
    _real_pairs(tmp_path / "bad", clean_rgb, shift_noisy=True)
    monkeypatch.setenv("RESTORE_DATA", str(tmp_path / "bad"))
    with pytest.raises(SystemExit, match="b.png: noisy .* and clean .* differ in shape"):
        realnoise.main(args)


def test_realnoise_gives_scoredvi_the_sets_noise_prior(clean_rgb):
    from benchmarks import realnoise

    y = (clean_rgb + 0.05 * torch.randn(clean_rgb.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    cfg = {"solver": "scoredvi", "task": "real", "options": {"iterations": 5, "mc_samples": 1, "restart_std": None}}
    r = realnoise.evaluate_pair("scoredvi", cfg, realnoise.make_pair("SIDD-val-80", "p.png", y, clean_rgb), 2, 0, {})
    assert r["provenance"]["solvers"][0]["config"]["beta0"] == 0.02 and "coverage_90" in r and "psnr" in r


def test_recorded_command_quotes_arguments_with_spaces(monkeypatch):
    from benchmarks import common

    script = str(common.REPO / "benchmarks" / "realnoise.py")
    monkeypatch.setattr("sys.argv", [script, "--methods", "vble (oracle sigma)"])
    assert common.command_line() == "python -m benchmarks.realnoise --methods 'vble (oracle sigma)'"
    monkeypatch.setattr("sys.argv", [str(common.REPO / "benchmarks" / "quality.py")])
    assert common.command_line() == "python -m benchmarks.quality"


def test_pareto_reads_settings_the_quality_file_holds_and_runs_the_rest():
    from benchmarks import pareto

    quality = {"methods": {"reddiff (paper: 100 steps)": {"solver": "reddiff", "prior": None, "full_only": True,
                                                          "options": {"preset": "paper"}},
                           "diffpir (score-natural)": {"baseline": "diffpir", "max_iter": 100}},
               "per_image": [{"method": "reddiff (paper: 100 steps)", "task": "sr4", "image": "a.png", "psnr": 25.0},
                             {"method": "other", "task": "sr4", "image": "a.png", "psnr": 1.0}]}
    paper = pareto.method_config("reddiff", dict(pareto.SETTINGS["reddiff"])["paper"])
    name, rows = pareto.from_quality_file(quality, paper)
    assert name == "reddiff (paper: 100 steps)" and [r["psnr"] for r in rows] == [25.0]
    assert pareto.from_quality_file(quality, pareto.method_config("reddiff", {"options": {"steps": 15}})) == (None, [])
    diffpir = dict(pareto.SETTINGS["diffpir (deepinv)"])["100 steps"]
    assert pareto.from_quality_file(quality, pareto.method_config("diffpir", diffpir))[0] == "diffpir (score-natural)"
    # every solver's settings go from a fast one to the paper's, and each names a registered solver or a baseline
    from restore.solvers import base
    for solver, settings in pareto.SETTINGS.items():
        assert "paper" in settings[-1][0] or "100 steps" in settings[-1][0], solver
        assert solver.split(" ")[0] in base.names() or "baseline" in settings[0][1]


def test_speed_targets_are_compared_in_forward_units(monkeypatch):
    """A solver meets its target when its seconds, divided by this machine's forward time, fit the target's
    forwards; a machine twice as slow is not held to the reference machine's seconds."""
    import numpy as np
    import torch

    from benchmarks import speed

    monkeypatch.setattr(speed, "forward_seconds", lambda size=256: 2 * speed.REFERENCE_FORWARD_S)
    photo = torch.rand(1, 3, 80, 80)
    result = speed.targets(["pmrf"], photo, size=64, samples=2)
    rows = {r["task"]: r for r in result["rows"]}
    assert set(rows) == {"denoise25", "deblur_gauss1"}
    for r in rows.values():
        assert abs(r["forwards"] - r["seconds"] / (2 * speed.REFERENCE_FORWARD_S)) < 0.1
        assert r["meets"] == (r["forwards"] <= 10 / speed.REFERENCE_FORWARD_S + 0.05)
        assert np.isfinite(r["psnr"]) and r["target_s"] == 10


def test_priors_status_reads_cards_and_prior_benchmarks(tmp_path, monkeypatch):
    """benchmarks.priors: one row per shipped prior with its gap to the target, taken from the benchmark files (a
    denoiser below DnCNN gives a negative gap), and the cards' validation curves continued by a fine-tune's log."""
    from benchmarks import priors

    results = tmp_path / "results"
    results.mkdir()
    (results / "denoiser.json").write_text(json.dumps({"rows": [
        {"sigma_255": s, "psnr": p, "DnCNN (published)": d} for s, p, d in [(15, 33.8, 33.9), (25, 31.3, 31.24),
                                                                            (50, 27.7, 27.95)]]}))
    monkeypatch.setattr(priors, "RESULTS", results)
    models = tmp_path / "models"
    models.mkdir()
    (models / "score-natural.json").write_text(json.dumps({"steps": 3000, "validation_log": [
        {"step": 1000, "val_psnr": {"25": 28.0}}, {"step": 2000, "val_psnr": {"25": 29.0}}]}))
    (models / "cae-natural-q2.json").write_text(json.dumps({
        "validation_log": [{"step": 1000, "psnr": 24.0, "bpp": 0.3}],
        "fine_tune": {"validation_log": [{"step": 500, "psnr": 25.0, "bpp": 0.31}]}}))
    (models / "flow-natural.json").write_text(json.dumps({"validation_log": [{"step": 100, "psnr_flow": 27.0}]}))
    (models / "tokens-natural.json").write_text(json.dumps({"steps": {"tokenizer": 80, "transformer": 90},
                                                            "held_out_64px": {"tokenizer_psnr": 26.9}}))
    extra = tmp_path / "not_shipped.json"  # a continuation that was measured but not shipped
    extra.write_text(json.dumps({"curves": [{"prior": "flow-natural", "what": "longer, flat (see log)",
                                             "measure": "held-out 25-step flow PSNR at 25/255 (dB)",
                                             "command": "python -m restore.train.flow", "source": "log",
                                             "points": [[100, 27.0], [200, 26.9]]}]}))
    monkeypatch.setattr(priors, "NOT_SHIPPED", extra)
    rows = priors.main(["--models", str(models), "--out", str(tmp_path / "priors.json")])
    assert [r["prior"] for r in rows] == ["score-natural", "cae-natural-q2", "cae-natural-q4", "cae-natural-q6",
                                          "flow-natural", "tokens-natural"]
    assert rows[0]["gap_db"] == -0.25 and "33.80 / 31.30 / 27.70" in rows[0]["now"]
    assert all(r["continue_with"].startswith("python -m restore.train.") and r["limited_by"] for r in rows)
    # no benchmark file: said, not invented
    assert rows[4]["gap_db"] is None and rows[2]["now"] == rows[4]["now"] == "not measured"
    saved = json.loads((tmp_path / "priors.json").read_text())
    assert saved["curves"]["cae-natural-q2: held-out PSNR (dB)"] == [[1000, 24.0], [1500, 25.0]]
    assert saved["curves"]["tokens-natural: held-out tokenizer PSNR at 64 px (dB)"] == [[80, 26.9]]
    flow = "flow-natural: held-out 25-step flow PSNR at 25/255 (dB)"
    assert saved["curves"][flow] == [[100, 27.0]]  # the continuation is drawn beside it, not merged into it
    assert saved["not_shipped"][flow][0]["points"] == [[100, 27.0], [200, 26.9]]
    assert (tmp_path / "priors_curves.png").is_file()


def test_uncertainty_rerun_drops_only_the_named_tasks_of_the_solvers_run():
    from benchmarks import uncertainty

    units = [{"set": "s", "solver": sv, "task": t, "image": "1"} for sv in ("pmrf", "vble")
             for t in ("inpaint_box", "sr4")]
    kept = uncertainty.kept_units(units, ["inpaint_box"], ["pmrf"])
    assert [(u["solver"], u["task"]) for u in kept] == [("pmrf", "sr4"), ("vble", "inpaint_box"), ("vble", "sr4")]
    assert uncertainty.kept_units(units, [], ["pmrf"]) == units


def test_uncertainty_rerun_keeps_the_rows_of_a_set_this_run_skips():
    # a --rerun without CQ100's folder (or with --sets naming others) must not drop that set's finished rows
    from benchmarks import uncertainty

    units = [{"set": s, "solver": "vble", "task": "denoise25", "image": "1"} for s in ("CBSD68", "CQ100")]
    kept = uncertainty.kept_units(units, ["denoise25"], ["vble"], ["CBSD68"])
    assert [u["set"] for u in kept] == ["CQ100"]


def test_uncertainty_rows_of_a_preset_carry_its_options_and_rerun_apart_from_the_defaults():
    from benchmarks import uncertainty

    labels = uncertainty.solver_labels(["pmrf", "vble"], {"preset": "paper"})
    assert labels == {"pmrf": "pmrf (preset=paper)", "vble": "vble (preset=paper)"}
    assert uncertainty.solver_labels(["pmrf"], {}) == {"pmrf": "pmrf"}
    units = [{"set": "CBSD68", "solver": sv, "task": "sr4", "image": "1"} for sv in ("pmrf", labels["pmrf"])]
    kept = uncertainty.kept_units(units, ["sr4"], [labels["pmrf"]])  # a preset's rerun leaves the defaults' rows
    assert [u["solver"] for u in kept] == ["pmrf"]


def test_paired_comparison_pairs_images_and_counts_wins():
    from benchmarks.common import paired_against

    per_image = [{"task": "t", "method": m, "image": i, "psnr": p}
                 for m, ps in {"tv": [20.0, 25.0, 30.0], "ours": [21.0, 25.5, 29.9], "input": [10.0, 11.0, 12.0]}.items()
                 for i, p in zip("abc", ps)]
    per_image.append({"task": "t", "method": "ours", "image": "d", "psnr": 99.0})  # no TV result: not paired
    (row,) = paired_against(per_image, "tv")
    assert row["method"] == "ours" and row["images"] == 3 and row["wins"] == 2
    assert abs(row["psnr_difference"] - (1.0 + 0.5 - 0.1) / 3) < 1e-9
    # the paired interval ignores the 10 dB spread between images that separate means would carry
    assert 0 < row["ci95"] < 3


def test_pareto_rerun_drops_only_the_named_tasks_of_the_named_solvers():
    from benchmarks.pareto import rerun_unit

    unit = {"task": "inpaint_box", "method": "reddiff: 15 steps", "image": "a"}
    assert rerun_unit(unit, ["inpaint_box"], None) and rerun_unit(unit, ["inpaint_box"], ["reddiff"])
    assert not rerun_unit(unit, ["inpaint_box"], ["pmrf"])
    assert not rerun_unit(unit, ["sr4"], None) and not rerun_unit(unit, [], None)
    assert not rerun_unit({**unit, "method": "diffpir (deepinv): 8 steps"}, ["inpaint_box"], ["diffpir"])


def test_pareto_resume_finds_results_a_default_change_made_stale():
    """A kept result reruns when its setting would now run differently (APS's deblurring start moved to a Wiener
    deconvolution), not when the setting fixes the option whose default moved (its explicit lr) or for other tasks."""
    import dataclasses

    from benchmarks.common import tasks
    from benchmarks.pareto import stale_unit
    from restore.provenance import canonical
    from restore.solvers import base

    options = {"steps": 4, "inner_steps": 6, "lr": 0.3}
    now = canonical(dataclasses.asdict(base.get("aps", **options).config))
    before = {k: v for k, v in now.items() if k not in ("init_estimate", "per_family")}  # recorded before both
    unit = {"method": "aps: 4 x 6 steps, lr 0.3", "image": "a",
            "provenance": {"solvers": [{"name": "aps", "options": {"steps": 4, "inner_steps": 6}, "config": before}],
                           "priors": {}}}
    specs = tasks()
    assert stale_unit({**unit, "task": "deblur_motion"}, specs, options) == ["solver aps defaults changed: init_estimate"]
    assert stale_unit({**unit, "task": "denoise25"}, specs, options) == []
    assert stale_unit({**unit, "task": "denoise25"}, specs, {"steps": 4, "inner_steps": 6}) != []  # lr now 1.0


def test_pareto_for_some_solvers_keeps_the_other_solvers_rows():
    """`--solvers pmrf` reruns PMRF's settings only; the other solvers' kept results still make their rows (a run
    once dropped them all from pareto.json and its plot)."""
    from benchmarks import pareto

    quality = {"methods": {}, "per_image": []}
    specs = {"sr4": "sr:bicubic:factor=4,noise=0.01"}
    images = [("a.png", None), ("b.png", None)]
    kept = [{"method": "vble: paper", "task": "sr4", "image": "a.png", "psnr": 24.0}]
    points, todo = pareto.plan(quality, kept, specs, images, ["pmrf"])
    assert "vble: paper" in [p["method"] for p in points]
    assert "vble: default (early stop)" not in [p["method"] for p in points]  # no results kept, not run: no row
    assert {u[2].split(":")[0] for u in todo} == {"pmrf"} and len(todo) == 2 * len(pareto.SETTINGS["pmrf"])
    everything = pareto.plan(quality, kept, specs, images)[1]
    assert ("sr4", specs["sr4"], "vble: paper", pareto.method_config("vble", {"options": {"preset": "paper"}}), 1) \
        in everything and all(u[2] != "vble: paper" or u[4] == 1 for u in everything)


def test_a_second_run_on_the_same_results_file_is_refused(tmp_path):
    """Two runs rewriting one results file would each drop the other's finished units: the second is refused."""
    import subprocess
    import sys

    from benchmarks.common import hold_results_lock

    target = tmp_path / "quality.json"
    hold_results_lock(target)  # this process now holds it
    code = ("import sys; from benchmarks.common import hold_results_lock\n"
            f"hold_results_lock({str(target)!r})")
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert other.returncode != 0 and "another run is writing" in other.stderr and str(target) in other.stderr
    free = subprocess.run([sys.executable, "-c", code.replace("quality.json", "other.json")], cwd=REPO)
    assert free.returncode == 0


@pytest.fixture
def held_out_photos(tmp_path, monkeypatch):
    """$RESTORE_DATA pointing at a BSD432-train folder of two scikit-image crops (the benchmarks' held-out files)."""
    import skimage.data

    from restore.io import write_image

    train = tmp_path / "data" / "BSD432-train"
    photos = (("a.png", skimage.data.astronaut()[100:196, 150:246]), ("b.png", skimage.data.coffee()[:96, :96]))
    for name, img in photos:
        write_image(train / name, img.astype(np.float32) / 255)
    monkeypatch.setenv("RESTORE_DATA", str(tmp_path / "data"))
    return train


def test_lownoise_compares_each_estimate_with_the_input_and_the_denoiser(tmp_path, held_out_photos):
    from benchmarks import lownoise

    out = tmp_path / "low.json"
    lownoise.main(["--images", "2", "--crop", "64", "--levels", "5", "50", "--solvers", "pmrf", "--samples", "2",
                   "--out", str(out)])
    row = json.loads(out.read_text())["rows"][0]
    assert row["sigma_255"] == 5 and row["D(y)"] > row["input"] + 2
    assert row["pmrf"] == pytest.approx(row["D(y)"], abs=0.3)  # PMRF's denoising estimate is its D(y) stage
    assert "pmrf flow average" in row
    # --add joins another solver's column onto the same rows, and refuses rows measured on other crops
    lownoise.main(["--images", "2", "--crop", "64", "--levels", "5", "--solvers", "vble", "--samples", "2",
                   "--out", str(out), "--add"])
    joined, untouched = json.loads(out.read_text())["rows"]
    assert untouched["sigma_255"] == 50 and "vble" not in untouched  # a level not run here keeps its row
    assert joined["pmrf"] == row["pmrf"] and joined["input"] == row["input"] and joined["vble"] > 20
    with pytest.raises(SystemExit, match="other files, crop or samples"):
        lownoise.main(["--images", "2", "--crop", "48", "--levels", "5", "--solvers", "vble", "--samples", "2",
                       "--out", str(out), "--add"])


def test_saturated_compares_natural_and_colour_pushed_crops(tmp_path, held_out_photos):
    from benchmarks import saturated

    x = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 0.2 + 0.4  # no clipping at x2
    pushed = saturated.saturate(x, 0, 2.0)
    grey = x.mean(1, keepdim=True)
    assert torch.allclose(pushed.mean(1, keepdim=True), grey, atol=1e-5)  # grey kept, chroma doubled
    assert float((pushed - grey).norm()) == pytest.approx(2 * float((x - grey).norm()), rel=1e-4)
    assert not torch.equal(saturated.saturate(x, 0, 1.0), saturated.saturate(x, 1, 1.0))  # another permutation
    out = tmp_path / "sat.json"
    saturated.main(["--images", "1", "--crop", "64", "--tasks", "sr4", "--samples", "2", "--prior", "cae-natural-q4",
                    "--out", str(out)])
    result = json.loads(out.read_text())
    assert result["vble_prior"] == {"sr4": "cae-natural-q4"}  # per task: VBLE picks its rate per task when none is named
    rows = {r["set"]: r for r in result["rows"]}
    assert set(rows) == {"natural", "saturated"}
    for row in rows.values():
        assert 15 < row["sr4 vble"] < 45 and 0 <= row["sr4 vble cov90"] <= 1
        assert row["sr4 vble calibrated"] == 1.0  # the shipped q4 has its table
        assert row["cae-natural-q2 bpp"] > 0 and row["cae-natural-q2 psnr"] > 20
    assert rows["saturated"]["sr4 input"] != rows["natural"]["sr4 input"]


def test_summary_row_averages_only_metrics_every_result_has():
    from benchmarks.common import summary_row

    results = [{"psnr": 30.0, "coverage_90": 0.9, "coverage_90_raw": 0.5}, {"psnr": 32.0, "coverage_90": 0.8}]
    row = summary_row({"task": "t", "method": "m"}, results, n=3)
    assert row["psnr"] == 31.0 and row["coverage_90"] == pytest.approx(0.85)
    assert "coverage_90_raw" not in row and row["note"] == "2/3 images so far"


def test_user_masks_are_seeded_and_shaped_as_documented(tmp_path, monkeypatch):
    from PIL import Image

    from benchmarks import masks
    from restore.tasks import REGION_RADIUS, hole_radius

    monkeypatch.setattr(masks, "FOLDER", tmp_path)
    for kind, (low, high) in {"strokes": (0.05, 0.3), "ellipses": (0.03, 0.1)}.items():
        path = masks.mask_file(kind, 128)
        m = np.array(Image.open(path)) > 0
        assert m.shape == (128, 128) and low < 1 - m.mean() < high, kind
        assert np.array_equal(masks.KINDS[kind](128) > 0, m)  # the same pixels from the seed
        assert not np.array_equal(masks.KINDS[kind](128, seed=1) > 0, m)
    # strokes are thin: every missing pixel within a few px of an observed one, unlike a box
    assert hole_radius(torch.from_numpy(masks.strokes(128)).float()) <= REGION_RADIUS
