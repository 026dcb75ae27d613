import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from restore import cli, io
from restore.batch import image_seed

runner = CliRunner()
FAST = ["-s", "langevin", "-O", "iterations=20", "-n", "2"]  # batch plumbing, not a solver, is tested here


def invoke(*args):
    argv = [str(a) for a in args]
    if argv and argv[0] not in cli.SUBCOMMANDS:
        argv.insert(0, "run")
    return runner.invoke(cli.app, argv)


@pytest.fixture
def folder(tmp_path, clean_rgb, clean_grey):
    d = tmp_path / "in"
    io.write_image(d / "a.png", clean_rgb)
    io.write_image(d / "sub" / "b.png", clean_grey)
    io.write_image(d / "sub" / "c.jpg", clean_rgb)
    (d / "sub" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (d / "notes.txt").write_text("not an image, not globbed")
    return d


def test_no_solver_named_runs_the_recommended_one_and_says_why(tmp_path, folder):
    out = tmp_path / "out"
    r = invoke(folder / "a.png", "--simulate", "-t", "sr:bicubic:factor=2,noise=0.01", "-o", out, "-n", "2")
    assert r.exit_code == 0, r.output
    assert r.output.startswith("solver pmrf: best at x2")  # x2 SR's own entry, not the SR family's (reddiff)
    assert json.loads((out / "meta.json").read_text())["solver"] == "pmrf"


def test_single_image_simulate(tmp_path, folder):
    out = tmp_path / "out"
    r = invoke(folder / "a.png", "--simulate", "-t", "denoise:gaussian:sigma=0.1", "-o", out, *FAST)
    assert r.exit_code == 0, r.output
    assert "psnr=" in r.output
    for f in ("mean.png", "observation.png", "std.png", "std.npy", "std_scale.json", "samples/sample_001.png"):
        assert (out / f).exists(), f
    meta = json.loads((out / "meta.json").read_text())
    assert meta["metrics"]["psnr"] > meta["metrics"]["psnr_input"]


def test_single_image_errors(tmp_path, folder):
    r = invoke(folder / "sub" / "corrupt.png", "-t", "denoise:gaussian:sigma=0.1", "-o", tmp_path / "o")
    assert r.exit_code == 2 and "cannot read" in r.output
    assert not (tmp_path / "o").exists()  # nothing partial left behind
    r = invoke(folder / "a.png", "-t", "denoise:gaussian:sigma=0.1", "-s", "magic")
    assert r.exit_code == 2 and "unknown solver 'magic'" in r.output
    r = invoke(folder / "a.png", "-t", "denoise:gaussian:sigma=0.1", "-O", "bad")
    assert r.exit_code != 0
    r = invoke(folder / "a.png", "-t", "denoise:gaussian:sigma=0.1", "-s", "vble", "-O", "prior=cae-natural-q2")
    assert r.exit_code == 2 and "--prior" in r.output


def test_auto_noise_level_is_estimated_printed_and_kept(tmp_path, folder):
    out = tmp_path / "sim"
    r = invoke(folder / "a.png", "--simulate", "-t", "denoise:gaussian:sigma=0.1", "-o", out, *FAST)
    assert r.exit_code == 0, r.output
    r = invoke(out / "observation.png", "-t", "denoise:gaussian:sigma=auto", "-o", tmp_path / "auto", *FAST)
    assert r.exit_code == 0, r.output
    assert "noise level estimated from the image: sigma=" in r.output
    meta = json.loads((tmp_path / "auto" / "meta.json").read_text())
    assert 0.05 < meta["noise_estimate"]["sigma"] < 0.2  # a 48 px crop: texture reads as some noise
    r = invoke(folder / "a.png", "--simulate", "-t", "denoise:gaussian:sigma=auto", "-o", tmp_path / "x", *FAST)
    assert r.exit_code == 2 and "cannot be simulated" in r.output


def test_max_megapixels_refuses_or_admits_an_image(tmp_path, folder, monkeypatch):
    monkeypatch.setenv(io.LIMIT_ENV, "")  # the CLI sets it in this process: undone after the test
    n = io.read_image(folder / "a.png").shape[-1] * io.read_image(folder / "a.png").shape[-2]
    small = n / 2e6
    r = invoke(folder / "a.png", "-t", "denoise:gaussian:sigma=0.1", "-o", tmp_path / "o", "--max-megapixels", small)
    assert r.exit_code == 2 and "over the limit" in r.output and "--max-megapixels" in r.output
    assert not (tmp_path / "o").exists()
    r = invoke(folder / "a.png", "-t", "denoise:gaussian:sigma=0.1", "-o", tmp_path / "o", "--max-megapixels", 0)
    assert r.exit_code == 2 and "--max-megapixels must be a positive number" in r.output
    r = invoke("batch", folder, tmp_path / "b", "-t", "denoise:gaussian:sigma=0.1", "--max-megapixels", small, *FAST)
    assert "failed 4 of 4" in r.output and "over the limit" in r.output  # each file refused, the batch goes on
    r = invoke(folder / "a.png", "-t", "denoise:gaussian:sigma=0.1", "-o", tmp_path / "o",
               "--max-megapixels", 2 * n / 1e6, *FAST)
    assert r.exit_code == 0, r.output


def test_an_output_folder_of_other_files_is_refused_before_the_run(tmp_path, folder):
    user = tmp_path / "Pictures"
    user.mkdir()
    (user / "holiday.jpg").write_bytes(b"precious")
    r = invoke(folder / "a.png", "-t", "denoise:gaussian:sigma=0.1", "-o", user, *FAST)
    assert r.exit_code == 2 and "holds files restore did not write (holiday.jpg)" in r.output
    assert "restored" not in r.output and [p.name for p in user.iterdir()] == ["holiday.jpg"]
    out = tmp_path / "out"  # in a batch, that image alone fails; the others are restored
    (out / "a").mkdir(parents=True)
    (out / "a" / "notes.txt").write_text("mine")
    r = invoke("batch", folder, out, "-t", "denoise:gaussian:sigma=0.1", "--simulate", *FAST)
    assert "restored 2, skipped 0 already done, failed 2 of 4" in r.output and "(notes.txt)" in r.output
    assert (out / "a" / "notes.txt").read_text() == "mine" and (out / "sub" / "b" / "mean.png").exists()


def test_outputs_keep_a_16_bit_inputs_depth_by_default(tmp_path, clean_rgb):
    import cv2

    src16, src8 = io.write_image(tmp_path / "scan16.png", clean_rgb, 16), io.write_image(tmp_path / "s8.png", clean_rgb)
    assert io.source_bit_depth(src16) == 16 and io.source_bit_depth(src8) == 8
    assert io.source_bit_depth(io.write_image(tmp_path / "scan16.tif", clean_rgb, 16)) == 16
    assert io.source_bit_depth(io.write_image(tmp_path / "grey16.png", clean_rgb[:, :1], 16)) == 16
    assert io.source_bit_depth(io.write_image(tmp_path / "s8.tif", clean_rgb)) == 8
    for src, flag, bits in ((src16, [], 16), (src8, [], 8), (src16, ["--bit-depth", "8"], 8)):
        out = tmp_path / f"o{bits}{len(flag)}"
        r = invoke(src, "-t", "denoise:gaussian:sigma=0.1", "-o", out, *FAST, "--quant", "none", *flag)
        assert r.exit_code == 0, r.output
        for f in ("mean.png", "observation.png", "samples/sample_000.png"):
            assert cv2.imread(str(out / f), cv2.IMREAD_UNCHANGED).dtype == (np.uint16 if bits == 16 else np.uint8)
    r = invoke(src8, "-t", "denoise:gaussian:sigma=0.1", "-o", tmp_path / "bad", "--bit-depth", "12")
    assert r.exit_code == 2 and "--bit-depth must be 8 or 16" in r.output and not (tmp_path / "bad").exists()


def test_batch_keeps_going_reports_bad_file_and_resumes(tmp_path, folder):
    out = tmp_path / "out"
    args = ["batch", folder, out, "-t", "denoise:gaussian:sigma=0.1", "--simulate", "--seed", "5", *FAST]
    r = invoke(*args)
    assert r.exit_code == 1, r.output
    assert "restored 3, skipped 0 already done, failed 1 of 4" in r.output
    assert "sub/corrupt.png" in r.output
    for rel in ("a", "sub/b", "sub/c"):
        assert (out / rel / "mean.png").exists()
    assert (out / "sub" / "b" / "mean.png").exists()  # mirrored sub-folders
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["status"] for r in rows] == ["ok", "ok", "ok", "error"]
    assert len({r["seed"] for r in rows}) == 4  # per-image seeds
    mtime = (out / "a" / "meta.json").stat().st_mtime_ns

    # rerun: finished images are skipped; the bad one is tried again and still reported
    (folder / "sub" / "new.png").write_bytes((folder / "a.png").read_bytes())
    r = invoke(*args)
    assert "restored 1, skipped 3 already done, failed 1 of 5" in r.output, r.output
    assert (out / "a" / "meta.json").stat().st_mtime_ns == mtime
    with open(out / "summary.csv") as f:
        table = list(csv.DictReader(f))
    assert sorted(t["file"] for t in table) == ["a.png", "sub/b.png", "sub/c.jpg", "sub/corrupt.png", "sub/new.png"]
    assert float(next(t for t in table if t["file"] == "a.png")["psnr"]) > 0


