#!/usr/bin/env bash
# Every GPU measurement of the training step and the input pipeline in one call (about
# 10-12 minutes on one H100/H200),
# for a session or a machine that has a GPU:
#     bash bench/gpu_checks.sh [python] > gpu_checks.txt 2>&1
# It needs torch with CUDA, timm, numpy, pyyaml, tqdm, PyAV and ffmpeg (torchcodec for 5-6).
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
# 5. the input pipeline (needs PyAV; torchcodec for the GPU decoder, carry its wheel): CPU
#    decode with GPU and with CPU augmentation, then NVDEC; cores per GPU for <= 10% data wait
run "$PY" bench/pretrain_e2e.py --device cuda --workers 2,4,8 --steps 30 --batch 16 \
    --augment auto,cpu --gpu-decoder --no-baseline
# 6. the GPU-only tests of the input pipeline: NVDEC frames, the augmentation ops on CUDA
run "$PY" -m pytest -q -rs -p no:cacheprovider tests/test_gpu_decode.py tests/test_augment_speed_ops.py tests/test_views.py
# 7. training on the GPU (#18): views built on the GPU against the CPU workers', bf16 and
#    fp16 + GradScaler runs, SIGKILL resume; NCCL when two GPUs are there (needs mlflow: carry
#    its wheels, /work/.library/device/README.md). Then the suite's CPU tests on a GPU host.
run "$PY" -m pytest -q -rs -p no:cacheprovider tests/test_gpu.py
run "$PY" -m pytest -q -rs -p no:cacheprovider tests/test_pretrain.py tests/test_checkpoint.py
