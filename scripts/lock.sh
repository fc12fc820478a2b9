#!/usr/bin/env bash
# Resolve requirements/pins.txt and pyproject.toml's dependencies into requirements/lock.txt: every package at an
# exact version with the registry's hashes (mmcv, built here from its source, by version: its hashes are the
# source archive's, which scripts/build_mmcv.sh checks). Made by uv, itself pinned in pins.txt and locked.
#   make lock              # after changing a pin: the same versions for the rest where they still fit
#   make lock UPGRADE=1    # newest releases the pins allow; review with `git diff requirements/lock.txt`
# The lock is for Linux x86_64, CPython 3.11 (this project's machines and CI).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd); cd "$here"
UV=${UV:-.venv/bin/uv}
[ -x "$UV" ] || UV=$(command -v uv || true)
[ -n "$UV" ] || { echo "lock: uv not found (make install puts it in .venv; or pip install uv==$(sed -n 's/^uv==//p' requirements/pins.txt))" >&2; exit 2; }
args=()
[ "${UPGRADE:-0}" = "1" ] && args+=(--upgrade)
tmp=$(mktemp); trap 'rm -f "$tmp"' EXIT
# uv prefers the versions already in its output file: start from the current lock, so a new pin moves nothing else
[ "${UPGRADE:-0}" = "1" ] || cp requirements/lock.txt "$tmp"
"$UV" pip compile pyproject.toml --extra dev --extra build -c requirements/pins.txt \
  --python-version 3.11 --python-platform x86_64-manylinux_2_28 --generate-hashes --no-annotate \
  --custom-compile-command "make lock" ${args[@]+"${args[@]}"} -o "$tmp" >/dev/null
digest=$(PYTHONPATH="$here" "${PYTHON:-python3}" -c 'from common.lockfile import input_digest; print(input_digest())')
{ echo "# input digest: $digest (requirements/pins.txt + pyproject.toml's dependencies; tests/test_environment.py checks it)"
  cat "$tmp"; } > requirements/lock.txt
echo "lock: requirements/lock.txt ($(grep -c '^[a-z0-9].*==' requirements/lock.txt) packages)"
