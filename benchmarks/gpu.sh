#!/usr/bin/env bash
# fit throughput on a GPU: RootSequence (workers 1, 4, 8) against the same events preloaded in memory.
# Run from the repository's root on a machine with an NVIDIA GPU and its driver; under 5 minutes.
# It makes a venv of its own with TensorFlow's CUDA build, writes the demo files in a temporary
# folder, and prints one line per contender (see benchmarks/gpu.py).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
VENV=${VENV:-.venv-gpu}
test -x "$VENV/bin/python" || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet -e . "tensorflow[and-cuda]"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$VENV/bin/python" benchmarks/gpu.py "$@"
