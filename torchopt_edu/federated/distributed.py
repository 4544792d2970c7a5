"""The simulation over real processes: torch.distributed (gloo on CPU, NCCL on GPU).

Every process holds the global model and the strategy and samples the same clients each
round (same seed); process ``r`` of ``W`` trains the sampled clients ``r, r + W, r + 2W, ...``.
Two ways to combine their results, chosen per run:

* Strategies that aggregate by the weighted mean (FedAvg, FedProx, the FedOpt family, without
  a compressor) add partial sums, as in :func:`~torchopt_edu.federated.aggregate.fed_avg`:

      w_avg = (sum_r sum_{k in r} n_k w_k) / (sum_r sum_{k in r} n_k)

  with one ``all_reduce`` per tensor, and every process applies the same server step. The
  result equals :class:`Simulation`'s up to the order of the float64 additions.
* Every other strategy (robust aggregators, update clipping, differential privacy, SCAFFOLD)
  and every run with a compressor gathers all results on every process
  (``all_gather_object``) and runs exactly :class:`Simulation`'s server code on them, so the
  result is :class:`Simulation`'s to the bit. The cost is the whole round's updates on every
  process, fine for the small models federated learning trains.

Faults: every collective waits at most ``timeout`` seconds, so a worker that hangs or dies
stops the run with a :class:`WorkerError` within that time (gloo's own default is 30
minutes). Rank 0 saves the server state after every round, so the completed rounds are kept:
the error carries their history, the model passed in holds the global model of the last one,
and with ``checkpoint`` the run resumes from there (``resume=True``).

Launchers: :func:`run_distributed` spawns ``world_size`` local processes
(``torch.multiprocessing``); under ``torchrun`` (one machine or several), each process calls
:func:`init_from_env` and runs a :class:`DistributedSimulation` itself (see
``torchopt-edu federated --launcher torchrun`` and docs/federated.md for the commands).
"""

from __future__ import annotations

import copy
import datetime
import multiprocessing.util
import os
import socket
import sys
import tempfile
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import Tensor, nn
from torch.multiprocessing.spawn import ProcessException, ProcessRaisedException

from torchopt_edu.federated.aggregate import InvalidUpdateError, State, average, weighted_sum
from torchopt_edu.federated.checkpoint import CheckpointError
from torchopt_edu.federated.client import Client, ClientResult, LocalTraining
from torchopt_edu.federated.simulation import (
    ClientError,
    Record,
    Simulation,
    check_rounds,
    round_summary,
    screen,
)
from torchopt_edu.federated.strategy import Strategy
from torchopt_edu.optim._checks import check_number, is_integer

#: errors every process raises alike; handed to the caller as data
RUN_ERRORS = (InvalidUpdateError, ClientError)


class WorkerError(RuntimeError):
    """A worker process failed, hung past the timeout or died; the completed rounds are kept.

    ``history`` holds the records of the completed rounds (the model passed to
    :func:`run_distributed` holds the global model of the last one) and ``checkpoint`` the
    file to resume from (``None`` without ``checkpoint=``).
    """

    def __init__(self, message: str, history: list[Record], checkpoint: Path | None) -> None:
        super().__init__(message)
        self.history = history
        self.checkpoint = checkpoint


