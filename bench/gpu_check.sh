#!/usr/bin/env bash
# GPU check (see bench/gpu_check.py): MiniLM teacher vs ORT CUDA / TensorRT EP / TensorRT engines,
# parity and latency table. Meant for a machine with an NVIDIA GPU; on a CPU machine every GPU
# candidate is skipped with its reason. Hard limit 5 minutes; the script itself stops starting
# new candidates after --budget-s (default 270 s).
#   bash bench/gpu_check.sh [--run-dir artifacts/minilm] [--out bench/results/gpu_check.json]
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-}"
if [[ -z "$PY" ]]; then
  if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
fi
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"
export TRANSFORMERS_NO_ADVISORY_WARNINGS=1
exec timeout --signal=TERM --kill-after=10 300 "$PY" -m bench.gpu_check "$@"
