"""Adam and AdamW: adaptive moment estimation, with L2 or decoupled weight decay.

Adam and AdamW differ in one line, where weight decay enters, so they share this file
and its code; the flag ``decoupled_weight_decay`` names the difference.
"""

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
    check_betas,
    check_lr,
    check_non_negative,
)

__all__ = ["Adam", "AdamW", "adam"]


class Adam(EduOptimizer):
    r"""Adam (Kingma and Ba, 2015, https://arxiv.org/abs/1412.6980).

    For each parameter :math:`\theta` with gradient :math:`g_t` at step :math:`t`:

    .. math::
        g_t &\leftarrow -g_t \quad\text{if maximize} \\
        g_t &\leftarrow g_t + \lambda\theta_{t-1}
            \quad\text{(L2 penalty; AdamW instead: } \theta_{t-1} \leftarrow
            (1 - \gamma\lambda)\,\theta_{t-1}\text{)} \\
        m_t &= \beta_1 m_{t-1} + (1-\beta_1)\, g_t \\
        v_t &= \beta_2 v_{t-1} + (1-\beta_2)\, g_t^2 \\
        \hat v_t &= \max(\hat v_{t-1}, v_t) \quad\text{if amsgrad, else } v_t \\
        \theta_t &= \theta_{t-1} - \frac{\gamma}{1-\beta_1^t}\,
            \frac{m_t}{\sqrt{\hat v_t}/\sqrt{1-\beta_2^t} + \epsilon}

    with :math:`m_0 = v_0 = \hat v_0 = 0`. State keys, as in torch.optim: ``step``,
    ``exp_avg`` (m), ``exp_avg_sq`` (v), ``max_exp_avg_sq`` (:math:`\hat v`, amsgrad only).

    Defaults: ``lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, amsgrad=False``.
    AMSGrad: Reddi et al., 2018, https://openreview.net/forum?id=ryQu7f-RZ.

    When to use it: the default first choice for most networks; it needs little tuning
    because each coordinate's step is scaled by its own gradient history.

    Implementations: ``foreach=False`` is the per-tensor loop below, line for line the
    equations; the default uses torch's fused kernel ``torch._fused_adam_`` (or
    ``_fused_adamw_``), which computes the same equations in one pass over memory, and falls
    back to the multi-tensor ``torch._foreach_*`` path where the fused kernel does not apply.
    ``flat=True`` packs all tensors into one buffer per device and dtype.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float | Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        amsgrad: bool = False,
        *,
        foreach: bool | None = None,
        maximize: bool = False,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        decoupled_weight_decay: bool = False,
        flat: bool = False,
    ) -> None:
        check_lr(lr)
        check_non_negative("eps", eps)
        check_betas(betas)
        check_non_negative("weight_decay", weight_decay)
        defaults = dict(
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            amsgrad=amsgrad,
            maximize=maximize,
            foreach=foreach,
            capturable=capturable,
            differentiable=differentiable,
            fused=fused,
            decoupled_weight_decay=decoupled_weight_decay,
        )
        super().__init__(params, defaults, flat=flat)

    def _init_state(self, param: Tensor, state: dict[str, Any], group: dict[str, Any]) -> None:
        state["step"] = self._new_step(param, group)
        state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        if group["amsgrad"]:
            state["max_exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)

    def _can_fuse(self, group: dict[str, Any]) -> bool:
        return True

    def _update(self, group: dict[str, Any], bucket: Bucket, impl: Impl) -> None:
        beta1, beta2 = group["betas"]
        adam(
            bucket.params,
            bucket.grads,
            bucket.state("exp_avg"),
            bucket.state("exp_avg_sq"),
            bucket.state("max_exp_avg_sq") if group["amsgrad"] else [],
            bucket.state("step"),
            lr=group["lr"],
            beta1=as_float(beta1),
            beta2=as_float(beta2),
            eps=group["eps"],
            weight_decay=group["weight_decay"],
            amsgrad=group["amsgrad"],
            maximize=group["maximize"],
            decoupled_weight_decay=group["decoupled_weight_decay"],
            impl=impl,
        )


class AdamW(Adam):
    r"""AdamW: Adam with decoupled weight decay (Loshchilov and Hutter, 2019,
    https://arxiv.org/abs/1711.05101).

    Identical to :class:`Adam` except for the weight-decay line: instead of adding
    :math:`\lambda\theta` to the gradient (where the adaptive denominator would shrink it),
    the parameter itself decays, :math:`\theta_{t-1} \leftarrow (1-\gamma\lambda)\theta_{t-1}`,
    before the Adam update.

    Defaults: ``lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False``.

    When to use it: whenever you want weight decay with Adam (transformers, most modern
    training recipes); an L2 penalty inside Adam regularises large-gradient weights less.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float | Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        flat: bool = False,
    ) -> None:
        super().__init__(
            params,
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            amsgrad=amsgrad,
            foreach=foreach,
            maximize=maximize,
            capturable=capturable,
            differentiable=differentiable,
            fused=fused,
            decoupled_weight_decay=True,
            flat=flat,
        )


