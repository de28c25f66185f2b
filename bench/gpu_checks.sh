#!/usr/bin/env bash
# Every GPU measurement of the training step in one call (about 6-8 minutes on one H100/H200),
# for a session or a machine that has a GPU:
#     bash bench/gpu_checks.sh [python] > gpu_checks.txt 2>&1
# It needs torch with CUDA, timm, numpy, pyyaml and tqdm (no mlflow, snakemake or torchcodec).
# Figures for the README's performance table; paper recipe of config.yaml, bf16.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${1:-python3}
run() { echo; echo "\$ $*"; timeout 900 "$@"; echo "(exit $?)"; }

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$PY" -c 'import torch, timm; print("torch", torch.__version__, "cuda", torch.version.cuda, "timm", timm.__version__)'

# 1. eager: batch 8, 16, 32 (the default batch is the fastest that fits 80 GB), kernel
#    categories, and whether the small local views are launch-bound
run "$PY" bench/train_step.py --precision bf16 --batch 8,16,32 --steps 5 --profile --per-view
# 2. regional compilation (pretrain.compile: blocks), same batches
run "$PY" bench/train_step.py --precision bf16 --batch 8,16,32 --steps 5 --compile blocks --profile
# 3. fused AdamW against torch's foreach path, and fp16 + GradScaler
run "$PY" bench/train_step.py --precision bf16 --batch 8 --steps 5 --optimizer foreach
run "$PY" bench/train_step.py --precision fp16 --batch 8 --steps 5
# 4. the model and loss tests on the GPU host (fast paths against the plain path)
run "$PY" -m pytest -q -p no:cacheprovider tests/test_model.py tests/test_loss.py -k "not distributed"
