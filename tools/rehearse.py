#!/usr/bin/env python
"""Rehearse the paper's paths at their real settings, a few iterations each, before paying for the full runs.

    python tools/rehearse.py                                      # cpu profile on generated stand-ins (make rehearse)
    python tools/rehearse.py --imagenet /data/imagenet --coco /data/coco          # on your data, checked first
    python tools/rehearse.py --imagenet data/hf_cache --imagenet-dataset hfds/data/imagenet-1k   # parquet, shards
    python tools/rehearse.py --profile gpu --gpus 64              # every path under torchrun on this node's GPUs
    python tools/rehearse.py --only distill-a2-resnet50 det-mask-rcnn_r50_fpn_1x_coco --list

Every path runs as the command line a user types (tools/distill.py with the A1/A2/A3 recipes, tools/convert.py,
tools/transfer.py and tools/test.py with the detection configs, mmdet's own tools/test.py, tools/export_onnx.py),
changed only in iterations, batch size where memory demands, workers and data paths; the profile's other changes
are listed in the report. A failed path is reported with its reason and log and the next one runs.
Writes <out>/report.md and report.json (ok/failed, s/iter, peak memory, projected full-schedule time here and on
--gpus processes) and <out>/logs/. Exit status 1 when a path failed.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common.io import cli_main  # noqa: E402
from rehearse.cli import run_rehearsal  # noqa: E402


@cli_main
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profile", choices=["auto", "cpu", "gpu"], default="auto",
                   help="cpu: one process per command, GPU-only config parts swapped (listed); gpu: torchrun on all "
                        "GPUs, nccl, AMP, configs as shipped; auto: gpu when torch sees a GPU")
    p.add_argument("--imagenet", default=None, metavar="DIR", help="your ImageNet (train/ and val/ class folders); "
                   "default: a generated stand-in")
    p.add_argument("--imagenet-dataset", default="", metavar="hfds/NAME|wds/NAME",
                   help="--imagenet is the hub's parquet layout (hfds/: --imagenet is its datasets cache) or "
                        "WebDataset shards (wds/: --imagenet holds them); tars (train.tar, val.tar) need nothing")
    p.add_argument("--container", choices=["folder", "tar", "parquet", "wds"], default="folder",
                   help="the container of the generated ImageNet stand-in (docs/data.md)")
    p.add_argument("--coco", default=None, metavar="DIR", help="your COCO 2017 folder; default: a generated stand-in")
    p.add_argument("--teacher-checkpoint", default=None, metavar="FILE",
                   help="BEiT v2-B teacher weights; default: a random-weight file written by this tool")
    p.add_argument("--out", default="work_dirs/rehearse", help="report, logs, runs and stand-in data")
    p.add_argument("--only", nargs="+", default=None, metavar="ID",
                   help="run the paths whose id contains one of these (and the paths they read from)")
    p.add_argument("--detection-config", nargs="+", default=None, metavar="CONFIG",
                   help="detection configs to rehearse (default: the 8 paper configs in configs/detection/)")
    p.add_argument("--gpus", type=int, default=8, help="projected full-schedule time on this many processes")
    p.add_argument("--list", action="store_true", help="print the paths and their commands; run nothing")
    p.add_argument("--timeout", type=float, default=None, metavar="S", help="seconds before a command is killed")
    p.add_argument("--verbose", action="store_true", help="print every command's log after it ends")
    g = p.add_argument_group("profile overrides")
    g.add_argument("--nproc", type=int, default=None, help="processes per command (torchrun when > 1)")
    g.add_argument("--batch-size", type=int, default=None, help="distillation batch per process")
    g.add_argument("--steps", type=int, default=None, help="distillation steps per path (first one: warm-up)")
    g.add_argument("--det-batch", type=int, default=None, help="detection images per process")
    g.add_argument("--det-iters", type=int, default=None, help="detection iterations per epoch")
    g.add_argument("--val-images", type=int, default=None, help="images in the ImageNet val view")
    g.add_argument("--det-val-images", type=int, default=None, help="images in the COCO val view")
    g.add_argument("--workers", type=int, default=None, help="dataloader workers per process")
    a = p.parse_args(argv)
    return run_rehearsal(a, argv)


if __name__ == "__main__":
    main()
