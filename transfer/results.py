"""mmdet CocoMetric keys -> the project's results.json layout (a leaf module: the hooks and the tools read it).

Besides the numbers, results.json records what ran (``run``: detector, backbone, max_epochs and the student the
backbone came from), so that tools/summarize.py reads neither the dumped config (mmengine, which imports the
config's custom modules and with them torch) nor backbone.pth (torch.load).
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

COCO_KEYS = {"mAP": "mAP", "AP50": "mAP_50", "AP75": "mAP_75", "APs": "mAP_s", "APm": "mAP_m", "APl": "mAP_l"}
RUN_KEYS = ("detector", "backbone", "max_epochs")  # always in ``run``; ``student`` only where it is known


def metrics_to_results(metrics: dict[str, Any]) -> dict[str, dict[str, float]]:
    """mmdet CocoMetric keys ('coco/bbox_mAP_50', ...) -> {'bbox': {'mAP', 'AP50', ...}, 'segm': {...}}."""
    out: dict[str, dict[str, float]] = {}
    for iou in ("bbox", "segm"):
        vals = {name: float(metrics[f"coco/{iou}_{k}"]) for name, k in COCO_KEYS.items()
                if f"coco/{iou}_{k}" in metrics}
        if vals:
            out[iou] = vals
    return out


def describe_run(cfg: Mapping, student: Mapping | None = None) -> dict[str, Any]:
    """``run`` of results.json from a detection config (plain dicts or an mmengine Config).

    ``student``: ``{'timm_model', 'source'}`` of the converted student (both None for a random-init backbone);
    None when unknown (a resume without --checkpoint), and then the key is left out.
    """
    model = cfg.get("model") or {}
    bb = model.get("backbone") or {}
    info: dict[str, Any] = {"detector": str(model.get("type", "-")),
                            "backbone": f"{str(bb.get('type', '-')).split('.')[-1]}-{bb.get('depth', bb.get('arch', ''))}",
                            "max_epochs": (cfg.get("train_cfg") or {}).get("max_epochs")}
    if student is not None:
        info["student"] = {"timm_model": student.get("timm_model"), "source": student.get("source")}
    return info


def student_label(student: Mapping) -> str:
    """'resnet18 (run folder of the student checkpoint)', or '-' without a student."""
    if not student.get("timm_model"):
        return "-"
    return f"{student['timm_model']} ({Path(student.get('source') or '-').parent.name})"
