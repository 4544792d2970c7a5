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

import contextlib
import copy
import dataclasses
import math
import os
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from torchopt_edu.federated.aggregate import (
    InvalidUpdateError,
    State,
    check_structure,
    check_update,
)
from torchopt_edu.federated.attacks import Attack
from torchopt_edu.federated.checkpoint import (
    FORMAT,
    VERSION,
    CheckpointError,
    read_checkpoint,
    save_checkpoint,
)
from torchopt_edu.federated.client import Client, ClientResult, LocalTraining, LossFn
from torchopt_edu.federated.faults import Faults, local_steps
from torchopt_edu.federated.strategy import (
    ServerStepError,
    Strategy,
    nested_strategies,
    settings_repr,
)
from torchopt_edu.optim._checks import check_int, check_seed, is_integer, is_real

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


def reply_problem(result: object, cid: int) -> str | None:
    """What is wrong with client ``cid``'s reply to ``fit`` (its type, id, sample count or
    metrics), or ``None``: the round's record sums these, so a NaN or a negative count
    would corrupt it without naming the client."""
    if not isinstance(result, ClientResult):
        return f"fit returned {type(result).__name__}, not a ClientResult"
    if result.client != cid:
        return f"it names client {result.client!r}"
    if not (is_integer(result.num_samples) and result.num_samples >= 0):
        return f"num_samples must be a whole number >= 0, got {result.num_samples!r}"
    for key in ("loss", "train_time_s"):
        value = result.metrics.get(key) if isinstance(result.metrics, dict) else None
        if not is_real(value):
            return f"metrics[{key!r}] must be a number, got {value!r}"
    return None


def check_strategy_fits(strategy: Strategy, num_clients: int, fraction: float) -> None:
    """Raise ``ValueError`` if a strategy's own count of the population disagrees with the
    simulation's: DP-FedAvg's ``sample_rate`` (its privacy accounting) must be the share of
    clients sampled per round, SCAFFOLD's ``num_clients`` the number of clients."""
    from torchopt_edu.federated.privacy import DPFedAvg
    from torchopt_edu.federated.scaffold import Scaffold

    sampled = max(1, round(fraction * num_clients))
    for inner in nested_strategies(strategy):
        if isinstance(inner, DPFedAvg) and not math.isclose(
            inner.sample_rate, sampled / num_clients, rel_tol=1e-9
        ):
            raise ValueError(
                f"DPFedAvg's sample_rate={inner.sample_rate} but the simulation samples "
                f"{sampled} of {num_clients} clients per round: epsilon would be computed for "
                f"the wrong sampling; pass sample_rate={sampled}/{num_clients}"
            )
        if isinstance(inner, Scaffold) and inner.num_clients != num_clients:
            raise ValueError(
                f"Scaffold(num_clients={inner.num_clients}) but the simulation has "
                f"{num_clients} clients: its control variate averages over all of them"
            )


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


class ClientError(RuntimeError):
    """A client whose local training raised: names the client, the round and the error.

    ``client``, ``round`` and ``problem`` (``"TypeName: message"`` of the original error) are
    kept as fields; the original error is the ``__cause__`` when raised in-process.
    """

    def __init__(self, client: int, round_: int, problem: str) -> None:
        super().__init__(f"client {client}: local training failed in round {round_}: {problem}")
        self.client = client
        self.round = round_
        self.problem = problem

    def __reduce__(self) -> tuple[type, tuple[int, int, str]]:
        # picklable with its fields, so worker processes can pass it on
        return type(self), (self.client, self.round, self.problem)


class Compressor(Protocol):
    """What :class:`Simulation` needs of an update compressor (e.g. top-k with error feedback).

    ``compress(cid, update)`` gets client ``cid``'s update ``w_k - w^t`` (its floating-point
    state-dict entries) and returns the update as the server decodes it and the number of
    bytes sent; ``state_dict()``/``load_state_dict()`` carry its memory into checkpoints.
    Its ``repr`` names its settings there (a resumed run must have the same); an object with
    object's default repr is recorded by its class's name.
    """

    def compress(self, cid: int, update: dict[str, Tensor]) -> tuple[dict[str, Tensor], int]:
        """Encode and decode ``update``; return ``(decoded update, bytes sent)``."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """The compressor's memory (tensors, numbers)."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s memory."""
        ...


