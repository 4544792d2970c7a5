"""The time-to-target protocol: trials, tuning studies, and every trial's record.

One **trial** trains a workload's model from a seeded initialisation with one optimizer
configuration, validating every ``eval_every`` steps, and stops at the first validation that
reaches the target (a hit) or after ``max_steps`` (a miss; a non-finite loss is a miss too). It
records the steps and the training wall time to the target, and the validation curve.

Two tracks, as in AlgoPerf (Dahl et al. 2023, "Benchmarking Neural Network Training Algorithms"):

- **external tuning** (``track="external"``): for each of ``studies`` studies, ``trials``
  configurations are drawn at random from the optimizer's default search space
  (:data:`~torchopt_edu.tuning.DEFAULT_OPTIMIZER_SPACES`); a study's score on a workload is its
  best trial's time to the target;
- **self-tuning** (``track="self"``): no tuning at all, one trial per study with the optimizer's
  default hyper-parameters, so learning-rate-free methods (Prodigy, Schedule-Free, the
  hypergradient methods) meet the defaults of the others.

Every trial is a pure function of ``(workload, configuration, trial seed)``: the configurations of
study ``s`` come from a random sampler seeded by ``(seed, s)`` and trial ``t``'s weights and batches
from ``(seed, s, t)``. So every optimizer sees the same initial weights and batches, ours and
torch's version of one algorithm draw the same configurations (their spaces coincide), and a run
that was stopped can resume by skipping the trials already recorded.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from torchopt_edu.benchmark.workload import Workload
from torchopt_edu.benchmark.workloads import get_workload
from torchopt_edu.optim import display_name, resolve_optimizer
from torchopt_edu.optim._checks import check_int, check_seed
from torchopt_edu.tuning.config import OptimizerConfig
from torchopt_edu.tuning.space import SearchSpace
from torchopt_edu.tuning.tasks import init_model

Track = Literal["external", "self"]
TRACKS: tuple[Track, ...] = ("external", "self")

SELF_TUNING_OPTIMIZERS = (
    "adam",
    "adamw",
    "prodigy",
    "sgdschedulefree",
    "adamwschedulefree",
    "sgdhd",
    "adamhd",
)
"""The self-tuning track's default field: the learning-rate-free methods and Adam(W)'s defaults."""

EXTERNAL_OPTIMIZERS = (
    "sgd",
    "momentum",
    "adagrad",
    "rmsprop",
    "adam",
    "adamw",
    "lion",
    "torch.optim.SGD",
    "torch.optim.Adam",
    "torch.optim.AdamW",
)
"""The external-tuning track's default field: ours and torch.optim's most used classes."""


@dataclass(frozen=True)
class TrialKey:
    """Which trial: ``(track, workload, optimizer, study, trial)``; how records are matched."""

    track: str
    workload: str
    optimizer: str
    study: int
    trial: int


@dataclass(frozen=True)
class TrialResult:
    """What one trial measured.

    Attributes:
        key: the trial's :class:`TrialKey`.
        config: the optimizer configuration (``OptimizerConfig.to_dict()``).
        seed: the seed of the initial weights and the batches.
        steps: training steps to the target, ``None`` for a miss.
        seconds: training wall time to the target (steps and batch sampling, no validation), or
            ``None`` for a miss.
        curve: ``[step, training seconds so far, validation value]`` at every validation.
        steps_run: steps trained (the budget, or fewer if the target was hit or the loss blew up).
        eval_seconds: wall time spent validating (not counted in ``seconds``, as in AlgoPerf).
        cpu_seconds: the training's CPU time to the target (``time.process_time``), ``None`` for
            a miss: the cost of the same work without the waits of a shared machine.
        diverged: the training loss became NaN or infinite.
    """

    key: TrialKey
    config: dict[str, Any]
    seed: int
    steps: int | None
    seconds: float | None
    curve: list[list[float]] = field(default_factory=list)
    steps_run: int = 0
    eval_seconds: float = 0.0
    cpu_seconds: float | None = None
    diverged: bool = False

    @property
    def hit(self) -> bool:
        """Whether the trial reached the target."""
        return self.steps is not None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-compatible dict; :meth:`from_dict` inverts it."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrialResult:
        """Rebuild a record from :meth:`to_dict`'s output (also after a JSON round trip)."""
        return cls(**{**data, "key": TrialKey(**data["key"])})


