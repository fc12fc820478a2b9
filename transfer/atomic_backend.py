"""An mmengine file backend that writes atomically, for detection checkpoints.

mmengine's LocalBackend opens the target file for writing, so a kill mid-save leaves a truncated
checkpoint (and a ``last_checkpoint`` pointer to it). This backend writes a temporary file in the same
folder, fsyncs it, and renames it over the target: a reader sees the old file or the new one, never half.
Configs select it with ``default_hooks.checkpoint.backend_args = dict(backend='atomic_local')``
(tools/transfer.py sets this when a config does not choose a backend).
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Union

from mmengine.fileio import LocalBackend, register_backend


def _atomic_write(data: bytes, filepath: Union[str, Path]) -> None:
    filepath = Path(filepath)
    filepath.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{filepath.name}.", suffix=".tmp", dir=filepath.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, filepath)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


@register_backend("atomic_local", force=True)
class AtomicLocalBackend(LocalBackend):
    def put(self, obj: bytes, filepath: Union[str, Path]) -> None:
        _atomic_write(obj, filepath)

    def put_text(self, obj: str, filepath: Union[str, Path], encoding: str = "utf-8") -> None:
        _atomic_write(obj.encode(encoding), filepath)
