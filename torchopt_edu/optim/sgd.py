"""SGD and Momentum: gradient descent with a velocity.

torch.optim.SGD and the source document's exponential-moving-average Momentum share one
update rule, ``v = mu*v + (1 - dampening)*g``; they differ only in the velocity's start
(torch: ``v_1 = g_1``; the document: ``v_0 = 0``, so ``v_1 = (1 - beta)*g_1``). They share this
file's code and name that difference with ``first_step``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from torchopt_edu.optim._base import (
    Bucket,
    EduOptimizer,
    Impl,
    as_float,
    check_beta,
    check_lr,
    check_non_negative,
)

__all__ = ["SGD", "Momentum", "sgd"]


class SGD(EduOptimizer):
    r"""Stochastic gradient descent with optional (Nesterov) momentum, as torch.optim.SGD.

    .. math::
        g_t &\leftarrow -g_t \quad\text{if maximize} \\
        g_t &\leftarrow g_t + \lambda\theta_{t-1} \quad\text{(weight\_decay } \lambda) \\
        v_t &= \begin{cases} g_t & t = 1 \\
              \mu v_{t-1} + (1-\tau)\, g_t & t > 1 \end{cases}
              \quad\text{(momentum } \mu\text{, dampening } \tau) \\
        d_t &= g_t + \mu v_t \ \text{if nesterov, else } v_t \\
        \theta_t &= \theta_{t-1} - \gamma\, d_t

    With ``momentum=0`` this is plain SGD, :math:`\theta_t = \theta_{t-1} - \gamma g_t`, and no
    state is kept; otherwise the state key is ``momentum_buffer`` (:math:`v`).

    Defaults: ``lr=1e-3, momentum=0, dampening=0, weight_decay=0, nesterov=False``.
    References: Robbins and Monro, 1951; Polyak, 1964 (heavy ball); Sutskever et al., 2013
    (Nesterov momentum for deep learning).

    When to use it: large vision models and anywhere a well-tuned schedule matters more than
    adaptivity; SGD with momentum often generalises better than adaptive methods.

    Implementations: ``foreach=False`` runs the per-tensor loop (also used for sparse
    gradients); the default uses torch's fused kernel ``torch._fused_sgd_``, which computes
    these same equations, and the multi-tensor path where it does not apply (and for
    float16/bfloat16 on CPU, where torch 2.13's fused SGD skips whole vector blocks:
    pytorch/pytorch#191763).
    """

    supports_sparse = True

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float | Tensor = 1e-3,
        momentum: float = 0,
        dampening: float = 0,
        weight_decay: float = 0,
        nesterov: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        differentiable: bool = False,
        fused: bool | None = None,
        flat: bool = False,
    ) -> None:
        check_lr(lr)
        check_non_negative("momentum", momentum)
        check_non_negative("weight_decay", weight_decay)
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError(
                "Nesterov momentum requires a momentum and zero dampening "
                f"(got nesterov=True, momentum={momentum}, dampening={dampening})"
            )
        defaults = dict(
            lr=lr,
            momentum=momentum,
            dampening=dampening,
            weight_decay=weight_decay,
            nesterov=nesterov,
            maximize=maximize,
            foreach=foreach,
            differentiable=differentiable,
            fused=fused,
        )
        super().__init__(params, defaults, flat=flat)

    def _init_state(self, param: Tensor, state: dict[str, Any], group: dict[str, Any]) -> None:
        if group["momentum"] != 0:
            state["momentum_buffer"] = torch.zeros_like(param, memory_format=torch.preserve_format)

    def _can_fuse(self, group: dict[str, Any]) -> bool:
        return True

    def _choose_impl(self, group: dict[str, Any], bucket: Bucket) -> Impl:
        impl = super()._choose_impl(group, bucket)
        low_precision = bucket.params[0].dtype in (torch.float16, torch.bfloat16)
        if impl == "fused" and low_precision and bucket.device.type == "cpu" and not group["fused"]:
            return "foreach"
        return impl

    def _update(self, group: dict[str, Any], bucket: Bucket, impl: Impl) -> None:
        momentum = group["momentum"]
        sgd(
            bucket.params,
            bucket.grads,
            bucket.state("momentum_buffer") if momentum != 0 else [],
            lr=group["lr"],
            weight_decay=group["weight_decay"],
            momentum=momentum,
            dampening=group["dampening"],
            nesterov=group["nesterov"],
            maximize=group["maximize"],
            first_step=bucket.first_step,
            impl=impl,
        )


class Momentum(SGD):
    r"""Momentum in the exponential-moving-average form of the source document.

    .. math::
        g_t &\leftarrow -g_t \quad\text{if maximize};\qquad
        g_t \leftarrow g_t + \lambda\theta_{t-1} \quad\text{(weight\_decay)} \\
        v_t &= \beta v_{t-1} + (1-\beta)\, g_t, \qquad v_0 = 0 \\
        \theta_t &= \theta_{t-1} - \gamma v_t

    The velocity is an average of past gradients, so its scale is that of one gradient (the
    heavy-ball form ``v = mu*v + g`` of torch.optim.SGD is ``1/(1-mu)`` times larger at steady
    state: use a learning rate ``1/(1-beta)`` times larger here for the same step length).

    It equals ``torch.optim.SGD(momentum=beta, dampening=beta)`` at every step but the first:
    torch starts its buffer at :math:`v_1 = g_1`, this form at :math:`v_1 = (1-\beta) g_1`
    (from :math:`v_0 = 0`), so the first step is :math:`1-\beta` times shorter and the
    two trajectories differ from then on by that first step's offset, decaying as
    :math:`\beta^t` in the velocity.

    State key: ``momentum_buffer`` (:math:`v`). Defaults: ``lr=1e-2, beta=0.9``.
    Reference: Polyak, 1964; the EMA form as in Goodfellow et al., *Deep Learning*, 8.3.2.

    When to use it: to damp oscillations across a ravine while keeping speed along it; the
    EMA form keeps ``lr`` meaning "step length per unit gradient" whatever ``beta`` is.
    Implementations: as :class:`SGD` (torch's fused SGD kernel with a zero-started buffer).
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float | Tensor = 1e-2,
        beta: float = 0.9,
        weight_decay: float = 0,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        differentiable: bool = False,
        fused: bool | None = None,
        flat: bool = False,
    ) -> None:
        check_beta("beta", beta)
        super().__init__(
            params,
            lr=lr,
            momentum=beta,
            dampening=beta,
            weight_decay=weight_decay,
            nesterov=False,
            maximize=maximize,
            foreach=foreach,
            differentiable=differentiable,
            fused=fused,
            flat=flat,
        )

    def _update(self, group: dict[str, Any], bucket: Bucket, impl: Impl) -> None:
        beta = group["momentum"]
        sgd(
            bucket.params,
            bucket.grads,
            bucket.state("momentum_buffer") if beta != 0 else [],  # beta = 0: v_t = g_t
            lr=group["lr"],
            weight_decay=group["weight_decay"],
            momentum=beta,
            dampening=beta,  # EMA: the gradient's weight is 1 - beta
            nesterov=False,
            maximize=group["maximize"],
            first_step=False,  # the one difference from SGD: v_0 = 0, no v_1 = g_1 start
            impl=impl,
        )


# ---------------------------------------------------------------------------------------
# functional form


def sgd(
    params: list[Tensor],
    grads: list[Tensor],
    momentum_buffers: list[Tensor],
    *,
    lr: float | Tensor,
    weight_decay: float,
    momentum: float,
    dampening: float,
    nesterov: bool,
    maximize: bool,
    first_step: bool,
    impl: Impl = "loop",
) -> None:
    """Apply one SGD step in place (see :class:`SGD`).

    ``momentum_buffers`` is empty when ``momentum == 0``. ``first_step=True`` starts the
    buffers at the gradient (torch.optim.SGD); ``False`` continues from their values.
    """
    implementation = {"loop": _sgd_loop, "foreach": _sgd_foreach, "fused": _sgd_fused}[impl]
    implementation(
        params,
        grads,
        momentum_buffers,
        lr=as_float(lr),
        weight_decay=weight_decay,
        momentum=momentum,
        dampening=dampening,
        nesterov=nesterov,
        maximize=maximize,
        first_step=first_step,
    )


def _sgd_loop(
    params: list[Tensor],
    grads: list[Tensor],
    momentum_buffers: list[Tensor],
    *,
    lr: float,
    weight_decay: float,
    momentum: float,
    dampening: float,
    nesterov: bool,
    maximize: bool,
    first_step: bool,
) -> None:
    for i, param in enumerate(params):
        grad = -grads[i] if maximize else grads[i]
        if weight_decay != 0:
            grad = grad.add(param, alpha=weight_decay)
        if momentum != 0:
            velocity = momentum_buffers[i]
            if first_step:
                velocity.copy_(grad.to_dense() if grad.is_sparse else grad)
            else:
                velocity.mul_(momentum).add_(grad, alpha=1 - dampening)
            # nesterov: g + mu*v, written so that a sparse g adds onto the dense velocity
            grad = velocity.mul(momentum).add_(grad) if nesterov else velocity
        param.add_(grad, alpha=-lr)


def _sgd_foreach(
    params: list[Tensor],
    grads: list[Tensor],
    momentum_buffers: list[Tensor],
    *,
    lr: float,
    weight_decay: float,
    momentum: float,
    dampening: float,
    nesterov: bool,
    maximize: bool,
    first_step: bool,
) -> None:
    if maximize:
        grads = torch._foreach_neg(grads)
    if weight_decay != 0:
        grads = torch._foreach_add(grads, params, alpha=weight_decay)
    if momentum != 0:
        if first_step:
            torch._foreach_copy_(momentum_buffers, grads)
        else:
            torch._foreach_mul_(momentum_buffers, momentum)
            torch._foreach_add_(momentum_buffers, grads, alpha=1 - dampening)
        if nesterov:
            grads = torch._foreach_add(grads, momentum_buffers, alpha=momentum)
        else:
            grads = momentum_buffers
    torch._foreach_add_(params, grads, alpha=-lr)


def _sgd_fused(
    params: list[Tensor],
    grads: list[Tensor],
    momentum_buffers: list[Tensor],
    *,
    lr: float,
    weight_decay: float,
    momentum: float,
    dampening: float,
    nesterov: bool,
    maximize: bool,
    first_step: bool,
) -> None:
    torch._fused_sgd_(
        params,
        grads,
        momentum_buffers,
        weight_decay=weight_decay,
        momentum=momentum,
        lr=lr,
        dampening=dampening,
        nesterov=nesterov,
        maximize=maximize,
        is_first_step=first_step,
    )
