"""Which sampler finds a good configuration in fewest trials: best value against trials, over seeds.

:func:`compare_samplers` runs one study per ``(sampler, seed)`` on the same training function and
search space (in memory, no pruning, so every sampler sees every trial to its end) and records
the best value after each trial. :func:`workload_task` turns a benchmark workload
(:mod:`torchopt_edu.benchmark`) into such a training function: the objective is the number of
training steps to the workload's validation target, the quantity the benchmark's tuning
minimises.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import optuna
from optuna.storages import InMemoryStorage
from optuna.trial import TrialState

from torchopt_edu.optim._checks import check_int, check_seed
from torchopt_edu.tuning.config import OptimizerConfig
from torchopt_edu.tuning.space import SearchSpace
from torchopt_edu.tuning.study import SAMPLERS, Report, TrainFn, tune

if TYPE_CHECKING:
    from torchopt_edu.benchmark import Workload


def workload_task(workload: str | Workload, seed: int = 0) -> TrainFn:
    """A training function to tune: steps to ``workload``'s target, lower is better.

    Trains with :func:`torchopt_edu.benchmark.run_trial` (same initial weights and batches for
    every configuration, from ``seed``). A configuration that reaches the target after ``s``
    steps scores ``s``; one that misses scores ``max_steps * (1 + shortfall)``, the shortfall
    being how far its best validation value stayed from the target, relative to the target and
    clipped to ``[0, 1]`` (1 for a run that diverged). So a miss always scores worse than a hit,
    and a near miss better than a far one: the samplers get a slope to follow, not a plateau.
    Nothing is reported along the way: ``run_trial`` trains to the target (or ``max_steps``) in
    one call, and a trial that stops early is the best one, so a pruner has nothing to act on
    (tune it with ``pruner="none"``). The workload fixes the training's length: there are no
    epochs to choose.
    """
    from torchopt_edu.benchmark import get_workload, run_trial

    problem = get_workload(workload)
    seed = check_seed(seed)

    def train(config: OptimizerConfig, report: Report) -> float:
        steps, _, details = run_trial(problem, config, seed)
        if steps is not None:
            return float(steps)
        values = [value for _, _, value in details["curve"] if math.isfinite(value)]
        if details["diverged"] or not values:
            return 2.0 * problem.max_steps
        best = max(values) if problem.higher_is_better else min(values)
        gap = problem.target - best if problem.higher_is_better else best - problem.target
        shortfall = min(max(gap / max(abs(problem.target), 1e-12), 0.0), 1.0)
        return problem.max_steps * (1.0 + shortfall)

    return train


@dataclass(frozen=True)
class SamplerComparison:
    """Best value against trials for each sampler and seed.

    Attributes:
        samplers: the samplers compared, in order.
        seeds: the seeds of each sampler's studies.
        n_trials: trials per study.
        direction: ``"minimize"`` or ``"maximize"``.
        best_so_far: ``sampler -> one list per seed`` of the best value after trials
            ``1..n_trials`` (``nan`` before the first completed trial).
        seconds: ``sampler -> mean wall seconds of one study`` (training and sampling).
    """

    samplers: tuple[str, ...]
    seeds: tuple[int, ...]
    n_trials: int
    direction: Literal["minimize", "maximize"]
    best_so_far: dict[str, list[list[float]]]
    seconds: dict[str, float]

    def best_after(self, sampler: str, trials: int) -> tuple[float, float]:
        """Mean and standard deviation over seeds of ``sampler``'s best value after ``trials``."""
        if check_int("trials", trials, 1) > self.n_trials:
            raise ValueError(f"trials must be <= n_trials = {self.n_trials}, got {trials}")
        values = [curve[trials - 1] for curve in self.best_so_far[sampler]]
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        return statistics.fmean(values), spread

    def rows(self, checkpoints: Iterable[int]) -> list[tuple[str, list[tuple[float, float]]]]:
        """``(sampler, [(mean, std) after each checkpoint])`` for every sampler: the table."""
        checkpoints = list(checkpoints)
        return [
            (sampler, [self.best_after(sampler, k) for k in checkpoints])
            for sampler in self.samplers
        ]


def _best_so_far(study: optuna.Study, n_trials: int, maximize: bool) -> list[float]:
    best, curve = math.nan, []
    for trial in sorted(study.trials, key=lambda t: t.number)[:n_trials]:
        if trial.state == TrialState.COMPLETE and trial.value is not None:
            better = max if maximize else min
            best = trial.value if math.isnan(best) else better(best, trial.value)
        curve.append(best)
    return curve


def compare_samplers(
    train: TrainFn,
    space: SearchSpace,
    *,
    samplers: Sequence[str] = SAMPLERS,
    seeds: Sequence[int] = (0, 1, 2),
    n_trials: int = 30,
    direction: Literal["minimize", "maximize"] = "minimize",
) -> SamplerComparison:
    """Tune ``train`` over ``space`` with each sampler and seed; return best value vs trials.

    Every study has ``n_trials`` trials, no pruner and an in-memory storage; the studies of one
    seed differ only by their sampler (:func:`~torchopt_edu.tuning.make_sampler`), so the table
    compares how fast each sampler finds good configurations on the same problem.

    Raises:
        ValueError: an unknown sampler, no sampler or seed, a bad seed or ``n_trials``.
    """
    samplers, seeds = tuple(samplers), tuple(check_seed(seed) for seed in seeds)
    unknown = [name for name in samplers if name not in SAMPLERS]
    if unknown or not samplers:
        raise ValueError(f"samplers must be some of {list(SAMPLERS)}, got {list(samplers)}")
    if not seeds:
        raise ValueError("compare_samplers needs at least one seed, got none")
    check_int("n_trials", n_trials, 1)
    best_so_far: dict[str, list[list[float]]] = {}
    seconds: dict[str, float] = {}
    for sampler in samplers:
        start, curves = time.perf_counter(), []
        for seed in seeds:
            result = tune(
                train,
                space,
                n_trials=n_trials,
                storage=InMemoryStorage(),
                study_name=f"{sampler}-{seed}",
                direction=direction,
                pruner="none",
                sampler=sampler,
                seed=seed,
            )
            curves.append(_best_so_far(result.study, n_trials, direction == "maximize"))
        best_so_far[sampler] = curves
        seconds[sampler] = (time.perf_counter() - start) / len(seeds)
    return SamplerComparison(samplers, seeds, n_trials, direction, best_so_far, seconds)
