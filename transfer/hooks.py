"""mmengine hooks that tools/transfer.py adds to every config (and configs/detection/_base_/default_runtime.py names).

A config registers them with ``custom_imports=dict(imports=['transfer.hooks', ...])``: this module needs only
mmengine and common/, never tools/transfer.py, so mmdet's own tools can build them.

- ResultsJsonHook writes each evaluation's COCO numbers to results.json, and what ran (detector, backbone,
  schedule, student) for tools/summarize.py.
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
from typing import Any

import numpy as np
import torch
from mmengine.hooks import Hook
from mmengine.logging.history_buffer import HistoryBuffer
from mmengine.registry import HOOKS

from common.environment import fingerprint
from common.io import atomic_file

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
