"""bench/timing.py: a ratio's spread comes from per-round ratios, and a target is missed only when the whole IQR
lies above it (a single noisy median decides nothing). Fixed per-round times, no clock involved except in the
interleaving test, whose candidates only record their order."""
import numpy as np
import pytest

from bench.timing import (interleaved, interleaved_rounds, missed, per_round, quartiles, ratio_spread, round_ratios,
                          verdict, verdicts, with_spread)

TARGET = 1.05


def test_rounds_are_interleaved_and_rotated():
    calls = []
    rounds = interleaved_rounds({k: (lambda k=k: calls.append(k)) for k in "abc"}, repeats=3, warmup=1)
    assert {k: len(v) for k, v in rounds.items()} == {"a": 3, "b": 3, "c": 3}
    assert calls[3:] == list("abc" "bca" "cab")  # after one warm-up round: no candidate always runs first
    assert set(interleaved({"a": lambda: None}, repeats=3)) == {"a"}  # the medians-only form still answers


def test_iqr_is_of_per_round_ratios_not_of_times():
    # the machine slows down round after round; the candidate costs 10 % more in every round
    rounds = {"base": [1.0, 2.0, 3.0, 4.0, 5.0], "cand": [1.1, 2.2, 3.3, 4.4, 5.5]}
    s = ratio_spread(rounds, "cand", "base")
    assert s["rounds"] == pytest.approx([1.1] * 5)
    assert (s["q25"], s["median"], s["q75"]) == pytest.approx((1.1, 1.1, 1.1))  # drift cancels within a round
    # quartiles of the times would give a wide range (2.2 / 4.0 .. 4.4 / 2.0): not what is reported
    assert np.percentile(rounds["cand"], 25) / np.percentile(rounds["base"], 75) < 0.7


def test_quartiles_interpolate_like_numpy():
    r = round_ratios([1.0, 1.3, 0.9, 1.2, 1.0, 1.5], [1.0] * 6)
    assert (r["q25"], r["median"], r["q75"]) == pytest.approx(tuple(np.percentile(r["rounds"], [25, 50, 75])))
    assert quartiles([1.2]) == (1.2, 1.2, 1.2)
    with pytest.raises(ValueError):
        round_ratios([1.0, 2.0], [1.0])


def test_a_denominator_can_be_a_sum_and_scaled():
    rounds = {"online": [3.0, 4.0], "plain": [1.0, 2.0], "teacher": [2.0, 2.0]}
    assert per_round(rounds, ("plain", "teacher")) == [3.0, 4.0]
    assert ratio_spread(rounds, "online", ("plain", "teacher"))["rounds"] == [1.0, 1.0]
    # seconds per image: 100 images an epoch against 50
    assert ratio_spread(rounds, "plain", "teacher", num_scale=1 / 100, den_scale=1 / 50)["rounds"] == [0.25, 0.5]


def noisy_median() -> dict:
    """Median ratio 1.10 above the 1.05 target, but a quarter of the rounds at or below 1.00."""
    return round_ratios([0.98, 1.00, 1.02, 1.10, 1.10, 1.12, 1.16, 1.20, 1.30], [1.0] * 9)


def slow_everywhere() -> dict:
    """The same median 1.10, every round but one above the target: a real regression."""
    return round_ratios([1.00, 1.07, 1.08, 1.10, 1.10, 1.11, 1.12, 1.13, 1.30], [1.0] * 9)


def test_median_above_target_with_q25_below_is_within_noise():
    s = noisy_median()
    assert s["median"] == pytest.approx(1.10) and s["q25"] < TARGET
    v = verdict(s["median"], TARGET, (s["q25"], s["q75"]))
    assert v == "within noise"
    assert missed({"cached_kd_over_plain": v}) == []


def test_q25_above_target_is_missed():
    s = slow_everywhere()
    assert s["q25"] > TARGET
    assert verdict(s["median"], TARGET, (s["q25"], s["q75"])) == "missed"


def test_the_rule_needs_more_than_the_median():
    noisy, slow = noisy_median(), slow_everywhere()
    assert noisy["median"] == pytest.approx(slow["median"])  # a rule reading the median alone sees one case ...
    judged = [verdict(s["median"], TARGET, (s["q25"], s["q75"])) for s in (noisy, slow)]
    assert judged == ["within noise", "missed"]  # ... the IQR rule tells them apart
    median_only = ["missed" if s["median"] > TARGET else "met" for s in (noisy, slow)]
    assert median_only != judged  # the old rule calls the noisy run a miss


def test_met_and_figures_without_rounds():
    assert verdict(1.05, TARGET, (1.0, 1.2)) == "met"  # at the target is met, whatever the range
    assert verdict(1.03, TARGET, (1.06, 1.08)) == "met"  # the median decides met
    assert verdict(0.6, 0.5, None) == "missed"  # no rounds (--help seconds): the plain value
    assert verdict(0.05, 0.5, None) == "met"


def test_verdicts_of_a_run():
    noisy, slow = noisy_median(), slow_everywhere()
    figures = {**with_spread({"a": noisy, "b": slow, "c": round_ratios([0.4], [1.0])}), "help_s": 0.9, "mb": 0.42}
    spread = {"a": [noisy["q25"], noisy["q75"]], "b": [slow["q25"], slow["q75"]], "c": [0.4, 0.4],
              "help_s": None, "mb": None}
    figures = {k: v for k, v in figures.items() if not k.startswith("_")}
    judged = verdicts(figures, {"a": TARGET, "b": TARGET, "c": 0.5, "help_s": 0.5, "absent": 1.0}, spread)
    assert judged == {"a": "within noise", "b": "missed", "c": "met", "help_s": "missed"}
    assert missed(judged) == ["b", "help_s"]
