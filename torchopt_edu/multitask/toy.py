"""The two-task toy landscape of the CAGrad paper, and optimisation paths on it.

Liu et al. (2021, arXiv:2110.14048, Figure 1 and their toy.py) define two losses on
``x = (x_1, x_2)``. For ``x_2 > 0`` both are logarithmic valleys; for ``x_2 < 0`` they blend
into the quadratics ``((x_1 -+ 7)^2 + 0.1 (x_2 + 8)^2) / 10 - 20`` whose minima ``(+-7, -8)``
end the Pareto set, the segment ``x_1 in [-7, 7]`` at ``x_2 ~ -8.36``. The average loss is
lowest at its middle. Following the mean gradient, paths can stall where one task's valley
dominates; MGDA and PCGrad reach the Pareto set but may stop at a point far from the middle;
CAGrad is meant to reach the average's minimum.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
from torch import Tensor
from torch.optim import Optimizer

from torchopt_edu.multitask.aggregation import Aggregator

_LOWER = 5e-6  # keeps the logarithms finite on the valley floors


def cagrad_toy(points: Tensor) -> Tensor:
    """The two toy losses at ``points [..., 2]``, returned as ``[..., 2]``::

    f_1 = log max(|(-x_1 - 7)/2 - tanh(-x_2)|, 5e-6) + 6
    f_2 = log max(|(-x_1 + 3)/2 + tanh(-x_2) + 2|, 5e-6) + 6
    q_1 = ((x_1 - 7)^2 + 0.1 (x_2 + 8)^2) / 10 - 20,   q_2 = ((x_1 + 7)^2 + ...) / 10 - 20
    L_k = max(tanh(x_2/2), 0) f_k + max(tanh(-x_2/2), 0) q_k
    """
    if points.shape[-1:] != (2,):
        raise ValueError(f"points must have shape [..., 2], got {tuple(points.shape)}")
    x1, x2 = points[..., 0], points[..., 1]
    upper = torch.clamp(torch.tanh(x2 / 2), min=0)
    lower = torch.clamp(torch.tanh(-x2 / 2), min=0)
    valley_1 = torch.clamp((0.5 * (-x1 - 7) - torch.tanh(-x2)).abs(), min=_LOWER).log() + 6
    valley_2 = torch.clamp((0.5 * (-x1 + 3) + torch.tanh(-x2) + 2).abs(), min=_LOWER).log() + 6
    bowl_1 = ((x1 - 7) ** 2 + 0.1 * (x2 + 8) ** 2) / 10 - 20
    bowl_2 = ((x1 + 7) ** 2 + 0.1 * (x2 + 8) ** 2) / 10 - 20
    return torch.stack([upper * valley_1 + lower * bowl_1, upper * valley_2 + lower * bowl_2], -1)


def toy_paths(
    aggregate: Aggregator,
    starts: Sequence[Sequence[float]],
    optimizer: Callable[[Iterable[Tensor]], Optimizer],
    steps: int,
) -> Tensor:
    """Follow ``aggregate`` of the two toy gradients from each start; return ``[steps + 1, S, 2]``.

    All ``S`` points live in one ``[S, 2]`` parameter so that one backward pass per task serves
    every start; each point's two gradients are aggregated on their own. With an element-wise
    optimizer (SGD, Adam and the rest of :mod:`torchopt_edu.optim`) this is exactly ``S``
    separate runs. ``optimizer`` builds it, e.g. ``lambda params: Adam(params, lr=0.01)``.
    """
    points = torch.tensor([list(start) for start in starts], dtype=torch.float64)
    if points.dim() != 2 or points.shape[1] != 2:
        raise ValueError(f"starts must be pairs (x1, x2), got {[list(s) for s in starts]}")
    if not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be an int >= 0, got {steps!r}")
    points.requires_grad_(True)
    stepper = optimizer([points])
    path = [points.detach().clone()]
    for _ in range(steps):
        losses = cagrad_toy(points).sum(0)  # [2]: per task, summed over independent points
        grads = torch.stack(
            [torch.autograd.grad(losses[k], points, retain_graph=k == 0)[0] for k in range(2)], 1
        )  # [S, 2 tasks, 2 coordinates]
        stepper.zero_grad()
        points.grad = torch.stack([aggregate(point_grads) for point_grads in grads])
        stepper.step()
        path.append(points.detach().clone())
    return torch.stack(path)
