"""The simulation over real processes: torch.distributed (gloo, CPU) on localhost.

``run_distributed`` spawns ``world_size`` worker processes (``torch.multiprocessing.spawn``)
that join a gloo process group on a free localhost port. Every worker holds the global model
and the strategy and samples the same clients each round (same seed); worker ``r`` trains
the sampled clients ``r, r + W, r + 2W, ...``. The weighted average is formed exactly as
in :func:`~torchopt_edu.federated.aggregate.fed_avg`, with the partial sums added across
workers by ``all_reduce``:

    w_avg = (sum_r sum_{k in r} n_k w_k) / (sum_r sum_{k in r} n_k)

and every worker then applies the same strategy step (FedAvg, FedProx or a server optimizer),
so all replicas stay identical. Because a client's training depends only on the global model,
its data and ``(seed, round, client)``, the result equals :class:`Simulation`'s up to the order
of the float64 additions.

Scope: strategies that aggregate by the weighted mean (all of this package's), CPU tensors,
picklable arguments (models, clients and strategies built from importable classes and
``functools.partial``).
"""

from __future__ import annotations

import copy
import multiprocessing.util
import os
import socket
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import Tensor, nn

from torchopt_edu.federated.aggregate import InvalidUpdateError, State, average, weighted_sum
from torchopt_edu.federated.client import Client, ClientResult, LocalTraining
from torchopt_edu.federated.simulation import (
    Record,
    Simulation,
    check_rounds,
    round_summary,
    screen,
)
from torchopt_edu.federated.strategy import Strategy
from torchopt_edu.optim._checks import is_integer


class DistributedSimulation(Simulation):
    """A :class:`Simulation` run by every process of an initialised process group.

    Each process trains its share of the sampled clients; updates are screened locally, the
    rejections gathered (``all_gather_object``) so every process decides alike, and the
    weighted sums, the total weight and the round's metrics are added with ``all_reduce``.
    """

    def _own_share(self, sampled: list[int]) -> list[int]:
        return sampled[dist.get_rank() :: dist.get_world_size()]

    def _aggregate(self, results: list[ClientResult], global_state: State) -> Record:
        accepted, errors = screen(results, global_state)
        everyone: list[list[Any]] = [[] for _ in range(dist.get_world_size())]
        dist.all_gather_object(everyone, errors)
        # by client id, so the first error (the one raised) does not depend on the world size
        errors = sorted((error for part in everyone for error in part), key=lambda e: e.client)
        if self.on_invalid == "raise" or dist.get_rank() == 0:  # warn once, raise everywhere
            self._handle_invalid(errors)
        sums, total = weighted_sum(
            [r.state for r in accepted],
            [r.num_samples for r in accepted],
            global_state,
            [r.client for r in accepted],
        )
        totals = torch.tensor(
            [
                total,
                sum(r.num_samples * r.metrics["loss"] for r in accepted),
                sum(r.metrics["train_time_s"] for r in results),
            ],
            dtype=torch.float64,
        )
        for tensor in (*sums.values(), totals):
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        samples, loss_sum, client_time = totals.tolist()
        if samples > 0:
            self.strategy.apply(self.model, average(sums, samples, global_state))
        return round_summary(samples, loss_sum, client_time, errors)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _worker(
    rank: int,
    world_size: int,
    port: int,
    result_path: str,
    simulation: dict[str, Any],
    rounds: int,
    progress: bool,
    log: Callable[[Record], None] | None,
) -> None:
    torch.set_num_threads(max(1, torch.get_num_threads() // world_size))
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size
    )
    try:
        # the spawned arguments share memory with the parent and the other workers: every
        # worker needs its own replica of what it updates in place (copied together, so a
        # server optimizer keeps pointing at the model's parameters)
        model, strategy = copy.deepcopy((simulation["model"], simulation["strategy"]))
        simulation = {**simulation, "model": model, "strategy": strategy}
        if rank != 0:  # only rank 0 evaluates and reports
            simulation["test_set"] = None
        sim = DistributedSimulation(**simulation)
        error = None
        try:
            sim.run(rounds, progress=progress and rank == 0, log=log if rank == 0 else None)
        except InvalidUpdateError as raised:
            # every rank raises the same error (on_invalid="raise"); hand it to the parent as
            # data, since mp.spawn would wrap it in a ProcessRaisedException
            error = [raised.client, raised.tensor, raised.problem]
        if rank == 0:
            result = {"state": sim.model.state_dict(), "history": sim.history, "error": error}
            torch.save(result, result_path)
        dist.barrier()  # no rank tears gloo down while another still uses it
    finally:
        dist.destroy_process_group()
    # Skip the interpreter's shutdown: now and then it aborts in a C++ destructor after the
    # group is destroyed ("terminate called without an active exception", SIGABRT; torch
    # 2.13, gloo), which mp.spawn would report as a failure of a run that has finished.
    # Run multiprocessing's own exit hooks first (release tqdm's lock, flush the streams).
    multiprocessing.util._exit_function()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def run_distributed(
    model: nn.Module,
    clients: Sequence[Client],
    strategy: Strategy,
    train: LocalTraining,
    rounds: int,
    world_size: int = 2,
    test_set: tuple[Tensor, Tensor] | None = None,
    fraction: float = 0.1,
    seed: int = 0,
    on_invalid: Literal["raise", "skip"] = "raise",
    progress: bool = False,
    log: Callable[[Record], None] | None = None,
) -> list[Record]:
    """Run ``rounds`` rounds of :class:`Simulation` over ``world_size`` gloo worker processes.

    The arguments mean what they mean for :class:`Simulation` (plus :meth:`Simulation.run`'s
    ``progress`` and ``log``, used by rank 0; ``log`` must be picklable). The final global
    state is loaded into ``model``; the history (rank 0's) is returned. The strategy object
    passed in is copied to the workers, so a server optimizer's state stays there.

    With ``on_invalid="raise"``, a malformed update raises the same
    :class:`~torchopt_edu.federated.aggregate.InvalidUpdateError` as :class:`Simulation`
    does, here in the calling process, after ``model`` has been given the global state of
    the last complete round (the round that failed leaves it untouched).
    """
    if not is_integer(world_size) or world_size < 1:
        raise ValueError(f"world_size must be an integer >= 1, got {world_size!r}")
    check_rounds(rounds)
    world_size, rounds = int(world_size), int(rounds)
    if any(t.device.type != "cpu" for t in model.state_dict().values()):
        raise ValueError("run_distributed uses gloo on CPU: keep the model and data on the CPU")
    simulation: dict[str, Any] = dict(
        model=model,
        clients=list(clients),
        strategy=strategy,
        train=train,
        test_set=test_set,
        fraction=fraction,
        seed=seed,
        on_invalid=on_invalid,
    )
    Simulation(**simulation)  # check the arguments here rather than in every worker
    with tempfile.TemporaryDirectory() as directory:
        result_path = str(Path(directory) / "result.pt")
        mp.spawn(
            _worker,
            args=(world_size, free_port(), result_path, simulation, rounds, progress, log),
            nprocs=world_size,
            join=True,
        )
        result = torch.load(result_path, weights_only=True)
    model.load_state_dict(result["state"])
    if result["error"] is not None:
        raise InvalidUpdateError(*result["error"])
    return result["history"]
