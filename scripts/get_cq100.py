"""Recreate ``train_data/CQ100/``: natural photos no prior here trained on and no evaluation set contains.

    python scripts/get_cq100.py                              # downloads from GitHub (needs internet)
    python scripts/get_cq100.py --git /path/to/quantette.git  # from a local clone or bare mirror, offline

CQ100 (M. E. Celebi and M. L. Perez-Delgado, "CQ100: A High-Quality Image Dataset for Color Quantization Research",
J. Electronic Imaging 32(3) 033019, 2023; Mendeley Data vw5ys9hfxw/3) is 100 photos from Wikimedia Commons and
pxhere, downscaled to 768x512 or 512x768 (lossless PNG, copy in the repository Ivordir/quantette, folder
img/CQ100, pinned below). Each image's licence (CC BY-SA, CC BY, CC0 or public domain) and author are in its
metadata.csv, copied here as SOURCES.csv. Dropped: the 4 Kodak images (a standard test set: kodim03, 05, 15, 23)
and the 6 "Miscellaneous" ones that are charts, star sizes, lights and pigments rather than photos: 90 remain.
The folder is ignored by git (the images are not redistributed with this project).
"""

from __future__ import annotations

import argparse
import csv
import io
import subprocess
import urllib.request
from pathlib import Path

REPO = "Ivordir/quantette"
COMMIT = "aa93bb69a193a4d7d98126fa2d8c14158d52ce6a"
FOLDER = "img/CQ100"


def keep(row: dict) -> bool:
    """Not a Kodak image (a standard test set) and a photo (not the 'Miscellaneous' charts)."""
    return "graphics/kodak" not in row["Source URL"] and row["Category"] != "Miscellaneous"


def reader(git: str | None):
    """read(path inside the repository) -> bytes, from a local clone / mirror or GitHub at :data:`COMMIT`."""
    if git:
        return lambda path: subprocess.run(["git", f"--git-dir={git}", "show", f"{COMMIT}:{path}"], check=True,
                                           capture_output=True).stdout
    base = f"https://raw.githubusercontent.com/{REPO}/{COMMIT}/"
    return lambda path: urllib.request.urlopen(base + path, timeout=60).read()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--git", default=None, help="a local git directory of Ivordir/quantette (bare or .git)")
    ap.add_argument("--out", default="train_data/CQ100")
    args = ap.parse_args(argv)
    read = reader(args.git)
    rows = list(csv.DictReader(io.StringIO(read(f"{FOLDER}/metadata.csv").decode("utf-8"))))
    kept = [r for r in rows if keep(r)]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for r in kept:
        target = out / f"{r['Modified Filename']}.png"
        if not target.exists():
            target.write_bytes(read(f"{FOLDER}/img/{r['Modified Filename']}.png"))
    with open(out / "SOURCES.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "source", "licence", "author"])
        w.writerows([f"{r['Modified Filename']}.png", r["Source URL"], r["License"], r["Author"]] for r in kept)
    print(f"{len(kept)} of {len(rows)} CQ100 images in {out} (sources and licences: {out / 'SOURCES.csv'})")


if __name__ == "__main__":
    main()
