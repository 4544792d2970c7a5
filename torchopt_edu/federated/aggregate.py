"""Aggregation: pure functions that check client updates and average model state dicts.

Federated averaging (McMahan et al. 2017, "Communication-Efficient Learning of Deep Networks
from Decentralized Data", Algorithm 1) forms the new global model as the mean of the client
models weighted by their sample counts:

    w_avg = sum_k n_k w_k / sum_k n_k

It is computed in two halves so that a distributed backend can add the partial sums of its
workers in between (``dist.all_reduce``): :func:`weighted_sum` returns ``(sum_k n_k w_k,
sum_k n_k)`` accumulated in float64, :func:`average` divides and casts back to each tensor's
dtype. :func:`fed_avg` is the two in a row.

Every function here is pure: it reads the state dicts it is given and returns new tensors.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from torchopt_edu.optim._checks import is_real

State = Mapping[str, Tensor]


class InvalidUpdateError(ValueError):
    """A client update that does not fit the global model (keys, shape, dtype, NaN/inf).

    ``client`` names the client, ``tensor`` the offending state-dict entry (``None`` when the
    key sets differ).
    """

    def __init__(self, client: object, tensor: str | None, problem: str) -> None:
        where = f"tensor {tensor!r}: " if tensor is not None else ""
        super().__init__(f"client {client}: {where}{problem}")
        self.client = client
        self.tensor = tensor
        self.problem = problem

    def __reduce__(self) -> tuple[type, tuple[object, str | None, str]]:
        # picklable with its fields, so worker processes can pass it on
        return type(self), (self.client, self.tensor, self.problem)


def check_structure(update: State, reference: State, client: object) -> None:
    """Raise :class:`InvalidUpdateError` unless ``update`` has exactly ``reference``'s keys,
    and dense tensors with values (not sparse, not on the meta device) of the same shapes and
    dtypes."""
    missing = sorted(reference.keys() - update.keys())
    unexpected = sorted(update.keys() - reference.keys())
    if missing or unexpected:
        raise InvalidUpdateError(
            client, None, f"keys do not match the model: missing {missing}, unexpected {unexpected}"
        )
    for name, expected in reference.items():
        tensor = update[name]
        if not isinstance(tensor, Tensor):
            raise InvalidUpdateError(
                client, name, f"expected a Tensor, got {type(tensor).__name__}"
            )
        if tensor.layout != torch.strided or tensor.is_meta:
            kind = "on the meta device (no values)" if tensor.is_meta else f"{tensor.layout}"
            raise InvalidUpdateError(client, name, f"a dense tensor expected, got one {kind}")
        if tensor.shape != expected.shape:
            raise InvalidUpdateError(
                client, name, f"shape {tuple(tensor.shape)} != expected {tuple(expected.shape)}"
            )
        if tensor.dtype != expected.dtype:
            raise InvalidUpdateError(
                client, name, f"dtype {tensor.dtype} != expected {expected.dtype}"
            )


@torch.no_grad()
def all_finite(state: State) -> bool:
    """Whether every floating-point and complex value of ``state`` is finite.

    A sum is finite only if every value summed is (NaN and inf propagate through it), so one
    sum per tensor, added in Python, answers for the whole state; only a sum that overflows
    or is not finite leads to checking the values tensor by tensor. For a small MLP this costs
    a third of one ``isfinite`` per tensor.
    """
    floating = [t for t in state.values() if t.is_floating_point() or t.is_complex()]
    total = 0.0
    for tensor in floating:
        partial = tensor.sum()
        total += float(partial.abs() if partial.is_complex() else partial)
    return math.isfinite(total) or all(bool(torch.isfinite(t).all()) for t in floating)


@torch.no_grad()
def first_non_finite(state: State) -> tuple[str, int] | None:
    """The first floating-point or complex tensor of ``state`` with a NaN or inf, as its name
    and how many of its values are not finite; ``None`` if all are (:func:`all_finite` first,
    so a finite state costs one sum per tensor)."""
    if all_finite(state):
        return None
    for name, tensor in state.items():
        if tensor.is_floating_point() or tensor.is_complex():
            non_finite = int((~torch.isfinite(tensor)).sum())
            if non_finite:
                return name, non_finite
    return None


def check_finite(update: State, client: object) -> None:
    """Raise :class:`InvalidUpdateError` if a floating-point tensor of ``update`` has a NaN/inf."""
    found = first_non_finite(update)
    if found is not None:
        name, non_finite = found
        raise InvalidUpdateError(
            client, name, f"{non_finite} of {update[name].numel()} values are NaN or infinite"
        )


def check_update(update: State, reference: State, client: object) -> None:
    """Raise :class:`InvalidUpdateError` unless ``update`` fits ``reference`` (keys, shapes,
    dtypes: :func:`check_structure`) and all its floating-point values are finite
    (:func:`check_finite`). ``reference`` is usually the global model's state dict."""
    check_structure(update, reference, client)
    check_finite(update, client)


