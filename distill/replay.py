"""Replayable training views: every augmented sample is a pure function of (seed, epoch, position).

Why: the teacher soft-label cache (``--record-teacher`` / ``--teacher-cache``) must give a later run the exact
view the teacher saw, whatever the world size or worker count; resumed runs replay epochs exactly too.

- ``EpochSampler`` lays out each epoch as one global sequence of positions, like timm's ``RepeatAugSampler``
  (a seeded permutation, each image repeated ``--aug-repeats`` times, ``len(dataset)`` positions per epoch,
  padded to whole pairs per rank), and hands out positions in pairs ``(2q, 2q + 1)``: rank ``r`` gets pairs
  ``r, r + W, r + 2W ...``. With repeats, a pair takes one image from each half of the epoch's sequence, so
  the repeats of an image fall in neighbouring pairs (other ranks, as timm spreads them) and never in one pair. It yields ``(epoch, position, index)`` keys, so a position names the same image
  under any world size; a global batch holds the same positions whether one process or several share it.
- ``ReplayDataset`` seeds python/numpy/torch RNGs from (seed, epoch, position) around timm's transform, so
  crop, flip, RandAugment and random erasing are the same on replay.
- ``--mixup-mode sample``: ``PairMixCollate`` mixes each sample with the other half of its pair, which the
  pairing above puts in the same per-rank batch (an even batch size is required), so the partner's view is
  already decoded and augmented: no second decode. Lambda, mixup-or-cutmix and the box come from
  (seed, epoch, position) with timm's math (``mixup_target``, ``cutmix_bbox_and_lam``). Like timm's ``pair``
  mode the partner is fixed by position, not by the batch layout, so the mixed view is the same for any world
  size or worker count (a deliberate deviation from timm's default ``batch`` mode, whose flipped-batch partner
  and batch-wide lambda depend on how the global batch is split).
- A file that cannot be read is, by flag, replaced by the next readable image and counted; without the flag
  the run stops naming the file.
"""
from __future__ import annotations

import contextlib
import math
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
import torch
import torch.utils.data
from PIL import Image
from timm.data.mixup import cutmix_bbox_and_lam, mixup_target

MAX_BAD_IN_A_ROW = 50  # a folder of unreadable files is a user mistake, not bad luck


def sample_seed(seed: int, epoch: int, position: int, role: int = 0) -> int:
    return int(np.random.SeedSequence([seed & 0xFFFFFFFF, epoch + 1, position, role]).generate_state(1)[0])


def _in_worker() -> bool:
    """In a DataLoader worker every random draw happens under a sample's own seed: no caller state to keep."""
    return torch.utils.data.get_worker_info() is not None


@contextlib.contextmanager
def seeded(seed: int):
    """Seed python, numpy and torch (CPU) for a block, restoring the caller's RNG state afterwards.

    Only torch's CPU generator is touched: ``torch.manual_seed`` also queues a seed for every accelerator
    backend, recording a stack trace each time (0.7 ms per sample, a sixth of the whole per-image cost).
    Inside loader workers the states are not saved and restored (numpy's alone costs 70 us per sample).
    """
    cpu = torch.default_generator
    saved = None if _in_worker() else (random.getstate(), np.random.get_state(), cpu.get_state())
    random.seed(seed)
    np.random.seed(seed)
    cpu.manual_seed(seed)
    try:
        yield
    finally:
        if saved is not None:
            random.setstate(saved[0])
            np.random.set_state(saved[1])
            cpu.set_state(saved[2])


@dataclass
class MixSpec:
    """Per-sample mixup/cutmix with timm's parameters (``--mixup``, ``--cutmix``, ``--mixup-prob`` ...)."""

    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    prob: float = 1.0
    switch_prob: float = 0.5
    label_smoothing: float = 0.0
    num_classes: int = 1000

    @property
    def active(self) -> bool:
        return self.mixup_alpha > 0 or self.cutmix_alpha > 0


def partner(position: int) -> int:
    """The other half of a position's pair: the sample it is mixed with in ``--mixup-mode sample``."""
    return position ^ 1


