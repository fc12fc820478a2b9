#!/usr/bin/env python
"""Evaluate a COCO results file (faster-coco-eval; the same numbers as pycocotools).

    python tools/coco_eval.py --gt instances_val2017.json --dt results.bbox.json --iou-type bbox --out stats.json
    python tools/coco_eval.py --gt GT.json --dt results.segm.json --iou-type bbox segm --out stats.json

FILE holds, per iou type, {"stats": [12 numbers in the standard COCO order], "names": [...]}.
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# common.errors, not common.io: this tool starts without torch or timm (tests/test_tool_startup.py)
from common.errors import UserError, cli_main  # noqa: E402
import common.diskfull  # noqa: E402,F401  (registers the full-disk line with cli_main)


@cli_main
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gt", required=True, help="COCO annotation JSON")
    p.add_argument("--dt", required=True, nargs="+", help="COCO results JSON (one for all types, or one per type)")
    p.add_argument("--iou-type", nargs="+", default=["bbox"], choices=["bbox", "segm"])
    p.add_argument("--out", default=None, help="write the stats here as JSON")
    p.add_argument("--backend", choices=["faster", "pycocotools"], default="faster")
    a = p.parse_args(argv)
    if len(a.dt) not in (1, len(a.iou_type)):
        raise UserError("--dt takes one file, or one per --iou-type")
    dts = {t: a.dt[0] if len(a.dt) == 1 else a.dt[i] for i, t in enumerate(a.iou_type)}
    from transfer.coco_check import check_coco_json, read_coco_json
    from transfer.coco_eval import evaluate
    gt = read_coco_json(a.gt)
    check_coco_json(a.gt, data=gt)
    res = evaluate(gt, dts, a.iou_type, backend=a.backend)
    if a.out:
        with open(a.out, "w") as f:
            json.dump(res, f, indent=2)
    return res


if __name__ == "__main__":
    main()
