#!/usr/bin/env python
"""Fine-tune an mmdet detector from a distilled student and report COCO box/mask AP.

    python tools/transfer.py configs/detection/mask-rcnn_r50_fpn_1x_coco.py --checkpoint output/run/student.pth
    python tools/transfer.py configs/detection/mask-rcnn_r50_fpn_1x_coco.py --checkpoint STUDENT --data-root /data/coco
    torchrun --nproc_per_node 8 tools/transfer.py CONFIG --checkpoint STUDENT --launcher pytorch
    srun -p PART -n 8 --ntasks-per-node 8 python tools/transfer.py CONFIG --checkpoint STUDENT --launcher slurm

Writes <work-dir>/backbone.pth (the converted student), mmengine logs and checkpoints, and
<work-dir>/results.json (bbox and segm: mAP, AP50, AP75, APs, APm, APl).
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common.io import cli_main  # noqa: E402
from transfer.finetune import use_faster_coco_eval  # noqa: E402

use_faster_coco_eval()  # before mmdet imports pycocotools


@cli_main
def main(argv=None):
    from mmengine.config import DictAction
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config")
    p.add_argument("--checkpoint", help="distilled student: last.pth, student.pth, any timm state dict, "
                   "or an OpenMMLab classifier/backbone (backbone.*)")
    p.add_argument("--random-init", action="store_true",
                   help="no student: a randomly initialised backbone (the baseline for what pre-training buys)")
    p.add_argument("--model", default=None, help="timm name of the student (default: inferred)")
    p.add_argument("--work-dir", default=None, help="default: work_dirs/<config name>")
    p.add_argument("--data-root", default=None, metavar="DIR",
                   help="COCO 2017 folder (annotations/instances_{train,val}2017.json, train2017/, val2017/): sets "
                        "data_root of the train/val/test datasets and their CocoMetric annotation files")
    p.add_argument("--launcher", choices=["none", "pytorch", "slurm", "mpi"], default="none")
    p.add_argument("--cfg-options", nargs="+", action=DictAction, help="override config keys, mmengine-style")
    p.add_argument("--resume", action="store_true", help="continue from the work dir's last checkpoint")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                   help="--amp: mixed precision (AmpOptimWrapper, GPU only); --no-amp: fp32 (OptimWrapper) for a "
                        "config that asks for AMP, e.g. on a machine without a GPU (default: the config's choice)")
    p.add_argument("--unsafe-load", action="store_true", help="allow full pickles for --checkpoint: trusted files only")
    p.add_argument("--local_rank", "--local-rank", type=int, default=0, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    from transfer.finetune import fine_tune, local_rank_is_zero, prepare_config
    cfg = prepare_config(a.config, a.checkpoint, a.model, a.work_dir, a.launcher, a.cfg_options, a.resume, a.amp,
                         a.unsafe_load, a.random_init, a.data_root)
    results = fine_tune(cfg)
    if local_rank_is_zero():
        for iou in ("bbox", "segm"):
            if iou in results:
                print(f"{iou}: " + " ".join(f"{k}={v:.4f}" for k, v in results[iou].items()))
        print(f"results: {os.path.join(cfg.work_dir, 'results.json')}")
        sys.stdout.flush()
    return results


if __name__ == "__main__":
    main()
