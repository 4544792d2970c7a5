"""SGD and Momentum: gradient descent with a velocity.

torch.optim.SGD and the source document's exponential-moving-average Momentum share one
update rule, ``v = mu*v + (1 - dampening)*g``; they differ only in the velocity's start
(torch: ``v_1 = g_1``; the document: ``v_0 = 0``, so ``v_1 = (1 - beta)*g_1``). They share this
file's code and name that difference with ``first_step``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from torchopt_edu.optim._base import Bucket, EduOptimizer, Hyper, Impl
from torchopt_edu.optim._checks import check_beta, check_lr, check_non_negative
from torchopt_edu.optim._shared import directed_grad, directed_grads

__all__ = ["SGD", "Momentum", "SGDHyper", "MomentumHyper"]


@dataclass(frozen=True)
class SGDHyper(Hyper):
    """What one SGD/Momentum update reads: the options, and where the velocity starts.

    ``zero_start`` is the one difference between the two classes: torch's SGD starts its
    velocity at the first gradient, :math:`v_1 = g_1`; the source document's Momentum starts
    from :math:`v_0 = 0`.
    """

    weight_decay: float
    momentum: float
    dampening: float
    nesterov: bool
    maximize: bool
    zero_start: bool = False


@dataclass(frozen=True)
class MomentumHyper(SGDHyper):
    """:class:`SGDHyper` with the velocity started from zero (the EMA form)."""

    zero_start: bool = True

    @classmethod
    def from_group(cls, group: dict[str, Any]) -> MomentumHyper:
        """The record, with the gradient's weight ``1 - beta`` even after a scheduler moved beta."""
        return super().from_group({**group, "dampening": group["momentum"]})


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
    hyper = SGDHyper

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
        self.check_options(defaults)
        super().__init__(params, defaults, flat=flat)

    @classmethod
    def check_options(cls, options: dict[str, Any]) -> None:
        """Learning rate, momentum and weight decay >= 0; Nesterov needs a momentum and no
        dampening."""
        check_lr(options["lr"])
        check_non_negative("momentum", options["momentum"])
        check_non_negative("weight_decay", options["weight_decay"])
        momentum, dampening = options["momentum"], options["dampening"]
        if options["nesterov"] and (momentum <= 0 or dampening != 0):
            raise ValueError(
                "Nesterov momentum requires a momentum and zero dampening "
                f"(got nesterov=True, momentum={momentum}, dampening={dampening})"
            )

    def _init_state(self, param: Tensor, state: dict[str, Any], group: dict[str, Any]) -> None:
        if group["momentum"] != 0:
            state["momentum_buffer"] = torch.zeros_like(param, memory_format=torch.preserve_format)

    def _fuse_blocker(self, group: dict[str, Any]) -> str | None:
        return None

    def _choose_impl(self, group: dict[str, Any], bucket: Bucket) -> Impl:
        impl = super()._choose_impl(group, bucket)
        low_precision = bucket.params[0].dtype in (torch.float16, torch.bfloat16)
        if impl == "fused" and low_precision and bucket.device.type == "cpu" and not group["fused"]:
            return "foreach"
        return impl


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

    hyper = MomentumHyper

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

    @classmethod
    def check_options(cls, options: dict[str, Any]) -> None:
        """The momentum (``beta``) in [0, 1), named as the user passed it, then SGD's rules."""
        check_beta("beta", options["momentum"])
        super().check_options(options)


# ---------------------------------------------------------------------------------------
# implementations: the reference loop, then the fast paths


def _starts_velocity(b: Bucket, h: SGDHyper) -> bool:
    """Whether this step sets the velocity to the gradient (torch's :math:`v_1 = g_1`)."""
    return b.first_step and not h.zero_start


def sgd_loop(b: Bucket, h: SGDHyper) -> None:
    """Per tensor, line for line the equations of :class:`SGD` (dense or sparse gradients)."""
    velocities = b.state("momentum_buffer") if h.momentum != 0 else [None] * len(b.params)
    first = _starts_velocity(b, h)
    for param, grad, velocity in zip(b.params, b.grads, velocities, strict=True):
        grad = directed_grad(grad, param, h.maximize, h.weight_decay)
        if velocity is not None:
            if first:
                velocity.copy_(grad.to_dense() if grad.is_sparse else grad)  # v_1 = g_1
            else:
                velocity.mul_(h.momentum).add_(grad, alpha=1 - h.dampening)  # v = mu*v + (1-tau)*g
            # nesterov: g + mu*v, written so that a sparse g adds onto the dense velocity
            grad = velocity.mul(h.momentum).add_(grad) if h.nesterov else velocity
        param.add_(grad, alpha=-h.lr)


def sgd_foreach(b: Bucket, h: SGDHyper) -> None:
    """The same update as :func:`sgd_loop` with one multi-tensor kernel per line."""
    grads = directed_grads(b.grads, b.params, h.maximize, h.weight_decay)
    if h.momentum != 0:
        velocities = b.state("momentum_buffer")
        if _starts_velocity(b, h):
            torch._foreach_copy_(velocities, grads)
        else:
            torch._foreach_mul_(velocities, h.momentum)
            torch._foreach_add_(velocities, grads, alpha=1 - h.dampening)
        if h.nesterov:
            grads = torch._foreach_add(grads, velocities, alpha=h.momentum)
        else:
            grads = velocities
    torch._foreach_add_(b.params, grads, alpha=-h.lr)


def sgd_fused(b: Bucket, h: SGDHyper) -> None:
    """torch's fused kernel ``_fused_sgd_``: the same equations in one pass."""
    torch._fused_sgd_(
        b.params,
        b.grads,
        b.state("momentum_buffer") if h.momentum != 0 else [],
        weight_decay=h.weight_decay,
        momentum=h.momentum,
        lr=h.lr,
        dampening=h.dampening,
        nesterov=h.nesterov,
        maximize=h.maximize,
        is_first_step=_starts_velocity(b, h),
    )


SGD.paths = {"loop": sgd_loop, "foreach": sgd_foreach, "fused": sgd_fused}
