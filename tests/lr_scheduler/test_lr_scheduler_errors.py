"""Invalid arguments raise an error that names the argument, and leave the optimizer untouched."""

from __future__ import annotations

import copy

import pytest
import torch
from test_lr_scheduler_cases import hyper_parameters, make_optimizer

from torchopt_edu.lr_scheduler import (
    CyclicLR,
    ExponentialDecay,
    OneCycleLR,
    ReduceLROnPlateau,
    StepDecay,
    WarmupCosine,
)

# (id, build, error type, message pattern)
INVALID = [
    (
        "step_size zero",
        lambda o: StepDecay(o, step_size=0),
        ValueError,
        "step_size must be >= 1, got 0",
    ),
    ("step_size negative", lambda o: StepDecay(o, step_size=-3), ValueError, "step_size.*-3"),
    (
        "step_size float",
        lambda o: StepDecay(o, step_size=2.5),
        TypeError,
        "step_size must be an int",
    ),
    (
        "step gamma zero",
        lambda o: StepDecay(o, gamma=0.0),
        ValueError,
        r"gamma must lie in \(0.0, 1.0\], got 0.0",
    ),
    ("step gamma above one", lambda o: StepDecay(o, gamma=1.5), ValueError, "gamma.*1.5"),
    ("exp gamma negative", lambda o: ExponentialDecay(o, gamma=-0.5), ValueError, "gamma.*-0.5"),
    ("exp gamma nan", lambda o: ExponentialDecay(o, gamma=float("nan")), ValueError, "gamma.*nan"),
    (
        "exp gamma string",
        lambda o: ExponentialDecay(o, gamma="0.9"),
        TypeError,
        "gamma must be a real number",
    ),
    (
        "exp k negative",
        lambda o: ExponentialDecay.continuous(o, k=-0.1),
        ValueError,
        "k must lie in.*-0.1",
    ),
    (
        "exp k so large that gamma underflows",
        lambda o: ExponentialDecay.continuous(o, k=1000.0),
        ValueError,
        r"k must be small enough that exp\(-k\) > 0.*1000.0",
    ),
    (
        "cyclic max below base",
        lambda o: CyclicLR(o, 0.1, 0.05),
        ValueError,
        "max_lr must be >= base_lr",
    ),
    (
        "cyclic max below group lr",
        lambda o: CyclicLR(o, None, [0.5, 0.01]),
        ValueError,
        "max_lr.*0.01.*base_lr=0.02",
    ),
    (
        "cyclic unknown mode",
        lambda o: CyclicLR(o, 0.01, 0.1, mode="sawtooth"),
        ValueError,
        "mode.*'sawtooth'",
    ),
    (
        "cyclic step size zero",
        lambda o: CyclicLR(o, 0.01, 0.1, step_size_up=0),
        ValueError,
        "step_size_up.*0",
    ),
    (
        "cyclic step down negative",
        lambda o: CyclicLR(o, 0.01, 0.1, 4, -1),
        ValueError,
        "step_size_down.*-1",
    ),
    (
        "cyclic gamma",
        lambda o: CyclicLR(o, 0.01, 0.1, mode="exp_range", gamma=1.01),
        ValueError,
        "gamma.*1.01",
    ),
    (
        "cyclic list length",
        lambda o: CyclicLR(o, [0.01], 0.1),
        ValueError,
        "base_lr has 1 values but the optimizer has 2",
    ),
    (
        "cyclic momentum order",
        lambda o: CyclicLR(o, 0.01, 0.1, cycle_momentum=True, base_momentum=0.95, max_momentum=0.9),
        ValueError,
        "max_momentum must be >= base_momentum",
    ),
    (
        "cyclic momentum range",
        lambda o: CyclicLR(o, 0.01, 0.1, cycle_momentum=True, max_momentum=1.0),
        ValueError,
        r"max_momentum must lie in \[0.0, 1.0\)",
    ),
    (
        "plateau unknown mode",
        lambda o: ReduceLROnPlateau(o, mode="lowest"),
        ValueError,
        "mode must be 'min' or 'max', got 'lowest'",
    ),
    (
        "plateau threshold mode",
        lambda o: ReduceLROnPlateau(o, threshold_mode="pct"),
        ValueError,
        "threshold_mode.*'pct'",
    ),
    ("plateau factor one", lambda o: ReduceLROnPlateau(o, factor=1.0), ValueError, "factor.*1.0"),
    (
        "plateau patience",
        lambda o: ReduceLROnPlateau(o, patience=-1),
        ValueError,
        r"^patience must be >= 0, got -1$",
    ),
    (
        "plateau cooldown negative",
        lambda o: ReduceLROnPlateau(o, cooldown=-1),
        ValueError,
        r"^cooldown must be >= 0, got -1$",
    ),
    (
        "plateau cooldown",
        lambda o: ReduceLROnPlateau(o, cooldown=1.5),
        TypeError,
        "cooldown must be an int",
    ),
    (
        "plateau threshold",
        lambda o: ReduceLROnPlateau(o, threshold=-1e-4),
        ValueError,
        r"^threshold must lie in \[0.0, inf\), got -0.0001$",
    ),
    (
        "plateau min_lr per group",
        lambda o: ReduceLROnPlateau(o, min_lr=[0.0, -1.0]),
        ValueError,
        r"min_lr\[1\].*-1.0",
    ),
    (
        "plateau min_lr length",
        lambda o: ReduceLROnPlateau(o, min_lr=[0.0] * 3),
        ValueError,
        "min_lr has 3 values",
    ),
    (
        "plateau eps",
        lambda o: ReduceLROnPlateau(o, eps=-1e-9),
        ValueError,
        r"^eps must lie in \[0.0, inf\), got -1e-09$",
    ),
    (
        "plateau factor zero",
        lambda o: ReduceLROnPlateau(o, factor=0.0),
        ValueError,
        r"^factor must lie in \(0.0, 1.0\), got 0.0$",
    ),
    (
        "warmup longer than run",
        lambda o: WarmupCosine(o, warmup_steps=100, total_steps=50),
        ValueError,
        "warmup_steps must be smaller than total_steps, got warmup_steps=100",
    ),
    ("warmup as long as run", lambda o: WarmupCosine(o, 50, 50), ValueError, "warmup_steps.*50"),
    ("warmup negative", lambda o: WarmupCosine(o, -1, 50), ValueError, "warmup_steps.*-1"),
    (
        "warmup floor above base",
        lambda o: WarmupCosine(o, 5, 50, min_lr=0.05),
        ValueError,
        "min_lr must not exceed.*0.02",
    ),
    (
        "warmup start factor",
        lambda o: WarmupCosine(o, 5, 50, start_factor=2.0),
        ValueError,
        "start_factor.*2.0",
    ),
    (
        "one-cycle no length",
        lambda o: OneCycleLR(o, 0.1),
        ValueError,
        "total_steps, or both epochs and steps_per_epoch",
    ),
    (
        "one-cycle zero steps",
        lambda o: OneCycleLR(o, 0.1, total_steps=0),
        ValueError,
        "total_steps.*0",
    ),
    (
        "one-cycle epochs",
        lambda o: OneCycleLR(o, 0.1, epochs=0, steps_per_epoch=5),
        ValueError,
        "epochs.*0",
    ),
    (
        "one-cycle max_lr zero",
        lambda o: OneCycleLR(o, 0.0, total_steps=10),
        ValueError,
        "max_lr.*0.0",
    ),
    (
        "one-cycle pct_start",
        lambda o: OneCycleLR(o, 0.1, total_steps=10, pct_start=1.2),
        ValueError,
        "pct_start.*1.2",
    ),
    (
        "one-cycle three-phase pct",
        lambda o: OneCycleLR(o, 0.1, total_steps=10, pct_start=0.6, three_phase=True),
        ValueError,
        r"pct_start must lie in \[0.0, 0.5\]",
    ),
    (
        "one-cycle anneal",
        lambda o: OneCycleLR(o, 0.1, total_steps=10, anneal_strategy="exp"),
        ValueError,
        "anneal_strategy.*'exp'",
    ),
    (
        "one-cycle div_factor",
        lambda o: OneCycleLR(o, 0.1, total_steps=10, div_factor=0.5),
        ValueError,
        "div_factor.*0.5",
    ),
    (
        "not an optimizer",
        lambda o: StepDecay(o.param_groups),
        TypeError,
        "optimizer must be a torch.optim.Optimizer, got list",
    ),
]


