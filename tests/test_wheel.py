"""The built wheel is the product: installed outside the checkout it carries its priors, calibration and app."""

import json
import os
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A fresh venv holding only the wheel built from this checkout; the dependencies (torch, deepinv, gradio...)
    come from the test's own environment through a .pth line, as local wheels of them would (nothing downloaded)."""
    root = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(REPO),
                    "-w", str(root / "dist")], check=True, cwd=root)
    wheel = next((root / "dist").glob("restore-*.whl"))
    venv.create(root / "env", with_pip=True)
    py = root / "env" / "bin" / "python"
    site = subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], check=True,
                          capture_output=True, text=True).stdout.strip()
    Path(site, "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([py, "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)], check=True)
    return root, wheel


# run by the installed interpreter: where the priors load from, the CLI's main() on each argv of sys.argv[1] (JSON),
# and the web app's construction, in one process (each fresh one costs ~6 s of imports)
IN_ONE_PROCESS = """
import json, sys
from restore.priors import registry
print(registry.models_dir(), flush=True)
from restore.cli import main
for argv in json.loads(sys.argv[1]):
    try:
        main(argv)
    except SystemExit as e:
        assert not e.code, (argv, e.code)
import app.app
app.app.build_demo()
"""


def _run(root, *args, **kw):
    env = {k: v for k, v in os.environ.items() if k != "RESTORE_MODELS"}
    out = subprocess.run([str(root / "env" / "bin" / args[0]), *args[1:]], cwd=root, env=env, capture_output=True,
                         text=True, timeout=600, **kw)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def test_wheel_carries_models_calibration_and_app(installed):
    import zipfile

    _, wheel = installed
    names = zipfile.ZipFile(wheel).namelist()
    shipped = {p.name for p in (REPO / "models").glob("*.pt")}
    assert shipped and shipped <= {Path(n).name for n in names if n.startswith("restore/_models/")}
    tables = {p.name for p in (REPO / "models" / "calibration").glob("*.json")}
    assert tables <= {Path(n).name for n in names if n.startswith("restore/_models/calibration/")}
    assert "app/app.py" in names


def test_installed_restore_lists_restores_and_serves(installed):
    import imageio.v3 as iio
    import skimage.data

    root, _ = installed
    listing = _run(root, "restore", "list")
    for prior in ("score-natural", "cae-natural-q2", "flow-natural", "tokens-natural"):
        assert any(prior in line and "ready" in line for line in listing.splitlines()), listing
    iio.imwrite(root / "tiny.png", skimage.data.astronaut()[100:132, 180:212])
    # one tiny restore on every shipped prior kind, with cut-down settings, and `ui --help`, through the installed
    # CLI's main() in one interpreter (IN_ONE_PROCESS); `restore list` above went through the console script
    runs = [("pmrf", "flow-natural", []), ("reddiff", "score-natural", ["-O", "steps=3"]),
            ("vble", "cae-natural-q2", ["-O", "iterations=5", "-O", "stat_samples=4"]),
            ("aps", "tokens-natural", ["-O", "steps=2", "-O", "inner_steps=1"])]
    argv = [["tiny.png", "--simulate", "-t", "denoise:gaussian:sigma=0.1", "-s", solver, "-p", prior, "-n", "2",
             "-o", f"out_{solver}", *opts] for solver, prior, opts in runs]
    where = _run(root, "python", "-c", IN_ONE_PROCESS, json.dumps([*argv, ["ui", "--help"]]))
    assert "site-packages/restore/_models" in where.splitlines()[0]
    assert "--host" in where
    for solver, prior, _ in runs:
        meta = json.loads((root / f"out_{solver}" / "meta.json").read_text())
        ran = prior + "@int8" if solver == "reddiff" else prior  # RED-Diff's default int8 denoiser
        assert meta["prior"] == ran and np.load(root / f"out_{solver}" / "std.npy").shape == (32, 32, 3)
