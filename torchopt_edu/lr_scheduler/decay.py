"""Chainable decays: :class:`StepDecay` and :class:`ExponentialDecay` (per epoch)."""

from __future__ import annotations

import math

from torch import Tensor
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from torchopt_edu.lr_scheduler._common import (
    CheckedState,
    check_int,
    check_number,
    check_optimizer,
)

__all__ = ["ExponentialDecay", "StepDecay"]


class StepDecay(CheckedState, LRScheduler):
    r"""Step decay: multiply the learning rate by ``gamma`` every ``step_size`` epochs.

    .. math::

        \eta_t = \eta_0 \, \gamma^{\lfloor t / s \rfloor}

    with :math:`\eta_0` the group's base learning rate, :math:`t` the epoch and :math:`s` the
    ``step_size``. The defaults are the source document's ``lr0 * 0.96 ** (epoch // 10)``.

    Chainable: :meth:`step` multiplies the group's current learning rate by :math:`\gamma` at every
    positive multiple of :math:`s`, so with no other scheduler it equals the closed form above.

    When to use: epoch-based training where a slow, predictable decay is enough.

    Args:
        optimizer: the optimizer whose learning rates to schedule.
        step_size: epochs between decays, :math:`s \ge 1`. Default: 10.
        gamma: decay factor, :math:`0 < \gamma \le 1`. Default: 0.96.
        last_epoch: index of the last epoch when resuming; -1 starts afresh.

    Reference: the source document; the same schedule as ``torch.optim.lr_scheduler.StepLR``.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        step_size: int = 10,
        gamma: float = 0.96,
        last_epoch: int = -1,
    ) -> None:
        check_optimizer(optimizer)
        self.step_size = check_int("step_size", step_size, minimum=1)
        self.gamma = check_number("gamma", gamma, 0.0, 1.0, open_low=True)
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float | Tensor]:
        r""":math:`\eta_t = \gamma \eta_{t-1}` if :math:`t > 0` is a multiple of ``step_size``."""
        t = self.last_epoch
        factor = self.gamma if t > 0 and t % self.step_size == 0 else 1.0
        return [group["lr"] * factor for group in self.optimizer.param_groups]

    def _get_closed_form_lr(self) -> list[float | Tensor]:
        r""":math:`\eta_t = \eta_0 \gamma^{\lfloor t / s \rfloor}`."""
        return [
            base_lr * self.gamma ** (self.last_epoch // self.step_size) for base_lr in self.base_lrs
        ]


class ExponentialDecay(CheckedState, LRScheduler):
    r"""Exponential decay: multiply the learning rate by ``gamma`` every epoch.

    .. math::

        \eta_t = \eta_0 \, \gamma^t = \eta_0 \, e^{-k t}, \qquad \gamma = e^{-k}

    with :math:`\eta_0` the group's base learning rate and :math:`t` the epoch. Build it from the
    factor, ``ExponentialDecay(optimizer, gamma=0.96)``, or from the continuous decay constant,
    ``ExponentialDecay.continuous(optimizer, k=0.04)``: the two forms are the same curve.

    Chainable: :meth:`step` multiplies the group's current learning rate by :math:`\gamma`.

    When to use: a smooth version of :class:`StepDecay`; its half-life is :math:`\ln 2 / k` epochs.

    Args:
        optimizer: the optimizer whose learning rates to schedule.
        gamma: decay factor per epoch, :math:`0 < \gamma \le 1`. Default: 0.96.
        last_epoch: index of the last epoch when resuming; -1 starts afresh.

    Reference: the source document; the same schedule as ``torch.optim.lr_scheduler.ExponentialLR``.
    """

    def __init__(self, optimizer: Optimizer, gamma: float = 0.96, last_epoch: int = -1) -> None:
        check_optimizer(optimizer)
        self.gamma = check_number("gamma", gamma, 0.0, 1.0, open_low=True)
        super().__init__(optimizer, last_epoch)

    @classmethod
    def continuous(cls, optimizer: Optimizer, k: float, last_epoch: int = -1) -> ExponentialDecay:
        r"""The continuous form :math:`\eta_t = \eta_0 e^{-k t}` (:math:`k \ge 0`), gamma = e^-k."""
        k = check_number("k", k, 0.0, math.inf, open_high=True)
        gamma = math.exp(-k)
        if gamma == 0.0:  # e^-k underflows for k > ~745: the rate would drop to 0 at once
            raise ValueError(f"k must be small enough that exp(-k) > 0 (k < ~745), got {k!r}")
        return cls(optimizer, gamma=gamma, last_epoch=last_epoch)

    def get_lr(self) -> list[float | Tensor]:
        r""":math:`\eta_t = \gamma \eta_{t-1}` for :math:`t > 0`."""
        factor = self.gamma if self.last_epoch > 0 else 1.0
        return [group["lr"] * factor for group in self.optimizer.param_groups]

    def _get_closed_form_lr(self) -> list[float | Tensor]:
        r""":math:`\eta_t = \eta_0 \gamma^t`."""
        return [base_lr * self.gamma**self.last_epoch for base_lr in self.base_lrs]