@pytest.mark.parametrize("optimizer_name", ["torch.SGD", "ours.Adam"])
@pytest.mark.parametrize(
    "build, error, match", [case[1:] for case in INVALID], ids=[case[0] for case in INVALID]
)
def test_invalid_argument_is_named_and_nothing_changes(optimizer_name, build, error, match):
    optimizer = make_optimizer(optimizer_name)  # groups with lr 0.1 and 0.02
    before = hyper_parameters(optimizer)
    with pytest.raises(error, match=match):
        build(optimizer)
    assert hyper_parameters(optimizer) == before
    assert "initial_lr" not in optimizer.param_groups[0]


def test_plateau_with_a_group_added_later_says_how_to_fix_it_and_changes_nothing():
    optimizer = make_optimizer("torch.SGD")
    scheduler = ReduceLROnPlateau(optimizer, patience=0, min_lr=[0.0, 0.0])
    scheduler.step(1.0)
    optimizer.add_param_group({"params": [], "lr": 0.5})
    state = scheduler.state_dict()
    with pytest.raises(RuntimeError, match="3 param groups but min_lr has 2 values"):
        scheduler.step(2.0)
    assert scheduler.state_dict() == state


def test_plateau_with_one_min_lr_floors_groups_added_later_too():
    optimizer = make_optimizer("torch.SGD")
    scheduler = ReduceLROnPlateau(optimizer, factor=0.5, patience=0, min_lr=0.3)
    optimizer.add_param_group({"params": [], "lr": 0.5})
    scheduler.step(1.0)
    scheduler.step(2.0)
    assert scheduler.get_last_lr() == [0.1, 0.02, 0.3]


