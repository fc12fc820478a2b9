"""Seconds per iteration and GPU memory, read from the machine-readable files the tools write anyway (never from
their human progress lines).

- tools/distill.py writes ``<output>/<experiment>/progress.jsonl``: with ``--log-interval 1`` one record per step
  (``epoch``, ``step``, ``total``, ``seconds`` counted from the start of the epoch, ``losses``), and at the end one
  record per process with its ``cuda_max_mb``; the first step of each epoch (loader start-up, warm-up) is left out.

The figure is the median of the timed iterations: on a shared machine single iterations stall when other
processes take the cores, and the median of a few ignores one such stall.
- mmengine with ``default_hooks.logger.interval=1`` and ``log_processor.window_size=1`` writes every training
  iteration's own ``time`` and ``data_time`` (and ``memory``, its CUDA max allocated in MB, on a GPU) to
  ``<work_dir>/<timestamp>/vis_data/scalars.json``; the first iteration of each process is left out.
"""
from __future__ import annotations

import json
from pathlib import Path
from statistics import mean, median


def read_jsonl(path: Path, offset: int = 0) -> list[dict]:
    """The JSON records of a JSON lines file from byte ``offset`` on ([] when it does not exist); a line cut short
    by a killed writer is skipped."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace")
    except OSError:
        return []
    out = []
    for line in text.splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return out


def distill_times(records: list[dict]) -> dict:
    """{'steps': n, 'first': s, 'samples': [s of each later step], 'seconds_per_iter': their median, 'cuda_max_mb'}
    from tools/distill.py's progress.jsonl records."""
    by_epoch: dict[int, list[tuple[int, float]]] = {}
    for r in records:
        if "step" in r and "seconds" in r:
            by_epoch.setdefault(int(r.get("epoch", 0)), []).append((int(r["step"]), float(r["seconds"])))
    diffs, firsts, steps = [], [], 0
    for rows in by_epoch.values():
        rows.sort()
        steps += len(rows)
        firsts.append(rows[0][1])
        diffs += [(t1 - t0) / (k1 - k0) for (k0, t0), (k1, t1) in zip(rows, rows[1:]) if k1 > k0]
    cuda = [int(r["cuda_max_mb"]) for r in records if r.get("cuda_max_mb") is not None]
    return {"steps": steps, "first": round(firsts[0], 2) if firsts else None,
            "samples": [round(d, 3) for d in diffs], "seconds_per_iter": round(median(diffs), 3) if diffs else None,
            "cuda_max_mb": max(cuda) if cuda else None}


def mmengine_scalars(work_dir: Path, since: float) -> list[dict]:
    """The training-iteration records of the mmengine runs in ``work_dir`` that wrote after ``since`` (a time)."""
    records = []
    for f in sorted(Path(work_dir).glob("*/vis_data/scalars.json")):
        try:
            if f.stat().st_mtime < since:
                continue
        except OSError:
            continue
        records += [r for r in read_jsonl(f) if "time" in r and "data_time" in r and "iter" in r]
    return records


def mmengine_times(records: list[dict]) -> dict:
    """The same for mmengine's scalars.json records: every logged iteration but the first one of this process."""
    rows = [(float(r["time"]), float(r["data_time"]), int(r["memory"]) if r.get("memory") is not None else None)
            for r in records]
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
