"""Same learning rates, momentums and trained weights as torch's schedulers for the same settings.

Each test trains the same small problem twice for a few hundred steps, once under our schedule
and once under torch.optim.lr_scheduler's, with our optimizers and with torch.optim's.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.optim.lr_scheduler as torch_sched
from test_lr_scheduler_cases import (
    OPTIMIZERS,
    assert_same_trace,
    make_optimizer,
    metric_sequence,
    train,
)

from torchopt_edu.lr_scheduler import (
    CyclicLR,
    ExponentialDecay,
    OneCycleLR,
    ReduceLROnPlateau,
    StepDecay,
    WarmupCosine,
)

STEPS = 300
# Formula schedules compute in a different order than torch's recursions: equal to rounding.
RTOL = 1e-12


def run_both(optimizer_name, build_ours, build_torch, steps=STEPS, metrics=None):
    ours_opt, torch_opt = make_optimizer(optimizer_name), make_optimizer(optimizer_name)
    ours_trace = train(ours_opt, build_ours(ours_opt), steps, metrics)
    torch_trace = train(torch_opt, build_torch(torch_opt), steps, metrics)
    return ours_trace, torch_trace


@pytest.mark.parametrize("optimizer_name", OPTIMIZERS)
@pytest.mark.parametrize("step_size, gamma", [(10, 0.96), (7, 0.5), (1, 0.99), (4, 1.0)])
def test_step_decay_equals_steplr(optimizer_name, step_size, gamma):
    traces = run_both(
        optimizer_name,
        lambda opt: StepDecay(opt, step_size, gamma),
        lambda opt: torch_sched.StepLR(opt, step_size, gamma),
    )
    assert_same_trace(*traces)  # the same multiplications: bit for bit


@pytest.mark.parametrize("optimizer_name", OPTIMIZERS)
@pytest.mark.parametrize("gamma", [0.96, 0.99, 1.0])
def test_exponential_decay_equals_exponentiallr(optimizer_name, gamma):
    traces = run_both(
        optimizer_name,
        lambda opt: ExponentialDecay(opt, gamma),
        lambda opt: torch_sched.ExponentialLR(opt, gamma),
    )
    assert_same_trace(*traces)


@pytest.mark.parametrize("optimizer_name", OPTIMIZERS)
def test_continuous_exponential_decay_equals_exponentiallr(optimizer_name):
    k = 0.03
    traces = run_both(
        optimizer_name,
        lambda opt: ExponentialDecay.continuous(opt, k),
        lambda opt: torch_sched.ExponentialLR(opt, math.exp(-k)),
    )
    assert_same_trace(*traces)


@pytest.mark.parametrize("optimizer_name", OPTIMIZERS)
@pytest.mark.parametrize("cycle_momentum", [False, True], ids=["lr-only", "momentum"])
@pytest.mark.parametrize(
    "mode, gamma", [("triangular", 1.0), ("triangular2", 1.0), ("exp_range", 0.995)]
)
def test_cyclic_lr_equals_torch(optimizer_name, cycle_momentum, mode, gamma):
    settings = dict(
        base_lr=[0.01, 0.002],
        max_lr=[0.1, 0.05],
        step_size_up=7,
        step_size_down=13,  # asymmetric: both halves of the triangle are exercised
        mode=mode,
        gamma=gamma,
        cycle_momentum=cycle_momentum,
        base_momentum=[0.8, 0.85],
        max_momentum=0.95,
    )
    traces = run_both(
        optimizer_name,
        lambda opt: CyclicLR(opt, **settings),
        lambda opt: torch_sched.CyclicLR(opt, **settings),
    )
    assert_same_trace(*traces, rtol=RTOL)


PLATEAU_SETTINGS = [
    dict(mode="min", threshold_mode="rel", patience=3, cooldown=0, threshold=1e-3),
    dict(mode="min", threshold_mode="abs", patience=2, cooldown=4, threshold=1e-2),
    dict(mode="max", threshold_mode="rel", patience=5, cooldown=2, threshold=1e-4),
    dict(mode="max", threshold_mode="abs", patience=0, cooldown=1, threshold=0.0),
]


@pytest.mark.parametrize("optimizer_name", OPTIMIZERS)
@pytest.mark.parametrize(
    "settings", PLATEAU_SETTINGS, ids=lambda s: f"{s['mode']}-{s['threshold_mode']}"
)
def test_reduce_lr_on_plateau_equals_torch(optimizer_name, settings):
    losses = metric_sequence(STEPS)
    metrics = losses if settings["mode"] == "min" else [3.0 - loss for loss in losses]
    settings = dict(settings, factor=0.5, min_lr=[1e-3, 1e-4], eps=1e-9)
    ours_trace, torch_trace = run_both(
        optimizer_name,
        lambda opt: ReduceLROnPlateau(opt, **settings),
        lambda opt: torch_sched.ReduceLROnPlateau(opt, **settings),
        metrics=metrics,
    )
    assert_same_trace(ours_trace, torch_trace)
    reductions = sum(a != b for a, b in zip(ours_trace.lrs[:-1], ours_trace.lrs[1:], strict=True))
    assert reductions >= 3  # the metric sequence really exercises the schedule


@pytest.mark.parametrize("optimizer_name", OPTIMIZERS)
@pytest.mark.parametrize("cycle_momentum", [False, True], ids=["lr-only", "momentum"])
@pytest.mark.parametrize("anneal_strategy", ["cos", "linear"])
@pytest.mark.parametrize("three_phase", [False, True], ids=["two-phase", "three-phase"])
def test_one_cycle_lr_equals_torch(optimizer_name, cycle_momentum, anneal_strategy, three_phase):
    settings = dict(
        max_lr=[0.5, 0.1],
        total_steps=STEPS,
        pct_start=0.25,
        anneal_strategy=anneal_strategy,
        cycle_momentum=cycle_momentum,
        base_momentum=0.8,
        max_momentum=[0.95, 0.9],
        div_factor=20.0,
        final_div_factor=100.0,
        three_phase=three_phase,
    )
    traces = run_both(
        optimizer_name,
        lambda opt: OneCycleLR(opt, **settings),
        lambda opt: torch_sched.OneCycleLR(opt, **settings),
    )
    assert_same_trace(*traces, rtol=RTOL)


@pytest.mark.parametrize("optimizer_name", OPTIMIZERS)
@pytest.mark.parametrize("warmup_steps", [0, 1, 30])
def test_warmup_cosine_equals_linear_then_cosine_annealing(optimizer_name, warmup_steps):
    total_steps, start_factor, min_lr = STEPS - 1, 0.1, 1e-4

    def torch_schedule(opt):
        warmup = torch_sched.LinearLR(opt, start_factor, 1.0, total_iters=warmup_steps)
        cosine = torch_sched.CosineAnnealingLR(opt, total_steps - warmup_steps, eta_min=min_lr)
        return torch_sched.SequentialLR(opt, [warmup, cosine], milestones=[warmup_steps])

    def torch_cosine_only(opt):
        return torch_sched.CosineAnnealingLR(opt, total_steps, eta_min=min_lr)

    traces = run_both(
        optimizer_name,
        lambda opt: WarmupCosine(opt, warmup_steps, total_steps, min_lr, start_factor),
        torch_schedule if warmup_steps else torch_cosine_only,
        steps=total_steps + 1,  # the last value is the floor
    )
    # torch's cosine is a recursion whose rounding errors add up over the steps
    assert_same_trace(*traces, rtol=1e-10)


@pytest.mark.parametrize("optimizer_name", OPTIMIZERS)
def test_cyclic_lr_with_base_lr_after_another_schedule_equals_torch(optimizer_name):
    # CyclicLR's base_lr is the bottom of its cycle, not the group's initial_lr: the warm-up
    # before it must still run from the optimizer's own learning rates.
    def schedule(cyclic_class, **extra):
        def build(opt):
            warmup = torch_sched.LinearLR(opt, 0.1, total_iters=10)
            cyclic = cyclic_class(opt, [0.01, 0.002], [0.3, 0.06], step_size_up=7, **extra)
            return torch_sched.SequentialLR(opt, [warmup, cyclic], milestones=[10])

        return build

    ours_trace, torch_trace = run_both(
        optimizer_name,
        schedule(CyclicLR),
        schedule(torch_sched.CyclicLR, cycle_momentum=False),
        steps=60,
    )
    assert_same_trace(ours_trace, torch_trace, rtol=RTOL)
    assert ours_trace.lrs[0] == pytest.approx([0.1 * 0.1, 0.02 * 0.1], rel=RTOL)
    assert ours_trace.lrs[10] == pytest.approx([0.01, 0.002], rel=RTOL)


def test_cyclic_lr_with_base_lr_inside_sequential_lr_gives_torchs_rates():
    lrs = {}
    for name, cyclic_class, extra in [
        ("ours", CyclicLR, {}),
        ("torch", torch_sched.CyclicLR, {"cycle_momentum": False}),
    ]:
        optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
        scheduler = torch_sched.SequentialLR(
            optimizer,
            [
                torch_sched.LinearLR(optimizer, 0.1, total_iters=4),
                cyclic_class(optimizer, 0.001, 0.01, step_size_up=2, **extra),
            ],
            milestones=[4],
        )
        lrs[name] = []
        for _ in range(9):
            lrs[name].append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()
    expected = [0.01, 0.0325, 0.055, 0.0775, 0.001, 0.0055, 0.01, 0.0055, 0.001]
    assert lrs["ours"] == pytest.approx(expected, rel=1e-12)
    assert lrs["ours"] == pytest.approx(lrs["torch"], rel=1e-12)


def test_lone_cyclic_lr_records_base_lr_as_initial_lr_like_torch():
    ours_opt, torch_opt = make_optimizer("ours.SGD"), make_optimizer("torch.SGD")
    CyclicLR(ours_opt, [0.01, 0.002], 0.5, step_size_up=3)
    torch_sched.CyclicLR(torch_opt, [0.01, 0.002], 0.5, step_size_up=3, cycle_momentum=False)
    for ours_group, torch_group in zip(ours_opt.param_groups, torch_opt.param_groups, strict=True):
        assert ours_group["initial_lr"] == torch_group["initial_lr"]
        assert ours_group["lr"] == torch_group["lr"]
