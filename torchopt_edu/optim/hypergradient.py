r"""Hypergradient descent: SGD and Adam that learn their learning rate while they train.

Baydin et al., 2018, "Online Learning Rate Adaptation with Hypergradient Descent"
(https://arxiv.org/abs/1703.04782). An optimizer that steps :math:`\theta_t = \theta_{t-1} +
\alpha\, u_t` in a direction :math:`u_t` has, one step later, a loss whose derivative with
respect to the learning rate is

.. math::
    h_t = \frac{\partial f(\theta_{t-1})}{\partial \alpha}
        = \nabla f(\theta_{t-1}) \cdot \frac{\partial \theta_{t-1}}{\partial \alpha}
        = g_t \cdot u_{t-1},

so the learning rate itself can take a gradient step, :math:`\alpha_t = \alpha_{t-1} - \beta
h_t`, with the hyper-learning-rate :math:`\beta` (``hypergrad_lr``), before the parameters step
with :math:`\alpha_t`. The dot product runs over every parameter of the param group: each group
learns one rate. When successive gradients agree, :math:`h_t < 0` and the rate grows; when they
oscillate, it shrinks.

The learned rate is the group's ``lr``: read ``optimizer.param_groups[i]["lr"]`` after each
step for its trace, ``state_dict()`` saves it (a resumed run continues with the learned rate),
and a learning-rate scheduler that sets ``lr`` overrides what was learned. Nothing keeps the
rate positive (the paper does not either): with a large ``hypergrad_lr`` it can overshoot.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from torchopt_edu.optim._base import Bucket, EduOptimizer, Hyper
from torchopt_edu.optim._checks import check_lr, check_non_negative, is_integer
from torchopt_edu.optim._shared import directed_grad, directed_grads
from torchopt_edu.optim.adam import Adam

__all__ = ["SGDHD", "AdamHD", "SGDHDHyper"]


class _LearnsLr(EduOptimizer):
    """The step of hypergradient descent: learn each group's ``lr``, then take the step.

    A subclass names its previous direction :math:`u_{t-1}` for each parameter
    (``_previous_direction``); the learning rate's update is the same for every algorithm.
    A parameter that had no gradient in a step did not move, so its :math:`u` is 0 for the
    next hypergradient: each group lists them (indices into its ``params``) as ``"idle"``,
    which ``state_dict()`` keeps for an exact resume.
    """

    def _previous_direction(
        self, group: dict[str, Any], param: Tensor, state: dict[str, Any]
    ) -> Tensor | None:
        """:math:`u_{t-1}` of ``param`` (``None`` before its first step: :math:`u_0 = 0`)."""
        raise NotImplementedError

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        r"""One step: :math:`\alpha_t = \alpha_{t-1} - \beta\, g_t \cdot u_{t-1}`, then the update.

        The step is checked (sparse gradients, flags) before any learning rate changes, and a
        step that fails puts the learning rates back.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        plans = [self._plan(index, group) for index, group in enumerate(self.param_groups)]
        learned = [self._learned_lr(plan.group, plan.params) for plan in plans]
        previous = [group["lr"] for group in self.param_groups]
        for group, lr in zip(self.param_groups, learned, strict=True):
            _set_lr(group, lr)
        try:
            # not super().step(): for AdamHD that is Adam.step, which torch wraps with the
            # step hooks once any Adam is built, and the hooks would run twice
            EduOptimizer.step(self)
        except BaseException:
            for group, lr in zip(self.param_groups, previous, strict=True):
                group["lr"] = lr
            raise
        for plan in plans:  # a parameter without a gradient did not move: u_t = 0 for it
            moved = set(map(id, plan.params))
            plan.group["idle"] = [
                index
                for index, param in enumerate(plan.group["params"])
                if id(param) not in moved and param in self.state
            ]
        return loss

    def _learned_lr(self, group: dict[str, Any], params: list[Tensor]) -> float:
        r""":math:`\alpha_{t-1} - \beta h_t` with :math:`h_t = \sum_p g_t \cdot u_{t-1}`."""
        lr = float(group["lr"])
        idle = {id(group["params"][index]) for index in group.get("idle", ())}
        # one sum per device, read once: a single synchronisation per device and step
        sums: dict[torch.device, Tensor] = {}
        for param in params:
            state = self.state.get(param)
            if not state or id(param) in idle:  # u_{t-1} = 0: first step, or did not move
                continue
            direction = self._previous_direction(group, param, state)
            if direction is None:
                continue
            grad = directed_grad(param.grad, param, group["maximize"], self._l2(group))
            h = torch.dot(_real(grad).reshape(-1), _real(direction).reshape(-1))
            total = sums.get(param.device)
            sums[param.device] = h.double() if total is None else total + h
        hypergradient = sum(float(total) for total in sums.values())
        return lr - group["hypergrad_lr"] * hypergradient

    def _l2(self, group: dict[str, Any]) -> float:
        return group["weight_decay"]


