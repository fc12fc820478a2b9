"""Check COCO annotation files (and a detection config's view of them) before anything trains or evaluates.

Why: a truncated JSON, an empty ``annotations`` list, annotations pointing at image ids that do not exist or a
head with the wrong ``num_classes`` otherwise surface deep inside pycocotools or mmdet (a KeyError in a
dataloader worker, an empty dataset after ``filter_empty_gt``, a CUDA assert on a label index, or silently
-1 APs), often minutes into a run. Each problem here becomes one ``UserError`` line that names the file and
the first few offending ids.
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.errors import UserError

_SHOW = 3  # offending ids named per problem
_UNREAD = object()  # check_coco_json(data=...) not given: read the file


@dataclass
class CocoSummary:
    """What a checked annotation file holds."""

    path: Path
    num_images: int
    num_annotations: int
    categories: dict[int, str] = field(default_factory=dict)  # id -> name


def _examples(items: Sequence[Any]) -> str:
    shown = ", ".join(str(x) for x in items[:_SHOW])
    return shown + (", ..." if len(items) > _SHOW else "")


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _id(v: Any) -> bool:
    return isinstance(v, (int, str)) and not isinstance(v, bool)


def read_coco_json(path: str | os.PathLike) -> Any:
    """Parse an annotation file, or raise the one-line UserError ``check_coco_json`` gives for it."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"COCO annotation file not found: {path}")
    raw = path.read_bytes()
    if not raw.strip():
        raise UserError(f"{path}: the COCO annotation file is empty")
    try:
        return json.loads(raw)
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON at line {e.lineno} column {e.colno}: {e.msg} "
                        "(truncated or broken file?)") from None
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 JSON text (byte {e.start})") from None


def check_coco_json(path: str | os.PathLike, image_root: str | os.PathLike | None = None,
                    need_annotations: bool = True, data: Any = _UNREAD) -> CocoSummary:
    """Validate a COCO instances file; raise one UserError line naming the path and the problems.

    Checks: it exists and parses (line and column of a JSON error); ``images``, ``annotations`` and
    ``categories`` are lists (``annotations`` may be absent when ``need_annotations`` is False, as in
    test-dev image-info files); images and categories have unique ids; annotations are non-empty (when
    ``need_annotations``), point at known image and category ids and carry ``bbox`` = 4 finite non-negative
    numbers; with ``image_root``, every image file exists there.

    ``data``: the file's content already parsed (``read_coco_json``), so that a caller which goes on to use it
    parses the file once; ``path`` then only names it in the messages, which are the same either way.
    """
    path = Path(path)
    if data is _UNREAD:
        data = read_coco_json(path)
    if not isinstance(data, dict):
        raise UserError(f"{path}: the top level is a JSON {type(data).__name__}, not a COCO object with "
                        "images, annotations and categories")
    required = ("images", "annotations", "categories") if need_annotations or "annotations" in data \
        else ("images", "categories")
    missing = [k for k in required if k not in data]
    if missing:
        raise UserError(f"{path}: no {', '.join(repr(k) for k in missing)} list (a COCO file has images, "
                        "annotations and categories)")
    for k in required:
        if not isinstance(data[k], list):
            raise UserError(f"{path}: {k!r} is a JSON {type(data[k]).__name__}, not a list")
    images, categories = data["images"], data["categories"]
    annotations = data.get("annotations", [])
    if not images:
        raise UserError(f"{path}: 'images' is empty")
    if not categories:
        raise UserError(f"{path}: 'categories' is empty")

    problems: list[str] = []
    bad_images = [i for i, im in enumerate(images) if not isinstance(im, dict) or not _id(im.get("id"))]
    if bad_images:
        raise UserError(f"{path}: {len(bad_images)} images have no usable 'id' (entries {_examples(bad_images)})")
    image_ids: set = set()
    dup = []
    for im in images:
        if im["id"] in image_ids:
            dup.append(im["id"])
        image_ids.add(im["id"])
    if dup:
        problems.append(f"{len(dup)} duplicate image ids ({_examples(dup)})")
    lacking = [im["id"] for im in images if any(k not in im for k in ("file_name", "width", "height"))]
    if lacking:
        problems.append(f"{len(lacking)} images lack file_name/width/height (ids {_examples(lacking)})")

    bad_cats = [i for i, c in enumerate(categories)
                if not isinstance(c, dict) or not _id(c.get("id")) or "name" not in c]
    if bad_cats:
        raise UserError(f"{path}: {len(bad_cats)} categories lack a usable 'id' or a 'name' "
                        f"(entries {_examples(bad_cats)})")
    cats: dict[Any, str] = {}
    dup_cats = []
    for c in categories:
        if c["id"] in cats:
            dup_cats.append(c["id"])
        cats.setdefault(c["id"], str(c["name"]))
    if dup_cats:
        problems.append(f"{len(dup_cats)} duplicate category ids ({_examples(dup_cats)})")

    if need_annotations and not annotations:
        raise UserError(f"{path}: 'annotations' is empty (this set is used for training or evaluation, "
                        "which needs annotated objects)")
    no_image, no_cat, bad_box, not_obj = [], [], [], []
    for i, ann in enumerate(annotations):
        if not isinstance(ann, dict):
            not_obj.append(i)
            continue
        aid = ann.get("id", f"#{i}")
        if not _id(ann.get("image_id")) or ann["image_id"] not in image_ids:
            no_image.append(f"{aid} -> image_id {ann.get('image_id')}")
        if not _id(ann.get("category_id")) or ann["category_id"] not in cats:
            no_cat.append(f"{aid} -> category_id {ann.get('category_id')}")
        box = ann.get("bbox")
        if not (isinstance(box, list) and len(box) == 4 and all(_number(v) and v >= 0 for v in box)):
            bad_box.append(f"{aid}: {json.dumps(box)[:40] if 'bbox' in ann else 'no bbox'}")
    if not_obj:
        problems.append(f"{len(not_obj)} annotations are not JSON objects (entries {_examples(not_obj)})")
    if no_image:
        problems.append(f"{len(no_image)} annotations point to image ids that are not in 'images' "
                        f"(annotation {_examples(no_image)})")
    if no_cat:
        problems.append(f"{len(no_cat)} annotations have unknown category ids (known: {_examples(sorted(cats))}; "
                        f"annotation {_examples(no_cat)})")
    if bad_box:
        problems.append(f"{len(bad_box)} annotations lack a bbox of 4 non-negative numbers [x, y, w, h] "
                        f"(annotation {_examples(bad_box)})")
    if image_root is not None and not problems:
        root = Path(image_root)
        absent = [im["file_name"] for im in images if not (root / str(im["file_name"])).is_file()]
        if absent:
            problems.append(f"{len(absent)} of {len(images)} image files are missing under {root} "
                            f"({_examples(absent)})")
    if problems:
        raise UserError(f"{path}: " + "; ".join(problems))
    return CocoSummary(path, len(images), len(annotations), cats)


