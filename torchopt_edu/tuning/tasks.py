"""Training functions to tune: the seed's quadratic, a standard supervised loop, digits data.

Each ``*_task`` returns a :data:`~torchopt_edu.tuning.study.TrainFn`: ``train(config, report)``
builds its model, trains it with ``config``, reports one value per epoch (or step), and returns the
final value, lower is better.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim.lr_scheduler import LRScheduler

from torchopt_edu.datasets import load_digits_tensors
from torchopt_edu.tuning.config import OptimizerConfig
from torchopt_edu.tuning.study import Report, TrainFn

Data = tuple[Tensor, Tensor]
"""A dataset as ``(inputs, targets)`` tensors with the same first dimension."""


def quadratic_task(steps: int = 5, start: float = 0.0, target: float = -2.0) -> TrainFn:
    """The seed's loss ``L(w) = (w - target)^2``, ``(w + 2)^2`` by default, from ``w = start``.

    With plain gradient descent ``w <- w - lr * 2 (w - target)``, the error shrinks by the same
    factor every step, ``w_T - target = (1 - 2 lr)^T (start - target)``, so after ``T = steps``
    steps ``L = (start - target)^2 (1 - 2 lr)^(2T)``: the best learning rate is exactly 1/2 (one
    step lands on the minimum) and the iteration diverges for ``lr > 1``. The loss after each step
    is reported (and steps the schedule); the last one is returned. ``w`` is float64, so the
    loss near the best learning rate is resolved far below float32's precision.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")

    def train(config: OptimizerConfig, report: Report) -> float:
        w = torch.tensor(float(start), dtype=torch.float64, requires_grad=True)
        optimizer = config.build([w])
        scheduler = config.build_scheduler(optimizer, total_steps=steps)
        for step in range(steps):
            optimizer.zero_grad()
            loss = (w - target) ** 2
            loss.backward()
            optimizer.step()
            loss = (w.detach() - target) ** 2
            report(loss.item(), step)
            _step_schedule(config, scheduler, loss.item())
        return loss.item()

    return train


def fit(
    model: nn.Module,
    config: OptimizerConfig,
    train_data: Data,
    valid_data: Data,
    *,
    epochs: int = 10,
    batch_size: int = 64,
    loss_fn: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy,
    seed: int = 0,
    report: Report | None = None,
) -> float:
    """Train ``model`` with ``config`` by minibatch descent; return the last validation loss.

    Each epoch visits the training set in a fresh order (drawn from a generator seeded with
    ``seed``, so runs repeat), takes one optimizer step per batch of ``batch_size``, reports the
    validation loss at step ``epoch``, and steps the schedule once: every schedule counts epochs
    here (``total_steps = epochs``), including those usually stepped per batch.
    """
    inputs, targets = train_data
    optimizer = config.build(model.parameters())
    scheduler = config.build_scheduler(optimizer, total_steps=epochs)
    order = torch.Generator().manual_seed(seed)
    valid_loss = float("nan")
    for epoch in range(epochs):
        model.train()
        for batch in torch.randperm(len(inputs), generator=order).split(batch_size):
            optimizer.zero_grad()
            loss_fn(model(inputs[batch]), targets[batch]).backward()
            optimizer.step()
        valid_loss = evaluate(model, valid_data, loss_fn)
        if report is not None:
            report(valid_loss, epoch)
        _step_schedule(config, scheduler, valid_loss)
    return valid_loss


def _step_schedule(config: OptimizerConfig, scheduler: LRScheduler | None, metric: float) -> None:
    if scheduler is None:
        return
    if config.schedule.needs_metric:
        scheduler.step(metric)
    else:
        scheduler.step()


@torch.no_grad()
def evaluate(
    model: nn.Module, data: Data, loss_fn: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy
) -> float:
    """Mean ``loss_fn`` of ``model`` on ``data``, in eval mode."""
    model.eval()
    inputs, targets = data
    return loss_fn(model(inputs), targets).item()


@torch.no_grad()
def accuracy(model: nn.Module, data: Data) -> float:
    """Fraction of ``data`` whose arg-max prediction is the target class."""
    model.eval()
    inputs, targets = data
    return (model(inputs).argmax(dim=1) == targets).double().mean().item()


def init_model(model_factory: Callable[[], nn.Module], seed: int = 0) -> nn.Module:
    """``model_factory()`` initialised under ``torch.manual_seed(seed)``.

    The seed is set inside ``torch.random.fork_rng``, so the caller's random state is untouched.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return model_factory()


def supervised_task(
    model_factory: Callable[[], nn.Module],
    train_data: Data,
    valid_data: Data,
    *,
    epochs: int = 10,
    batch_size: int = 64,
    loss_fn: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy,
    seed: int = 0,
) -> TrainFn:
    """A standard loop to tune: a fresh ``model_factory()`` per trial, trained by :func:`fit`.

    Every trial starts from the same weights, ``init_model(model_factory, seed)``, and shuffles
    with the same seed, so a configuration's value is reproducible: retraining the best
    configuration the same way gives the best value again. The objective is the last epoch's
    validation loss.
    """
    for name, value in (("epochs", epochs), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")

    def train(config: OptimizerConfig, report: Report) -> float:
        return fit(
            init_model(model_factory, seed),
            config,
            train_data,
            valid_data,
            epochs=epochs,
            batch_size=batch_size,
            loss_fn=loss_fn,
            seed=seed,
            report=report,
        )

    return train


def load_digits_splits(seed: int = 0) -> tuple[Data, Data, Data]:
    """scikit-learn's 8x8 digits (1797 images, 10 classes) split 60/20/20 into train/valid/test.

    Pixels are scaled from 0..16 to 0..1; the split is a random permutation seeded by ``seed``.
    """
    inputs, targets = load_digits_tensors()
    order = torch.randperm(len(inputs), generator=torch.Generator().manual_seed(seed))
    n_train, n_valid = int(0.6 * len(inputs)), int(0.2 * len(inputs))
    parts = order.split([n_train, n_valid, len(inputs) - n_train - n_valid])
    train, valid, test = ((inputs[part], targets[part]) for part in parts)
    return train, valid, test


def digits_mlp(hidden: int = 32) -> nn.Module:
    """A 64 -> ``hidden`` -> 10 ReLU network for the digits images."""
    return nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))
