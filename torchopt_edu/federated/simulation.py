"""The federated simulation: sample clients, train them, aggregate, evaluate, record.

One round ``t`` (McMahan et al. 2017, Algorithm 1, with the aggregation left to a strategy):

1. sample ``m = max(1, round(C * K))`` of the ``K`` clients without replacement;
2. each sampled client ``k`` loads ``w^t`` into the working model and trains locally;
3. the updates are checked (keys, shapes, dtypes, finite values) and the strategy forms
   ``w^{t+1}`` from the accepted ones;
4. ``w^{t+1}`` is evaluated on the held-out test set and the round is recorded.

Memory: the simulation holds the global model, one working model that every client borrows in
turn, and the state dicts of the sampled clients until they are aggregated, so 1,000 clients
cost no more than 10 (beyond their data). Randomness: client sampling depends only on
``(seed, t)`` and a client's training only on ``(seed, t, k)``, so results do not depend on the
order (or process) in which clients train.

The simulation computes and returns the history; ``torchopt-edu federated`` saves it
(:mod:`torchopt_edu.cli.federated`) and :func:`~torchopt_edu.federated.plot.plot_history` draws it.
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from torchopt_edu.federated.aggregate import InvalidUpdateError, State, check_update
from torchopt_edu.federated.client import Client, ClientResult, LocalTraining, LossFn
from torchopt_edu.federated.strategy import Strategy
from torchopt_edu.optim._checks import is_integer, is_real

Record = dict[str, Any]


def check_rounds(rounds: int) -> None:
    """Raise ``ValueError`` unless ``rounds`` is an integer >= 1."""
    if not is_integer(rounds) or rounds < 1:
        raise ValueError(f"rounds must be an integer >= 1, got {rounds!r}")


def client_seed(seed: int, round_: int, cid: int) -> int:
    """The seed of client ``cid``'s local training in round ``round_`` (NumPy SeedSequence)."""
    return int(np.random.SeedSequence([seed, round_, cid]).generate_state(1)[0])


def sample_clients(num_clients: int, fraction: float, seed: int, round_: int) -> list[int]:
    """Ids of the ``max(1, round(fraction * num_clients))`` clients sampled in round ``round_``."""
    count = max(1, round(fraction * num_clients))
    chosen = np.random.default_rng([seed, round_]).choice(num_clients, count, replace=False)
    return sorted(int(k) for k in chosen)


def screen(
    results: Sequence[ClientResult], reference: State
) -> tuple[list[ClientResult], list[InvalidUpdateError]]:
    """Split results into those that fit ``reference`` and the errors of those that do not."""
    accepted, errors = [], []
    for result in results:
        try:
            check_update(result.state, reference, result.client)
        except InvalidUpdateError as error:
            errors.append(error)
        else:
            accepted.append(result)
    return accepted, errors


@torch.no_grad()
def evaluate(
    model: nn.Module,
    features: Tensor,
    labels: Tensor,
    loss_fn: LossFn = F.cross_entropy,
    batch_size: int = 1024,
) -> dict[str, float]:
    """Mean loss and accuracy (argmax of the outputs) of ``model`` on ``(features, labels)``."""
    was_training = model.training
    model.eval()
    loss_sum, correct = 0.0, 0
    for x, y in zip(features.split(batch_size), labels.split(batch_size), strict=True):
        outputs = model(x)
        loss_sum += float(loss_fn(outputs, y)) * len(y)
        correct += int((outputs.argmax(dim=1) == y).sum())
    model.train(was_training)
    return {"test_loss": loss_sum / len(labels), "test_accuracy": correct / len(labels)}