#: thread heuristic: below this many multiply-adds per forward pass of a batch (parameters x
#: batch size), a kernel is too short to pay for waking more threads; on a busy 2-core
#: machine torch's default thread count makes a digits round 8x slower than one thread
SMALL_STEP = 2**23


def default_threads(model: nn.Module, batch_size: int) -> int:
    """Threads for a round: 1 for a small model (``parameters * batch_size`` below
    :data:`SMALL_STEP`; Flower's simulation uses one per client), else torch's default."""
    size = sum(p.numel() for p in model.parameters()) * batch_size
    return 1 if size < SMALL_STEP else torch.get_num_threads()


@contextlib.contextmanager
def num_threads(threads: int) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(threads)``; restore the count after."""
    before = torch.get_num_threads()
    if threads != before:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        if threads != before:
            torch.set_num_threads(before)


def _float_keys(state: State) -> list[str]:
    return [name for name, tensor in state.items() if tensor.is_floating_point()]


def _nbytes(tensors: Iterable[Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


class Simulation:
    """Federated training of ``model`` by ``clients`` under ``strategy``, in one process.

    Args:
        model: the global model (on the device the clients' data lives on). It is updated in
            place; one working copy of it is made for the clients to train.
        clients: the population; see :func:`~torchopt_edu.federated.client.make_clients`.
        strategy: e.g. :class:`~torchopt_edu.federated.strategy.FedAvg`, ``FedProx``, ``FedAdam``,
            a robust aggregator (:mod:`~torchopt_edu.federated.robust`) or ``Scaffold``.
        train: the clients' local training (optimizer factory, epochs, batch size, ...).
        test_set: ``(features, labels)`` to evaluate the global model on after every round.
        fraction: ``C``, the fraction of clients sampled per round, in ``(0, 1]``.
        seed: fixes client sampling, local training, attackers and faults.
        on_invalid: what to do with a malformed update (wrong keys, shapes or dtypes, NaN/inf;
            e.g. a client that diverged): ``"raise"`` an ``InvalidUpdateError`` before the
            global model is touched, or ``"skip"`` it with a warning and average the others.
        on_client_error: a client whose training raises (bad labels, wrong feature count):
            ``"raise"`` a :class:`ClientError` naming it, or ``"skip"`` it with a warning.
        compressor: encodes each update ``w_k - w^t`` for the upload (:class:`Compressor`);
            the server aggregates ``w^t + decoded update``. ``None``: sent as is.
        attack: an :class:`~torchopt_edu.federated.attacks.Attack` by some of the clients.
        faults: dropout, stragglers and the minimum of replies
            (:class:`~torchopt_edu.federated.faults.Faults`); ``None``: none of them.
        threads: torch's intra-op threads during a round (local training, aggregation,
            evaluation); ``None`` picks them by model size (:func:`default_threads`: 1 for
            small models, whose kernels are too short to share among threads).
        checkpoint: a file to save the server state to every ``checkpoint_every`` rounds
            (:meth:`save_checkpoint`); resume with :meth:`load_checkpoint`.

    ``history`` holds one record per round: ``round``, ``clients`` (sampled), ``dropped`` and
    ``late`` (client ids cut by the faults), ``failed`` (clients whose training raised),
    ``rejected`` (malformed updates), ``replies`` (accepted updates), ``samples`` (theirs),
    ``bytes_sent`` (their upload), ``skipped`` (why the round was skipped, or ``None``),
    ``refused`` (why the server step was refused, or ``None``), ``train_loss``,
    ``client_time_s`` (summed over clients), ``round_time_s`` (without evaluation),
    ``test_loss``, ``test_accuracy``, ``eval_time_s``.
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
        *,
        on_client_error: Literal["raise", "skip"] = "raise",
        compressor: Compressor | None = None,
        attack: Attack | None = None,
        faults: Faults | None = None,
        threads: int | None = None,
        checkpoint: str | os.PathLike[str] | None = None,
        checkpoint_every: int = 1,
    ) -> None:
        if len(clients) == 0:
            raise ValueError("clients must not be empty")
        if not (is_real(fraction) and 0 < fraction <= 1):
            raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
        for name, value in (("on_invalid", on_invalid), ("on_client_error", on_client_error)):
            if value not in ("raise", "skip"):
                raise ValueError(f"{name} must be 'raise' or 'skip', got {value!r}")
        for position, client in enumerate(clients):
            if client.cid != position:
                raise ValueError(
                    f"client ids must be 0, 1, ..., K - 1 in order: clients[{position}].cid is "
                    f"{client.cid!r}"
                )
        if compressor is not None and not callable(getattr(compressor, "compress", None)):
            raise TypeError(f"compressor must have a compress(cid, update) method: {compressor!r}")
        if attack is not None and not isinstance(attack, Attack):
            raise TypeError(f"attack must be an Attack, got {attack!r}")
        if faults is not None and not isinstance(faults, Faults):
            raise TypeError(f"faults must be a Faults, got {faults!r}")
        check_strategy_fits(strategy, len(clients), fraction)
        self.model = model
        self.worker = copy.deepcopy(model)
        self.clients = list(clients)
        self.strategy = strategy
        self.train = train
        self.test_set = test_set
        self.fraction = float(fraction)
        self.seed = check_seed(seed)
        self.on_invalid = on_invalid
        self.on_client_error = on_client_error
        self.compressor = compressor
        self.attack = attack
        self.faults = Faults() if faults is None else faults
        self.threads = (
            default_threads(model, train.batch_size)
            if threads is None
            else check_int("threads", threads, 1)
        )
        self.checkpoint = None if checkpoint is None else Path(checkpoint)
        self.checkpoint_every = check_int("checkpoint_every", checkpoint_every, 1)
        self.attackers = frozenset() if attack is None else attack.attackers(len(clients), seed)
        self._poisoned = {k: attack.poison_client(self.clients[k]) for k in self.attackers}
        self._slowness = self.faults.slowness(len(clients), self.seed)
        self.history: list[Record] = []

    def run(
        self, rounds: int, progress: bool = True, log: Callable[[Record], None] | None = None
    ) -> list[Record]:
        """Run ``rounds`` more rounds with a progress bar; call ``log(record)`` after each, and
        save a checkpoint every ``checkpoint_every`` rounds if ``checkpoint`` is set."""
        check_rounds(rounds)
        bar = tqdm(range(int(rounds)), desc="rounds", disable=not progress, leave=False)
        for _ in bar:
            record = self.run_round()
            if "test_accuracy" in record:
                bar.set_postfix(acc=f"{record['test_accuracy']:.3f}")
            if self.checkpoint is not None and record["round"] % self.checkpoint_every == 0:
                self.save_checkpoint()
            if log is not None:
                log(record)
        return self.history

    def run_round(self) -> Record:
        """One round of sampling, local training, aggregation and evaluation; returns its record."""
        with num_threads(self.threads):
            record = self._round()
        self.history.append(record)
        return record

    def _round(self) -> Record:
        round_ = len(self.history) + 1
        start = time.perf_counter()
        sampled = sample_clients(len(self.clients), self.fraction, self.seed, round_)
        train = self.strategy.configure_fit(self.train)
        steps = [
            local_steps(self.clients[k].num_samples, train.epochs, train.batch_size)
            for k in sampled
        ]
        replying, dropped, late = self.faults.split(
            sampled, steps, self._slowness, self.seed, round_
        )
        global_state = self.model.state_dict()
        results, failures = self._fit(self._own_share(replying), global_state, train, round_)
        record: Record = {
            "round": round_,
            "clients": len(sampled),
            "dropped": dropped,
            "late": late,
        }
        record.update(self._aggregate(results, failures, global_state))
        record["round_time_s"] = time.perf_counter() - start
        if self.test_set is not None:
            start = time.perf_counter()
            record.update(evaluate(self.model, *self.test_set, loss_fn=self.train.loss_fn))
            record["eval_time_s"] = time.perf_counter() - start
        return record

    def _own_share(self, sampled: list[int]) -> list[int]:
        """The sampled clients this process trains (all of them here)."""
        return sampled

    def _fit(
        self, share: list[int], global_state: State, train: LocalTraining, round_: int
    ) -> tuple[list[ClientResult], list[ClientError]]:
        """Train the clients of ``share``; an attacker's result is poisoned, a client that
        raises becomes a :class:`ClientError`."""
        results, failures = [], []
        for k in share:
            client = self._poisoned.get(k, self.clients[k])
            local = self.strategy.configure_client(k, train)
            seed = client_seed(self.seed, round_, k)
            try:
                result = client.fit(self.worker, global_state, local, seed)
            except Exception as error:  # any error of the client's own code or data
                failure = ClientError(k, round_, f"{type(error).__name__}: {error}")
                failure.__cause__ = error
                failures.append(failure)
                continue
            problem = reply_problem(result, k)
            if problem is not None:  # a client of other code, or a malicious one
                failures.append(ClientError(k, round_, f"malformed reply: {problem}"))
                continue
            if k in self.attackers and self.attack is not None:
                update = {n: result.state[n] - global_state[n] for n in _float_keys(global_state)}
                generator = torch.Generator().manual_seed(seed + 1)
                poisoned = self.attack.poison_update(update, generator)
                for name, u in poisoned.items():
                    result.state[name] = global_state[name] + u
            results.append(result)
        return results, failures

    def _aggregate(
        self, results: list[ClientResult], failures: list[ClientError], global_state: State
    ) -> Record:
        """Screen the results, upload them, let the strategy update the global model; if the
        strategy raises, the compressor's memory is put back (the model was not changed)."""
        self._handle_errors(failures, self.on_client_error, "failed client")
        memory = None if self.compressor is None else copy.deepcopy(self.compressor.state_dict())
        try:
            return self._upload_and_step(results, failures, global_state)
        except BaseException:
            if memory is not None:
                self.compressor.load_state_dict(memory)
            raise

    def _upload_and_step(
        self, results: list[ClientResult], failures: list[ClientError], global_state: State
    ) -> Record:
        if self.on_invalid == "raise" and self.compressor is None:
            # every strategy checks the values of every update before it changes anything and
            # raises InvalidUpdateError naming the client and the tensor; checking them here
            # as well cost 1-2% of a digits round. The structure is checked here: the byte
            # count below needs tensors.
            for result in results:
                check_structure(result.state, global_state, result.client)
            accepted, errors = results, []
        else:
            accepted, errors = screen(results, global_state)
            self._handle_errors(errors, self.on_invalid, "rejected update")
        uploads, sent = self._upload(accepted, global_state)
        samples = sum(r.num_samples for r in uploads)
        loss_sum = sum(r.num_samples * r.metrics["loss"] for r in uploads)
        client_time = sum(r.metrics["train_time_s"] for r in results)
        record = round_summary(samples, loss_sum, client_time, errors)
        record.update(failed=sorted(f.client for f in failures), bytes_sent=sent)
        record.update(self._server_step(len(uploads), lambda: self._step(uploads)))
        return record

    def _step(self, uploads: list[ClientResult]) -> Record | None:
        return self.strategy.aggregate_fit(self.model, uploads)  # a strategy's round metrics

    def _upload(
        self, accepted: list[ClientResult], global_state: State
    ) -> tuple[list[ClientResult], int]:
        """The results as the server receives them and the bytes sent: the compressor's
        decoded update added to the global model, or the states as they are (their size)."""
        if self.compressor is None:
            return accepted, sum(_nbytes(r.state.values()) for r in accepted)
        uploads, sent = [], 0
        floats = _float_keys(global_state)
        for result in accepted:
            update = {name: result.state[name] - global_state[name] for name in floats}
            decoded, nbytes = self.compressor.compress(result.client, update)
            state = dict(result.state)
            for name in floats:
                state[name] = global_state[name] + decoded[name]
            others = [t for name, t in state.items() if name not in decoded]
            sent += int(nbytes) + _nbytes(others)
            uploads.append(dataclasses.replace(result, state=state))
        return uploads, sent

    def _server_step(self, replies: int, step: Callable[[], Record | None]) -> Record:
        """Run ``step`` unless fewer than ``min_replies`` arrived; record a skip or refusal."""
        outcome: Record = {"replies": replies, "skipped": None, "refused": None}
        if replies < self.faults.min_replies:
            outcome["skipped"] = (
                f"{replies} replies, fewer than min_replies={self.faults.min_replies}"
            )
            warnings.warn(f"round skipped: {outcome['skipped']}", RuntimeWarning, stacklevel=4)
            return outcome
        try:
            metrics = step()
        except ServerStepError as error:
            outcome["refused"] = str(error)
            warnings.warn(str(error), RuntimeWarning, stacklevel=4)
        else:
            outcome.update(metrics or {})  # e.g. DPFedAvg's epsilon
        return outcome

    def _handle_errors(self, errors: Sequence[Exception], mode: str, what: str) -> None:
        if errors and mode == "raise":
            raise errors[0]
        for error in errors:
            warnings.warn(f"{what}: {error}", RuntimeWarning, stacklevel=4)

    def _run_identity(self) -> dict[str, Any]:
        """What a checkpoint must share with this run to resume it: the seed, the number of
        clients, the fraction, and the strategy's and the compressor's settings (their repr,
        nested strategies and the server optimizer's hyper-parameters included)."""
        return {
            "seed": self.seed,
            "num_clients": len(self.clients),
            "fraction": self.fraction,
            "strategy": settings_repr(self.strategy),
            "compressor": None if self.compressor is None else settings_repr(self.compressor),
        }

    def checkpoint_state(self) -> dict[str, Any]:
        """The server state a checkpoint holds (see :mod:`~torchopt_edu.federated.checkpoint`)."""
        return {
            "format": FORMAT,
            "version": VERSION,
            "run": self._run_identity(),
            "round": len(self.history),
            "model": self.model.state_dict(),
            "strategy": self.strategy.state_dict(),
            "compressor": None if self.compressor is None else self.compressor.state_dict(),
            "history": self.history,
        }

    def save_checkpoint(self, path: str | os.PathLike[str] | None = None) -> Path:
        """Save the server state to ``path`` (default: ``checkpoint``) atomically."""
        return save_checkpoint(self.checkpoint_state(), self._checkpoint_path(path))

    def load_checkpoint(self, path: str | os.PathLike[str] | None = None) -> int:
        """Restore the server state from ``path`` (default: ``checkpoint``); return its round.

        The checkpoint is validated first (this run's seed, clients and fraction, the settings
        of its strategy and compressor as ``repr`` shows them, e.g. a server learning rate;
        the model's keys, shapes and dtypes: :func:`~.checkpoint.read_checkpoint`);
        a bad one raises :class:`~torchopt_edu.federated.checkpoint.CheckpointError` and the
        simulation is left as it was.
        """
        path = self._checkpoint_path(path)
        state = read_checkpoint(path, self._run_identity(), self.model.state_dict())
        before = copy.deepcopy(self.strategy.state_dict())
        try:
            self.strategy.load_state_dict(state["strategy"], self.model)
            if self.compressor is not None:
                self.compressor.load_state_dict(state["compressor"])
        except (ValueError, KeyError, TypeError, RuntimeError) as error:
            self.strategy.load_state_dict(before, self.model)
            raise CheckpointError(f"{path}: the server state does not fit: {error}") from error
        self.model.load_state_dict(state["model"])
        self.history = list(state["history"])
        return len(self.history)

    def _checkpoint_path(self, path: str | os.PathLike[str] | None) -> Path:
        if path is not None:
            return Path(path)
        if self.checkpoint is None:
            raise ValueError("no checkpoint path: pass one or set Simulation(checkpoint=...)")
        return self.checkpoint


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
