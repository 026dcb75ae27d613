"""Classical point-estimate baselines of the quality benchmark, through deepinv, and the scan that sets their weights.

    python -m benchmarks.classical          # scan the weights on held-out BSD432 training crops, print, write JSON

- **Wiener**: Wiener-Hunt deconvolution (deepinv ``WienerDeconvolution``, Laplacian prior: the closed-form minimiser
  of 1/2 ||k * x - y||^2 + lambda/2 ||L x||^2 in Fourier). Convolution tasks only (denoising = the unit kernel).
  deepinv's filter is circular, our blur reflects at the border, so y is reflect-padded by the kernel size first and
  the result cropped back.
- **TV**: total-variation regularised least squares, 1/2 ||A x - y||^2 + lambda TV(x), by FISTA with deepinv's
  ``TVPrior`` prox, from ``restore.solvers.base.initial_estimate`` (bicubic for SR, a fill for inpainting). Every task.

Both are MAP estimates under a Gaussian likelihood, so the weight scales with the noise variance:
lambda = WEIGHTS[method][task family] x sigma^2 (sigma on the [0, 1] scale). The weights were set by this module's
scan (best mean PSNR over a log grid) on the last 4 images of BSD432-train, 128 px centre crops, never on the
evaluation images; ``benchmarks/results/classical.json`` holds the scan. Neither gives a posterior: its rows have
PSNR and SSIM only.
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch

from restore.solvers.wiener import WEIGHT as WIENER_WEIGHT
from restore.solvers.wiener import wiener_hunt
from restore.tasks import kind_of

# lambda / sigma^2 per task family, from python -m benchmarks.classical (results/classical.json)
WEIGHTS = {"wiener": {"denoise": WIENER_WEIGHT, "deblur": WIENER_WEIGHT},
           "tv": {"denoise": 10.0, "deblur": 10.0, "sr": 10.0, "inpaint": 30.0}}
TV_ITERATIONS = 200
def supports(method: str, kind: str) -> str | None:
    """None if ``method`` ('wiener' or 'tv') applies to tasks of this kind ('denoise', 'deblur', ...), else why not."""
    if kind not in WEIGHTS[method]:
        return f"{method} applies to {' and '.join(WEIGHTS[method])} tasks only"
    return None


def wiener(y: torch.Tensor, physics, weight: float | None = None) -> torch.Tensor:
    """Wiener-Hunt estimate (1, C, H, W) in [0, 1] of a denoising or deblurring observation y (1, C, H, W)
    (``restore.solvers.wiener``, at this module's weight for the task family)."""
    return wiener_hunt(y, physics, WEIGHTS["wiener"][kind_of(physics)] if weight is None else weight)


def tv(y: torch.Tensor, physics, weight: float | None = None, iterations: int = TV_ITERATIONS) -> torch.Tensor:
    """TV-regularised least-squares estimate (1, C, H', W') in [0, 1] (H', W': the restored size) of y."""
    import deepinv as dinv

    from restore.solvers.base import initial_estimate, noise_sigma, operator_norm_sq

    weight = WEIGHTS["tv"][kind_of(physics)] if weight is None else weight
    x0 = initial_estimate(y, physics)
    norm = operator_norm_sq(physics, x0.shape, torch.Generator(device=y.device).manual_seed(0))
    model = dinv.optim.optim_builder(iteration="FISTA", prior=dinv.optim.TVPrior(n_it_max=20),
                                     data_fidelity=dinv.optim.L2(), max_iter=iterations, early_stop=True,
                                     params_algo={"stepsize": 1.0 / norm, "a": 3,  # FISTA's momentum parameter
                                                  "lambda": weight * noise_sigma(physics, y) ** 2},
                                     verbose=False)
    with torch.no_grad():
        return model(y, physics, init=(x0, x0.clone())).clamp(0, 1)  # FISTA iterates a pair (x, z)


ESTIMATORS = {"wiener": wiener, "tv": tv}
GRID = (1.0, 3.0, 10.0, 30.0, 100.0)


def scan(images: torch.Tensor, task_specs: dict[str, str], grid=GRID, methods=("wiener", "tv")) -> dict:
    """{method: {task name: {"psnr": {weight: mean PSNR}, "best": weight}}} over ``images`` (N, C, H, W) in [0, 1];
    each image's observation is seeded by its index."""
    from restore import metrics
    from restore.tasks import parse

    out = {}
    for method in methods:
        for tname, spec in task_specs.items():
            task = parse(spec)
            obs = [task.simulate(images[i:i + 1], torch.Generator().manual_seed(i)) for i in range(len(images))]
            if supports(method, task.kind):
                continue
            psnr = {w: sum(float(metrics.psnr(ESTIMATORS[method](y, ph, w), images[i:i + 1]))
                           for i, (y, ph) in enumerate(obs)) / len(obs) for w in grid}
            best = max(psnr, key=psnr.get)
            out.setdefault(method, {})[tname] = {"family": task.kind, "psnr": psnr, "best": best}
            print(f"{method:<7} {tname:<17} " + "  ".join(f"{w:g}:{v:.2f}" for w, v in psnr.items())
                  + f"  -> {best:g}", flush=True)
    return out


def family_weights(result: dict) -> dict:
    """{method: {family: the grid weight of best PSNR averaged over the family's tasks}} from ``scan``'s result."""
    out = {}
    for method, per_task in result.items():
        for fam in dict.fromkeys(r["family"] for r in per_task.values()):
            runs = [r["psnr"] for r in per_task.values() if r["family"] == fam]
            mean = {w: sum(p[w] for p in runs) / len(runs) for w in runs[0]}
            out.setdefault(method, {})[fam] = max(mean, key=mean.get)
    return out


def main(argv=None):
    from benchmarks.common import table, tasks, write_results
    from restore.train.flow_steps import centre_crops, list_images, load_uint8_images

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data/BSD432-train")
    ap.add_argument("--images", type=int, default=4, help="the last N files of the folder")
    ap.add_argument("--crop", type=int, default=128)
    ap.add_argument("--out", default=None)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    files = list_images(args.data)[-args.images:]
    images = centre_crops(load_uint8_images(files), args.crop)
    t0 = time.time()
    result = scan(images, tasks())
    chosen = family_weights(result)
    rows = [{"method": m, "task": t, "family": r["family"], "best_weight": r["best"], "psnr_at_best": r["psnr"][r["best"]],
             "family_weight": chosen[m][r["family"]], "psnr_at_family_weight": r["psnr"][chosen[m][r["family"]]],
             "shipped_weight": WEIGHTS[m][r["family"]]} for m, per in result.items() for t, r in per.items()]
    print(table(rows, ["method", "task", "family", "best_weight", "psnr_at_best", "family_weight",
                       "psnr_at_family_weight", "shipped_weight"]))
    path = write_results("classical", {"images": [f.name for f in files], "crop": args.crop, "grid": list(GRID),
                                       "family_weights": chosen, "scan": result, "rows": rows,
                                       "seconds": time.time() - t0}, args.out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
