"""Blind noise-level estimation: ``restore.noise.estimate_noise_std`` against the old one, on real and synthetic noise.

    python -m benchmarks.noise_estimate              # CC15 + SIDD-val-80 (full, 128 and 64 px crops) + synthetic
    python -m benchmarks.noise_estimate --quick      # the first 4 pairs of each real set, 4 synthetic crops

Estimators:
  - ``new``: ``restore.noise.estimate_noise_std`` (weak-texture 8x8 patches with a correlated-noise model, on the
    full-resolution image);
  - ``old``: ``restore.solvers.scoredvi.estimate_noise_std`` (deepinv's wavelet MAD on 4x4 pixel-shuffled
    sub-images; on the image itself below 128 px), the only estimator before, which ScoreDVI still uses.
Data:
  - real noise: ``CC15`` and ``SIDD-val-80`` (noisy/ and clean/ pairs), each pair whole and as 128 and 64 px centre
    crops (64 px: ``benchmarks.realnoise --quick``'s size, where the old estimate read 2-4x low);
    the truth is the std of the residual noisy - clean over all pixels and channels. Nothing was tuned on these sets;
  - synthetic: i.i.d. Gaussian noise (not clipped) at 5, 15, 25 and 50 /255 on 16 random 128 px crops (2 per image,
    fixed seed) of the last 8 files of ``BSD432-train`` (training images: not an evaluation set); the truth is the
    std of the noise added. BSD images carry grain and JPEG artefacts of their own, which every blind estimator
    counts as noise, so at 5 /255 the truth is a lower bound.
Per row: mean truth, mean estimate, mean absolute error (/255), mean relative error |est - true| / true, and the mean
ratio est / true (below 1: under-reads); seconds per image for each estimator.
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch

from benchmarks.common import centre_crop, data_root, image_paths, table, write_results

REAL_SETS = ("CC15", "SIDD-val-80")
SIGMAS = (5, 15, 25, 50)
CROP = 128
REAL_CROPS = (128, 64)  # 64 px: realnoise --quick's crops, where the old estimate was found 2-4x low (issue #21)
SYNTH_FILES = 8     # the last 8 files of BSD432-train
SYNTH_CROPS = 16    # 2 per file
SEED = 0


def estimators() -> dict:
    from restore.noise import estimate_noise_std as new
    from restore.solvers.scoredvi import estimate_noise_std as old

    return {"new": new, "old": old}


def real_pairs(name: str, limit: int | None) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    from restore.io import read_image

    folder = data_root() / name
    names = sorted(p.name for p in (folder / "noisy").iterdir())[:limit]
    pairs = []
    for n in names:
        noisy, clean = read_image(folder / "noisy" / n), read_image(folder / "clean" / n)
        if noisy.shape != clean.shape:
            raise SystemExit(f"{name}/{n}: noisy {tuple(noisy.shape)} and clean {tuple(clean.shape)} differ in shape")
        pairs.append((n, noisy, clean))
    return pairs


def synthetic_crops(n_crops: int) -> list[tuple[str, torch.Tensor]]:
    """``n_crops`` random CROP x CROP crops, in turn from each of the last SYNTH_FILES BSD432-train files."""
    from restore.io import read_image

    files = image_paths("BSD432-train")[-SYNTH_FILES:]
    g = torch.Generator().manual_seed(SEED)
    out = []
    for i in range(n_crops):
        f = files[i % len(files)]
        x = read_image(f)
        h, w = x.shape[-2:]
        t = int(torch.randint(0, h - CROP + 1, (1,), generator=g))
        l = int(torch.randint(0, w - CROP + 1, (1,), generator=g))
        out.append((f"{f.name}@{t},{l}", x[..., t:t + CROP, l:l + CROP]))
    return out


def measure(noisy: torch.Tensor, truth: float, ests: dict) -> dict:
    """Each estimator's estimate (/255) and seconds on ``noisy``, beside the truth (/255)."""
    row = {"true_255": 255 * truth}
    for name, fn in ests.items():
        t0 = time.perf_counter()
        row[f"{name}_255"] = 255 * fn(noisy)
        row[f"{name}_seconds"] = time.perf_counter() - t0
    return row