@dataclass(frozen=True)
class PlannedTrial:
    """A trial to run: its key, the configuration and the seed."""

    key: TrialKey
    config: OptimizerConfig
    seed: int

    def matches(self, record: TrialResult) -> bool:
        """Whether ``record`` is this trial's: same key, configuration and seed."""
        return (
            record.key == self.key
            and record.seed == self.seed
            and OptimizerConfig.from_dict(record.config) == self.config
        )


def _derived_seed(*entropy: int) -> int:
    """A seed in ``[0, 2**32)`` mixed from integers (NumPy's ``SeedSequence``)."""
    return int(np.random.SeedSequence(list(entropy)).generate_state(1)[0])


@contextlib.contextmanager
def _quiet_optuna() -> Iterator[None]:
    import optuna

    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(verbosity)


def draw_configs(
    optimizer: str, trials: int, *, study: int = 0, seed: int = 0
) -> list[OptimizerConfig]:
    """The ``trials`` configurations study ``study`` tries: random draws from the default space.

    Optuna's ``RandomSampler`` seeded by ``(seed, study)`` draws them in order, so the first ``k``
    draws do not depend on ``trials`` (a larger budget extends a study), and optimizers with the
    same space (``adam`` and ``torch.optim.Adam``) get the same points.
    """
    import optuna

    name = display_name(resolve_optimizer(optimizer))
    space = SearchSpace({name: None})
    sampler = optuna.samplers.RandomSampler(seed=_derived_seed(seed, study))
    with _quiet_optuna():
        draws = optuna.create_study(sampler=sampler)
        return [space.suggest(draws.ask()) for _ in range(trials)]


def plan_trials(
    workloads: Sequence[str | Workload],
    optimizers: Sequence[str],
    *,
    track: Track = "external",
    trials: int = 5,
    studies: int = 3,
    seed: int = 0,
) -> list[PlannedTrial]:
    """Every trial of a benchmark run, in the order :func:`run_benchmark` runs them.

    Raises:
        ValueError: an unknown workload, optimizer or track, or a count below 1 (checked before
            anything runs).
    """
    if track not in TRACKS:
        raise ValueError(f"unknown track {track!r}: choose from {list(TRACKS)}")
    trials = 1 if track == "self" else check_int("trials", trials, 1)
    studies = check_int("studies", studies, 1)
    seed = check_seed(seed)
    names = [get_workload(workload).name for workload in workloads]
    if not names or not optimizers:
        raise ValueError(f"need at least one workload and one optimizer, got {names}, {optimizers}")
    optimizer_names = [display_name(resolve_optimizer(name)) for name in optimizers]
    plan = []
    for study in range(studies):
        for optimizer in optimizer_names:
            if track == "self":
                configs = [OptimizerConfig(optimizer)]
            else:
                configs = draw_configs(optimizer, trials, study=study, seed=seed)
            for workload in names:
                for trial, config in enumerate(configs):
                    key = TrialKey(track, workload, optimizer, study, trial)
                    plan.append(PlannedTrial(key, config, _derived_seed(seed, study, trial)))

    def order(planned: PlannedTrial) -> tuple[int, int, int, int]:
        key = planned.key
        return names.index(key.workload), key.study, optimizer_names.index(key.optimizer), key.trial

    return sorted(plan, key=order)