def test_batch_seed_depends_on_relative_path_only(tmp_path, folder):
    assert image_seed(0, "sub/b.png") == image_seed(0, "sub/b.png")
    assert image_seed(0, "sub/b.png") != image_seed(0, "sub/c.png")
    assert image_seed(1, "a.png") != image_seed(0, "a.png")


def test_batch_with_ground_truth_dir(tmp_path, folder, clean_rgb):
    from restore.api import Restorer

    noisy, clean = tmp_path / "noisy", tmp_path / "clean"
    y = Restorer().simulate(clean_rgb, "denoise:gaussian:sigma=0.1")
    io.write_image(noisy / "x.png", y)
    io.write_image(clean / "x.png", clean_rgb)
    io.write_image(noisy / "orphan.png", y)
    r = invoke("batch", noisy, tmp_path / "o", "-t", "denoise:gaussian:sigma=0.1", "--ground-truth-dir", clean, *FAST)
    assert r.exit_code == 1 and "no ground truth for orphan.png" in r.output
    meta = json.loads((tmp_path / "o" / "x" / "meta.json").read_text())
    assert meta["metrics"]["psnr"] > 20


def test_batch_empty_or_missing_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    assert "no images found" in invoke("batch", tmp_path / "empty", tmp_path / "o", "-t", "sr:x2").output
    assert "input folder not found" in invoke("batch", tmp_path / "none", tmp_path / "o", "-t", "sr:x2").output