def summarise(per_image: list[dict], ests) -> list[dict]:
    """One row per (set, view, noise): means over its images of truth, estimates and errors."""
    groups: dict = {}
    for r in per_image:
        groups.setdefault((r["set"], r["view"], r["noise"]), []).append(r)
    rows = []
    for (s, view, noise), rs in groups.items():
        n = len(rs)
        row = {"set": s, "view": view, "noise": noise, "images": n, "true_255": sum(r["true_255"] for r in rs) / n}
        for e in ests:
            est = [r[f"{e}_255"] for r in rs]
            tru = [r["true_255"] for r in rs]
            row[f"{e}_255"] = sum(est) / n
            row[f"{e}_abs_err_255"] = sum(abs(a - b) for a, b in zip(est, tru)) / n
            row[f"{e}_rel_err"] = sum(abs(a - b) / b for a, b in zip(est, tru)) / n
            row[f"{e}_ratio"] = sum(a / b for a, b in zip(est, tru)) / n
            row[f"{e}_seconds"] = sum(r[f"{e}_seconds"] for r in rs) / n
        rows.append(row)
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="4 pairs per real set and 4 synthetic crops")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    ests = estimators()
    limit = 4 if args.quick else None
    t_start = time.time()
    per_image = []
    for s in REAL_SETS:
        for name, noisy, clean in real_pairs(s, limit):
            for view, crop in (("full", None), *((f"crop{c}", c) for c in REAL_CROPS)):
                y, x = centre_crop(noisy, crop), centre_crop(clean, crop)
                per_image.append({"set": s, "view": view, "noise": "real", "image": name,
                                  **measure(y, float((y - x).std()), ests)})
        print(f"[{time.time() - t_start:5.0f}s] {s} done", flush=True)
    g = torch.Generator().manual_seed(SEED + 1)
    for name, x in synthetic_crops(4 if args.quick else SYNTH_CROPS):
        for sigma in SIGMAS:
            y = x + sigma / 255 * torch.randn(x.shape, generator=g)
            per_image.append({"set": "BSD432-train (last 8)", "view": f"crop{CROP}", "noise": f"gaussian {sigma}",
                              "image": name, **measure(y, sigma / 255, ests)})
    print(f"[{time.time() - t_start:5.0f}s] synthetic done", flush=True)
    rows = summarise(per_image, ests)
    cols = ["set", "view", "noise", "images", "true_255", "old_255", "new_255", "old_abs_err_255", "new_abs_err_255",
            "old_rel_err", "new_rel_err", "old_ratio", "new_ratio", "new_seconds"]
    print(table(rows, cols))
    name = "noise_estimate_quick" if args.quick else "noise_estimate"
    from restore.noise import METHOD

    out = write_results(name, {"estimators": {"new": f"restore.noise.estimate_noise_std: {METHOD}",
                                              "old": "restore.solvers.scoredvi.estimate_noise_std: wavelet MAD on 4x4 "
                                                     "pixel-shuffled sub-images"},
                               "real_sets": list(REAL_SETS), "real_crops": list(REAL_CROPS), "crop": CROP,
                               "sigmas_255": list(SIGMAS),
                               "synthetic": {"files": [p.name for p in image_paths("BSD432-train")[-SYNTH_FILES:]],
                                             "crops": 4 if args.quick else SYNTH_CROPS, "seed": SEED,
                                             "noise": "i.i.d. Gaussian, not clipped"},
                               "units": "noise std on the 0-255 scale; rel_err = mean |est - true| / true; "
                                        "ratio = mean est / true",
                               "rows": rows, "per_image": per_image, "total_seconds": time.time() - t_start},
                        args.out)
    print(f"wrote {out} in {time.time() - t_start:.0f}s")


if __name__ == "__main__":
    main()
