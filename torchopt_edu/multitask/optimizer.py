"""Per-task gradients, an aggregator, and any optimizer: ``MultiTaskOptimizer``.

The wrapper does the autograd work; the math lives in
:mod:`torchopt_edu.multitask.aggregation` as pure functions ``[T, D] -> [D]``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Literal

import torch
from torch import Tensor
from torch.optim import Optimizer

from torchopt_edu.multitask._losses import TaskLosses, check_task_losses
from torchopt_edu.multitask.aggregation import Aggregator


def _per_task_gradients(
    losses: Sequence[Tensor],
    labels: Sequence[str],
    targets: Sequence[Tensor],
    others: Sequence[Tensor],
    *,
    keep_graph: bool,
    check_finite: bool = False,
) -> tuple[Tensor, list[Tensor | None]]:
    """One backward per task: ``G[i] = grad_targets L_i`` flattened, and ``sum_i grad_others L_i``.

    The graph is kept between tasks and freed after the last one unless ``keep_graph``.
    Raises ``ValueError`` when a task's loss does not reach any target, and, with
    ``check_finite``, when any of its gradients (targets or others) is not finite.
    """
    rows: list[Tensor] = []
    other_sums: list[Tensor | None] = [None] * len(others)
    for i, (label, loss) in enumerate(zip(labels, losses, strict=True)):
        grads = torch.autograd.grad(
            loss,
            [*targets, *others],
            retain_graph=keep_graph or i < len(losses) - 1,
            allow_unused=True,
        )
        target_grads, other_grads = grads[: len(targets)], grads[len(targets) :]
        if all(grad is None for grad in target_grads):
            raise ValueError(
                f"loss of task {label} does not depend on the shared tensors, so it has no "
                "gradient to aggregate"
            )
        if check_finite and not all(
            bool(torch.isfinite(grad).all()) for grad in grads if grad is not None
        ):
            raise ValueError(f"gradient of task {label} is not finite")
        rows.append(
            torch.cat(
                [
                    (torch.zeros_like(target) if grad is None else grad).reshape(-1)
                    for target, grad in zip(targets, target_grads, strict=True)
                ]
            )
        )
        for k, grad in enumerate(other_grads):
            if grad is not None:
                other_sums[k] = grad if other_sums[k] is None else other_sums[k] + grad
    return torch.stack(rows), other_sums


def task_gradients(
    losses: TaskLosses, inputs: Iterable[Tensor], *, retain_graph: bool = False
) -> Tensor:
    """Per-task gradients ``G[i] = grad_inputs L_i``, flattened and stacked: ``[T, D]``.

    One backward pass per task (T in all). Useful to measure gradient conflict, e.g.
    ``gradient_cosine(task_gradients(losses, model.shared_parameters()))``.
    """
    labels, values = check_task_losses(losses)
    return _per_task_gradients(values, labels, list(inputs), [], keep_graph=retain_graph)[0]


class MultiTaskOptimizer:
    """Wrap any ``torch.optim.Optimizer`` and combine the tasks' gradients before it steps.

    ``step(losses)`` does, with ``theta_s`` the shared parameters::

        G[i] = grad_{theta_s} L_i                 one backward per task, graph kept until the last
        g    = aggregate(G)                       e.g. pcgrad, mgda, cagrad: [T, D] -> [D]
        theta_s.grad = g;  theta_h.grad = sum_i grad_{theta_h} L_i   for every other parameter
        optimizer.step()

    Task-specific parameters (heads) see only their own task, so they get the plain sum; the
    per-task passes already compute it, so no extra backward is needed. ``.grad`` is replaced,
    not accumulated.

    ``wrt="representation"`` aggregates gradients w.r.t. the shared representation ``z`` (the
    trunk's output, passed as ``step(losses, representation=z)``) instead: the T per-task
    passes then run through the heads only, and one more pass carries ``g`` from ``z`` through
    the trunk. With ``aggregate=mgda`` this is MGDA-UB (Sener and Koltun, 2018), whose
    min-norm weights on ``grad_z L_i`` minimise an upper bound of the parameter-space problem.

    Bad input raises before anything changes: losses that are not scalars, not finite, do not
    require grad or do not reach the shared tensors; non-finite gradients (shared, heads, or the
    final pass through the trunk); a representation that does not depend on the shared
    parameters; an aggregate of the wrong shape. Use ``wrapper.optimizer`` for ``state_dict``,
    schedulers and the like.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        shared_parameters: Iterable[Tensor],
        aggregate: Aggregator,
        *,
        wrt: Literal["parameters", "representation"] = "parameters",
    ) -> None:
        if not isinstance(optimizer, Optimizer):
            raise TypeError(
                f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}"
            )
        if not callable(aggregate):
            raise TypeError(f"aggregate must be callable [T, D] -> [D], got {aggregate!r}")
        if wrt not in ("parameters", "representation"):
            raise ValueError(f"wrt must be 'parameters' or 'representation', got {wrt!r}")
        shared = list(shared_parameters)
        stepped = {id(p) for group in optimizer.param_groups for p in group["params"]}
        if not shared:
            raise ValueError("shared_parameters is empty")
        for index, parameter in enumerate(shared):
            if not (isinstance(parameter, Tensor) and parameter.requires_grad):
                raise ValueError(f"shared parameter #{index} is not a tensor requiring grad")
            if id(parameter) not in stepped:
                raise ValueError(
                    f"shared parameter #{index} (shape {tuple(parameter.shape)}) is not in the "
                    "optimizer's param_groups, so it would never be updated"
                )
        self.optimizer = optimizer
        self.shared_parameters = shared
        self.aggregate = aggregate
        self.wrt = wrt

    def task_parameters(self) -> list[Tensor]:
        """The optimizer's trainable parameters that are not shared (the heads)."""
        shared = {id(p) for p in self.shared_parameters}
        return [
            p
            for group in self.optimizer.param_groups
            for p in group["params"]
            if p.requires_grad and id(p) not in shared
        ]

    def step(self, losses: TaskLosses, representation: Tensor | None = None) -> Tensor:
        """Write the aggregated gradient into ``.grad`` and step; return the per-task ``G``.

        ``losses``: T scalar losses (a sequence, or a mapping read in order).
        ``representation``: the shared representation the losses were computed from, required
        with ``wrt="representation"`` and refused otherwise. The returned ``G`` (``[T, D]``,
        detached) is what was aggregated, for diagnostics such as :func:`gradient_cosine`.
        """
        labels, values = check_task_losses(losses)
        if self.wrt == "representation":
            if not (isinstance(representation, Tensor) and representation.requires_grad):
                raise ValueError(
                    "wrt='representation' needs step(losses, representation=z) with the "
                    f"trunk output z the losses came from, got {type(representation).__name__}"
                )
            targets = [representation]
        else:
            if representation is not None:
                raise ValueError("representation is only used with wrt='representation'")
            targets = self.shared_parameters
        task_parameters = self.task_parameters()
        grads, task_grads = _per_task_gradients(
            values,
            labels,
            targets,
            task_parameters,
            keep_graph=self.wrt == "representation",
            check_finite=True,
        )
        direction = self.aggregate(grads)
        if not (isinstance(direction, Tensor) and direction.shape == grads.shape[1:]):
            raise ValueError(
                f"aggregate must return a tensor of shape {tuple(grads.shape[1:])}, got "
                f"{getattr(direction, 'shape', type(direction).__name__)}"
            )
        if not bool(torch.isfinite(direction).all()):
            raise ValueError("aggregate returned non-finite values")
        if self.wrt == "representation":
            shared_grads = torch.autograd.grad(
                representation,
                self.shared_parameters,
                grad_outputs=direction.view_as(representation),
                allow_unused=True,
            )
            if all(grad is None for grad in shared_grads):
                raise ValueError(
                    "the representation does not depend on the shared parameters (was it "
                    "detached?), so the aggregated gradient cannot reach them"
                )
            if not all(bool(torch.isfinite(g).all()) for g in shared_grads if g is not None):
                raise ValueError(
                    "the aggregated gradient is not finite after the pass through the shared "
                    "parameters (grad of the representation w.r.t. them overflowed)"
                )
        else:
            chunks = direction.split([p.numel() for p in self.shared_parameters])
            shared_grads = [
                chunk.view_as(p).to(p.dtype)
                for chunk, p in zip(chunks, self.shared_parameters, strict=True)
            ]
        self.optimizer.zero_grad(set_to_none=True)
        for parameter, grad in zip(
            [*self.shared_parameters, *task_parameters], [*shared_grads, *task_grads], strict=True
        ):
            parameter.grad = grad
        self.optimizer.step()
        return grads.detach()
