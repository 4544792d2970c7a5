r"""Learning-rate schedules, each a ``torch.optim.lr_scheduler.LRScheduler`` subclass.

Every schedule the source document names, written from its formula:

=====================  ==========================================================  =========
schedule               learning rate at step ``t``                                 steps per
=====================  ==========================================================  =========
``StepDecay``          ``base * gamma ** (t // step_size)``                        epoch
``ExponentialDecay``   ``base * gamma ** t = base * exp(-k t)``                    epoch
``ReduceLROnPlateau``  ``lr * factor`` after ``patience`` epochs without progress  epoch
``CyclicLR``           triangle between ``base_lr`` and ``max_lr``                 batch
``WarmupCosine``       linear warm-up, then cosine down to ``min_lr``              batch
``OneCycleLR``         up to ``max_lr`` and down far below the start               batch
=====================  ==========================================================  =========

Conventions, the same as ``torch.optim.lr_scheduler``:

* ``t`` is ``scheduler.last_epoch``: 0 once the scheduler is built, +1 per ``scheduler.step()``.
  Call ``scheduler.step()`` after ``optimizer.step()``: once per epoch for the epoch schedules,
  once per batch for the per-step ones.
* ``base`` is each param group's ``initial_lr``: its ``lr`` when the first scheduler was built.
* Learning rates, floors and momentums may be one value or a list with one per param group.
* ``StepDecay`` and ``ExponentialDecay`` are *chainable*: a step multiplies the group's current
  learning rate, so ``torch.optim.lr_scheduler.ChainedScheduler`` composes them with each other
  and with torch's chainable schedules. ``ReduceLROnPlateau`` also multiplies the current rate,
  but its ``step(metric)`` needs a metric that ``ChainedScheduler.step()`` does not pass: step it
  yourself beside the others. ``CyclicLR``, ``WarmupCosine`` and ``OneCycleLR`` set the learning
  rate to their formula (as torch's ``CyclicLR`` and ``OneCycleLR`` do); compose them in time with
  ``SequentialLR``.
* ``state_dict()`` / ``load_state_dict()`` hold plain numbers and strings, so a checkpoint loads
  with ``torch.load(..., weights_only=True)`` and the resumed run continues identically. Build the
  scheduler first, then load the optimizer's and the scheduler's state.

The schedulers use an optimizer only through ``torch.optim.Optimizer``'s interface (its
``param_groups``), so they drive ``torchopt_edu.optim`` and ``torch.optim`` optimizers alike.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Integral, Real
from typing import Literal, SupportsFloat

from torch import Tensor
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

__all__ = [
    "CyclicLR",
    "ExponentialDecay",
    "OneCycleLR",
    "ReduceLROnPlateau",
    "StepDecay",
    "WarmupCosine",
]

MomentumKey = Literal["momentum", "betas"]


# --------------------------------------------------------------------------- argument checks


def _check_optimizer(optimizer: object) -> None:
    if not isinstance(optimizer, Optimizer):
        raise TypeError(
            f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}"
        )


def _check_int(name: str, value: object, minimum: int) -> int:
    """``value`` as a plain int: TypeError unless an integer, ValueError unless ``>= minimum``.

    Plain, so that numpy integers never reach ``state_dict()`` (``weights_only`` loads refuse them).
    """
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _check_number(
    name: str,
    value: object,
    low: float,
    high: float,
    *,
    open_low: bool = False,
    open_high: bool = False,
) -> float:
    """``value`` as a plain float; TypeError unless it is real, ValueError unless in the interval.

    Plain, so that numpy floats never reach ``state_dict()`` or ``group["lr"]``.
    """
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    above_low = value > low if open_low else value >= low
    below_high = value < high if open_high else value <= high
    if not (above_low and below_high):  # also rejects nan
        interval = f"{'(' if open_low else '['}{low}, {high}{')' if open_high else ']'}"
        raise ValueError(f"{name} must lie in {interval}, got {value!r}")
    return float(value)


def _per_group(
    name: str,
    value: float | Sequence[float],
    optimizer: Optimizer,
    low: float,
    high: float,
    *,
    open_low: bool = False,
    open_high: bool = False,
) -> list[float]:
    """One checked value per param group: a number is shared, a sequence gives one per group."""
    n_groups = len(optimizer.param_groups)
    if isinstance(value, Sequence) and not isinstance(value, str):
        if len(value) != n_groups:
            raise ValueError(
                f"{name} has {len(value)} values but the optimizer has {n_groups} param groups"
            )
        names = [f"{name}[{i}]" for i in range(n_groups)]
        values = list(value)
    else:
        names, values = [name] * n_groups, [value] * n_groups
    return [
        _check_number(value_name, item, low, high, open_low=open_low, open_high=open_high)
        for value_name, item in zip(names, values, strict=True)
    ]


def _current_lrs(optimizer: Optimizer) -> list[float | Tensor]:
    """Each group's learning rate; tensors are copied so that the caller cannot alias them."""
    return [
        group["lr"].clone() if isinstance(group["lr"], Tensor) else group["lr"]
        for group in optimizer.param_groups
    ]


