"""The benches' shared clock: candidates timed side by side in one process. A module of its own that imports
nothing from bench/, so bench/run.py (which calls every bench) and the benches it calls (loader.py,
coco_process.py) share it without importing each other."""
from __future__ import annotations

import statistics
import time


def interleaved(fns: dict, repeats: int, warmup: int = 2) -> dict[str, float]:
    """Median seconds per call, the candidates interleaved (order rotated) so all see the same machine state."""
    for _ in range(warmup):
        for f in fns.values():
            f()
    times = {k: [] for k in fns}
    names = list(fns)
    for r in range(repeats):
        for k in names[r % len(names):] + names[:r % len(names)]:  # rotated: no candidate always runs first
            f = fns[k]
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}