def run_trial(
    workload: Workload, config: OptimizerConfig, seed: int
) -> tuple[int | None, float | None, dict[str, Any]]:
    """Train ``workload``'s model with ``config`` until it reaches the target or the budget ends.

    Step ``k = 1 .. max_steps``: draw a batch, ``loss.backward()``, ``optimizer.step()``; at every
    ``k`` divisible by ``eval_every`` (and at the last step), validate in eval mode (optimizers
    with ``train()``/``eval()`` modes, Schedule-Free, are switched to eval for it) and stop if the
    target is met. Only training counts towards the time, measured as wall time and as the
    process's CPU time (which, at one torch thread, a busy machine does not inflate).

    Returns:
        ``(steps, seconds, details)``: steps and training seconds to the target (``None`` for a
        miss) and a dict with the ``curve``, ``steps_run``, ``eval_seconds``, ``cpu_seconds`` (the
        training's CPU time to the target, ``None`` for a miss) and ``diverged``.
    """
    train, valid = workload.data
    model = init_model(workload.make_model, seed)
    optimizer = config.build(model.parameters())
    generator = torch.Generator().manual_seed(seed)
    modes = hasattr(optimizer, "train") and hasattr(optimizer, "eval")
    curve: list[list[float]] = []
    train_seconds = train_cpu_seconds = eval_seconds = 0.0
    step, diverged = 0, False
    while step < workload.max_steps:
        start, start_cpu = time.perf_counter(), time.process_time()
        model.train()
        batch = workload.sample_batch(train, generator)
        optimizer.zero_grad()
        loss = workload.loss(model, batch)
        loss.backward()
        optimizer.step()
        train_seconds += time.perf_counter() - start
        train_cpu_seconds += time.process_time() - start_cpu
        step += 1
        if not math.isfinite(loss.item()):
            diverged = True
            break
        if step % workload.eval_every and step < workload.max_steps:
            continue
        start = time.perf_counter()
        value = _validate(workload, model, optimizer if modes else None, valid)
        eval_seconds += time.perf_counter() - start
        curve.append([step, train_seconds, value])
        if workload.reached(value):
            details = {"curve": curve, "steps_run": step, "eval_seconds": eval_seconds}
            return step, train_seconds, {**details, "cpu_seconds": train_cpu_seconds}
    details = {"curve": curve, "steps_run": step, "eval_seconds": eval_seconds}
    return None, None, {**details, "cpu_seconds": None, "diverged": diverged}


@torch.no_grad()
def _validate(workload: Workload, model: torch.nn.Module, optimizer: Any, valid: Any) -> float:
    if optimizer is not None:
        optimizer.eval()
    model.eval()
    value = float(workload.validate(model, valid))
    if optimizer is not None:
        optimizer.train()
    return value if math.isfinite(value) else math.nan


def run_benchmark(
    workloads: Sequence[str | Workload],
    optimizers: Sequence[str],
    *,
    track: Track = "external",
    trials: int = 5,
    studies: int = 3,
    seed: int = 0,
    done: Iterable[TrialResult] = (),
    on_trial: Callable[[TrialResult], None] | None = None,
) -> list[TrialResult]:
    """Run every trial of :func:`plan_trials` that ``done`` does not already hold.

    Args:
        workloads: names in :data:`~torchopt_edu.benchmark.WORKLOADS` or :class:`Workload`\\ s.
        optimizers: optimizer names (ours, or ``"torch.optim.<Name>"``).
        track: ``"external"`` (tuned: ``trials`` random configurations per study) or ``"self"``
            (defaults only, one trial per study).
        trials: configurations per study (external track).
        studies: independent repetitions (different configurations, weights and batches).
        seed: the run's seed.
        done: records of finished trials (from an earlier, interrupted run): those trials are not
            run again.
        on_trial: called with each new record as soon as its trial ends (to save it, show
            progress); an exception it raises stops the run.

    Returns:
        The records of every planned trial, in plan order (reused and new).

    Raises:
        ValueError: a bad argument (see :func:`plan_trials`), or a record in ``done`` whose
            configuration or seed differs from what this run plans for its key (it came from a
            run with another seed or search space).
    """
    plan = plan_trials(
        workloads, optimizers, track=track, trials=trials, studies=studies, seed=seed
    )
    instances = {}
    for workload in workloads:
        instance = get_workload(workload)
        instances[instance.name] = instance
    stored = {record.key: record for record in done}
    results = []
    for planned in plan:
        record = stored.get(planned.key)
        if record is not None:
            if not planned.matches(record):
                raise ValueError(
                    f"recorded trial {planned.key} used {record.config} with seed {record.seed}, "
                    f"but this run plans {planned.config.to_dict()} with seed {planned.seed}: "
                    "the record comes from a run with another seed or search space"
                )
            results.append(record)
            continue
        steps, seconds, details = run_trial(
            instances[planned.key.workload], planned.config, planned.seed
        )
        record = TrialResult(
            planned.key, planned.config.to_dict(), planned.seed, steps, seconds, **details
        )
        if on_trial is not None:
            on_trial(record)
        results.append(record)
    return results