def _check_weights(weights: Sequence[float], clients: Sequence[object]) -> list[float]:
    if len(weights) != len(clients):
        raise ValueError(f"got {len(clients)} states but {len(weights)} weights")
    checked = []
    for client, weight in zip(clients, weights, strict=True):
        if isinstance(weight, Tensor):
            if weight.numel() != 1:
                raise TypeError(
                    f"client {client}: weight must be a number, got a tensor of shape "
                    f"{tuple(weight.shape)}"
                )
            weight = weight.item()
        if not is_real(weight):
            raise TypeError(f"client {client}: weight must be a number, got {weight!r}")
        try:
            value = float(weight)
        except OverflowError:  # an int beyond float64, such as 10**400
            raise ValueError(
                f"client {client}: weight must be finite and >= 0, got an integer of "
                f"{len(str(abs(weight)))} digits, more than float64 holds"
            ) from None
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"client {client}: weight must be finite and >= 0, got {weight}")
        checked.append(value)
    return checked


def scale_weights(weights: Sequence[float]) -> list[float]:
    """``weights`` times the power of two that brings the largest into ``[0.5, 1)``.

    A power of two scales exactly (short of subnormal numbers), so the weighted mean is the
    same to the last bit, but weights such as ``[1e308, 1e308]``, whose sum overflows float64,
    or ``[1e-320, 1e-320]``, which would lose their precision, average correctly. Weights that
    are all 0 (or none) are returned as floats unchanged.
    """
    weights = _check_weights(weights, list(range(len(weights))))
    largest = max(weights, default=0.0)
    if largest == 0:
        return weights
    exponent = math.frexp(largest)[1]
    return [math.ldexp(weight, -exponent) for weight in weights]


def _accumulator_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.complex128 if dtype.is_complex else torch.float64


def weighted_sum(
    states: Sequence[State],
    weights: Sequence[float],
    reference: State,
    clients: Sequence[object] | None = None,
) -> tuple[dict[str, Tensor], float]:
    """The numerator and denominator of the weighted mean: ``(sum_k n_k w_k, sum_k n_k)``.

    Every update is checked against ``reference`` (:func:`check_update`) and a malformed one
    raises :class:`InvalidUpdateError` naming the client and the tensor. Sums are float64
    (complex128 for complex tensors) on ``reference``'s devices; an empty ``states`` gives
    zeros and a total of 0. ``clients`` names the clients in error messages (default: their
    positions). Weights whose sum overflows float64 raise ``ValueError`` (the weights are not
    rescaled here, so that partial sums of several workers still add up; see
    :func:`scale_weights`).
    """
    clients = list(range(len(states))) if clients is None else list(clients)
    if len(clients) != len(states):
        raise ValueError(f"got {len(states)} states but {len(clients)} client names")
    weights = _check_weights(weights, clients)
    weight_sum = sum(weights)
    if not math.isfinite(weight_sum):
        raise ValueError(
            f"the weights sum to {weight_sum}, more than float64 holds; scale them (scale_weights)"
        )
    for state, client in zip(states, clients, strict=True):
        check_structure(state, reference, client)
    sums = {
        name: torch.zeros(ref.shape, dtype=_accumulator_dtype(ref.dtype), device=ref.device)
        for name, ref in reference.items()
    }
    totals = list(sums.values())
    for state, weight in zip(states, weights, strict=True):
        # add_ casts each value to the float64 sum's dtype exactly, as .to(float64) would
        terms = [state[name].to(device=t.device) for name, t in sums.items()]
        torch._foreach_add_(totals, terms, alpha=weight)
    # NaN and inf propagate through a sum (even with weight 0: 0 * inf = NaN), so checking the
    # sums covers every client; only when that fails are the clients searched one by one
    found = first_non_finite(sums)
    if found is not None:
        name = found[0]
        for state, client in zip(states, clients, strict=True):
            check_finite({name: state[name]}, client)
        raise ValueError(f"the weighted sum of tensor {name!r} overflowed float64")
    return sums, weight_sum


