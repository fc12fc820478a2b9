"""tools/coco_eval.py gives pycocotools' 12 numbers exactly, for boxes and masks."""
import json

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from conftest import run_tool
from transfer.coco_eval import evaluate


def fake_detections(gt_file, seed=0):
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


def test_identical_to_pycocotools(shapes_small, tmp_path):
    gt = shapes_small["coco"] / "annotations" / "instances_val2017.json"
    dt = tmp_path / "dt.json"
    dt.write_text(json.dumps(fake_detections(gt)))
    fast = evaluate(gt, dt, ("bbox", "segm"), verbose=False)
    ref = evaluate(gt, dt, ("bbox", "segm"), verbose=False, backend="pycocotools")
    for iou in ("bbox", "segm"):
        assert len(fast[iou]["stats"]) == 12
        assert 0.2 < fast[iou]["stats"][0] < 0.95  # a non-trivial score
        assert fast[iou]["stats"] == pytest.approx(ref[iou]["stats"], abs=1e-12)


def test_cli_writes_stats(shapes_small, tmp_path):
    gt = shapes_small["coco"] / "annotations" / "instances_val2017.json"
    dt = tmp_path / "dt.json"
    dt.write_text(json.dumps(fake_detections(gt, 1)))
    out = tmp_path / "stats.json"
    r = run_tool("tools/coco_eval.py", "--gt", str(gt), "--dt", str(dt), "--iou-type", "bbox", "segm", "--out", str(out))
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(out.read_text())
    assert set(res) == {"bbox", "segm"} and all(len(res[k]["stats"]) == 12 for k in res)
    assert "Average Precision" in r.stdout
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    r = run_tool("tools/coco_eval.py", "--gt", str(gt), "--dt", str(bad))
    assert r.returncode == 2 and "not valid JSON" in r.stderr and "Traceback" not in r.stderr
