#!/usr/bin/env bash
# Create .venv and install the whole stack from nothing; idempotent (a stamp skips a finished install
# until requirements/pins.txt, this script or pyproject.toml change).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd); cd "$here"
VENV=${VENV:-.venv}
stamp="$VENV/.installed"
key=$(cat requirements/pins.txt scripts/install.sh scripts/build_mmcv.sh pyproject.toml | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$key" ]; then echo "install: up to date ($VENV)"; exit 0; fi
[ -x "$VENV/bin/python" ] || python3.11 -m venv "$VENV" 2>/dev/null || python3 -m venv "$VENV"
PY="$VENV/bin/python"
PIP=("$PY" -m pip --disable-pip-version-check)
C=(-c requirements/pins.txt)
"${PIP[@]}" install -q "${C[@]}" -U pip wheel ninja setuptools
"${PIP[@]}" install -q "${C[@]}" torch torchvision
"${PIP[@]}" install -q "${C[@]}" numpy mmengine   # mmcv's build imports them
whl=$(scripts/build_mmcv.sh "$PY" | tail -n 1)
"${PIP[@]}" install -q "${C[@]}" "$whl"
"${PIP[@]}" install -q "${C[@]}" -e ".[dev]"
"$PY" -c 'import distill, transfer, mmdet, mmpretrain, timm, onnxruntime; from mmcv.ops import nms, RoIAlign'
echo "$key" > "$stamp"
echo "install: done ($VENV)"
