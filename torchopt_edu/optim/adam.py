"""Adam and AdamW: adaptive moment estimation, with L2 or decoupled weight decay.

Adam and AdamW differ in one line, where weight decay enters, so they share this file
and its code; the flag ``decoupled_weight_decay`` names the difference.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from torchopt_edu.optim._base import Bucket, EduOptimizer, Hyper
from torchopt_edu.optim._checks import check_betas, check_lr, check_non_negative
from torchopt_edu.optim._shared import decay_weights_, directed_grad, directed_grads

__all__ = ["Adam", "AdamW", "AdamHyper"]


@dataclass(frozen=True)
class AdamHyper(Hyper):
    """What one Adam/AdamW update reads from its param group."""

    beta1: float
    beta2: float
    eps: float
    weight_decay: float
    amsgrad: bool
    maximize: bool
    decoupled_weight_decay: bool

    @property
    def l2(self) -> float:
        """The L2 penalty added to the gradient (0 when the decay is decoupled)."""
        return 0.0 if self.decoupled_weight_decay else self.weight_decay

    @property
    def decoupled(self) -> float:
        """The decoupled decay rate applied to the parameter (0 for Adam's L2 form)."""
        return self.weight_decay if self.decoupled_weight_decay else 0.0


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
        self.check_options(defaults)
        super().__init__(params, defaults, flat=flat)

    @classmethod
    def check_options(cls, options: dict[str, Any]) -> None:
        """Learning rate, eps and weight decay finite and >= 0; betas in [0, 1)."""
        check_lr(options["lr"])
        check_non_negative("eps", options["eps"])
        check_betas(options["betas"])
        check_non_negative("weight_decay", options["weight_decay"])

    hyper = AdamHyper

    def _init_state(self, param: Tensor, state: dict[str, Any], group: dict[str, Any]) -> None:
        state["step"] = self._new_step(param, group)
        state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        if group["amsgrad"]:
            state["max_exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)

    def _fuse_blocker(self, group: dict[str, Any]) -> str | None:
        return None


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

    def __setstate__(self, state: dict[str, Any]) -> None:
        """As torch.optim.AdamW: a loaded Adam state dict keeps the decay decoupled."""
        super().__setstate__(state)
        for group in self.param_groups:
            group["decoupled_weight_decay"] = True


# ---------------------------------------------------------------------------------------
# implementations: the reference loop, then the fast paths


def adam_loop(b: Bucket, h: AdamHyper) -> None:
    """Per tensor, line for line the equations of :class:`Adam` (``state["step"]`` counted)."""
    second_moments = b.state("max_exp_avg_sq") if h.amsgrad else b.state("exp_avg_sq")
    for param, grad, m, v, v_hat, step in zip(
        b.params,
        b.grads,
        b.state("exp_avg"),
        b.state("exp_avg_sq"),
        second_moments,
        b.steps,
        strict=True,
    ):
        t = step.item()
        if h.decoupled:
            param.mul_(1 - h.lr * h.decoupled)  # AdamW: decay the weights, not the gradient
        grad = directed_grad(grad, param, h.maximize, h.l2)
        m.lerp_(grad, 1 - h.beta1)  # m = b1*m + (1-b1)*g
        v.mul_(h.beta2).addcmul_(grad, grad, value=1 - h.beta2)  # v = b2*v + (1-b2)*g^2
        if h.amsgrad:
            torch.maximum(v_hat, v, out=v_hat)  # v_hat = max(v_hat, v)
        step_size = h.lr / (1 - h.beta1**t)
        denom = (v_hat.sqrt() / math.sqrt(1 - h.beta2**t)).add_(h.eps)
        param.addcdiv_(m, denom, value=-step_size)


def adam_foreach(b: Bucket, h: AdamHyper) -> None:
    """The same update as :func:`adam_loop` with one multi-tensor kernel per line."""
    exp_avgs, exp_avg_sqs = b.state("exp_avg"), b.state("exp_avg_sq")
    second_moments = b.state("max_exp_avg_sq") if h.amsgrad else exp_avg_sqs
    decay_weights_(b.params, h.lr, h.decoupled)
    grads = directed_grads(b.grads, b.params, h.maximize, h.l2)
    torch._foreach_lerp_(exp_avgs, grads, 1 - h.beta1)
    torch._foreach_mul_(exp_avg_sqs, h.beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, 1 - h.beta2)
    if h.amsgrad:
        torch._foreach_maximum_(second_moments, exp_avg_sqs)
    t = [step.item() for step in b.steps]
    neg_step_sizes = [-h.lr / (1 - h.beta1**ti) for ti in t]
    bias_correction2_sqrt = [math.sqrt(1 - h.beta2**ti) for ti in t]
    denom = torch._foreach_sqrt(second_moments)
    torch._foreach_div_(denom, bias_correction2_sqrt)
    torch._foreach_add_(denom, h.eps)
    torch._foreach_addcdiv_(b.params, exp_avgs, denom, neg_step_sizes)


def adam_fused(b: Bucket, h: AdamHyper) -> None:
    """torch's fused kernel (``_fused_adam_`` or ``_fused_adamw_``): the same equations."""
    kernel = torch._fused_adamw_ if h.decoupled_weight_decay else torch._fused_adam_
    kernel(
        b.params,
        b.grads,
        b.state("exp_avg"),
        b.state("exp_avg_sq"),
        b.state("max_exp_avg_sq") if h.amsgrad else [],
        b.steps,
        lr=h.lr,
        beta1=h.beta1,
        beta2=h.beta2,
        weight_decay=h.weight_decay,
        eps=h.eps,
        amsgrad=h.amsgrad,
        maximize=h.maximize,
    )


Adam.paths = {"loop": adam_loop, "foreach": adam_foreach, "fused": adam_fused}
