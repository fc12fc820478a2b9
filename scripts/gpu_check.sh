#!/usr/bin/env bash
# GPU smoke check of the distillation engine (CUDA paths CI cannot reach on CPU): nccl under torchrun, AMP
# (bf16 and fp16 with GradScaler), channels_last, a compiled teacher, hint losses with the CRD bank on the GPU,
# recording and replaying the teacher cache. Tiny data, a few minutes on one GPU.
# Usage: bash scripts/gpu_check.sh [OUT_DIR]   (PYTHON=python3 by default: any env with torch + timm)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${1:-work_dirs/gpu_check}
rm -rf "$OUT" && mkdir -p "$OUT"
log() { echo "== $* ($(date +%T))"; }
$PY -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')"
$PY tools/make_shapes.py --out "$OUT/shapes" --cls-train-per-class 64 --cls-val-per-class 16 --cls-size 64 \
    --det-train 2 --det-val 2 >/dev/null
D="--data-dir $OUT/shapes/classification --img-size 64 --batch-size 64 --workers 4 --warmup-epochs 0 --drop-path 0 \
   --opt adamw --lr 2e-3 --weight-decay 0.05 --progress log --log-interval 1000 --output $OUT/runs --device ${DEVICE:-cuda}"
AUG="--aa rand-m7-mstd0.5 --mixup 0.1 --cutmix 1.0 --mixup-mode sample --aug-repeats 3"
log "teacher: resnet34, bf16 AMP, channels_last"
$PY tools/distill.py $D --model resnet34 --epochs ${TEACHER_EPOCHS:-4} --amp --amp-dtype bfloat16 --channels-last --experiment teacher
T="--teacher resnet34 --teacher-checkpoint $OUT/runs/teacher/student.pth"
log "KD + DIST + CRD + ReviewKD from one compiled teacher, fp16 AMP (GradScaler), torchrun/nccl"
$PY -m torch.distributed.run --standalone --nproc_per_node 1 tools/distill.py $D $T --model resnet18 --kd-loss kd dist crd review \
    --epochs 2 --amp --amp-dtype float16 --channels-last --teacher-compile --experiment hints
log "record the teacher cache (fp32 student, teacher bf16 by --teacher-amp auto)"
$PY tools/distill.py $D $T $AUG --model resnet18 --epochs 2 --record-teacher "$OUT/cache" \
    --teacher-topk 5 --experiment online
log "replay it under torchrun/nccl: no teacher forward"
$PY -m torch.distributed.run --standalone --nproc_per_node 1 tools/distill.py $D $AUG --model resnet18 --epochs 2 \
    --teacher-cache "$OUT/cache" --experiment cached
$PY - "$OUT/runs" <<'EOF'
import json, sys, torch
root = sys.argv[1]
for run in ("teacher", "hints", "online", "cached"):
    s = json.load(open(f"{root}/{run}/summary.json"))
    print(run, {k: round(v["top1"], 2) for k, v in s["settings"].items()}, "teacher forwards", s["teacher_forwards_last_epoch"])
a = torch.load(f"{root}/online/student.pth", weights_only=True)
b = torch.load(f"{root}/cached/student.pth", weights_only=True)
print("recorded teacher precision", json.load(open(f"{root}/../cache/meta.json"))["teacher"]["precision"])
print("online vs cached student max abs diff", max((a[k].float() - b[k].float()).abs().max().item() for k in a))
EOF
log "done"
