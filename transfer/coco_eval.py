"""COCO evaluation of any results file with faster-coco-eval (pycocotools' numbers, a fraction of the time)."""
from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

from common.errors import UserError

STAT_NAMES = ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"]
_ROWS = [("Precision", "AP", "0.50:0.95", "all", 100), ("Precision", "AP", "0.50", "all", 100),
         ("Precision", "AP", "0.75", "all", 100), ("Precision", "AP", "0.50:0.95", "small", 100),
         ("Precision", "AP", "0.50:0.95", "medium", 100), ("Precision", "AP", "0.50:0.95", "large", 100),
         ("Recall", "AR", "0.50:0.95", "all", 1), ("Recall", "AR", "0.50:0.95", "all", 10),
         ("Recall", "AR", "0.50:0.95", "all", 100), ("Recall", "AR", "0.50:0.95", "small", 100),
         ("Recall", "AR", "0.50:0.95", "medium", 100), ("Recall", "AR", "0.50:0.95", "large", 100)]


def format_stats(stats: list[float]) -> str:
    """The standard 12-line COCO table, as pycocotools prints it."""
    return "\n".join(f" Average {kind:<9} ({short}) @[ IoU={iou:<9} | area={area:>6} | maxDets={dets:>3d} ] = {v:0.3f}"
                     for (kind, short, iou, area, dets), v in zip(_ROWS, stats))


def _read_json(path: str | Path, what: str):
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} not found: {path}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{what} {path} is not valid JSON: {e}") from None


def _coco_from(COCO, data: dict):
    """A COCO index over an already parsed annotation dict (no second parse of the file)."""
    if COCO.__module__.startswith("faster_coco_eval"):
        return COCO(data)  # faster-coco-eval takes the dict itself (not copied)
    coco = COCO()
    coco.dataset = data
    coco.createIndex()
    return coco


def evaluate(gt_file: str | Path | dict, dt_file_or_list, iou_types=("bbox", "segm"), verbose: bool = True,
             backend: str = "faster") -> dict[str, dict]:
    """Return {iou_type: {'stats': [12 numbers in COCO order], 'names': STAT_NAMES}}.

    ``gt_file``: the annotation file, or its content already parsed (a dict, indexed in place: the evaluators
    add keys to its annotations). Detections: one file or list for every iou type, or {iou_type: file or list};
    each file is parsed once however many types share it.
    ``backend='pycocotools'`` runs the reference implementation (for tests and benchmarks).
    """
    if backend == "faster":
        from faster_coco_eval import COCO
        from faster_coco_eval import COCOeval_faster as COCOeval
    else:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    gt = gt_file if isinstance(gt_file, dict) else _read_json(gt_file, "ground truth")
    if not isinstance(gt, dict) or not gt.get("images") or "annotations" not in gt or "categories" not in gt:
        where = "" if isinstance(gt_file, dict) else f" {gt_file}"
        raise UserError(f"ground truth{where} is not a COCO annotation file with images, annotations, categories")
    dts = dt_file_or_list if isinstance(dt_file_or_list, dict) else {t: dt_file_or_list for t in iou_types}
    parsed: dict[str, list] = {}  # one parse per detections file
    used: set[int] = set()  # lists already handed to loadRes, which adds keys to their dicts
    out: dict[str, dict] = {}
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = _coco_from(COCO, gt)
    for iou in iou_types:
        dt = dts[iou]
        if isinstance(dt, (str, Path)):
            if str(dt) not in parsed:
                parsed[str(dt)] = _read_json(dt, "detections")
            dets = parsed[str(dt)]
        else:
            dets = dt
        if not isinstance(dets, list):
            raise UserError(f"detections for {iou} must be a COCO results list")
        if not dets:
            out[iou] = {"stats": [0.0] * 12, "names": STAT_NAMES}
            continue
        if iou == "segm" and "segmentation" not in dets[0]:
            raise UserError("detections for segm have no 'segmentation' field")
        if id(dets) in used:  # a second iou type on the same detections: fresh dicts, as a second parse gave
            dets = [dict(d) for d in dets]
        used.add(id(dets))
        with contextlib.redirect_stdout(io.StringIO()):
            coco_dt = coco_gt.loadRes(dets)
            ev = COCOeval(coco_gt, coco_dt, iou)
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        out[iou] = {"stats": [float(s) for s in ev.stats[:12]], "names": STAT_NAMES}
        if verbose:
            print(f"--- {iou} ---\n{format_stats(out[iou]['stats'])}")
    return out
