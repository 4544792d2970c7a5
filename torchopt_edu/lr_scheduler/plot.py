"""Learning-rate schedules as curves: learning rate against step.

``simulate_schedule`` runs a schedule on a throw-away copy of its optimizer and returns the
learning rates; ``plot_schedule`` draws them with matplotlib (the optional "viz" extra:
``pip install torchopt-edu[viz]``) and can save the figure. Neither touches the optimizer or
scheduler you pass in.

A schedule is given either as a factory ``lambda opt: StepDecay(opt)`` together with
``optimizer=``, or as a built scheduler. A factory draws the whole schedule: it is built on a copy
of the optimizer as it was before any schedule ran (each group's ``initial_lr``), so it draws the
same curve before and after training. A built scheduler continues from its current state: it
shows what the next steps will do. Use factories to compare several schedules for one optimizer:
every scheduler writes into its optimizer's param groups when it is built, so several built on the
same optimizer would overwrite each other's settings.
"""

from __future__ import annotations

import copy
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, SupportsFloat

import torch
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler
from torch.optim.lr_scheduler import ReduceLROnPlateau as TorchReduceLROnPlateau

from torchopt_edu.lr_scheduler.plateau import ReduceLROnPlateau
from torchopt_edu.optim._checks import check_int

if TYPE_CHECKING:
    from matplotlib.axes import Axes

__all__ = ["Schedule", "plot_schedule", "simulate_schedule"]

Schedule = LRScheduler | Callable[[Optimizer], LRScheduler]
"""A built scheduler, or a factory that builds one on the optimizer it is given."""


def _throwaway_optimizer(optimizer: Optimizer, *, restart: bool) -> Optimizer:
    """A bare ``Optimizer`` with a copy of ``optimizer``'s hyper-parameters and tiny parameters.

    Schedulers read and write only ``param_groups`` (and ``defaults``), so this stands in for any
    optimizer at the cost of a few bytes, whatever the size of the model. With ``restart``, each
    group's ``lr`` is its ``initial_lr`` (the rate before any scheduler ran) and ``initial_lr`` is
    dropped, so that a schedule built on it starts where it would have started on the fresh
    optimizer, not from the rate the last run left behind.
    """
    groups = []
    for group in optimizer.param_groups:
        hyper_parameters = copy.deepcopy({k: v for k, v in group.items() if k != "params"})
        if restart and "initial_lr" in hyper_parameters:
            hyper_parameters["lr"] = hyper_parameters.pop("initial_lr")
        groups.append({**hyper_parameters, "params": [torch.zeros(1, requires_grad=True)]})
    return Optimizer(groups, copy.deepcopy(optimizer.defaults))


def _simulation_copy(schedule: Schedule, optimizer: Optimizer | None) -> LRScheduler:
    """A scheduler equal to ``schedule`` that drives a throw-away optimizer."""
    if isinstance(schedule, LRScheduler):
        stand_in = _throwaway_optimizer(schedule.optimizer, restart=False)
        # Deep-copy the scheduler (and any it wraps) with the stand-in in place of the optimizer.
        return copy.deepcopy(schedule, memo={id(schedule.optimizer): stand_in})
    if not callable(schedule):
        raise TypeError(
            "schedule must be an LRScheduler or a callable building one from an optimizer, "
            f"got {type(schedule).__name__}"
        )
    if not isinstance(optimizer, Optimizer):
        raise TypeError(
            "a schedule factory needs optimizer=<torch.optim.Optimizer> to build on, "
            f"got {type(optimizer).__name__}"
        )
    scheduler = schedule(_throwaway_optimizer(optimizer, restart=True))
    if not isinstance(scheduler, LRScheduler):
        raise TypeError(
            f"the schedule factory returned {type(scheduler).__name__}, not an LRScheduler"
        )
    return scheduler


