#!/usr/bin/env bash
# Every GPU check and measurement in one command (about 6 minutes on one H200):
#   1. the `cuda` test group: CUDA-graph capture per network, bf16/fp16 against fp32 at the paper
#      profile, torch.compile, ONNX Runtime's CUDA provider, a second GPU, TensorRT when installed,
#      the CLI on cuda, training resume on cuda;
#   2. `magicfuse bench` for the paper profile at 480x640 and 240x320 and the few-step profile,
#      eager fp32 against the CUDA default (`auto`: bf16, channels_last, CUDA graphs): one table.
# Usage: benchmarks/gpu_check.sh [OUT_DIR]   (default outputs/gpu_check); needs torch with CUDA.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-outputs/gpu_check}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
STEPS_FEW="$("$PY" -c 'import json; print(json.load(open("models/demo/model.json"))["schedule"]["steps"])')"

"$PY" - <<'PY' || { echo "gpu_check: torch sees no CUDA device" >&2; exit 2; }
import torch
assert torch.cuda.is_available()
print(f"GPU: {torch.cuda.get_device_name(0)} x{torch.cuda.device_count()}, torch {torch.__version__}")
PY

echo "== 1/2 cuda test group"
timeout 300 "$PY" -m pytest -q -m cuda tests/core/test_cuda.py tests/training/test_training.py -rs -p no:cacheprovider \
    2>&1 | tee "$OUT/cuda_tests.log"
tests_rc=${PIPESTATUS[0]}

echo "== 2/2 bench: paper profile 480x640 and 240x320 (25 steps) and the few-step profile ($STEPS_FEW steps)"
timeout 240 "$PY" -m magicfuse_core.cli bench --device cuda --profile paper --size 480x640 --size 240x320 \
    --steps 25 --steps "$STEPS_FEW" --backend torch --backend auto --outputs magimg,seg --runs 5 --warmup 2 \
    --json "$OUT/bench.json" 2>&1 | tee "$OUT/bench.txt"
bench_rc=${PIPESTATUS[0]}

echo "gpu_check: tests rc=$tests_rc, bench rc=$bench_rc; logs in $OUT"
exit $(( tests_rc != 0 || bench_rc != 0 ))