def _check_idle(options: dict[str, Any]) -> None:
    """A group's ``"idle"``, if it has one: distinct indices into its ``params``."""
    if "idle" not in options:
        return
    idle, params = options["idle"], options.get("params", ())
    if (
        not isinstance(idle, (list, tuple))
        or not all(is_integer(i) and 0 <= i < len(params) for i in idle)
        or len(set(idle)) != len(idle)
    ):
        raise ValueError(
            f"idle must list distinct indices of the group's {len(params)} parameters, got {idle!r}"
        )


def _real(tensor: Tensor) -> Tensor:
    return torch.view_as_real(tensor) if tensor.is_complex() else tensor


def _set_lr(group: dict[str, Any], lr: float) -> None:
    if isinstance(group["lr"], Tensor):
        group["lr"].fill_(lr)
    else:
        group["lr"] = lr


# ---------------------------------------------------------------------------------------
# SGD-HD


@dataclass(frozen=True)
class SGDHDHyper(Hyper):
    """What one SGD-HD parameter update reads from its param group (``lr`` already learned)."""

    weight_decay: float
    maximize: bool


class SGDHD(_LearnsLr):
    r"""SGD-HD: plain SGD whose learning rate follows its hypergradient (Baydin et al., 2018).

    For the gradients :math:`g_t` of a param group (negated if ``maximize``, plus
    :math:`\lambda\theta_{t-1}` with ``weight_decay``), the direction is :math:`u_t = -g_t`, so

    .. math::
        h_t &= g_t \cdot u_{t-1} = -\,g_t \cdot g_{t-1} \\
        \alpha_t &= \alpha_{t-1} - \beta\, h_t = \alpha_{t-1} + \beta\, g_t \cdot g_{t-1} \\
        \theta_t &= \theta_{t-1} - \alpha_t\, g_t

    with :math:`g_0 = 0` (the first step uses the initial ``lr``). State: ``prev_grad``
    (:math:`g_{t-1}`). The learned :math:`\alpha_t` is the group's ``lr`` (see the module).

    Defaults: ``lr=1e-3, hypergrad_lr=1e-6, weight_decay=0`` (``hypergrad_lr`` as in the
    authors' code; the paper's experiments use :math:`\beta` from 1e-4 to 1e-3 for SGD).

    When to use it: when you do not want to tune SGD's learning rate or its decay schedule;
    the result depends much less on the initial ``lr`` than plain SGD does.
    """

    hyper = SGDHDHyper

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float | Tensor = 1e-3,
        hypergrad_lr: float = 1e-6,
        weight_decay: float = 0.0,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        flat: bool = False,
    ) -> None:
        defaults = dict(
            lr=lr,
            hypergrad_lr=hypergrad_lr,
            weight_decay=weight_decay,
            maximize=maximize,
            foreach=foreach,
            fused=None,
        )
        self.check_options(defaults)
        super().__init__(params, defaults, flat=flat)

    @classmethod
    def check_options(cls, options: dict[str, Any]) -> None:
        """Learning rate, hyper-learning-rate and weight decay finite and >= 0."""
        check_lr(options["lr"])
        check_non_negative("hypergrad_lr", options["hypergrad_lr"])
        check_non_negative("weight_decay", options["weight_decay"])
        _check_idle(options)

    def _init_state(self, param: Tensor, state: dict[str, Any], group: dict[str, Any]) -> None:
        state["prev_grad"] = torch.zeros_like(param, memory_format=torch.preserve_format)

    def _previous_direction(
        self, group: dict[str, Any], param: Tensor, state: dict[str, Any]
    ) -> Tensor | None:
        return -state["prev_grad"]


