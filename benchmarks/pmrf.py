"""PMRF: the posterior mean vs the flow's output, on CBSD68 crops (issue: PMRF).

    python -m benchmarks.pmrf --quick        # 4 images (QUICK_CBSD68), 128x128 centre crops, 2 samples
    python -m benchmarks.pmrf                # 16 images, 256x256 centre crops, 4 samples

Tasks: Gaussian denoising 25/255 (mean = the flow card's denoiser), deblurring with the VBLE paper's gaussian_std1
kernel at 2.55/255 and x4 bicubic SR at 2.55/255 (mean = RED-Diff's posterior mean, PMRF's default source). Rows:
the clean image (sharpness reference), the posterior mean, one PMRF sample at the solver's default Euler step count
(the flow card's K for the task family; PMRF's output as in the paper; metrics averaged over the K samples), the
average of the K PMRF samples, and "pmrf sample, N steps": the flow rerun from the same source noise with N steps
(``--scan-steps``, always with the paper's 25). No-reference sharpness: deepinv's BlurStrength (Crete et al. 2007;
0 sharp .. 1 blurry) and SharpnessIndex (Blanchet and Moisan; higher is sharper), on the luminance. Distribution
match: ``spectral_gap_e4``, the radial power-spectrum gap of each row's outputs (all images) to the clean crops, x
1e4 (restore.metrics.spectral_gap; 0 for outputs distributed like clean images, a lower bound on W2^2), and on the
mean's row ``perfect_perception_cost_bound``: the least PSNR cost any estimator with a perfect perceptual index can
have that transports this mean, 10 log10(1 + gap / MSE). LPIPS only when its AlexNet backbone is on disk. Seconds:
the mean's solve per image; the flow per sample.
"""

from __future__ import annotations

import argparse
import math
import time
import warnings

import torch

from benchmarks.common import QUICK_CBSD68, check_cards_exclude, load_set, table, write_results
from benchmarks.common import tasks as quality_tasks

TASKS = ("denoise25", "deblur_gauss1", "sr4")


def luminance(x: torch.Tensor) -> torch.Tensor:
    w = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True) if x.shape[1] == 3 else x


