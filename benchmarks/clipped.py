"""Noisy photos as files hold them: clipped to [0, 1] and 8-bit, against the unclipped simulations every other
benchmark and every calibration table use.

    python -m benchmarks.clipped                                   # 8 CBSD68 crops, 128 px, 25 and 50/255
    python -m benchmarks.clipped --solvers pmrf reddiff --levels 50 --images 4
    python -m benchmarks.clipped --kind deblur --levels 2.55 7.65 --solvers pmrf reddiff \
        --out benchmarks/results/clipped_deblur.json
    python -m benchmarks.clipped --auto --out benchmarks/results/clipped_auto.json   # the level estimated

Per solver and noise level, three observations of the same crops with the same noise draw: unclipped (y = x + n, as
``Task.simulate`` makes it), the 8-bit file (clip to [0, 1], round to 1/255) restored as it is (the clipped values
taken for noisy ones, as before ``restore.censoring``), and the same file restored with the default imputation of
its clipped values (for every solver, also one that opts out of it: ``default`` names what the product does for
it). Columns: PSNR and calibrated 90 % coverage of each, and the share of clipped values. The imputation and the
opt-outs were chosen on the priors' held-out BSD432 crops (restore.censoring's docstring, Langevin's module);
CBSD68 only measures them.

``--auto``: every run at ``sigma=auto`` (the level estimated from each observation, as a user with a noisy file and
no known level runs it); the third mode is then what the product does there (``file, default``): it imputes only
where the clipped values and the noise look like white Gaussian noise at the estimated level
(``restore.censoring.clipping_unlike_gaussian``); column ``imputed`` counts those crops.
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import torch

from benchmarks.common import check_cards_exclude, load_set, spread, table, write_results

SOLVERS = ("pmrf", "reddiff", "langevin", "vble", "aps")
MODES = ("unclipped", "file as is", "file imputed")
KINDS = {"denoise": "denoise:gaussian:sigma={s}", "deblur": "deblur:gaussian:sigma=1.5,noise={s}",
         "sr4": "sr:bicubic:factor=4,noise={s}"}  # s: the level as the spec writes it (or "auto")


def observation(restorer, x: torch.Tensor, spec: str, seed: int, clipped: bool) -> torch.Tensor:
    """The task's simulated observation of x from ``seed``; ``clipped``: then clipped to [0, 1] and rounded to 8
    bits, as a file."""
    y = restorer.simulate(x, spec, seed=seed)
    return ((y.clamp(0, 1) * 255).round() / 255) if clipped else y


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--set", default="CBSD68")
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--crop", type=int, default=128)
    ap.add_argument("--kind", choices=list(KINDS), default="denoise", help="the task (its noise at --levels)")
    ap.add_argument("--levels", type=float, nargs="*", default=[25, 50], help="noise std /255")
    ap.add_argument("--solvers", nargs="*", default=list(SOLVERS))
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--auto", action="store_true", help="run at sigma=auto: the product's own choice to impute or not")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    modes = ("unclipped", "file as is", "file, default") if args.auto else MODES
    warnings.filterwarnings("ignore")
    from restore import Restorer, censoring

    class AsIs(Restorer):
        """A Restorer that hands the solver the clipped values as they are (the behaviour before the imputation)."""

        def uncensor(self, y, task, seed, force=False, estimated=False):
            return y, None

    class Imputed(Restorer):
        """A Restorer that imputes the clipped values for every solver, those that opt out included."""

        def uncensor(self, y, task, seed, force=False, estimated=False):
            return super().uncensor(y, task, seed, force=True, estimated=estimated)

    images = spread(load_set(args.set, args.crop), args.images)
    rows, t0 = [], time.time()
    for name in args.solvers:
        restorers = {"file as is": AsIs(name), "file imputed": Imputed(name), "file, default": Restorer(name)}
        restorers["unclipped"] = restorers[modes[2]]  # nothing at exactly 0 or 1: nothing imputed
        check_cards_exclude(args.set, [restorers["unclipped"].prior_name])
        for level in args.levels:
            spec = KINDS[args.kind].format(s=f"{level / 255:.6f}")
            run_spec = KINDS[args.kind].format(s="auto") if args.auto else spec
            got: dict[str, list] = {m: [] for m in modes}
            clipped_share, imputed = [], 0
            for i, (_, x) in enumerate(images):
                for mode in modes:
                    y = observation(restorers[mode], x, spec, i, clipped=mode != "unclipped")
                    post = restorers[mode](y, run_spec, samples=args.samples, seed=i, ground_truth=x)
                    m = post.meta["metrics"]
                    got[mode].append((m["psnr"], m["coverage_90"]))
                imputed += bool(post.meta.get("censored", {}).get("imputed"))  # the last mode's run
                low, high = censoring.censored(y)  # the last mode's observation: the clipped file
                clipped_share.append(float((low | high).float().mean()))
            default = "file imputed" if restorers["file imputed"].solver.impute_clipped else "file as is"
            row = {"solver": name, "task": run_spec, "sigma_255": level,
                   **({"imputed": imputed} if args.auto else {"default": default}),
                   "clipped_share": round(float(np.mean(clipped_share)), 4)}
            for mode in modes:
                a = np.array(got[mode])
                row[f"psnr {mode}"] = round(float(a[:, 0].mean()), 3)
                row[f"coverage_90 {mode}"] = round(float(a[:, 1].mean()), 4)
            rows.append(row)
            print(f"[{time.time() - t0:5.0f}s] " + ", ".join(f"{k} {v}" for k, v in row.items()), flush=True)
            write_results("clipped", {"kind": args.kind, "set": args.set, "auto": args.auto,
                                      "images": [n for n, _ in images], "crop": args.crop, "samples": args.samples,
                                      "rows": rows, "seconds": round(time.time() - t0, 1)},
                          args.out)
    print(table(rows, list(rows[0])))


if __name__ == "__main__":
    main()