# ---- a detection config's annotation files and class count


def model_num_classes(model_cfg: Mapping) -> dict[str, int]:
    """``{'model.roi_head.bbox_head': 80, 'model.roi_head.mask_head': 80, ...}`` (cascade stages as [i])."""
    out: dict[str, int] = {}
    places = [("model.roi_head", (model_cfg.get("roi_head") or {})), ("model", model_cfg)]
    for prefix, parent in places:
        for key in ("bbox_head", "mask_head"):
            head = parent.get(key)
            heads = list(enumerate(head)) if isinstance(head, (list, tuple)) else [(None, head)]
            for i, h in heads:
                if isinstance(h, Mapping) and isinstance(h.get("num_classes"), int):
                    out[f"{prefix}.{key}" + ("" if i is None else f"[{i}]")] = h["num_classes"]
    return out


def leaf_datasets(ds: Any) -> Iterator[Mapping]:
    """The datasets inside wrappers (RepeatDataset, ClassBalancedDataset, ConcatDataset, ...)."""
    if not isinstance(ds, Mapping):
        return
    if isinstance(ds.get("datasets"), (list, tuple)):
        for d in ds["datasets"]:
            yield from leaf_datasets(d)
    elif isinstance(ds.get("dataset"), Mapping):
        yield from leaf_datasets(ds["dataset"])
    else:
        yield ds


def _join(root: str | None, p: str | None) -> str | None:
    """mmengine's rule: a relative ann_file or data prefix lives under data_root."""
    if p is None:
        return None
    return os.path.join(root, p) if root and not os.path.isabs(p) and "://" not in p else p


def _is_type(cfg: Mapping, name: str) -> bool:
    return str(cfg.get("type", "")).split(".")[-1] == name


def check_num_classes(heads: Mapping[str, int], summary: CocoSummary, classes: Sequence[str] | None,
                      config: str | os.PathLike, split: str) -> None:
    """The heads must predict as many classes as the dataset maps: its metainfo classes, else the file's."""
    if classes is not None:
        absent = [c for c in classes if c not in set(summary.categories.values())]
        if absent:
            raise UserError(f"{summary.path}: the {split} dataset's metainfo.classes name categories the file does "
                            f"not have ({_examples(absent)}; it has {_examples(list(summary.categories.values()))})")
        n, what = len(classes), f"metainfo.classes; {summary.path} has {len(summary.categories)} categories"
    else:
        n, what = len(summary.categories), f"the categories of {summary.path}"
    for name, k in heads.items():
        if k != n:
            raise UserError(f"{config}: {name}.num_classes is {k} but the {split} dataset has {n} classes ({what})")


def check_config_annotations(cfg: Any, splits: Sequence[str] = ("train", "val"),
                             config: str | os.PathLike = "config") -> list[CocoSummary]:
    """Check every COCO annotation file of the given splits' dataloaders and evaluators, and the class count.

    Leaves non-COCO datasets, remote paths (``s3://``...) and non-JSON annotation files alone.
    """
    seen: dict[str, CocoSummary] = {}
    heads = model_num_classes(cfg.get("model") or {})

    def check(ann: str | None, image_root: str | None) -> CocoSummary | None:
        if not ann or "://" in ann or not ann.endswith(".json"):
            return None
        if ann not in seen:
            seen[ann] = check_coco_json(ann, image_root)
        return seen[ann]

    for split in splits:
        loader = cfg.get(f"{split}_dataloader")
        for ds in leaf_datasets(loader.get("dataset") if isinstance(loader, Mapping) else None):
            if not _is_type(ds, "CocoDataset"):
                continue
            root = ds.get("data_root")
            prefix = ds.get("data_prefix") or {}
            img = prefix.get("img", prefix.get("img_path")) if isinstance(prefix, Mapping) else None
            summary = check(_join(root, ds.get("ann_file")), _join(root, img) if img is not None else None)
            if summary is not None:
                classes = (ds.get("metainfo") or {}).get("classes")
                check_num_classes(heads, summary, list(classes) if classes is not None else None, config, split)
        evaluators = cfg.get(f"{split}_evaluator")
        for ev in evaluators if isinstance(evaluators, (list, tuple)) else [evaluators]:
            if isinstance(ev, Mapping) and _is_type(ev, "CocoMetric"):
                check(ev.get("ann_file"), None)
    return list(seen.values())