class DistributedSimulation(Simulation):
    """A :class:`Simulation` run by every process of an initialised process group.

    Each process trains its share of the sampled clients. For mean strategies the updates are
    screened locally, the rejections and failures gathered (``all_gather_object``) so every
    process decides alike, and the weighted sums, the total weight and the round's metrics are
    added with ``all_reduce``; otherwise all results are gathered and aggregated as in
    :class:`Simulation`. Only rank 0 saves checkpoints.
    """

    @property
    def adds_partial_sums(self) -> bool:
        """Whether rounds add partial weighted sums (``all_reduce``) rather than gather."""
        return self.strategy.aggregates_by_mean and self.compressor is None

    def _own_share(self, sampled: list[int]) -> list[int]:
        return sampled[dist.get_rank() :: dist.get_world_size()]

    def _aggregate(
        self, results: list[ClientResult], failures: list[ClientError], global_state: State
    ) -> Record:
        if not self.adds_partial_sums:
            results, failures = _gather_sorted(results), _gather_sorted(failures)
            return super()._aggregate(results, failures, global_state)
        accepted, errors = screen(results, global_state)
        failures, errors = _gather_sorted(failures), _gather_sorted(errors)
        self._handle_errors(failures, self.on_client_error, "failed client")
        self._handle_errors(errors, self.on_invalid, "rejected update")
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
                len(accepted),
                sum(t.numel() * t.element_size() for r in accepted for t in r.state.values()),
            ],
            dtype=torch.float64,
            device=next(iter(sums.values())).device,
        )
        for tensor in (*sums.values(), totals):
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        samples, loss_sum, client_time, replies, sent = totals.tolist()
        record = round_summary(samples, loss_sum, client_time, errors)
        record.update(failed=sorted(f.client for f in failures), bytes_sent=int(sent))

        def step() -> None:
            self.strategy.apply(self.model, average(sums, samples, global_state))

        record.update(self._server_step(int(replies), step))
        return record

    def save_checkpoint(self, path: str | os.PathLike[str] | None = None) -> Path:
        """Rank 0 saves the server state (all ranks hold the same); the others only return
        the path."""
        if dist.get_rank() == 0:
            return super().save_checkpoint(path)
        return self._checkpoint_path(path)


def _gather_sorted(items: list[Any]) -> list[Any]:
    """Every process's ``items`` (results or errors, each with a ``client`` id), sorted by
    client id so the order does not depend on the world size."""
    everyone: list[list[Any]] = [[] for _ in range(dist.get_world_size())]
    dist.all_gather_object(everyone, items)
    return sorted((item for part in everyone for item in part), key=lambda item: item.client)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def init_from_env(backend: str | None = None, timeout: float = 60.0) -> torch.device:
    """Join the process group ``torchrun`` describes (``RANK``, ``WORLD_SIZE``,
    ``MASTER_ADDR``...); return this process's device.

    ``backend`` ``None`` picks NCCL when CUDA is available (one GPU per process, by
    ``LOCAL_RANK``) and gloo otherwise. ``timeout`` bounds every collective (seconds).
    """
    timeout = check_number("timeout", timeout, 0.0, open_low=True)
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    device = torch.device("cpu")
    if backend == "nccl":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout))
    return device


def run_rounds(
    simulation: DistributedSimulation,
    rounds: int,
    progress_path: Path | None = None,
    log: Callable[[Record], None] | None = None,
) -> list[Record]:
    """Run rounds until the history holds ``rounds``; rank 0 saves ``progress_path`` after
    every round and the simulation's own checkpoint every ``checkpoint_every`` rounds.

    A collective that times out raises ``TimeoutError`` naming the round."""
    while len(simulation.history) < rounds:
        round_ = len(simulation.history) + 1
        try:
            record = simulation.run_round()
        except RUN_ERRORS:
            raise
        except RuntimeError as error:  # gloo/NCCL report a timeout as a RuntimeError subclass
            if "timeout" in str(error).lower() or "timed out" in str(error).lower():
                raise TimeoutError(
                    f"rank {dist.get_rank()}: no answer from the other workers in round {round_} "
                    "within the timeout (a worker hangs or died)"
                ) from error
            raise
        if progress_path is not None:
            simulation.save_checkpoint(progress_path)
        if simulation.checkpoint is not None and round_ % simulation.checkpoint_every == 0:
            simulation.save_checkpoint()
        if log is not None and dist.get_rank() == 0:
            log(record)
    return simulation.history


