#!/usr/bin/env bash
# Short use_gpu=True training check (installs nothing): run from the repository root with the project's venv active.
#   bash benchmarks/gpu_train_check.sh            # 1 GPU worker, full softmax
#   WORKERS=2 bash benchmarks/gpu_train_check.sh  # DDP over 2 GPUs (NCCL)
# Prints a "RESULT {...}" line with samples/s (next-item predictions per second, epochs after the first).
set -euo pipefail
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
export PYTHONPATH="${PWD}${PYTHONPATH:+:$PYTHONPATH}"
timeout "${TIMEOUT:-480}" python benchmarks/gpu_train_check.py --workers "${WORKERS:-1}" --epochs "${EPOCHS:-3}" \
  --users "${USERS:-20000}" --items "${ITEMS:-20000}" --loss "${LOSS:-full}"
