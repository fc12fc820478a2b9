"""An mmengine file backend that writes atomically, for detection checkpoints.

mmengine's LocalBackend opens the target file for writing, so a kill mid-save leaves a truncated
checkpoint (and a ``last_checkpoint`` pointer to it). This backend writes a temporary file in the same
folder, fsyncs it, and renames it over the target: a reader sees the old file or the new one, never half.
Configs select it with ``default_hooks.checkpoint.backend_args = dict(backend='atomic_local')``
(tools/transfer.py sets this when a config does not choose a backend).
"""
from __future__ import annotations

from pathlib import Path
from typing import Union

from mmengine.fileio import LocalBackend, register_backend

from common.io import atomic_file


@register_backend("atomic_local", force=True)
class AtomicLocalBackend(LocalBackend):
    def put(self, obj: bytes, filepath: Union[str, Path]) -> None:
        with atomic_file(filepath) as f:
            f.write(obj)

    def put_text(self, obj: str, filepath: Union[str, Path], encoding: str = "utf-8") -> None:
        with atomic_file(filepath) as f:
            f.write(obj.encode(encoding))
