"""Reduce the learning rate when a monitored metric stops improving."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal, SupportsFloat

from torch import Tensor
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from torchopt_edu.lr_scheduler._common import (
    CheckedState,
    check_int,
    check_number,
    check_optimizer,
    current_lrs,
    initial_lrs,
    per_group,
)

__all__ = ["ReduceLROnPlateau"]

_STEP_IT_YOURSELF = (
    "it reduces the rate from the epoch's metric, so call scheduler.step(metric) yourself; it "
    "cannot run inside SequentialLR or ChainedScheduler, which step it without one (torch "
    "refuses its own ReduceLROnPlateau there for the same reason)"
)


class ReduceLROnPlateau(CheckedState, LRScheduler):
    r"""Reduce the learning rate when a monitored metric stops improving.

    Call ``step(metric)`` once per epoch with a validation metric. A metric *improves* on the best
    seen so far, :math:`b`, when

    .. math::

        m < b - \delta \ \text{(mode "min")}, \qquad m > b + \delta \ \text{(mode "max")}, \qquad
        \delta = \begin{cases} \tau\,|b| & \text{threshold\_mode "rel"} \\
                               \tau & \text{threshold\_mode "abs"} \end{cases}

    with :math:`\tau` the ``threshold``. After more than ``patience`` epochs in a row without
    improvement, every group's learning rate becomes

    .. math::

        \eta \leftarrow \max(\eta \cdot \text{factor}, \ \text{min\_lr})

    (a change smaller than ``eps`` is skipped), and the next ``cooldown`` epochs are not counted.
    The first metric is always an improvement; a non-finite one (nan, inf: a diverged run) never is.

    Chainable, like torch's: a reduction multiplies the group's current learning rate.
    Differs from ``torch.optim.lr_scheduler.ReduceLROnPlateau`` in one place: the relative threshold
    uses :math:`|b|`, so it also means "better by a fraction" for negative metrics (torch's
    :math:`b(1 - \tau)` moves the wrong way when :math:`b < 0`). For positive metrics they agree.

    When to use: when you do not know in advance when progress will stall; pairs with any
    optimizer and with early stopping.

    Args:
        optimizer: the optimizer whose learning rates to schedule.
        mode: ``"min"`` (a loss) or ``"max"`` (an accuracy). Default: ``"min"``.
        factor: multiplier applied at a reduction, ``0 < factor < 1``. Default: 0.1.
        patience: epochs without improvement tolerated before reducing. Default: 10.
        threshold: :math:`\tau \ge 0`, the least change that counts as improvement. Default: 1e-4.
        threshold_mode: ``"rel"`` or ``"abs"`` (see above). Default: ``"rel"``.
        cooldown: epochs after a reduction during which no bad epoch is counted. Default: 0.
        min_lr: floor on each group's learning rate (one value or one per group). Default: 0.
        eps: smallest change of learning rate worth making. Default: 1e-8.

    Reference: the Keras ``ReduceLROnPlateau`` callback and ``torch.optim.lr_scheduler``.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        mode: Literal["min", "max"] = "min",
        factor: float = 0.1,
        patience: int = 10,
        threshold: float = 1e-4,
        threshold_mode: Literal["rel", "abs"] = "rel",
        cooldown: int = 0,
        min_lr: float | Sequence[float] = 0.0,
        eps: float = 1e-8,
    ) -> None:
        check_optimizer(optimizer)
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        if threshold_mode not in ("rel", "abs"):
            raise ValueError(f"threshold_mode must be 'rel' or 'abs', got {threshold_mode!r}")
        self.factor = check_number("factor", factor, 0.0, 1.0, open_low=True, open_high=True)
        self.patience = check_int("patience", patience, minimum=0)
        self.threshold = check_number("threshold", threshold, 0.0, math.inf, open_high=True)
        self.cooldown = check_int("cooldown", cooldown, minimum=0)
        self.eps = check_number("eps", eps, 0.0, math.inf, open_high=True)
        self.min_lrs = per_group("min_lr", min_lr, optimizer, 0.0, math.inf, open_high=True)
        # One number is every group's floor, also for groups added later (as in torch).
        self.shared_min_lr = None if isinstance(min_lr, Sequence) else float(min_lr)
        self.mode = str(mode)
        self.threshold_mode = str(threshold_mode)

        # No super().__init__: its initial step() would need a metric. These are the attributes
        # LRScheduler's machinery and its users (get_last_lr, SequentialLR's reset) rely on.
        self.optimizer = optimizer
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        self.base_lrs = initial_lrs(optimizer)
        self.last_epoch = 0
        self._last_lr = current_lrs(optimizer)

        self.best: float | None = None
        self.num_bad_epochs = 0
        self.cooldown_counter = 0

    @property
    def in_cooldown(self) -> bool:
        """Whether bad epochs are currently ignored (just after a reduction)."""
        return self.cooldown_counter > 0

    def is_improvement(self, metric: float) -> bool:
        """Whether ``metric`` beats the best value so far by more than the threshold."""
        if not math.isfinite(metric):
            return False
        if self.best is None:
            return True
        margin = self.threshold * abs(self.best) if self.threshold_mode == "rel" else self.threshold
        if self.mode == "min":
            return metric < self.best - margin
        return metric > self.best + margin

    def step(self, metrics: SupportsFloat | None = None) -> None:  # type: ignore[override]
        """Record one epoch's metric (a float or a one-element tensor) and reduce if it is time.

        Raises:
            TypeError: no metric (``step()``, as ``SequentialLR`` and ``ChainedScheduler`` call
                it), or one that is not a number; nothing changes.
        """
        if metrics is None:
            raise TypeError(
                "ReduceLROnPlateau.step(metrics) needs the epoch's metric as a number or a "
                f"one-element tensor, got none; {_STEP_IT_YOURSELF}"
            )
        try:
            metric = float(metrics)
        except (TypeError, ValueError, RuntimeError):  # None, 'abc', a tensor of many values
            raise TypeError(
                "ReduceLROnPlateau.step(metrics) needs the epoch's metric as a number or a "
                f"one-element tensor, got {type(metrics).__name__} {metrics!r}"
            ) from None
        self._match_min_lrs_to_groups()
        self.last_epoch += 1
        if self.is_improvement(metric):
            self.best = metric
            self.num_bad_epochs = 0
        else:
            self.num_bad_epochs += 1
        if self.in_cooldown:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0
        if self.num_bad_epochs > self.patience:
            self._reduce_lr()
            self.cooldown_counter = self.cooldown
            self.num_bad_epochs = 0
        self._last_lr = current_lrs(self.optimizer)

    def get_lr(self) -> list[float | Tensor]:
        """Never: the learning rates follow the metrics given to :meth:`step`.

        ``SequentialLR`` calls it when it hands over to this schedule at a milestone (it checks
        only for torch's own ``ReduceLROnPlateau`` when it is built); the error says why.
        """
        raise TypeError(
            f"ReduceLROnPlateau cannot take over from SequentialLR: {_STEP_IT_YOURSELF}"
        )

    def _match_min_lrs_to_groups(self) -> None:
        n_groups, n_floors = len(self.optimizer.param_groups), len(self.min_lrs)
        if n_groups == n_floors:
            return
        if self.shared_min_lr is None:
            raise RuntimeError(
                f"the optimizer has {n_groups} param groups but min_lr has {n_floors} values "
                "(a group was added after the scheduler was built); set scheduler.min_lrs"
            )
        self.min_lrs = [self.shared_min_lr] * n_groups

    def _reduce_lr(self) -> None:
        for group, min_lr in zip(self.optimizer.param_groups, self.min_lrs, strict=True):
            old_lr = float(group["lr"])
            new_lr = max(old_lr * self.factor, min_lr)
            if old_lr - new_lr > self.eps:
                if isinstance(group["lr"], Tensor):
                    group["lr"].fill_(new_lr)
                else:
                    group["lr"] = new_lr
