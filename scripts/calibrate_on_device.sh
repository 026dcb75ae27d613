#!/bin/bash
# The slow paper presets' calibration tables (RED-Diff, PnP-ULA, APS, ScoreDVI: 0.5-10 min a run on this CPU) on a
# lent GPU: runs cells for MINUTES, fits the finished ones, leaves the tables and logs in $OUT
# (scripts/calibrate_on_device.py says how). A rerun on the same warm machine resumes from runs/calibration-paper.
#   prepare here:  mkdir -p train_data && cp -r ../shared/data/BSD432-train train_data/   (ignored)
#                  .venv/bin/pip download --no-deps -d .whl deepinv compressai pytorch-msssim natsort  (ignored)
#   device run:    bash scripts/calibrate_on_device.sh 8   with carry [train_data, .whl]
#   which:         SOLVERS=reddiff,langevin bash scripts/calibrate_on_device.sh 8   (default: all four)
#   then here:     copy the tables from files_at into models/calibration/, add MODELS.md rows, run
#                  python -m benchmarks.calibration --source quality_paper_quick after the paper rows' rerun
set -u
MIN=${1:-8}
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
python3 scripts/calibrate_on_device.py --minutes "$MIN" --solvers "${SOLVERS:-reddiff,langevin,aps,scoredvi}" \
    --device cuda --threads 3 --out-dir "$OUT"
nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv
tail -n 4 "$OUT"/calibrate_*.log
