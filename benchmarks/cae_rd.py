"""Rate-distortion points of the shipped compressive autoencoders (VBLE's priors) on CBSD68.

    python -m benchmarks.cae_rd            # all 68 images, full size
    python -m benchmarks.cae_rd --quick    # the 4-image quick subset

For each CAE: bits per pixel of a real compress/decompress round trip (compressai's entropy coder) and the PSNR of
the decoded image, beside the rate estimated from the likelihoods. Images are reflect-padded to a multiple of 64
(the hyperprior's stride) and cropped back; bpp counts the original pixels. The published column is compressai's
own mbt2018-mean (N=128/M=192, MSE) on **Kodak** (results/image/8bit-decoded/kodak in the compressai repository):
another data set, given for scale only; BSD images carry more texture and cost more bits at equal PSNR.
"""

from __future__ import annotations

import argparse
import math
import re
import time

import torch
import torch.nn.functional as F

from benchmarks.common import QUICK_CBSD68, check_cards_exclude, load_set, table, write_results

# compressai's published mbt2018-mean (MSE) on Kodak: quality -> (bpp, PSNR dB); not ours, another data set
PUBLISHED_KODAK = {1: (0.124, 27.70), 2: (0.198, 29.35), 3: (0.307, 31.12), 4: (0.461, 32.94), 5: (0.662, 34.95),
                   6: (0.914, 36.88)}


@torch.no_grad()
def rd_point(net, x: torch.Tensor) -> dict:
    h, w = x.shape[-2:]
    ph, pw = -h % 64, -w % 64
    xp = F.pad(x, (0, pw, 0, ph), mode="reflect")
    out = net(xp)
    est_bits = sum(-torch.log2(v).sum() for v in out["likelihoods"].values()).item()
    comp = net.compress(xp)
    rec = net.decompress(comp["strings"], comp["shape"])["x_hat"][..., :h, :w].clamp(0, 1)
    bits = 8 * sum(len(s) for group in comp["strings"] for s in group)
    mse = torch.mean((rec - x) ** 2).item()
    return {"bpp": bits / (h * w), "bpp_estimated": est_bits / (h * w), "psnr": 10 * math.log10(1 / max(mse, 1e-12))}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    from restore.priors import registry

    names = [n for n in registry.available("cae") if registry.PRIORS[n].file]
    check_cards_exclude("CBSD68", names)
    images = load_set("CBSD68", files=QUICK_CBSD68 if args.quick else None)
    rows = []
    t_start = time.time()
    for name in names:
        prior = registry.load(name)
        net = prior.module
        net.update(force=True)
        acc: dict[str, list] = {}
        t0 = time.perf_counter()
        for _, x in images:
            for k, v in rd_point(net, x).items():
                acc.setdefault(k, []).append(v)
        row = {"prior": name, "lambda": prior.card.get("lambda"), "architecture": prior.card.get("architecture"),
               "training_steps": prior.card.get("steps"),
               **{k: sum(v) / len(v) for k, v in acc.items()},
               "seconds_per_image": (time.perf_counter() - t0) / len(images)}
        rows.append(row)
        print(row, flush=True)
    shipped = sorted({int(m.group(1)) for n in names if (m := re.search(r"-q(\d)$", n))})
    for q in [q for q in shipped if q in PUBLISHED_KODAK]:  # the published points at our shipped qualities
        rows.append({"prior": f"compressai mbt2018-mean q{q} (published, Kodak)", "bpp": PUBLISHED_KODAK[q][0],
                     "psnr": PUBLISHED_KODAK[q][1]})
    cols = ["prior", "lambda", "architecture", "training_steps", "bpp", "bpp_estimated", "psnr", "seconds_per_image"]
    print(table(rows, cols))
    path = write_results("cae_rd_quick" if args.quick else "cae_rd", {
        "images": [n for n, _ in images], "rows": rows, "total_seconds": time.time() - t_start}, args.out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
