"""Flower interop: run an experiment of this package on Flower's simulation engine or deployment.

An :class:`Experiment` names everything a run needs (the global model, the clients' data, the
strategy with its server optimizer, the local training, the fraction sampled per round, the
seed). A function ``build(run_config) -> Experiment`` builds it the same way in every process,
and three adapters hand it to Flower (``pip install "torchopt-edu[fed]"``; Flower's Message API,
``flwr >= 1.20``):

* :class:`FlowerStrategy`, a ``flwr.serverapp.strategy.Strategy``: it samples the clients that
  :class:`~torchopt_edu.federated.simulation.Simulation` samples (by client id, not Flower's
  random node id), sends each the global model and the seed from which it derives its own, and
  lets this package's strategy (FedAvg, FedProx, FedAdam, DPFedAvg, ... with its server
  optimizer) form the new global model from the replies;
* :func:`server_app`, a ``ServerApp`` that runs the strategy for ``rounds`` rounds and
  evaluates the global model on the experiment's test set after each;
* :func:`client_app`, a ``ClientApp`` whose ``train`` runs
  :meth:`Client.fit <torchopt_edu.federated.client.Client.fit>` on the node's partition
  (``node_config["partition-id"]``) and whose ``query`` tells the server which partition a
  node holds.

A client's training depends only on the global model, its data and its seed, the server samples
clients by id with the simulation's own sampler, and the replies are aggregated in client-id
order, so a Flower run gives the global model of ``Simulation`` with the same seed.

On Flower's simulation engine (needs ``flwr[simulation]``, i.e. Ray)::

    model, history = run_flower_simulation(build)

In a deployment, a Flower App's ``pyproject.toml`` names ``server_app(build)`` and
``client_app(build)`` as its components; start a SuperLink, one SuperNode per client with
``--node-config "partition-id=K num-partitions=N"``, and ``flwr run`` the app (see the
federated page of the documentation).
"""

from __future__ import annotations

import dataclasses
import functools
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from torchopt_edu.federated.client import Client, ClientResult, LocalTraining, make_clients
from torchopt_edu.federated.data import MLP, load_digits_split
from torchopt_edu.federated.partition import dirichlet_partition, iid_partition
from torchopt_edu.federated.simulation import (
    Record,
    Simulation,
    check_rounds,
    check_strategy_fits,
    client_seed,
    evaluate,
    reply_problem,
    round_summary,
    sample_clients,
    screen,
)
from torchopt_edu.federated.strategy import (
    STRATEGIES,
    ServerStepError,
    Strategy,
    StrategyWrapper,
)
from torchopt_edu.optim import SGD
from torchopt_edu.optim._checks import is_real

try:
    from flwr.app import (
        ArrayRecord,
        ConfigRecord,
        Context,
        Message,
        MessageType,
        MetricRecord,
        RecordDict,
    )
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
    from flwr.serverapp.strategy import Strategy as _FlowerStrategyBase
except ImportError as error:  # pragma: no cover - the "fed" extra is missing
    raise ImportError(
        'torchopt_edu.federated.flower needs Flower: pip install "torchopt-edu[fed]"'
    ) from error

#: The run configuration a Flower App passes to ``build`` (its ``[tool.flwr.app.config]``).
RunConfig = dict[str, Any]


@dataclass
class Experiment:
    """A federated experiment, as :class:`~torchopt_edu.federated.simulation.Simulation` takes it.

    Attributes:
        model: the global model with its initial weights (on the server); a working copy of the
            architecture on a client.
        clients: the population; client ``k`` is served by the SuperNode whose
            ``node_config["partition-id"]`` is ``k``.
        strategy: this package's strategy (with its server optimizer, if any).
        train: the clients' local training.
        rounds: how many rounds the ``ServerApp`` runs.
        test_set: ``(features, labels)`` the server evaluates the global model on each round.
        fraction: ``C``, the fraction of clients sampled per round.
        seed: fixes client sampling and local training, as in ``Simulation``.
    """

    model: nn.Module
    clients: Sequence[Client]
    strategy: Strategy
    train: LocalTraining
    rounds: int = 3
    test_set: tuple[Tensor, Tensor] | None = None
    fraction: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        check_rounds(self.rounds)
        if not (is_real(self.fraction) and 0 < self.fraction <= 1):
            raise ValueError(f"fraction must be in (0, 1], got {self.fraction!r}")
        if len(self.clients) == 0:
            raise ValueError("clients must not be empty")
        check_strategy_fits(self.strategy, len(self.clients), self.fraction)


