"""mmengine hooks that tools/transfer.py adds to every config (and configs/detection/_base_/default_runtime.py names).

A config registers them with ``custom_imports=dict(imports=['transfer.hooks', ...])``: this module needs only
mmengine and common/, never tools/transfer.py, so mmdet's own tools can build them.

- ResultsJsonHook writes each evaluation's COCO numbers to results.json, and what ran (detector, backbone,
  schedule, student) for tools/summarize.py.
- StopOnSignalHook stops after the iteration under way on SIGTERM or SIGINT, with one line saying how to continue.
- SafeCheckpointHook keeps detection checkpoints loadable with ``torch.load(weights_only=True)``.
  mmengine 0.10.7 pickles HistoryBuffer objects (whose bound methods pickle through ``getattr``), numpy
  arrays and scalars, and ``collections.Counter``: torch >= 2.6 refuses them, so resuming fails. Allow-listing
  ``getattr`` would re-open code execution, so instead this hook encodes those objects as plain tagged dicts
  and tensors before saving and decodes them after loading (``after_load_checkpoint`` runs before the
  runner restores its message hub and schedulers). Safe loading stays on for every file.
"""
from __future__ import annotations

import json
from collections import Counter, OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from mmengine.dist import all_reduce, get_world_size, is_main_process
from mmengine.hooks import CheckpointHook, Hook
from mmengine.logging.history_buffer import HistoryBuffer
from mmengine.registry import HOOKS
from mmengine.runner import IterBasedTrainLoop

from common.diskfull import DiskFull
from common.environment import fingerprint
from common.errors import Stopped
from common.io import atomic_file
from common.signals import StopRequest

from .results import describe_run, metrics_to_results

_TAG = "__vanillakd_type__"
_SKIP = ("state_dict", "optimizer", "ema_state_dict")


