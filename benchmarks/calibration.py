"""Calibration of every solver: coverage of the 50/90/95% per-pixel intervals, std-|error| rank correlation, sample
diversity, and a reliability plot per solver, from the rows of the quality benchmark (same images and seeds).

    python -m benchmarks.calibration [--quick]     # reads benchmarks/results/quality[_quick].json
    python -m benchmarks.calibration --source quality_paper_quick   # any quality results file in benchmarks/results

A calibrated posterior covers the truth at the nominal rate (the design target for the 90% interval is 80-95%).
"""

from __future__ import annotations

import argparse
import json

from benchmarks.common import RESULTS, table, write_results

LEVELS = (0.5, 0.9, 0.95)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--source", default=None, help="name of a quality results file (default quality[_quick])")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    source = args.source or ("quality_quick" if args.quick else "quality")
    src = RESULTS / f"{source.removesuffix('.json')}.json"
    if not src.exists():
        raise SystemExit(f"{src} not found: run `python -m benchmarks.quality{' --quick' if args.quick else ''}` first")
    from restore.viz import save_reliability_plot

    quality = json.loads(src.read_text())
    rows, curves = [], {}
    by_method: dict[str, list] = {}
    for r in quality["rows"]:
        if "coverage_90" in r:
            by_method.setdefault(r["method"], []).append(r)
            rows.append({k: r.get(k) for k in ("task", "method", "coverage_50", "coverage_90", "coverage_95",
                                                "std_error_spearman", "sample_diversity")})
    for method, rs in by_method.items():
        cov = [sum(r[f"coverage_{int(100 * lv)}"] for r in rs) / len(rs) for lv in LEVELS]
        curves[method] = {"levels": list(LEVELS), "coverage": cov}
    suffix = source.removesuffix(".json").removeprefix("quality")  # '', '_quick', '_paper_quick', ...
    plot = RESULTS / f"reliability{suffix}.png"
    save_reliability_plot(curves, plot, title=f"coverage on CBSD68 crops ({len(quality['images'])} images)")
    print(table(rows, ["task", "method", "coverage_50", "coverage_90", "coverage_95", "std_error_spearman",
                       "sample_diversity"]))
    path = write_results("calibration" + suffix, {"source": src.name, "rows": rows, "curves": curves,
                                                  "plot": plot.name}, args.out)
    print(f"wrote {path} and {plot}")


if __name__ == "__main__":
    main()
