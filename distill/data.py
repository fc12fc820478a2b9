"""Data for distillation: every container through timm's readers (distill/containers.py: folders, tars, the hub's
parquet layout, WebDataset shards), timm's transforms, the replayable loaders and mixup, plus the checks a user
mistake needs (missing folders, no classes, no images, unreadable images) and the seeded per-class subset."""
from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from timm.data import Mixup, create_transform
from timm.data.readers.class_map import load_class_map
from timm.utils.misc import natural_key

from common.io import UserError
from . import streams
from .containers import Split, folder_split, kind_of, open_split, tar_class_names
from .replay import EpochSampler, MixSpec, PairMixCollate, ReplayDataset


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


def build_dataset(root: str | Path, split: str, is_training: bool = False,
                  class_to_idx: dict[str, int] | None = None, dataset: str = "") -> Split:
    """The split ``split`` of the container (``root/split``, ``root/split.tar``, ``--dataset hfds/...`` or
    ``wds/...``), with the train split's class order when given. ``is_training`` is kept for callers: a map-style
    split is the same either way, and shards are shuffled by the training loader."""
    return open_split(root, split, dataset, class_to_idx)


def _class_names(root: str | Path, split: str) -> tuple[list[str], str] | None:
    """The class names of a folder or tar split (naturally sorted) and where they were read; None if it is neither."""
    d = Path(root) / split
    if d.is_dir():
        return sorted((c.name for c in d.iterdir() if c.is_dir()), key=natural_key), str(d)
    if d.with_name(f"{split}.tar").is_file():
        return tar_class_names(d.with_name(f"{split}.tar")), str(d.with_name(f"{split}.tar"))
    return None


def class_labels(root: str | Path, split: str, class_map: str = "", dataset: str = "") -> dict[str, int] | None:
    """The label of each class of ``root/split`` for evaluating a trained model.

    A split's own order gives the wrong labels when it holds only some of the classes (a val subset, a view):
    the labels must be the ones the model was trained with. Those are, in order: ``class_map`` (timm's class-map
    file, ``.txt`` one class per line, as timm's validate.py ``--class-map``); else, for folders and tars, the
    class order of ``root/train`` (or ``root/train.tar``) when it exists (what distill.py trains with: timm's
    natural sort of the class names); else None (the container's own order: the split's classes, the parquet
    ClassLabel names, the shards' ``.cls`` values). Every class of the split must have a label.
    """
    kind = kind_of(root, split, dataset)
    if kind == "folder":
        check_split(root, split)
    if class_map:
        if not Path(class_map).is_file():
            raise UserError(f"--class-map file not found: {class_map}")
        try:
            labels = load_class_map(class_map)
        except (AssertionError, ValueError, OSError, UnicodeDecodeError) as e:
            raise UserError(f"--class-map {class_map} is not a timm class map (.txt, one class per line): "
                            f"{str(e).splitlines()[0][:120] if str(e) else type(e).__name__}") from None
        source = f"--class-map {class_map}"
    else:
        train = _class_names(root, "train") if kind in ("folder", "tar") and split != "train" else None
        if not train or not train[0]:
            return None
        labels = {c: i for i, c in enumerate(train[0])}
        source = train[1]
    own = _class_names(root, split) if kind in ("folder", "tar") else None
    if own is not None:
        unknown = sorted(c for c in own[0] if c not in labels)
        if unknown:
            what = "class folders" if kind == "folder" else "classes"
            raise UserError(f"{own[1]} has {what} that {source} lacks: {', '.join(unknown[:3])}")
    return labels


def subset_per_class(dataset: Split, fraction: float, seed: int) -> None:
    """Keep ``fraction`` of each class, chosen with ``seed`` (in place; the data-scale study of Fig. 1). The choice
    is made on the stable sample index, so it is the same on a folder, a tar or parquet of the same images."""
    if not 0 < fraction <= 1:
        raise UserError(f"--train-subset must be in (0, 1], got {fraction}")
    if fraction == 1:
        return
    if dataset.streams:
        raise UserError(f"{dataset.where}: WebDataset shards have no stable sample index, which --train-subset "
                        "needs: use the folder, tar or parquet container of the same images")
    by_class: dict[int, list[int]] = defaultdict(list)
    for i, (_, target) in enumerate(dataset.samples):
        by_class[target].append(i)
    rng = np.random.RandomState(seed)
    keep: list[int] = []
    for target in sorted(by_class):
        idx = by_class[target]
        n = max(1, int(round(len(idx) * fraction)))
        keep.extend(sorted(rng.choice(idx, n, replace=False).tolist()))
    dataset.select(sorted(keep))


