"""Top-1/top-5 of trained models on a split of any container (class folders, tars, the hub's parquet layout,
WebDataset shards: distill/containers.py): what timm's validate.py and the official repository's (timm 0.6.5's)
report, with distill.py's own evaluation.

Each model is built from its weight file through common.weights (any layout timm maps, loaded strictly), or from
timm's pretrained weights. Its eval transform is timm's (``resolve_data_config`` + ``create_transform(is_training=
False)``) from the model's pretrained cfg (a hub folder's config.json: the run's own preprocessing), each flag
overriding one entry. The evaluation is distill.py's (``distill.evaluation.evaluate``): under torchrun every rank takes
its own contiguous slice of the split and the counts are summed, so the figures are exact for any world size; ReaL
labels and extra folders (ImageNet-V2) as distill.py's ``--real-labels`` / ``--extra-val``.
"""
from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import timm
import torch
import torch.nn as nn

from common.environment import fingerprint
from common.io import UserError, atomic_file
from common.models import create_model
from common.weights import load_model

from . import distributed as D
from .data import RealLabels, build_dataset, build_eval_loader, class_labels, extra_val_dataset
from .evaluation import evaluate
from .run_setup import amp_dtype_for

# timm validate.py's columns first, then ours
COLUMNS = ("model", "checkpoint", "top1", "top1_err", "top5", "top5_err", "param_count", "img_size", "crop_pct",
           "interpolation")


def pairs(items: list[tuple[str, str]], pretrained: bool) -> list[tuple[str, str | None]]:
    """(model, checkpoint) in command-line order: each --checkpoint belongs to the --model before it; a model
    without one is a hub folder (local-dir:) or, with --pretrained, timm's pretrained weights."""
    out: list[list] = []
    for kind, value in items:
        if kind == "model":
            out.append([value, None])
        elif not out or out[-1][1] is not None:
            raise UserError(f"--checkpoint {value} has no --model before it (give one --checkpoint per --model, "
                            "each after its --model)")
        else:
            out[-1][1] = value
    if not out:
        raise UserError("give at least one --model")
    for entry in out:
        if entry[1] is None and entry[0].startswith("local-dir:"):
            entry[1] = entry[0][len("local-dir:"):]
        elif entry[1] is None and not pretrained:
            raise UserError(f"--model {entry[0]} has no weights: give --checkpoint FILE (or a hub folder) after it, "
                            "or --pretrained for timm's pretrained weights (needs network)")
    return [(m, c) for m, c in out]


def build(model: str, checkpoint: str | None, a: argparse.Namespace, num_classes: int,
          split_dir: Path | str) -> nn.Module:
    """The model with its weights; its classifier must predict the classes the split is labelled with."""
    if checkpoint is None:
        m = create_model(model, pretrained=True, img_size=a.img_size)
        what = f"timm's pretrained {model}"
    else:
        m = load_model(None if model.startswith("local-dir:") else model, checkpoint, a.unsafe_load, a.ema,
                       img_size=a.img_size)
        what = f"checkpoint {checkpoint}"
    if num_classes and getattr(m, "num_classes", num_classes) != num_classes:
        raise UserError(f"{what} has a {m.num_classes}-class classifier but {split_dir} is labelled with "
                        f"{num_classes} classes")
    return m


def data_config(model: nn.Module, a: argparse.Namespace) -> dict:
    """timm's eval preprocessing for the model (test size when its cfg has one), each given flag overriding."""
    overrides: dict = {}
    if a.img_size:
        overrides["input_size"] = (3, a.img_size, a.img_size)
    for key in ("crop_pct", "interpolation", "mean", "std"):
        if getattr(a, key) is not None:
            overrides[key] = tuple(getattr(a, key)) if key in ("mean", "std") else getattr(a, key)
    cfg = timm.data.resolve_data_config(overrides, model=model, use_test_size=True)
    cfg["test_input_size"] = cfg["input_size"]  # what build_eval_loader reads
    return cfg


def validate(a: argparse.Namespace) -> list[dict]:
    """Evaluate every --model/--checkpoint pair; rank 0 prints one line each and writes --results-file."""
    if a.results_file and Path(a.results_file).suffix.lower() not in (".csv", ".json"):
        raise UserError(f"--results-file must end in .csv or .json, not {a.results_file}")
    todo = pairs(a.order, a.pretrained)
    info = D.init_distributed(a.device)
    try:
        return _validate_all(a, todo, info)
    finally:
        D.cleanup()


