"""Benchmark: rounds per second and the framework's overhead over the clients' own training.

``python -m torchopt_edu.federated.bench`` runs FedAvg on digits with 100 IID clients, 10%
sampled per round, ``E = 5`` local epochs of SGD with ``B = 10`` (McMahan et al. 2017's
setting), after ``warmup`` rounds that are not timed. It reports

* ``rounds_per_s``: whole rounds per second, evaluation on the test set included;
* ``overhead``: the median over rounds of (round time without evaluation - clients' training
  time) / clients' training time (the median, so that a round slowed by another process
  does not count), where a client's training time is its optimizer construction and training loop
  (:class:`~torchopt_edu.federated.client.ClientResult`'s ``train_time_s``). The rest is the
  framework: sampling, seeding, loading the global weights, copying the results, checking
  them, averaging and the server step. Target: under 10%.

Threads: the simulation runs a round on :func:`~torchopt_edu.federated.simulation.default_threads`
threads (1 for this MLP: its kernels are too short to share, and on a busy 2-core machine
torch's default thread count made a round 8x slower); ``threads`` overrides it, and the line
says which count was measured.

Times are wall-clock; on a busy machine, run it twice. The command line is
:mod:`torchopt_edu.cli.federated_bench`.
"""

from __future__ import annotations

import functools
import statistics
from typing import Any

import torch

from torchopt_edu.federated.client import LocalTraining, make_clients
from torchopt_edu.federated.data import MLP, load_digits_split
from torchopt_edu.federated.partition import iid_partition
from torchopt_edu.federated.simulation import Simulation
from torchopt_edu.federated.strategy import FedAvg
from torchopt_edu.optim import SGD


def run_benchmark(
    num_clients: int = 100,
    fraction: float = 0.1,
    rounds: int = 20,
    local_epochs: int = 5,
    batch_size: int = 10,
    warmup: int = 2,
    device: str | torch.device = "cpu",
    seed: int = 0,
    threads: int | None = None,
) -> dict[str, Any]:
    """Time ``rounds`` FedAvg rounds on digits (after ``warmup`` rounds); return the numbers.

    Keys: the configuration, ``rounds_per_s``, ``round_time_s``, ``client_time_s`` and
    ``eval_time_s`` (means per round), ``overhead`` (a median fraction, see the module docstring)
    ``test_accuracy`` after the last round and ``threads`` (torch threads during the rounds;
    ``None`` picks them as :class:`~torchopt_edu.federated.simulation.Simulation` does).
    """
    x_train, y_train, x_test, y_test = load_digits_split(seed=seed, device=device)
    clients = make_clients(x_train, y_train, iid_partition(len(y_train), num_clients, seed))
    torch.manual_seed(seed)
    train = LocalTraining(
        functools.partial(SGD, lr=0.1), epochs=local_epochs, batch_size=batch_size
    )
    simulation = Simulation(
        MLP().to(device),
        clients,
        FedAvg(),
        train,
        (x_test, y_test),
        fraction=fraction,
        seed=seed,
        threads=threads,
    )
    if warmup:
        simulation.run(warmup, progress=False)
    timed = simulation.run(rounds, progress=False)[warmup:]
    round_time = sum(r["round_time_s"] for r in timed) / rounds
    client_time = sum(r["client_time_s"] for r in timed) / rounds
    eval_time = sum(r["eval_time_s"] for r in timed) / rounds
    return {
        "clients": num_clients,
        "sampled": timed[0]["clients"],
        "local_epochs": local_epochs,
        "batch_size": batch_size,
        "rounds": rounds,
        "device": str(device),
        "threads": simulation.threads,
        "rounds_per_s": 1.0 / (round_time + eval_time),
        "round_time_s": round_time,
        "client_time_s": client_time,
        "eval_time_s": eval_time,
        "overhead": statistics.median(
            (r["round_time_s"] - r["client_time_s"]) / r["client_time_s"] for r in timed
        ),
        "test_accuracy": timed[-1]["test_accuracy"],
    }


def format_result(result: dict[str, Any]) -> str:
    """The benchmark line."""
    return (
        f"federated: {result['clients']} clients, {result['sampled']} sampled per round, "
        f"E={result['local_epochs']} B={result['batch_size']} on {result['device']} with "
        f"{result['threads']} thread{'s' if result['threads'] != 1 else ''}: "
        f"{result['rounds_per_s']:.1f} rounds/s, framework overhead "
        f"{100 * result['overhead']:.1f}% of the clients' training time "
        f"(client training {1e3 * result['client_time_s']:.1f} ms, evaluation "
        f"{1e3 * result['eval_time_s']:.1f} ms per round)"
    )


if __name__ == "__main__":
    from torchopt_edu.cli.federated_bench import main

    raise SystemExit(main())
