"""Teacher soft-label cache: record the teacher's top-k once, train later students with no teacher forward.

Layout of a cache directory (all arrays are ``.npy`` files, memory-mappable with ``np.load(mmap_mode='r')``)::

    meta.json                      format version, the fingerprint below, k, num_classes, epochs recorded,
                                   positions per epoch, bytes per epoch
    epoch_0000.values.npy          float16 [P, k]  teacher logits of the top-k classes, descending
    epoch_0000.indices.npy         int16/int32 [P, k]  their class indices
    epoch_0000.lse.npy             float32 [P]  logsumexp of the teacher's full logits (NaN: not recorded)

Row ``p`` is the global position of the sample in that epoch (see ``replay.EpochSampler``): the same under
any world size or worker count. The fingerprint (data, view recipe, teacher) must match to replay; anything
else is refused naming the fields that differ.

KD on cached top-k (how the tail is handled): the replayed teacher logits keep the k recorded values and give
every other class the same logit, chosen so that at temperature 1 the tail classes share exactly the
probability mass the top-k leave (``1 - sum softmax_topk``, known from the stored logsumexp). With k equal to
the number of classes this is the teacher's exact output (up to float16 rounding) at any temperature; with
smaller k every logit loss (kd, bkd, dkd, dist) sees the top-k exactly and a flat tail.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.io import UserError, atomic_file

from . import distributed as D

FORMAT_VERSION = 2  # 2: --mixup-mode sample pairs positions (2q, 2q + 1) and mixes in the collate step

# the flags that change what the teacher sees: a replaying run must agree on all of them
VIEW_FLAGS = ("img_size", "crop_pct", "mean", "std", "interpolation", "no_aug", "scale", "ratio", "hflip",
              "color_jitter", "aa", "reprob", "remode", "recount", "aug_repeats", "mixup", "cutmix", "mixup_prob",
              "mixup_switch_prob", "mixup_mode", "smoothing", "train_subset", "seed")


def data_fingerprint(samples: list[tuple[str, int]], root: str | Path) -> str:
    """The samples in index order, each as ``<class>/<file>`` relative to its container and its label: the same for
    a folder, a tar and a parquet copy of the same images, so a cache recorded on one replays on the others."""
    h = hashlib.sha256()
    root = Path(root)
    for path, target in samples:
        h.update(f"{os.path.relpath(path, root)}\t{target}\n".encode())
    return h.hexdigest()[:16]


def file_digest(path: str | Path) -> str:
    h = hashlib.sha256()
    p = Path(path)
    for f in sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p]:  # a hub folder: all its files
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


def fingerprint(args, split, num_classes: int, data_cfg: dict) -> dict[str, Any]:
    """What a cache depends on: the data (``split``: distill.containers.Split, its stable sample index), the view
    recipe, and (for recording) the teacher."""
    if split.streams:
        raise UserError(f"{split.where}: WebDataset shards have no stable sample index, which the teacher cache "
                        "(--record-teacher, --teacher-cache) needs: use the folder, tar or parquet container")
    samples = split.samples
    view = {k: getattr(args, k) for k in VIEW_FLAGS}
    view.update(mean=list(data_cfg["mean"]), std=list(data_cfg["std"]), img_size=data_cfg["input_size"][-1])
    view = {k: list(v) if isinstance(v, tuple) else v for k, v in view.items()}
    return {"data": data_fingerprint(samples, split.prefix), "num_samples": len(samples),
            "num_classes": num_classes, "view": view}


def teacher_fingerprint(args, precision: str) -> dict[str, Any]:
    return {"name": args.teacher,
            "weights": file_digest(args.teacher_checkpoint) if args.teacher_checkpoint else "timm-pretrained",
            "resize": args.teacher_resize, "mean": args.teacher_mean, "std": args.teacher_std,
            "precision": precision}


def _files(root: Path, epoch: int) -> dict[str, Path]:
    return {k: root / f"epoch_{epoch:04d}.{k}.npy" for k in ("values", "indices", "lse")}


def bytes_per_position(k: int, num_classes: int) -> int:
    return k * 2 + k * (2 if num_classes <= np.iinfo(np.int16).max else 4) + 4


class TeacherCacheWriter:
    """Written by every rank into its own rows; rank 0 publishes an epoch once all ranks are done."""

    def __init__(self, root: str | Path, fp: dict, teacher: dict, k: int, positions: int, is_main: bool):
        self.root = Path(root)
        self.k = min(k, fp["num_classes"])
        self.positions, self.is_main = positions, is_main
        self.index_dtype = np.int16 if fp["num_classes"] <= np.iinfo(np.int16).max else np.int32
        self.meta = {"format": FORMAT_VERSION, **fp, "teacher": teacher, "k": self.k,
                     "positions_per_epoch": positions, "epochs": [],
                     "bytes_per_epoch": positions * bytes_per_position(self.k, fp["num_classes"])}
        if is_main:
            self.root.mkdir(parents=True, exist_ok=True)
            meta_path = self.root / "meta.json"
            if meta_path.is_file():
                old = json.loads(meta_path.read_text())
                diff = _differences(old, self.meta)
                if diff:
                    raise UserError(f"--record-teacher {self.root} holds another recording ({diff}); "
                                    "use an empty directory")
                self.meta["epochs"] = old.get("epochs", [])
            self._write_meta()
        self.arrays: dict[str, np.memmap] = {}

    def _write_meta(self) -> None:
        with atomic_file(self.root / "meta.json", "w") as f:
            json.dump(self.meta, f, indent=2)

    def begin_epoch(self, epoch: int, resume: bool = False) -> None:
        """Open the epoch's arrays; ``resume`` (a run resumed mid-epoch) keeps the rows its earlier steps wrote."""
        tmp = {k: p.with_suffix(".tmp.npy") for k, p in _files(self.root, epoch).items()}
        if self.is_main and not (resume and all(p.is_file() for p in tmp.values())):
            shape = (self.positions, self.k)
            np.lib.format.open_memmap(tmp["values"], "w+", np.float16, shape).flush()
            np.lib.format.open_memmap(tmp["indices"], "w+", self.index_dtype, shape).flush()
            lse = np.lib.format.open_memmap(tmp["lse"], "w+", np.float32, (self.positions,))
            lse[:] = np.nan
            lse.flush()
        D.barrier()
        self.arrays = {k: np.load(p, mmap_mode="r+") for k, p in tmp.items()}
        self.epoch = epoch

    @torch.no_grad()
    def write(self, positions: torch.Tensor, logits: torch.Tensor) -> None:
        z = logits.float()
        values, indices = z.topk(self.k, dim=1)
        rows = positions.cpu().numpy()
        self.arrays["values"][rows] = values.cpu().numpy().astype(np.float16)
        self.arrays["indices"][rows] = indices.cpu().numpy().astype(self.index_dtype)
        self.arrays["lse"][rows] = torch.logsumexp(z, 1).cpu().numpy()

    def flush(self) -> None:
        """The rows written so far, on disk (before a mid-epoch checkpoint)."""
        for a in self.arrays.values():
            a.flush()

    def end_epoch(self) -> None:
        self.flush()
        self.arrays = {}
        D.barrier()
        if self.is_main:
            files = _files(self.root, self.epoch)
            for k, p in files.items():
                os.replace(p.with_suffix(".tmp.npy"), p)
            self.meta["epochs"] = sorted(set(self.meta["epochs"]) | {self.epoch})
            self._write_meta()
        D.barrier()


