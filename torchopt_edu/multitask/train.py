"""A small training loop that runs any weighting or aggregation method with any optimizer."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor
from torch.optim import Optimizer
from tqdm import tqdm

from torchopt_edu.multitask.aggregation import Aggregator, gradient_cosine
from torchopt_edu.multitask.data import MultiTaskData
from torchopt_edu.multitask.model import MultiTaskModel
from torchopt_edu.multitask.optimizer import MultiTaskOptimizer, task_gradients
from torchopt_edu.multitask.weighting import LossWeighting

OptimizerFactory = Callable[[Iterable[Tensor]], Optimizer]


@dataclass
class TrainHistory:
    """What :func:`train_multitask` recorded.

    ``losses[name][t]``: task ``name``'s loss on the batch of step ``t``.
    ``conflict``: ``(step, cosine)`` pairs, the mean cosine between the tasks' gradients on
    the shared parameters (for two tasks, their cosine); negative means conflict.
    """

    losses: dict[str, list[float]]
    conflict: list[tuple[int, float]] = field(default_factory=list)


def _batches(size: int, batch_size: int, generator: torch.Generator) -> Iterator[Tensor]:
    """Endless mini-batch indices: a fresh permutation every epoch, the tail kept."""
    while True:
        yield from torch.randperm(size, generator=generator).split(batch_size)


def _mean_cosine(grads: Tensor) -> float:
    cosine = gradient_cosine(grads)
    num_tasks = len(cosine)
    return float((cosine.sum() - cosine.diagonal().sum()) / (num_tasks * (num_tasks - 1)))


def train_multitask(
    model: MultiTaskModel,
    data: MultiTaskData,
    method: LossWeighting | Aggregator,
    optimizer: OptimizerFactory,
    *,
    steps: int = 300,
    batch_size: int = 64,
    seed: int = 0,
    wrt: Literal["parameters", "representation"] = "parameters",
    conflict_every: int = 0,
    progress: bool = False,
) -> TrainHistory:
    """Train ``model`` on ``data`` for ``steps`` mini-batch steps; return the history.

    ``method`` is a :class:`LossWeighting` (the total loss is back-propagated once, and its own
    parameters are given to the optimizer next to the model's) or an aggregator such as
    :func:`pcgrad` (run through :class:`MultiTaskOptimizer` with ``wrt``; ``wrt=
    "representation"`` with :func:`mgda` is MGDA-UB). ``optimizer`` builds the optimizer from
    parameters, e.g. ``lambda params: Adam(params, lr=1e-3)``, from this library or torch.optim.
    Every ``conflict_every`` steps (0: never) the cosine between the task gradients on the
    shared parameters is measured on the current batch, before the update.
    """
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    if wrt not in ("parameters", "representation"):
        raise ValueError(f"wrt must be 'parameters' or 'representation', got {wrt!r}")
    if isinstance(method, LossWeighting):
        weighted_optimizer = optimizer([*model.parameters(), *method.parameters()])
    else:
        wrapper = MultiTaskOptimizer(
            optimizer(model.parameters()), model.shared_parameters(), method, wrt=wrt
        )
    history = TrainHistory({task.name: [] for task in model.tasks})
    batches = _batches(len(data), batch_size, torch.Generator().manual_seed(seed))
    model.train()
    for step in tqdm(range(steps), disable=not progress, desc="multi-task training"):
        batch = data.subset(next(batches))
        if conflict_every and step % conflict_every == 0:
            losses = model.losses(model(batch.inputs), batch.targets)
            grads = task_gradients(losses, model.shared_parameters())
            history.conflict.append((step, _mean_cosine(grads)))
        representation = model.trunk(batch.inputs)
        losses = model.losses(model.head_outputs(representation), batch.targets)
        if isinstance(method, LossWeighting):
            weighted_optimizer.zero_grad(set_to_none=True)
            method(losses).backward()
            weighted_optimizer.step()
        elif wrt == "representation":
            wrapper.step(losses, representation=representation)
        else:
            wrapper.step(losses)
        for name, loss in losses.items():
            history.losses[name].append(loss.item())
    return history


@torch.no_grad()
def evaluate(model: MultiTaskModel, data: MultiTaskData) -> dict[str, float]:
    """Per task: accuracy (classification, fraction of argmax hits) or MSE (regression)."""
    model.eval()
    outputs = model(data.inputs)
    metrics = {}
    for task in model.tasks:
        output, target = outputs[task.name], data.targets[task.name]
        if task.kind == "classification":
            metrics[task.name] = (output.argmax(-1) == target).float().mean().item()
        else:
            metrics[task.name] = torch.mean((output - target) ** 2).item()
    return metrics
