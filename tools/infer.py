#!/usr/bin/env python
"""A fine-tuned detector on your own images: a picture with its boxes, masks and class names, and one JSON of the
predictions, per image (mmdet's DetInferencer and DetLocalVisualizer).

    python tools/infer.py work_dirs/run/mask-rcnn_r50_fpn_1x_coco.py work_dirs/run/epoch_12.pth photos/ --out preds/
    python tools/infer.py CONFIG CHECKPOINT a.jpg b.jpg --out preds/ --score-thr 0.3 --top-k 20 --grid preds/grid.png

Writes <out>/vis/<image>.png and <out>/preds/<image>.json (labels, class names, scores, boxes in pixels x1 y1 x2 y2,
masks as COCO RLE). Shown and written: the predictions scoring at least --score-thr, at most --top-k per image.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common.io import cli_main  # noqa: E402


@cli_main
def main(argv=None) -> list:
    from mmengine.config import DictAction
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="the detector's config (the copy in its work dir, or configs/detection/...)")
    p.add_argument("checkpoint", help="a checkpoint written by tools/transfer.py, or its work dir (last_checkpoint)")
    p.add_argument("images", nargs="+", help="image files or folders of images")
    p.add_argument("--out", required=True, help="output folder: vis/ (pictures) and preds/ (one JSON per image)")
    p.add_argument("--score-thr", type=float, default=0.3,
                   help="show and write predictions scoring at least this (DetInferencer's default 0.3; a briefly "
                        "trained detector, such as the demo's, needs less, e.g. 0.05)")
    p.add_argument("--top-k", type=int, default=20, help="at most this many predictions per image, best first")
    p.add_argument("--grid", default=None, metavar="PNG", help="also write all the pictures as one image")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--cfg-options", nargs="+", action=DictAction, help="override config keys, mmengine-style")
    a = p.parse_args(argv)
    from transfer.infer import infer
    records = infer(a.config, a.checkpoint, a.images, a.out, a.score_thr, a.top_k, a.device, a.grid, a.cfg_options)
    boxes = sum(len(r.get("labels", [])) for r in records)
    print(f"{len(records)} image(s), {boxes} prediction(s) at score >= {a.score_thr:g} (top {a.top_k} per image): "
          f"{os.path.join(a.out, 'vis')}, {os.path.join(a.out, 'preds')}" + (f", {a.grid}" if a.grid else ""))
    return records


if __name__ == "__main__":
    main()
