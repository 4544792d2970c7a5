"""Update fragments every algorithm shares: the gradient's sign and the weight decay.

Each comes in a per-tensor form (for the reference loops) and a multi-tensor form (for the
``torch._foreach_*`` paths), so an algorithm file states them in one line:

.. math::
    g_t \\leftarrow -g_t \\ \\text{if maximize}, \\qquad
    g_t \\leftarrow g_t + \\lambda\\theta_{t-1} \\ \\text{(L2 penalty)}, \\qquad
    \\theta_{t-1} \\leftarrow (1 - \\gamma\\lambda)\\,\\theta_{t-1} \\ \\text{(decoupled decay)}
"""

from __future__ import annotations

import torch
from torch import Tensor


def directed_grad(grad: Tensor, param: Tensor, maximize: bool, l2: float) -> Tensor:
    """The gradient the update descends: negated if ``maximize``, plus ``l2 * param``."""
    grad = -grad if maximize else grad
    return grad.add(param, alpha=l2) if l2 != 0 else grad


def directed_grads(
    grads: list[Tensor], params: list[Tensor], maximize: bool, l2: float
) -> list[Tensor]:
    """:func:`directed_grad` for lists of tensors (new tensors; ``grads`` is not changed)."""
    if maximize:
        grads = torch._foreach_neg(grads)
    if l2 != 0:
        grads = torch._foreach_add(grads, params, alpha=l2)
    return grads


def decay_weights_(params: list[Tensor], lr: float, weight_decay: float) -> None:
    """Decoupled weight decay in place: ``param *= 1 - lr * weight_decay``."""
    if weight_decay != 0:
        torch._foreach_mul_(params, 1 - lr * weight_decay)
