"""Choose PMRF's Euler step count K per task family on held-out training crops, and write it into the flow's card.

    python -m restore.train.flow_steps --data ../shared/data/BSD432-train --flow flow-natural

Why: PMRF integrates the flow ODE from the posterior mean toward the image distribution; the paper's K = 25 assumes
a flow that lands there. Ours is one flow for every task (the issue asks for that), trained on a mixture of sharp
(denoising) and over-smooth (deblurring / SR proxy) means. Integrated to the end it adds the mixture's average
detail: it over-sharpens the sharp means of denoising and deblurring (more high-frequency energy than clean
images have) and under-sharpens SR's. So for each family we take the K whose outputs are distributed most like
clean images by the one distribution distance we can measure on a few crops, the radial power-spectrum gap
(``restore.metrics.spectral_gap``, a lower bound on W2^2), and, as PMRF asks, the least distortion among the
K's that come as close (within ``TOLERANCE`` of the mean's own gap). A flow that lands on the image distribution
gets the paper's K (the largest candidate) back.

Data: the last ``--val-images`` files of the training folder, which ``restore.train.flow`` holds out of training
(never an evaluation set), centre-cropped. Means: PMRF's own default sources (the denoiser for denoising, HQS on
the denoiser for deblurring, RED-Diff at its default settings otherwise). The card gets ``euler_steps`` {family: K}
and the whole scan.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from restore.files import write_json_atomic
from restore.train.common import centre_crops, list_images, load_uint8_images

# Representative tasks per family (noise sigma on the [0, 1] scale: 2.55, 7.65, 15, 25, 50 / 255).
FAMILY_TASKS = {
    "denoise": ["denoise:gaussian:sigma=0.058824", "denoise:gaussian:sigma=0.098039",
                "denoise:gaussian:sigma=0.196078"],
    "deblur": ["deblur:gaussian:sigma=1,noise=0.01", "deblur:motion:size=19,seed=0,noise=0.03"],
    "sr": ["sr:bicubic:factor=2,noise=0.01", "sr:bicubic:factor=4,noise=0.01"],
    "inpaint": ["inpaint:random:missing=0.5,seed=0,noise=0.01", "inpaint:box:size=0.3,noise=0.01"],
}
CANDIDATES = (1, 2, 3, 4, 6, 8, 12, 16, 25)  # 25: the paper's K
# Gaps within this fraction of the mean's own gap count as equally close to the image distribution: on 8 crops
# the gap is an estimate, and PMRF wants the least distortion among (nearly) perfect-perception outputs.
TOLERANCE = 0.1


def choose_steps(rows: dict[int, dict], mean_gap: float, tolerance: float = TOLERANCE) -> int:
    """PMRF's objective on the scan: the K of least distortion (highest PSNR; then fewer steps) among those whose
    spectral gap is within ``tolerance`` x the posterior mean's own gap of the smallest one."""
    floor = min(r["spectral_gap_e4"] for r in rows.values())
    near = [k for k, r in rows.items() if r["spectral_gap_e4"] <= floor + tolerance * mean_gap]
    return max(near, key=lambda k: (rows[k]["psnr"], -k))


