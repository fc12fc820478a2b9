"""mmdet CocoMetric keys -> the project's results.json layout (a leaf module: the hooks and the tools read it)."""
from __future__ import annotations

from typing import Any

COCO_KEYS = {"mAP": "mAP", "AP50": "mAP_50", "AP75": "mAP_75", "APs": "mAP_s", "APm": "mAP_m", "APl": "mAP_l"}


def metrics_to_results(metrics: dict[str, Any]) -> dict[str, dict[str, float]]:
    """mmdet CocoMetric keys ('coco/bbox_mAP_50', ...) -> {'bbox': {'mAP', 'AP50', ...}, 'segm': {...}}."""
    out: dict[str, dict[str, float]] = {}
    for iou in ("bbox", "segm"):
        vals = {name: float(metrics[f"coco/{iou}_{k}"]) for name, k in COCO_KEYS.items()
                if f"coco/{iou}_{k}" in metrics}
        if vals:
            out[iou] = vals
    return out
