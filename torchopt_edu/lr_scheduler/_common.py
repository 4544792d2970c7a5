"""What every schedule of :mod:`torchopt_edu.lr_scheduler` shares: argument checks, one value
per param group, and momentum cycling.

Numbers are checked by :mod:`torchopt_edu.optim._checks`, the package's one home of value checks,
and returned as plain Python numbers, so that NumPy scalars never reach ``group["lr"]`` or a
``state_dict()`` (``torch.load(..., weights_only=True)`` refuses them).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

from torch import Tensor
from torch.optim import Optimizer

from torchopt_edu.optim._checks import check_int, check_number

__all__ = [
    "CheckedState",
    "MomentumKey",
    "check_int",
    "check_momentum_range",
    "check_number",
    "check_optimizer",
    "current_lrs",
    "initial_lrs",
    "momentum_key",
    "per_group",
    "set_momentum",
]

MomentumKey = Literal["momentum", "betas"]


class CheckedState:
    """Mixin for a schedule: ``load_state_dict`` refuses, before anything changes, a state of
    another schedule (other keys) or of an optimizer with another number of param groups."""

    optimizer: Optimizer

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load as torch does, after checking that ``state_dict`` is one of this schedule."""
        name = type(self).__name__
        own = self.state_dict()  # type: ignore[attr-defined]  # LRScheduler's
        if not isinstance(state_dict, Mapping) or set(state_dict) != set(own):
            keys = sorted(state_dict) if isinstance(state_dict, Mapping) else type(state_dict)
            raise ValueError(
                f"{name}.load_state_dict: the state has keys {keys}, a {name} keeps "
                f"{sorted(own)} (a state of another schedule?)"
            )
        groups = len(self.optimizer.param_groups)
        for key, value in own.items():
            saved = state_dict[key]
            if (
                isinstance(value, list)
                and len(value) == groups
                and not (isinstance(saved, list) and len(saved) == groups)
            ):
                count = len(saved) if isinstance(saved, list) else type(saved).__name__
                raise ValueError(
                    f"{name}.load_state_dict: {key!r} has {count} entries, the optimizer has "
                    f"{groups} param groups (a state of another optimizer?)"
                )
        super().load_state_dict(state_dict)  # type: ignore[misc]


def check_optimizer(optimizer: object) -> None:
    """Raise ``TypeError`` unless ``optimizer`` is a ``torch.optim.Optimizer``."""
    if not isinstance(optimizer, Optimizer):
        raise TypeError(
            f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}"
        )


def per_group(
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
        check_number(value_name, item, low, high, open_low=open_low, open_high=open_high)
        for value_name, item in zip(names, values, strict=True)
    ]


def current_lrs(optimizer: Optimizer) -> list[float | Tensor]:
    """Each group's learning rate; tensors are copied so that the caller cannot alias them."""
    return [
        group["lr"].clone() if isinstance(group["lr"], Tensor) else group["lr"]
        for group in optimizer.param_groups
    ]


def initial_lrs(optimizer: Optimizer) -> list[float | Tensor]:
    """The base learning rates a fresh scheduler will use: ``initial_lr`` if set, else ``lr``."""
    return [group.get("initial_lr", group["lr"]) for group in optimizer.param_groups]


def momentum_key(optimizer: Optimizer) -> MomentumKey:
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


def set_momentum(optimizer: Optimizer, key: MomentumKey, momentums: Sequence[float]) -> None:
    """Write each group's momentum: ``group["momentum"]``, or beta1 of ``group["betas"]``."""
    for group, momentum in zip(optimizer.param_groups, momentums, strict=True):
        if key == "betas":
            group["betas"] = (momentum, *group["betas"][1:])
        else:
            group["momentum"] = momentum


def check_momentum_range(
    optimizer: Optimizer,
    base_momentum: float | Sequence[float],
    max_momentum: float | Sequence[float],
) -> tuple[list[float], list[float]]:
    """Per-group momentum bounds, each in [0, 1) with ``base_momentum <= max_momentum``."""
    base_momentums = per_group("base_momentum", base_momentum, optimizer, 0.0, 1.0, open_high=True)
    max_momentums = per_group("max_momentum", max_momentum, optimizer, 0.0, 1.0, open_high=True)
    for low, high in zip(base_momentums, max_momentums, strict=True):
        if high < low:
            raise ValueError(
                f"max_momentum must be >= base_momentum, got max_momentum={max_momentum!r} "
                f"and base_momentum={base_momentum!r}"
            )
    return base_momentums, max_momentums
