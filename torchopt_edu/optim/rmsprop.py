"""RMSprop: steps scaled by a moving average of squared gradients."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from torchopt_edu.optim._base import (
    Bucket,
    EduOptimizer,
    Impl,
    as_float,
    check_lr,
    check_non_negative,
)

__all__ = ["RMSprop", "rmsprop"]


class RMSprop(EduOptimizer):
    r"""RMSprop (Hinton, Coursera lecture 6e, 2012; centered form: Graves, 2013,
    https://arxiv.org/abs/1308.0850).

    .. math::
        g_t &\leftarrow -g_t \quad\text{if maximize};\qquad
        g_t \leftarrow g_t + \lambda\theta_{t-1} \quad\text{(weight\_decay)} \\
        s_t &= \alpha s_{t-1} + (1-\alpha)\, g_t^2 \\
        \bar g_t &= \alpha \bar g_{t-1} + (1-\alpha)\, g_t \quad\text{(centered only)} \\
        d_t &= \sqrt{s_t - \bar g_t^2} + \epsilon \ \text{if centered, else }
            \sqrt{s_t} + \epsilon \\
        b_t &= \mu b_{t-1} + g_t / d_t, \quad \theta_t = \theta_{t-1} - \gamma b_t
            \quad\text{if momentum } \mu > 0 \\
        \theta_t &= \theta_{t-1} - \gamma\, g_t / d_t \quad\text{otherwise}

    State keys: ``step``, ``square_avg`` (s), ``grad_avg`` (:math:`\bar g`, centered only),
    ``momentum_buffer`` (b, momentum > 0 only).

    Defaults: ``lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0, momentum=0, centered=False``.

    When to use it: recurrent networks and non-stationary objectives (reinforcement learning),
    where Adagrad's ever-growing sum would stop learning.

    Implementations: the per-tensor loop and the multi-tensor path mirror the equations.
    torch has no fused RMSprop kernel, but for the plain configuration (no momentum, not
    centered, no weight decay, not maximize, ``alpha < 1``, CPU) RMSprop *is* Adam with
    :math:`\beta_1 = 0` and no bias correction: ``m_t = g_t`` and ``1 - alpha^t -> 1``. The
    default path runs torch's fused Adam kernel that way (``beta1=0``, a step count of
    infinity so that both bias corrections equal 1, and the gradient itself as the
    first-moment buffer, so no memory is added): one pass over memory instead of five.
    """

    fused_on_accelerators = False

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float | Tensor = 1e-2,
        alpha: float = 0.99,
        eps: float = 1e-8,
        weight_decay: float = 0,
        momentum: float = 0,
        centered: bool = False,
        capturable: bool = False,
        foreach: bool | None = None,
        maximize: bool = False,
        differentiable: bool = False,
        *,
        fused: bool | None = None,
        flat: bool = False,
    ) -> None:
        check_lr(lr)
        check_non_negative("eps", eps)
        check_non_negative("momentum", momentum)
        check_non_negative("weight_decay", weight_decay)
        check_non_negative("alpha", alpha)
        defaults = dict(
            lr=lr,
            momentum=momentum,
            alpha=alpha,
            eps=eps,
            centered=centered,
            weight_decay=weight_decay,
            capturable=capturable,
            foreach=foreach,
            maximize=maximize,
            differentiable=differentiable,
            fused=fused,
        )
        super().__init__(params, defaults, flat=flat)

    def _init_state(self, param: Tensor, state: dict[str, Any], group: dict[str, Any]) -> None:
        state["step"] = self._new_step(param, group)
        state["square_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        if group["momentum"] > 0:
            state["momentum_buffer"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        if group["centered"]:
            state["grad_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)

    def _can_fuse(self, group: dict[str, Any]) -> bool:
        return (
            group["momentum"] == 0
            and not group["centered"]
            and group["weight_decay"] == 0
            and not group["maximize"]
            and group["alpha"] < 1
        )

    def _choose_impl(self, group: dict[str, Any], bucket: Bucket) -> Impl:
        impl = super()._choose_impl(group, bucket)
        if impl == "fused" and bucket.device.type != "cpu":
            # The gradient-as-buffer aliasing is verified on the CPU kernel only.
            if group.get("fused"):
                raise RuntimeError("RMSprop: fused=True is only available on CPU")
            return "foreach"
        return impl

    def _update(self, group: dict[str, Any], bucket: Bucket, impl: Impl) -> None:
        rmsprop(
            bucket.params,
            bucket.grads,
            bucket.state("square_avg"),
            bucket.state("grad_avg") if group["centered"] else [],
            bucket.state("momentum_buffer") if group["momentum"] > 0 else [],
            bucket.state("step"),
            lr=group["lr"],
            alpha=group["alpha"],
            eps=group["eps"],
            weight_decay=group["weight_decay"],
            momentum=group["momentum"],
            centered=group["centered"],
            maximize=group["maximize"],
            impl=impl,
        )


def rmsprop(
    params: list[Tensor],
    grads: list[Tensor],
    square_avgs: list[Tensor],
    grad_avgs: list[Tensor],
    momentum_buffers: list[Tensor],
    steps: list[Tensor],
    *,
    lr: float | Tensor,
    alpha: float,
    eps: float,
    weight_decay: float,
    momentum: float,
    centered: bool,
    maximize: bool,
    impl: Impl = "loop",
) -> None:
    """Apply one RMSprop step in place (see :class:`RMSprop`).

    ``grad_avgs`` is empty unless ``centered``; ``momentum_buffers`` is empty unless
    ``momentum > 0``. ``impl="fused"`` requires the plain configuration (see the class).
    """
    implementation = {"loop": _rmsprop_loop, "foreach": _rmsprop_foreach, "fused": _rmsprop_fused}
    implementation[impl](
        params,
        grads,
        square_avgs,
        grad_avgs,
        momentum_buffers,
        steps,
        lr=as_float(lr),
        alpha=alpha,
        eps=eps,
        weight_decay=weight_decay,
        momentum=momentum,
        centered=centered,
        maximize=maximize,
    )


def _rmsprop_loop(
    params: list[Tensor],
    grads: list[Tensor],
    square_avgs: list[Tensor],
    grad_avgs: list[Tensor],
    momentum_buffers: list[Tensor],
    steps: list[Tensor],
    *,
    lr: float,
    alpha: float,
    eps: float,
    weight_decay: float,
    momentum: float,
    centered: bool,
    maximize: bool,
) -> None:
    for i, param in enumerate(params):
        steps[i] += 1
        grad = -grads[i] if maximize else grads[i]
        if weight_decay != 0:
            grad = grad.add(param, alpha=weight_decay)
        square_avg = square_avgs[i]
        square_avg.mul_(alpha).addcmul_(grad, grad, value=1 - alpha)  # s = a*s + (1-a)*g^2
        if centered:
            grad_avg = grad_avgs[i]
            grad_avg.lerp_(grad, 1 - alpha)  # g_bar = a*g_bar + (1-a)*g
            denom = square_avg.addcmul(grad_avg, grad_avg, value=-1).sqrt_()
        else:
            denom = square_avg.sqrt()
        denom.add_(eps)
        if momentum > 0:
            buffer = momentum_buffers[i]
            buffer.mul_(momentum).addcdiv_(grad, denom)  # b = mu*b + g/d
            param.add_(buffer, alpha=-lr)
        else:
            param.addcdiv_(grad, denom, value=-lr)


def _rmsprop_foreach(
    params: list[Tensor],
    grads: list[Tensor],
    square_avgs: list[Tensor],
    grad_avgs: list[Tensor],
    momentum_buffers: list[Tensor],
    steps: list[Tensor],
    *,
    lr: float,
    alpha: float,
    eps: float,
    weight_decay: float,
    momentum: float,
    centered: bool,
    maximize: bool,
) -> None:
    torch._foreach_add_(steps, 1)
    if maximize:
        grads = torch._foreach_neg(grads)
    if weight_decay != 0:
        grads = torch._foreach_add(grads, params, alpha=weight_decay)
    torch._foreach_mul_(square_avgs, alpha)
    torch._foreach_addcmul_(square_avgs, grads, grads, value=1 - alpha)
    if centered:
        torch._foreach_lerp_(grad_avgs, grads, 1 - alpha)
        denom = torch._foreach_addcmul(square_avgs, grad_avgs, grad_avgs, value=-1)
        torch._foreach_sqrt_(denom)
    else:
        denom = torch._foreach_sqrt(square_avgs)
    torch._foreach_add_(denom, eps)
    if momentum > 0:
        torch._foreach_mul_(momentum_buffers, momentum)
        torch._foreach_addcdiv_(momentum_buffers, grads, denom)
        torch._foreach_add_(params, momentum_buffers, alpha=-lr)
    else:
        torch._foreach_addcdiv_(params, grads, denom, value=-lr)


def _rmsprop_fused(
    params: list[Tensor],
    grads: list[Tensor],
    square_avgs: list[Tensor],
    grad_avgs: list[Tensor],
    momentum_buffers: list[Tensor],
    steps: list[Tensor],
    *,
    lr: float,
    alpha: float,
    eps: float,
    weight_decay: float,
    momentum: float,
    centered: bool,
    maximize: bool,
) -> None:
    torch._foreach_add_(steps, 1)
    # Adam with beta1 = 0 and both bias corrections 1 - beta^inf = 1 is exactly RMSprop:
    # m = g (written into the gradient buffer, which already holds g), v = square_avg.
    no_bias_correction = torch.full((), math.inf, device=params[0].device)
    torch._fused_adam_(
        params,
        grads,
        grads,
        square_avgs,
        [],
        [no_bias_correction] * len(params),
        lr=lr,
        beta1=0.0,
        beta2=alpha,
        weight_decay=0.0,
        eps=eps,
        amsgrad=False,
        maximize=False,
    )
