"""Scoring: time to target per optimizer and workload, performance profiles, benchmark scores.

From the trial records (:class:`~torchopt_edu.benchmark.TrialResult`), with ``x`` the seconds or
the steps a trial took to reach its workload's target (``x = inf`` for a miss):

- a study's time on workload ``w``: its best trial, ``min_k x_k``;
- optimizer ``o``'s time on ``w``: ``t_{w,o} = median over studies`` (``inf`` when at least half
  of the studies missed);
- performance ratio ``r_{w,o} = t_{w,o} / min_{o'} t_{w,o'}`` (1 for the fastest; ``inf`` for a
  miss, and for everyone on a workload nobody solved);
- performance profile (Dolan and More 2002) ``rho_o(tau) = |{w : r_{w,o} <= tau}| / |W|``, the
  fraction of workloads ``o`` solves within a factor ``tau`` of the fastest;
- benchmark score, AlgoPerf's integrated profile
  ``B_o = 1 / (r_max - 1) * integral_1^r_max rho_o(tau) dtau`` with ``r_max = 4``. The profile is a
  step function, so the integral is exact: each workload adds ``(r_max - r_{w,o}) / (r_max - 1)``
  if ``r_{w,o} <= r_max``, else 0, and ``B_o`` is their mean (1 = fastest everywhere, 0 = never
  within ``r_max`` of the fastest).
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Literal

from torchopt_edu.benchmark.protocol import TrialResult
from torchopt_edu.optim._checks import is_real

Measure = Literal["seconds", "cpu_seconds", "steps"]
MEASURES: tuple[Measure, ...] = ("seconds", "cpu_seconds", "steps")
"""What a time to target can count: training wall seconds, training CPU seconds, or steps."""
MAX_RATIO = 4.0
"""AlgoPerf's ``r_max``: the largest performance ratio that still earns score."""


def _measure(result: TrialResult, by: Measure) -> float:
    if by not in MEASURES:
        raise ValueError(f"by must be one of {list(MEASURES)}, got {by!r}")
    value = getattr(result, by)
    if value is None:  # the trial missed the target
        return math.inf
    if not (is_real(value) and value >= 0):  # NaN fails too
        key = result.key
        raise ValueError(
            f"workload {key.workload!r}, optimizer {key.optimizer!r}, study {key.study}: {by} "
            f"must be a number >= 0 (None for a miss), got {value!r}"
        )
    return float(value)


def time_to_target(
    results: Iterable[TrialResult], by: Measure = "seconds"
) -> dict[str, dict[str, float]]:
    """``t[workload][optimizer]``: the median over studies of the best trial's seconds or steps.

    ``inf`` where the median study missed the target.
    """
    if by not in MEASURES:
        raise ValueError(f"by must be one of {list(MEASURES)}, got {by!r}")
    best: dict[tuple[str, str], dict[int, float]] = defaultdict(dict)
    for result in results:
        key = result.key
        studies = best[key.workload, key.optimizer]
        studies[key.study] = min(studies.get(key.study, math.inf), _measure(result, by))
    times: dict[str, dict[str, float]] = defaultdict(dict)
    for (workload, optimizer), studies in best.items():
        times[workload][optimizer] = statistics.median(studies.values())
    return dict(times)


def performance_ratios(times: Mapping[str, Mapping[str, float]]) -> dict[str, dict[str, float]]:
    """``r[workload][optimizer] = t / (fastest t on that workload)``; ``inf`` for a miss.

    Raises:
        ValueError: a workload without optimizers, or a time that is NaN, not a number or not
            > 0 (a miss is ``inf``), naming the workload and the optimizer.
    """
    ratios = {}
    for workload, by_optimizer in times.items():
        if not by_optimizer:
            raise ValueError(f"workload {workload!r} has no optimizer's time")
        for optimizer, time in by_optimizer.items():
            if not (is_real(time) and time > 0):  # NaN fails too
                raise ValueError(
                    f"workload {workload!r}, optimizer {optimizer!r}: the time to target must "
                    f"be a number > 0 (inf for a miss), got {time!r}"
                )
        fastest = min(by_optimizer.values())
        ratios[workload] = {
            optimizer: time / fastest if math.isfinite(fastest) else math.inf
            for optimizer, time in by_optimizer.items()
        }
    return ratios


def _optimizers(ratios: Mapping[str, Mapping[str, float]]) -> list[str]:
    names: dict[str, None] = {}
    for by_optimizer in ratios.values():
        names.update(dict.fromkeys(by_optimizer))
    return list(names)


def performance_profile(
    ratios: Mapping[str, Mapping[str, float]], taus: Sequence[float]
) -> dict[str, list[float]]:
    """``rho[optimizer][i]``: the fraction of workloads solved within ``taus[i]`` of the fastest.

    A workload where an optimizer has no record counts as unsolved by it.
    """
    workloads = len(ratios)
    if workloads == 0:
        raise ValueError("performance_profile needs the ratios of at least one workload")
    return {
        optimizer: [
            sum(by.get(optimizer, math.inf) <= tau for by in ratios.values()) / workloads
            for tau in taus
        ]
        for optimizer in _optimizers(ratios)
    }


def benchmark_score(
    ratios: Mapping[str, Mapping[str, float]], max_ratio: float = MAX_RATIO
) -> dict[str, float]:
    """AlgoPerf's score: ``1 / (r_max - 1) * integral_1^r_max rho(tau) dtau``, computed exactly.

    Raises:
        ValueError: ``max_ratio <= 1``, or no workload.
    """
    if not (is_real(max_ratio) and 1 < max_ratio < math.inf):
        raise ValueError(f"max_ratio must be a finite number > 1, got {max_ratio!r}")
    if not ratios:
        raise ValueError("benchmark_score needs the ratios of at least one workload")

    def share(ratio: float) -> float:
        return (max_ratio - ratio) / (max_ratio - 1) if ratio <= max_ratio else 0.0

    return {
        optimizer: statistics.fmean(share(by.get(optimizer, math.inf)) for by in ratios.values())
        for optimizer in _optimizers(ratios)
    }


def _cell(value: float, by: Measure) -> str:
    if not math.isfinite(value):
        return "-"
    return f"{value:.0f}" if by == "steps" else f"{value:.3g}"


def format_table(results: Sequence[TrialResult], by: Measure = "seconds") -> str:
    """A Markdown table: one row per optimizer, ``t[workload][optimizer]`` in each workload's
    column (``-`` for a miss), the benchmark score, and the number of workloads solved.

    Rows are sorted by score, best first.
    """
    times = time_to_target(results, by)
    ratios = performance_ratios(times)
    scores = benchmark_score(ratios)
    workloads = list(times)
    unit = {"seconds": "s", "cpu_seconds": "CPU s", "steps": "steps"}[by]
    header = ["optimizer", *(f"{workload} ({unit})" for workload in workloads)]
    lines = [
        "| " + " | ".join([*header, "score", "solved"]) + " |",
        "|" + "---|" * (len(header) + 2),
    ]
    for optimizer in sorted(scores, key=lambda name: -scores[name]):
        cells = [_cell(times[w].get(optimizer, math.inf), by) for w in workloads]
        solved = sum(math.isfinite(times[w].get(optimizer, math.inf)) for w in workloads)
        row = [f"`{optimizer}`", *cells, f"{scores[optimizer]:.3f}", f"{solved}/{len(workloads)}"]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)
