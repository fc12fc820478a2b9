#!/usr/bin/env bash
# Build mmcv (with its compiled ops) from the PyPI source into a wheel cache outside the repo.
# Why: PyPI has no mmcv 2.x wheels for current torch; the sdist hard-codes -std=c++17 while torch 2.14's
# headers need C++20. The wheel is cached under $VANILLAKD_CACHE (default ~/.cache/vanillakd), keyed by
# mmcv, torch, Python and CUDA, so a fresh clone reuses it instead of rebuilding (~10 min on 2 cores).
# Usage: scripts/build_mmcv.sh PYTHON   (a Python whose environment already has torch and setuptools)
# Prints the path of the wheel on its last line.
set -euo pipefail
PY=${1:-python}
PY=$("$PY" -c "import sys; print(sys.executable)")   # absolute: the build runs in another folder
here=$(cd "$(dirname "$0")/.." && pwd)
pin() { sed -n "s/^$1==\(.*\)$/\1/p" "$here/requirements/pins.txt"; }
MMCV=$(pin mmcv); TORCH=$(pin torch)
PYTAG=$("$PY" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
# CUDA ops only when a toolkit and a GPU are both present; otherwise the CPU ops.
CUDA_TAG=cpu
if command -v nvcc >/dev/null 2>&1 && command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 \
   && "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  CUDA_TAG=cu$("$PY" -c 'import torch; print(torch.version.cuda.replace(".", ""))')
  export FORCE_CUDA=1
fi
cache=${VANILLAKD_CACHE:-$HOME/.cache/vanillakd}/wheels/mmcv-$MMCV-torch$TORCH-$PYTAG-$CUDA_TAG
whl=$(ls "$cache"/mmcv-*.whl 2>/dev/null | head -n 1 || true)
if [ -n "$whl" ]; then echo "mmcv: cached wheel $whl" >&2; echo "$whl"; exit 0; fi

work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
echo "mmcv: building $MMCV for torch $TORCH ($PYTAG, $CUDA_TAG) in $work; takes ~10 min on 2 cores" >&2
"$PY" -m pip download --no-deps --no-binary :all: --no-build-isolation "mmcv==$MMCV" -d "$work" >&2
# the source archive must be the one the lock names (its registry hashes)
sum=$(sha256sum "$work"/mmcv-"$MMCV".tar.gz | cut -d' ' -f1)
if [ -f "$here/requirements/lock.txt" ] && ! grep -q "sha256:$sum" "$here/requirements/lock.txt"; then
  echo "mmcv: the downloaded mmcv-$MMCV.tar.gz (sha256 $sum) is not the one requirements/lock.txt names" >&2; exit 1
fi
tar -xzf "$work"/mmcv-"$MMCV".tar.gz -C "$work"
src="$work/mmcv-$MMCV"
sed -i 's/-std=c++17/-std=c++20/g' "$src/setup.py"
grep -q 'c++20' "$src/setup.py" || { echo "mmcv: could not switch setup.py to C++20" >&2; exit 1; }
mkdir -p "$cache.tmp"
( cd "$src" && MMCV_WITH_OPS=1 MAX_JOBS=${MAX_JOBS:-$(nproc)} \
    "$PY" -m pip wheel --no-build-isolation --no-deps -w "$cache.tmp" . >&2 )
rm -rf "$cache" && mv "$cache.tmp" "$cache"   # publish the cache entry only once complete
whl=$(ls "$cache"/mmcv-*.whl | head -n 1)
echo "mmcv: built $whl" >&2
echo "$whl"