def sgd_hd_loop(b: Bucket, h: SGDHDHyper) -> None:
    """Per tensor, the parameter update of :class:`SGDHD` (``h.lr`` is :math:`\\alpha_t`)."""
    for param, grad, prev_grad in zip(b.params, b.grads, b.state("prev_grad"), strict=True):
        grad = directed_grad(grad, param, h.maximize, h.weight_decay)
        param.add_(grad, alpha=-h.lr)  # theta -= alpha_t * g_t
        prev_grad.copy_(grad)  # g_{t-1} for the next hypergradient


def sgd_hd_foreach(b: Bucket, h: SGDHDHyper) -> None:
    """The same update as :func:`sgd_hd_loop` with one multi-tensor kernel per line."""
    grads = directed_grads(b.grads, b.params, h.maximize, h.weight_decay)
    torch._foreach_add_(b.params, grads, alpha=-h.lr)
    torch._foreach_copy_(b.state("prev_grad"), grads)


SGDHD.paths = {"loop": sgd_hd_loop, "foreach": sgd_hd_foreach}


# ---------------------------------------------------------------------------------------
# Adam-HD


class AdamHD(_LearnsLr, Adam):
    r"""Adam-HD: Adam whose learning rate follows its hypergradient (Baydin et al., 2018).

    Adam's direction is :math:`u_t = -\hat m_t / (\sqrt{\hat v_t} + \epsilon)` (bias-corrected
    moments, as in :class:`~torchopt_edu.optim.adam.Adam`), so with the gradients :math:`g_t`
    of a param group

    .. math::
        h_t &= g_t \cdot u_{t-1}
            = -\,g_t \cdot \frac{\hat m_{t-1}}{\sqrt{\hat v_{t-1}} + \epsilon} \\
        \alpha_t &= \alpha_{t-1} - \beta\, h_t

    and then the Adam update with :math:`\alpha_t` (:math:`u_0 = 0`: the first step uses the
    initial ``lr``). :math:`u_{t-1}` is recomputed from the moments Adam keeps anyway, so
    the state is Adam's (``step``, ``exp_avg``, ``exp_avg_sq``), no larger. ``weight_decay``
    is Adam's L2 penalty (it enters :math:`g_t`, so the hypergradient sees it); the paper
    covers no decoupled decay. The learned :math:`\alpha_t` is the group's ``lr``.

    Defaults: ``lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, amsgrad=False,
    hypergrad_lr=1e-8`` (``hypergrad_lr`` as in the authors' code; the paper uses 1e-7).

    When to use it: as Adam, when you would otherwise tune its learning rate or schedule.
    The parameter update runs on Adam's paths (torch's fused kernel by default); computing
    :math:`h_t` costs a few extra passes over the gradients and moments per step.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float | Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        amsgrad: bool = False,
        hypergrad_lr: float = 1e-8,
        *,
        foreach: bool | None = None,
        maximize: bool = False,
        fused: bool | None = None,
        flat: bool = False,
    ) -> None:
        check_non_negative("hypergrad_lr", hypergrad_lr)  # Adam's options are checked by Adam
        super().__init__(
            params,
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            amsgrad=amsgrad,
            foreach=foreach,
            maximize=maximize,
            fused=fused,
            flat=flat,
        )
        for group in self.param_groups:
            group.setdefault("hypergrad_lr", hypergrad_lr)
        self.defaults["hypergrad_lr"] = hypergrad_lr

    @classmethod
    def check_options(cls, options: dict[str, Any]) -> None:
        """Adam's rules; the hyper-learning-rate finite and >= 0 (Adam's constructor checks
        its groups before they have one)."""
        super().check_options(options)
        if "hypergrad_lr" in options:
            check_non_negative("hypergrad_lr", options["hypergrad_lr"])
        _check_idle(options)

    def _previous_direction(
        self, group: dict[str, Any], param: Tensor, state: dict[str, Any]
    ) -> Tensor | None:
        t = float(state["step"])
        if t == 0:
            return None
        beta1, beta2 = (float(beta) for beta in group["betas"])
        m = _real(state["exp_avg"])  # complex moments are pairs of reals, as in Adam
        v = _real(state["max_exp_avg_sq"] if group["amsgrad"] else state["exp_avg_sq"])
        denom = (v.sqrt() / (1 - beta2**t) ** 0.5).add_(group["eps"])
        return m.div(denom).mul_(-1 / (1 - beta1**t))
