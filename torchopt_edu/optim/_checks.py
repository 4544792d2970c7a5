"""Checks of user-supplied numbers and flags, shared by every package of torchopt-edu.

One home for "is this a valid value?": the optimizers, schedules, federated and tuning code
all call these, so a bad value gets the same kind of message everywhere. Each check names the
argument and the value it got. NumPy scalars count as numbers (``np.float64(0.1)`` is a fine
learning rate); bools never count as numbers (``lr=True`` is a mistake, not 1.0).

Optimizer checks raise the exception types torch.optim raises for the same input, so code
that catches torch's errors catches ours.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

from torch import Tensor

#: The largest seed accepted anywhere in the package: NumPy's generators and scikit-learn's
#: ``random_state`` take seeds in ``[0, 2**32 - 1]``; torch takes more, so this is the limit.
MAX_SEED = 2**32 - 1


# ---------------------------------------------------------------------------------------
# plain numbers


def is_real(value: object) -> bool:
    """Whether ``value`` is a real number (Python, NumPy or any ``numbers.Real``), not a bool."""
    return isinstance(value, numbers.Real) and not _is_bool(value)


def is_integer(value: object) -> bool:
    """Whether ``value`` is an integer (Python, NumPy or any ``numbers.Integral``), not a bool."""
    return isinstance(value, numbers.Integral) and not _is_bool(value)


def _is_bool(value: object) -> bool:
    return isinstance(value, bool) or type(value).__name__ == "bool_"  # numpy.bool_


def check_int(name: str, value: object, minimum: int | None = None) -> int:
    """``value`` as a plain ``int``: ``TypeError`` unless an integer, ``ValueError`` if too small.

    Plain, so that NumPy integers never reach a ``state_dict()`` (``weights_only`` loads refuse
    them).
    """
    if not is_integer(value):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def check_number(
    name: str,
    value: object,
    low: float = -math.inf,
    high: float = math.inf,
    *,
    open_low: bool = False,
    open_high: bool = False,
) -> float:
    """``value`` as a plain ``float`` in the interval from ``low`` to ``high``.

    ``TypeError`` unless a real number; ``ValueError`` (naming the interval) outside it or NaN.
    The bounds are closed unless ``open_low``/``open_high``; infinite bounds are always open,
    so the defaults accept every finite number.
    """
    if not is_real(value):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    above_low = value > low if (open_low or low == -math.inf) else value >= low
    below_high = value < high if (open_high or high == math.inf) else value <= high
    if not (above_low and below_high):  # also rejects NaN
        left = "(" if open_low or low == -math.inf else "["
        right = ")" if open_high or high == math.inf else "]"
        raise ValueError(f"{name} must lie in {left}{low}, {high}{right}, got {value!r}")
    return float(value)


def check_seed(seed: object, name: str = "seed", *, headroom: int = 0) -> int:
    """A seed as a plain ``int`` in ``[0, MAX_SEED - headroom]``.

    ``headroom`` reserves seeds above this one for callers that derive ``seed + k`` for
    ``k < headroom`` (one generator per trial or per client).
    """
    if not is_integer(seed):
        raise TypeError(f"{name} must be an int, got {seed!r}")
    largest = MAX_SEED - headroom
    if not 0 <= seed <= largest:
        raise ValueError(f"{name} must be an integer in [0, {largest}], got {seed}")
    return int(seed)


# ---------------------------------------------------------------------------------------
# optimizer hyper-parameters (torch.optim's exception types and wording)


def _as_number(name: str, value: float | Tensor) -> float:
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise ValueError(f"Tensor {name} must be 1-element, got shape {tuple(value.shape)}")
        return float(value.item())
    if not is_real(value):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}: {value!r}")
    return float(value)


def check_non_negative(name: str, value: float | Tensor) -> None:
    """Raise ``ValueError("Invalid <name> value: <value>")`` unless ``value >= 0``."""
    number = _as_number(name, value)
    if not 0.0 <= number < math.inf:  # also rejects NaN
        raise ValueError(f"Invalid {name} value: {value} ({name} must be finite and >= 0)")


def check_lr(lr: float | Tensor) -> None:
    """Raise ``ValueError`` unless the learning rate ``lr`` is a number >= 0."""
    number = _as_number("lr", lr)
    if not 0.0 <= number < math.inf:
        raise ValueError(f"Invalid learning rate: lr={lr} (lr must be finite and >= 0)")


def check_beta(name: str, value: float | Tensor) -> None:
    """Raise ``ValueError`` unless ``0 <= value < 1`` (a decay rate such as beta1 or beta2)."""
    number = _as_number(name, value)
    if not 0.0 <= number < 1.0:
        raise ValueError(f"Invalid {name} value: {value} ({name} must be in [0, 1))")


def check_betas(betas: tuple[float, float]) -> None:
    """Check an Adam-style ``betas=(beta1, beta2)`` pair; name the bad index like torch does.

    As in torch.optim, the two betas are both numbers or both tensors, never one of each.
    """
    try:
        pair = tuple(betas)
    except TypeError:
        pair = ()
    if len(pair) != 2:
        raise ValueError(f"Invalid betas value: {betas!r} (betas must be a pair (beta1, beta2))")
    if isinstance(pair[0], Tensor) != isinstance(pair[1], Tensor):
        raise ValueError(f"betas must be either both floats or both Tensors, got {betas!r}")
    for index, beta in enumerate(pair):
        number = _as_number(f"betas[{index}]", beta)
        if not 0.0 <= number < 1.0:
            raise ValueError(
                f"Invalid beta parameter at index {index}: betas[{index}]={beta} "
                "(must be in [0, 1))"
            )


def check_flag(name: str, value: Any) -> bool:
    """An on/off option as a plain ``bool``: ``True``/``False`` or the integers 1/0.

    torch.optim accepts ``maximize=1`` and computes as if True; any other value (a string,
    2, None) is a mistake and raises ``TypeError`` naming the option.
    """
    if _is_bool(value) or (is_integer(value) and value in (0, 1)):
        return bool(value)
    raise TypeError(f"{name} must be True or False, got {value!r}")


def check_optional_flag(name: str, value: Any) -> bool | None:
    """Like :func:`check_flag`, but ``None`` (let the library choose) is kept as ``None``."""
    return None if value is None else check_flag(name, value)


#: The on/off options of torch.optim's constructors; ``maximize=1`` means True, as in torch.
FLAG_OPTIONS = (
    "amsgrad",
    "maximize",
    "nesterov",
    "centered",
    "differentiable",
    "capturable",
    "decoupled_weight_decay",
    "compiled",
)


def normalise_flags(options: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``options`` with each on/off flag a bool (``foreach``, ``fused``: or None)."""
    options = dict(options)
    for name in FLAG_OPTIONS:
        if name in options:
            options[name] = check_flag(name, options[name])
    for name in ("foreach", "fused"):
        if name in options:
            options[name] = check_optional_flag(name, options[name])
    return options


