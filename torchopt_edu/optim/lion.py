"""Lion: the sign of an interpolated momentum, found by program search."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from torchopt_edu.optim import _base
from torchopt_edu.optim._base import Bucket, EduOptimizer, Hyper, fused_supported
from torchopt_edu.optim._checks import check_betas, check_lr, check_non_negative
from torchopt_edu.optim._shared import decay_weights_, directed_grad, directed_grads

__all__ = ["Lion", "LionHyper"]


@dataclass(frozen=True)
class LionHyper(Hyper):
    """What one Lion update reads from its param group."""

    beta1: float
    beta2: float
    weight_decay: float
    maximize: bool


class Lion(EduOptimizer):
    r"""Lion, EvoLved Sign Momentum (Chen et al., 2023, "Symbolic Discovery of Optimization
    Algorithms", https://arxiv.org/abs/2302.06675).

    For each parameter :math:`\theta` with gradient :math:`g_t` (negated if ``maximize``):

    .. math::
        c_t &= \beta_1 m_{t-1} + (1-\beta_1)\, g_t \\
        \theta_t &= (1 - \gamma\lambda)\,\theta_{t-1} - \gamma\,\operatorname{sign}(c_t) \\
        m_t &= \beta_2 m_{t-1} + (1-\beta_2)\, g_t

    with :math:`m_0 = 0`. Every coordinate moves by exactly :math:`\gamma` (plus the decoupled
    weight decay :math:`\lambda`); the update direction looks back less (:math:`\beta_1`) than
    the momentum it keeps (:math:`\beta_2`). One state tensor, ``exp_avg`` (m), as in
    ``lion-pytorch``, whose state dicts load into this class.

    Defaults: ``lr=1e-4, betas=(0.9, 0.99), weight_decay=0``. The paper's advice: a learning
    rate 3-10x smaller than AdamW's, and a weight decay 3-10x larger, so that
    :math:`\gamma\lambda` stays the same.

    When to use it: large models where optimizer memory matters (one state tensor instead of
    Adam's two) and large batches; it is at least as good as AdamW on many transformer and
    vision tasks, and worse at small batch sizes, where the sign amplifies gradient noise.

    Implementations: the per-tensor loop below and a multi-tensor path of four
    ``torch._foreach_*`` kernels run piece by piece (see :func:`lion_foreach`). No torch fused
    kernel computes a sign, but with weight decay torch's fused SGD kernel computes
    :math:`\theta - \gamma(\operatorname{sign}(c_t) + \lambda\theta)`, the decay and the step in one
    pass (equal to the loop's two up to rounding).
    """

    hyper = LionHyper

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float | Tensor = 1e-4,
        betas: tuple[float, float] = (0.9, 0.99),
        weight_decay: float = 0.0,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        flat: bool = False,
    ) -> None:
        check_lr(lr)
        check_betas(betas)
        check_non_negative("weight_decay", weight_decay)
        defaults = dict(
            lr=lr,
            betas=betas,
            weight_decay=weight_decay,
            maximize=maximize,
            foreach=foreach,
            fused=None,
        )
        super().__init__(params, defaults, flat=flat)

    def _init_state(self, param: Tensor, state: dict[str, Any], group: dict[str, Any]) -> None:
        state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)


# ---------------------------------------------------------------------------------------
# implementations: the reference loop, then the multi-tensor path


def lion_loop(b: Bucket, h: LionHyper) -> None:
    """Per tensor, line for line the equations of :class:`Lion`."""
    for param, grad, m in zip(b.params, b.grads, b.state("exp_avg"), strict=True):
        grad = directed_grad(grad, param, h.maximize, 0.0)
        c = m.lerp(grad, 1 - h.beta1)  # c = b1*m + (1-b1)*g
        param.mul_(1 - h.lr * h.weight_decay)  # decoupled weight decay
        param.add_(c.sign_(), alpha=-h.lr)  # theta -= lr * sign(c)
        m.lerp_(grad, 1 - h.beta2)  # m = b2*m + (1-b2)*g


def lion_foreach(b: Bucket, h: LionHyper) -> None:
    """The same update as :func:`lion_loop` with one multi-tensor kernel per line, piece by piece.

    Each piece of about ``CACHE_SLICE`` elements goes through all four kernels before the next one
    starts: the later kernels then read the piece's momentum and gradient from the CPU cache,
    and the temporary ``signs`` reuses the memory the previous piece freed (a fresh allocation
    for the whole bucket costs a page fault per page on every step).
    """
    grads = directed_grads(b.grads, b.params, h.maximize, 0.0)
    streams = [b.params, grads, b.state("exp_avg")]
    for params, grads_piece, exp_avgs in pieces(streams, _base.CACHE_SLICE):
        signs = torch._foreach_lerp(exp_avgs, grads_piece, 1 - h.beta1)  # c
        torch._foreach_sign_(signs)
        if h.weight_decay != 0 and fused_supported(params[0]):
            # theta -= lr * (sign(c) + wd * theta): decay and step in one pass
            torch._fused_sgd_(
                params,
                signs,
                [],
                weight_decay=h.weight_decay,
                momentum=0.0,
                lr=h.lr,
                dampening=0.0,
                nesterov=False,
                maximize=False,
                is_first_step=False,
            )
        else:
            decay_weights_(params, h.lr, h.weight_decay)
            torch._foreach_add_(params, signs, alpha=-h.lr)
        torch._foreach_lerp_(exp_avgs, grads_piece, 1 - h.beta2)


def pieces(tensors: list[list[Tensor]], size: int) -> Iterator[list[list[Tensor]]]:
    """Parallel lists of tensors (params, grads, a state) regrouped into pieces of about
    ``size`` elements, for elementwise updates.

    Small tensors are gathered whole; a tensor larger than ``size`` is cut into flat slices
    when it and its parallel tensors are all contiguous (the slices of each then hold the same
    elements), and otherwise stays whole.
    """
    piece: list[list[Tensor]] = [[] for _ in tensors]
    count = 0
    for parallel in zip(*tensors, strict=True):
        if parallel[0].numel() > size and all(t.is_contiguous() for t in parallel):
            parts = zip(*(t.view(-1).split(size) for t in parallel), strict=True)
        else:
            parts = iter([parallel])
        for part in parts:
            for group, tensor in zip(piece, part, strict=True):
                group.append(tensor)
            count += part[0].numel()
            if count >= size:
                yield piece
                piece, count = [[] for _ in tensors], 0
    if piece[0]:
        yield piece


Lion.paths = {"loop": lion_loop, "foreach": lion_foreach}
