"""Adagrad: per-coordinate steps scaled by the root of the summed squared gradients."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from torchopt_edu.optim._base import Bucket, EduOptimizer, Hyper, filled_like
from torchopt_edu.optim._checks import check_lr, check_non_negative
from torchopt_edu.optim._shared import directed_grad, directed_grads

__all__ = ["Adagrad", "AdagradHyper"]


@dataclass(frozen=True)
class AdagradHyper(Hyper):
    """What one Adagrad update reads from its param group."""

    lr_decay: float
    weight_decay: float
    eps: float
    maximize: bool

    def decayed_lr(self, t: float) -> float:
        """The step-``t`` learning rate :math:`\\gamma / (1 + (t-1)\\eta)`."""
        return self.lr / (1 + (t - 1) * self.lr_decay)


class Adagrad(EduOptimizer):
    r"""Adagrad (Duchi, Hazan and Singer, 2011, https://jmlr.org/papers/v12/duchi11a.html).

    .. math::
        g_t &\leftarrow -g_t \quad\text{if maximize};\qquad
        g_t \leftarrow g_t + \lambda\theta_{t-1} \quad\text{(weight\_decay)} \\
        \tilde\gamma_t &= \frac{\gamma}{1 + (t-1)\,\eta} \quad\text{(lr\_decay } \eta) \\
        s_t &= s_{t-1} + g_t^2, \qquad s_0 = \text{initial\_accumulator\_value} \\
        \theta_t &= \theta_{t-1} - \tilde\gamma_t\, \frac{g_t}{\sqrt{s_t} + \epsilon}

    State keys: ``step``, ``sum`` (:math:`s`). Sparse gradients update only the rows they
    touch (use it with ``nn.Embedding(sparse=True)``); weight decay is not defined for them.

    Defaults: ``lr=1e-2, lr_decay=0, weight_decay=0, initial_accumulator_value=0, eps=1e-10``.

    When to use it: sparse features (embeddings, NLP, recommendation), where rare
    coordinates deserve larger steps. Because :math:`s_t` only grows, the step length shrinks
    like :math:`1/\sqrt{t}`: it can stall before the optimum on long runs (RMSprop and Adam
    replace the sum by a moving average for that reason).

    Implementations: the per-tensor loop (dense and sparse), the multi-tensor path, and torch's
    fused kernel ``torch._fused_adagrad_`` (same equations) by default for dense gradients.
    As in torch.optim, the state exists from construction (so ``share_memory()`` works
    before the first step, for Hogwild-style training).
    """

    supports_sparse = True
    hyper = AdagradHyper

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float | Tensor = 1e-2,
        lr_decay: float = 0,
        weight_decay: float = 0,
        initial_accumulator_value: float = 0,
        eps: float = 1e-10,
        foreach: bool | None = None,
        *,
        maximize: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        flat: bool = False,
    ) -> None:
        defaults = dict(
            lr=lr,
            lr_decay=lr_decay,
            eps=eps,
            weight_decay=weight_decay,
            initial_accumulator_value=initial_accumulator_value,
            foreach=foreach,
            maximize=maximize,
            differentiable=differentiable,
            fused=fused,
        )
        self.check_options(defaults)
        super().__init__(params, defaults, flat=flat)
        for group in self.param_groups:
            for p in group["params"]:
                self._init_state(p, self.state[p], group)

    @classmethod
    def check_options(cls, options: dict[str, Any]) -> None:
        """Every rate, decay and constant finite and >= 0."""
        check_lr(options["lr"])
        for name in ("lr_decay", "weight_decay", "initial_accumulator_value", "eps"):
            check_non_negative(name, options[name])

    def share_memory(self) -> None:
        """Move the accumulators to shared memory (torch.optim.Adagrad's method).

        Not with ``flat=True``, which packs them into private buffers at the first step.
        """
        if self._flat:
            raise ValueError(
                "share_memory() with flat=True: flat mode packs the accumulators into its own "
                "buffers at the first step, which the other processes would not see; use "
                "flat=False to share them"
            )
        for group in self.param_groups:
            for p in group["params"]:
                self.state[p]["sum"].share_memory_()

    def _init_state(self, param: Tensor, state: dict[str, Any], group: dict[str, Any]) -> None:
        state["step"] = self._new_step(param, group)
        state["sum"] = filled_like(param, group["initial_accumulator_value"])

    def _fuse_blocker(self, group: dict[str, Any]) -> str | None:
        return None

    def _check_grads(self, group: dict[str, Any], grads: list[Tensor]) -> None:
        if group["weight_decay"] != 0 and any(g.is_sparse for g in grads):
            raise RuntimeError(
                "weight_decay option is not compatible with sparse gradients "
                f"(weight_decay={group['weight_decay']})"
            )


# ---------------------------------------------------------------------------------------
# implementations: the reference loop, then the fast paths


def adagrad_loop(b: Bucket, h: AdagradHyper) -> None:
    """Per tensor, line for line the equations of :class:`Adagrad` (dense or sparse)."""
    for param, grad, state_sum, step in zip(
        b.params, b.grads, b.state("sum"), b.steps, strict=True
    ):
        grad = directed_grad(grad, param, h.maximize, h.weight_decay)
        lr = h.decayed_lr(step.item())
        if grad.is_sparse:
            _sparse_adagrad_step(param, grad, state_sum, lr, h.eps)
            continue
        state_sum.addcmul_(grad, grad, value=1)  # s = s + g^2
        std = state_sum.sqrt().add_(h.eps)
        param.addcdiv_(grad, std, value=-lr)


def _sparse_adagrad_step(
    param: Tensor, grad: Tensor, state_sum: Tensor, decayed_lr: float, eps: float
) -> None:
    """The same update on the rows a sparse gradient touches (other rows keep their state)."""
    grad = grad.coalesce()
    indices, values = grad._indices(), grad._values()

    def sparse_like_grad(new_values: Tensor) -> Tensor:
        return torch.sparse_coo_tensor(indices, new_values, grad.size())

    state_sum.add_(sparse_like_grad(values.pow(2)))
    std_values = state_sum.sparse_mask(grad)._values().sqrt_().add_(eps)
    param.add_(sparse_like_grad(values / std_values), alpha=-decayed_lr)


def adagrad_foreach(b: Bucket, h: AdagradHyper) -> None:
    """The same update as :func:`adagrad_loop` (dense) with one multi-tensor kernel per line."""
    state_sums = b.state("sum")
    grads = directed_grads(b.grads, b.params, h.maximize, h.weight_decay)
    neg_decayed_lrs = [-h.decayed_lr(step.item()) for step in b.steps]
    torch._foreach_addcmul_(state_sums, grads, grads, value=1)
    std = torch._foreach_sqrt(state_sums)
    torch._foreach_add_(std, h.eps)
    torch._foreach_addcdiv_(b.params, grads, std, neg_decayed_lrs)


def adagrad_fused(b: Bucket, h: AdagradHyper) -> None:
    """torch's fused kernel ``_fused_adagrad_``: the same equations in one pass."""
    torch._fused_adagrad_(
        b.params,
        b.grads,
        b.state("sum"),
        b.steps,
        lr=h.lr,
        lr_decay=h.lr_decay,
        weight_decay=h.weight_decay,
        eps=h.eps,
        maximize=h.maximize,
    )


Adagrad.paths = {"loop": adagrad_loop, "foreach": adagrad_foreach, "fused": adagrad_fused}