def _worker(
    rank: int,
    world_size: int,
    port: int,
    directory: str,
    simulation: dict[str, Any],
    rounds: int,
    options: dict[str, Any],
) -> None:
    torch.set_num_threads(max(1, torch.get_num_threads() // world_size))
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world_size,
        timeout=datetime.timedelta(seconds=options["timeout"]),
    )
    try:
        # the spawned arguments share memory with the parent and the other workers: every
        # worker needs its own replica of what it updates in place (copied together, so a
        # server optimizer keeps pointing at the model's parameters)
        model, strategy, compressor = copy.deepcopy(
            (simulation["model"], simulation["strategy"], simulation["compressor"])
        )
        simulation = {**simulation, "model": model, "strategy": strategy, "compressor": compressor}
        if rank != 0:  # only rank 0 evaluates, warns and reports
            simulation["test_set"] = None
            warnings.simplefilter("ignore", RuntimeWarning)
        sim = DistributedSimulation(**simulation)
        if options["resume"]:
            sim.load_checkpoint()
        error = None
        try:
            run_rounds(sim, rounds, Path(directory) / "progress.pt", options["log"])
        except RUN_ERRORS as raised:
            # every rank raises the same error; hand it to the parent as data, since mp.spawn
            # would wrap it in a ProcessRaisedException
            error = raised
        if rank == 0:
            kind = None if error is None else type(error).__name__
            fields = None if error is None else list(error.__reduce__()[1])
            torch.save({"kind": kind, "fields": fields}, Path(directory) / "error.pt")
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
    on_invalid: str = "raise",
    progress: bool = False,
    log: Callable[[Record], None] | None = None,
    *,
    timeout: float = 60.0,
    resume: bool = False,
    **options: Any,
) -> list[Record]:
    """Run :class:`Simulation`'s rounds over ``world_size`` local gloo worker processes.

    The arguments mean what they mean for :class:`Simulation` (``options``: its keyword-only
    ones, such as ``compressor``, ``attack``, ``faults``, ``checkpoint``), plus ``progress``
    (unused by the workers, kept for compatibility) and ``log`` (called by rank 0 after each
    round; it must be picklable). ``rounds`` is the total: with ``resume=True`` the run
    continues from ``checkpoint`` and runs the rounds that are missing. ``timeout`` (seconds)
    bounds every collective.

    At the end ``model``, ``strategy`` (its server state) and the compressor hold the final
    server state, as after :meth:`Simulation.run`; the history is returned.

    Raises:
        InvalidUpdateError, ClientError: as :class:`Simulation` does (``"raise"`` modes), in
            this process, after ``model`` has been given the global state of the last
            complete round.
        WorkerError: a worker failed, hung longer than ``timeout`` or died; the completed
            rounds are kept (``error.history``, ``model``, the checkpoint).
    """
    if not is_integer(world_size) or world_size < 1:
        raise ValueError(f"world_size must be an integer >= 1, got {world_size!r}")
    check_rounds(rounds)
    timeout = check_number("timeout", timeout, 0.0, open_low=True)
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
        **options,
    )
    simulation.setdefault("compressor", None)
    server = Simulation(**simulation)  # checks the arguments here rather than in every worker
    if resume:
        server.load_checkpoint()  # a bad checkpoint fails here, before any process starts
    with tempfile.TemporaryDirectory() as directory:
        progress_path = Path(directory) / "progress.pt"
        worker_options = {"timeout": timeout, "resume": resume, "log": log}
        try:
            mp.spawn(
                _worker,
                args=(world_size, free_port(), directory, simulation, rounds, worker_options),
                nprocs=world_size,
                join=True,
            )
        except ProcessException as failure:
            history = _keep_completed(server, progress_path)
            raise WorkerError(
                f"distributed run stopped after {len(history)} completed rounds: "
                f"{_describe(failure, timeout)}; the model holds the global model of round "
                f"{len(history)}"
                + (f", resume from {server.checkpoint}" if server.checkpoint else ""),
                history,
                server.checkpoint,
            ) from failure
        history = _keep_completed(server, progress_path)
        error = torch.load(Path(directory) / "error.pt", weights_only=True)
    if error["kind"] is not None:
        raise {cls.__name__: cls for cls in RUN_ERRORS}[error["kind"]](*error["fields"])
    return history


def _keep_completed(server: Simulation, progress_path: Path) -> list[Record]:
    """Load rank 0's last progress checkpoint into ``server`` (the caller's model, strategy
    and compressor); return its history (empty if no round completed)."""
    if progress_path.exists():
        try:
            server.load_checkpoint(progress_path)
        except CheckpointError:  # rank 0 died while writing: the previous one was replaced
            pass
    return server.history


def _describe(failure: ProcessException, timeout: float) -> str:
    """One line on why a worker stopped."""
    if isinstance(failure, ProcessRaisedException):
        lines = [line for line in failure.msg.strip().splitlines() if line.strip()]
        last = lines[-1] if lines else "an error"
        if "TimeoutError" in failure.msg:
            return f"a worker did not answer within timeout={timeout:g} s ({last})"
        return f"worker {failure.error_index} raised {last}"
    return f"worker {failure.error_index} died ({failure})"
