"""Process-group set-up for torchrun (env://, nccl on GPU, gloo on CPU) and for a plain single process.

A single process also gets a (world-size-1) process group, so that timm's distributed samplers (and its
repeated-augmentation sampler, which timm supports only when distributed) serve every run the same way:
a 2-process run sees exactly the global batches a 1-process run sees.
"""
from __future__ import annotations

import datetime
import os
import tempfile
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str = "auto", timeout_s: int = 1800) -> DistInfo:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    under_torchrun = "WORLD_SIZE" in os.environ and "RANK" in os.environ
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if device == "cuda":
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device(device)
    if not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        timeout = datetime.timedelta(seconds=timeout_s)
        if under_torchrun:
            dist.init_process_group(backend, init_method="env://", timeout=timeout)
        else:
            store = tempfile.NamedTemporaryFile(prefix="vanillakd-pg-", delete=False).name
            dist.init_process_group(backend, init_method=f"file://{store}", rank=0, world_size=1, timeout=timeout)
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, dev)


def _reduce(t: torch.Tensor, op) -> torch.Tensor:
    if dist.is_initialized() and dist.get_world_size() > 1:
        # nccl reduces CUDA tensors only; the result comes back where the caller keeps it
        on = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else t.device
        r = t.detach().to(on, copy=True)
        dist.all_reduce(r, op=op)
        return r.to(t.device)
    return t


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    return _reduce(t, dist.ReduceOp.SUM)


def all_reduce_min(value: float) -> float:
    return float(_reduce(torch.tensor([value], dtype=torch.float64), dist.ReduceOp.MIN)[0])


def all_reduce_max(value: float) -> float:
    return float(_reduce(torch.tensor([value], dtype=torch.float64), dist.ReduceOp.MAX)[0])


def all_gather_object(obj) -> list:
    """Every rank's ``obj``, in rank order (``[obj]`` in a single process)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        out = [None] * dist.get_world_size()
        dist.all_gather_object(out, obj)
        return out
    return [obj]


def default_store():
    """The process group's key-value store (torchrun's agent store, or rank 0's TCPStore), None without one."""
    if not dist.is_initialized():
        return None
    try:
        return dist.distributed_c10d._get_default_store()
    except (AttributeError, RuntimeError, ValueError):
        return None


def barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
