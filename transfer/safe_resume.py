"""Resume mmengine runs on torch >= 2.6 without unsafe loading.

torch.load defaults to weights_only=True, and mmengine 0.10.7's own checkpoints then fail to load: their
message hub holds HistoryBuffer objects and numpy scalars. Rather than turning weights_only off (which
would let any file run code), we allow-list exactly those data-only classes.
"""
from __future__ import annotations

import numpy as np
import torch


def _numpy_globals() -> list:
    out = [np.dtype, np.ndarray]
    try:
        from numpy._core.multiarray import _reconstruct, scalar
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct, scalar
    out += [scalar, _reconstruct]
    out += [type(np.dtype(t)) for t in ("float64", "float32", "float16", "int64", "int32", "int16", "int8",
                                        "uint8", "bool")]
    return out


def allow_mmengine_checkpoints() -> None:
    from mmengine.logging.history_buffer import HistoryBuffer
    from mmengine.logging.message_hub import MessageHub  # noqa: F401
    torch.serialization.add_safe_globals([HistoryBuffer, *_numpy_globals()])


def check_detector_checkpoint(path) -> None:
    """Refuse a detector checkpoint that is missing or would need unsafe unpickling, in one line."""
    from distill.io import load_checkpoint
    allow_mmengine_checkpoints()
    load_checkpoint(path)
