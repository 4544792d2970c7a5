"""Scoring: median of the studies' best trials, ratios, profiles and the integrated score against
a hand-worked example."""

import math

import numpy as np
import pytest

from torchopt_edu.benchmark import (
    TrialKey,
    TrialResult,
    benchmark_score,
    format_table,
    performance_profile,
    performance_ratios,
    time_to_target,
)

INF = math.inf

# Three workloads, three optimizers; w3 is solved by nobody.
TIMES = {
    "w1": {"A": 10.0, "B": 20.0, "C": INF},
    "w2": {"A": 30.0, "B": 15.0, "C": 45.0},
    "w3": {"A": INF, "B": INF, "C": INF},
}


def test_ratios_divide_by_the_fastest_and_a_workload_nobody_solves_is_inf_for_all():
    assert performance_ratios(TIMES) == {
        "w1": {"A": 1.0, "B": 2.0, "C": INF},
        "w2": {"A": 2.0, "B": 1.0, "C": 3.0},
        "w3": {"A": INF, "B": INF, "C": INF},
    }


def test_profile_counts_the_workloads_within_tau_of_the_fastest():
    profile = performance_profile(performance_ratios(TIMES), [1.0, 1.5, 2.0, 3.0, 4.0])
    assert profile == {
        "A": [1 / 3, 1 / 3, 2 / 3, 2 / 3, 2 / 3],
        "B": [1 / 3, 1 / 3, 2 / 3, 2 / 3, 2 / 3],
        "C": [0.0, 0.0, 0.0, 1 / 3, 1 / 3],
    }


def test_score_is_the_exact_normalised_area_under_the_profile():
    # A: w1 (4 - 1)/3 = 1, w2 (4 - 2)/3 = 2/3, w3 0 -> 5/9; B the same; C: w2 (4 - 3)/3 -> 1/9.
    ratios = performance_ratios(TIMES)
    scores = benchmark_score(ratios)
    assert scores == pytest.approx({"A": 5 / 9, "B": 5 / 9, "C": 1 / 9}, abs=1e-12)
    # The same area by brute force: the mean of the step function over a fine grid on [1, 4].
    taus = np.linspace(1, 4, 300_001)
    profile = performance_profile(ratios, taus)
    for name, score in scores.items():
        assert np.mean(profile[name]) == pytest.approx(score, abs=1e-4)
    # r_max = 2 keeps only the ratios up to 2: A gets (2 - 1)/1 on w1 and 0 on w2.
    assert benchmark_score(ratios, max_ratio=2.0) == pytest.approx({"A": 1 / 3, "B": 1 / 3, "C": 0})


def _record(workload, optimizer, study, trial, steps):
    seconds = None if steps is None else steps / 100
    key = TrialKey("external", workload, optimizer, study, trial)
    cpu_seconds = None if steps is None else steps / 200
    return TrialResult(key, {}, 0, steps, seconds, cpu_seconds=cpu_seconds)


def test_time_to_target_is_the_median_over_studies_of_each_studys_best_trial():
    records = [
        _record("w", "A", 0, 0, 10),
        _record("w", "A", 0, 1, None),
        _record("w", "A", 1, 0, None),  # a study that missed: inf
        _record("w", "A", 1, 1, None),
        _record("w", "A", 2, 0, 30),
        _record("w", "A", 2, 1, 20),
        # Two of three studies miss: the median misses.
        _record("w", "B", 0, 0, 5),
        _record("w", "B", 1, 0, None),
        _record("w", "B", 2, 0, None),
    ]
    assert time_to_target(records, "steps") == {"w": {"A": 20.0, "B": INF}}
    assert time_to_target(records, "seconds") == {"w": {"A": 0.2, "B": INF}}
    assert time_to_target(records, "cpu_seconds") == {"w": {"A": 0.1, "B": INF}}
    table = format_table(records, "steps")
    assert "| `A` | 20 | 1.000 | 1/1 |" in table
    assert "| `B` | - | 0.000 | 0/1 |" in table


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="by must be one of .*'cpu_seconds'.*, got 'time'"):
        time_to_target([_record("w", "A", 0, 0, 1)], "time")
    with pytest.raises(ValueError, match="max_ratio must be a finite number > 1, got 1"):
        benchmark_score(performance_ratios(TIMES), max_ratio=1)
    with pytest.raises(ValueError, match="at least one workload"):
        performance_profile({}, [1.0])


@pytest.mark.parametrize(
    ("times", "words"),
    [
        ({"w": {"a": math.nan, "b": 1.0, "c": 2.0}}, "optimizer 'a': the time to target"),
        ({"w": {"b": 1.0, "c": 2.0, "a": math.nan}}, "optimizer 'a': the time to target"),
        ({"w": {"a": 0.0, "b": 1.0}}, "optimizer 'a': .* > 0"),
        ({"w": {"a": -1.0, "b": 1.0}}, "optimizer 'a': .* > 0"),
        ({"w": {}}, "workload 'w' has no optimizer's time"),
    ],
)
def test_ratios_refuse_times_that_are_not_positive_numbers(times, words):
    """A NaN gave order-dependent ratios (all inf, or a NaN ratio), 0 divided by zero, a
    negative time a negative ratio and a score above 1."""
    with pytest.raises(ValueError, match=words):
        performance_ratios(times)


def test_an_infinite_max_ratio_is_refused():
    with pytest.raises(ValueError, match="max_ratio must be a finite number > 1, got inf"):
        benchmark_score({"w": {"a": 1.0}}, max_ratio=math.inf)


def test_a_measure_is_checked_even_without_results():
    with pytest.raises(ValueError, match="by must be one of"):
        time_to_target([], by="minutes")
