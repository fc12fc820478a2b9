"""mmengine hooks that configs name: ResultsJsonHook writes each evaluation's COCO numbers to JSON."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from mmengine.hooks import Hook
from mmengine.registry import HOOKS


@HOOKS.register_module(force=True)
class ResultsJsonHook(Hook):
    """After every validation epoch, (re)write ``out_file`` with bbox/segm mAP, AP50, AP75, APs, APm, APl."""

    priority = "LOW"

    def __init__(self, out_file: str):
        self.out_file = out_file

    def after_val_epoch(self, runner, metrics=None) -> None:
        from .finetune import metrics_to_results
        if runner.rank != 0 or not metrics:
            return
        results = metrics_to_results(metrics)
        results.update(epoch=runner.epoch, iter=runner.iter, work_dir=str(runner.work_dir),
                       raw={k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))})
        path = Path(self.out_file)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".results.", suffix=".json")
        with os.fdopen(fd, "w") as f:
            json.dump(results, f, indent=2)
        os.replace(tmp, path)
