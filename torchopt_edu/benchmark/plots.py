"""Plots of a benchmark run (matplotlib): performance profiles and validation curves.

Each function draws on ``ax`` (a new figure when ``None``) and returns the axes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from torchopt_edu._plotting import line_style
from torchopt_edu.benchmark.profiles import MAX_RATIO, benchmark_score, performance_profile
from torchopt_edu.benchmark.protocol import TrialResult
from torchopt_edu.benchmark.workload import Workload

if TYPE_CHECKING:
    from matplotlib.axes import Axes


def _axes(ax: Axes | None) -> Axes:
    try:
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise ImportError("plots need matplotlib: pip install torchopt-edu[viz]") from error
    return plt.subplots(figsize=(6, 4))[1] if ax is None else ax


def plot_profiles(
    ratios: Mapping[str, Mapping[str, float]],
    *,
    max_ratio: float = MAX_RATIO,
    title: str = "performance profiles",
    ax: Axes | None = None,
) -> Axes:
    """``rho_o(tau)`` for ``tau`` in ``[1, max_ratio]``, one step curve per optimizer.

    The legend lists the optimizers by benchmark score (the area under the curve, normalised),
    best first.
    """
    ax = _axes(ax)
    ratios_seen = sorted(
        {r for by in ratios.values() for r in by.values() if 1 <= r <= max_ratio} | {1, max_ratio}
    )
    profile = performance_profile(ratios, ratios_seen)
    scores = benchmark_score(ratios, max_ratio)
    order = sorted(profile, key=lambda name: -scores[name])
    for index, optimizer in enumerate(order):
        style = line_style(index, len(ratios_seen))
        ax.step(
            ratios_seen,
            profile[optimizer],
            where="post",
            label=f"{optimizer} ({scores[optimizer]:.2f})",
            **style,
        )
    ax.set_xlim(1, max_ratio)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("tau: within this factor of the fastest")
    ax.set_ylabel("fraction of workloads")
    ax.set_title(title)
    ax.legend(fontsize="small", title="optimizer (score)", title_fontsize="small")
    return ax


def best_trials(
    results: Sequence[TrialResult], workload: Workload, study: int = 0
) -> dict[str, TrialResult]:
    """For each optimizer, its best trial on ``workload`` in ``study``: the fastest hit or, when
    no trial hit, the miss whose best validation value came nearest the target."""
    sign = -1.0 if workload.higher_is_better else 1.0

    def rank(result: TrialResult) -> tuple[float, float]:
        values = [sign * point[2] for point in result.curve if math.isfinite(point[2])]
        seconds = result.seconds if result.seconds is not None else math.inf
        return seconds, min(values, default=math.inf)

    best: dict[str, TrialResult] = {}
    for result in results:
        key = result.key
        if key.workload != workload.name or key.study != study:
            continue
        current = best.get(key.optimizer)
        if current is None or rank(result) < rank(current):
            best[key.optimizer] = result
    return best


def plot_curves(
    results: Sequence[TrialResult], workload: Workload, study: int = 0, ax: Axes | None = None
) -> Axes:
    """The validation metric against the step of each optimizer's best trial in ``study``, and
    the target as a dashed line."""
    ax = _axes(ax)
    for index, (optimizer, result) in enumerate(best_trials(results, workload, study).items()):
        steps = [point[0] for point in result.curve]
        values = [point[2] for point in result.curve]
        ax.plot(steps, values, label=optimizer, **line_style(index, len(steps)))
    ax.axhline(workload.target, color="black", linestyle="--", linewidth=1, label="target")
    ax.set_xlabel("step")
    ax.set_ylabel(workload.metric)
    ax.set_title(workload.name)
    ax.legend(fontsize="x-small")
    return ax