def check_impl_flags(
    foreach: bool | None, fused: bool | None, differentiable: bool, compiled: bool = False
) -> None:
    """Reject the flag combinations torch.optim rejects, with torch's exception types, and
    ``compiled=True`` beside another choice of implementation."""
    if fused and foreach:
        raise RuntimeError("`fused` and `foreach` cannot be `True` together.")
    if fused and differentiable:
        raise RuntimeError("`fused` does not support `differentiable`")
    if compiled and (fused or foreach is not None):
        raise ValueError(
            f"compiled=True chooses the implementation (a generated kernel); leave foreach and "
            f"fused at None (got foreach={foreach}, fused={fused})"
        )


def check_unsupported(**flags: bool) -> None:
    """Reject torch.optim options we accept for signature compatibility but do not implement."""
    for name, value in flags.items():
        if value:
            raise NotImplementedError(
                f"{name}=True is not supported by torchopt_edu; use torch.optim for it"
            )


def as_float(value: float | Tensor) -> float:
    """A hyper-parameter as a Python float (a tensor learning rate is read once per step)."""
    return float(value.item()) if isinstance(value, Tensor) else float(value)


__all__ = [
    "FLAG_OPTIONS",
    "MAX_SEED",
    "as_float",
    "check_beta",
    "check_betas",
    "check_flag",
    "check_impl_flags",
    "check_int",
    "check_lr",
    "check_non_negative",
    "check_number",
    "check_optional_flag",
    "check_seed",
    "check_unsupported",
    "is_integer",
    "is_real",
    "normalise_flags",
]