class EpochSampler(torch.utils.data.Sampler):
    """Seeded global order per epoch, sharded over ranks by whole pairs; yields (epoch, position, index) keys."""

    def __init__(self, num_samples: int, rank: int, world_size: int, seed: int, repeats: int = 0,
                 shuffle: bool = True, limit: int | None = None):
        self.n, self.rank, self.world, self.seed = num_samples, rank, world_size, seed
        self.repeats = max(1, repeats)
        self.shuffle = shuffle
        self.epoch = 0
        self.per_rank = 2 * math.ceil(math.ceil(self.n / 2) / self.world)
        self.positions_per_epoch = self.per_rank * self.world  # padded by wrapping, like DistributedSampler
        # --limit-train-batches: this rank's first ``limit`` positions only (the layout above is unchanged, so a
        # limited run replays the same views as the start of a full one)
        self.limit = self.per_rank if limit is None else min(self.per_rank, limit)
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """``start``: skip this rank's first ``start`` positions of the epoch (a run resumed mid-epoch goes on with
        the batches it had not trained yet; the layout is unchanged)."""
        self.epoch, self.start = epoch, start

    def order(self, epoch: int) -> torch.Tensor:
        """Dataset index at each global position of ``epoch``."""
        if self.shuffle:
            g = torch.Generator().manual_seed(sample_seed(self.seed, epoch, 0, role=7))
            perm = torch.randperm(self.n, generator=g)
        else:
            perm = torch.arange(self.n)
        if self.repeats > 1:
            perm = perm.repeat_interleave(self.repeats)
        # padding wraps around to the start of the order, as DistributedSampler does
        order = perm.repeat(math.ceil(self.positions_per_epoch / len(perm)))[: self.positions_per_epoch]
        if self.repeats > 1:  # repeats sit side by side: pair the epoch's two halves, so no pair is one image
            half = self.positions_per_epoch // 2
            order = torch.stack([order[:half], order[half:]], 1).flatten()
        return order

    def positions(self) -> list[int]:
        """This rank's positions, in order: pairs r, r + W, r + 2W ... of the global sequence."""
        out = [p for q in range(self.rank, self.positions_per_epoch // 2, self.world) for p in (2 * q, 2 * q + 1)]
        return out[: self.limit]

    def __iter__(self) -> Iterator[tuple[int, int, int]]:
        order = self.order(self.epoch).tolist()
        for p in self.positions()[self.start:]:
            yield (self.epoch, p, order[p])

    def __len__(self) -> int:
        return max(0, self.limit - self.start)


class ReplayDataset(torch.utils.data.Dataset):
    """Reads sample ``index`` of ``samples`` [(name, target)] and applies ``transform`` under a per-key seed.

    The index is the container's stable sample index (distill/containers.py): a folder's samples are file paths,
    opened directly; a tar member or a parquet row is read by ``opener(index)`` (its bytes).
    Items are ``(image, target, position, index, bad)``: ``bad`` names the files replaced on the way ('' if none).
    With ``with_epoch`` (the input of ``PairMixCollate``) the key's epoch is appended.
    """

    def __init__(self, samples: list[tuple[str, int]], transform, seed: int, input_size: tuple[int, int, int],
                 skip_bad_images: bool = False, with_epoch: bool = False,
                 opener: Callable[[int], BinaryIO] | None = None):
        self.samples, self.transform, self.seed = samples, transform, seed
        self.opener = opener
        self.input_size = tuple(input_size)
        self.skip_bad_images = skip_bad_images
        self.with_epoch = with_epoch

    def __len__(self) -> int:
        return len(self.samples)

    def _load(self, index: int) -> tuple[Image.Image | None, int, list[str]]:
        bad: list[str] = []
        for attempt in range(MAX_BAD_IN_A_ROW):
            i = (index + attempt) % len(self.samples)
            path, target = self.samples[i]
            try:
                with (open(path, "rb") if self.opener is None else self.opener(i)) as f:
                    img = Image.open(f)
                    img = img.convert("RGB") if img.mode != "RGB" else img
                    img.load()
                return img, target, bad
            except (OSError, SyntaxError, ValueError) as e:  # PIL's errors for truncated or non-image files
                bad.append(f"{path} ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'unreadable'})")
                if not self.skip_bad_images:
                    return None, target, bad  # the main process stops the run naming the file
        return None, -1, bad

    def __getitem__(self, key) -> tuple:
        epoch, position, index = key if isinstance(key, tuple) else (0, int(key), int(key))
        img, target, bad = self._load(index)
        if img is None:  # unreadable and not skipped: a placeholder of the right shape, the main process stops
            x, msg = torch.zeros(self.input_size), "!" + "; ".join(bad)
        else:
            with seeded(sample_seed(self.seed, epoch, position)):
                x = self.transform(img)
            msg = "; ".join(bad)
        item = (x, max(target, 0), position, index, msg)
        return item + (epoch,) if self.with_epoch else item


class PairMixCollate:
    """``--mixup-mode sample`` in the collate step: each view mixed with its pair partner's (same batch).

    Every sample's lambda, mixup-or-cutmix choice and box come from (seed, epoch, position); the partner is the
    other half of its pair (``partner``), whose unmixed view is in the batch. Returns the loader's usual
    ``(x, soft_y, position, index, bad)``.
    """

    def __init__(self, mix: MixSpec, seed: int):
        self.mix, self.seed = mix, seed

    def params(self, epoch: int, position: int, shape: tuple[int, ...]) -> tuple[float, tuple | None]:
        """(lambda, cutmix box or None) of one position, drawn as timm's Mixup draws them for a batch."""
        m = self.mix
        with seeded(sample_seed(self.seed, epoch, position, role=1)):  # timm's rand_bbox draws from numpy's RNG
            if np.random.rand() >= m.prob:
                return 1.0, None
            use_cutmix = m.cutmix_alpha > 0 and (m.mixup_alpha <= 0 or np.random.rand() < m.switch_prob)
            alpha = m.cutmix_alpha if use_cutmix else m.mixup_alpha
            lam = float(np.random.beta(alpha, alpha))
            if not use_cutmix:
                return lam, None
            box, lam = cutmix_bbox_and_lam(shape, lam, correct_lam=True)
            return float(lam), box

    def __call__(self, items: list[tuple]) -> tuple:
        x = torch.stack([it[0] for it in items])
        targets = torch.tensor([it[1] for it in items])
        positions = [it[2] for it in items]
        where = {p: i for i, p in enumerate(positions)}
        missing = [p for p in positions if partner(p) not in where]
        if missing:
            raise RuntimeError(f"sample mixup: the partner of position {missing[0]} is not in this batch "
                               "(the batch size must be even and the sampler an EpochSampler)")
        ys = [torch.empty(0)] * len(items)
        for i in range(len(items)):
            j = where[partner(positions[i])]
            if j < i:
                continue
            # both halves of the pair mix the two unmixed views: compute i's from the originals first
            (lam_i, box_i), (lam_j, box_j) = (self.params(items[k][5], positions[k], x.shape) for k in (i, j))
            writes = [self._mix_write(x[i], x[j], lam_i, box_i), self._mix_write(x[j], x[i], lam_j, box_j)]
            for write in writes:
                write()
            # timm's mixup_target pairs y with y.flip(0): give it [own, partner] and keep row 0
            ys[i] = mixup_target(targets[[i, j]], self.mix.num_classes, lam_i, self.mix.label_smoothing)[0]
            ys[j] = mixup_target(targets[[j, i]], self.mix.num_classes, lam_j, self.mix.label_smoothing)[0]
        return (x, torch.stack(ys), torch.tensor(positions), torch.tensor([it[3] for it in items]),
                [it[4] for it in items])

    @staticmethod
    def _mix_write(own: torch.Tensor, other: torch.Tensor, lam: float, box: tuple | None):
        """Read what the mix needs from the unmixed views now; return the in-place write, to run after both reads."""
        if box is not None:
            yl, yh, xl, xh = box
            patch = other[:, yl:yh, xl:xh].clone()
            return lambda: own[:, yl:yh, xl:xh].copy_(patch)
        if lam < 1.0:
            blend = torch.lerp(other, own, lam)
            return lambda: own.copy_(blend)
        return lambda: None
