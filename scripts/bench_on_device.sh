#!/bin/bash
# The full quality benchmark (68 CBSD68 images, 256 px, paper settings, 8 samples) on a lent GPU machine, in
# resumable per-image pieces: each call runs for at most SECONDS, keeps what it finished in runs/bench/quality.json
# and copies it to $OUT; the next call (same warm machine, or a fresh one given the file back through `carry`)
# continues where it stopped. Commit the file to benchmarks/results/quality.json and run `python -m benchmarks.report`.
#   prepare here:  mkdir -p bench_data && cp -r ../shared/data/CBSD68 ../shared/data/kernels bench_data/   (ignored)
#                  wheels of deepinv, compressai, pytorch-msssim, natsort in .whl/ (as for train_on_device.sh)
#   device run:    bash scripts/bench_on_device.sh 540 4   with carry [bench_data, .whl, runs/bench]
set -u
SECONDS_LIMIT=${1:-540}
JOBS=${2:-4}
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT" runs/bench
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 RESTORE_DATA=$PWD/bench_data
timeout -k 20 "$SECONDS_LIMIT" python3 -m benchmarks.quality --device cuda --jobs "$JOBS" --resume \
    --out runs/bench/quality.json > runs/bench/quality.log 2>&1
echo "exit $? after at most $SECONDS_LIMIT s"
cp runs/bench/quality.json runs/bench/quality.log "$OUT/" 2>/dev/null
python3 - <<'EOF'
import json
d = json.load(open("runs/bench/quality.json"))
print(f"{len(d['per_image'])} image results, complete: {d['complete']}")
EOF
tail -n 5 runs/bench/quality.log
