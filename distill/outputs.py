"""What a run shows and writes besides its checkpoints: the progress bar or log lines, the epoch line, metrics.csv,
TensorBoard scalars and config.yaml.
"""
from __future__ import annotations

import csv
import sys
import time
from pathlib import Path

import yaml

from common.io import atomic_file

from .run_setup import Run
from .run_state import _sanitize_args
from .settings import Setting


class Progress:
    """tqdm bars on a terminal, plain log lines every ``interval`` steps otherwise."""

    def __init__(self, total: int, desc: str, mode: str, interval: int, enabled: bool):
        self.enabled, self.total, self.desc, self.interval = enabled, total, desc, max(1, interval)
        use_bar = mode == "bar" or (mode == "auto" and sys.stderr.isatty())
        self.bar = None
        if enabled and use_bar:
            from tqdm import tqdm
            self.bar = tqdm(total=total, desc=desc, dynamic_ncols=True, leave=False)
        self.n = 0
        self.t0 = time.time()

    def update(self, **postfix: float) -> None:
        self.n += 1
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.set_postfix({k: f"{v:.4g}" for k, v in postfix.items()}, refresh=False)
            self.bar.update(1)
        elif self.n % self.interval == 0 or self.n == self.total:
            items = " ".join(f"{k}={v:.4g}" for k, v in postfix.items())
            print(f"{self.desc} [{self.n}/{self.total}] {items} ({time.time() - self.t0:.2f}s)", flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


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


def _log_epoch(st: Setting, row: dict, epoch: int, epochs: int) -> None:
    print(f"epoch {epoch + 1}/{epochs} {st.name}: " + " ".join(
        f"{k}={v:.4g}" for k, v in row.items() if k not in ("epoch",)), flush=True)
    for k, v in row.items():
        if k != "epoch":
            st.writer.add_scalar(k, v, epoch + 1)
    st.writer.flush()
    _write_csv(st.out_dir / "metrics.csv", st.history)


def _open_outputs(run: Run) -> None:
    """Output folders, TensorBoard writers and config.yaml (main process only)."""
    if not run.info.is_main:
        return
    args = run.args
    run.out_root.mkdir(parents=True, exist_ok=True)
    for st in run.settings:
        st.out_dir.mkdir(parents=True, exist_ok=True)
        from torch.utils.tensorboard import SummaryWriter
        st.writer = SummaryWriter(str(st.out_dir / "tb"))
    (run.out_root / "config.yaml").write_text(yaml.safe_dump(
        {**_sanitize_args(args), "num_classes": run.num_classes, "world_size": run.info.world_size,
         "settings": run.specs, "data_config": {k: list(v) if isinstance(v, tuple) else v
                                                for k, v in run.data_cfg.items()}}, sort_keys=False))