class TeacherCache:
    """Replays recorded teacher logits (reconstructed as described in the module docstring)."""

    def __init__(self, root: str | Path, fp: dict, epochs: int, start_epoch: int = 0):
        self.root = Path(root)
        meta_path = self.root / "meta.json"
        if not meta_path.is_file():
            raise UserError(f"--teacher-cache {self.root}: no meta.json (record one with --record-teacher)")
        try:
            self.meta = json.loads(meta_path.read_text())
        except json.JSONDecodeError as e:
            raise UserError(f"{meta_path} is not valid JSON: {e}") from None
        if self.meta.get("format") != FORMAT_VERSION:
            raise UserError(f"{meta_path}: cache format {self.meta.get('format')}, this version reads {FORMAT_VERSION} "
                            "(the views changed between them: record the cache again)")
        diff = _differences(self.meta, fp)
        if diff:
            raise UserError(f"--teacher-cache {self.root} does not match this run: {diff}")
        missing = [e for e in range(start_epoch, epochs) if e not in self.meta["epochs"]]
        if missing:
            raise UserError(f"--teacher-cache {self.root} has epochs {_ranges(self.meta['epochs'])}; "
                            f"this run needs {_ranges(list(range(start_epoch, epochs)))} (missing {_ranges(missing)})")
        self.k, self.num_classes = self.meta["k"], self.meta["num_classes"]
        self.teacher = self.meta["teacher"]
        self.epoch, self.arrays = None, {}

    def _open(self, epoch: int) -> None:
        if self.epoch != epoch:
            self.arrays = {k: np.load(p, mmap_mode="r") for k, p in _files(self.root, epoch).items()}
            self.epoch = epoch

    def logits(self, epoch: int, positions: torch.Tensor, device: torch.device) -> torch.Tensor:
        self._open(epoch)
        rows = positions.cpu().numpy()
        if rows.max() >= len(self.arrays["lse"]):
            raise UserError(f"--teacher-cache {self.root}: epoch {epoch} position {int(rows.max())} is beyond the "
                            f"{len(self.arrays['lse'])} recorded (recorded under another world size?)")
        lse = torch.from_numpy(self.arrays["lse"][rows])
        if torch.isnan(lse).any():
            p = int(positions[torch.isnan(lse)][0])
            raise UserError(f"--teacher-cache {self.root}: epoch {epoch} position {p} was never recorded "
                            "(recorded with a larger batch size, so the last partial batch was dropped?)")
        values = torch.from_numpy(self.arrays["values"][rows]).float()
        indices = torch.from_numpy(self.arrays["indices"][rows]).long()
        return reconstruct_logits(values, indices, lse, self.num_classes).to(device, non_blocking=True)


