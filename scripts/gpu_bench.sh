#!/usr/bin/env bash
# Images/s of a ResNet-50 student on one GPU at 224 px (bf16 autocast, channels_last, LAMB + BCE as the A2 recipe):
# plain step, online KD from a beitv2_base_patch16_224 teacher (random weights), KD replayed from a teacher cache
# (top-10 of 1000), each from an in-memory batch (the GPU's limit) and through the real A2 training loader on
# generated JPEGs. Sized for a few minutes on one GPU (the JPEGs are written once, then reused); see bench/gpu.py.
# Usage: bash scripts/gpu_bench.sh [OUT_DIR] [bench/gpu.py flags ...]
#   PYTHON=python3 by default (any env with torch + timm); RUN_GPU_CHECK=1 also runs scripts/gpu_check.sh afterwards
#   (its output in GPU_CHECK_OUT, default work_dirs/gpu_check).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=work_dirs/gpu_bench
if [[ $# -gt 0 && $1 != -* ]]; then OUT=$1; shift; fi
mkdir -p "$OUT"
log() { echo "== $* ($(date +%T))"; }
$PY -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv || true
log "bench: bench/gpu.py $*"
$PY bench/gpu.py --out "$OUT/gpu_bench.json" "$@" 2>&1 | tee "$OUT/gpu_bench.log"
if [[ ${RUN_GPU_CHECK:-0} == 1 ]]; then
    log "GPU check (scripts/gpu_check.sh): its last run predates --teacher-amp auto"
    bash scripts/gpu_check.sh "${GPU_CHECK_OUT:-work_dirs/gpu_check}" 2>&1 | tee "$OUT/gpu_check.log"
fi
log "done: $OUT/gpu_bench.json"
