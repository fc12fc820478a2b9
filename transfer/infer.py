"""A fine-tuned detector on the user's own images, through mmdet's ``DetInferencer``: for each image a picture of
its boxes, masks and class names (mmdet's ``DetLocalVisualizer``) and one JSON of the same predictions; optionally
all the pictures as one grid.

Which predictions are shown and written is chosen here, not by DetInferencer's drawing threshold (0.3, at which a
briefly trained detector whose best scores are about 0.15 draws nothing): those scoring at least ``score_thr``, at
most ``top_k`` per image, highest first. A config's own test score threshold (``model.test_cfg...score_thr``) is
lowered to ``score_thr`` when it is higher, so that the detector returns them at all.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from common.io import UserError, atomic_file

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def list_images(items: list[str]) -> list[Path]:
    """The image files named, folders expanded (sorted); one line for what is missing or holds no image."""
    out: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if q.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise UserError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {p}")
            out += found
        elif p.is_file():
            out.append(p)
        else:
            raise UserError(f"image not found: {p}")
    names = [p.stem for p in out]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise UserError(f"two images are named {twice[0]}: their pictures and JSON files would overwrite each other")
    return out


def checkpoint_file(path: str | Path) -> Path:
    """A detector checkpoint, or a work dir (its ``last_checkpoint``)."""
    p = Path(path)
    if p.is_dir():
        pointer = p / "last_checkpoint"
        if not pointer.is_file():
            raise UserError(f"{p} is a folder without last_checkpoint: give a checkpoint file (e.g. {p}/epoch_12.pth)")
        p = Path(pointer.read_text().strip())
    from transfer.finetune import check_detector_checkpoint
    check_detector_checkpoint(p)  # missing, corrupt or unsafe: one line
    return p


def lower_score_thr(cfg_node, thr: float) -> int:
    """Lower every ``score_thr`` of a test_cfg above ``thr`` to it; returns how many were lowered."""
    n = 0
    items = cfg_node.items() if hasattr(cfg_node, "items") else enumerate(cfg_node) if isinstance(
        cfg_node, (list, tuple)) else []
    for k, v in list(items):
        if k == "score_thr" and isinstance(v, (int, float)) and v > thr:
            cfg_node[k] = thr
            n += 1
        elif hasattr(v, "items") or isinstance(v, (list, tuple)):
            n += lower_score_thr(v, thr)
    return n


def keep_top(pred, score_thr: float, top_k: int):
    """The data sample with its instances cut to those scoring >= score_thr, at most top_k, best first."""
    inst = pred.pred_instances
    order = inst.scores.argsort(descending=True)
    order = order[inst.scores[order] >= score_thr][:top_k]
    pred.pred_instances = inst[order]
    return pred


def infer(config: str | Path, checkpoint: str | Path, images: list[str], out: str | Path, score_thr: float = 0.05,
          top_k: int = 10, device: str = "cpu", grid: str | Path | None = None,
          cfg_options: dict | None = None) -> list[dict]:
    """Predict, draw and write one picture (``out/vis/NAME.png``) and one JSON (``out/preds/NAME.json``) per image;
    ``grid``: all the pictures in one image. Returns the JSON records."""
    if not 0 <= score_thr <= 1:
        raise UserError(f"--score-thr must be in [0, 1], got {score_thr}")
    if top_k < 1:
        raise UserError(f"--top-k must be at least 1, got {top_k}")
    paths = list_images(images)
    ckpt = checkpoint_file(checkpoint)
    from mmdet.apis import DetInferencer

    from transfer.finetune import load_config
    cfg = load_config(config, cfg_options)
    cfg.model.backbone.init_cfg = None  # the weights come from the detector checkpoint
    lower_score_thr(cfg.model.get("test_cfg", {}), score_thr)
    if cfg.get("visualizer") is not None:
        cfg.visualizer.vis_backends = None  # the pictures are written here, not through a training run's backends
    inferencer = DetInferencer(model=cfg, weights=str(ckpt), device=device, show_progress=False)
    classes = list(inferencer.model.dataset_meta.get("classes", []))
    out = Path(out)
    records, pictures = [], []
    for path in paths:
        pred = inferencer(str(path), return_datasamples=True, no_save_vis=True, no_save_pred=True)["predictions"][0]
        pred = keep_top(pred, score_thr, top_k)
        picture = out / "vis" / f"{path.stem}.png"
        picture.parent.mkdir(parents=True, exist_ok=True)
        drawn = inferencer.visualize([str(path)], [pred], return_vis=True, pred_score_thr=score_thr)[0]
        _write_image(drawn, picture)
        rec = {"image": str(path), "picture": str(picture), "checkpoint": str(ckpt), "score_thr": score_thr,
               "top_k": top_k, "height": int(pred.ori_shape[0]), "width": int(pred.ori_shape[1]),
               **inferencer.pred2dict(pred)}
        rec["classes"] = [classes[i] if 0 <= i < len(classes) else str(i) for i in rec.get("labels", [])]
        with atomic_file(out / "preds" / f"{path.stem}.json", "w", what="JSON file") as f:
            json.dump(rec, f, indent=2)
        records.append(rec)
        pictures.append(picture)
    if grid is not None:
        write_grid(pictures, grid)
    return records


def _write_image(rgb, path: Path) -> None:
    """An RGB array to ``path`` (PNG), atomically."""
    from PIL import Image
    with atomic_file(path, "wb", what="picture") as f:
        Image.fromarray(rgb).save(f, format="PNG")


def write_grid(pictures: list[Path], path: str | Path, cell: int = 320, columns: int | None = None) -> Path:
    """The pictures side by side (each scaled to fit ``cell`` pixels, file name below), in about-square rows."""
    from PIL import Image, ImageDraw
    cols = columns or max(1, math.ceil(math.sqrt(len(pictures))))
    rows = max(1, math.ceil(len(pictures) / cols))
    label = 16
    sheet = Image.new("RGB", (cols * cell, rows * (cell + label)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, p in enumerate(pictures):
        img = Image.open(p).convert("RGB")
        scale = cell / max(img.size)
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.BICUBIC)
        x, y = (i % cols) * cell, (i // cols) * (cell + label)
        sheet.paste(img, (x + (cell - img.width) // 2, y + (cell - img.height) // 2))
        draw.text((x + 4, y + cell + 2), p.stem, fill="black")
    path = Path(path)
    with atomic_file(path, "wb", what="picture") as f:
        sheet.save(f, format="PNG")
    return path
