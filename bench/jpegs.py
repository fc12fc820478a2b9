"""ImageNet-like JPEGs for loader benchmarks: 500x375 (ImageNet's typical size), quality 90, written once.

Why not the shapes world: its 32-64 px PNGs decode in microseconds, so they say nothing about the cost that
bounds an ImageNet epoch (JPEG decoding plus the A1/A2 augmentation on the host's cores). The pixels are
smooth noise with edges, so the files have ImageNet-like sizes (~100-150 kB) and decode like photos.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

STAMP = "jpegs.json"


def write_jpeg_folder(root: str | Path, num_images: int = 256, num_classes: int = 8, size: tuple[int, int] = (500, 375),
                      quality: int = 90, seed: int = 0) -> Path:
    """``root/train/<class>/<n>.JPEG``; reuses the folder when a stamp says it holds the same request."""
    root = Path(root)
    spec = {"num_images": num_images, "num_classes": num_classes, "size": list(size), "quality": quality, "seed": seed}
    stamp = root / STAMP
    if stamp.is_file() and json.loads(stamp.read_text()) == spec:
        return root
    rng = np.random.default_rng(seed)
    w, h = size
    for i in range(num_images):
        d = root / "train" / f"class_{i % num_classes:03d}"
        d.mkdir(parents=True, exist_ok=True)
        low = rng.integers(0, 256, (h // 25 + 1, w // 25 + 1, 3), dtype=np.uint8)
        img = np.asarray(Image.fromarray(low).resize((w, h), Image.BICUBIC), dtype=np.int16)
        img = np.clip(img + rng.integers(-32, 33, (h, w, 3)), 0, 255).astype(np.uint8)  # texture, like photos
        Image.fromarray(img).save(d / f"{i:06d}.JPEG", quality=quality)
    stamp.write_text(json.dumps(spec))
    return root
