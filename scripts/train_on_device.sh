#!/bin/bash
# Train the shipped priors at once on a lent GPU machine (see models/MODELS.md), for MINUTES, then leave the
# exported float16 weights + cards + logs in $OUT. Resumable: rerun on the same (warm) machine continues from runs/,
# on a fresh one from the shipped weights in models/.
#   prepare here:  mkdir -p train_data && cp -r ../shared/data/BSD432-train train_data/   (ignored)
#                  wheels of deepinv, compressai, pytorch-msssim, natsort in .whl/ (see the device README)
#   device run:    bash scripts/train_on_device.sh 8   with carry [train_data, .whl]
#   which:         PRIORS="denoiser flow tokens cae-q4 cae-q2" bash scripts/train_on_device.sh 8   (default: flow tokens)
set -u
PRIORS=${PRIORS:-"flow tokens"}  # the priors of the open issues (#4, #5); add denoiser cae-q4 cae-q2 for all
want() { [[ " $PRIORS " == *" $1 "* ]]; }
MIN=${1:-8}
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT" runs/logs
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 OMP_NUM_THREADS=3
D=train_data/BSD432-train
common="--data $D --device cuda --threads 3 --stop-after $MIN"
want denoiser && python3 -m restore.train.denoiser $common --batch 32 --patch 128 --steps ${DEN_STEPS:-30000} --val-every 1000 \
    --ckpt-every 500 > runs/logs/denoiser.log 2>&1 &
want flow && python3 -m restore.train.flow $common --batch 32 --patch 128 --steps ${FLOW_STEPS:-20000} --ckpt-every 500 \
    > runs/logs/flow.log 2>&1 &
want tokens && python3 -m restore.train.tokens $common --batch 64 --tokenizer-steps ${TOK_STEPS:-8000} \
    --transformer-steps ${TF_STEPS:-12000} --ckpt-every 500 > runs/logs/tokens.log 2>&1 &
want cae-q4 && python3 -m restore.train.cae $common --batch 16 --patch 256 --steps 200000 --val-every 2000 \
    > runs/logs/cae-q4.log 2>&1 &
want cae-q2 && python3 -m restore.train.cae $common --N 64 --M 96 --lmbda 0.0035 --out models/cae-natural-q2 \
    --ckpt runs/cae-q2/last.pt --batch 16 --patch 256 --steps 200000 --val-every 2000 \
    > runs/logs/cae-q2.log 2>&1 &
sleep 90; nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv > runs/logs/gpu.txt
wait
# a retrained flow needs its Euler steps per task family again (the export drops the old ones; ~5 min on 8 threads)
want flow && [ "${FLOW_CALIBRATE:-1}" = 1 ] && python3 -m restore.train.flow_steps --data $D --threads 8 \
    > runs/logs/flow_steps.log 2>&1
for m in score-natural flow-natural tokens-natural cae-natural-q4 cae-natural-q2; do
    [ -f models/$m.pt ] && cp models/$m.pt "$OUT/"
done
tar czf "$OUT/cards_logs.tgz" models/*.json runs/logs
tail -n 3 runs/logs/*.log
