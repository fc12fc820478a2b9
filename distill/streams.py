"""WebDataset shards in the training loop: streamed by timm's reader, online KD only, said once at start.

Why a module of its own: shards have no stable sample index, so what needs one (per-class subsets, replayed views,
the teacher cache, sample mixup, CRD's memory bank, ReaL labels keyed on file names) cannot run on them. The
loaders here give the training loop and the evaluation what the map-style loaders give (``sampler.set_epoch``,
``len``, batches of ``(x, y, positions, index, bad)``, positions and indices -1), from timm's own sharding: each
rank and loader worker reads its own shards (timm's ``ReaderWds``), shuffled per epoch from the seed.
Evaluation reads every shard exactly once over all ranks and workers (shard k on rank k mod world size), so its
counts are exact under torchrun as the map-style ones are.
"""
from __future__ import annotations

import argparse
import itertools

import torch
import torch.utils.data

from common.io import UserError


def stream_collate(items: list[tuple]) -> tuple:
    """The map-style loader's batch: (x, y, positions, index, bad), with no positions or indices (-1)."""
    x = torch.stack([it[0] for it in items])
    y = torch.tensor([int(it[1]) for it in items])
    none = torch.full((len(items),), -1, dtype=torch.long)
    return x, y, none, none.clone(), [""] * len(items)


class _Epochs:
    """``sampler.set_epoch`` of the training loop, forwarded to timm's reader (its per-epoch shard shuffle)."""

    def __init__(self, dataset):
        self.dataset, self.epoch = dataset, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """``start``: the samples of a resumed epoch already trained. Shards have no position to seek to, so a
        stream replays that epoch from its first shard (said once, never silently)."""
        if start:
            print(f"a WebDataset stream cannot resume inside epoch {epoch + 1}: it restarts that epoch from its first "
                  "shard", flush=True)
        self.epoch = epoch
        self.dataset.set_epoch(epoch)


class StreamLoader:
    """A DataLoader over timm's iterable shards with the surface the training loop reads."""

    def __init__(self, loader: torch.utils.data.DataLoader, limit: int = 0):
        self.loader, self.dataset, self.limit = loader, loader.dataset, limit
        self.sampler = _Epochs(loader.dataset)

    def __len__(self) -> int:
        n = len(self.loader)
        return min(n, self.limit) if self.limit else n

    def __iter__(self):
        return itertools.islice(iter(self.loader), len(self))


def limits(args: argparse.Namespace) -> list[str]:
    """What the run asked for that shards cannot give (each needs a stable sample index)."""
    from .losses import get_loss_class
    out = []
    if getattr(args, "train_subset", 1.0) != 1.0:
        out.append("--train-subset")
    if getattr(args, "record_teacher", "") or getattr(args, "teacher_cache", ""):
        out.append("--record-teacher/--teacher-cache")
    if not args.no_aug and args.mixup_mode == "sample" and (args.mixup > 0 or args.cutmix > 0):
        out.append("--mixup-mode sample")
    teacher = args.teacher or getattr(args, "teacher_cache", "")
    for name in (args.kd_loss if teacher else []):
        if name != "none" and getattr(get_loss_class(name), "needs_index", False):
            out.append(f"--kd-loss {name}")
    if getattr(args, "real_labels", ""):
        out.append("--real-labels")
    return out


def announce(where: str, args: argparse.Namespace) -> str:
    """The one line a run on shards prints at start: what it cannot do, and why."""
    repeats = f"; --aug-repeats {args.aug_repeats} is not applied (repeats are a sampler's)" \
        if args.aug_repeats and args.aug_repeats > 1 else ""
    return (f"{where}: WebDataset shards stream without a stable sample index, so this run trains with online KD "
            "only: per-class subsets (--train-subset), replayed views and the teacher cache (--record-teacher, "
            "--teacher-cache), --mixup-mode sample, CRD and ReaL labels need one (use the folder, tar or parquet "
            f"container for them), and a resumed run reshuffles instead of replaying{repeats}")


def train_loader(split, args: argparse.Namespace, transform, device: torch.device, rank: int,
                 world_size: int) -> StreamLoader:
    """timm's shards for training: split by rank and worker, reshuffled each epoch (``set_epoch``)."""
    asked = limits(args)
    if asked:
        raise UserError(f"{split.where}: WebDataset shards have no stable sample index, which {', '.join(asked)} "
                        "needs: use the folder, tar or parquet container of the same images")
    readers = world_size * max(1, args.workers)
    if len(split.shards) < readers:
        raise UserError(f"{split.where}: {len(split.shards)} shards cannot feed {world_size} process(es) x "
                        f"{max(1, args.workers)} loader worker(s) (timm gives each reader whole shards): write at "
                        f"least {readers} shards, or use fewer --workers")
    if rank == 0:
        print(announce(split.where, args), flush=True)
    ds = split.stream(is_training=True, batch_size=args.batch_size, seed=args.seed, workers=args.workers)
    ds.transform = transform
    loader = torch.utils.data.DataLoader(
        ds, batch_size=args.batch_size, num_workers=args.workers, drop_last=True,
        pin_memory=device.type == "cuda", persistent_workers=args.workers > 0, collate_fn=stream_collate)
    return StreamLoader(loader, getattr(args, "limit_train_batches", 0) or 0)


def eval_loader(split, transform, rank: int, world_size: int, batch_size: int,
                workers: int) -> torch.utils.data.DataLoader:
    """Every sample once over all ranks: this rank's shards (k mod world size), split over its workers."""
    mine = [k for k in range(len(split.shards)) if k % world_size == rank]
    ds = split.stream(is_training=False, batch_size=batch_size, workers=workers, shards=mine)
    ds.transform = transform
    return torch.utils.data.DataLoader(ds, batch_size=batch_size, num_workers=workers if mine else 0,
                                       collate_fn=stream_collate)
