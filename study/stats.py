"""Paired intervals over seeds and the verdict rules that read them.

Methods of one (fraction, seed) share batches, initial weights and the teacher's forward, so their difference
per seed is a paired observation; a 95 % Student t interval over the seeds' differences says how far the mean
difference may be from the truth. A claim that A beats B ("difference") agrees only when the whole interval lies
above zero; a claim that A matches B ("equivalence", Schuirmann's two one-sided tests read as an interval) agrees
only when the whole interval lies inside [-margin, margin]. A mean that points the paper's way is not enough.
"""
from __future__ import annotations

import math
import statistics

from scipy import stats as _scipy_stats

METHOD = "paired t interval, 95 % (Student t over the per-seed differences)"


def paired_diffs(a: dict[int, float], b: dict[int, float]) -> list[float]:
    """a[seed] - b[seed] for the seeds both have, in seed order."""
    return [a[s] - b[s] for s in sorted(set(a) & set(b))]


def t_interval(diffs: list[float], level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high) of a t interval for the mean of ``diffs``; infinite bounds below two values."""
    n = len(diffs)
    if n == 0:
        return math.nan, math.nan, math.nan
    mean = statistics.fmean(diffs)
    if n < 2:
        return mean, -math.inf, math.inf
    half = float(_scipy_stats.t.ppf(0.5 + level / 2, n - 1)) * statistics.stdev(diffs) / math.sqrt(n)
    return mean, mean - half, mean + half


def seeds_for_half_width(sd: float, half_width: float, level: float = 0.95, at_least: int = 2) -> int:
    """The smallest seed count whose t interval of paired differences with spread ``sd`` is at most ``half_width``
    wide on each side (the design rule of a study's seed count)."""
    n = max(2, at_least)
    while float(_scipy_stats.t.ppf(0.5 + level / 2, n - 1)) * sd / math.sqrt(n) > half_width:
        n += 1
    return n


def verdict(kind: str, low: float, high: float, margin: float | None = None) -> str:
    """The verdict a 95 % interval [low, high] gives a claim.

    difference (the paper says A > B, the interval is of A - B): agrees when low > 0, disagrees when high < 0,
    else inconclusive. equivalence (the paper says A = B within ``margin``): agrees when the interval lies inside
    [-margin, margin], disagrees when it lies wholly outside it, else inconclusive."""
    if math.isnan(low) or math.isnan(high):
        return "not measured"
    if kind == "difference":
        return "agrees" if low > 0 else "disagrees" if high < 0 else "inconclusive"
    if kind == "equivalence":
        if margin is None or margin <= 0:
            raise ValueError("an equivalence claim needs a positive margin")
        if -margin <= low and high <= margin:
            return "agrees"
        if high < -margin or low > margin:
            return "disagrees"
        return "inconclusive"
    raise ValueError(f"unknown claim kind {kind!r} (difference or equivalence)")


def claim(id: str, sentence: str, kind: str, diffs: list[float], margin: float | None = None,
          **extra: object) -> dict:
    """A claim of report.json: the per-seed differences, their interval and the verdict it gives."""
    mean, low, high = t_interval(diffs)
    out = {"id": id, "sentence": sentence, "kind": kind, "estimate": finite_or_none(mean), "ci95": [finite_or_none(low), finite_or_none(high)],
           "method": METHOD, "n_seeds": len(diffs), "verdict": verdict(kind, low, high, margin), "diffs": diffs}
    if kind == "equivalence":
        out["margin"] = margin
    out.update(extra)
    return out


def finite_or_none(x: float) -> float | None:
    """JSON has no NaN or infinity: an interval that does not exist is null."""
    return None if math.isnan(x) or math.isinf(x) else x