# ---------------------------------------------------------------------------------------
# functional form


def adam(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    max_exp_avg_sqs: list[Tensor],
    steps: list[Tensor],
    *,
    lr: float | Tensor,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    amsgrad: bool,
    maximize: bool,
    decoupled_weight_decay: bool = False,
    impl: Impl = "loop",
) -> None:
    """Apply one Adam/AdamW step in place to ``params`` (see :class:`Adam` for the math).

    ``impl`` is ``"loop"`` (per tensor, the reference), ``"foreach"`` (multi-tensor) or
    ``"fused"`` (torch's fused kernel); the foreach and fused paths need tensors of one
    device and dtype.
    """
    implementation = {"loop": _adam_loop, "foreach": _adam_foreach, "fused": _adam_fused}[impl]
    implementation(
        params,
        grads,
        exp_avgs,
        exp_avg_sqs,
        max_exp_avg_sqs,
        steps,
        lr=lr,
        beta1=beta1,
        beta2=beta2,
        eps=eps,
        weight_decay=weight_decay,
        amsgrad=amsgrad,
        maximize=maximize,
        decoupled_weight_decay=decoupled_weight_decay,
    )


def _adam_loop(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    max_exp_avg_sqs: list[Tensor],
    steps: list[Tensor],
    *,
    lr: float | Tensor,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    amsgrad: bool,
    maximize: bool,
    decoupled_weight_decay: bool,
) -> None:
    lr = as_float(lr)
    for i, param in enumerate(params):
        grad = -grads[i] if maximize else grads[i]
        m, v, step = exp_avgs[i], exp_avg_sqs[i], steps[i]
        step += 1
        t = step.item()
        if weight_decay != 0:
            if decoupled_weight_decay:
                param.mul_(1 - lr * weight_decay)
            else:
                grad = grad.add(param, alpha=weight_decay)
        m.lerp_(grad, 1 - beta1)  # m = b1*m + (1-b1)*g
        v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)  # v = b2*v + (1-b2)*g^2
        if amsgrad:
            torch.maximum(max_exp_avg_sqs[i], v, out=max_exp_avg_sqs[i])
            v = max_exp_avg_sqs[i]
        step_size = lr / (1 - beta1**t)
        denom = (v.sqrt() / math.sqrt(1 - beta2**t)).add_(eps)
        param.addcdiv_(m, denom, value=-step_size)


def _adam_foreach(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    max_exp_avg_sqs: list[Tensor],
    steps: list[Tensor],
    *,
    lr: float | Tensor,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    amsgrad: bool,
    maximize: bool,
    decoupled_weight_decay: bool,
) -> None:
    lr = as_float(lr)
    torch._foreach_add_(steps, 1)
    if maximize:
        grads = torch._foreach_neg(grads)
    if weight_decay != 0:
        if decoupled_weight_decay:
            torch._foreach_mul_(params, 1 - lr * weight_decay)
        else:
            grads = torch._foreach_add(grads, params, alpha=weight_decay)
    torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, 1 - beta2)
    if amsgrad:
        torch._foreach_maximum_(max_exp_avg_sqs, exp_avg_sqs)
        second_moments = max_exp_avg_sqs
    else:
        second_moments = exp_avg_sqs
    t = [step.item() for step in steps]
    neg_step_sizes = [-lr / (1 - beta1**ti) for ti in t]
    bias_correction2_sqrt = [math.sqrt(1 - beta2**ti) for ti in t]
    denom = torch._foreach_sqrt(second_moments)
    torch._foreach_div_(denom, bias_correction2_sqrt)
    torch._foreach_add_(denom, eps)
    torch._foreach_addcdiv_(params, exp_avgs, denom, neg_step_sizes)


def _adam_fused(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    max_exp_avg_sqs: list[Tensor],
    steps: list[Tensor],
    *,
    lr: float | Tensor,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    amsgrad: bool,
    maximize: bool,
    decoupled_weight_decay: bool,
) -> None:
    kernel = torch._fused_adamw_ if decoupled_weight_decay else torch._fused_adam_
    torch._foreach_add_(steps, 1)
    kernel(
        params,
        grads,
        exp_avgs,
        exp_avg_sqs,
        max_exp_avg_sqs,
        steps,
        lr=as_float(lr),
        beta1=beta1,
        beta2=beta2,
        weight_decay=weight_decay,
        eps=eps,
        amsgrad=amsgrad,
        maximize=maximize,
    )
