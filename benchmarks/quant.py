"""Quantised backbones: speed, size and accuracy against float, in the same run.

    python -m benchmarks.quant [--quick]

For each shipped DRUNet-based backbone (score-natural, flow-natural) and scheme (int8 real kernels: the default with
4 noise/time bands and float first/last convolutions, all-int8, one band, and the same default through torchao's
PT2E + Inductor instead of FX; w8a8, w4a8 simulated, and w4a8 with the
3 layers the sensitivity scan ranks worst kept float): latency of one forward pass on a 256x256 colour image (median
of 5, after a warm-up call, which is where PT2E compiles) as a ratio to float eager; model size (bytes of the saved weights; simulated schemes report the
nominal bit-width ratio); output PSNR against the float output on the CBSD68 quick crops (denoising 25/255); and the
end-task PSNR change of each solver that uses the backbone (reddiff, langevin on score-natural; pmrf on flow-natural;
vble on cae-natural-q2, simulated schemes only; aps on tokens-natural) on the same crops. Quantised copies are
calibrated afresh here (never read from the on-disk cache).
Target from the issue: int8 >= 2x faster than float eager with <= 0.1 dB end-task loss.
"""

from __future__ import annotations

import argparse
import io
import statistics
import time
import warnings

import torch

from benchmarks.common import QUICK_CBSD68, load_set, table, write_results


def _size_bytes(module) -> int:
    buf = io.BytesIO()
    torch.save(module.state_dict(), buf)
    return buf.tell()


def _task_psnr(solver_name: str, options: dict, prior, crops, observations) -> float:
    """Mean PSNR of ``solver_name``'s posterior mean (K=2, seed = image index) on the crops' observations; for PMRF,
    whose denoising estimate is its denoiser stage (untouched by the flow), the mean of its flow samples."""
    from restore.metrics import psnr
    from restore.solvers import base

    solver = base.get(solver_name, **options)
    vals = []
    for i, (x, (y, ph)) in enumerate(zip(crops, observations)):
        post = solver(y, ph, prior, n_samples=2, generator=torch.Generator().manual_seed(i))
        vals.append(float(psnr(post.samples.mean(0, keepdim=True) if solver_name == "pmrf" else post.mean, x)))
    return sum(vals) / len(vals)


def _mean_psnr_vs(outputs: list, references: list) -> float:
    """Mean PSNR (dB) of quantised outputs against the float ones."""
    return sum(float(10 * torch.log10(1 / ((a - b) ** 2).mean().clamp_min(1e-20)))
               for a, b in zip(outputs, references)) / len(references)


def _nominal_size_ratio(scheme: str) -> float:
    """Simulated schemes store float weights: report their nominal bit width against float32."""
    return (8 if scheme == "w8a8" else 4) / 32


def make(prior, scheme: str, kw: dict):
    """A quantised copy; ``kw["mixed"] = n`` keeps the n most sensitive layers float (restore.quant.mixed_precision).
    Never from the on-disk cache, so every variant is calibrated in this run."""
    from restore.quant import mixed_precision, quantize

    kw = dict(kw)
    n_float = kw.pop("mixed", 0)
    if n_float:
        return mixed_precision(prior, scheme, n_float, cache=False, **kw)
    return quantize(prior, scheme, cache=False, **kw)


