"""A schedule's load_state_dict refuses, before anything changes, the state of another schedule
or of an optimizer with another number of param groups (it loaded, then failed at the next
step, or stepped to a meaningless learning rate)."""

from __future__ import annotations

import copy

import pytest
import torch

from torchopt_edu.lr_scheduler import (
    CyclicLR,
    ExponentialDecay,
    OneCycleLR,
    ReduceLROnPlateau,
    StepDecay,
    WarmupCosine,
)


def _optimizer(groups: int) -> torch.optim.Optimizer:
    params = [{"params": [torch.zeros(2, requires_grad=True)]} for _ in range(groups)]
    return torch.optim.SGD(params, lr=0.1, momentum=0.9)


BUILDERS = {
    "CyclicLR": lambda o: CyclicLR(o, 0.01, 0.1),
    "WarmupCosine": lambda o: WarmupCosine(o, 2, 10),
    "OneCycleLR": lambda o: OneCycleLR(o, 1.0, 10),
    "StepDecay": lambda o: StepDecay(o, 3),
    "ExponentialDecay": lambda o: ExponentialDecay(o, 0.9),
    "ReduceLROnPlateau": lambda o: ReduceLROnPlateau(o),
}


@pytest.mark.parametrize("name", BUILDERS)
def test_a_state_of_another_schedule_is_refused_and_nothing_changes(name):
    schedule = BUILDERS[name](_optimizer(1))
    before = copy.deepcopy(schedule.state_dict())
    other = next(n for n in BUILDERS if n != name)
    with pytest.raises(ValueError, match=f"{name}.load_state_dict: the state has keys"):
        schedule.load_state_dict(BUILDERS[other](_optimizer(1)).state_dict())
    assert schedule.state_dict() == before


@pytest.mark.parametrize("name", BUILDERS)
def test_a_state_for_another_number_of_groups_is_refused_and_nothing_changes(name):
    schedule = BUILDERS[name](_optimizer(1))
    before = copy.deepcopy(schedule.state_dict())
    with pytest.raises(ValueError, match="entries, the optimizer has 1 param groups"):
        schedule.load_state_dict(BUILDERS[name](_optimizer(2)).state_dict())
    assert schedule.state_dict() == before
