"""COCO 2017 instance files from drawn polygons: one writer for the shapes world and the rehearsal's stand-in.

Every generated object is drawn as a polygon, so the polygon is its exact mask and its box and area follow from
it; both generators write the same fields, rounded the same way, under the names pycocotools and the configs read.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image


def polygon_area(pts: np.ndarray) -> float:
    """Shoelace area of a simple polygon (N, 2): the mask's area without rasterising it."""
    x, y = pts[:, 0], pts[:, 1]
    return float(0.5 * abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))


def polygon_instance(ann_id: int, image_id: int, category_id: int, pts: np.ndarray) -> dict:
    """A COCO annotation whose mask is the polygon ``pts`` (N, 2); bbox [x, y, w, h] and area come from it."""
    x0, y0 = pts.min(0)
    x1, y1 = pts.max(0)
    return {"id": ann_id, "image_id": image_id, "category_id": category_id,
            "segmentation": [[round(float(v), 2) for v in pts.reshape(-1)]], "area": polygon_area(pts),
            "bbox": [round(float(x0), 2), round(float(y0), 2), round(float(x1 - x0), 2), round(float(y1 - y0), 2)],
            "iscrowd": 0}


def save_image(img: Image.Image, folder: Path, image_id: int, ext: str = "png", **save_args) -> dict:
    """Save ``img`` under COCO's file name (the id in 12 digits) and return its entry for the annotation file."""
    name = f"{image_id:012d}.{ext}"
    img.save(folder / name, **save_args)
    return {"id": image_id, "file_name": name, "width": img.width, "height": img.height}


def write_instances(root: Path, split: str, images: list[dict], annotations: list[dict],
                    categories: list[dict]) -> Path:
    """``root/annotations/instances_<split>2017.json``, where the COCO configs and pycocotools look for it."""
    path = Path(root) / "annotations" / f"instances_{split}2017.json"
    with open(path, "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": categories}, f)
    return path
