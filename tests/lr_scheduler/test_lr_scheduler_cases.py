"""Helpers shared by the learning-rate scheduler tests (no tests here): optimizers, traces."""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler
from torch.optim.lr_scheduler import ReduceLROnPlateau as TorchReduceLROnPlateau

import torchopt_edu.optim as ours
from torchopt_edu.lr_scheduler import ReduceLROnPlateau

GROUP_LRS = (0.1, 0.02)

OptimizerFactory = Callable[[list[dict]], Optimizer]

# Ours and torch.optim's, with a momentum (SGD) and with betas (Adam).
OPTIMIZERS: dict[str, OptimizerFactory] = {
    "torch.SGD": lambda groups: torch.optim.SGD(groups, momentum=0.9),
    "torch.Adam": lambda groups: torch.optim.Adam(groups),
    "ours.SGD": lambda groups: ours.SGD(groups, momentum=0.9),
    "ours.Adam": lambda groups: ours.Adam(groups),
}


def make_optimizer(name: str, seed: int = 0) -> Optimizer:
    """Optimizer ``name`` over two float64 param groups with learning rates ``GROUP_LRS``."""
    generator = torch.Generator().manual_seed(seed)
    shapes = [(3,), (2, 2)]
    groups = [
        {"params": [torch.randn(shape, generator=generator, dtype=torch.float64).requires_grad_()]}
        | {"lr": lr}
        for shape, lr in zip(shapes, GROUP_LRS, strict=True)
    ]
    return OPTIMIZERS[name](groups)


def params_of(optimizer: Optimizer) -> list[Tensor]:
    return [p for group in optimizer.param_groups for p in group["params"]]


def set_gradients(optimizer: Optimizer) -> None:
    """Gradients of the smooth non-quadratic loss sum(cos(p) + p**2 / 2): p - sin(p).

    Written out rather than through autograd, to keep the few hundred steps per test cheap.
    """
    with torch.no_grad():
        for p in params_of(optimizer):
            p.grad = p - torch.sin(p)


def metric_sequence(length: int, seed: int = 1) -> list[float]:
    """A positive, noisy, slowly improving validation loss: plateaus for ReduceLROnPlateau."""
    generator = torch.Generator().manual_seed(seed)
    noise = torch.rand(length, generator=generator, dtype=torch.float64)
    return [1.0 + 1.0 / (1.0 + t / 15.0) + 0.08 * float(noise[t]) for t in range(length)]


def momentum_of(group: dict) -> float | None:
    """The group's momentum: beta1 of ``betas``, or ``momentum``."""
    if "betas" in group:
        return float(group["betas"][0])
    return float(group["momentum"]) if "momentum" in group else None


@dataclass
class Trace:
    lrs: list[list[float]]
    momentums: list[list[float | None]]
    params: list[Tensor]


def train(
    optimizer: Optimizer,
    scheduler: LRScheduler,
    steps: int,
    metrics: Sequence[float] | None = None,
    start: int = 0,
) -> Trace:
    """Take ``steps`` optimizer steps, stepping the scheduler after each one.

    Records the learning rate and momentum each optimizer step used. A plateau scheduler is given
    ``metrics[start + t]`` after step ``t``.
    """
    plateau = isinstance(scheduler, (ReduceLROnPlateau, TorchReduceLROnPlateau))
    lrs, momentums = [], []
    for t in range(steps):
        lrs.append([float(group["lr"]) for group in optimizer.param_groups])
        momentums.append([momentum_of(group) for group in optimizer.param_groups])
        set_gradients(optimizer)
        optimizer.step()
        if plateau:
            scheduler.step(metrics[start + t])
        else:
            scheduler.step()
    return Trace(lrs, momentums, [p.detach().clone() for p in params_of(optimizer)])


def assert_same_trace(ours_trace: Trace, reference: Trace, rtol: float = 0.0) -> None:
    """Equal learning rates, momentums and parameters: exactly, or to ``rtol`` when given."""
    if rtol == 0.0:
        assert ours_trace.lrs == reference.lrs
        assert ours_trace.momentums == reference.momentums
        for mine, theirs in zip(ours_trace.params, reference.params, strict=True):
            assert torch.equal(mine, theirs)
        return
    torch.testing.assert_close(
        _as_tensor(ours_trace.lrs), _as_tensor(reference.lrs), rtol=rtol, atol=0.0
    )
    torch.testing.assert_close(
        _as_tensor(ours_trace.momentums),
        _as_tensor(reference.momentums),
        rtol=rtol,
        atol=0.0,
        equal_nan=True,
    )
    for mine, theirs in zip(ours_trace.params, reference.params, strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e3 * rtol, atol=1e3 * rtol)


def _as_tensor(rows: list[list[float | None]]) -> Tensor:
    """Rows of numbers as a float64 tensor, None as nan."""
    values = [[math.nan if value is None else value for value in row] for row in rows]
    return torch.tensor(values, dtype=torch.float64)


def checkpoint_round_trip(state: dict) -> dict:
    """``state`` through ``torch.save`` and ``torch.load(weights_only=True)``, as on disk."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def hyper_parameters(optimizer: Optimizer) -> list[dict]:
    """Every param group's settings without its parameters (to check nothing changed)."""
    return [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
