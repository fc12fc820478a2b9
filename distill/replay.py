"""Replayable training views: every augmented sample is a pure function of (seed, epoch, position).

Why: the teacher soft-label cache (``--record-teacher`` / ``--teacher-cache``) must give a later run the exact
view the teacher saw, whatever the world size or worker count; resumed runs replay epochs exactly too.

- ``EpochSampler`` lays out each epoch as one global sequence of positions, like timm's ``RepeatAugSampler``
  (a seeded permutation, each image repeated ``--aug-repeats`` times, ``len(dataset)`` positions per epoch),
  and hands rank ``r`` the positions ``r, r + W, r + 2W ...``. It yields ``(epoch, position, index)`` keys, so
  a position names the same image under any world size; a global batch holds the same positions whether one
  process or several share it.
- ``ReplayDataset`` seeds python/numpy/torch RNGs from (seed, epoch, position) around timm's transform, so
  crop, flip, RandAugment and random erasing are the same on replay. With ``--mixup-mode sample`` it also
  draws the mixup/cutmix partner, lambda and mode from that seed (timm's math: ``mixup_target``,
  ``cutmix_bbox_and_lam``); the partner is a seeded draw from the training set, not the flipped batch
  (a deliberate deviation from timm's batch mode that makes the view independent of batch composition;
  it costs a second image decode per sample).
- A file that cannot be read is, by flag, replaced by the next readable image and counted; without the flag
  the run stops naming the file.
"""
from __future__ import annotations

import contextlib
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.utils.data
from PIL import Image
from timm.data.mixup import cutmix_bbox_and_lam, mixup_target

MAX_BAD_IN_A_ROW = 50  # a folder of unreadable files is a user mistake, not bad luck


def sample_seed(seed: int, epoch: int, position: int, role: int = 0) -> int:
    return int(np.random.SeedSequence([seed & 0xFFFFFFFF, epoch + 1, position, role]).generate_state(1)[0])


@contextlib.contextmanager
def seeded(seed: int):
    """Seed python, numpy and torch (CPU) for a block, restoring the caller's RNG state afterwards."""
    py, npy = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        try:
            yield
        finally:
            random.setstate(py)
            np.random.set_state(npy)


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


class EpochSampler(torch.utils.data.Sampler):
    """Seeded global order per epoch, sharded by stride over ranks; yields (epoch, position, index) keys."""

    def __init__(self, num_samples: int, rank: int, world_size: int, seed: int, repeats: int = 0,
                 shuffle: bool = True):
        self.n, self.rank, self.world, self.seed = num_samples, rank, world_size, seed
        self.repeats = max(1, repeats)
        self.shuffle = shuffle
        self.epoch = 0
        self.per_rank = math.ceil(self.n / self.world)
        self.positions_per_epoch = self.per_rank * self.world  # padded by wrapping, like DistributedSampler

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

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
        return perm.repeat(math.ceil(self.positions_per_epoch / len(perm)))[: self.positions_per_epoch]

    def __iter__(self) -> Iterator[tuple[int, int, int]]:
        order = self.order(self.epoch).tolist()
        for p in range(self.rank, self.positions_per_epoch, self.world):
            yield (self.epoch, p, order[p])

    def __len__(self) -> int:
        return self.per_rank


class ReplayDataset(torch.utils.data.Dataset):
    """Reads ``samples`` [(path, target)] and applies ``transform`` under a per-key seed.

    Items are ``(image, target, position, index, bad)``: ``bad`` names the files replaced on the way ('' if none).
    """

    def __init__(self, samples: list[tuple[str, int]], transform, seed: int, input_size: tuple[int, int, int],
                 mix: MixSpec | None = None, skip_bad_images: bool = False):
        self.samples, self.transform, self.seed = samples, transform, seed
        self.input_size = tuple(input_size)
        self.mix = mix if mix is not None and mix.active else None
        self.skip_bad_images = skip_bad_images

    def __len__(self) -> int:
        return len(self.samples)

    def _load(self, index: int) -> tuple[Image.Image, int, list[str]]:
        bad: list[str] = []
        for attempt in range(MAX_BAD_IN_A_ROW):
            path, target = self.samples[(index + attempt) % len(self.samples)]
            try:
                with open(path, "rb") as f:
                    img = Image.open(f)
                    img.load()
                return img.convert("RGB"), target, bad
            except (OSError, SyntaxError, ValueError) as e:  # PIL's errors for truncated or non-image files
                bad.append(f"{path} ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'unreadable'})")
                if not self.skip_bad_images:
                    return None, target, bad  # the main process stops the run naming the file
        return None, -1, bad

    def _view(self, index: int, seed: int) -> tuple[torch.Tensor | None, int, list[str]]:
        img, target, bad = self._load(index)
        if img is None:
            return None, target, bad
        with seeded(seed):
            x = self.transform(img)
        return x, target, bad

    def __getitem__(self, key) -> tuple:
        epoch, position, index = key if isinstance(key, tuple) else (0, int(key), int(key))
        x, target, bad = self._view(index, sample_seed(self.seed, epoch, position))
        if x is None:  # unreadable and not skipped: a placeholder of the right shape, the main process stops
            x = torch.zeros(self.input_size)
            y = torch.zeros(self.mix.num_classes) if self.mix is not None else 0
            return x, y, position, index, "!" + "; ".join(bad)
        if self.mix is None:
            return x, target, position, index, "; ".join(bad)
        x, y, bad2 = self._mix(x, target, epoch, position)
        return x, y, position, index, "; ".join(bad + bad2)

    def _mix(self, x: torch.Tensor, target: int, epoch: int, position: int) -> tuple[torch.Tensor, torch.Tensor, list]:
        m = self.mix
        with seeded(sample_seed(self.seed, epoch, position, role=1)):
            apply = np.random.rand() < m.prob
            use_cutmix = m.cutmix_alpha > 0 and (m.mixup_alpha <= 0 or np.random.rand() < m.switch_prob)
            alpha = m.cutmix_alpha if use_cutmix else m.mixup_alpha
            lam = float(np.random.beta(alpha, alpha)) if apply else 1.0
            partner = int(np.random.randint(len(self.samples)))
            bbox = cutmix_bbox_and_lam(x.shape, lam, correct_lam=True) if apply and use_cutmix else None
        y_a = torch.tensor([target])
        if not apply:
            return x, mixup_target(y_a, m.num_classes, 1.0, m.label_smoothing)[0], []
        xp, tp, bad = self._view(partner, sample_seed(self.seed, epoch, position, role=2))
        if xp is None:  # the partner is unreadable: keep the unmixed view
            return x, mixup_target(y_a, m.num_classes, 1.0, m.label_smoothing)[0], bad
        if bbox is not None:
            (yl, yh, xl, xh), lam = bbox
            x = x.clone()
            x[:, yl:yh, xl:xh] = xp[:, yl:yh, xl:xh]
        else:
            x = x * lam + xp * (1.0 - lam)
        # timm's mixup_target pairs y with y.flip(0): give it [target, partner] and keep row 0
        y = mixup_target(torch.tensor([target, tp]), m.num_classes, lam, m.label_smoothing)[0]
        return x, y, bad
