"""Held-out evaluation: the learned optimizer against Adam, and without its graph stage.

The workloads are the benchmark's (:mod:`torchopt_edu.benchmark.workloads`) that meta-training
never saw, neither the architecture nor the data: ``digits_cnn`` (a CNN), ``sbm_gcn`` (a GCN on
a stochastic block model) and ``char_lm`` (a character LSTM), each trained for its full step
budget (200 to 600 steps: 4 to 12 times meta-training's 50-step unrolls).

The candidates (:func:`candidates`):

- ``adam``: Adam at its default ``lr=1e-3``;
- ``learned``: :class:`LearnedOptimizer` at its default ``lr=1e-3``, shipped weights;
- ``learned, graph off``: the same weights with the graph stage switched off (``s = mu = 0``);
- ``learned, coordinate-only``: the weights meta-trained without a graph stage (same budget);
- ``adam tuned`` and ``learned tuned``: the best ``lr`` of the same grid (:data:`LR_GRID`),
  chosen on a tuning seed that the evaluation seeds do not include: an equal tuning budget.

Each run records the training loss of every step, the validation metric every
``eval_every`` steps, the first step (and the training seconds) at which the metric reaches the
workload's target, and whether it diverged (a non-finite loss, or a loss above 10 times the
first one: the run stops there).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.optim import Optimizer

from torchopt_edu.learned.optimizer import LearnedOptimizer
from torchopt_edu.learned.weights import load_shipped
from torchopt_edu.optim import Adam

HELD_OUT = ("digits_cnn", "sbm_gcn", "char_lm")
#: The learning rates both tuned candidates choose from (six trials each).
LR_GRID = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2)
TUNING_SEED = 1000
DIVERGENCE_FACTOR = 10.0

OptimizerFactory = Callable[[nn.Module, float], Optimizer]


@dataclass
class Run:
    """One training run of one optimizer on one workload and seed."""

    workload: str
    optimizer: str
    seed: int
    lr: float
    losses: list[float] = field(default_factory=list)
    metrics: list[tuple[int, float]] = field(default_factory=list)
    steps_to_target: int | None = None
    seconds_to_target: float | None = None
    diverged: bool = False
    seconds: float = 0.0

    @property
    def final_loss(self) -> float:
        """Mean training loss of the last 10 steps (infinite if the run diverged)."""
        return math.inf if self.diverged else statistics.fmean(self.losses[-10:])

    @property
    def final_metric(self) -> float:
        """The last validation metric (NaN if the run diverged before the first)."""
        return self.metrics[-1][1] if self.metrics and not self.diverged else math.nan


def candidates() -> dict[str, OptimizerFactory]:
    """The optimizers compared, as factories ``(model, lr) -> optimizer``."""
    graph_net, coordinate_net = load_shipped(graph=True), load_shipped(graph=False)
    return {
        "adam": lambda model, lr: Adam(model.parameters(), lr=lr),
        "learned": lambda model, lr: LearnedOptimizer(
            model.parameters(), lr=lr, net=graph_net, graph=model
        ),
        "learned, graph off": lambda model, lr: LearnedOptimizer(
            model.parameters(), lr=lr, net=graph_net, graph=model, use_graph=False
        ),
        "learned, coordinate-only": lambda model, lr: LearnedOptimizer(
            model.parameters(), lr=lr, net=coordinate_net, graph=model
        ),
    }


def train(
    workload: str,
    name: str,
    make: OptimizerFactory,
    lr: float,
    seed: int,
    steps: int | None = None,
) -> Run:
    """Train ``workload`` (a benchmark workload name) with ``make(model, lr)`` for ``steps``.

    ``steps`` defaults to the workload's budget. The model's initial weights and the batches
    come from ``seed``, so every optimizer sees the same ones.
    """
    from torchopt_edu.benchmark.workloads import get_workload

    task = get_workload(workload)
    steps = task.max_steps if steps is None else steps
    train_data, valid = task.data
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = task.make_model()
    generator = torch.Generator().manual_seed(seed)
    optimizer = make(model, lr)
    run = Run(workload, name, seed, lr)
    for step in range(1, steps + 1):
        started = time.perf_counter()
        model.train()
        optimizer.zero_grad()
        loss = task.loss(model, task.sample_batch(train_data, generator))
        loss.backward()
        optimizer.step()
        run.seconds += time.perf_counter() - started
        run.losses.append(float(loss.detach()))
        if not math.isfinite(run.losses[-1]) or run.losses[-1] > DIVERGENCE_FACTOR * run.losses[0]:
            run.diverged = True
            break
        if step % task.eval_every == 0 or step == steps:
            model.eval()
            with torch.no_grad():
                value = float(task.validate(model, valid))
            run.metrics.append((step, value))
            if run.steps_to_target is None and task.reached(value):
                run.steps_to_target, run.seconds_to_target = step, run.seconds
    return run


def tune_lr(
    workload: str,
    name: str,
    make: OptimizerFactory,
    grid: Sequence[float] = LR_GRID,
    steps: int | None = None,
) -> tuple[float, list[Run]]:
    """The ``lr`` of ``grid`` that reaches the target first on :data:`TUNING_SEED` (ties, or
    nobody reaching it: the best final training loss), and the tuning runs."""
    runs = [train(workload, name, make, lr, TUNING_SEED, steps) for lr in grid]
    best = min(
        runs,
        key=lambda r: (r.steps_to_target is None, r.steps_to_target or 0, r.final_loss),
    )
    return best.lr, runs


def evaluate(
    workloads: Sequence[str] = HELD_OUT,
    seeds: Sequence[int] = (0, 1, 2, 3, 4),
    *,
    steps: int | None = None,
    grid: Sequence[float] = LR_GRID,
    names: Sequence[str] | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[Run]:
    """Every candidate (``names``, default all) on every workload and seed; tuned ones too.

    ``adam tuned`` and ``learned tuned`` run only when ``adam`` and ``learned`` are among
    ``names`` and ``grid`` is not empty; ``progress`` is called with a line per run.
    """
    factories = candidates()
    names = list(factories) if names is None else list(names)
    unknown = [n for n in names if n not in factories]
    if unknown:
        raise ValueError(f"unknown candidates {unknown}; choose from {list(factories)}")
    runs: list[Run] = []
    for workload in workloads:
        plan = [(name, factories[name], 1e-3) for name in names]
        for base in ("adam", "learned"):
            if base in names and grid:
                lr, _ = tune_lr(workload, f"{base} tuned", factories[base], grid, steps)
                plan.append((f"{base} tuned", factories[base], lr))
        for name, make, lr in plan:
            for seed in seeds:
                runs.append(train(workload, name, make, lr, seed, steps))
                if progress is not None:
                    progress(f"{workload} {name} lr={lr:g} seed={seed}")
    return runs


@dataclass
class Summary:
    """One optimizer on one workload, over seeds."""

    workload: str
    optimizer: str
    lr: float
    runs: int
    reached: int
    diverged: int
    median_steps_to_target: float
    median_seconds_to_target: float
    median_final_loss: float
    median_final_metric: float


def summarise(runs: Sequence[Run]) -> list[Summary]:
    """Per (workload, optimizer): reach and divergence counts, medians over seeds.

    The medians of steps and seconds to target are over the runs that reached it (NaN if none
    did); final loss and metric over all runs (a diverged run counts as infinite loss).
    """
    groups: dict[tuple[str, str], list[Run]] = {}
    for run in runs:
        groups.setdefault((run.workload, run.optimizer), []).append(run)
    rows = []
    for (workload, optimizer), group in groups.items():
        hits = [r for r in group if r.steps_to_target is not None]
        metrics = [r.final_metric for r in group if not math.isnan(r.final_metric)]
        rows.append(
            Summary(
                workload=workload,
                optimizer=optimizer,
                lr=group[0].lr,
                runs=len(group),
                reached=len(hits),
                diverged=sum(r.diverged for r in group),
                median_steps_to_target=_median([r.steps_to_target for r in hits]),
                median_seconds_to_target=_median([r.seconds_to_target for r in hits]),
                median_final_loss=_median([r.final_loss for r in group]),
                median_final_metric=_median(metrics),
            )
        )
    return rows


def _median(values: Sequence[float | int | None]) -> float:
    return float(statistics.median(values)) if values else math.nan


def format_summary(rows: Sequence[Summary]) -> str:
    """The summaries as a Markdown table (``-`` where no run reached the target)."""
    lines = [
        "| workload | optimizer | lr | reached | diverged | steps to target | s to target "
        "| final train loss | final metric |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.workload} | {r.optimizer} | {r.lr:g} | {r.reached}/{r.runs} | "
            f"{r.diverged}/{r.runs} | {_cell(r.median_steps_to_target, '.0f')} | "
            f"{_cell(r.median_seconds_to_target, '.2f')} | {_cell(r.median_final_loss, '.4f')} | "
            f"{_cell(r.median_final_metric, '.4f')} |"
        )
    return "\n".join(lines)


def _cell(value: float, spec: str) -> str:
    """``value`` formatted, or ``-`` where no run gave one (NaN)."""
    return "-" if math.isnan(value) else format(value, spec)