def _validate_all(a: argparse.Namespace, todo: list[tuple[str, str | None]], info: D.DistInfo) -> list[dict]:
    device = info.device
    val_ds = build_dataset(a.data_dir, a.split, is_training=False, dataset=a.dataset,
                           class_to_idx=class_labels(a.data_dir, a.split, a.class_map, a.dataset))
    split_dir = val_ds.where
    class_to_idx = val_ds.class_to_idx  # the labels given, else the container's own order
    extra = [extra_val_dataset(spec, class_to_idx) for spec in a.extra_val or []]
    real = RealLabels(a.real_labels, val_ds.samples) if a.real_labels else None
    amp = amp_dtype_for(a.amp, a.amp_dtype, device)
    eval_opts = dict(batch_size=a.batch_size, workers=a.workers)
    rows = []
    for model_name, checkpoint in todo:
        model = build(model_name, checkpoint, a, len(class_to_idx), split_dir).eval().to(device)
        if a.channels_last:
            model = model.to(memory_format=torch.channels_last)
        cfg = data_config(model, a)
        loader = build_eval_loader(val_ds, cfg, info.rank, info.world_size, **eval_opts)
        t0 = time.perf_counter()
        m = evaluate(model, loader, device, amp, a.channels_last, real)
        seconds = time.perf_counter() - t0
        row = {"model": model_name, "checkpoint": checkpoint or "pretrained", "top1": round(m["top1"], 4),
               "top1_err": round(100 - m["top1"], 4), "top5": round(m["top5"], 4), "top5_err": round(100 - m["top5"], 4),
               "param_count": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
               "img_size": cfg["input_size"][-1], "crop_pct": cfg["crop_pct"], "interpolation": cfg["interpolation"],
               "mean": list(cfg["mean"]), "std": list(cfg["std"]), "images": len(val_ds),
               "images_per_sec": round(len(val_ds) / seconds, 2), "batch_size": a.batch_size,
               "amp": str(amp).replace("torch.", "") if amp else None, "world_size": info.world_size,
               "threads": torch.get_num_threads()}
        if real is not None:
            row.update(real_top1=round(m["real_top1"], 4), real_top5=round(m["real_top5"], 4))
        for extra_name, ds in extra:
            em = evaluate(model, build_eval_loader(ds, cfg, info.rank, info.world_size, **eval_opts), device, amp,
                          a.channels_last, None)
            row.update({f"{extra_name}_top1": round(em["top1"], 4), f"{extra_name}_top5": round(em["top5"], 4)})
        rows.append(row)
        if info.is_main:
            print(line(row), flush=True)
        del model
    if info.is_main and a.results_file:
        write_results(rows, a.results_file)
        print(f"results: {a.results_file}", flush=True)
    D.barrier()
    return rows


def line(row: dict) -> str:
    """One line per model, timm validate.py's figures first."""
    extras = " ".join(f"{k} {v:.3f}" for k, v in row.items() if k.endswith(("_top1", "_top5")))
    return (f"{row['model']} ({row['checkpoint']}): top1 {row['top1']:.3f} top5 {row['top5']:.3f}"
            + (f" {extras}" if extras else "")
            + f" | {row['images']} images, {row['images_per_sec']:.1f} img/s, {row['param_count']}M params, "
              f"{row['img_size']}px crop {row['crop_pct']} {row['interpolation']}")


def write_results(rows: list[dict], path: str | Path) -> None:
    """CSV (timm validate.py's columns first) or JSON (a list of rows), by extension, written atomically."""
    path = Path(path)
    if path.suffix.lower() == ".json":  # each row names the environment that measured it
        env = fingerprint()
        with atomic_file(path, "w") as f:
            json.dump([{**r, "environment": env} for r in rows], f, indent=2)
        return
    keys = [c for c in COLUMNS if any(c in r for r in rows)]
    for r in rows:
        keys += [k for k in r if k not in keys]
    with atomic_file(path, "w") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        for r in rows:
            w.writerow({k: (" ".join(map(str, v)) if isinstance(v, list) else v) for k, v in r.items()})
