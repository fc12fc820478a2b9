"""Whole-process COCO evaluation: tools/coco_eval.py against a plain pycocotools script, and --help start-up.

A user times the command, not the evaluator: interpreter start, imports (torch alone is ~1 s) and JSON parsing
count as much as evaluate/accumulate. Both sides run as fresh processes of the same Python on the same files,
~800 val images of the shapes detection world with fake_detections, bbox and segm:
  coco_eval_process_over_pycocotools_script  `python tools/coco_eval.py --gt GT --dt DT --iou-type bbox segm`
                                             / `python -c SCRIPT` (COCO(gt), loadRes, COCOeval bbox and segm)
  coco_eval_help_seconds                     median wall time of `python tools/coco_eval.py --help`
"""
from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# what a user writes without this project: the reference evaluator, nothing else
PYCOCOTOOLS_SCRIPT = """
import sys
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
gt = COCO(sys.argv[1])
dt = gt.loadRes(sys.argv[2])
for iou in ("bbox", "segm"):
    ev = COCOeval(gt, dt, iou)
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
"""


def _process(*args: str) -> None:
    r = subprocess.run([sys.executable, *args], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                       text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:2])} failed: {r.stderr[-2000:]}")


def bench_coco_process(repeats: int) -> dict:
    sys.path.insert(0, str(ROOT))
    from bench.timing import interleaved_rounds, medians, ratio_spread, with_spread
    from shapes.detections import fake_detections
    from shapes.generate import ShapesSpec, make_detection
    tool = str(ROOT / "tools" / "coco_eval.py")
    with tempfile.TemporaryDirectory() as d:
        make_detection(d, ShapesSpec(det_train=1, det_val=800), seed=0)
        gt = Path(d) / "annotations" / "instances_val2017.json"
        dt = Path(d) / "dt.json"
        dt.write_text(json.dumps(fake_detections(gt)))
        rounds = interleaved_rounds(
            {"coco_eval_tool": lambda: _process(tool, "--gt", str(gt), "--dt", str(dt), "--iou-type", "bbox", "segm"),
             "pycocotools_script": lambda: _process("-c", PYCOCOTOOLS_SCRIPT, str(gt), str(dt))}, repeats, warmup=1)
    t = medians(rounds)
    ratio = ratio_spread(rounds, "coco_eval_tool", "pycocotools_script")
    _process(tool, "--help")  # warm the file cache
    help_times = []
    for _ in range(max(repeats, 5)):
        t0 = time.perf_counter()
        _process(tool, "--help")
        help_times.append(time.perf_counter() - t0)
    t["coco_eval_help"] = statistics.median(help_times)
    # --help is a start-up time in seconds, not a ratio of rounds: its verdict reads the plain median
    return {**with_spread({"coco_eval_process_over_pycocotools_script": ratio}),
            "coco_eval_help_seconds": t["coco_eval_help"], "_seconds": t}


if __name__ == "__main__":
    print(json.dumps(bench_coco_process(int(sys.argv[1]) if len(sys.argv) > 1 else 5), indent=2))
