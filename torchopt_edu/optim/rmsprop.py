"""RMSprop: steps scaled by a moving average of squared gradients."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from torchopt_edu.optim._base import Bucket, EduOptimizer, Hyper, Impl
from torchopt_edu.optim._checks import check_lr, check_non_negative
from torchopt_edu.optim._shared import directed_grad, directed_grads

__all__ = ["RMSprop", "RMSpropHyper"]


@dataclass(frozen=True)
class RMSpropHyper(Hyper):
    """What one RMSprop update reads from its param group."""

    alpha: float
    eps: float
    weight_decay: float
    momentum: float
    centered: bool
    maximize: bool


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
    hyper = RMSpropHyper

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
        self.check_options(defaults)
        super().__init__(params, defaults, flat=flat)

    @classmethod
    def check_options(cls, options: dict[str, Any]) -> None:
        """Learning rate, eps, momentum, weight decay and alpha finite and >= 0."""
        check_lr(options["lr"])
        check_non_negative("eps", options["eps"])
        check_non_negative("momentum", options["momentum"])
        check_non_negative("weight_decay", options["weight_decay"])
        check_non_negative("alpha", options["alpha"])

    def _init_state(self, param: Tensor, state: dict[str, Any], group: dict[str, Any]) -> None:
        state["step"] = self._new_step(param, group)
        state["square_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        if group["momentum"] > 0:
            state["momentum_buffer"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        if group["centered"]:
            state["grad_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)

    def _fuse_blocker(self, group: dict[str, Any]) -> str | None:
        # The fused path is Adam's kernel with beta1 = 0: exact for the plain form only.
        options = {
            "momentum > 0": group["momentum"] != 0,
            "centered=True": group["centered"],
            "weight_decay > 0": group["weight_decay"] != 0,
            "maximize=True": group["maximize"],
            "alpha=1": group["alpha"] >= 1,
        }
        used = [name for name, on in options.items() if on]
        if used:
            return f"the fused path computes plain RMSprop only, not with {', '.join(used)}"
        return None

    def _choose_impl(self, group: dict[str, Any], bucket: Bucket) -> Impl:
        impl = super()._choose_impl(group, bucket)
        if impl == "fused" and bucket.device.type != "cpu":
            # The gradient-as-buffer aliasing is verified on the CPU kernel only.
            if group.get("fused"):
                raise RuntimeError("RMSprop: fused=True is only available on CPU")
            return "foreach"
        return impl


# ---------------------------------------------------------------------------------------
# implementations: the reference loop, then the fast paths


def rmsprop_loop(b: Bucket, h: RMSpropHyper) -> None:
    """Per tensor, line for line the equations of :class:`RMSprop`."""
    grad_avgs = b.state("grad_avg") if h.centered else [None] * len(b.params)
    buffers = b.state("momentum_buffer") if h.momentum > 0 else [None] * len(b.params)
    for param, grad, square_avg, grad_avg, buffer in zip(
        b.params, b.grads, b.state("square_avg"), grad_avgs, buffers, strict=True
    ):
        grad = directed_grad(grad, param, h.maximize, h.weight_decay)
        square_avg.mul_(h.alpha).addcmul_(grad, grad, value=1 - h.alpha)  # s = a*s + (1-a)*g^2
        if grad_avg is not None:
            grad_avg.lerp_(grad, 1 - h.alpha)  # g_bar = a*g_bar + (1-a)*g
            denom = square_avg.addcmul(grad_avg, grad_avg, value=-1).sqrt_()
        else:
            denom = square_avg.sqrt()
        denom.add_(h.eps)
        if buffer is not None:
            buffer.mul_(h.momentum).addcdiv_(grad, denom)  # b = mu*b + g/d
            param.add_(buffer, alpha=-h.lr)
        else:
            param.addcdiv_(grad, denom, value=-h.lr)


def rmsprop_foreach(b: Bucket, h: RMSpropHyper) -> None:
    """The same update as :func:`rmsprop_loop` with one multi-tensor kernel per line."""
    square_avgs = b.state("square_avg")
    grad_avgs = b.state("grad_avg") if h.centered else []  # looked up before anything changes
    buffers = b.state("momentum_buffer") if h.momentum > 0 else []
    grads = directed_grads(b.grads, b.params, h.maximize, h.weight_decay)
    torch._foreach_mul_(square_avgs, h.alpha)
    torch._foreach_addcmul_(square_avgs, grads, grads, value=1 - h.alpha)
    if h.centered:
        torch._foreach_lerp_(grad_avgs, grads, 1 - h.alpha)
        denom = torch._foreach_addcmul(square_avgs, grad_avgs, grad_avgs, value=-1)
        torch._foreach_sqrt_(denom)
    else:
        denom = torch._foreach_sqrt(square_avgs)
    torch._foreach_add_(denom, h.eps)
    if h.momentum > 0:
        torch._foreach_mul_(buffers, h.momentum)
        torch._foreach_addcdiv_(buffers, grads, denom)
        torch._foreach_add_(b.params, buffers, alpha=-h.lr)
    else:
        torch._foreach_addcdiv_(b.params, grads, denom, value=-h.lr)


def rmsprop_fused(b: Bucket, h: RMSpropHyper) -> None:
    """Plain RMSprop as torch's fused Adam kernel (see the class docstring): one pass."""
    # Adam with beta1 = 0 and both bias corrections 1 - beta^inf = 1 is exactly RMSprop:
    # m = g (written into the gradient buffer, which already holds g: the same numbers, but
    # an infinite entry comes back NaN, as the parameter's does), v = square_avg.
    no_bias_correction = torch.full((), math.inf, device=b.device)
    torch._fused_adam_(
        b.params,
        b.grads,
        b.grads,
        b.state("square_avg"),
        [],
        [no_bias_correction] * len(b.params),
        lr=h.lr,
        beta1=0.0,
        beta2=h.alpha,
        weight_decay=0.0,
        eps=h.eps,
        amsgrad=False,
        maximize=False,
    )


RMSprop.paths = {"loop": rmsprop_loop, "foreach": rmsprop_foreach, "fused": rmsprop_fused}