def simulate_schedule(
    schedule: Schedule,
    steps: int,
    *,
    optimizer: Optimizer | None = None,
    metrics: Sequence[SupportsFloat] | None = None,
) -> list[list[float]]:
    """Learning rates of every param group at steps ``0 .. steps - 1``, from a throw-away copy.

    Step ``t`` is the value after ``t`` calls of ``scheduler.step()``: for a fresh scheduler,
    ``values[t][g]`` is the learning rate group ``g`` uses for optimizer step ``t``.

    Args:
        schedule: a factory ``Callable[[Optimizer], LRScheduler]``, built on a copy of
            ``optimizer`` whose learning rates are each group's ``initial_lr`` (its rate before
            any scheduler ran), or a built scheduler (simulated from its current state; it is
            not changed).
        steps: number of values to return, ``>= 1``.
        optimizer: the optimizer a factory is built for (its param groups are copied, never
            changed); ignored for a built scheduler.
        metrics: for ``ReduceLROnPlateau`` (ours or torch's), the metric seen after each step:
            at least ``steps - 1`` values.

    Returns:
        ``values[t][g]``: the learning rate of param group ``g`` at step ``t``.
    """
    steps = check_int("steps", steps, minimum=1)
    scheduler = _simulation_copy(schedule, optimizer)
    needs_metric = isinstance(scheduler, (ReduceLROnPlateau, TorchReduceLROnPlateau))
    if needs_metric and (metrics is None or len(metrics) < steps - 1):
        given = "none" if metrics is None else len(metrics)
        raise ValueError(
            f"{type(scheduler).__name__} needs metrics, one per step: at least {steps - 1} "
            f"for steps={steps}, got {given}"
        )

    def learning_rates() -> list[float]:
        return [float(group["lr"]) for group in scheduler.optimizer.param_groups]

    values = [learning_rates()]
    with warnings.catch_warnings():
        # The stand-in optimizer never steps, so torch's "call optimizer.step() first" advice
        # does not apply here.
        warnings.filterwarnings("ignore", message=r".*optimizer\.step\(\)", category=UserWarning)
        for t in range(steps - 1):
            if needs_metric:
                scheduler.step(metrics[t])  # type: ignore[index]
            else:
                scheduler.step()
            values.append(learning_rates())
    return values


def plot_schedule(
    schedules: Schedule | Mapping[str, Schedule],
    steps: int,
    *,
    optimizer: Optimizer | None = None,
    metrics: Sequence[SupportsFloat] | None = None,
    group: int = 0,
    ax: Axes | None = None,
    log_scale: bool = False,
    path: str | os.PathLike[str] | None = None,
) -> Axes:
    """Draw learning rate against step for one or more schedules, simulated on throw-away copies.

    Example::

        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        ax = plot_schedule(
            {"step": StepDecay, "1cycle": lambda o: OneCycleLR(o, 0.5, total_steps=300)},
            steps=300,
            optimizer=opt,
            path="runs/schedules.png",
        )

    Factories draw the whole schedule from each group's initial learning rate, so the plot is
    the same before and after training with ``opt``; a built scheduler is drawn from where it
    stands (see :func:`simulate_schedule`). The function neither shows the figure nor closes it:
    it returns the axes for further changes (``ax.set_title(...)``, ``ax.figure.savefig(...)``)
    and, with ``path``, also saves the figure there. A new figure uses matplotlib's constrained
    layout and a saved one a tight bounding box, so no axis label is cut off.

    Args:
        schedules: one schedule, or ``{label: schedule}`` for several; a schedule is a built
            scheduler or a factory (see :func:`simulate_schedule`).
        steps: number of steps to draw.
        optimizer: the optimizer factories are built for (never changed).
        metrics: the metric sequence for ``ReduceLROnPlateau`` schedules.
        group: index of the param group to draw. Default: 0.
        ax: matplotlib axes to draw on; a new figure when ``None``.
        log_scale: logarithmic learning-rate axis.
        path: where to save the figure (any format matplotlib infers from the suffix, e.g.
            ``.png``, ``.pdf``, ``.svg``); missing parent folders are created. Default: not saved.

    Returns:
        The axes drawn on.
    """
    try:
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise ImportError(
            "plot_schedule needs matplotlib: pip install torchopt-edu[viz]"
        ) from error
    if path is not None and not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a file path (str or os.PathLike), got {path!r}")
    if not isinstance(schedules, Mapping):
        schedules = {_label(schedules): schedules}
    curves = {
        label: simulate_schedule(schedule, steps, optimizer=optimizer, metrics=metrics)
        for label, schedule in schedules.items()
    }
    for label, values in curves.items():
        if not 0 <= group < len(values[0]):
            raise ValueError(
                f"group must be in [0, {len(values[0])}) for schedule {label!r}, got {group}"
            )
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.5), dpi=80, layout="constrained")
    for label, values in curves.items():
        ax.plot(range(steps), [lrs[group] for lrs in values], label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("learning rate")
    if log_scale:
        ax.set_yscale("log")
    ax.legend()
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        ax.figure.savefig(path, bbox_inches="tight")
    return ax


def _label(schedule: Schedule) -> str:
    return type(schedule).__name__ if isinstance(schedule, LRScheduler) else "schedule"
