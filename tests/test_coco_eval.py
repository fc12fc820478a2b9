"""tools/coco_eval.py gives pycocotools' 12 numbers exactly, for boxes and masks."""
import json

import pytest

from conftest import run_main, run_tool
from shapes.detections import fake_detections
from transfer.coco_eval import evaluate


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
    r = run_main("tools/coco_eval.py", "--gt", str(gt), "--dt", str(bad))
    assert r.returncode == 2 and "not valid JSON" in r.stderr and "Traceback" not in r.stderr
