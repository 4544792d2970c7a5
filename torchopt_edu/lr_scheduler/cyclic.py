"""Formula schedules, stepped per batch: CyclicLR, WarmupCosine and OneCycleLR.

Each sets the learning rate to a formula of the step (as torch's ``CyclicLR`` and ``OneCycleLR``
do), whatever the rate was before, so they compose in time (``SequentialLR``), not in product.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

from torch import Tensor
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from torchopt_edu.lr_scheduler._common import (
    CheckedState,
    check_int,
    check_momentum_range,
    check_number,
    check_optimizer,
    initial_lrs,
    momentum_key,
    per_group,
    set_momentum,
)

__all__ = ["CyclicLR", "OneCycleLR", "WarmupCosine"]


class _FormulaSchedule(CheckedState, LRScheduler):
    """A schedule that sets the learning rate to a formula of the step (not chainable)."""

    def get_lr(self) -> list[float | Tensor]:
        """The learning rate at ``t = last_epoch``: the closed form, whatever came before."""
        return self._get_closed_form_lr()

    def _get_closed_form_lr(self) -> list[float | Tensor]:
        raise NotImplementedError


class CyclicLR(_FormulaSchedule):
    r"""Cyclical learning rate: a triangle wave between ``base_lr`` and ``max_lr``. Per step.

    Per-step schedule: call :meth:`step` after every ``optimizer.step()`` (every batch).
    A cycle lasts :math:`L = s_\uparrow + s_\downarrow` steps (``step_size_up`` +
    ``step_size_down``). At step :math:`t`, in cycle :math:`c = \lfloor t / L \rfloor` at position
    :math:`p = t - cL`,

    .. math::

        h_t = \begin{cases} p / s_\uparrow & p \le s_\uparrow \\
                            (L - p) / s_\downarrow & p > s_\uparrow \end{cases}
        \qquad
        \eta_t = \eta_{\text{base}} + (\eta_{\max} - \eta_{\text{base}})\, h_t\, a_t

    where the amplitude :math:`a_t` is 1 (``"triangular"``), :math:`2^{-c}` (``"triangular2"``,
    halved every cycle) or :math:`\gamma^t` (``"exp_range"``). With ``cycle_momentum=True`` the
    momentum (SGD, RMSprop) or beta1 (Adam, AdamW) moves the opposite way,
    :math:`\mu_t = \mu_{\max} - (\mu_{\max} - \mu_{\text{base}})\, h_t\, a_t`.

    When to use: a cheap way to avoid tuning one learning rate; run a range test to pick
    ``base_lr`` and ``max_lr``, and make a half cycle 2-10 epochs long.

    Args:
        optimizer: the optimizer whose learning rates to schedule.
        base_lr: lower bound of the cycle (one value or one per group); ``None`` uses each group's
            base learning rate.
        max_lr: upper bound of the cycle, ``>= base_lr`` (one value or one per group).
        step_size_up: steps from ``base_lr`` to ``max_lr``. Default: 2000.
        step_size_down: steps back down; ``None`` means ``step_size_up``.
        mode: ``"triangular"``, ``"triangular2"`` or ``"exp_range"``. Default: ``"triangular"``.
        gamma: :math:`\gamma \in (0, 1]` of ``"exp_range"``. Default: 1.
        cycle_momentum: also cycle momentum / beta1. Default: ``False``, unlike torch's
            ``CyclicLR``: cycling sets a momentum on plain SGD and fails on optimizers without one.
        base_momentum: momentum at the peak learning rate. Default: 0.8.
        max_momentum: momentum at the lowest learning rate. Default: 0.9.
        last_epoch: index of the last step when resuming; -1 starts afresh.

    Reference: L. N. Smith, "Cyclical Learning Rates for Training Neural Networks", WACV 2017,
    arXiv:1506.01186. Same numbers as ``torch.optim.lr_scheduler.CyclicLR`` for the same settings.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        base_lr: float | Sequence[float] | None,
        max_lr: float | Sequence[float],
        step_size_up: int = 2000,
        step_size_down: int | None = None,
        mode: Literal["triangular", "triangular2", "exp_range"] = "triangular",
        gamma: float = 1.0,
        cycle_momentum: bool = False,
        base_momentum: float | Sequence[float] = 0.8,
        max_momentum: float | Sequence[float] = 0.9,
        last_epoch: int = -1,
    ) -> None:
        check_optimizer(optimizer)
        if base_lr is None:
            base_lrs = [float(lr) for lr in initial_lrs(optimizer)]
        else:
            base_lrs = per_group("base_lr", base_lr, optimizer, 0.0, math.inf, open_high=True)
        self.max_lrs = per_group("max_lr", max_lr, optimizer, 0.0, math.inf, open_high=True)
        for low, high in zip(base_lrs, self.max_lrs, strict=True):
            if high < low:
                raise ValueError(
                    f"max_lr must be >= base_lr, got max_lr={high!r} below base_lr={low!r}"
                )
        step_size_up = check_int("step_size_up", step_size_up, minimum=1)
        if step_size_down is None:
            step_size_down = step_size_up
        step_size_down = check_int("step_size_down", step_size_down, minimum=1)
        if mode not in ("triangular", "triangular2", "exp_range"):
            raise ValueError(
                f"mode must be 'triangular', 'triangular2' or 'exp_range', got {mode!r}"
            )
        self.gamma = check_number("gamma", gamma, 0.0, 1.0, open_low=True)
        self.step_size_up = step_size_up
        self.step_size_down = step_size_down
        self.mode = str(mode)
        self.cycle_momentum = bool(cycle_momentum)
        if cycle_momentum:
            self.momentum_key = momentum_key(optimizer)
            self.base_momentums, self.max_momentums = check_momentum_range(
                optimizer, base_momentum, max_momentum
            )
        # The bottom of the cycle is its own, not the group's initial_lr: inside SequentialLR the
        # earlier schedules still run from initial_lr. Like torch, start the group at base_lr, so
        # that initial_lr (set only where missing) becomes base_lr for a lone CyclicLR.
        self.bottom_lrs = base_lrs
        if base_lr is not None and last_epoch == -1:
            for group, lr in zip(optimizer.param_groups, base_lrs, strict=True):
                if isinstance(group["lr"], Tensor):
                    group["lr"].fill_(lr)
                else:
                    group["lr"] = lr
        super().__init__(optimizer, last_epoch)

    def _height_and_amplitude(self, t: int) -> tuple[float, float]:
        """Where step ``t`` is on the triangle (0 at the bottom, 1 at the top); its amplitude."""
        cycle_length = self.step_size_up + self.step_size_down
        cycle, position = divmod(t, cycle_length)
        if position <= self.step_size_up:
            height = position / self.step_size_up
        else:
            height = (cycle_length - position) / self.step_size_down
        if self.mode == "triangular":
            amplitude = 1.0
        elif self.mode == "triangular2":
            amplitude = 0.5**cycle
        else:
            amplitude = self.gamma**t
        return height, amplitude

    def _get_closed_form_lr(self) -> list[float | Tensor]:
        """The learning rates at step ``t``; with ``cycle_momentum`` also sets the momentums."""
        height, amplitude = self._height_and_amplitude(self.last_epoch)
        if self.cycle_momentum:
            momentums = [
                max_m - (max_m - base_m) * height * amplitude
                for base_m, max_m in zip(self.base_momentums, self.max_momentums, strict=True)
            ]
            set_momentum(self.optimizer, self.momentum_key, momentums)
        return [
            base_lr + (max_lr - base_lr) * height * amplitude
            for base_lr, max_lr in zip(self.bottom_lrs, self.max_lrs, strict=True)
        ]