def encode(obj: Any) -> Any:
    """Replace objects that weights_only loading refuses by tagged plain data (recursively)."""
    if isinstance(obj, HistoryBuffer):
        log, count = obj.data  # mmengine's public view of the two histories
        return {_TAG: "HistoryBuffer", "log": torch.from_numpy(np.asarray(log, dtype=np.float64)),
                "count": torch.from_numpy(np.asarray(count, dtype=np.float64)),
                "max_length": int(obj.max_length)}
    if isinstance(obj, np.ndarray):
        return {_TAG: "ndarray", "data": torch.from_numpy(np.ascontiguousarray(obj))}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Counter):
        return {_TAG: "Counter", "items": {k: encode(v) for k, v in obj.items()}}
    if isinstance(obj, dict):
        out = {k: encode(v) for k, v in obj.items()}
        return OrderedDict(out) if isinstance(obj, OrderedDict) else out
    if isinstance(obj, list):
        return [encode(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(encode(v) for v in obj)
    return obj


def decode(obj: Any) -> Any:
    if isinstance(obj, dict):
        tag = obj.get(_TAG)
        if tag == "HistoryBuffer":
            return HistoryBuffer(obj["log"].numpy().tolist(), obj["count"].numpy().tolist(), obj["max_length"])
        if tag == "ndarray":
            return obj["data"].numpy()
        if tag == "Counter":
            return Counter({k: decode(v) for k, v in obj["items"].items()})
        out = {k: decode(v) for k, v in obj.items()}
        return OrderedDict(out) if isinstance(obj, OrderedDict) else out
    if isinstance(obj, list):
        return [decode(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(decode(v) for v in obj)
    return obj


@HOOKS.register_module(force=True)
class SafeCheckpointHook(Hook):
    priority = "VERY_LOW"  # encode after every other hook has added its state

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        for k in list(checkpoint):
            if k not in _SKIP:
                checkpoint[k] = encode(checkpoint[k])

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        for k in list(checkpoint):
            if k not in _SKIP:
                checkpoint[k] = decode(checkpoint[k])


@HOOKS.register_module(force=True)
class StopOnSignalHook(Hook):
    """SIGTERM or SIGINT: finish the iteration under way, then end the run with one line that says what ``--resume``
    continues from, within Slurm's and torchrun's 30 s grace (common/signals.py).

    How far that is depends on mmengine's loop: an iteration-based loop (the ViTDet configs) resumes from any
    iteration, so this iteration's checkpoint is written; an epoch-based loop (the CNN configs) can only resume from
    the end of an epoch (it would train the finished part of the epoch again), so it continues from the last epoch's
    checkpoint. Every rank agrees on the stop (an all-reduce after each iteration), so all stop at the same one.
    """

    priority = "VERY_LOW"  # after the other hooks' after_train_iter (the logger, the checkpoint hook)

    def __init__(self) -> None:
        self.stop = StopRequest()

    def before_train(self, runner) -> None:
        self.stop.install()

    def after_train(self, runner) -> None:
        self.uninstall()

    def uninstall(self) -> None:
        self.stop.uninstall()

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        if not self.stop.agreed(_reduce_max if get_world_size() > 1 else None):
            return
        loop, done, main = runner.train_loop, runner.iter + 1, is_main_process()
        if isinstance(loop, IterBasedTrainLoop):  # resumes from any iteration: save this one
            ckpt = next((h for h in runner.hooks if isinstance(h, CheckpointHook)), None)
            path = Path(runner.work_dir) / f"iter_{done}.pth"
            runner.save_checkpoint(runner.work_dir, path.name, by_epoch=False,
                                   backend_args=ckpt.backend_args if ckpt is not None else None)
            if main:
                with atomic_file(Path(runner.work_dir) / "last_checkpoint", "w", what="pointer") as f:
                    f.write(str(path))
            line = (f"stopped by {self.stop.name} after iteration {done}: saved {path}; continue with the same "
                    "command and --resume")
        else:
            line = (f"stopped by {self.stop.name} in epoch {runner.epoch + 1} after iteration {batch_idx + 1} of "
                    f"{len(loop.dataloader)}; mmengine's epoch-based loop resumes only from an epoch's end: "
                    f"{last_checkpoint_line(runner.work_dir) if main else ''}")
        raise Stopped(line if main else "", self.stop.signum)


def last_checkpoint_line(work_dir: str | Path) -> str:
    """What --resume continues from (mmengine's ``last_checkpoint`` pointer), as the fault lines say it. A pointer
    that a full disk truncated is written again to the newest checkpoint on disk (all are complete: atomic writes)."""
    work_dir = Path(work_dir)
    pointer = work_dir / "last_checkpoint"
    try:
        target = pointer.read_text().strip()
    except OSError:
        target = ""
    if not target or not Path(target).is_file():
        found = sorted(work_dir.glob("*_*.pth"), key=lambda p: p.stat().st_mtime)
        found = [p for p in found if p.stem.split("_")[0] in ("epoch", "iter") and p.stem.split("_")[-1].isdigit()]
        if not found:
            pointer.unlink(missing_ok=True)
            return "no checkpoint was written yet: run the command again"
        target = str(found[-1])
        try:
            with atomic_file(pointer, "w", what="pointer") as f:
                f.write(target)
        except DiskFull:
            pointer.unlink(missing_ok=True)
            return (f"the last checkpoint {target} is intact: once there is space, continue with the same command and "
                    f"--resume, after writing its path into {pointer}")
    return f"mmengine's last checkpoint {target} is intact: continue with the same command and --resume"


def _reduce_max(value: float) -> float:
    t = torch.tensor([value], dtype=torch.float64)
    all_reduce(t, op="max")
    return float(t[0])


@HOOKS.register_module(force=True)
class ResultsJsonHook(Hook):
    """After every validation epoch, (re)write ``out_file`` with bbox/segm mAP, AP50, AP75, APs, APm, APl.

    ``run`` records the detector, backbone and max_epochs of the runner's config and ``student``
    (``{'timm_model', 'source'}``, given by tools/transfer.py; left out when None, i.e. unknown).
    """

    priority = "LOW"

    def __init__(self, out_file: str, student: dict | None = None):
        self.out_file = out_file
        self.student = student

    def after_val_epoch(self, runner, metrics=None) -> None:
        if runner.rank != 0 or not metrics:
            return
        results = metrics_to_results(metrics)
        results.update(epoch=runner.epoch, iter=runner.iter, work_dir=str(runner.work_dir),
                       run=describe_run(runner.cfg, self.student),
                       raw={k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))},
                       environment=fingerprint())
        with atomic_file(self.out_file, "w") as f:
            json.dump(results, f, indent=2)
