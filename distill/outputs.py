"""What a run shows and writes besides its checkpoints: the progress bar or log lines, progress.jsonl (the same
steps for programs: tools/rehearse.py times iterations from it), the epoch line, metrics.csv, TensorBoard scalars
and config.yaml.
"""
from __future__ import annotations

import csv
import json
import os
import sys
import time
from pathlib import Path

import yaml

from common.io import atomic_file

from .run_setup import Run
from .run_state import sanitize_args
from .settings import Setting


PROGRESS_FILE = "progress.jsonl"


class Progress:
    """tqdm bars on a terminal, plain log lines every ``interval`` steps otherwise; and, when ``jsonl`` is given,
    one JSON record per logged step appended to it (``epoch``, ``epochs``, ``step``, ``total``, ``seconds`` since
    the start of the epoch, ``losses``), so that no program has to parse the human line."""

    def __init__(self, total: int, desc: str, mode: str, interval: int, enabled: bool, jsonl: Path | None = None,
                 epoch: int = 0, epochs: int = 0, start: int = 0):
        self.enabled, self.total, self.desc, self.interval = enabled, total, desc, max(1, interval)
        use_bar = mode == "bar" or (mode == "auto" and sys.stderr.isatty())
        self.bar = None
        if enabled and use_bar:
            from tqdm import tqdm
            self.bar = tqdm(total=total, desc=desc, dynamic_ncols=True, leave=False, initial=start)
        self.jsonl = open(jsonl, "a") if enabled and jsonl is not None else None
        self.epoch, self.epochs = epoch, epochs
        self.n = start  # a run resumed mid-epoch counts on from the step it stopped after
        self.t0 = time.time()

    def update(self, **postfix: float) -> None:
        self.n += 1
        if not self.enabled:
            return
        logged = self.n % self.interval == 0 or self.n == self.total
        seconds = time.time() - self.t0
        if self.bar is not None:
            self.bar.set_postfix({k: f"{v:.4g}" for k, v in postfix.items()}, refresh=False)
            self.bar.update(1)
        elif logged:
            items = " ".join(f"{k}={v:.4g}" for k, v in postfix.items())
            print(f"{self.desc} [{self.n}/{self.total}] {items} ({seconds:.2f}s)", flush=True)
        if logged and self.jsonl is not None:
            self.jsonl.write(json.dumps({"epoch": self.epoch, "epochs": self.epochs, "step": self.n,
                                         "total": self.total, "seconds": round(seconds, 4),
                                         "losses": {k: float(v) for k, v in postfix.items()}}) + "\n")
            self.jsonl.flush()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.jsonl is not None:
            self.jsonl.close()
            self.jsonl = None


def record_cuda_peak(out_root: Path, rank: int) -> int | None:
    """Every process's peak GPU memory (MiB): printed, and appended to progress.jsonl as ``{"rank", "cuda_max_mb"}``
    (one short append per process, so the ranks do not interleave); None without CUDA."""
    import torch
    if not (torch.cuda.is_available() and torch.cuda.is_initialized()):
        return None
    mib = round(torch.cuda.max_memory_allocated() / 2**20)
    print(f"cuda max allocated: {mib} MiB (rank {rank})", flush=True)
    out_root.mkdir(parents=True, exist_ok=True)
    fd = os.open(out_root / PROGRESS_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps({"rank": rank, "cuda_max_mb": mib}) + "\n").encode())
    finally:
        os.close(fd)
    return mib


def _write_csv(path: Path, rows: list[dict]) -> None:
    if not rows:
        return
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    with atomic_file(path, "w") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)


def log_epoch(st: Setting, row: dict, epoch: int, epochs: int) -> None:
    print(f"epoch {epoch + 1}/{epochs} {st.name}: " + " ".join(
        f"{k}={v:.4g}" for k, v in row.items() if k not in ("epoch",)), flush=True)
    for k, v in row.items():
        if k != "epoch":
            st.writer.add_scalar(k, v, epoch + 1)
    st.writer.flush()
    _write_csv(st.out_dir / "metrics.csv", st.history)


def open_outputs(run: Run) -> None:
    """Output folders, TensorBoard writers and config.yaml (main process only)."""
    if not run.info.is_main:
        return
    args = run.args
    run.out_root.mkdir(parents=True, exist_ok=True)
    for st in run.settings:
        st.out_dir.mkdir(parents=True, exist_ok=True)
        from torch.utils.tensorboard import SummaryWriter
        st.writer = SummaryWriter(str(st.out_dir / "tb"))
    config = {**sanitize_args(args), "num_classes": run.num_classes, "world_size": run.info.world_size,
              "settings": run.specs, "data_config": {k: list(v) if isinstance(v, tuple) else v
                                                     for k, v in run.data_cfg.items()}}
    with atomic_file(run.out_root / "config.yaml", "w") as f:
        f.write(yaml.safe_dump(config, sort_keys=False))
