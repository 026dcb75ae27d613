"""APS ablation: our two additions (carried tilt, measurement-initialised tilt) against the plain reading of the paper.

    python -m benchmarks.aps --quick     # 3 held-out BSD432 images, 64x64 centre crops, the quick 6 x 8 steps
    python -m benchmarks.aps             # the same images at the paper's 16 x 30 steps

The images are the last ones of BSD432-train, which the token prior's training held out (its card says so), so the
choice of defaults is never tuned on the evaluation sets. Tasks: those of the quality benchmark (x4 SR, denoising
25/255, box inpainting). Rows: PSNR of the mean, mean posterior std, coverage of the 90% interval, seconds per image
(K samples), and the tokenizer's own reconstruction PSNR (APS's ceiling). The anchor-sampling row trades PSNR for
calibration; the last row replaces the transformer by equal logits, to show what the trained prior adds.
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch

from benchmarks.common import centre_crop, image_paths, table, write_results
from benchmarks.common import tasks as quality_tasks

TASKS = ("sr4", "denoise25", "inpaint_box")
VARIANTS = {"plain reading (init=prior, carry_tilt=False)": {"init": "prior", "carry_tilt": False},
            "carried tilt only": {"init": "prior", "carry_tilt": True},
            "measurement init only": {"init": "measurement", "carry_tilt": False},
            "both (default)": {},
            "both + anchors sampled from p (anchor_sampling=1)": {"anchor_sampling": 1.0},
            "both, transformer replaced by a uniform prior": {"uniform_prior": True}}


class UniformTransformer(torch.nn.Module):
    """Stands in for the masked-token transformer with equal logits for every code: what APS gets from the measurement
    and the tokenizer alone, i.e. how much the trained transformer adds."""

    def __init__(self, transformer):
        super().__init__()
        self.mask_id = transformer.mask_id  # == the number of codes: the vocabulary is the codes plus [MASK]

    def forward(self, tokens):
        return torch.zeros(tokens.shape[0], tokens[0].numel(), self.mask_id)


def uniform_prior(prior):
    from restore.priors.registry import Prior

    module = torch.nn.Module()  # a new container: the loaded prior keeps its own transformer
    module.tokenizer, module.transformer = prior.module.tokenizer, UniformTransformer(prior.module.transformer)
    return Prior(prior.name + "@uniform", prior.kind, module, prior.card)


def held_out_images(n: int, crop: int) -> list[tuple[str, torch.Tensor]]:
    from restore.io import read_image

    return [(p.name, centre_crop(read_image(p), crop)) for p in image_paths("BSD432-train")[-n:]]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--images", type=int, default=3)
    ap.add_argument("--crop", type=int, default=64)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")

    from restore import metrics
    from restore.priors import registry
    from restore.solvers import base
    from restore.tasks import parse

    prior = registry.load("tokens-natural")
    card_data = str(prior.card.get("training_data", ""))
    if "held out" not in card_data:
        raise SystemExit(f"tokens-natural's card does not say which images it held out: {card_data!r}")
    steps = {"steps": 6, "inner_steps": 8} if args.quick else {}
    images = held_out_images(args.images, args.crop)
    specs = quality_tasks()
    with torch.no_grad():
        ceiling = sum(float(metrics.psnr(prior.module.tokenizer(x).clamp(0, 1), x)) for _, x in images) / len(images)
    rows = []
    for tname in TASKS:
        task = parse(specs[tname])
        obs = [task.simulate(x, torch.Generator().manual_seed(i)) for i, (_, x) in enumerate(images)]
        rows.append({"task": tname, "variant": "tokenizer ceiling", "psnr": ceiling})
        for vname, cfg in VARIANTS.items():
            cfg = dict(cfg)
            used = uniform_prior(prior) if cfg.pop("uniform_prior", False) else prior
            solver = base.get("aps", **steps, **cfg)
            acc = {"psnr": 0.0, "mean_std": 0.0, "coverage_90": 0.0, "seconds": 0.0}
            for i, ((_, x), (y, physics)) in enumerate(zip(images, obs)):
                t0 = time.perf_counter()
                post = solver(y, physics, used, n_samples=args.samples, generator=torch.Generator().manual_seed(i))
                acc["seconds"] += time.perf_counter() - t0
                acc["psnr"] += float(metrics.psnr(post.mean, x))
                acc["mean_std"] += float(post.std.mean())
                acc["coverage_90"] += metrics.coverage(post, x, 0.9)
            rows.append({"task": tname, "variant": vname, **{k: v / len(images) for k, v in acc.items()}})
            print(f"{tname:<12} {vname:<46} PSNR {rows[-1]['psnr']:.2f}", flush=True)
    print(table(rows, ["task", "variant", "psnr", "mean_std", "coverage_90", "seconds"]))
    path = write_results("aps_quick" if args.quick else "aps",
                         {"images": [n for n, _ in images], "crop": args.crop, "samples": args.samples,
                          "steps": steps or "solver defaults (16 x 30)", "rows": rows}, args.out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