@pytest.mark.parametrize("metric", [None, "abc", torch.ones(2)])
def test_plateau_step_names_a_metric_that_is_not_a_number(metric):
    schedule = ReduceLROnPlateau(torch.optim.SGD([torch.zeros(2, requires_grad=True)], lr=0.1))
    before = copy.deepcopy(schedule.state_dict())
    with pytest.raises(TypeError, match=r"step\(metrics\) needs the epoch's metric as a number"):
        schedule.step(metric)
    assert schedule.state_dict() == before


def test_plateau_inside_sequential_lr_says_it_needs_the_metric_and_changes_nothing():
    optimizer = torch.optim.SGD([torch.zeros(2, requires_grad=True)], lr=0.1)
    plateau = ReduceLROnPlateau(optimizer)
    sequential = torch.optim.lr_scheduler.SequentialLR(
        optimizer, [StepDecay(optimizer, 2, 0.5), plateau], milestones=[2]
    )
    optimizer.step()
    sequential.step()
    lr = optimizer.param_groups[0]["lr"]
    optimizer.step()
    with pytest.raises(TypeError, match=r"ReduceLROnPlateau cannot take over from SequentialLR"):
        sequential.step()  # the milestone: the plateau schedule takes over
    assert optimizer.param_groups[0]["lr"] == lr

    first = ReduceLROnPlateau(optimizer)  # first in line: SequentialLR steps it when built
    with pytest.raises(TypeError, match=r"got none; .* call scheduler.step\(metric\) yourself"):
        torch.optim.lr_scheduler.SequentialLR(
            optimizer, [first, StepDecay(optimizer, 2, 0.5)], milestones=[2]
        )
