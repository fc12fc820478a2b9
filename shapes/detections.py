"""Synthetic COCO detections (jittered ground truth plus false positives) for evaluator tests and benchmarks."""
from __future__ import annotations

import json

import numpy as np
from pycocotools import mask as mask_utils


def fake_detections(gt_file, seed: int = 0) -> list[dict]:
    """Jittered ground truth plus false positives, with scores, boxes and RLE masks."""
    gt = json.loads(open(gt_file).read())
    rng = np.random.RandomState(seed)
    imgs = {im["id"]: im for im in gt["images"]}
    dets = []
    for a in gt["annotations"]:
        if rng.rand() < 0.15:
            continue
        im = imgs[a["image_id"]]
        x, y, w, h = a["bbox"]
        j = rng.randn(4) * 2
        box = [x + j[0], y + j[1], max(1, w + j[2]), max(1, h + j[3])]
        poly = (np.array(a["segmentation"][0]).reshape(-1, 2) + rng.randn(2)).reshape(-1).tolist()
        rle = mask_utils.merge(mask_utils.frPyObjects([poly], im["height"], im["width"]))
        rle["counts"] = rle["counts"].decode()
        cat = a["category_id"] if rng.rand() < 0.85 else 1 + (a["category_id"] % 5)
        dets.append({"image_id": a["image_id"], "category_id": cat, "bbox": box, "score": float(rng.rand()),
                     "segmentation": rle})
    for im in gt["images"]:
        for _ in range(2):
            x, y = rng.uniform(0, 90, 2)
            box = [x, y, 20.0, 20.0]
            rle = mask_utils.frPyObjects([[x, y, x + 20, y, x + 20, y + 20, x, y + 20]], im["height"], im["width"])[0]
            rle["counts"] = rle["counts"].decode()
            dets.append({"image_id": im["id"], "category_id": int(rng.randint(1, 6)), "bbox": box,
                         "score": float(rng.rand() * 0.5), "segmentation": rle})
    return dets