def _base_lrs(optimizer: Optimizer) -> list[float | Tensor]:
    """The base learning rates a fresh scheduler will use: ``initial_lr`` if set, else ``lr``."""
    return [group.get("initial_lr", group["lr"]) for group in optimizer.param_groups]


# --------------------------------------------------------------------------- momentum cycling


def _momentum_key(optimizer: Optimizer) -> MomentumKey:
    """The param-group key that holds the momentum to cycle.

    ``"betas"`` (Adam, AdamW, ...: the first coefficient beta1 is cycled) or ``"momentum"``
    (SGD, RMSprop, ...).
    """
    for key in ("betas", "momentum"):
        if all(key in group for group in optimizer.param_groups):
            return key
    raise ValueError(
        "cycle_momentum=True needs an optimizer whose param groups have a 'momentum' or 'betas' "
        f"hyper-parameter, but {type(optimizer).__name__} has neither; pass cycle_momentum=False"
    )


def _set_momentum(optimizer: Optimizer, key: MomentumKey, momentums: Sequence[float]) -> None:
    """Write each group's momentum: ``group["momentum"]``, or beta1 of ``group["betas"]``."""
    for group, momentum in zip(optimizer.param_groups, momentums, strict=True):
        if key == "betas":
            group["betas"] = (momentum, *group["betas"][1:])
        else:
            group["momentum"] = momentum


def _check_momentum_range(
    optimizer: Optimizer,
    base_momentum: float | Sequence[float],
    max_momentum: float | Sequence[float],
) -> tuple[list[float], list[float]]:
    """Per-group momentum bounds, each in [0, 1) with ``base_momentum <= max_momentum``."""
    base_momentums = _per_group("base_momentum", base_momentum, optimizer, 0.0, 1.0, open_high=True)
    max_momentums = _per_group("max_momentum", max_momentum, optimizer, 0.0, 1.0, open_high=True)
    for low, high in zip(base_momentums, max_momentums, strict=True):
        if high < low:
            raise ValueError(
                f"max_momentum must be >= base_momentum, got max_momentum={max_momentum!r} "
                f"and base_momentum={base_momentum!r}"
            )
    return base_momentums, max_momentums


# --------------------------------------------------------------------------- chainable schedules


class StepDecay(LRScheduler):
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
        _check_optimizer(optimizer)
        self.step_size = _check_int("step_size", step_size, minimum=1)
        self.gamma = _check_number("gamma", gamma, 0.0, 1.0, open_low=True)
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


class ExponentialDecay(LRScheduler):
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
        _check_optimizer(optimizer)
        self.gamma = _check_number("gamma", gamma, 0.0, 1.0, open_low=True)
        super().__init__(optimizer, last_epoch)

    @classmethod
    def continuous(cls, optimizer: Optimizer, k: float, last_epoch: int = -1) -> ExponentialDecay:
        r"""The continuous form :math:`\eta_t = \eta_0 e^{-k t}` (:math:`k \ge 0`), gamma = e^-k."""
        k = _check_number("k", k, 0.0, math.inf, open_high=True)
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


class ReduceLROnPlateau(LRScheduler):
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
        _check_optimizer(optimizer)
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        if threshold_mode not in ("rel", "abs"):
            raise ValueError(f"threshold_mode must be 'rel' or 'abs', got {threshold_mode!r}")
        self.factor = _check_number("factor", factor, 0.0, 1.0, open_low=True, open_high=True)
        self.patience = _check_int("patience", patience, minimum=0)
        self.threshold = _check_number("threshold", threshold, 0.0, math.inf, open_high=True)
        self.cooldown = _check_int("cooldown", cooldown, minimum=0)
        self.eps = _check_number("eps", eps, 0.0, math.inf, open_high=True)
        self.min_lrs = _per_group("min_lr", min_lr, optimizer, 0.0, math.inf, open_high=True)
        # One number is every group's floor, also for groups added later (as in torch).
        self.shared_min_lr = None if isinstance(min_lr, Sequence) else float(min_lr)
        self.mode = str(mode)
        self.threshold_mode = str(threshold_mode)

        # No super().__init__: its initial step() would need a metric. These are the attributes
        # LRScheduler's machinery and its users (get_last_lr, SequentialLR's reset) rely on.
        self.optimizer = optimizer
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        self.base_lrs = _base_lrs(optimizer)
        self.last_epoch = 0
        self._last_lr = _current_lrs(optimizer)

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

    def step(self, metrics: SupportsFloat) -> None:  # type: ignore[override]
        """Record one epoch's metric (a float or a one-element tensor) and reduce if it is time."""
        metric = float(metrics)
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
        self._last_lr = _current_lrs(self.optimizer)

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