def _cae_rows(prior, crops, observations, quick: bool) -> list[dict]:
    """The CAE behind VBLE: simulated schemes only (VBLE back-propagates through the decoder, so real int8 is
    refused). Output PSNR = CAE reconstruction (encode + decode) against the float one; the end task is VBLE on the
    same denoising observations. Latency is not reported: simulated quantisation runs in float."""
    opts = {"iterations": 100, "stat_samples": 32} if quick else {}

    def task_psnr(p):
        return _task_psnr("vble", opts, p, crops, observations)

    def recon(p):
        with torch.no_grad():
            return [p.module(x)["x_hat"] for x in crops]

    ref, base_task = recon(prior), task_psnr(prior)
    rows = []
    for label, (scheme, kw) in {"w8a8": ("w8a8", {}), "w4a8": ("w4a8", {}),
                                "w4a8 mixed (3 float)": ("w4a8", {"mixed": 3})}.items():
        q = make(prior, scheme, kw)
        out = recon(q)
        row = {"backbone": prior.name, "scheme": label, "size_ratio": _nominal_size_ratio(scheme),
               "output_psnr_vs_float": _mean_psnr_vs(out, ref),
               "vble_task_psnr_change": task_psnr(q) - base_task,
               "note": "reconstruction vs float" + (", float: " + ", ".join(q.card["float_layers"])
                                                    if q.card.get("float_layers") else "")}
        rows.append(row)
        print(row, flush=True)
    return rows


