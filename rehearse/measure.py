"""Seconds per iteration and GPU memory, read from the logs the tools write anyway.

- tools/distill.py with ``--progress log --log-interval 1`` prints ``epoch E/N [k/K] loss=... (T s)`` after every
  step, T counted from the start of the epoch; the first step of each epoch (loader start-up, warm-up) is left out.

The figure is the median of the timed iterations: on a shared machine single iterations stall when other
processes take the cores, and the median of a few ignores one such stall.
- mmengine with ``default_hooks.logger.interval=1`` and ``log_processor.window_size=1`` prints every training
  iteration's own ``time`` (and ``memory``, its CUDA max allocated in MB, on a GPU); the first iteration of each
  process is left out.
"""
from __future__ import annotations

import re
from statistics import mean, median

_DISTILL = re.compile(r"^epoch (\d+)/\d+ \[(\d+)/(\d+)\] .*\(([\d.]+)s\)\s*$")
_CUDA = re.compile(r"cuda max allocated: (\d+) MiB")
_MMENGINE = re.compile(r"Epoch\(train\)\s*\[(\d+)\]\[\s*(\d+)/\s*(\d+)\].*?\stime: ([\d.]+)\s+data_time: ([\d.]+)"
                       r"(?:\s+memory: (\d+))?")


def distill_times(log: str) -> dict:
    """{'steps': n, 'first': s, 'samples': [s of each later step], 'seconds_per_iter': their median}."""
    by_epoch: dict[int, list[tuple[int, float]]] = {}
    for line in log.splitlines():
        m = _DISTILL.match(line.strip())
        if m:
            by_epoch.setdefault(int(m.group(1)), []).append((int(m.group(2)), float(m.group(4))))
    diffs, firsts, steps = [], [], 0
    for rows in by_epoch.values():
        rows.sort()
        steps += len(rows)
        firsts.append(rows[0][1])
        diffs += [(t1 - t0) / (k1 - k0) for (k0, t0), (k1, t1) in zip(rows, rows[1:]) if k1 > k0]
    cuda = [int(x) for x in _CUDA.findall(log)]
    return {"steps": steps, "first": round(firsts[0], 2) if firsts else None,
            "samples": [round(d, 3) for d in diffs], "seconds_per_iter": round(median(diffs), 3) if diffs else None,
            "cuda_max_mb": max(cuda) if cuda else None}


def mmengine_times(log: str) -> dict:
    """The same for an mmengine training log: every logged iteration but the first one of this process."""
    rows = [(float(m.group(4)), float(m.group(5)), int(m.group(6)) if m.group(6) else None)
            for m in _MMENGINE.finditer(log)]
    later = [r[0] for r in rows[1:]]
    mem = [r[2] for r in rows if r[2] is not None]
    return {"steps": len(rows), "first": round(rows[0][0], 2) if rows else None, "samples": later,
            "seconds_per_iter": round(median(later), 3) if later else None,
            "data_seconds_per_iter": round(mean(r[1] for r in rows[1:]), 3) if later else None,
            "cuda_max_mb": max(mem) if mem else None}


def combine(parts: list[dict]) -> dict:
    """One path's figures from its timed commands: the median over all their timed iterations, the largest
    memory. When every process ran a single iteration, the median of those first iterations (marked)."""
    samples = [t for p in parts for t in p.get("samples", [])]
    firsts = [p["first"] for p in parts if p.get("first") is not None]
    cuda = _max(p.get("cuda_max_mb") for p in parts)
    if samples:
        return {"seconds_per_iter": round(median(samples), 3), "includes_warmup": False, "cuda_max_mb": cuda}
    if firsts:
        return {"seconds_per_iter": round(median(firsts), 3), "includes_warmup": True, "cuda_max_mb": cuda}
    return {"seconds_per_iter": None, "includes_warmup": False, "cuda_max_mb": cuda}


def _max(values) -> int | None:
    vals = [v for v in values if v is not None]
    return max(vals) if vals else None
