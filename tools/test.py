#!/usr/bin/env python
"""COCO evaluation of a trained detector: the standard 12-number box and mask tables, as JSON too.

    python tools/test.py CONFIG work_dirs/run/epoch_12.pth --out work_dirs/run/test.json [--show-dir vis/]
"""
import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common.io import cli_main  # noqa: E402
from transfer.finetune import use_faster_coco_eval  # noqa: E402

use_faster_coco_eval()  # before mmdet imports pycocotools


@cli_main
def main(argv=None):
    from mmengine.config import DictAction
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config")
    p.add_argument("checkpoint", help="a detector checkpoint written by tools/transfer.py (mmengine format)")
    p.add_argument("--out", default=None, help="JSON file for the 12 COCO stats per iou type")
    p.add_argument("--work-dir", default=None)
    p.add_argument("--data-root", default=None, metavar="DIR",
                   help="COCO 2017 folder (annotations/, val2017/ ...): sets data_root of the datasets and the "
                        "CocoMetric annotation files (as tools/transfer.py --data-root)")
    p.add_argument("--show-dir", default=None, help="draw predictions into this folder")
    p.add_argument("--launcher", choices=["none", "pytorch", "slurm", "mpi"], default="none")
    p.add_argument("--cfg-options", nargs="+", action=DictAction)
    p.add_argument("--local_rank", "--local-rank", type=int, default=0, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    from mmengine.runner import Runner

    from transfer.coco_check import check_config_annotations
    from transfer.coco_eval import evaluate
    from transfer.finetune import add_vanillakd_hooks, check_detector_checkpoint, load_config
    check_detector_checkpoint(a.checkpoint)
    cfg = load_config(a.config, a.cfg_options, a.data_root)
    if int(os.environ.get("LOCAL_RANK", "0")) == 0:
        check_config_annotations(cfg, ("test",), a.config)
    add_vanillakd_hooks(cfg)
    cfg.work_dir = a.work_dir or str(Path(a.checkpoint).parent / "test")
    cfg.load_from = a.checkpoint
    cfg.launcher = a.launcher
    cfg.model.backbone.init_cfg = None  # weights come from the detector checkpoint
    prefix = str(Path(cfg.work_dir) / "predictions")
    ev = cfg.test_evaluator
    ev.format_only, ev.outfile_prefix = True, prefix
    iou_types = [m for m in (ev.metric if isinstance(ev.metric, (list, tuple)) else [ev.metric])
                 if m in ("bbox", "segm")]
    if a.show_dir:  # absolute, so mmdet's hook does not nest it under <work-dir>/<timestamp>/
        show_dir = os.path.abspath(a.show_dir)
        cfg.default_hooks.visualization = dict(type="DetVisualizationHook", draw=True, test_out_dir=show_dir)
    runner = Runner.from_cfg(cfg)
    runner.test()
    if runner.rank != 0:
        return None
    res = evaluate(ev.ann_file, {t: f"{prefix}.{t}.json" for t in iou_types}, iou_types)
    if a.out:
        from common.environment import fingerprint
        res = {**res, "environment": fingerprint()}
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        with open(a.out, "w") as f:
            json.dump(res, f, indent=2)
        print(f"stats: {a.out}")
    if a.show_dir:
        print(f"drawn predictions: {os.path.abspath(a.show_dir)}")
    return res


if __name__ == "__main__":
    main()