def scan(flow, images: torch.Tensor, family_tasks: dict[str, list[str]], candidates=CANDIDATES, seed: int = 0,
         mean_options: dict | None = None, tolerance: float = TOLERANCE, log=print) -> dict:
    """Per family: the spectral gap and PSNR of the posterior mean and of PMRF's output at each K.

    flow: a loaded flow prior; images: (N, 3, H, W) clean crops in [0, 1]. Returns {family: {"mean": {...},
    "steps": {K: {...}}, "best": K}} where each {...} holds ``spectral_gap`` (per pixel, x 1e4) and ``psnr`` (dB)."""
    from restore import metrics
    from restore.solvers import base
    from restore.solvers.pmrf import flow_transport
    from restore.tasks import parse

    sigma_s = float(flow.card.get("sigma_s", 0.025))
    solver = base.get("pmrf", **({"mean_options": mean_options} if mean_options is not None else {}))
    out = {}
    for family, specs in family_tasks.items():
        clean, means = [], []
        t0 = time.time()
        for ti, spec in enumerate(specs):
            task = parse(spec)
            for i in range(len(images)):
                x = images[i:i + 1]
                y, physics = task.simulate(x, torch.Generator().manual_seed(seed + 100 * ti + i))
                means.append(solver.posterior_mean(y, physics, flow, torch.Generator().manual_seed(seed + i),
                                                   lambda f, m: None))
                clean.append(x)
        clean, means = torch.cat(clean), torch.cat(means)

        def summary(est):
            return {"spectral_gap_e4": round(1e4 * metrics.spectral_gap(est, clean), 4),
                    "psnr": round(float(metrics.psnr(est, clean).mean()), 3)}

        rows = {}
        for k in candidates:
            est = torch.cat([flow_transport(means[j:j + 1], flow.module, n_samples=1, sigma_s=sigma_s, steps=k,
                                            generator=torch.Generator().manual_seed(seed + 7 * j))
                             for j in range(len(means))])
            rows[k] = summary(est)
        of_mean = summary(means)
        best = choose_steps(rows, of_mean["spectral_gap_e4"], tolerance)
        out[family] = {"tasks": specs, "mean": of_mean, "steps": rows, "best": best,
                       "gap_tolerance_e4": round(tolerance * of_mean["spectral_gap_e4"], 4)}
        log(f"{family}: mean gap {of_mean['spectral_gap_e4']:.3f} psnr {of_mean['psnr']:.2f}; "
            + ", ".join(f"K={k}: {r['spectral_gap_e4']:.3f}/{r['psnr']:.2f}" for k, r in rows.items())
            + f" -> K={best} ({time.time() - t0:.0f}s)")
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data/BSD432-train")
    ap.add_argument("--flow", default="flow-natural", help="registered flow prior (its card in $RESTORE_MODELS or "
                                                            "models/ gets the result)")
    ap.add_argument("--val-images", type=int, default=8, help="held-out files at the end of the folder (as in "
                                                                "restore.train.flow)")
    ap.add_argument("--crop", type=int, default=128)
    ap.add_argument("--families", nargs="*", default=list(FAMILY_TASKS))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--dry-run", action="store_true", help="print the scan, leave the card alone")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    import warnings

    from restore.priors import registry

    warnings.filterwarnings("ignore")
    flow = registry.load(args.flow)
    card_path = registry.models_dir() / f"{registry.spec(args.flow).file}.json"
    files = list_images(args.data)[-args.val_images:]
    images = centre_crops(load_uint8_images(files), args.crop)
    t0 = time.time()
    result = scan(flow, images, {f: FAMILY_TASKS[f] for f in args.families})
    if args.dry_run:
        return result
    card = dict(flow.card)  # the registry read it from card_path
    card["euler_steps"] = {**card.get("euler_steps", {}), **{f: r["best"] for f, r in result.items()}}
    card["euler_steps_calibration"] = {
        "rule": "per task family, among the candidate K whose outputs' radial power-spectrum gap to the clean crops "
                "(restore.metrics.spectral_gap, a lower bound on W2^2) is within tolerance x the posterior mean's gap "
                "of the smallest, the one of highest PSNR",
        "tolerance": TOLERANCE,
        "images": [f"{Path(args.data).name}/{f.name}" for f in files], "crop": args.crop,
        "candidates": list(CANDIDATES), "command": "python -m restore.train.flow_steps " + " ".join(argv or []),
        "seconds": round(time.time() - t0), **{f: r for f, r in result.items()}}
    write_json_atomic(card, card_path)
    print(f"wrote euler_steps {card['euler_steps']} into {card_path}")
    return result


if __name__ == "__main__":
    main()