ExperimentBuilder = Callable[[RunConfig], Experiment]


def _partition_id(context: Context) -> int:
    """The client id this node serves (``--node-config "partition-id=K"``)."""
    if "partition-id" not in context.node_config:
        raise ValueError(
            "this SuperNode has no partition-id: start it with "
            "--node-config 'partition-id=K num-partitions=N'"
        )
    return int(context.node_config["partition-id"])


def _partition(context: Context) -> MetricRecord:
    return MetricRecord({"partition-id": _partition_id(context)})


class FlowerStrategy(_FlowerStrategyBase):
    """This package's strategy as a Flower (Message API) strategy.

    Each round: sample client ids with :func:`~torchopt_edu.federated.simulation.sample_clients`,
    send each sampled node the global model and a config (round, seed, epochs, batch size and
    FedProx's ``mu`` from the strategy's ``configure_fit``), collect the replies, screen them
    (malformed or failed replies are skipped with a warning, as ``Simulation(on_invalid="skip")``
    does) and let ``experiment.strategy.aggregate_fit`` update ``experiment.model``. Federated
    evaluation is not used; the ``ServerApp`` evaluates on the test set.

    ``history`` gets one record per round with the keys of ``Simulation``'s records (and the
    strategy's round metrics, such as DPFedAvg's ``epsilon``, also sent to Flower's log).

    Scope: the clients' training is configured per round, not per client, so a strategy that
    configures each client (SCAFFOLD's control variates) is refused with ``NotImplementedError``;
    the simulation's compressors, attacks and faults are not part of a Flower run.
    """

    def __init__(self, experiment: Experiment, timeout: float = 600.0) -> None:
        # the experiment's fields may have been replaced since it was built
        check_strategy_fits(experiment.strategy, len(experiment.clients), experiment.fraction)
        inner = experiment.strategy
        while isinstance(inner, StrategyWrapper):
            inner = inner.strategy
        if type(inner).configure_client is not Strategy.configure_client:
            raise NotImplementedError(
                f"{type(inner).__name__} configures each client's training (SCAFFOLD's control "
                "variates), which this adapter does not send through Flower; run it with "
                "Simulation or the torch.distributed backend"
            )
        self.experiment = experiment
        self.timeout = timeout
        self.nodes: dict[int, int] = {}  # client id -> Flower node id
        self.history: list[Record] = []
        self._round_start = 0.0

    def summary(self) -> None:
        """Flower logs this at the start of a run; the strategy's repr says enough."""

    def discover(self, grid: Grid) -> dict[int, int]:
        """Wait until ``len(experiment.clients)`` SuperNodes are connected (or ``timeout``
        passes); when only some are sampled per round, ask each which partition it holds (a
        ``query`` message, once per node)."""
        expected = len(self.experiment.clients)
        deadline = time.monotonic() + self.timeout
        while len(node_ids := list(grid.get_node_ids())) < expected:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"after {self.timeout} s only {len(node_ids)} of {expected} SuperNodes "
                    "are connected"
                )
            time.sleep(0.2)
        unknown = [node for node in node_ids if node not in self.nodes.values()]
        if self.experiment.fraction < 1 and unknown:
            queries = [
                Message(RecordDict(), dst_node_id=node, message_type=MessageType.QUERY)
                for node in unknown
            ]
            for reply in grid.send_and_receive(queries, timeout=self.timeout):
                if reply.has_error():
                    raise RuntimeError(
                        f"SuperNode {reply.metadata.src_node_id}: {reply.error.reason}"
                    )
                self._learn(reply)
            missing = sorted(set(range(expected)) - self.nodes.keys())
            if missing:
                raise ValueError(f"no connected SuperNode serves partitions {missing}")
        return self.nodes

    def _learn(self, reply: Message) -> int:
        """Record which partition the node of ``reply`` serves; return it."""
        cid = int(reply.content["partition"]["partition-id"])
        expected = len(self.experiment.clients)
        if not 0 <= cid < expected:
            raise ValueError(
                f"SuperNode {reply.metadata.src_node_id} serves partition {cid}, outside "
                f"0..{expected - 1}"
            )
        self.nodes[cid] = reply.metadata.src_node_id
        return cid

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Messages to the nodes of the clients ``Simulation`` samples in this round.

        With ``fraction = 1`` every node trains and the partitions are learnt from the replies
        (no ``query`` round trip); each client derives its seed from the experiment's seed, the
        round and its partition id, as in ``Simulation``.
        """
        self._round_start = time.perf_counter()
        experiment = self.experiment
        nodes = self.discover(grid)
        train = experiment.strategy.configure_fit(experiment.train)
        client_config = ConfigRecord(
            {
                **config,
                "server-round": server_round,
                "seed": experiment.seed,
                "epochs": train.epochs,
                "batch-size": train.batch_size,
                "proximal-mu": train.proximal_mu,
            }
        )
        content = RecordDict({"arrays": arrays, "config": client_config})
        if experiment.fraction < 1:
            sampled = sample_clients(
                len(experiment.clients), experiment.fraction, experiment.seed, server_round
            )
            destinations = [nodes[cid] for cid in sampled]
        else:
            destinations = list(grid.get_node_ids())
        return [
            Message(content, dst_node_id=node, message_type=MessageType.TRAIN)
            for node in destinations
        ]

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Aggregate the replies with this package's strategy; the new global model's arrays."""
        model = self.experiment.model
        global_state = model.state_dict()
        results, failed = [], []
        for reply in replies:
            if reply.has_error():
                failed.append((reply.metadata.src_node_id, reply.error.reason))
                continue
            cid = self._learn(reply)
            if any(r.client == cid for r in results):
                raise ValueError(f"two SuperNodes serve partition {cid}")
            try:
                metrics = reply.content["metrics"]
                result = ClientResult(
                    cid,
                    dict(reply.content["arrays"].to_torch_state_dict()),
                    metrics["num-examples"],  # checked by reply_problem below
                    {
                        "loss": float(metrics["loss"]),
                        "train_time_s": float(metrics["train-time-s"]),
                    },
                )
            except (KeyError, TypeError, ValueError, OverflowError, AttributeError) as error:
                problem: str | None = f"{type(error).__name__}: {error}"
            else:
                problem = reply_problem(result, cid)
            if problem is not None:  # skipped, as Simulation(on_client_error="skip") does
                failed.append((reply.metadata.src_node_id, f"malformed reply: {problem}"))
                continue
            results.append(result)
        results.sort(key=lambda r: r.client)  # the simulation's order of the float64 sums
        accepted, errors = screen(results, global_state)
        for node, reason in failed:
            warnings.warn(f"SuperNode {node} failed: {reason}", RuntimeWarning, stacklevel=2)
        for error in errors:
            warnings.warn(f"rejected update: {error}", RuntimeWarning, stacklevel=2)
        refused = None
        try:
            metrics = self.experiment.strategy.aggregate_fit(model, accepted) if accepted else None
        except ServerStepError as error:  # recorded and the run goes on, as in Simulation
            metrics, refused = None, str(error)
            warnings.warn(refused, RuntimeWarning, stacklevel=2)
        record: Record = {
            "round": server_round,
            "clients": len(results) + len(failed),
            "refused": refused,
        }
        record.update(
            round_summary(
                sum(r.num_samples for r in accepted),
                sum(r.num_samples * r.metrics["loss"] for r in accepted),
                sum(r.metrics["train_time_s"] for r in results),
                errors,
            )
        )
        record.update(metrics or {})  # a strategy's round metrics (DPFedAvg's epsilon)
        record["round_time_s"] = time.perf_counter() - self._round_start
        self.history.append(record)
        reported = {"train-loss": record["train_loss"], "samples": record["samples"]}
        reported.update((k, v) for k, v in (metrics or {}).items() if isinstance(v, int | float))
        return ArrayRecord(model.state_dict()), MetricRecord(reported)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """No federated evaluation: the server evaluates the global model on the test set."""
        return []

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """Nothing to aggregate (see :meth:`configure_evaluate`)."""
        return None

    def evaluate(self, server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        """Test loss and accuracy of the global model, added to the round's record."""
        experiment = self.experiment
        if experiment.test_set is None or server_round == 0:
            return None
        start = time.perf_counter()
        metrics = evaluate(experiment.model, *experiment.test_set, loss_fn=experiment.train.loss_fn)
        metrics["eval_time_s"] = time.perf_counter() - start
        self.history[-1].update(metrics)
        return MetricRecord(
            {"test-loss": metrics["test_loss"], "test-accuracy": metrics["test_accuracy"]}
        )


def server_app(
    build: ExperimentBuilder,
    on_finish: Callable[[Experiment, list[Record], RunConfig], None] | None = None,
    timeout: float = 600.0,
) -> ServerApp:
    """A Flower ``ServerApp`` that runs ``build(run_config)``'s experiment.

    ``on_finish(experiment, history, run_config)`` is called after the last round (to save the
    global model, say); ``timeout`` bounds the wait for the SuperNodes and their replies.
    """
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        run_config = dict(context.run_config)
        experiment = build(run_config)
        strategy = FlowerStrategy(experiment, timeout=timeout)
        strategy.start(
            grid,
            ArrayRecord(experiment.model.state_dict()),
            num_rounds=experiment.rounds,
            timeout=timeout,
            evaluate_fn=strategy.evaluate,
        )
        if on_finish is not None:
            on_finish(experiment, strategy.history, run_config)

    return app


def client_app(build: ExperimentBuilder) -> ClientApp:
    """A Flower ``ClientApp`` that trains the node's client of ``build(run_config)``.

    The experiment is built once per process and run configuration (a ``ClientApp`` process
    or Ray actor serves many messages), not once per message.
    """
    app = ClientApp()
    built: dict[tuple[tuple[str, Any], ...], Experiment] = {}

    def experiment_of(context: Context) -> Experiment:
        key = tuple(sorted(context.run_config.items()))
        if key not in built:
            built[key] = build(dict(context.run_config))
        return built[key]

    @app.query()
    def query(message: Message, context: Context) -> Message:
        return Message(RecordDict({"partition": _partition(context)}), reply_to=message)

    @app.train()
    def train(message: Message, context: Context) -> Message:
        experiment = experiment_of(context)
        cid = _partition_id(context)
        config = message.content["config"]
        local = dataclasses.replace(
            experiment.train,
            epochs=int(config["epochs"]),
            batch_size=int(config["batch-size"]),
            proximal_mu=float(config["proximal-mu"]),
        )
        global_state = message.content["arrays"].to_torch_state_dict()
        seed = client_seed(int(config["seed"]), int(config["server-round"]), cid)
        result = experiment.clients[cid].fit(experiment.model, global_state, local, seed)
        metrics = MetricRecord(
            {
                "num-examples": result.num_samples,
                "loss": result.metrics["loss"],
                "train-time-s": result.metrics["train_time_s"],
            }
        )
        content = RecordDict(
            {
                "arrays": ArrayRecord(result.state),
                "metrics": metrics,
                "partition": _partition(context),
            }
        )
        return Message(content, reply_to=message)

    return app


def digits_experiment(run_config: RunConfig) -> Experiment:
    """The digits task of this package as an :class:`Experiment`, configured by ``run_config``.

    Keys (all optional): ``num-clients`` (10), ``alpha`` (Dirichlet label skew; 0, the default,
    for IID), ``strategy`` (a name of :data:`~torchopt_edu.federated.strategy.STRATEGIES`,
    ``"fedavg"``), ``lr`` (the clients' SGD learning rate, 0.1), ``epochs`` (1),
    ``batch-size`` (10), ``rounds`` (3), ``fraction`` (1.0), ``seed`` (0). The MLP's initial
    weights are drawn from ``seed``, so every process builds the same experiment.
    """
    name = str(run_config.get("strategy", "fedavg"))
    if name not in STRATEGIES:
        raise ValueError(f"strategy must be one of {sorted(STRATEGIES)}, got {name!r}")
    strategy = STRATEGIES[name]
    num_clients = int(run_config.get("num-clients", 10))
    alpha = float(run_config.get("alpha", 0.0))
    seed = int(run_config.get("seed", 0))
    x, y, x_test, y_test = load_digits_split(seed=seed)
    if alpha > 0:
        parts = dirichlet_partition(y, num_clients=num_clients, alpha=alpha, seed=seed)
    else:
        parts = iid_partition(len(y), num_clients, seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = MLP()
    train = LocalTraining(
        functools.partial(SGD, lr=float(run_config.get("lr", 0.1))),
        epochs=int(run_config.get("epochs", 1)),
        batch_size=int(run_config.get("batch-size", 10)),
    )
    return Experiment(
        model,
        make_clients(x, y, parts),
        strategy(),
        train,
        rounds=int(run_config.get("rounds", 3)),
        test_set=(x_test, y_test),
        fraction=float(run_config.get("fraction", 1.0)),
        seed=seed,
    )


def run_flower_simulation(
    build: ExperimentBuilder,
    backend_config: dict[str, Any] | None = None,
) -> tuple[nn.Module, list[Record]]:
    """Run ``build({})``'s experiment on Flower's simulation engine (Ray); return the global
    model and the history. One virtual SuperNode per client, one CPU per ``ClientApp``."""
    from flwr.simulation import run_simulation

    finished: dict[str, Any] = {}

    def keep(experiment: Experiment, history: list[Record], run_config: RunConfig) -> None:
        finished.update(model=experiment.model, history=history)

    num_clients = len(build({}).clients)
    run_simulation(
        server_app(build, on_finish=keep),
        client_app(build),
        num_supernodes=num_clients,
        backend_config=backend_config or {"client_resources": {"num_cpus": 1}},
    )
    if "model" not in finished:
        raise RuntimeError("Flower's simulation ended before the last round (see its log)")
    return finished["model"], finished["history"]


def compare_with_flower(run_config: RunConfig, warmup: int = 2) -> dict[str, Any]:
    """Rounds per second of :class:`~torchopt_edu.federated.simulation.Simulation` and of
    Flower's simulation engine on the same ``digits_experiment(run_config)``.

    Both run ``run_config["rounds"]`` rounds; the first ``warmup`` are not timed (Flower's
    first round also starts Ray and its actors). A round's time is its training, messaging and
    aggregation plus the evaluation on the test set. Returns both rates, their ratio, both
    final accuracies (equal: the same global model), the setting and ``threads`` (torch threads
    of this package's simulation; Flower's actors run one each).
    """
    rounds = int(run_config.get("rounds", 3))
    if not 0 <= warmup < rounds:
        raise ValueError(f"warmup must be in [0, rounds - 1] = [0, {rounds - 1}], got {warmup}")
    experiment = digits_experiment(run_config)
    simulation = Simulation(
        experiment.model,
        experiment.clients,
        experiment.strategy,
        experiment.train,
        experiment.test_set,
        fraction=experiment.fraction,
        seed=experiment.seed,
    )
    ours = simulation.run(rounds, progress=False)
    _, theirs = run_flower_simulation(lambda _: digits_experiment(run_config))

    def rate(history: list[Record]) -> float:
        timed = history[warmup:]
        return len(timed) / sum(r["round_time_s"] + r.get("eval_time_s", 0.0) for r in timed)

    return {
        "clients": len(experiment.clients),
        "sampled": ours[0]["clients"],
        "local_epochs": experiment.train.epochs,
        "batch_size": experiment.train.batch_size,
        "rounds": rounds,
        "warmup": warmup,
        "threads": simulation.threads,
        "rounds_per_s": rate(ours),
        "flower_rounds_per_s": rate(theirs),
        "speedup": rate(ours) / rate(theirs),
        "test_accuracy": ours[-1].get("test_accuracy"),
        "flower_test_accuracy": theirs[-1].get("test_accuracy"),
    }


__all__ = [
    "Experiment",
    "FlowerStrategy",
    "client_app",
    "compare_with_flower",
    "digits_experiment",
    "run_flower_simulation",
    "server_app",
]
