"""The benches' shared clock: candidates timed side by side in one process, and how their ratios are judged.

A module of its own that imports nothing from bench/, so bench/run.py (which calls every bench) and the benches it
calls (loader.py, coco_process.py) share it without importing each other.

A ratio is judged from its rounds, not from one median: in each interleaved round both candidates ran under the
same machine state, so the per-round ratio cancels most of the drift between rounds, and the spread of those ratios
(their interquartile range) says how far one run's median can move. A target is missed only when the whole range
lies above it; a median above the target with the range reaching below it is within noise.
"""
from __future__ import annotations

import statistics
import time
from typing import Callable, Sequence

Names = str | Sequence[str]


def interleaved_rounds(fns: dict[str, Callable[[], object]], repeats: int,
                       warmup: int = 2) -> dict[str, list[float]]:
    """Seconds of each call per round, the candidates interleaved (order rotated) so all see the same machine
    state; entry r of every list comes from the same round, which is what a per-round ratio needs."""
    for _ in range(warmup):
        for f in fns.values():
            f()
    times: dict[str, list[float]] = {k: [] for k in fns}
    names = list(fns)
    for r in range(repeats):
        for k in names[r % len(names):] + names[:r % len(names)]:  # rotated: no candidate always runs first
            f = fns[k]
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
    return times


def medians(rounds: dict[str, list[float]]) -> dict[str, float]:
    """Median seconds per candidate: the absolute figures (throughputs, ms) reported beside the ratios."""
    return {k: statistics.median(v) for k, v in rounds.items()}


def interleaved(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 2) -> dict[str, float]:
    """Median seconds per call of interleaved rounds, for callers that need no spread."""
    return medians(interleaved_rounds(fns, repeats, warmup))


def per_round(rounds: dict[str, list[float]], names: Names, scale: float = 1.0) -> list[float]:
    """A candidate's seconds in each round, or the sum of several (a ratio's denominator can be two calls, e.g.
    student step + teacher forward), times ``scale`` (seconds per image instead of per epoch)."""
    names = [names] if isinstance(names, str) else list(names)
    return [scale * sum(ts) for ts in zip(*(rounds[n] for n in names), strict=True)]


def quartiles(values: Sequence[float]) -> tuple[float, float, float]:
    """q25, median, q75 with linear interpolation between the sorted values (numpy's default method)."""
    if len(values) == 1:
        return values[0], values[0], values[0]
    q25, q50, q75 = statistics.quantiles(values, n=4, method="inclusive")
    return q25, q50, q75


def round_ratios(num: Sequence[float], den: Sequence[float]) -> dict:
    """{median, q25, q75, rounds} of num[r] / den[r]: each ratio from two timings of the same round."""
    if len(num) != len(den) or not num:
        raise ValueError(f"per-round ratios need rounds of equal, non-zero count (got {len(num)} and {len(den)})")
    rounds = [n / d for n, d in zip(num, den)]
    q25, q50, q75 = quartiles(rounds)
    return {"median": q50, "q25": q25, "q75": q75, "rounds": rounds}


def ratio_spread(rounds: dict[str, list[float]], num: Names, den: Names,
                 num_scale: float = 1.0, den_scale: float = 1.0) -> dict:
    """{median, q25, q75, rounds} of the per-round ratio between candidates (or sums of them) of one
    ``interleaved_rounds`` run."""
    return round_ratios(per_round(rounds, num, num_scale), per_round(rounds, den, den_scale))


def with_spread(spread: dict[str, dict]) -> dict:
    """A bench's figures from ``ratio_spread`` results: each ratio's median as the figure, the whole spread (its
    rounds included) under ``_spread``, where bench/run.py collects the IQRs."""
    return {**{k: s["median"] for k, s in spread.items()}, "_spread": spread}


def verdict(value: float, target: float, spread: Sequence[float] | None = None) -> str:
    """"met" when the figure (a median) is at or below the target; "missed" when its whole IQR ``spread``
    (q25, q75) lies above it, or, for a figure without rounds (spread None), when the plain value does; else
    "within noise": one noisy median above the target is not a regression."""
    if value <= target:
        return "met"
    if spread is None or spread[0] > target:
        return "missed"
    return "within noise"


def verdicts(figures: dict[str, float], targets: dict[str, float],
             spreads: dict[str, Sequence[float] | None]) -> dict[str, str]:
    """The verdict of every figure that has a target and was measured in this run."""
    return {k: verdict(figures[k], t, spreads.get(k)) for k, t in targets.items() if k in figures}


def missed(judged: dict[str, str]) -> list[str]:
    """The figures whose target is missed by the IQR rule (within noise does not count)."""
    return [k for k, v in judged.items() if v == "missed"]