def reconstruct_logits(values: torch.Tensor, indices: torch.Tensor, lse: torch.Tensor,
                       num_classes: int) -> torch.Tensor:
    """Full logits from top-k: recorded values, and one flat logit for the tail holding the missing mass."""
    b, k = values.shape
    if k >= num_classes:
        return torch.empty(b, num_classes).scatter_(1, indices, values)
    head_mass = torch.exp(values - lse[:, None]).sum(1).clamp(max=1.0)
    tail = torch.log((1.0 - head_mass).clamp_min(1e-12) / (num_classes - k)) + lse
    tail = torch.minimum(tail, values[:, -1])  # fp16 rounding must not lift the tail above the k-th logit
    return tail[:, None].expand(b, num_classes).clone().scatter_(1, indices, values)


def _differences(recorded: dict, wanted: dict) -> str:
    out = []
    for key in ("data", "num_samples", "num_classes"):
        if key in wanted and recorded.get(key) != wanted[key]:
            what = "training data (files or labels)" if key == "data" else key
            out.append(f"{what}: cache {recorded.get(key)!r}, run {wanted[key]!r}")
    for key, v in wanted.get("view", {}).items():
        if recorded.get("view", {}).get(key) != v:
            out.append(f"--{key.replace('_', '-')}: cache {recorded.get('view', {}).get(key)!r}, run {v!r}")
    if "teacher" in wanted and "teacher" in recorded and recorded["teacher"] != wanted["teacher"]:
        out.append(f"teacher: cache {recorded['teacher']}, run {wanted['teacher']}")
    return "; ".join(out[:4]) + (f" (+{len(out) - 4} more)" if len(out) > 4 else "")


def _ranges(epochs: list[int]) -> str:
    if not epochs:
        return "none"
    epochs = sorted(epochs)
    out, start, prev = [], epochs[0], epochs[0]
    for e in epochs[1:] + [None]:
        if e is not None and e == prev + 1:
            prev = e
            continue
        out.append(f"{start}" if start == prev else f"{start}-{prev}")
        if e is not None:
            start = prev = e
    return ",".join(out)