def build_train_loader(dataset: Split, args: argparse.Namespace, data_cfg: dict, device: torch.device,
                       rank: int, world_size: int, num_classes: int) -> torch.utils.data.DataLoader:
    """timm's training transform under per-sample seeds (see replay.py); keys carry (position, index).

    ``--mixup-mode sample`` mixes in the collate step (``PairMixCollate``), inside the workers. WebDataset shards
    stream instead (distill/streams.py: timm's sharding, online KD only, said once at start)."""
    transform = create_transform(
        data_cfg["input_size"], is_training=True, no_aug=args.no_aug, scale=tuple(args.scale),
        ratio=tuple(args.ratio), hflip=args.hflip, color_jitter=args.color_jitter, auto_augment=args.aa,
        interpolation="random" if not args.no_aug else data_cfg["interpolation"], mean=data_cfg["mean"],
        std=data_cfg["std"], re_prob=args.reprob, re_mode=args.remode, re_count=args.recount)
    if dataset.streams:
        return streams.train_loader(dataset, args, transform, device, rank, world_size)
    collate = None
    if sample_mixup_active(args):
        if args.batch_size % 2:
            raise UserError(f"--mixup-mode sample mixes the two samples of a pair within a batch: --batch-size "
                            f"must be even, got {args.batch_size}")
        collate = PairMixCollate(MixSpec(args.mixup, args.cutmix, args.mixup_prob, args.mixup_switch_prob,
                                         args.smoothing, num_classes), args.seed)
    ds = ReplayDataset(dataset.samples, transform, args.seed, data_cfg["input_size"],
                       skip_bad_images=args.skip_bad_images, with_epoch=collate is not None, opener=dataset.opener)
    limit = getattr(args, "limit_train_batches", 0) or 0
    sampler = EpochSampler(len(ds), rank, world_size, args.seed, repeats=args.aug_repeats,
                           limit=limit * args.batch_size or None)
    return torch.utils.data.DataLoader(
        ds, batch_size=args.batch_size, sampler=sampler, num_workers=args.workers, drop_last=True,
        pin_memory=device.type == "cuda", persistent_workers=args.workers > 0, collate_fn=collate)


def build_eval_loader(dataset: Split, data_cfg: dict, rank: int, world_size: int, *, batch_size: int,
                      workers: int, seed: int = 0, skip_bad_images: bool = False) -> torch.utils.data.DataLoader:
    """Each rank evaluates its own contiguous slice (shards: its own shards), no padding: sums over ranks give
    exact accuracy."""
    transform = create_transform(
        data_cfg["test_input_size"], is_training=False, interpolation=data_cfg["interpolation"],
        mean=data_cfg["mean"], std=data_cfg["std"], crop_pct=data_cfg["crop_pct"])
    if dataset.streams:
        return streams.eval_loader(dataset, transform, rank, world_size, batch_size, workers)
    ds = ReplayDataset(dataset.samples, transform, seed, data_cfg["test_input_size"],
                       skip_bad_images=skip_bad_images, opener=dataset.opener)
    n = len(ds)
    per = (n + world_size - 1) // world_size
    keys = list(range(rank * per, min(n, (rank + 1) * per)))
    return torch.utils.data.DataLoader(ds, batch_size=batch_size, sampler=keys, shuffle=False, num_workers=workers,
                                       pin_memory=False)


def sample_mixup_active(args: argparse.Namespace) -> bool:
    return not args.no_aug and args.mixup_mode == "sample" and (args.mixup > 0 or args.cutmix > 0)


