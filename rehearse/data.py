"""What a rehearsal trains on: the user's ImageNet / COCO (checked first, then seen through small views), or
generated full-size stand-ins, written once under work_dirs/rehearse/data and reused.

- Stand-ins: an ImageNet layout with the real class count (1000 class folders, so every head has its real size)
  of 500x375 JPEGs (ImageNet's typical size), and a COCO 2017 layout (``annotations/instances_{train,val}2017.json``,
  ``train2017/``, ``val2017/``) of 640x480 JPEGs with polygon masks and COCO's 80 category names under their real,
  non-contiguous ids (1..90).
- Views: folders of symlinks (ImageNet: a few images of every class; a few val images) and subset annotation
  files next to symlinked image folders (COCO), so each command reads real files but only as many as it uses.
- Preflight (``preflight_imagenet``, ``preflight_coco``): every class folder listed and one image of each decoded,
  every annotation file read and checked (``transfer.coco_check``), then the loader's own per-sample work
  (decode + the recipe's / config's training transforms) timed on the files.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from common.io import UserError
from shapes.coco import polygon_instance, save_image, write_instances

IMAGENET_TRAIN_IMAGES = 1_281_167  # ILSVRC-2012 train
IMAGENET_CLASSES = 1000
COCO_TRAIN_IMAGES = 118_287  # COCO 2017 train
COCO_CLASSES = 80
IMAGENET_SIZE = (500, 375)
COCO_SIZE = (640, 480)
STAMP = "rehearse-data.json"


def coco_categories() -> list[dict]:
    """COCO's 80 categories with their real ids, as torchvision's COCO weights list them (index = category id)."""
    from torchvision.models.detection import MaskRCNN_ResNet50_FPN_Weights
    names = MaskRCNN_ResNet50_FPN_Weights.DEFAULT.meta["categories"]
    return [{"id": i, "name": n, "supercategory": "object"} for i, n in enumerate(names)
            if n not in ("__background__", "N/A")]


def _photo_like(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    """Smooth colour noise plus texture: decodes like a photo, with photo-like JPEG sizes (bench/jpegs.py)."""
    low = rng.integers(0, 256, (h // 25 + 1, w // 25 + 1, 3), dtype=np.uint8)
    img = np.asarray(Image.fromarray(low).resize((w, h), Image.BICUBIC), dtype=np.int16)
    return Image.fromarray(np.clip(img + rng.integers(-32, 33, (h, w, 3)), 0, 255).astype(np.uint8))


def _fresh(root: Path, spec: dict) -> bool:
    """True when ``root`` already holds what ``spec`` asks for (its stamp says so)."""
    stamp = root / STAMP
    try:
        return json.loads(stamp.read_text()) == spec
    except (OSError, json.JSONDecodeError):
        return False


def _stamp(root: Path, spec: dict) -> None:
    (root / STAMP).write_text(json.dumps(spec, indent=1))


def _clear(root: Path) -> None:
    import shutil
    if root.is_symlink() or root.is_file():
        root.unlink()
    elif root.exists():
        shutil.rmtree(root)


def imagenet_class_names(n: int) -> list[str]:
    return [f"n{9_000_000 + i:08d}" for i in range(n)]  # WordNet-id-like folder names, sorted as ImageNet's


def write_imagenet_standin(root: str | Path, train_per_class: int = 1, val_images: int = 2,
                           num_classes: int = IMAGENET_CLASSES, seed: int = 0) -> Path:
    """``root/{train,val}/<wnid>/<name>.JPEG`` at 500x375, quality 90; reused when its stamp matches."""
    root = Path(root)
    spec = {"kind": "imagenet", "num_classes": num_classes, "train_per_class": train_per_class,
            "val_images": val_images, "size": list(IMAGENET_SIZE), "seed": seed}
    if _fresh(root, spec):
        return root
    _clear(root)
    rng = np.random.default_rng(seed)
    classes = imagenet_class_names(num_classes)
    w, h = IMAGENET_SIZE
    for c, name in enumerate(classes):
        d = root / "train" / name
        d.mkdir(parents=True)
        for i in range(train_per_class):
            _photo_like(rng, w, h).save(d / f"{name}_{i}.JPEG", quality=90)
    for i in range(val_images):  # one image in each of the first classes
        name = classes[i % num_classes]
        d = root / "val" / name
        d.mkdir(parents=True, exist_ok=True)
        _photo_like(rng, w, h).save(d / f"ILSVRC2012_val_{i + 1:08d}.JPEG", quality=90)
    _stamp(root, spec)
    return root


def _polygon(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """A random star-convex polygon (6-14 vertices) inside the image."""
    n = int(rng.integers(6, 15))
    r = rng.uniform(20, min(w, h) / 4)
    cx, cy = rng.uniform(r, w - r), rng.uniform(r, h - r)
    t = np.sort(rng.uniform(0, 2 * math.pi, n))
    rad = r * rng.uniform(0.5, 1.0, n)
    return np.stack([cx + rad * np.cos(t), cy + rad * np.sin(t)], 1).clip(0, [w - 1, h - 1])


def write_coco_standin(root: str | Path, train_images: int = 2, val_images: int = 2, seed: int = 0) -> Path:
    """COCO 2017 layout at 640x480 with 2-6 polygon objects per image over COCO's 80 categories."""
    root = Path(root)
    spec = {"kind": "coco", "train_images": train_images, "val_images": val_images, "size": list(COCO_SIZE),
            "seed": seed}
    if _fresh(root, spec):
        return root
    _clear(root)
    rng = np.random.default_rng(seed)
    cats = coco_categories()
    w, h = COCO_SIZE
    (root / "annotations").mkdir(parents=True)
    ann_id = 0
    for split, n in (("train", train_images), ("val", val_images)):
        d = root / f"{split}2017"
        d.mkdir()
        images, anns = [], []
        for k in range(n):
            image_id = (1 if split == "train" else 1_000_000) + k
            img = _photo_like(rng, w, h)
            draw = ImageDraw.Draw(img)
            for _ in range(int(rng.integers(2, 7))):
                pts = _polygon(rng, w, h)
                draw.polygon([tuple(p) for p in pts], fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
                ann_id += 1
                anns.append(polygon_instance(ann_id, image_id, cats[int(rng.integers(len(cats)))]["id"], pts))
            images.append(save_image(img, d, image_id, "jpg", quality=90))
        write_instances(root, split, images, anns, cats)
    _stamp(root, spec)
    return root


# ---- views: the few files a rehearsal command reads, as symlinks into the real (or stand-in) data


def _image_files(d: Path) -> list[Path]:
    from timm.data.readers.img_extensions import get_img_extensions
    ext = {e.lower() for e in get_img_extensions()}
    return sorted(p for p in d.iterdir() if p.suffix.lower() in ext)


def imagenet_view(src: str | Path, dst: str | Path, train_per_class: int, val_images: int) -> Path:
    """``dst/train/<class>/`` links to the first images of every class; ``dst/val`` to a few val images."""
    src, dst = Path(src).resolve(), Path(dst)
    spec = {"kind": "imagenet-view", "src": str(src), "train_per_class": train_per_class, "val_images": val_images}
    if _fresh(dst, spec):
        return dst
    _clear(dst)
    for c in sorted(p for p in (src / "train").iterdir() if p.is_dir()):
        (dst / "train" / c.name).mkdir(parents=True)
        for f in _image_files(c)[:train_per_class]:
            (dst / "train" / c.name / f.name).symlink_to(f)
    taken = 0
    for c in sorted(p for p in (src / "val").iterdir() if p.is_dir()):
        if taken == val_images:
            break
        files = _image_files(c)[:1]
        for f in files:
            (dst / "val" / c.name).mkdir(parents=True, exist_ok=True)
            (dst / "val" / c.name / f.name).symlink_to(f)
            taken += 1
    _stamp(dst, spec)
    return dst


def _subset(data: dict, n: int, at_most: bool = False) -> dict:
    """The first ``n`` images that hold at least one non-crowd object, with their annotations (fewer when
    ``at_most`` and the set has fewer)."""
    by_image: dict[Any, list] = {}
    for a in data["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    keep = [im for im in data["images"] if any(not a.get("iscrowd", 0) for a in by_image.get(im["id"], []))][:n]
    if len(keep) < n and not at_most:
        raise UserError(f"the COCO set has only {len(keep)} annotated images; the rehearsal needs {n}")
    ids = {im["id"] for im in keep}
    return {**{k: v for k, v in data.items() if k not in ("images", "annotations")}, "images": keep,
            "annotations": [a for a in data["annotations"] if a["image_id"] in ids]}


def coco_view(src: str | Path, dst: str | Path, train_images: int, val_images: int, at_most: bool = False) -> Path:
    """A COCO 2017 folder of ``train_images`` / ``val_images`` images: subset annotation files, linked images."""
    src, dst = Path(src).resolve(), Path(dst)
    spec = {"kind": "coco-view", "src": str(src), "train_images": train_images, "val_images": val_images,
            "at_most": at_most}
    if _fresh(dst, spec):
        return dst
    _clear(dst)
    (dst / "annotations").mkdir(parents=True)
    for split, n in (("train", train_images), ("val", val_images)):
        data = json.loads((src / "annotations" / f"instances_{split}2017.json").read_text())
        with open(dst / "annotations" / f"instances_{split}2017.json", "w") as f:
            json.dump(_subset(data, n, at_most), f)
        (dst / f"{split}2017").symlink_to(src / f"{split}2017", target_is_directory=True)
    _stamp(dst, spec)
    return dst


# ---- preflight: the user's data read and checked before anything trains


def preflight_imagenet(root: str | Path, recipe: str | Path, sample: int = 16,
                       timing_root: str | Path | None = None) -> dict:
    """Every class folder of train/ and val/ listed and one image of each decoded; then the recipe's training
    view (decode + RandAugment + crop ...) timed on ``sample`` train images in this one process, read through
    ``timing_root`` (a view of the same files: no scan of a million file names) when given."""
    from distill.data import check_split
    root = Path(root)
    t0 = time.time()
    out: dict[str, Any] = {"root": str(root)}
    classes: dict[str, list[str]] = {}
    for split in ("train", "val"):
        d = check_split(root, split)
        empty, bad, counts, sizes = [], [], [], []
        names = sorted(p.name for p in d.iterdir() if p.is_dir())
        for name in names:
            files = _image_files(d / name)
            counts.append(len(files))
            if not files:
                empty.append(name)
                continue
            try:
                with Image.open(files[0]) as im:
                    im.load()
                    sizes.append(im.size)
            except (OSError, SyntaxError, ValueError) as e:
                bad.append(f"{files[0]} ({type(e).__name__})")
        if split == "train" and empty:
            raise UserError(f"{d}: {len(empty)} class folders hold no images ({', '.join(empty[:3])})")
        if bad:
            raise UserError(f"{d}: unreadable images: {'; '.join(bad[:3])}" + (" ..." if len(bad) > 3 else ""))
        classes[split] = names
        out[split] = {"classes": len(names), "images": int(sum(counts)), "min_per_class": int(min(counts)),
                      "mean_size": [round(float(np.mean([s[0] for s in sizes]))),
                                    round(float(np.mean([s[1] for s in sizes])))]}
    unknown = sorted(set(classes["val"]) - set(classes["train"]))
    if unknown:
        raise UserError(f"{root}/val has class folders that train/ lacks: {', '.join(unknown[:3])}")
    out["checked_seconds"] = round(time.time() - t0, 1)
    out["loader"] = _time_imagenet_view(Path(timing_root or root), recipe, sample)
    return out


def _time_imagenet_view(root: Path, recipe: str | Path, sample: int) -> dict:
    """Seconds per training sample of the loader's own work (one worker), with the recipe's augmentation."""
    import torch
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    from distill.args import parse_args
    from distill.data import build_dataset, build_train_loader
    args = parse_args(["-c", str(recipe), "--data-dir", str(root), "--batch-size", "2", "--workers", "0"])
    ds = build_dataset(root, "train", is_training=True)
    data_cfg = {"input_size": (3, args.img_size, args.img_size), "interpolation": args.interpolation,
                "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD, "crop_pct": args.crop_pct}
    loader = build_train_loader(ds, args, data_cfg, torch.device("cpu"), 0, 1, len(ds.class_to_idx))
    keys = list(iter(loader.sampler))[:sample]
    loader.dataset[keys[0]]  # first call: imports and caches
    t0 = time.perf_counter()
    for k in keys:
        loader.dataset[k]
    per = (time.perf_counter() - t0) / len(keys)
    return {"recipe": str(recipe), "samples": len(keys), "seconds_per_image": round(per, 4),
            "images_per_second_per_worker": round(1 / per, 1)}


def preflight_coco(root: str | Path, config: str | Path, timing_view: str | Path, sample: int = 8) -> dict:
    """Both annotation files read and checked (ids, boxes, categories, every image file present), the 80
    categories of the paper configs' heads, then the config's training pipeline timed on up to ``sample`` train
    images, read through a view written to ``timing_view`` (so the dataset does not parse the whole file again)."""
    from transfer.coco_check import check_coco_json
    root = Path(root)
    t0 = time.time()
    out: dict[str, Any] = {"root": str(root)}
    for split in ("train", "val"):
        s = check_coco_json(root / "annotations" / f"instances_{split}2017.json", root / f"{split}2017")
        if len(s.categories) != COCO_CLASSES:
            raise UserError(f"{s.path}: {len(s.categories)} categories; the paper's detection configs predict "
                            f"COCO's {COCO_CLASSES}")
        out[split] = {"images": s.num_images, "annotations": s.num_annotations, "categories": len(s.categories)}
    out["checked_seconds"] = round(time.time() - t0, 1)
    view = coco_view(root, timing_view, sample, 1, at_most=True)
    out["loader"] = _time_coco_pipeline(view, config, sample)
    return out


def _time_coco_pipeline(root: Path, config: str | Path, sample: int) -> dict:
    """Seconds per training image of the config's own dataset and pipeline (decode, masks, resize, flip, pack)."""
    from mmdet.registry import DATASETS
    from mmdet.utils import register_all_modules

    from transfer.finetune import load_config
    register_all_modules()
    cfg = load_config(config, data_root=root)
    ds = DATASETS.build(cfg.train_dataloader.dataset)
    n = min(sample, len(ds))
    ds[0]
    t0 = time.perf_counter()
    for i in range(n):
        ds[i % len(ds)]
    per = (time.perf_counter() - t0) / n
    return {"config": str(config), "samples": n, "seconds_per_image": round(per, 4),
            "images_per_second_per_worker": round(1 / per, 1)}