# --------------------------------------------------------------------------- formula schedules


class _FormulaSchedule(LRScheduler):
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
        _check_optimizer(optimizer)
        if base_lr is None:
            base_lrs = [float(lr) for lr in _base_lrs(optimizer)]
        else:
            base_lrs = _per_group("base_lr", base_lr, optimizer, 0.0, math.inf, open_high=True)
        self.max_lrs = _per_group("max_lr", max_lr, optimizer, 0.0, math.inf, open_high=True)
        for low, high in zip(base_lrs, self.max_lrs, strict=True):
            if high < low:
                raise ValueError(
                    f"max_lr must be >= base_lr, got max_lr={high!r} below base_lr={low!r}"
                )
        step_size_up = _check_int("step_size_up", step_size_up, minimum=1)
        if step_size_down is None:
            step_size_down = step_size_up
        step_size_down = _check_int("step_size_down", step_size_down, minimum=1)
        if mode not in ("triangular", "triangular2", "exp_range"):
            raise ValueError(
                f"mode must be 'triangular', 'triangular2' or 'exp_range', got {mode!r}"
            )
        self.gamma = _check_number("gamma", gamma, 0.0, 1.0, open_low=True)
        self.step_size_up = step_size_up
        self.step_size_down = step_size_down
        self.mode = str(mode)
        self.cycle_momentum = bool(cycle_momentum)
        if cycle_momentum:
            self.momentum_key = _momentum_key(optimizer)
            self.base_momentums, self.max_momentums = _check_momentum_range(
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
            _set_momentum(self.optimizer, self.momentum_key, momentums)
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
        _check_optimizer(optimizer)
        warmup_steps = _check_int("warmup_steps", warmup_steps, minimum=0)
        total_steps = _check_int("total_steps", total_steps, minimum=1)
        if warmup_steps >= total_steps:
            raise ValueError(
                f"warmup_steps must be smaller than total_steps, got warmup_steps={warmup_steps} "
                f"and total_steps={total_steps}"
            )
        self.min_lrs = _per_group("min_lr", min_lr, optimizer, 0.0, math.inf, open_high=True)
        for min_lr_value, base_lr in zip(self.min_lrs, _base_lrs(optimizer), strict=True):
            if min_lr_value > base_lr:
                raise ValueError(
                    f"min_lr must not exceed the base learning rate, got min_lr={min_lr_value!r} "
                    f"above the base learning rate {float(base_lr)!r}"
                )
        start_factor = _check_number("start_factor", start_factor, 0.0, 1.0)
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
        _check_optimizer(optimizer)
        if total_steps is None:
            if epochs is None or steps_per_epoch is None:
                raise ValueError("give total_steps, or both epochs and steps_per_epoch")
            epochs = _check_int("epochs", epochs, minimum=1)
            steps_per_epoch = _check_int("steps_per_epoch", steps_per_epoch, minimum=1)
            total_steps = epochs * steps_per_epoch
        total_steps = _check_int("total_steps", total_steps, minimum=1)
        self.max_lrs = _per_group(
            "max_lr", max_lr, optimizer, 0.0, math.inf, open_low=True, open_high=True
        )
        pct_start = _check_number("pct_start", pct_start, 0.0, 0.5 if three_phase else 1.0)
        if anneal_strategy not in ("cos", "linear"):
            raise ValueError(f"anneal_strategy must be 'cos' or 'linear', got {anneal_strategy!r}")
        div_factor = _check_number("div_factor", div_factor, 1.0, math.inf, open_high=True)
        final_div_factor = _check_number(
            "final_div_factor", final_div_factor, 1.0, math.inf, open_high=True
        )
        self.total_steps = total_steps
        self.anneal_strategy = str(anneal_strategy)
        self.min_lrs = [max_lr / div_factor / final_div_factor for max_lr in self.max_lrs]
        self.cycle_momentum = bool(cycle_momentum)
        if cycle_momentum:
            self.momentum_key = _momentum_key(optimizer)
            self.base_momentums, self.max_momentums = _check_momentum_range(
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
            _set_momentum(self.optimizer, self.momentum_key, momentums)
        return lrs