class WarmupCosine(_FormulaSchedule):
    r"""Linear warm-up, then cosine annealing down to a floor. Per step.

    Per-step schedule: call :meth:`step` after every ``optimizer.step()`` (every batch);
    ``warmup_steps`` and ``total_steps`` count optimizer steps. With :math:`W` warm-up steps,
    :math:`T` total steps, start factor :math:`f` and floor :math:`\eta_{\min}`,

    .. math::

        \eta_t = \begin{cases}
            \eta_0 \left(f + (1 - f)\, \dfrac{t}{W}\right) & t < W \\[1ex]
            \eta_{\min} + \dfrac{\eta_0 - \eta_{\min}}{2}
                \left(1 + \cos\left(\pi \dfrac{t - W}{T - W}\right)\right) & W \le t \le T \\[1ex]
            \eta_{\min} & t > T
        \end{cases}

    The same curve as torch's ``SequentialLR([LinearLR(start_factor=f, total_iters=W),
    CosineAnnealingLR(T_max=T - W, eta_min)], milestones=[W])`` up to :math:`T`; after :math:`T` it
    stays at the floor instead of rising again.

    When to use: the default for Adam/AdamW on transformers and large batches: the warm-up keeps
    the first steps, with poor second-moment estimates, from diverging.

    Args:
        optimizer: the optimizer whose learning rates to schedule.
        warmup_steps: :math:`W \ge 0`, steps of linear warm-up.
        total_steps: :math:`T > W`, steps until the floor is reached.
        min_lr: :math:`\eta_{\min}`, the floor, at most each group's base lr. Default: 0.
        start_factor: :math:`f \in [0, 1]`, fraction of the base lr at step 0. Default: 0 (the first
            step does not move the weights, as in ``transformers.get_cosine_schedule_with_warmup``).
        last_epoch: index of the last step when resuming; -1 starts afresh.

    References: P. Goyal et al., "Accurate, Large Minibatch SGD: Training ImageNet in 1 Hour",
    arXiv:1706.02677 (warm-up); I. Loshchilov and F. Hutter, "SGDR: Stochastic Gradient Descent with
    Warm Restarts", ICLR 2017, arXiv:1608.03983 (cosine annealing).
    """

    def __init__(
        self,
        optimizer: Optimizer,
        warmup_steps: int,
        total_steps: int,
        min_lr: float | Sequence[float] = 0.0,
        start_factor: float = 0.0,
        last_epoch: int = -1,
    ) -> None:
        check_optimizer(optimizer)
        warmup_steps = check_int("warmup_steps", warmup_steps, minimum=0)
        total_steps = check_int("total_steps", total_steps, minimum=1)
        if warmup_steps >= total_steps:
            raise ValueError(
                f"warmup_steps must be smaller than total_steps, got warmup_steps={warmup_steps} "
                f"and total_steps={total_steps}"
            )
        self.min_lrs = per_group("min_lr", min_lr, optimizer, 0.0, math.inf, open_high=True)
        for min_lr_value, base_lr in zip(self.min_lrs, initial_lrs(optimizer), strict=True):
            if min_lr_value > base_lr:
                raise ValueError(
                    f"min_lr must not exceed the base learning rate, got min_lr={min_lr_value!r} "
                    f"above the base learning rate {float(base_lr)!r}"
                )
        start_factor = check_number("start_factor", start_factor, 0.0, 1.0)
        self.warmup_steps = warmup_steps
        self.total_steps = total_steps
        self.start_factor = start_factor
        super().__init__(optimizer, last_epoch)

    def _get_closed_form_lr(self) -> list[float | Tensor]:
        t = self.last_epoch
        if t < self.warmup_steps:
            warmup = self.start_factor + (1.0 - self.start_factor) * t / self.warmup_steps
            return [base_lr * warmup for base_lr in self.base_lrs]
        progress = min(1.0, (t - self.warmup_steps) / (self.total_steps - self.warmup_steps))
        cosine = (1.0 + math.cos(math.pi * progress)) / 2.0
        return [
            min_lr + (base_lr - min_lr) * cosine
            for base_lr, min_lr in zip(self.base_lrs, self.min_lrs, strict=True)
        ]