def average(sums: Mapping[str, Tensor], total: float, reference: State) -> dict[str, Tensor]:
    """``sums / total`` cast back to each ``reference`` tensor's dtype.

    Floating-point and complex tensors are divided and cast. Integer and bool tensors
    (counters such as BatchNorm's ``num_batches_tracked``, masks) get the same weighted mean,
    rounded to the nearest integer (ties to even; for bool this is a weighted majority vote):
    truncating instead would bias every counter downwards.
    """
    if not total > 0:
        raise ValueError(f"the weights sum to {total}; at least one client needs weight > 0")
    averaged = {}
    for name, ref in reference.items():
        mean = sums[name] / total
        if not (ref.is_floating_point() or ref.is_complex()):
            mean = torch.round(mean)
        averaged[name] = mean.to(ref.dtype)
    return averaged


def fed_avg(
    states: Sequence[State], weights: Sequence[float], clients: Sequence[object] | None = None
) -> dict[str, Tensor]:
    """Federated averaging of model state dicts: ``w = sum_k n_k w_k / sum_k n_k``.

    Args:
        states: one state dict per client, all with the same keys, shapes and dtypes.
        weights: one weight per client, usually its number of training samples ``n_k``.
        clients: names for error messages (default: positions 0, 1, ...).

    Returns:
        A new state dict on the first state's devices with its dtypes. The mean is
        accumulated in float64 and cast back; integer buffers are rounded (see
        :func:`average`). The weights are first scaled by a power of two
        (:func:`scale_weights`), which leaves the result unchanged but keeps huge weights
        (``[1e308, 1e308]``) from overflowing. A single client's state comes back unchanged to
        the last bit (a copy), as ``w_avg = w_1`` says, where ``(n w_1) / n`` could be one
        rounding off.

    Raises:
        InvalidUpdateError: (a ``ValueError``) a state whose keys, shapes or dtypes differ from
            the first state's, or with a NaN/inf value; names the client and the tensor.
        ValueError: no states, negative or non-finite weights, weights that sum to 0.
        TypeError: a weight that is not a real number (bools are refused; NumPy numbers and
            one-element tensors are accepted).

    Reference: McMahan et al. 2017, "Communication-Efficient Learning of Deep Networks from
    Decentralized Data", Algorithm 1 (FederatedAveraging).
    """
    if len(states) == 0:
        raise ValueError("fed_avg needs at least one state dict, got none")
    clients = list(range(len(states))) if clients is None else list(clients)
    if len(clients) != len(states):
        raise ValueError(f"got {len(states)} states but {len(clients)} client names")
    _check_weights(weights, clients)  # name the client of a bad weight before scaling
    sums, total = weighted_sum(states, scale_weights(weights), states[0], clients)
    averaged = average(sums, total, states[0])  # also checks the weight of a lone client
    if len(states) == 1:
        return {name: tensor.clone() for name, tensor in states[0].items()}
    return averaged