class Simulation:
    """Federated training of ``model`` by ``clients`` under ``strategy``, in one process.

    Args:
        model: the global model (on the device the clients' data lives on). It is updated in
            place; one working copy of it is made for the clients to train.
        clients: the population; see :func:`~torchopt_edu.federated.client.make_clients`.
        strategy: e.g. :class:`~torchopt_edu.federated.strategy.FedAvg`, ``FedProx``, ``FedAdam``.
        train: the clients' local training (optimizer factory, epochs, batch size, ...).
        test_set: ``(features, labels)`` to evaluate the global model on after every round.
        fraction: ``C``, the fraction of clients sampled per round, in ``(0, 1]``.
        seed: fixes client sampling and local training.
        on_invalid: what to do with a malformed update (wrong keys, shapes or dtypes, NaN/inf;
            e.g. a client that diverged): ``"raise"`` an ``InvalidUpdateError`` before the
            global model is touched, or ``"skip"`` it with a warning and average the others.

    ``history`` holds one record per round: ``round``, ``clients`` (sampled), ``samples``
    (accepted), ``rejected`` (client ids), ``train_loss``, ``client_time_s`` (summed over
    clients), ``round_time_s`` (without evaluation), ``test_loss``, ``test_accuracy``,
    ``eval_time_s``.
    """

    def __init__(
        self,
        model: nn.Module,
        clients: Sequence[Client],
        strategy: Strategy,
        train: LocalTraining,
        test_set: tuple[Tensor, Tensor] | None = None,
        fraction: float = 0.1,
        seed: int = 0,
        on_invalid: Literal["raise", "skip"] = "raise",
    ) -> None:
        if len(clients) == 0:
            raise ValueError("clients must not be empty")
        if not (is_real(fraction) and 0 < fraction <= 1):
            raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
        if on_invalid not in ("raise", "skip"):
            raise ValueError(f"on_invalid must be 'raise' or 'skip', got {on_invalid!r}")
        for position, client in enumerate(clients):
            if client.cid != position:
                raise ValueError(
                    f"client ids must be 0, 1, ..., K - 1 in order: clients[{position}].cid is "
                    f"{client.cid!r}"
                )
        self.model = model
        self.worker = copy.deepcopy(model)
        self.clients = list(clients)
        self.strategy = strategy
        self.train = train
        self.test_set = test_set
        self.fraction = float(fraction)
        self.seed = seed
        self.on_invalid = on_invalid
        self.history: list[Record] = []

    def run(
        self, rounds: int, progress: bool = True, log: Callable[[Record], None] | None = None
    ) -> list[Record]:
        """Run ``rounds`` more rounds with a progress bar; call ``log(record)`` after each."""
        check_rounds(rounds)
        bar = tqdm(range(int(rounds)), desc="rounds", disable=not progress, leave=False)
        for _ in bar:
            record = self.run_round()
            if "test_accuracy" in record:
                bar.set_postfix(acc=f"{record['test_accuracy']:.3f}")
            if log is not None:
                log(record)
        return self.history

    def run_round(self) -> Record:
        """One round of sampling, local training, aggregation and evaluation; returns its record."""
        round_ = len(self.history) + 1
        start = time.perf_counter()
        sampled = sample_clients(len(self.clients), self.fraction, self.seed, round_)
        train = self.strategy.configure_fit(self.train)
        global_state = self.model.state_dict()
        results = [
            self.clients[k].fit(self.worker, global_state, train, client_seed(self.seed, round_, k))
            for k in self._own_share(sampled)
        ]
        record: Record = {"round": round_, "clients": len(sampled)}
        record.update(self._aggregate(results, global_state))
        record["round_time_s"] = time.perf_counter() - start
        if self.test_set is not None:
            start = time.perf_counter()
            record.update(evaluate(self.model, *self.test_set, loss_fn=self.train.loss_fn))
            record["eval_time_s"] = time.perf_counter() - start
        self.history.append(record)
        return record

    def _own_share(self, sampled: list[int]) -> list[int]:
        """The sampled clients this process trains (all of them here)."""
        return sampled

    def _aggregate(self, results: list[ClientResult], global_state: State) -> Record:
        """Screen the results, let the strategy update the global model, summarise the round."""
        if self.on_invalid == "skip":
            accepted, errors = screen(results, global_state)
            self._handle_invalid(errors)
        else:  # the strategy checks every update itself and raises before the model changes
            accepted, errors = results, []
        if accepted:
            self.strategy.aggregate_fit(self.model, accepted)
        samples = sum(r.num_samples for r in accepted)
        loss_sum = sum(r.num_samples * r.metrics["loss"] for r in accepted)
        return round_summary(
            samples, loss_sum, sum(r.metrics["train_time_s"] for r in results), errors
        )

    def _handle_invalid(self, errors: Sequence[InvalidUpdateError]) -> None:
        if errors and self.on_invalid == "raise":
            raise errors[0]
        for error in errors:
            warnings.warn(f"rejected update: {error}", RuntimeWarning, stacklevel=3)


def round_summary(
    samples: float, loss_sum: float, client_time: float, errors: Sequence[InvalidUpdateError]
) -> Record:
    """The aggregation part of a round's record, from ``sum n_k``, ``sum n_k loss_k``, the
    clients' summed training time and the rejected updates."""
    return {
        "samples": int(samples),
        "rejected": sorted(error.client for error in errors),
        "train_loss": loss_sum / samples if samples > 0 else math.nan,
        "client_time_s": client_time,
    }
