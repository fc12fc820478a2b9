"""A seeded synthetic "shapes" world in the ImageNet and COCO 2017 on-disk formats.

Why: the demo and the tests must run offline on a laptop CPU, yet exercise exactly the code paths that real
data takes. So the generator writes the same layouts a user points the tools at for real runs:

- classification (ImageNet-style ImageFolder): ``ROOT/{train,val}/<class>/<image>.png``
- instance segmentation (COCO 2017-style): ``ROOT/{train2017,val2017}/<image>.png`` and
  ``ROOT/annotations/instances_{train,val}2017.json`` with polygon masks, several objects per image.

Every shape is drawn as a polygon, so the COCO polygon is the exact mask. Backgrounds carry a colour
gradient and noise texture and the shapes vary in colour, size, rotation and aspect, so the tasks are
not solved by a colour lookup.

The classes share attributes, so a teacher's soft labels carry real similarity between them: six shape
families (circle and pentagon, square and pentagon look alike at low resolution; star and cross are spiky)
drawn in two styles, filled or outlined (``circle_filled``, ``circle_outline``, ...). Filled shapes get a
solid or striped fill. The mask of an outlined shape is the region its outline encloses (the same polygon),
so every annotation stays a COCO polygon. Detection images add unannotated blobs and more clutter, so boxes
must be earned and AP depends on the backbone.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

FAMILIES: tuple[str, ...] = ("circle", "square", "triangle", "pentagon", "star", "cross")
STYLES: tuple[str, ...] = ("filled", "outline")
CLASSES: tuple[str, ...] = tuple(f"{f}_{s}" for f in FAMILIES for s in STYLES)
NUM_CLASSES = len(CLASSES)


def _unit_polygon(kind: str) -> np.ndarray:
    """Vertices of a shape of radius 1 centred on the origin, shape (N, 2)."""
    kind = kind.split("_")[0]
    if kind == "circle":
        n = 32
        t = np.linspace(0, 2 * math.pi, n, endpoint=False)
        return np.stack([np.cos(t), np.sin(t)], 1)
    if kind == "square":
        return np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=float) / math.sqrt(2) * 1.15
    if kind == "triangle":
        t = np.array([90, 210, 330]) * math.pi / 180
        return np.stack([np.cos(t), -np.sin(t)], 1)
    if kind == "pentagon":
        t = np.arange(5) * 2 * math.pi / 5 - math.pi / 2
        return np.stack([np.cos(t), np.sin(t)], 1)
    if kind == "star":
        t = np.arange(10) * math.pi / 5 - math.pi / 2
        r = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
        return np.stack([r * np.cos(t), r * np.sin(t)], 1)
    if kind == "cross":  # a plus sign with arms 0.36 wide
        a, b = 0.36, 1.0
        return np.array([[-a, -b], [a, -b], [a, -a], [b, -a], [b, a], [a, a], [a, b], [-a, b], [-a, a],
                         [-b, a], [-b, -a], [-a, -a]], dtype=float)
    raise ValueError(f"unknown shape {kind!r}; known: {', '.join(FAMILIES)}")


def _place(kind: str, cx: float, cy: float, radius: float, angle: float, aspect: float) -> np.ndarray:
    pts = _unit_polygon(kind) * np.array([radius * aspect, radius])
    c, s = math.cos(angle), math.sin(angle)
    pts = pts @ np.array([[c, s], [-s, c]])
    return pts + np.array([cx, cy])


def _background(rng: np.random.RandomState, size: int) -> Image.Image:
    c0, c1 = rng.randint(0, 256, 3), rng.randint(0, 256, 3)
    ramp = np.linspace(0, 1, size)[:, None, None]
    img = c0 * (1 - ramp) + c1 * ramp
    if rng.rand() < 0.5:
        img = img.transpose(1, 0, 2)
    img = img + rng.normal(0, 18, (size, size, 3))
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def _clutter(rng: np.random.RandomState, draw: ImageDraw.ImageDraw, size: int, n: int) -> None:
    """Thin random strokes: texture that is not an object, so boxes must be earned."""
    for _ in range(n):
        x0, y0, x1, y1 = rng.randint(0, size, 4)
        draw.line([(x0, y0), (x1, y1)], fill=tuple(int(v) for v in rng.randint(0, 256, 3)), width=1)


def _contrasting_colour(rng: np.random.RandomState, img: Image.Image, cx: float, cy: float) -> tuple:
    bg = np.asarray(img.getpixel((int(np.clip(cx, 0, img.width - 1)), int(np.clip(cy, 0, img.height - 1)))))
    for _ in range(20):
        col = rng.randint(0, 256, 3)
        if np.abs(col.astype(int) - bg.astype(int)).sum() > 180:
            return tuple(int(v) for v in col)
    return tuple(int(v) for v in 255 - bg)


def _draw_shape(rng: np.random.RandomState, img: Image.Image, kind: str, pts: np.ndarray, radius: float,
                colour: tuple) -> None:
    """Filled (solid or striped) or outlined, as the class name says."""
    draw = ImageDraw.Draw(img)
    xy = [tuple(p) for p in pts]
    if kind.endswith("_outline"):
        draw.polygon(xy, outline=colour, width=max(2, int(round(radius * 0.22))))
        return
    draw.polygon(xy, fill=colour)
    if rng.rand() < 0.4:  # stripes in a second colour, clipped to the shape
        stripes = Image.new("RGB", img.size, tuple(int(v) for v in (np.array(colour) + 128) % 256))
        mask = Image.new("L", img.size, 0)
        ImageDraw.Draw(mask).polygon(xy, fill=255)
        lines = Image.new("L", img.size, 0)
        ld = ImageDraw.Draw(lines)
        step, angle = max(3, int(radius * 0.5)), rng.uniform(0, math.pi)
        d = np.array([math.cos(angle), math.sin(angle)]) * img.width * 2
        n = np.array([-math.sin(angle), math.cos(angle)])
        for k in range(-img.width * 2, img.width * 2, step):
            c = np.array(img.size) / 2 + n * k
            ld.line([tuple(c - d), tuple(c + d)], fill=255, width=max(1, step // 3))
        img.paste(stripes, (0, 0), Image.fromarray(np.minimum(np.asarray(mask), np.asarray(lines))))


def _blob(rng: np.random.RandomState, cx: float, cy: float, radius: float) -> np.ndarray:
    """An irregular star-convex blob: an unannotated distractor for detection."""
    n = rng.randint(5, 9)
    t = np.sort(rng.uniform(0, 2 * math.pi, n))
    r = radius * rng.uniform(0.5, 1.0, n)
    return np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], 1)


def _polygon_area(pts: np.ndarray) -> float:
    x, y = pts[:, 0], pts[:, 1]
    return float(0.5 * abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))


@dataclass(frozen=True)
class ShapesSpec:
    """Sizes of the generated world; the defaults are what `make demo` uses."""

    num_classes: int = NUM_CLASSES
    cls_train_per_class: int = 200
    cls_val_per_class: int = 50
    cls_size: int = 64
    det_train: int = 300
    det_val: int = 100
    det_size: int = 128
    det_max_objects: int = 6


def make_classification(root: str | Path, spec: ShapesSpec = ShapesSpec(), seed: int = 0) -> Path:
    """Write an ImageFolder set ``root/{train,val}/<class>/*.png`` with one shape per image."""
    root = Path(root)
    classes = CLASSES[: spec.num_classes]
    for split, per_class, split_seed in (("train", spec.cls_train_per_class, 0), ("val", spec.cls_val_per_class, 1)):
        rng = np.random.RandomState([seed, split_seed, 7])
        for ci, kind in enumerate(classes):
            d = root / split / kind
            d.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                s = spec.cls_size
                img = _background(rng, s)
                draw = ImageDraw.Draw(img)
                _clutter(rng, draw, s, rng.randint(0, 4))
                radius = s * rng.uniform(0.28, 0.45)
                cx, cy = rng.uniform(radius, s - radius, 2)
                pts = _place(kind, cx, cy, radius, rng.uniform(0, 2 * math.pi), rng.uniform(0.75, 1.25))
                _draw_shape(rng, img, kind, pts, radius, _contrasting_colour(rng, img, cx, cy))
                img.save(d / f"{kind}_{i:05d}.png")
    return root


def make_detection(root: str | Path, spec: ShapesSpec = ShapesSpec(), seed: int = 0) -> Path:
    """Write a COCO-2017-style instance-segmentation set (polygon masks, non-overlapping objects)."""
    root = Path(root)
    classes = CLASSES[: spec.num_classes]
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    categories = [{"id": i + 1, "name": k, "supercategory": k.split("_")[0]} for i, k in enumerate(classes)]
    for split, n_images, split_seed in (("train", spec.det_train, 0), ("val", spec.det_val, 1)):
        rng = np.random.RandomState([seed, split_seed, 11])
        img_dir = root / f"{split}2017"
        img_dir.mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        for image_id in range(1, n_images + 1):
            s = spec.det_size
            img = _background(rng, s)
            draw = ImageDraw.Draw(img)
            _clutter(rng, draw, s, rng.randint(4, 14))
            for _ in range(rng.randint(0, 3)):  # unannotated blobs: not every compact shape is an object
                r = rng.uniform(0.06, 0.14) * s
                c = rng.uniform(r, s - r, 2)
                draw.polygon([tuple(p) for p in _blob(rng, c[0], c[1], r)],
                             fill=tuple(int(v) for v in rng.randint(0, 256, 3)))
            boxes: list[tuple[float, float, float, float]] = []
            for _ in range(rng.randint(1, spec.det_max_objects + 1)):
                for _attempt in range(20):
                    ci = rng.randint(len(classes))
                    radius = rng.uniform(0.08, 0.2) * s
                    cx, cy = rng.uniform(radius, s - radius, 2)
                    pts = _place(classes[ci], cx, cy, radius, rng.uniform(0, 2 * math.pi), rng.uniform(0.75, 1.25))
                    pts = np.clip(pts, 0, s - 1)
                    x0, y0 = pts.min(0)
                    x1, y1 = pts.max(0)
                    if all(x1 + 2 < b[0] or b[2] + 2 < x0 or y1 + 2 < b[1] or b[3] + 2 < y0 for b in boxes):
                        break
                else:
                    continue
                boxes.append((x0, y0, x1, y1))
                _draw_shape(rng, img, classes[ci], pts, radius, _contrasting_colour(rng, img, cx, cy))
                annotations.append({
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": ci + 1,
                    "segmentation": [[round(float(v), 2) for v in pts.reshape(-1)]],
                    "area": _polygon_area(pts),
                    "bbox": [round(float(x0), 2), round(float(y0), 2), round(float(x1 - x0), 2), round(float(y1 - y0), 2)],
                    "iscrowd": 0,
                })
            name = f"{image_id:012d}.png"
            img.save(img_dir / name)
            images.append({"id": image_id, "file_name": name, "width": s, "height": s})
        with open(root / "annotations" / f"instances_{split}2017.json", "w") as f:
            json.dump({"images": images, "annotations": annotations, "categories": categories}, f)
    return root


def make_shapes(root: str | Path, spec: ShapesSpec = ShapesSpec(), seed: int = 0) -> dict[str, Path]:
    """Both sets under ``root/classification`` and ``root/coco``; reuses them when already complete."""
    root = Path(root)
    stamp = root / f".done-{seed}-{abs(hash(spec)) % 10**8}"
    out = {"classification": root / "classification", "coco": root / "coco"}
    if not stamp.exists():
        make_classification(out["classification"], spec, seed)
        make_detection(out["coco"], spec, seed)
        stamp.touch()
    return out
