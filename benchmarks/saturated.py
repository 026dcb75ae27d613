"""Saturated colours: the CAEs and VBLE on held-out crops with and without a colour push.

    python -m benchmarks.saturated                 # 8 held-out BSD432 crops, 128 px, VBLE at its pick per task
    python -m benchmarks.saturated --prior cae-natural-q2    # as saturated.json was run (q2 was then the default)
    python -m benchmarks.saturated --images 4 --tasks sr4
    python -m benchmarks.saturated --prior cae-natural-q4 --out benchmarks/results/saturated_q4.json

Issue #22 measured VBLE breaking down on a saturated-colour flower close-up (x4 SR 13.7 dB from a 23.2 dB bicubic
input): a CAE trained on BSD's landscapes had not seen such colours, and VBLE's latent optimisation then finds no code
that explains them. This benchmark makes such colours from held-out photos and measures the damage, so a CAE retrained
with colour augmentation can be compared with the shipped one (point ``$RESTORE_MODELS`` at a folder holding the
candidate). The crops are the CAEs' held-out training files (the last ``--images`` of BSD432-train), never an
evaluation set, so the table may steer training. Each crop is used twice: as it is ("natural") and "saturated" (its
RGB channels permuted, a different permutation per crop, and its chroma scaled by ``--saturation`` about the grey
value, then clipped to [0, 1]). Columns: each CAE's real-coded bpp / PSNR, and per task the PSNR of the degraded input
(bicubic upsampling for SR), TV least squares and VBLE at its defaults (mean and 90 % coverage).
"""

from __future__ import annotations

import argparse
import itertools
import time
import warnings

import torch

from benchmarks.common import data_root, table, tasks, write_results

TASKS = ("sr4", "deblur_gauss1")
PERMUTATIONS = [p for p in itertools.permutations(range(3)) if p != (0, 1, 2)]


def saturate(x: torch.Tensor, index: int, saturation: float) -> torch.Tensor:
    """(1, 3, H, W) in [0, 1] -> the same crop with permuted channels and chroma scaled by ``saturation``."""
    from restore.train.common import push_colours

    return push_colours(x, list(PERMUTATIONS[index % len(PERMUTATIONS)]), saturation)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=8, help="the last N files of BSD432-train (the CAEs' held-out)")
    ap.add_argument("--crop", type=int, default=128)
    ap.add_argument("--saturation", type=float, default=2.0)
    ap.add_argument("--tasks", nargs="*", default=list(TASKS))
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--prior", default=None, help="VBLE's CAE (default: VBLE's choice per task)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    from benchmarks import cae_rd, classical
    from restore import Restorer, metrics
    from restore.priors import registry
    from restore.solvers.base import initial_estimate
    from restore.tasks import parse
    from restore.train.common import centre_crops, list_images, load_uint8_images

    files = list_images(data_root() / "BSD432-train")[-args.images:]
    natural = centre_crops(load_uint8_images(files), args.crop)
    sets = {"natural": natural,
            "saturated": torch.cat([saturate(natural[i:i + 1], i, args.saturation) for i in range(len(natural))])}
    caes = [n for n in registry.available("cae") if registry.PRIORS[n].file]
    vble = Restorer("vble", args.prior)
    rows, t0 = [], time.time()
    for set_name, crops in sets.items():
        row: dict = {"set": set_name}
        for name in caes:
            net = registry.load(name).module
            net.update(force=True)
            points = [cae_rd.rd_point(net, crops[i:i + 1]) for i in range(len(crops))]
            row[f"{name} bpp"] = sum(p["bpp"] for p in points) / len(points)
            row[f"{name} psnr"] = sum(p["psnr"] for p in points) / len(points)
        for task_name in args.tasks:
            spec = tasks()[task_name]
            task = parse(spec)
            acc: dict[str, list[float]] = {}
            for i in range(len(crops)):
                x = crops[i:i + 1]
                y, physics = task.simulate(x, torch.Generator().manual_seed(i))
                # the observation as an image: y itself, bicubic upsampling for SR
                acc.setdefault("input", []).append(float(metrics.psnr(initial_estimate(y, physics), x)))
                acc.setdefault("tv", []).append(float(metrics.psnr(classical.tv(y, physics), x)))
                post = vble(y, spec, samples=args.samples, seed=i)
                acc.setdefault("vble", []).append(float(metrics.psnr(post.mean, x)))
                acc.setdefault("vble cov90", []).append(float(metrics.coverage(post, x, 0.9)))
                # the coverage is the calibrated one only where a table covers the run (a candidate CAE has none)
                acc.setdefault("vble calibrated", []).append(float(post.calibrated))
            for k, v in acc.items():
                row[f"{task_name} {k}"] = sum(v) / len(v)
            print(f"[{time.time() - t0:5.0f}s] {set_name} {task_name}: "
                  + ", ".join(f"{k} {sum(v) / len(v):.2f}" for k, v in acc.items()), flush=True)
        rows.append(row)
    print(table(rows, list(rows[0])))
    cards = {n: {k: registry.read_card(n).get(k) for k in ("steps", "colour_augmentation")} for n in caes}
    out = write_results("saturated", {"files": [f.name for f in files], "crop": args.crop,
                                      "saturation": args.saturation, "samples": args.samples,
                                      "vble_prior": {t: vble.prior_name_for(tasks()[t]) for t in args.tasks},
                                      "models": str(registry.models_dir()), "cards": cards, "rows": rows,
                                      "seconds": time.time() - t0}, args.out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
