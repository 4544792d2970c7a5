"""Clients: a client holds its data and trains a copy of the global model on it.

A :class:`Client` owns no model. The simulation lends it a working model loaded with the
global weights, the client runs ``E`` epochs of minibatch training with batch size ``B``
(:class:`LocalTraining`: any optimizer and scheduler, through factories) and returns a
:class:`ClientResult`: its new state dict, its sample count ``n_k`` and metrics. So a thousand
clients cost their data and nothing more.

FedProx (Li et al. 2020, "Federated Optimization in Heterogeneous Networks", Eq. 2) adds a
proximal term that keeps the local model near the global one ``w^t``:

    h_k(w) = F_k(w) + (mu / 2) * ||w - w^t||^2
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from torchopt_edu.optim._checks import is_integer, is_real

OptimizerFactory = Callable[[Iterable[Tensor]], Optimizer]
SchedulerFactory = Callable[[Optimizer], LRScheduler]
LossFn = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class LocalTraining:
    """How every client trains in a round.

    Attributes:
        optimizer: ``params -> Optimizer``, e.g. ``functools.partial(SGD, lr=0.1)``. A fresh
            optimizer per client and round: clients keep no state between rounds.
        epochs: local epochs ``E`` over the client's data.
        batch_size: minibatch size ``B`` (the last batch of an epoch may be smaller).
        scheduler: optional ``optimizer -> LRScheduler`` (one whose ``step()`` takes no
            argument), built with each client's optimizer.
        scheduler_interval: step the scheduler once per local ``"epoch"`` or once per
            ``"batch"`` (for per-step schedules such as warm-up cosine or one-cycle).
        proximal_mu: FedProx's ``mu`` (0 gives plain local SGD, as in FedAvg).
        loss_fn: ``(outputs, targets) -> scalar loss``; cross-entropy by default.
        gradient_correction: one tensor per trainable parameter added to its gradient at
            every local step (SCAFFOLD's ``c - c_k``), or ``None``.
    """

    optimizer: OptimizerFactory
    epochs: int = 1
    batch_size: int = 10
    scheduler: SchedulerFactory | None = None
    scheduler_interval: Literal["epoch", "batch"] = "epoch"
    proximal_mu: float = 0.0
    loss_fn: LossFn = F.cross_entropy
    gradient_correction: tuple[Tensor, ...] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if not callable(self.optimizer):
            raise TypeError(
                f"optimizer must be a callable params -> Optimizer, got {self.optimizer!r}"
            )
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if not is_integer(value) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
            object.__setattr__(self, name, int(value))  # frozen: plain ints from NumPy ones
        if self.scheduler_interval not in ("epoch", "batch"):
            raise ValueError(
                f"scheduler_interval must be 'epoch' or 'batch', got {self.scheduler_interval!r}"
            )
        mu = self.proximal_mu
        if not (is_real(mu) and math.isfinite(mu) and mu >= 0):
            raise ValueError(f"proximal_mu must be a finite number >= 0, got {mu!r}")
        object.__setattr__(self, "proximal_mu", float(mu))


@dataclass
class ClientResult:
    """What a client sends back: its trained state dict, its weight ``n_k`` and metrics.

    ``metrics`` has ``"loss"`` (mean training loss over the local steps, without the proximal
    term), ``"train_time_s"`` (seconds spent in the client's own optimizer and training loop),
    ``"steps"`` (local steps ``K``) and ``"lr_sum"`` (the sum of the first parameter group's
    learning rate over those steps: ``K eta`` for a constant ``eta``; SCAFFOLD needs it).
    """

    client: int
    state: dict[str, Tensor]
    num_samples: int
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class Client:
    """A client: an id and its local data ``(features, labels)``, on the device it trains on."""

    cid: int
    features: Tensor
    labels: Tensor

    def __post_init__(self) -> None:
        if len(self.features) != len(self.labels):
            raise ValueError(
                f"client {self.cid}: {len(self.features)} features but {len(self.labels)} labels"
            )
        if len(self.labels) == 0:
            raise ValueError(f"client {self.cid}: has no samples")

    @property
    def num_samples(self) -> int:
        """``n_k``, the client's weight in federated averaging."""
        return len(self.labels)

    def fit(
        self, model: nn.Module, global_state: Mapping[str, Tensor], train: LocalTraining, seed: int
    ) -> ClientResult:
        """Load ``global_state`` into ``model``, train it locally and return the result.

        ``model`` is a working copy lent by the server and overwritten here. ``seed`` fixes the
        batch order and any randomness in the model (dropout), so a client's result depends
        only on the global model, its data and the seed, not on which process trains it.
        """
        copy_state(model, global_state)
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        global_params = (
            [global_state[name] for name, p in model.named_parameters() if p.requires_grad]
            if train.proximal_mu > 0
            else []
        )
        device = self.features.device
        on_cuda = device.type == "cuda"
        with torch.random.fork_rng(devices=[device] if on_cuda else []):
            # seed only the generators this client uses (torch.manual_seed would also queue
            # lazy seeding of every uninitialised accelerator, which costs more than a step)
            torch.default_generator.manual_seed(seed)
            if on_cuda:
                with torch.cuda.device(device):
                    torch.cuda.manual_seed(seed)
            start = time.perf_counter()
            loss_sum, steps, lr_sum = self._train(model, params, global_params, train)
            train_time = time.perf_counter() - start
        state = {name: tensor.clone() for name, tensor in model.state_dict().items()}  # detached
        metrics = {
            "loss": loss_sum / steps,
            "train_time_s": train_time,
            "steps": steps,
            "lr_sum": lr_sum,
        }
        return ClientResult(self.cid, state, self.num_samples, metrics)

    def _train(
        self,
        model: nn.Module,
        params: list[Tensor],
        global_params: list[Tensor],
        train: LocalTraining,
    ) -> tuple[float, int, float]:
        optimizer = train.optimizer(params)
        scheduler = train.scheduler(optimizer) if train.scheduler is not None else None
        correction = train.gradient_correction
        if correction is not None and len(correction) != len(params):
            raise ValueError(
                f"client {self.cid}: gradient_correction has {len(correction)} tensors for "
                f"{len(params)} trainable parameters"
            )
        losses = []
        lr_sum = 0.0
        for _ in range(train.epochs):
            order = torch.randperm(self.num_samples, device=self.features.device)
            for batch in order.split(train.batch_size):
                loss = train.loss_fn(model(self.features[batch]), self.labels[batch])
                optimizer.zero_grad()
                loss.backward()
                if train.proximal_mu > 0:
                    add_proximal_gradient(params, global_params, train.proximal_mu)
                if correction is not None:
                    torch._foreach_add_([p.grad for p in params], list(correction))
                lr_sum += float(optimizer.param_groups[0]["lr"])
                optimizer.step()
                losses.append(loss.detach())
                if scheduler is not None and train.scheduler_interval == "batch":
                    scheduler.step()
            if scheduler is not None and train.scheduler_interval == "epoch":
                scheduler.step()
        return float(torch.stack(losses).sum()), len(losses), lr_sum


@torch.no_grad()
def copy_state(model: nn.Module, state: Mapping[str, Tensor]) -> None:
    """Copy ``state`` (a state dict of the same architecture) into ``model`` in place.

    The same as ``model.load_state_dict(state)`` for matching keys, without its per-module
    Python bookkeeping, which costs about as much as a small training step; a missing key
    raises ``KeyError``.
    """
    own = model.state_dict()
    torch._foreach_copy_(list(own.values()), [state[name] for name in own])


@torch.no_grad()
def add_proximal_gradient(params: list[Tensor], global_params: list[Tensor], mu: float) -> None:
    """``grad h_k = grad F_k + mu (w - w^t)``: add the gradient of FedProx's proximal term.

    Added to ``p.grad`` directly, which is cheaper than differentiating
    ``mu/2 ||w - w^t||^2`` through autograd and gives the same gradient.
    """
    for p, p0 in zip(params, global_params, strict=True):
        if p.grad is None:
            p.grad = mu * (p - p0)
        else:
            p.grad.add_(p - p0, alpha=mu)


def make_clients(features: Tensor, labels: Tensor, partition: Iterable[Tensor]) -> list[Client]:
    """One :class:`Client` per index tensor of ``partition``, holding ``features[indices]``."""
    return [
        Client(cid, features[indices.to(features.device)], labels[indices.to(labels.device)])
        for cid, indices in enumerate(partition)
    ]