def build_mixup(args: argparse.Namespace, num_classes: int) -> Mixup | None:
    """timm's batch Mixup (the paper's), unless mixing happens per sample in the dataset (--mixup-mode sample)."""
    if args.no_aug or (args.mixup <= 0 and args.cutmix <= 0) or args.mixup_mode == "sample":
        return None
    return Mixup(mixup_alpha=args.mixup, cutmix_alpha=args.cutmix, prob=args.mixup_prob,
                 switch_prob=args.mixup_switch_prob, mode=args.mixup_mode,
                 label_smoothing=args.smoothing, num_classes=num_classes)


def extra_val_dataset(spec: str, class_to_idx: dict[str, int]) -> tuple[str, Split]:
    """``NAME=DIR``: an extra ImageFolder evaluated every epoch (ImageNet-V2 and the like).

    Class folders either carry the training class names, or are integers naming the class index (the
    ImageNet-V2 release uses 0..999).
    """
    if "=" not in spec:
        raise UserError(f"--extra-val expects NAME=DIR, got {spec!r}")
    name, root = spec.split("=", 1)
    d = Path(root)
    if not d.is_dir():
        raise UserError(f"extra val folder not found: {d}")
    names = sorted(c.name for c in d.iterdir() if c.is_dir())
    if not names:
        raise UserError(f"no class folders in {d}")
    if set(names) <= set(class_to_idx):
        mapping = {c: class_to_idx[c] for c in names}
    elif all(c.isdigit() and int(c) < len(class_to_idx) for c in names):
        mapping = {c: int(c) for c in names}
    else:
        unknown = sorted(set(names) - set(class_to_idx))[:3]
        raise UserError(f"extra val folder {d}: class folders {unknown} are neither training class names nor "
                        f"class indices below {len(class_to_idx)}")
    return name, folder_split(d, mapping)


class RealLabels:
    """ImageNet-ReaL top-1/top-5 (Beyer et al. 2020) with timm's file convention: ``real.json`` is a list, one
    label list per val image in ILSVRC2012_val_XXXXXXXX order; images with an empty list are not counted.

    timm's ``RealLabelsImagenet`` wants the whole split in one process; this one scores any slice, so each DDP
    rank scores its own and the counts are summed.
    """

    def __init__(self, real_json: str | Path, samples: list[tuple[str, int]] | None):
        if samples is None:
            raise UserError("--real-labels keys on the val images' file names; WebDataset shards have no stable "
                            "sample index: use the folder, tar or parquet container of the val split")
        p = Path(real_json)
        if not p.is_file():
            raise UserError(f"ReaL labels not found: {p}")
        try:
            labels = json.loads(p.read_text())
        except json.JSONDecodeError as e:
            raise UserError(f"{p} is not valid JSON: {e}") from None
        if not isinstance(labels, list):
            raise UserError(f"{p} must be a list of label lists (ImageNet-ReaL format)")
        self.by_name = {f"ILSVRC2012_val_{i + 1:08d}.JPEG": set(v) for i, v in enumerate(labels)}
        names = [Path(s[0]).name for s in samples]
        missing = [n for n in names if n not in self.by_name]
        if missing:
            raise UserError(f"{p} has no labels for {len(missing)} val images (first: {missing[0]}); "
                            "ReaL expects ImageNet val file names ILSVRC2012_val_XXXXXXXX.JPEG")
        self.names = names

    def score(self, logits: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """(counted, top1 correct, top5 correct) for a batch of val samples given by dataset index."""
        k = min(5, logits.shape[1])
        top = logits.topk(k, 1).indices.tolist()
        out = torch.zeros(3, dtype=torch.float64)
        for i, pred in zip(index.tolist(), top):
            real = self.by_name[self.names[i]]
            if real:
                out += torch.tensor([1.0, float(pred[0] in real), float(any(p in real for p in pred))],
                                    dtype=torch.float64)
        return out


def check_bad_files(bad: list[str], skip: bool) -> int:
    """Stop on an unreadable image (naming it) unless --skip-bad-images; return how many were skipped."""
    n = 0
    for b in bad:
        if not b:
            continue
        if b.startswith("!"):
            first = b[1:].split("; ")[0]
            raise UserError(f"unreadable image {first}" + ("" if skip else "; --skip-bad-images skips and counts "
                                                              "such files") + (" (too many in a row)" if skip else ""))
        n += b.count("; ") + 1
    return n
