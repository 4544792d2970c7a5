"""Closed forms, exact resume, composition, momentum cycling and the edges of each schedule."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.optim.lr_scheduler as torch_sched
from test_lr_scheduler_cases import (
    GROUP_LRS,
    OPTIMIZERS,
    assert_same_trace,
    checkpoint_round_trip,
    hyper_parameters,
    make_optimizer,
    metric_sequence,
    momentum_of,
    params_of,
    set_gradients,
    train,
)

import torchopt_edu.optim as ours
from torchopt_edu.lr_scheduler import (
    CyclicLR,
    ExponentialDecay,
    OneCycleLR,
    ReduceLROnPlateau,
    StepDecay,
    WarmupCosine,
)

STEPS = 300


def lr_curve(optimizer, scheduler, steps):
    """Learning rates per step, stepping only the scheduler."""
    values = []
    for _ in range(steps):
        values.append([group["lr"] for group in optimizer.param_groups])
        optimizer.step()  # no gradients: parameters stay; keeps torch's call-order check quiet
        scheduler.step()
    return values


def assert_curve_close(values, expected, rtol=1e-12):
    torch.testing.assert_close(
        torch.tensor(values, dtype=torch.float64),
        torch.tensor(expected, dtype=torch.float64),
        rtol=rtol,
        atol=1e-15,
    )


# --------------------------------------------------------------------------- closed forms


@pytest.mark.parametrize("step_size, gamma", [(10, 0.96), (3, 0.5)])
def test_step_decay_recursion_equals_its_closed_form(step_size, gamma):
    optimizer = make_optimizer("ours.SGD")
    scheduler = StepDecay(optimizer, step_size, gamma)
    for t in range(STEPS):
        expected = [lr * gamma ** (t // step_size) for lr in GROUP_LRS]
        assert_curve_close([scheduler.get_last_lr()], [expected])
        assert_curve_close([scheduler._get_closed_form_lr()], [expected])
        optimizer.step()
        scheduler.step()


def test_step_decay_defaults_are_the_documents():
    scheduler = StepDecay(make_optimizer("torch.SGD"))
    assert (scheduler.step_size, scheduler.gamma) == (10, 0.96)


@pytest.mark.parametrize(
    "build, gamma",
    [
        (lambda opt: ExponentialDecay(opt, 0.97), 0.97),
        (lambda opt: ExponentialDecay.continuous(opt, k=0.05), math.exp(-0.05)),
    ],
    ids=["gamma", "continuous"],
)
def test_exponential_decay_recursion_equals_its_closed_forms(build, gamma):
    optimizer = make_optimizer("ours.Adam")
    scheduler = build(optimizer)
    for t in range(STEPS):
        assert_curve_close([scheduler.get_last_lr()], [[lr * gamma**t for lr in GROUP_LRS]])
        assert_curve_close([scheduler._get_closed_form_lr()], [scheduler.get_last_lr()])
        optimizer.step()
        scheduler.step()


def test_continuous_exponential_decay_is_exp_minus_k_t():
    k = 0.02
    optimizer = make_optimizer("ours.SGD")
    values = lr_curve(optimizer, ExponentialDecay.continuous(optimizer, k), STEPS)
    assert_curve_close(values, [[lr * math.exp(-k * t) for lr in GROUP_LRS] for t in range(STEPS)])


@pytest.mark.parametrize("mode", ["triangular", "triangular2", "exp_range"])
def test_cyclic_lr_is_smiths_formula(mode):
    """Smith (2017), symmetric cycle: cycle = floor(1 + t / 2s), x = |t / s - 2 cycle + 1|."""
    step_size, gamma, base, peak = 9, 0.99, [0.01, 0.001], [0.1, 0.003]
    optimizer = make_optimizer("torch.SGD")
    scheduler = CyclicLR(optimizer, base, peak, step_size, mode=mode, gamma=gamma)
    scale = {
        "triangular": lambda cycle, t: 1.0,
        "triangular2": lambda cycle, t: 1 / 2 ** (cycle - 1),
        "exp_range": lambda cycle, t: gamma**t,
    }[mode]
    expected = []
    for t in range(STEPS):
        cycle = math.floor(1 + t / (2 * step_size))
        x = abs(t / step_size - 2 * cycle + 1)
        expected.append(
            [
                lo + (hi - lo) * max(0.0, 1 - x) * scale(cycle, t)
                for lo, hi in zip(base, peak, strict=True)
            ]
        )
    assert_curve_close(lr_curve(optimizer, scheduler, STEPS), expected)


def test_cyclic_lr_without_base_lr_cycles_up_from_each_groups_lr():
    optimizer = make_optimizer("ours.SGD")
    scheduler = CyclicLR(optimizer, None, max_lr=[0.5, 0.2], step_size_up=4)
    values = lr_curve(optimizer, scheduler, 9)
    assert values[0] == list(GROUP_LRS)
    assert_curve_close([values[4], values[8]], [[0.5, 0.2], list(GROUP_LRS)])


def test_warmup_cosine_is_its_formula_with_per_group_floors():
    warmup, total, start, floors = 20, 200, 0.0, [1e-3, 0.0]
    optimizer = make_optimizer("ours.Adam")
    scheduler = WarmupCosine(optimizer, warmup, total, min_lr=floors, start_factor=start)
    expected = []
    for t in range(STEPS):
        if t < warmup:
            expected.append([lr * t / warmup for lr in GROUP_LRS])
        else:
            progress = min(t - warmup, total - warmup) / (total - warmup)
            cosine = (1 + math.cos(math.pi * progress)) / 2
            expected.append(
                [f + (lr - f) * cosine for lr, f in zip(GROUP_LRS, floors, strict=True)]
            )
    values = lr_curve(optimizer, scheduler, STEPS)
    assert_curve_close(values, expected)
    assert values[warmup] == list(GROUP_LRS)
    assert all(row == floors for row in values[total:])  # holds the floor after the run


@pytest.mark.parametrize("three_phase", [False, True])
def test_one_cycle_reaches_its_three_levels(three_phase):
    total, pct, max_lrs, div, final_div = 201, 0.25, [0.4, 0.1], 25.0, 1e4
    optimizer = make_optimizer("torch.Adam")
    scheduler = OneCycleLR(
        optimizer, max_lrs, total, pct_start=pct, div_factor=div, final_div_factor=final_div,
        three_phase=three_phase, base_momentum=0.85, max_momentum=0.95,
    )  # fmt: skip
    lrs, betas = [], []
    for _ in range(total):
        lrs.append([group["lr"] for group in optimizer.param_groups])
        betas.append([momentum_of(group) for group in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    peak = round(pct * total) - 1  # pct * total = 50.25: the peak is at the step closest to it
    assert_curve_close(
        [lrs[0], lrs[-1]], [[m / div for m in max_lrs], [m / div / final_div for m in max_lrs]]
    )
    assert max(lrs, key=lambda row: row[0]) == lrs[peak]
    assert lrs[peak][0] == pytest.approx(max_lrs[0], rel=1e-3)
    assert betas[0] == [0.95, 0.95] and betas[-1] == [0.95, 0.95]
    assert min(b[0] for b in betas) == pytest.approx(0.85, abs=1e-4)
    if three_phase:  # back down to the start level at 2 * pct * total - 2, then on to the end
        assert lrs[2 * peak][0] == pytest.approx(max_lrs[0] / div, rel=1e-2)
    assert all(b[1] == 0.999 for b in [group["betas"] for group in optimizer.param_groups])


def test_one_cycle_stepping_past_total_steps_raises_and_changes_nothing():
    optimizer = make_optimizer("ours.SGD")
    scheduler = OneCycleLR(optimizer, 0.5, total_steps=10)
    for _ in range(10):  # the usual loop: one scheduler step after each of the 10 optimizer steps
        optimizer.step()
        scheduler.step()
    state, groups = scheduler.state_dict(), hyper_parameters(optimizer)
    with pytest.raises(ValueError, match="total_steps=10"):
        scheduler.step()
    assert scheduler.state_dict() == state
    assert hyper_parameters(optimizer) == groups


def test_one_cycle_accepts_epochs_times_steps_per_epoch():
    scheduler = OneCycleLR(make_optimizer("torch.SGD"), 0.5, epochs=3, steps_per_epoch=7)
    assert scheduler.total_steps == 21


@pytest.mark.parametrize("pct_start", [0.0, 0.5 / 40])
def test_one_cycle_with_an_empty_first_phase_matches_torch(pct_start):
    """pct_start * T < 1: the rise ends before step 0; torch starts down from the peak."""
    optimizer, reference = make_optimizer("ours.SGD"), make_optimizer("torch.SGD")
    ours_schedule = OneCycleLR(optimizer, [0.4, 0.1], total_steps=40, pct_start=pct_start)
    torch_schedule = torch_sched.OneCycleLR(
        reference, [0.4, 0.1], total_steps=40, pct_start=pct_start
    )
    assert_curve_close(
        lr_curve(optimizer, ours_schedule, 40), lr_curve(reference, torch_schedule, 40)
    )


@pytest.mark.parametrize("three_phase", [False, True])
def test_one_cycle_whose_rise_is_one_step_starts_at_the_peak(three_phase):
    """pct_start * T = 1: the rise ends at step 0, an empty phase; torch divides 0 by 0 here.

    Steps 0 .. T-1 then anneal (cos) from the peak down to max_lr / div / final_div, or, with
    three phases, from the peak to the start level at step 2 pct T - 2 = 0 (also empty) and on
    to the end: both give the same curve, and the momentum mirrors it from base to max."""
    total, peak, div, final_div = 21, 0.3, 25.0, 1e4
    optimizer = make_optimizer("ours.SGD")
    scheduler = OneCycleLR(
        optimizer, peak, total_steps=total, pct_start=1 / total, div_factor=div,
        final_div_factor=final_div, three_phase=three_phase,
    )  # fmt: skip
    lrs, momentums = [], []
    for _ in range(total):
        lrs.append(optimizer.param_groups[0]["lr"])
        momentums.append(optimizer.param_groups[0]["momentum"])
        optimizer.step()
        scheduler.step()
    end = peak / div / final_div
    start = end if not three_phase else peak / div
    expected = [
        end + (peak - end) / 2 * (1 + math.cos(math.pi * t / (total - 1))) for t in range(total)
    ]
    if three_phase:  # peak -> start in an empty phase at step 0, then start -> end
        expected = [peak] + [
            end + (start - end) / 2 * (1 + math.cos(math.pi * t / (total - 1)))
            for t in range(1, total)
        ]
    assert lrs == pytest.approx(expected, rel=1e-12)
    assert momentums[0] == pytest.approx(0.85) and momentums[-1] == pytest.approx(0.95)


# --------------------------------------------------------------------------- ReduceLROnPlateau


@pytest.mark.parametrize("patience, cooldown", [(0, 0), (2, 0), (3, 2)])
def test_plateau_on_a_flat_metric_reduces_on_a_fixed_rhythm(patience, cooldown):
    """Epoch 1 sets the best; reductions then come after epochs 1 + (p + 1) + k (c + p + 1)."""
    factor, epochs = 0.5, 40
    optimizer = make_optimizer("ours.SGD")
    scheduler = ReduceLROnPlateau(
        optimizer, factor=factor, patience=patience, cooldown=cooldown, eps=0.0
    )
    reduction_epochs = range(1 + patience + 1, epochs + 1, cooldown + patience + 1)
    for epoch in range(1, epochs + 1):
        scheduler.step(1.0)
        done = sum(1 for e in reduction_epochs if e <= epoch)
        assert scheduler.get_last_lr() == pytest.approx([lr * factor**done for lr in GROUP_LRS])


def test_plateau_floors_each_group_at_its_min_lr_and_skips_tiny_changes():
    optimizer = make_optimizer("torch.SGD")
    min_lrs = [0.05, 0.015]
    scheduler = ReduceLROnPlateau(optimizer, factor=0.5, patience=0, min_lr=min_lrs, eps=1e-3)
    for metric in [1.0, 2.0, 2.0, 2.0]:
        scheduler.step(metric)
    assert scheduler.get_last_lr() == min_lrs  # 0.1 -> 0.05; 0.02 -> 0.015 (floor), then no change
    optimizer.param_groups[1]["lr"] = 0.0155
    scheduler.step(2.0)  # 0.0155 -> 0.015 is a change below eps: skipped
    assert scheduler.get_last_lr() == [0.05, 0.0155]


def test_plateau_relative_threshold_is_a_fraction_of_the_best_for_negative_metrics():
    optimizer = make_optimizer("torch.SGD")
    scheduler = ReduceLROnPlateau(optimizer, mode="min", threshold=0.1, patience=5)
    scheduler.step(-10.0)
    scheduler.step(-9.5)  # worse: torch's best * (1 - threshold) = -9 would call it better
    assert (scheduler.best, scheduler.num_bad_epochs) == (-10.0, 1)
    scheduler.step(-10.5)  # only 5 % better: not enough
    assert (scheduler.best, scheduler.num_bad_epochs) == (-10.0, 2)
    scheduler.step(-11.5)
    assert (scheduler.best, scheduler.num_bad_epochs) == (-11.5, 0)


def test_plateau_never_counts_a_non_finite_metric_as_progress():
    optimizer = make_optimizer("torch.SGD")
    scheduler = ReduceLROnPlateau(optimizer, patience=1)
    scheduler.step(float("nan"))
    assert scheduler.best is None and scheduler.num_bad_epochs == 1
    scheduler.step(torch.tensor(2.0))  # a zero-dim tensor metric works too
    assert scheduler.best == 2.0
    scheduler.step(float("-inf"))
    scheduler.step(float("nan"))
    assert scheduler.best == 2.0
    assert scheduler.get_last_lr() == pytest.approx([lr * 0.1 for lr in GROUP_LRS])


def test_plateau_counts_its_epochs_in_last_epoch_like_torch():
    optimizer, reference = make_optimizer("ours.SGD"), make_optimizer("torch.SGD")
    scheduler = ReduceLROnPlateau(optimizer, factor=0.5, patience=1)
    torch_scheduler = torch_sched.ReduceLROnPlateau(reference, factor=0.5, patience=1)
    assert scheduler.last_epoch == torch_scheduler.last_epoch == 0
    for epoch, metric in enumerate(metric_sequence(12), start=1):
        scheduler.step(metric)
        torch_scheduler.step(metric)
        assert scheduler.last_epoch == torch_scheduler.last_epoch == epoch
    assert scheduler.state_dict()["last_epoch"] == 12


def test_plateau_is_an_lrscheduler_with_per_group_base_lrs():
    optimizer = make_optimizer("ours.Adam")
    scheduler = ReduceLROnPlateau(optimizer)
    assert isinstance(scheduler, torch_sched.LRScheduler)
    assert scheduler.base_lrs == list(GROUP_LRS)
    assert scheduler.get_last_lr() == list(GROUP_LRS)


# --------------------------------------------------------------------------- exact resume

RESUMABLE = {
    "StepDecay": lambda opt: StepDecay(opt, 7, 0.5),
    "ExponentialDecay": lambda opt: ExponentialDecay(opt, 0.97),
    "CyclicLR": lambda opt: CyclicLR(
        opt, None, [0.5, 0.1], 9, 13, mode="triangular2", cycle_momentum=True
    ),
    "ReduceLROnPlateau": lambda opt: ReduceLROnPlateau(opt, factor=0.5, patience=2, cooldown=2),
    "WarmupCosine": lambda opt: WarmupCosine(opt, 10, 90, min_lr=1e-3),
    "OneCycleLR": lambda opt: OneCycleLR(opt, [0.5, 0.1], total_steps=100, three_phase=True),
    "SequentialLR": lambda opt: torch_sched.SequentialLR(
        opt,
        [torch_sched.LinearLR(opt, 0.1, total_iters=10), ExponentialDecay(opt, 0.97)],
        milestones=[10],
    ),
    "ChainedScheduler": lambda opt: torch_sched.ChainedScheduler(
        [StepDecay(opt, 5, 0.5), ExponentialDecay(opt, 0.99)]
    ),
}


@pytest.mark.parametrize("optimizer_name", OPTIMIZERS)
@pytest.mark.parametrize("schedule", RESUMABLE)
def test_resume_from_a_checkpoint_continues_identically(optimizer_name, schedule):
    build, before, after = RESUMABLE[schedule], 37, 63
    metrics = metric_sequence(before + after)

    optimizer = make_optimizer(optimizer_name)
    uninterrupted = train(optimizer, build(optimizer), before + after, metrics)

    optimizer = make_optimizer(optimizer_name)
    scheduler = build(optimizer)
    first_part = train(optimizer, scheduler, before, metrics)
    checkpoint = checkpoint_round_trip(
        {
            "params": [p.detach() for p in params_of(optimizer)],
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
        }
    )
    del optimizer, scheduler

    # A new process: fresh objects, scheduler built before the states are loaded.
    resumed_opt = make_optimizer(optimizer_name, seed=123)
    resumed_scheduler = build(resumed_opt)
    with torch.no_grad():
        for p, saved in zip(params_of(resumed_opt), checkpoint["params"], strict=True):
            p.copy_(saved)
    resumed_opt.load_state_dict(checkpoint["optimizer"])
    resumed_scheduler.load_state_dict(checkpoint["scheduler"])
    second_part = train(resumed_opt, resumed_scheduler, after, metrics, start=before)

    assert first_part.lrs + second_part.lrs == uninterrupted.lrs
    assert first_part.momentums + second_part.momentums == uninterrupted.momentums
    for mine, theirs in zip(second_part.params, uninterrupted.params, strict=True):
        assert torch.equal(mine, theirs)


NUMPY_ARGUMENTS = {
    "StepDecay": lambda opt: StepDecay(opt, np.int64(7), np.float64(0.5)),
    "ExponentialDecay": lambda opt: ExponentialDecay(opt, np.float64(0.97)),
    "ExponentialDecay.continuous": lambda opt: ExponentialDecay.continuous(opt, np.float64(0.03)),
    "CyclicLR": lambda opt: CyclicLR(
        opt,
        np.float64(0.01),
        [np.float64(0.5), np.float64(0.1)],
        np.int64(9),
        np.int64(13),
        mode="exp_range",
        gamma=np.float64(0.99),
        cycle_momentum=True,
        base_momentum=np.float64(0.8),
        max_momentum=np.float64(0.9),
    ),
    "ReduceLROnPlateau": lambda opt: ReduceLROnPlateau(
        opt,
        factor=np.float64(0.5),
        patience=np.int64(2),
        threshold=np.float64(1e-3),
        cooldown=np.int64(1),
        min_lr=np.float64(1e-4),
        eps=np.float64(1e-9),
    ),
    "WarmupCosine": lambda opt: WarmupCosine(
        opt, np.int64(10), np.int64(90), np.float64(1e-3), np.float64(0.1)
    ),
    "OneCycleLR": lambda opt: OneCycleLR(
        opt,
        np.float64(0.5),
        epochs=np.int64(10),
        steps_per_epoch=np.int64(10),
        pct_start=np.float64(0.3),
        base_momentum=np.float64(0.8),
        max_momentum=np.float64(0.9),
        div_factor=np.float64(10.0),
        final_div_factor=np.float64(100.0),
    ),
}


def _plain_numbers(value):
    """Whether ``value`` holds only plain Python numbers, strings and containers of them."""
    if isinstance(value, dict):
        return all(_plain_numbers(item) for item in value.values())
    if isinstance(value, (list, tuple)):
        return all(_plain_numbers(item) for item in value)
    return value is None or type(value) in (bool, int, float, str)


@pytest.mark.parametrize("schedule", NUMPY_ARGUMENTS)
def test_numpy_arguments_give_plain_numbers_and_a_weights_only_checkpoint(schedule):
    build, metrics = NUMPY_ARGUMENTS[schedule], metric_sequence(20)
    optimizer = make_optimizer("ours.SGD")
    scheduler = build(optimizer)
    train(optimizer, scheduler, 20, metrics)
    state = scheduler.state_dict()
    assert _plain_numbers(state), state
    for group in optimizer.param_groups:
        assert type(group["lr"]) is float and type(group["initial_lr"]) is float
        assert type(group["momentum"]) is float
    loaded = checkpoint_round_trip({"scheduler": state, "optimizer": optimizer.state_dict()})
    resumed = build(make_optimizer("ours.SGD"))
    resumed.load_state_dict(loaded["scheduler"])
    assert resumed.state_dict() == state


# --------------------------------------------------------------------------- composition


@pytest.mark.parametrize("optimizer_name", OPTIMIZERS)
def test_chained_scheduler_multiplies_chainable_schedules(optimizer_name):
    ours_opt, torch_opt = make_optimizer(optimizer_name), make_optimizer(optimizer_name)
    ours_chain = torch_sched.ChainedScheduler(
        [StepDecay(ours_opt, 5, 0.5), ExponentialDecay(ours_opt, 0.99)]
    )
    torch_chain = torch_sched.ChainedScheduler(
        [torch_sched.StepLR(torch_opt, 5, 0.5), torch_sched.ExponentialLR(torch_opt, 0.99)]
    )
    assert_same_trace(train(ours_opt, ours_chain, STEPS), train(torch_opt, torch_chain, STEPS))
    values = lr_curve(ours_opt, ours_chain, 1)  # continues at t = STEPS
    assert_curve_close(values, [[lr * 0.5 ** (STEPS // 5) * 0.99**STEPS for lr in GROUP_LRS]])


@pytest.mark.parametrize("optimizer_name", OPTIMIZERS)
def test_sequential_lr_runs_our_schedules_in_turn_like_torchs(optimizer_name):
    def ours_schedule(opt):
        cyclic = CyclicLR(opt, None, [0.3, 0.06], step_size_up=10)  # one cycle, back at the base
        return torch_sched.SequentialLR(opt, [cyclic, StepDecay(opt, 10, 0.5)], milestones=[20])

    def torch_schedule(opt):
        cyclic = torch_sched.CyclicLR(
            opt, list(GROUP_LRS), [0.3, 0.06], step_size_up=10, cycle_momentum=False
        )
        return torch_sched.SequentialLR(opt, [cyclic, torch_sched.StepLR(opt, 10, 0.5)], [20])

    ours_opt, torch_opt = make_optimizer(optimizer_name), make_optimizer(optimizer_name)
    ours_trace = train(ours_opt, ours_schedule(ours_opt), STEPS)
    assert_same_trace(ours_trace, train(torch_opt, torch_schedule(torch_opt), STEPS), rtol=1e-12)
    assert_curve_close(ours_trace.lrs[20:], [
        [lr * 0.5 ** (t // 10) for lr in GROUP_LRS] for t in range(STEPS - 20)
    ])  # fmt: skip


def test_sequential_lr_restarts_a_formula_schedule_at_its_milestone():
    optimizer = make_optimizer("ours.SGD")
    decay, warmup_cosine = ExponentialDecay(optimizer, 0.9), WarmupCosine(optimizer, 5, 50)
    scheduler = torch_sched.SequentialLR(optimizer, [decay, warmup_cosine], milestones=[20])
    reference = make_optimizer("ours.SGD")
    alone = lr_curve(reference, WarmupCosine(reference, 5, 50), 60)
    values = lr_curve(optimizer, scheduler, 80)
    assert_curve_close(values[:20], [[lr * 0.9**t for lr in GROUP_LRS] for t in range(20)])
    assert_curve_close(values[20:], alone)


# --------------------------------------------------------------------------- momentum cycling

MOMENTUM_OPTIMIZERS = {
    "torch.SGD": lambda groups: torch.optim.SGD(groups, momentum=0.9),
    "torch.RMSprop": lambda groups: torch.optim.RMSprop(groups),
    "torch.AdamW": lambda groups: torch.optim.AdamW(groups, betas=(0.9, 0.98)),
    "ours.SGD": lambda groups: ours.SGD(groups),
    "ours.Momentum": lambda groups: ours.Momentum(groups),
    "ours.RMSprop": lambda groups: ours.RMSprop(groups),
    "ours.Adam": lambda groups: ours.Adam(groups, betas=(0.9, 0.98)),
    "ours.AdamW": lambda groups: ours.AdamW(groups, betas=(0.9, 0.98)),
    "ours.Yogi": lambda groups: ours.Yogi(groups, betas=(0.9, 0.98)),
}


@pytest.mark.parametrize("optimizer_name", MOMENTUM_OPTIMIZERS)
@pytest.mark.parametrize(
    "build",
    [
        lambda opt: CyclicLR(opt, None, 1.0, 5, cycle_momentum=True),
        lambda opt: OneCycleLR(opt, 1.0, total_steps=20, pct_start=0.5),
    ],
    ids=["CyclicLR", "OneCycleLR"],
)
def test_momentum_or_beta1_cycles_against_the_learning_rate(optimizer_name, build):
    param = torch.zeros(2, requires_grad=True)
    optimizer = MOMENTUM_OPTIMIZERS[optimizer_name]([{"params": [param], "lr": 0.1}])
    scheduler = build(optimizer)
    lrs, momentums = [], []
    for _ in range(15):
        group = optimizer.param_groups[0]
        lrs.append(group["lr"])
        momentums.append(momentum_of(group))
        param.grad = torch.ones(2)
        optimizer.step()
        scheduler.step()
        if "betas" in group:
            assert group["betas"][1] == 0.98  # beta2 is left alone
    ups = [b > a for a, b in zip(lrs[:-1], lrs[1:], strict=True)]
    assert any(ups) and not all(ups)
    assert ups == [b < a for a, b in zip(momentums[:-1], momentums[1:], strict=True)]


@pytest.mark.parametrize(
    "build",
    [
        lambda opt: CyclicLR(opt, None, 1.0, 5, cycle_momentum=True),
        lambda opt: OneCycleLR(opt, 1.0, total_steps=20),
    ],
    ids=["CyclicLR", "OneCycleLR"],
)
@pytest.mark.parametrize("adagrad", [ours.Adagrad, torch.optim.Adagrad], ids=["ours", "torch"])
def test_momentum_cycling_without_momentum_or_betas_is_a_clear_error(build, adagrad):
    optimizer = adagrad([torch.zeros(2, requires_grad=True)], lr=0.1)
    groups = hyper_parameters(optimizer)
    with pytest.raises(ValueError, match="'momentum' or 'betas'.*Adagrad.*cycle_momentum=False"):
        build(optimizer)
    assert hyper_parameters(optimizer) == groups


def test_schedules_without_momentum_cycling_work_with_adagrad():
    optimizer = ours.Adagrad([torch.zeros(2, requires_grad=True)], lr=0.1)
    cyclic = CyclicLR(optimizer, None, 1.0, 5)
    assert lr_curve(optimizer, cyclic, 6)[5] == [1.0]
    optimizer = ours.Adagrad([torch.zeros(2, requires_grad=True)], lr=0.1)
    one_cycle = OneCycleLR(optimizer, 1.0, total_steps=20, cycle_momentum=False)
    assert lr_curve(optimizer, one_cycle, 1) == [[pytest.approx(1.0 / 25)]]


# --------------------------------------------------------------------------- get_last_lr

EVERY_SCHEDULE = {
    "StepDecay": lambda opt: StepDecay(opt, 3),
    "ExponentialDecay": lambda opt: ExponentialDecay(opt),
    "CyclicLR": lambda opt: CyclicLR(opt, None, 0.5, 4, cycle_momentum=True),
    "WarmupCosine": lambda opt: WarmupCosine(opt, 3, 20),
    "OneCycleLR": lambda opt: OneCycleLR(opt, 0.5, total_steps=20),
}


@pytest.mark.parametrize("schedule", EVERY_SCHEDULE)
def test_get_last_lr_is_each_groups_learning_rate(schedule):
    optimizer = make_optimizer("ours.Adam")
    scheduler = EVERY_SCHEDULE[schedule](optimizer)
    for _ in range(20):
        last = scheduler.get_last_lr()
        assert last == [group["lr"] for group in optimizer.param_groups]
        assert len(last) == len(GROUP_LRS)
        set_gradients(optimizer)
        optimizer.step()
        scheduler.step()


def test_plateau_defaults_are_torchs_and_behave_like_torchs():
    optimizer, reference = make_optimizer("ours.SGD"), make_optimizer("torch.SGD")
    scheduler = ReduceLROnPlateau(optimizer)
    assert (scheduler.mode, scheduler.factor, scheduler.patience, scheduler.threshold) == (
        "min",
        0.1,
        10,
        1e-4,
    )
    assert (scheduler.threshold_mode, scheduler.cooldown, scheduler.eps) == ("rel", 0, 1e-8)
    assert scheduler.min_lrs == [0.0, 0.0]
    torch_scheduler = torch_sched.ReduceLROnPlateau(reference)
    metrics = [1.0] * 12 + [0.99995] * 12 + [0.5] + [0.5] * 30  # flat, a sub-threshold gain, flat
    for metric in metrics:
        scheduler.step(metric)
        torch_scheduler.step(metric)
        assert scheduler.get_last_lr() == pytest.approx(torch_scheduler.get_last_lr(), rel=1e-12)
    assert scheduler.get_last_lr()[0] < GROUP_LRS[0] / 50  # it did reduce, more than once


@pytest.mark.parametrize("mode, better, tie", [("min", 0.4, 0.5), ("max", 1.6, 1.5)])
def test_plateau_needs_strictly_more_than_the_threshold(mode, better, tie):
    optimizer = make_optimizer("torch.SGD")
    scheduler = ReduceLROnPlateau(
        optimizer, mode=mode, threshold=0.5, threshold_mode="abs", patience=5
    )
    scheduler.step(1.0)
    assert not scheduler.is_improvement(tie)  # exactly the threshold away: not progress
    assert not scheduler.is_improvement(1.0)
    assert scheduler.is_improvement(better)
    assert not scheduler.is_improvement(2.0 - better)  # the same distance the wrong way


def test_plateau_reduces_a_tensor_learning_rate_in_place_and_rejects_factor_zero():
    param = torch.zeros(2, requires_grad=True)
    lr = torch.tensor(0.1, dtype=torch.float64)
    optimizer = torch.optim.SGD([param], lr=lr)
    scheduler = ReduceLROnPlateau(optimizer, factor=0.5, patience=0)
    scheduler.step(1.0)
    scheduler.step(1.0)
    assert optimizer.param_groups[0]["lr"] is lr and float(lr) == 0.05
    with pytest.raises(ValueError, match=r"factor must lie in \(0.0, 1.0\), got 0"):
        ReduceLROnPlateau(optimizer, factor=0)


def test_plateau_with_per_group_floors_refuses_a_group_added_later():
    optimizer = make_optimizer("torch.SGD")
    scheduler = ReduceLROnPlateau(optimizer, min_lr=[0.0, 0.0])
    optimizer.add_param_group({"params": [torch.zeros(1, requires_grad=True)], "lr": 0.3})
    with pytest.raises(
        RuntimeError,
        match=(
            r"^the optimizer has 3 param groups but min_lr has 2 values \(a group was added after "
            r"the scheduler was built\); set scheduler.min_lrs$"
        ),
    ):
        scheduler.step(1.0)


@pytest.mark.parametrize("three_phase", [False, True])
def test_one_cycle_ends_exactly_at_its_lowest_rate_after_total_steps(three_phase):
    optimizer = make_optimizer("ours.SGD")
    scheduler = OneCycleLR(optimizer, [0.4, 0.1], total_steps=10, three_phase=three_phase)
    lr_curve(optimizer, scheduler, 10)  # the usual loop: 10 optimizer steps, 10 scheduler steps
    assert scheduler.last_epoch == 10
    assert scheduler.get_last_lr() == [0.4 / 25 / 1e4, 0.1 / 25 / 1e4]