class OneCycleLR(_FormulaSchedule):
    r"""The 1cycle policy: up to ``max_lr``, then down far below the start. Per step.

    Per-step schedule: call :meth:`step` after every ``optimizer.step()`` (every batch), at most
    ``total_steps`` times. With :math:`T` total steps and :math:`P` = ``pct_start``, the learning
    rate anneals between three levels,

    .. math::

        \eta_{\text{start}} = \eta_{\max} / \text{div\_factor}, \qquad
        \eta_{\text{end}} = \eta_{\text{start}} / \text{final\_div\_factor},

    in phases that end at steps :math:`PT - 1` and :math:`T - 1`: start :math:`\to` max
    :math:`\to` end. With ``three_phase=True`` (the paper's form) they end at :math:`PT - 1`,
    :math:`2PT - 2` and :math:`T - 1`: start :math:`\to` max :math:`\to` start :math:`\to` end.
    Inside a phase from :math:`a` to :math:`b`, a fraction :math:`x \in [0, 1]` of the way through,

    .. math::

        \text{cos:}\ \ b + \frac{a - b}{2}\left(1 + \cos \pi x\right), \qquad
        \text{linear:}\ \ a + (b - a)\, x .

    With ``cycle_momentum=True`` (default) the momentum (SGD, RMSprop) or beta1 (Adam, AdamW) moves
    the opposite way: max :math:`\to` base :math:`\to` max (three phases: ... :math:`\to` max).

    When to use: a fixed budget of steps and a need to train fast; pick ``max_lr`` with a range
    test, a little below where the loss blows up.

    Args:
        optimizer: the optimizer whose learning rates to schedule.
        max_lr: peak learning rate (one value or one per group).
        total_steps: :math:`T`, the number of steps; or give ``epochs`` and ``steps_per_epoch``.
        epochs: with ``steps_per_epoch``, :math:`T = \text{epochs} \cdot \text{steps\_per\_epoch}`.
        steps_per_epoch: see ``epochs``.
        pct_start: :math:`P \in [0, 1]`, fraction of the steps spent rising (at most 0.5 with
            ``three_phase``). Default: 0.3.
        anneal_strategy: ``"cos"`` or ``"linear"``. Default: ``"cos"``.
        cycle_momentum: cycle momentum / beta1 inversely to the learning rate. Default: ``True``.
        base_momentum: momentum at the peak learning rate. Default: 0.85.
        max_momentum: momentum at the start and end. Default: 0.95.
        div_factor: :math:`\eta_{\max} / \eta_{\text{start}} \ge 1`. Default: 25.
        final_div_factor: :math:`\eta_{\text{start}} / \eta_{\text{end}} \ge 1`. Default: 1e4.
        three_phase: use the paper's three phases instead of fastai's two. Default: ``False``.
        last_epoch: index of the last step when resuming; -1 starts afresh.

    References: L. N. Smith and N. Topin, "Super-Convergence: Very Fast Training of Neural Networks
    Using Large Learning Rates", arXiv:1708.07120; L. N. Smith, "A disciplined approach to neural
    network hyper-parameters: Part 1", arXiv:1803.09820 (momentum cycling). Same numbers as
    ``torch.optim.lr_scheduler.OneCycleLR`` for steps :math:`0 \dots T-1`.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        max_lr: float | Sequence[float],
        total_steps: int | None = None,
        epochs: int | None = None,
        steps_per_epoch: int | None = None,
        pct_start: float = 0.3,
        anneal_strategy: Literal["cos", "linear"] = "cos",
        cycle_momentum: bool = True,
        base_momentum: float | Sequence[float] = 0.85,
        max_momentum: float | Sequence[float] = 0.95,
        div_factor: float = 25.0,
        final_div_factor: float = 1e4,
        three_phase: bool = False,
        last_epoch: int = -1,
    ) -> None:
        check_optimizer(optimizer)
        if total_steps is None:
            if epochs is None or steps_per_epoch is None:
                raise ValueError("give total_steps, or both epochs and steps_per_epoch")
            epochs = check_int("epochs", epochs, minimum=1)
            steps_per_epoch = check_int("steps_per_epoch", steps_per_epoch, minimum=1)
            total_steps = epochs * steps_per_epoch
        total_steps = check_int("total_steps", total_steps, minimum=1)
        self.max_lrs = per_group(
            "max_lr", max_lr, optimizer, 0.0, math.inf, open_low=True, open_high=True
        )
        pct_start = check_number("pct_start", pct_start, 0.0, 0.5 if three_phase else 1.0)
        if anneal_strategy not in ("cos", "linear"):
            raise ValueError(f"anneal_strategy must be 'cos' or 'linear', got {anneal_strategy!r}")
        div_factor = check_number("div_factor", div_factor, 1.0, math.inf, open_high=True)
        final_div_factor = check_number(
            "final_div_factor", final_div_factor, 1.0, math.inf, open_high=True
        )
        self.total_steps = total_steps
        self.anneal_strategy = str(anneal_strategy)
        self.min_lrs = [max_lr / div_factor / final_div_factor for max_lr in self.max_lrs]
        self.cycle_momentum = bool(cycle_momentum)
        if cycle_momentum:
            self.momentum_key = momentum_key(optimizer)
            self.base_momentums, self.max_momentums = check_momentum_range(
                optimizer, base_momentum, max_momentum
            )

        rise_end = pct_start * total_steps - 1
        # Each phase: (last step, learning-rate level from -> to, momentum level from -> to).
        self.phases: list[tuple[float, str, str, str, str]]
        if three_phase:
            self.phases = [
                (rise_end, "start", "max", "max", "base"),
                (2 * rise_end, "max", "start", "base", "max"),
                (total_steps - 1, "start", "end", "max", "max"),
            ]
        else:
            self.phases = [
                (rise_end, "start", "max", "max", "base"),
                (total_steps - 1, "max", "end", "base", "max"),
            ]
        if last_epoch == -1:
            for group, peak in zip(optimizer.param_groups, self.max_lrs, strict=True):
                group["initial_lr"] = peak / div_factor
        super().__init__(optimizer, last_epoch)

    def step(self, epoch: int | None = None) -> None:
        """Advance one step; raises ValueError, changing nothing, past ``total_steps``."""
        next_step = self.last_epoch + 1 if epoch is None else epoch
        if next_step > self.total_steps:
            raise ValueError(
                f"OneCycleLR stepped to step {next_step}, past its total_steps={self.total_steps}; "
                "give total_steps (or epochs * steps_per_epoch) = the number of optimizer steps"
            )
        super().step(epoch)

    def _anneal(self, start: float, end: float, fraction: float) -> float:
        if self.anneal_strategy == "cos":
            return end + (start - end) / 2.0 * (1.0 + math.cos(math.pi * fraction))
        return start + (end - start) * fraction

    def _phase_at(self, t: int) -> tuple[int, float]:
        """The phase containing step ``t`` and the fraction of it done at ``t``."""
        phase_start = 0.0
        for index, (phase_end, *_) in enumerate(self.phases):
            if t <= phase_end or index == len(self.phases) - 1:
                break
            phase_start = phase_end
        if phase_end <= phase_start:  # an empty phase, when pct_start * total_steps <= 1
            return index, 1.0
        return index, min(1.0, (t - phase_start) / (phase_end - phase_start))

    def _get_closed_form_lr(self) -> list[float | Tensor]:
        """The learning rates at step ``t``; with ``cycle_momentum`` also sets the momentums."""
        index, fraction = self._phase_at(self.last_epoch)
        _, lr_from, lr_to, momentum_from, momentum_to = self.phases[index]
        lrs = []
        for base_lr, max_lr, min_lr in zip(self.base_lrs, self.max_lrs, self.min_lrs, strict=True):
            levels = {"start": base_lr, "max": max_lr, "end": min_lr}
            lrs.append(self._anneal(levels[lr_from], levels[lr_to], fraction))
        if self.cycle_momentum:
            momentums = []
            for base_m, max_m in zip(self.base_momentums, self.max_momentums, strict=True):
                levels = {"base": base_m, "max": max_m}
                momentums.append(self._anneal(levels[momentum_from], levels[momentum_to], fraction))
            set_momentum(self.optimizer, self.momentum_key, momentums)
        return lrs
