"""Which solver runs when none is named: the recommended solver per task, chosen on held-out crops.

Torch-free (the CLI's help text reads it before anything heavy loads); ``restore.api`` re-exports it.
"""

from __future__ import annotations

DEFAULT_SOLVER = "pmrf"
# The best fast choice per task family when none is named (``recommended_solver``), chosen on the priors' held-out
# BSD432 crops (benchmarks/results/recommended_heldout.json, from `python -m restore.train.tune --solver NAME
# --images 3 --crop 128 --samples 4`: every solver at its defaults, all calibrated) and confirmed on the CBSD68 quick
# crops (quality_paper_quick.json):
# - PMRF for denoising and deblurring: best of the fast solvers on denoising (held-out 30.46 dB, its estimate there
#   being its D(y) stage; RED-Diff 27.86) and Gaussian / motion blur (31.21 / 27.72 with its plug-and-play HQS
#   deblurring mean since 2026-12-04, 30.19 / 26.21 before; RED-Diff 29.78 / 26.15, Langevin 29.72 / 25.01), a few
#   seconds at 256 px; at light noise it is the only one above the input by 4 dB (benchmarks/results/lownoise.json).
# - RED-Diff for inpainting and x4 super-resolution: +0.70 / +0.40 dB over PMRF on random / box inpainting held out
#   (CBSD68 quick: +0.79 / +0.54) and +0.09 on x4 SR (8 held-out crops; CBSD68 24 images +0.29 over TV least squares
#   against PMRF's +0.25), at 17-20 s for 8 samples at 256 px (denoising; x4 SR runs 50 steps instead of 30) against
#   PMRF's 3.2-5.5 s (benchmarks/results/speed_targets.json).
# - ScoreDVI for unknown real noise, which only it models.
# - PMRF for x2 SR (RECOMMENDED_BY_PARAM): its plug-and-play HQS stage leads RED-Diff there, 28.06 against 27.83 dB on
#   the 8 held-out crops (RED-Diff leads x4 by 0.09 on the same crops) and 27.27 against 27.09 on 8 CQ100 photos, at
#   a third of the time (`python -m restore.train.tune --solver NAME --images 8 --crop 128 --samples 4 --tasks sr2 sr4`).
# (kind, variant) entries win over (kind, None) ones; anything else gets DEFAULT_SOLVER. A RECOMMENDED_BY_PARAM entry
# (kind, parameter, value) wins over both when the task has that parameter value.
RECOMMENDED = {("denoise", "real"): "scoredvi", ("sr", None): "reddiff", ("inpaint", None): "reddiff"}
RECOMMENDED_BY_PARAM = {("sr", "factor", 2): "pmrf"}
# Why, in one line for the app and the CLI, keyed as the two tables above (plus the DEFAULT_SOLVER kinds); held-out =
# the priors' 8 (x2 / x4 SR) or 3 held-out BSD432 crops; against TV = 24 CBSD68 images at 256 px (quality.json,
# quality_sr2.json)
WHY = {
    ("denoise", None): "best on held-out crops (30.5 dB at 25/255; next Langevin 28.5), +4.1 dB over TV least squares",
    ("deblur", None): "best on held-out crops (Gaussian / motion blur 31.2 / 27.7 dB; next Langevin 30.5 / 27.3), "
                      "+2.1 / +3.0 dB over TV least squares",
    ("denoise", "real"): "the only solver that models unknown camera noise (it fits the noise to the image)",
    ("sr", None): "best at x4 on held-out crops (24.38 dB; PMRF 24.29), +0.29 dB over TV least squares",
    ("sr", "factor", 2): "best at x2 on held-out crops (28.06 dB; next Langevin 27.85, RED-Diff 27.83), +0.96 dB over "
                         "TV least squares",
    ("inpaint", None): "best on held-out crops for random pixels (29.2 dB; PMRF 28.6; level on boxes), +1.6 / +0.1 dB "
                       "over TV least squares on random pixels / boxes",
}


def recommended_solver(task) -> str:
    """The solver used when none is named for ``task`` (a spec string or ``restore.tasks.Task``): a
    :data:`RECOMMENDED_BY_PARAM` entry the task's parameters match, else :data:`RECOMMENDED` for its kind and variant,
    or for its kind, else :data:`DEFAULT_SOLVER` (PMRF)."""
    return _choice(task)[0]


def recommended_reason(task) -> str:
    """'SOLVER: why' for the solver :func:`recommended_solver` picks for ``task`` (from :data:`WHY`)."""
    name, key = _choice(task)
    return f"{name}: {WHY[key]}" if key in WHY else name


def _choice(task) -> tuple[str, tuple]:
    """(solver, the key of the table entry that chose it) for a task spec or Task."""
    from restore.tasks import parse

    task = parse(task)
    params = dict(task.params)
    for (kind, key, value), name in RECOMMENDED_BY_PARAM.items():
        if task.kind == kind and key in params and params[key] == value:
            return name, (kind, key, value)
    key = _table_key(task.kind, task.variant)
    return RECOMMENDED.get(key, DEFAULT_SOLVER), key


def _table_key(kind: str, variant: str) -> tuple:
    """The RECOMMENDED (and WHY) key for a kind and variant: (kind, variant) where the table names the variant, else
    (kind, None)."""
    return (kind, variant) if (kind, variant) in RECOMMENDED else (kind, None)


def recommended_for(kind: str, variant: str) -> str:
    """:func:`recommended_solver` for a task kind and variant at parameters no RECOMMENDED_BY_PARAM entry names (no
    parameters needed, e.g. for listings; :func:`recommended_exceptions` gives those entries)."""
    return RECOMMENDED.get(_table_key(kind, variant), DEFAULT_SOLVER)


def recommended_summary() -> str:
    """One line naming the recommended solvers, from RECOMMENDED and RECOMMENDED_BY_PARAM (e.g. for help texts):
    'pmrf; reddiff for sr (pmrf at factor=2) and inpaint; scoredvi for denoise:real'."""
    by_solver: dict[str, list[str]] = {}
    for (kind, variant), name in RECOMMENDED.items():
        where = f"{kind}:{variant}" if variant else kind
        exceptions = "".join(f" ({e})" for e in recommended_exceptions(kind)) if not variant else ""
        by_solver.setdefault(name, []).append(where + exceptions)
    return "; ".join([DEFAULT_SOLVER] + [f"{name} for {' and '.join(where)}" for name, where in by_solver.items()])


def recommended_exceptions(kind: str) -> list[str]:
    """The RECOMMENDED_BY_PARAM entries for a task kind as 'SOLVER at KEY=VALUE' (e.g. for listings)."""
    return [f"{name} at {key}={value}" for (k, key, value), name in RECOMMENDED_BY_PARAM.items() if k == kind]