def _token_rows(prior, crops, quick: bool) -> list[dict]:
    """The token prior: only its transformer is quantised (APS runs it forward-only). Latency of one transformer
    call on a 64x64 token grid (a 256 px image); 'output_psnr_vs_float' is replaced by the largest change of a token
    probability; the end task is APS on box inpainting (2.55/255) of the same crops."""
    from restore.tasks import parse

    task = parse(f"inpaint:box:size=0.3,noise={2.55 / 255:.6f}")
    observations = [task.simulate(x, torch.Generator().manual_seed(i)) for i, x in enumerate(crops)]
    opts = {"steps": 8, "inner_steps": 15} if quick else {}
    grid = torch.randint(prior.module.transformer.mask_id, (1, 64, 64), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        idx = prior.module.tokenizer.encode(torch.cat(crops))

    def latency(p):
        with torch.no_grad():
            p.module.transformer(grid)
            ts = []
            for _ in range(5):
                t0 = time.perf_counter()
                p.module.transformer(grid)
                ts.append(time.perf_counter() - t0)
        return statistics.median(ts)

    def task_psnr(p):
        return _task_psnr("aps", opts, p, crops, observations)

    with torch.no_grad():
        ref = prior.module.transformer(idx).softmax(-1)
    t_float, base_task, size_float = latency(prior), task_psnr(prior), _size_bytes(prior.module.transformer)
    rows = []
    for scheme in ("int8", "w8a8", "w4a8"):
        q = make(prior, scheme, {})
        with torch.no_grad():
            change = float((q.module.transformer(idx).softmax(-1) - ref).abs().max())
        row = {"backbone": "tokens-natural (transformer)", "scheme": scheme, "float_ms": 1000 * t_float,
               "quant_ms": 1000 * latency(q), "size_ratio": (_size_bytes(q.module.transformer) / size_float)
               if scheme == "int8" else _nominal_size_ratio(scheme),
               "aps_task_psnr_change": task_psnr(q) - base_task,
               "note": f"max token-probability change {change:.3f}"}
        row["speedup"] = row["float_ms"] / row["quant_ms"]
        rows.append(row)
        print(row, flush=True)
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--backbones", nargs="*",
                    default=["score-natural", "flow-natural", "cae-natural-q2", "tokens-natural"])
    ap.add_argument("--latency-only", action="store_true",
                    help="only latency, size and output PSNR of the conv backbones (no end task): a short run to "
                         "repeat on a quiet machine, since latency suffers most from other loads")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    from restore.tasks import parse
    from restore.priors import registry

    crops = [x for _, x in load_set("CBSD68", crop=128, files=QUICK_CBSD68)]
    x256 = load_set("CBSD68", crop=256, files=QUICK_CBSD68[:1])[0][1]
    task_spec = f"denoise:gaussian:sigma={25 / 255:.6f}"
    task = parse(task_spec)
    observations = [task.simulate(x, torch.Generator().manual_seed(i)) for i, x in enumerate(crops)]
    solvers = {"score-natural": {"reddiff": {"steps": 30 if args.quick else 100},
                                 "langevin": {"iterations": 100 if args.quick else 500, "prior_sigma": 0.02}},
               "flow-natural": {"pmrf": {"flow_steps": 25}}}
    variants = {"int8": ("int8", {}), "int8 all-int8": ("int8", {"keep_first_last": False}),
                "int8 1 band": ("int8", {"bands": 1}), "int8 pt2e": ("int8", {"backend": "pt2e"}),
                "w8a8": ("w8a8", {}), "w4a8": ("w4a8", {}),
                "w4a8 mixed (3 float)": ("w4a8", {"mixed": 3})}
    rows = []
    for name in [n for n in ("score-natural", "flow-natural") if n in registry.available() and n in args.backbones]:
        prior = registry.load(name)
        first_call: dict[str, float] = {}
        # the conditioning the solvers use most: sigma 25/255 for the denoiser, mid-way time for the flow
        cond = 25 / 255 if prior.kind == "denoiser" else 0.5

        def latency(p):
            y = x256 + 0.1 * torch.randn(x256.shape, generator=torch.Generator().manual_seed(0))
            with torch.no_grad():
                t0 = time.perf_counter()
                p.module(y, cond)
                first_call[p.name] = time.perf_counter() - t0
                ts = []
                for _ in range(5):
                    t0 = time.perf_counter()
                    p.module(y, cond)
                    ts.append(time.perf_counter() - t0)
            return statistics.median(ts)

        def outputs(p):
            g = torch.Generator().manual_seed(1)
            with torch.no_grad():
                return [p.module(x + 25 / 255 * torch.randn(x.shape, generator=g), cond) for x in crops]

        def task_psnr(solver_name, p):
            return _task_psnr(solver_name, solvers[name][solver_name], p, crops, observations)

        t_float, out_float, size_float = latency(prior), outputs(prior), _size_bytes(prior.module)
        base_task = {} if args.latency_only else {s: task_psnr(s, prior) for s in solvers[name]}
        for label, (scheme, kw) in variants.items():
            t0 = time.perf_counter()
            q = make(prior, scheme, kw)
            build_s = time.perf_counter() - t0
            row = {"backbone": name, "scheme": label, "float_ms": 1000 * t_float, "quant_ms": 1000 * latency(q),
                   "build_s": build_s, "first_call_s": first_call[q.name]}
            out_q = outputs(q)
            row["output_psnr_vs_float"] = _mean_psnr_vs(out_q, out_float)
            row["speedup"] = row["float_ms"] / row["quant_ms"]
            row["size_ratio"] = (_size_bytes(q.module) / size_float) if scheme == "int8" else \
                _nominal_size_ratio(scheme)
            if q.card.get("float_layers"):
                row["note"] = "float: first, last, " + ", ".join(q.card["float_layers"])
            for s in base_task:
                row[f"{s}_task_psnr_change"] = task_psnr(s, q) - base_task[s]
            rows.append(row)
            print(row, flush=True)
    for name in [n for n in ("cae-natural-q2",) if n in registry.available() and n in args.backbones
                 and not args.latency_only]:
        rows += _cae_rows(registry.load(name), crops, observations, args.quick)
    if "tokens-natural" in args.backbones and "tokens-natural" in registry.available() and not args.latency_only:
        rows += _token_rows(registry.load("tokens-natural"), crops, args.quick)
    cols = ["backbone", "scheme", "float_ms", "quant_ms", "speedup", "build_s", "first_call_s", "size_ratio",
            "output_psnr_vs_float",
            "reddiff_task_psnr_change", "langevin_task_psnr_change", "pmrf_task_psnr_change", "vble_task_psnr_change",
            "aps_task_psnr_change",
            "note"]
    print(table(rows, cols))
    name = "quant_latency" if args.latency_only else ("quant_quick" if args.quick else "quant")
    path = write_results(name, {
        "rows": rows, "task": task_spec, "images": list(QUICK_CBSD68), "threads": torch.get_num_threads(),
        "solver_options": solvers, "note": "size_ratio of simulated schemes is the nominal bit-width ratio"}, args.out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