def test_console_script_installed(tmp_path):
    exe = Path(sys.executable).with_name("restore")
    if not exe.exists():
        exe = shutil.which("restore")
    assert exe, "the console script `restore` is not installed"
    res = subprocess.run([str(exe), "list"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "langevin" in res.stdout and "deblur:motion" in res.stdout
    aps = next(line for line in res.stdout.splitlines() if line.strip().startswith("aps"))
    assert "presets: -O preset=paper (uncalibrated)" in aps  # no table fitted with APS's paper settings
    # PMRF's, VBLE's and RED-Diff's paper presets ship their own tables (SOLVER.PRIOR+preset=paper.json; VBLE's over
    # its 3 CAEs; RED-Diff's fitted on this CPU cell by cell, every grid level now: test_list_names_a_familys_...)
    for name in ("pmrf", "vble", "reddiff"):
        line = next(line for line in res.stdout.splitlines() if line.strip().startswith(name))
        assert "-O preset=paper (calibrated: denoise, deblur, sr2, sr4, inpaint-random, inpaint-region)" in line, line
    # each task variant names the solver that runs when none is given (restore.api.RECOMMENDED)
    tasks = {line.split()[0].split(":")[0] + ":" + line.split()[0].split(":")[1]: line.split("recommended:")[1].strip()
             for line in res.stdout.splitlines() if "recommended:" in line}
    assert tasks["denoise:real"] == "scoredvi" and tasks["deblur:kernel"] == "pmrf"
    assert tasks["sr:bicubic"] == "reddiff (pmrf at factor=2)"  # a parameter-level exception is listed beside it


def test_list_names_a_familys_fitted_levels_only_while_some_are_missing():
    """A preset's table fitted cell by cell names the noise levels it has until the grid is complete."""
    from restore.train.calibration import GRID

    grid = len(GRID["denoise"][0])
    assert cli.family_coverage("denoise", [0.098, 0.0196], grid) == "denoise (sigma 0.0196, 0.098)"
    assert cli.family_coverage("denoise", list(GRID["denoise"][0]), grid) == "denoise"
    assert cli.family_coverage("deblur", [0.03, 0.01], len(GRID["deblur"][0])) == "deblur"


def test_bench_unknown_name_lists_known():
    r = invoke("bench", "nope")
    assert r.exit_code == 2 and "unknown benchmark 'nope'" in r.output and "quality" in r.output


def test_batch_survives_kill_and_resumes(tmp_path, clean_rgb):
    """Killing a batch mid-run leaves only complete outputs; the rerun redoes at most the image in flight."""
    import os
    import signal
    import time

    src = tmp_path / "in"
    for i in range(4):
        io.write_image(src / f"img{i}.png", clean_rgb.roll(i * 5, dims=-1))
    out = tmp_path / "out"
    exe = str(Path(sys.executable).with_name("restore"))
    cmd = [exe, "batch", str(src), str(out), "-t", "denoise:gaussian:sigma=0.1", "--simulate", "-n", "2",
           "-s", "langevin", "-O", "iterations=150"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and not (out / "img0" / "meta.json").exists():
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = [d for d in out.iterdir() if d.is_dir() and not d.name.startswith(".")]
    assert done, "the first image never finished"
    for d in done:  # every visible output folder is complete
        assert (d / "meta.json").exists() and (d / "mean.png").exists()
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    assert f"skipped {len(done)} already done" in res.stdout
    assert sorted(d.name for d in out.iterdir() if d.is_dir() and not d.name.startswith(".")) == \
        ["img0", "img1", "img2", "img3"]
    assert not any(d.name.endswith(".partial") for d in out.iterdir())


def test_batch_on_a_local_ray_instance(tmp_path, folder):
    pytest.importorskip("ray", reason="the ray engine needs restore[distributed]")
    out = tmp_path / "out"
    r = invoke("batch", folder, out, "-t", "denoise:gaussian:sigma=0.1", "--simulate", "--engine", "ray",
               "--workers", "2", *FAST)
    assert r.exit_code == 1, r.output  # the corrupt file
    assert "restored 3, skipped 0 already done, failed 1 of 4" in r.output
    local = tmp_path / "local"
    invoke("batch", folder, local, "-t", "denoise:gaussian:sigma=0.1", "--simulate", *FAST)
    import torch

    for rel in ("a", "sub/b", "sub/c"):  # same per-image seeds, same results as the local engine
        assert torch.equal(io.read_image(out / rel / "mean.png"), io.read_image(local / rel / "mean.png"))


def test_batch_ranks_images_by_predicted_quality(tmp_path, clean_rgb):
    """The default solver is calibrated on denoising: every row carries its predicted PSNR and self-check, and
    --sort-by predicted_psnr puts the likeliest failures first."""
    src = tmp_path / "in"
    io.write_image(src / "smooth.png", torch.nn.functional.avg_pool2d(clean_rgb, 5, 1, 2))
    io.write_image(src / "busy.png", clean_rgb)
    io.write_image(src / "noise.png", torch.rand(1, 3, 48, 48, generator=torch.Generator().manual_seed(0)))
    r = runner.invoke(cli.app, ["batch", str(src), str(tmp_path / "out"), "-t", "denoise:gaussian:sigma=0.1",
                                "--simulate", "-n", "8", "--sort-by", "predicted_psnr"])  # the tables' K
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader(open(tmp_path / "out" / "summary.csv")))
    assert [row["uncertainty"] for row in rows] == ["calibrated"] * 3
    predicted = [float(row["predicted_psnr"]) for row in rows]
    assert predicted == sorted(predicted) and rows[0]["file"] == "noise.png"
    assert all(row["self_check"] in ("consistent", "poor fit", "fits the noise") for row in rows)
    # actual PSNR follows the predicted order at the extremes: the random image is hardest
    assert float(rows[0]["psnr"]) < float(rows[-1]["psnr"])


def test_the_quant_help_names_the_solvers_that_run_int8_by_default():
    from restore import cli
    from restore.solvers import base

    int8 = {n for n in base.names() if getattr(base.solver_class(n), "default_quant", None) == "int8"}
    named = set(cli.QUANT_HELP.split("int8 for ")[1].split(";")[0].replace(" and", ",").replace(",", " ").split())
    assert int8 == named & set(base.names()), (int8, cli.QUANT_HELP)


def test_the_input_colour_profile_reaches_the_outputs(tmp_path, clean_rgb):
    # a phone photo in Display P3 saved back without its profile looks duller in colour-managed viewers
    from PIL import Image, ImageCms

    from restore import api

    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    src = io.write_image(tmp_path / "p3.png", clean_rgb, icc_profile=profile)
    out = tmp_path / "out"
    r = invoke(src, "-t", "denoise:gaussian:sigma=0.1", "-o", out, *FAST, "--quant", "none")
    assert r.exit_code == 0, r.output
    for f in ("mean.png", "observation.png", "samples/sample_000.png"):
        assert io.icc_profile(out / f) == profile, f
    assert io.icc_profile(out / "std.png") is None  # a colour map, not the photo's colour space
    assert "ICC profile" in json.loads((out / "meta.json").read_text())["colour_profile"]
    restorer = api.Restorer("langevin", quant="none", iterations=20)
    post = restorer(src, "denoise:gaussian:sigma=0.1", samples=2)
    assert post.icc_profile == profile and io.icc_profile(post.save(tmp_path / "api") / "mean.png") == profile
    with Image.open(src) as im:  # a PIL image the caller opened carries it too
        assert restorer(im, "denoise:gaussian:sigma=0.1", samples=2).icc_profile == profile
    plain = io.write_image(tmp_path / "plain.png", clean_rgb)
    post = restorer(plain, "denoise:gaussian:sigma=0.1", samples=2)
    assert post.icc_profile is None and "colour_profile" not in post.meta
    cmyk = tmp_path / "print.jpg"  # its CMYK profile must not label the RGB result
    Image.fromarray((io.to_numpy_image(clean_rgb) * 255).round().astype("uint8")).convert("CMYK").save(
        cmyk, icc_profile=ImageCms.ImageCmsProfile(ImageCms.createProfile("LAB")).tobytes())
    assert io.icc_profile(cmyk) is not None and io.profile_channels(io.icc_profile(cmyk)) is None
    with pytest.warns(UserWarning, match="CMYK"):
        post = restorer(cmyk, "denoise:gaussian:sigma=0.1", samples=2)
    assert post.icc_profile is None and "colour_profile" not in post.meta


def test_a_large_image_says_its_time_up_front(tmp_path, folder, monkeypatch):
    monkeypatch.setattr(cli, "ESTIMATE_ABOVE", 1000)  # the 48 px test image counts as large here
    FLOAT = [*FAST, "--quant", "none"]  # no int8 build per run: this test is about the line, not the solver
    r = invoke(folder / "a.png", "--simulate", "-t", "denoise:gaussian:sigma=0.1", "-o", tmp_path / "o", *FLOAT)
    assert r.exit_code == 0, r.output
    assert "estimated time here: about" in r.output and "48x48 restored, 2 samples" in r.output
    r = invoke(folder / "a.png", "-t", "sr:bicubic:factor=2,noise=0.01", "-o", tmp_path / "sr", *FLOAT)
    assert r.exit_code == 0 and "96x96 restored" in r.output  # SR restores the file factor times larger
    r = invoke("batch", folder, tmp_path / "b", "-t", "denoise:gaussian:sigma=0.1", "--simulate", *FLOAT)
    assert "estimated time here: about" in r.output and "3 images" in r.output  # the corrupt file left out
    monkeypatch.setattr(cli, "ESTIMATE_ABOVE", 10**9)
    r = invoke(folder / "a.png", "--simulate", "-t", "denoise:gaussian:sigma=0.1", "-o", tmp_path / "o", *FLOAT)
    assert r.exit_code == 0 and "estimated time" not in r.output
