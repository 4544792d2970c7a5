"""Validation shared by loss weightings and the gradient-aggregating optimizer."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

TaskLosses = Sequence[Tensor] | Mapping[str, Tensor]


def check_task_losses(
    losses: TaskLosses, expected: int | None = None
) -> tuple[list[str], list[Tensor]]:
    """Return task labels (for messages) and the losses as 0-dim tensors, or raise naming the fault.

    ``losses`` is a sequence of scalar tensors or a mapping ``task name -> scalar``, read in
    its iteration order. Raises ``TypeError`` for anything else, and ``ValueError`` when the
    number of losses differs from ``expected`` (or is below 2 when ``expected`` is None), when a
    loss is not a scalar, does not require grad, or is not finite.
    """
    if isinstance(losses, Mapping):
        names, values = [repr(name) for name in losses], list(losses.values())
    elif isinstance(losses, Sequence) and not isinstance(losses, str | bytes):
        names, values = [f"#{index}" for index in range(len(losses))], list(losses)
    else:
        raise TypeError(
            "losses must be a sequence of scalar tensors or a mapping name -> scalar tensor, "
            f"got {type(losses).__name__}"
        )
    if expected is not None and len(values) != expected:
        raise ValueError(f"expected {expected} task losses, got {len(values)}")
    if len(values) < 2:
        raise ValueError(f"multi-task training needs at least 2 task losses, got {len(values)}")
    for name, loss in zip(names, values, strict=True):
        if not isinstance(loss, Tensor):
            raise TypeError(f"loss of task {name} must be a Tensor, got {type(loss).__name__}")
        if loss.numel() != 1:
            raise ValueError(f"loss of task {name} must be a scalar, got shape {tuple(loss.shape)}")
        if not loss.requires_grad:
            raise ValueError(
                f"loss of task {name} does not require grad: it has no gradient to follow "
                "(was it computed under torch.no_grad() or detached?)"
            )
    values = [loss.reshape(()) for loss in values]
    finite = torch.isfinite(torch.stack([loss.detach() for loss in values]))
    if not bool(finite.all()):
        index = int((~finite).nonzero()[0])
        raise ValueError(f"loss of task {names[index]} is not finite: {values[index].item()}")
    return names, values
