"""What in a detection config needs a GPU, and the exact change that runs it without one.

Why: the paper's ConvNeXt-V2 configs train with AMP (mmengine's AmpOptimWrapper asserts CUDA) and every paper
config uses SyncBN (which needs GPUs once several processes train). On a machine without a GPU the tools say
which switch or ``--cfg-options`` keys to pass instead of ending in a traceback; ``tools/rehearse.py``'s cpu
profile applies the same changes and lists them in its report.
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

AMP_ONLY_KEYS = ("loss_scale", "dtype", "use_fsdp")  # AmpOptimWrapper's arguments that OptimWrapper refuses


def _walk(node: Any, prefix: str) -> Iterator[tuple[str, Mapping]]:
    if isinstance(node, Mapping):
        yield prefix, node
        for k, v in node.items():
            yield from _walk(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(node, (list, tuple)):
        for i, v in enumerate(node):
            yield from _walk(v, f"{prefix}.{i}")


def sync_bn_keys(cfg: Mapping) -> list[str]:
    """Dotted ``--cfg-options`` keys of every ``norm_cfg.type`` that is SyncBN in ``cfg.model``."""
    out = []
    for where, node in _walk(cfg.get("model") or {}, "model"):
        if where.endswith(".norm_cfg") and str(node.get("type", "")).split(".")[-1] in ("SyncBN", "MMSyncBN"):
            out.append(f"{where}.type")
    return out


def uses_amp(cfg: Mapping) -> bool:
    return str((cfg.get("optim_wrapper") or {}).get("type", "")).split(".")[-1] == "AmpOptimWrapper"


def drop_amp(cfg: Any) -> None:
    """AmpOptimWrapper -> OptimWrapper (fp32), without the arguments only the AMP wrapper takes (``--no-amp``)."""
    ow = cfg.optim_wrapper
    ow.type = "OptimWrapper"
    for k in AMP_ONLY_KEYS:
        ow.pop(k, None)


def gpu_only_parts(cfg: Mapping, distributed: bool, amp: bool | None = None) -> list[str]:
    """What of ``cfg`` cannot run without a GPU, as ``'<what>: <change>'`` lines (empty: it runs as shipped).

    ``amp``: the tool's --amp/--no-amp (None: the config's choice). SyncBN counts only with a distributed
    launcher: in one process torch's SyncBatchNorm normalises like BN."""
    parts = []
    if amp or (amp is None and uses_amp(cfg)):
        parts.append("AmpOptimWrapper (mixed precision, CUDA only): pass --no-amp (fp32 OptimWrapper)")
    keys = sync_bn_keys(cfg)
    if distributed and keys:
        parts.append("SyncBN across CPU processes: pass --cfg-options " + " ".join(f"{k}=BN" for k in keys))
    return parts
