"""PMRF: the posterior mean vs the flow's output, on CBSD68 crops (issue: PMRF).

    python -m benchmarks.pmrf --quick        # 4 images (QUICK_CBSD68), 128x128 centre crops, 2 samples
    python -m benchmarks.pmrf                # 16 images, 256x256 centre crops, 4 samples

Tasks: Gaussian denoising 25/255 (mean = the flow card's denoiser), deblurring with the VBLE paper's gaussian_std1
kernel at 2.55/255 and x4 bicubic SR at 2.55/255 (mean = RED-Diff's posterior mean, PMRF's default source). Rows:
the clean image (sharpness reference), the posterior mean, one PMRF sample (PMRF's output as in the paper; metrics
averaged over the K samples) and the average of the K PMRF samples. No-reference sharpness: deepinv's BlurStrength
(Crete et al. 2007; 0 sharp .. 1 blurry) and SharpnessIndex (Blanchet and Moisan; higher is sharper), on the
luminance. LPIPS only when its AlexNet backbone is on disk. Seconds: the mean's solve per image; the flow per sample.
Rows "pmrf sample, N steps" rerun the flow from the same source noise with N Euler steps (``--scan-steps``): fewer
steps stay closer to the mean, more steps sharpen further.
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch

from benchmarks.common import QUICK_CBSD68, check_cards_exclude, load_set, table, write_results
from benchmarks.quality import tasks as quality_tasks

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
    ap.add_argument("--flow-steps", type=int, default=25)
    ap.add_argument("--scan-steps", type=int, nargs="*", default=[1, 2, 4, 8],
                    help="also run the flow with these Euler step counts (the PSNR / sharpness trade-off)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")

    from restore import metrics
    from restore.priors import registry
    from restore.solvers import base
    from restore.solvers.pmrf import flow_transport
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

        def add(method, values):
            for key, v in values.items():
                if v is not None:
                    acc.setdefault(method, {}).setdefault(key, []).append(float(v))

        for i, (_, x) in enumerate(images):
            g = torch.Generator().manual_seed(i)
            y, physics = task.simulate(x, g)
            t0 = time.perf_counter()
            mean = solver.posterior_mean(y, physics, flow, torch.Generator().manual_seed(1000 + i),
                                         lambda f, m: None)
            t_mean = time.perf_counter() - t0
            t0 = time.perf_counter()
            samples = flow_transport(mean, flow.module, n_samples=k, sigma_s=sigma_s, steps=args.flow_steps,
                                     generator=torch.Generator().manual_seed(2000 + i))
            t_flow = (time.perf_counter() - t0) / k
            add("clean image", sharpness(x))
            scans = [(f"pmrf sample, {n} steps", flow_transport(
                mean, flow.module, n_samples=k, sigma_s=sigma_s, steps=n,
                generator=torch.Generator().manual_seed(2000 + i)), None)
                for n in args.scan_steps if n != args.flow_steps]
            for method, est, secs in (("posterior mean", mean, t_mean),
                                      ("pmrf sample", samples, t_flow),
                                      ("pmrf average of K", samples.mean(0, keepdim=True), None), *scans):
                lp = metrics.lpips(est, x.expand_as(est))
                add(method, {"psnr": metrics.psnr(est, x.expand_as(est)).mean(),
                             "ssim": metrics.ssim(est, x.expand_as(est)).mean(),
                             "lpips": None if lp is None else lp.mean(), "seconds": secs, **sharpness(est)})
        for method, vals in acc.items():
            rows.append({"task": tname, "method": method, **{key: sum(v) / len(v) for key, v in vals.items()}})
        pm = next(r for r in rows if r["task"] == tname and r["method"] == "posterior mean")
        ps = next(r for r in rows if r["task"] == tname and r["method"] == "pmrf sample")
        for r in rows:
            if r["task"] == tname and r["method"].startswith("pmrf sample"):
                r["psnr_cost_vs_mean"] = pm["psnr"] - r["psnr"]
        print(f"[{time.time() - t_start:5.0f}s] {tname}: mean {pm['psnr']:.2f} dB, pmrf {ps['psnr']:.2f} dB; "
              f"blur strength {pm['blur_strength']:.3f} -> {ps['blur_strength']:.3f}", flush=True)
    cols = ["task", "method", "psnr", "ssim", "lpips", "blur_strength", "sharpness_index", "psnr_cost_vs_mean",
            "seconds"]
    print(table(rows, cols))
    path = write_results("pmrf_quick" if args.quick else "pmrf", {
        "images": [n for n, _ in images], "crop": crop, "samples": k, "flow_steps": args.flow_steps,
        "scan_steps": args.scan_steps,
        "sigma_s": sigma_s, "tasks": {t: specs[t] for t in TASKS}, "flow_card_steps": flow.card.get("steps"),
        "rows": rows, "total_seconds": time.time() - t_start, "lpips_status": metrics.lpips_status()[1]})
    print(f"wrote {path} in {time.time() - t_start:.0f}s")


if __name__ == "__main__":
    main()
