"""ImageFolder data for distillation: timm datasets, transforms, loaders and mixup, plus the checks a
user mistake needs (missing folders, no classes, no images) and the seeded per-class subset."""
from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from timm.data import Mixup, create_dataset, create_loader, create_transform
from timm.data.readers.reader_image_folder import ReaderImageFolder

from .io import UserError


def check_split(root: str | Path, split: str) -> Path:
    d = Path(root) / split
    if not Path(root).is_dir():
        raise UserError(f"data directory not found: {root}")
    if not d.is_dir():
        raise UserError(f"split folder not found: {d} (expected ImageNet layout: {root}/{split}/<class>/<image>)")
    classes = [c for c in d.iterdir() if c.is_dir()]
    if not classes:
        raise UserError(f"no class folders in {d} (expected {d}/<class>/<image>)")
    return d


def build_dataset(root: str | Path, split: str, is_training: bool,
                  class_to_idx: dict[str, int] | None = None):
    """A timm ImageDataset over ``root/split`` (class order shared with the train split when given)."""
    d = check_split(root, split)
    try:
        ds = create_dataset("", root=str(d), split="", is_training=is_training, class_map=class_to_idx or "")
    except RuntimeError as e:
        raise UserError(f"no images in {d}: {str(e).splitlines()[0]}") from None
    if len(ds) == 0:
        raise UserError(f"no images in {d}")
    return ds


def subset_per_class(dataset, fraction: float, seed: int) -> None:
    """Keep ``fraction`` of each class, chosen with ``seed`` (in place; the data-scale study of Fig. 1)."""
    if not 0 < fraction <= 1:
        raise UserError(f"--train-subset must be in (0, 1], got {fraction}")
    if fraction == 1:
        return
    reader: ReaderImageFolder = dataset.reader
    by_class: dict[int, list[int]] = defaultdict(list)
    for i, (_, target) in enumerate(reader.samples):
        by_class[target].append(i)
    rng = np.random.RandomState(seed)
    keep: list[int] = []
    for target in sorted(by_class):
        idx = by_class[target]
        n = max(1, int(round(len(idx) * fraction)))
        keep.extend(sorted(rng.choice(idx, n, replace=False).tolist()))
    reader.samples = [reader.samples[i] for i in sorted(keep)]


def build_train_loader(dataset, args: argparse.Namespace, data_cfg: dict, device: torch.device):
    return create_loader(
        dataset,
        input_size=data_cfg["input_size"],
        batch_size=args.batch_size,
        is_training=True,
        no_aug=args.no_aug,
        re_prob=args.reprob,
        scale=tuple(args.scale),
        ratio=tuple(args.ratio),
        hflip=args.hflip,
        color_jitter=args.color_jitter,
        auto_augment=args.aa,
        num_aug_repeats=args.aug_repeats,
        interpolation="random" if not args.no_aug else data_cfg["interpolation"],
        mean=data_cfg["mean"],
        std=data_cfg["std"],
        num_workers=args.workers,
        distributed=True,  # always under a process group (world size 1 for a single process)
        pin_memory=device.type == "cuda",
        device=device,
        use_prefetcher=False,
        persistent_workers=args.workers > 0,
    )


def build_eval_loader(dataset, args: argparse.Namespace, data_cfg: dict, rank: int, world_size: int):
    """Each rank evaluates its own contiguous slice, no padding: sums over ranks give exact accuracy."""
    dataset.transform = create_transform(
        data_cfg["test_input_size"], is_training=False, interpolation=data_cfg["interpolation"],
        mean=data_cfg["mean"], std=data_cfg["std"], crop_pct=data_cfg["crop_pct"])
    n = len(dataset)
    per = (n + world_size - 1) // world_size
    indices = list(range(rank * per, min(n, (rank + 1) * per)))
    return torch.utils.data.DataLoader(
        torch.utils.data.Subset(dataset, indices),
        batch_size=args.validation_batch_size or args.batch_size,
        shuffle=False, num_workers=args.workers, pin_memory=False)


def build_mixup(args: argparse.Namespace, num_classes: int) -> Mixup | None:
    if args.no_aug or (args.mixup <= 0 and args.cutmix <= 0):
        return None
    return Mixup(mixup_alpha=args.mixup, cutmix_alpha=args.cutmix, prob=args.mixup_prob,
                 switch_prob=args.mixup_switch_prob, mode=args.mixup_mode,
                 label_smoothing=args.smoothing, num_classes=num_classes)