def sharpness(x: torch.Tensor) -> dict:
    """Per-batch mean of deepinv's no-reference blur strength and sharpness index on the luminance."""
    import deepinv as dinv

    y = luminance(x)
    return {"blur_strength": float(dinv.loss.metric.BlurStrength()(y).mean()),
            "sharpness_index": float(dinv.loss.metric.SharpnessIndex()(y).mean())}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--images", type=int, default=16, help="number of CBSD68 images (full run)")
    ap.add_argument("--crop", type=int, default=256)
    ap.add_argument("--samples", type=int, default=None)
    ap.add_argument("--flow-steps", type=int, default=None,
                    help="PMRF's Euler steps (default: the solver's, i.e. the flow card's per task family)")
    ap.add_argument("--scan-steps", type=int, nargs="*", default=[1, 2, 4, 8],
                    help="also run the flow with these Euler step counts (the PSNR / sharpness trade-off)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")

    from restore import metrics
    from restore.priors import registry
    from restore.solvers import base
    from restore.solvers.pmrf import PAPER_STEPS, flow_transport
    from restore.tasks import parse

    check_cards_exclude("CBSD68", ["flow-natural", "score-natural"])
    crop = 128 if args.quick else args.crop
    k = args.samples or (2 if args.quick else 4)
    files = QUICK_CBSD68 if args.quick else None
    images = load_set("CBSD68", crop=crop, files=files)
    if not args.quick:
        images = images[:args.images]
    flow = registry.load("flow-natural")
    solver = base.get("pmrf", flow_steps=args.flow_steps)
    sigma_s = float(flow.card.get("sigma_s", 0.025))
    specs = quality_tasks()
    rows = []
    t_start = time.time()
    for tname in TASKS:
        task = parse(specs[tname])
        acc: dict[str, dict[str, list]] = {}
        outputs: dict[str, list] = {}

        def add(method, values, est=None):
            for key, v in values.items():
                if v is not None:
                    acc.setdefault(method, {}).setdefault(key, []).append(float(v))
            if est is not None:
                outputs.setdefault(method, []).append(est)

        steps = None
        for i, (_, x) in enumerate(images):
            g = torch.Generator().manual_seed(i)
            y, physics = task.simulate(x, g)
            steps, steps_from = solver.flow_steps(physics, flow)
            t0 = time.perf_counter()
            mean = solver.posterior_mean(y, physics, flow, torch.Generator().manual_seed(1000 + i),
                                         lambda f, m: None)
            t_mean = time.perf_counter() - t0
            t0 = time.perf_counter()
            samples = flow_transport(mean, flow.module, n_samples=k, sigma_s=sigma_s, steps=steps,
                                     generator=torch.Generator().manual_seed(2000 + i))
            t_flow = (time.perf_counter() - t0) / k
            add("clean image", sharpness(x), x)
            scans = [(f"pmrf sample, {n} steps" + (" (paper)" if n == PAPER_STEPS else ""), flow_transport(
                mean, flow.module, n_samples=k, sigma_s=sigma_s, steps=n,
                generator=torch.Generator().manual_seed(2000 + i)), None)
                for n in sorted(set(args.scan_steps) | {PAPER_STEPS}) if n != steps]
            for method, est, secs in (("posterior mean", mean, t_mean),
                                      (f"pmrf sample (default: {steps} steps)", samples, t_flow),
                                      ("pmrf average of K", samples.mean(0, keepdim=True), None), *scans):
                lp = metrics.lpips(est, x.expand_as(est))
                add(method, {"psnr": metrics.psnr(est, x.expand_as(est)).mean(),
                             "mse": ((est.clamp(0, 1) - x) ** 2).mean(),
                             "ssim": metrics.ssim(est, x.expand_as(est)).mean(),
                             "lpips": None if lp is None else lp.mean(), "seconds": secs, **sharpness(est)}, est)
        clean = torch.cat(outputs["clean image"])
        for method, vals in acc.items():
            row = {"task": tname, "method": method, **{key: sum(v) / len(v) for key, v in vals.items()}}
            # a distribution-level number: the whole set of outputs against the clean crops
            row["spectral_gap_e4"] = 1e4 * metrics.spectral_gap(torch.cat(outputs[method]), clean)
            rows.append(row)
        pm = next(r for r in rows if r["task"] == tname and r["method"] == "posterior mean")
        # any estimator distributed like clean images that transports this mean has MSE >= MSE(mean) + gap(mean)
        pm["perfect_perception_cost_bound"] = 10 * math.log10(1 + pm["spectral_gap_e4"] * 1e-4 / pm["mse"])
        for r in rows:
            if r["task"] == tname and r["method"].startswith("pmrf sample"):
                r["psnr_cost_vs_mean"] = pm["psnr"] - r["psnr"]
            if r["task"] == tname and r["method"].startswith("pmrf sample (default"):
                r["flow_steps"], r["flow_steps_from"], ps = steps, steps_from, r
        print(f"[{time.time() - t_start:5.0f}s] {tname}: mean {pm['psnr']:.2f} dB, pmrf ({steps} steps) "
              f"{ps['psnr']:.2f} dB; blur strength {pm['blur_strength']:.3f} -> {ps['blur_strength']:.3f}", flush=True)
    cols = ["task", "method", "psnr", "ssim", "lpips", "blur_strength", "sharpness_index", "spectral_gap_e4",
            "psnr_cost_vs_mean", "perfect_perception_cost_bound", "seconds"]
    print(table(rows, cols))
    path = write_results("pmrf_quick" if args.quick else "pmrf", {
        "images": [n for n, _ in images], "crop": crop, "samples": k,
        "flow_steps": args.flow_steps or flow.card.get("euler_steps", "paper"),
        "scan_steps": args.scan_steps,
        "sigma_s": sigma_s, "tasks": {t: specs[t] for t in TASKS}, "flow_card_steps": flow.card.get("steps"),
        "rows": rows, "total_seconds": time.time() - t_start, "lpips_status": metrics.lpips_status()[1]}, args.out)
    print(f"wrote {path} in {time.time() - t_start:.0f}s")


if __name__ == "__main__":
    main()
