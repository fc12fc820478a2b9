#!/usr/bin/env python
"""The whole chain on the built-in shapes world, each step through the command line a user would call:

  make shapes -> train a teacher -> distill a student (vanilla KD; a scratch student with the same budget
  trains next to it on the same batches) -> convert it to an mmdet backbone -> fine-tune Mask R-CNN
  -> COCO box/mask evaluation -> draw its predictions on val images (tools/infer.py) -> export the backbone to
  ONNX and check it.

Writes work_dirs/demo/report.md (table, training curves, detections.png) and work_dirs/demo/report.json.
    python tools/demo.py                  # the full demo (<= 10 minutes on 2 cores)
    python tools/demo.py --profile smoke  # the smallest chain (the test suite runs it)
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common.io import cli_main  # noqa: E402
from demo.chain import PROFILES, run_demo  # noqa: E402


@cli_main
def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profile", choices=sorted(PROFILES), default="full")
    p.add_argument("--out", default="work_dirs/demo")
    p.add_argument("--data", default=None, help="shapes data folder (default: data/shapes, smoke: <out>/data)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2)
    a = p.parse_args(argv)
    return run_demo(a.profile, a.out, a.data, a.seed, a.workers)


if __name__ == "__main__":
    main()
