"""Where each shipped prior stands against its target (issue #22): measured now, gap, training curve, what limits it.

    python -m benchmarks.priors          # reads the model cards and the priors' own benchmark results; no solver runs

Nothing here is measured afresh: the numbers come from each prior's card (its validation log over training steps)
and from the benchmark files that measure the prior on its own (``benchmarks.denoiser``, ``benchmarks.cae_rd``,
``benchmarks.pmrf``, ``benchmarks.aps``), so rerun those after a training and then this. It prints one row per prior
(target, now, gap, steps so far, what limits it, the command that continues its training), writes the JSON, and
plots the validation curves that the cards logged (quality against training steps) as a PNG beside it, with the
continuations that were measured but not shipped (``benchmarks/prior_runs_not_shipped.json``, where each says where
its numbers come from) dashed after them.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from benchmarks.common import REPO, RESULTS, table, write_results

# What held each prior back, judged from its card and curve (see docs/priors.md); the numbers are in the rows.
LIMITS = {
    "score-natural": "data and capacity: 432 BSD images and 4.25 M parameters (DnCNN-type targets train on ~5k "
                     "images, DRUNet 32 M parameters on ~8.7k); the cosine schedule ended flat (+0.002 dB in the "
                     "last 2 000 steps)",
    "cae-natural-q2": "capacity and compute: N=64 / M=96 (compressai's low rates use N=128 / M=192) and 41 k steps "
                      "of 128-256 px crops (compressai trains ~2 M steps on Vimeo-90k); still rising at the end",
    "cae-natural-q4": "as q2: fine-tuned 41 k CPU steps from q2's weights (10 k with a cosine decay, then 12 k with "
                      "colour augmentation); level at the end",
    "cae-natural-q6": "capacity above all: M=96 latent channels for a rate where compressai uses M=320; fine-tuned "
                      "15 k CPU steps from q4 (flat at the end), then 12 k with colour augmentation",
    "flow-natural": "compute and capacity: 40 k steps (12 k on a lent GPU, 28 k on one CPU thread) against hundreds "
                    "of thousands in the PMRF paper, flat over the last 8 k and over 2 250 more at 128 px; it does "
                    "not land on clean images, so the default runs 2-6 Euler steps (per task family), not the "
                    "paper's 25",
    "tokens-natural": "compute and data: 29 k GPU steps at 64 px; the transformer barely beats a uniform prior "
                      "(masked-token accuracy 6 %) and the 4x FSQ tokenizer caps every APS result (its decoder "
                      "fine-tuned alone for 10 k CPU steps: +0.1 dB, so the codes are the cap)",
}

CONTINUE = {  # resumable; without runs/ checkpoints they warm-start from the shipped weights (models/MODELS.md)
    "score-natural": "python -m restore.train.denoiser --data ../shared/data/BSD432-train --out models/score-natural "
                     "--ckpt runs/denoiser/last.pt --steps 33000",
    "cae-natural-q2": "python -m restore.train.cae --data ../shared/data/BSD432-train --N 64 --M 96 --lmbda 0.0035 "
                      "--out models/cae-natural-q2 --ckpt runs/cae-q2/last.pt",
    "cae-natural-q4": "python -m restore.train.cae --data ../shared/data/BSD432-train --N 64 --M 96 --lmbda 0.0130 "
                      "--init-from models/cae-natural-q4.pt --out models/cae-natural-q4 --ckpt runs/cae-q4/last.pt "
                      "--cosine-to 1e-6",
    "cae-natural-q6": "python -m restore.train.cae --data ../shared/data/BSD432-train --N 64 --M 96 --lmbda 0.0483 "
                      "--init-from models/cae-natural-q6.pt --out models/cae-natural-q6 --ckpt runs/cae-q6/last.pt "
                      "--colour-aug 0.4 --lr 3e-5 --cosine-to 1e-6",
    "flow-natural": "python -m restore.train.flow --data ../shared/data/BSD432-train --out models/flow-natural "
                    "--ckpt runs/flow-cpu/last.pt --threads 1 --batch 8 --patch 64 --lr 5e-5 --steps 60000",
    "tokens-natural": "python -m restore.train.tokens --out models/tokens-natural --ckpt runs/tokens/last.pt",
}


def _load(name: str) -> dict:
    path = RESULTS / name
    return json.loads(path.read_text()) if path.is_file() else {}


def _card(models: Path, name: str) -> dict:
    path = models / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def denoiser_row(card: dict) -> dict:
    rows = {r["sigma_255"]: r for r in _load("denoiser.json").get("rows", [])}
    now = [rows[s]["psnr"] for s in (15, 25, 50) if s in rows]
    ref = [rows[s]["DnCNN (published)"] for s in (15, 25, 50) if s in rows]
    return {"target": "CBSD68 sigma 15/25/50 at least CDnCNN (" + " / ".join(f"{v:.2f}" for v in ref) + " dB)",
            "now": " / ".join(f"{v:.2f}" for v in now) + " dB (benchmarks.denoiser)",
            "gap_db": round(min(a - b for a, b in zip(now, ref)), 2) if now else None}


def cae_row(card: dict, name: str) -> dict:
    row = next((r for r in _load("cae_rd.json").get("rows", []) if r.get("prior") == name), None)
    now = f"CBSD68 {row['bpp']:.3f} bpp / {row['psnr']:.2f} dB (benchmarks.cae_rd)" if row else "not measured"
    return {"target": "within 1.0 dB of compressai mbt2018-mean at equal bpp", "now": now,
            "gap_db": None}  # the published curve is on Kodak, a set we never evaluate on: the gap is not computed here


def flow_row(card: dict) -> dict:
    rows = _load("pmrf_quick.json").get("rows", [])
    costs = {r["task"]: r["psnr_cost_vs_mean"] for r in rows if "25 steps" in r.get("method", "")}
    return {"target": "PMRF at K = 25 within 1.0 dB of its mean (denoise, deblur, x4 SR)",
            "now": ("cost at K = 25: " + ", ".join(f"{t} {c:.2f}" for t, c in costs.items())
                    + " dB (benchmarks.pmrf --quick)") if costs else "not measured",
            "gap_db": round(1.0 - max(costs.values()), 2) if costs else None}


def tokens_row(card: dict) -> dict:
    rows = _load("aps_quick.json").get("rows", [])
    by = {(r["task"], r["variant"]): r["psnr"] for r in rows}
    gains = {t: by[(t, "both (default)")] - by[(t, "both, transformer replaced by a uniform prior")]
             for t, v in by if v == "both (default)" and (t, "both, transformer replaced by a uniform prior") in by}
    ceiling = card.get("held_out_64px", {}).get("tokenizer_psnr")
    return {"target": "transformer >= 1.0 dB over uniform logits on every task; tokenizer ceiling >= 30 dB",
            "now": ("transformer gain " + ", ".join(f"{t} {g:+.2f}" for t, g in gains.items())
                    + " dB (benchmarks.aps --quick)" if gains else "not measured") + f"; tokenizer {ceiling} dB",
            "gap_db": round(min(gains.values()) - 1.0, 2) if gains else None}


NOT_SHIPPED = Path(__file__).with_name("prior_runs_not_shipped.json")


def curves(cards: dict) -> dict:
    """Validation curves the cards logged: "prior: measure" -> list of (step, value). The tokenizer's card holds one
    held-out point (its training log is gone), plotted as such."""
    out = {}
    log = cards["score-natural"].get("validation_log", [])
    if log:
        out["score-natural: held-out PSNR at sigma 25 (dB)"] = [(e["step"], e["val_psnr"]["25"]) for e in log]
    log = cards.get("flow-natural", {}).get("validation_log", [])
    if log:
        out["flow-natural: held-out 25-step flow PSNR at 25/255 (dB)"] = [(e["step"], e["psnr_flow"]) for e in log]
    tokens = cards.get("tokens-natural", {})
    ceiling = tokens.get("held_out_64px", {}).get("tokenizer_psnr")
    if ceiling is not None and isinstance(tokens.get("steps"), dict):
        out["tokens-natural: held-out tokenizer PSNR at 64 px (dB)"] = [(tokens["steps"]["tokenizer"], ceiling)]
    for name in [n for n in cards if n.startswith("cae-")]:
        log = list(cards[name].get("validation_log", []))
        # a fine-tune's own log continues the curve (its steps counted on from the first training's)
        tune = cards[name].get("fine_tune", {})
        if log and tune.get("validation_log"):
            log += [{**e, "step": log[-1]["step"] + e["step"]} for e in tune["validation_log"]]
        if log:
            out[f"{name}: held-out PSNR (dB)"] = [(e["step"], e["psnr"]) for e in log]
            out[f"{name}: held-out bpp"] = [(e["step"], e["bpp"]) for e in log]
    return out


def not_shipped(path: Path) -> dict:
    """Continuations measured but not shipped: "prior: measure" (as in :func:`curves`) -> list of runs, each with
    ``what``, ``command``, ``source`` and ``points`` [(step, value)]."""
    out: dict = {}
    for run in (json.loads(path.read_text())["curves"] if path.is_file() else []):
        out.setdefault(f"{run['prior']}: {run['measure']}", []).append(run)
    return out


def plot(curve_data: dict, path: Path, extra: dict | None = None) -> Path | None:
    """One panel per PSNR curve (3 to a row); ``extra`` (:func:`not_shipped`) adds its runs dashed."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    psnr = {k: v for k, v in curve_data.items() if "PSNR" in k}
    cols = min(3, len(psnr))
    rows = -(-len(psnr) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.3 * rows), squeeze=False)
    for ax, (name, pts) in zip(axes.flat, psnr.items()):
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=".", label="shipped")
        for run in (extra or {}).get(name, []):
            ax.plot([p[0] for p in run["points"]], [p[1] for p in run["points"]], "--", marker=".",
                    label="not shipped: " + run["what"].split(" (")[0].split(",")[0])
        if (extra or {}).get(name):
            ax.legend(fontsize=7, loc="lower right")
        ax.set_title(name.split(":")[0], fontsize=9)
        ax.set_xlabel("training step")
        ax.set_ylabel(name.split(": ")[1], fontsize=8)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(psnr):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--models", default=str(REPO / "models"), help="folder with the priors' cards")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    models = Path(args.models)
    names = list(LIMITS)  # every shipped prior has what limited it and how to continue it
    cards = {n: _card(models, n) for n in names}
    measure = {"score-natural": denoiser_row, "flow-natural": flow_row, "tokens-natural": tokens_row}
    rows = []
    for n in names:
        row = {"prior": n, **(measure[n](cards[n]) if n in measure else cae_row(cards[n], n))}
        row.update(steps=cards[n].get("steps"), wall_time_hours=cards[n].get("wall_time_hours"),
                   hardware=cards[n].get("hardware"), limited_by=LIMITS[n], continue_with=CONTINUE[n])
        rows.append(row)
    print(table(rows, ["prior", "target", "now", "gap_db", "steps"]))
    curve_data, extra = curves(cards), not_shipped(NOT_SHIPPED)
    path = write_results("priors", {"benchmark": "priors", "rows": rows, "curves": curve_data,
                                    "not_shipped": extra}, args.out)
    png = plot(curve_data, path.with_name("priors_curves.png"), extra)
    print(f"wrote {path}" + (f" and {png}" if png else ""))
    return rows


if __name__ == "__main__":
    main()
