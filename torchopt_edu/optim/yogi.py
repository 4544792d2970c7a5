"""Yogi: Adam whose second moment moves additively, so it cannot forget too fast."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from torchopt_edu.optim._base import Bucket, EduOptimizer, Hyper, filled_like
from torchopt_edu.optim._checks import check_betas, check_lr, check_non_negative
from torchopt_edu.optim._shared import directed_grad, directed_grads

__all__ = ["Yogi", "YogiHyper"]


@dataclass(frozen=True)
class YogiHyper(Hyper):
    """What one Yogi update reads from its param group."""

    beta1: float
    beta2: float
    eps: float
    weight_decay: float
    maximize: bool


class Yogi(EduOptimizer):
    r"""Yogi (Zaheer et al., NeurIPS 2018, "Adaptive Methods for Nonconvex Optimization").

    Adam with one line changed, the second-moment update:

    .. math::
        g_t &\leftarrow -g_t \ \text{if maximize};\qquad
        g_t \leftarrow g_t + \lambda\theta_{t-1} \ \text{(weight\_decay)} \\
        m_t &= \beta_1 m_{t-1} + (1-\beta_1)\, g_t \\
        v_t &= v_{t-1} - (1-\beta_2)\,\operatorname{sign}(v_{t-1} - g_t^2)\, g_t^2 \\
        \theta_t &= \theta_{t-1} - \frac{\gamma}{1-\beta_1^t}\,
            \frac{m_t}{\sqrt{v_t}/\sqrt{1-\beta_2^t} + \epsilon}

    with :math:`m_0 = 0`, :math:`v_0 = ` ``initial_accumulator_value``. Adam's
    :math:`v_t - v_{t-1} = (1-\beta_2)(g_t^2 - v_{t-1})` can shrink :math:`v` by a large
    fraction in one step when gradients suddenly get small; Yogi's change has the same sign
    but magnitude :math:`(1-\beta_2) g_t^2`, so the effective learning rate grows slowly.
    The bias corrections are Adam's (as in TensorFlow Addons' Yogi).

    State keys: ``step``, ``exp_avg`` (m), ``exp_avg_sq`` (v).
    Defaults: ``lr=1e-2, betas=(0.9, 0.999), eps=1e-3, initial_accumulator_value=1e-6``.

    When to use it: where Adam is unstable with rare large gradients, and as the server
    optimizer of federated learning (FedYogi, Reddi et al., 2021).
    Implementations: the per-tensor loop and the multi-tensor path (torch has no fused Yogi).
    """

    hyper = YogiHyper

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float | Tensor = 1e-2,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-3,
        initial_accumulator_value: float = 1e-6,
        weight_decay: float = 0,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        flat: bool = False,
    ) -> None:
        defaults = dict(
            lr=lr,
            betas=betas,
            eps=eps,
            initial_accumulator_value=initial_accumulator_value,
            weight_decay=weight_decay,
            maximize=maximize,
            foreach=foreach,
            fused=None,
        )
        self.check_options(defaults)
        super().__init__(params, defaults, flat=flat)

    @classmethod
    def check_options(cls, options: dict[str, Any]) -> None:
        """Learning rate, eps, initial value and weight decay finite and >= 0; betas in [0, 1)."""
        check_lr(options["lr"])
        check_betas(options["betas"])
        check_non_negative("eps", options["eps"])
        check_non_negative("initial_accumulator_value", options["initial_accumulator_value"])
        check_non_negative("weight_decay", options["weight_decay"])

    def _init_state(self, param: Tensor, state: dict[str, Any], group: dict[str, Any]) -> None:
        state["step"] = self._new_step(param, group)
        state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        state["exp_avg_sq"] = filled_like(param, group["initial_accumulator_value"])


# ---------------------------------------------------------------------------------------
# implementations: the reference loop, then the multi-tensor path


def yogi_loop(b: Bucket, h: YogiHyper) -> None:
    """Per tensor, line for line the equations of :class:`Yogi`."""
    for param, grad, m, v, step in zip(
        b.params, b.grads, b.state("exp_avg"), b.state("exp_avg_sq"), b.steps, strict=True
    ):
        t = step.item()
        grad = directed_grad(grad, param, h.maximize, h.weight_decay)
        m.lerp_(grad, 1 - h.beta1)  # m = b1*m + (1-b1)*g
        grad_sq = grad * grad
        v.addcmul_(torch.sign(v - grad_sq), grad_sq, value=-(1 - h.beta2))  # additive v
        denom = (v.sqrt() / math.sqrt(1 - h.beta2**t)).add_(h.eps)
        param.addcdiv_(m, denom, value=-h.lr / (1 - h.beta1**t))


def yogi_foreach(b: Bucket, h: YogiHyper) -> None:
    """The same update as :func:`yogi_loop` with one multi-tensor kernel per line."""
    exp_avgs, exp_avg_sqs = b.state("exp_avg"), b.state("exp_avg_sq")
    grads = directed_grads(b.grads, b.params, h.maximize, h.weight_decay)
    torch._foreach_lerp_(exp_avgs, grads, 1 - h.beta1)
    grad_sq = torch._foreach_mul(grads, grads)
    direction = torch._foreach_sub(exp_avg_sqs, grad_sq)
    torch._foreach_sign_(direction)
    torch._foreach_addcmul_(exp_avg_sqs, direction, grad_sq, value=-(1 - h.beta2))
    t = [step.item() for step in b.steps]
    denom = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_div_(denom, [math.sqrt(1 - h.beta2**ti) for ti in t])
    torch._foreach_add_(denom, h.eps)
    torch._foreach_addcdiv_(b.params, exp_avgs, denom, [-h.lr / (1 - h.beta1**ti) for ti in t])


Yogi.paths = {"loop": yogi_loop, "foreach": yogi_foreach}
