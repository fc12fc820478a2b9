#!/usr/bin/env bash
# Create .venv and install exactly requirements/lock.txt (every package at its locked version, hashes checked),
# then mmcv built here from its source (scripts/build_mmcv.sh, cached outside the repo) and this project
# (editable, without dependencies: the lock holds them all). Idempotent: a stamp skips a finished install until the
# lock, this script or pyproject.toml change. tests/test_environment.py checks that .venv equals the lock.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd); cd "$here"
VENV=${VENV:-.venv}
LOCK=requirements/lock.txt
stamp="$VENV/.installed"
key=$(cat "$LOCK" requirements/pins.txt scripts/install.sh scripts/build_mmcv.sh pyproject.toml | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$key" ]; then echo "install: up to date ($VENV)"; exit 0; fi
[ -x "$VENV/bin/python" ] || python3.11 -m venv "$VENV" 2>/dev/null || python3 -m venv "$VENV"
PY="$VENV/bin/python"
PIP=("$PY" -m pip --disable-pip-version-check -q)
# mmcv is the one package not installed from the registry: the lock keeps its source archive's hashes
# (build_mmcv.sh checks them), so the hash-checked install takes every other entry.
hashed=$(mktemp); trap 'rm -f "$hashed"' EXIT
awk '/^mmcv==/ {skip=1; next} skip && /^[[:space:]]/ {next} {skip=0; print}' "$LOCK" > "$hashed"
"${PIP[@]}" install --require-hashes --no-deps -r "$hashed"
whl=$(scripts/build_mmcv.sh "$PY" | tail -n 1)
want=$(sed -n 's/^mmcv==\([^ ]*\).*/\1/p' "$LOCK")
case "$(basename "$whl")" in mmcv-"$want"-*) ;; *) echo "install: $whl is not mmcv $want (the lock's)" >&2; exit 1;; esac
"${PIP[@]}" install --no-deps "$whl"
"${PIP[@]}" install --no-deps --no-build-isolation -e .
# exactly the lock: what an older install left behind and the lock no longer has goes
extra=$(PYTHONPATH="$here" "$PY" -c 'from common.lockfile import extra_packages; print(" ".join(extra_packages()))')
[ -z "$extra" ] || { echo "install: removing $extra (not in the lock)"; "${PIP[@]}" uninstall -y $extra; }
"$PY" -m pip check >/dev/null || { "$PY" -m pip check >&2; exit 1; }
"$PY" -c 'import distill, transfer, mmdet, mmpretrain, timm, onnxruntime; from mmcv.ops import nms, RoIAlign'
echo "$key" > "$stamp"
echo "install: done ($VENV, requirements/lock.txt)"
