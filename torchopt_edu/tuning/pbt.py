"""Population-based training (Jaderberg et al. 2017): hyper-parameters tuned during training.

PBT tunes an optimizer's hyper-parameters *during* training rather than between runs. A
population of ``N`` members trains in parallel processes, each with its own hyper-parameters
``h_i``; every ``interval`` steps (one round):

1. **evaluate**: member ``i`` scores ``s_i``, the workload's validation metric;
2. **exploit**: each member in the bottom ``quantile`` of scores (and any that diverged) copies
   the weights and the exact optimizer state (``state_dict``: moments, step counts) of a member
   drawn from the top ``quantile``;
3. **explore**: the copier perturbs the copied hyper-parameters: each searched one is multiplied
   by 0.8 or 1.2 (clipped to its range in the search space), or, with probability
   ``resample_probability``, drawn afresh from the space. The new values are written into the
   optimizer's ``param_groups``, so training goes on from the copied state with them.

A hyper-parameter the optimizer learns itself (SGDHD's and AdamHD's ``lr``, which they move by
its hypergradient every step) is read back from ``param_groups`` at the end of each round
(:func:`learned_hyperparameters`): a member carries on from the rate it learned, and a copier
starts from the rate its winner learned, times 0.8 or 1.2 (explore perturbs the current rate,
not the one the winner started from; clipped to the space's range of starting rates), or from a
fresh starting rate drawn from the space.

So the population follows hyper-parameter *schedules* (a learning rate that falls as training
goes on, say), found at the cost of ``N`` training runs. Each member's schedule is recorded
(:attr:`PBTResult.schedules`). After each round the whole population (weights, optimizer states,
hyper-parameters, schedules) is saved atomically to ``checkpoint``: an interrupted run resumes
from its last round and ends exactly where an uninterrupted one would, since every random choice
(batches, partners, perturbations) is seeded by ``(seed, round, member)`` alone.

The members train on a benchmark workload (:class:`torchopt_edu.benchmark.Workload`): its model,
loss, batches and validation metric.
"""

from __future__ import annotations

import concurrent.futures
import copy
import functools
import math
import multiprocessing
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from torchopt_edu.optim._checks import check_int, check_number, check_seed
from torchopt_edu.tuning.config import OptimizerConfig
from torchopt_edu.tuning.space import (
    Categorical,
    IntUniform,
    LogUniform,
    SearchSpace,
    Spec,
    Uniform,
)

if TYPE_CHECKING:
    from torchopt_edu.benchmark import Workload

PERTURB_FACTORS = (0.8, 1.2)
"""Explore multiplies a hyper-parameter by one of these (Jaderberg et al.'s choice)."""

CHECKPOINT_FORMAT = 1
"""Version of the checkpoint's layout."""


def _flat_specs(space: Mapping[str, Spec]) -> dict[str, Spec]:
    """``{"lr": LogUniform, "betas[0]": Uniform, ...}``: the searched hyper-parameters by name."""
    flat: dict[str, Spec] = {}
    for name, spec in space.items():
        if isinstance(spec, tuple):
            for i, item in enumerate(spec):
                flat[f"{name}[{i}]"] = item
        else:
            flat[name] = spec
    return {name: spec for name, spec in flat.items() if _searched(spec)}


def _searched(spec: Spec) -> bool:
    return isinstance(spec, (LogUniform, Uniform, IntUniform, Categorical))


def _draw(spec: Spec, rng: np.random.Generator) -> Any:
    """A draw of ``spec`` (a constant is itself)."""
    if isinstance(spec, LogUniform):
        return float(math.exp(rng.uniform(math.log(spec.low), math.log(spec.high))))
    if isinstance(spec, Uniform):
        return float(rng.uniform(spec.low, spec.high))
    if isinstance(spec, IntUniform):
        if spec.log:
            return int(round(math.exp(rng.uniform(math.log(spec.low), math.log(spec.high)))))
        return int(rng.integers(spec.low, spec.high + 1))
    if isinstance(spec, Categorical):
        return spec.choices[int(rng.integers(len(spec.choices)))]
    if isinstance(spec, tuple):
        return tuple(_draw(item, rng) for item in spec)
    return spec


def _perturb(value: Any, spec: Spec, rng: np.random.Generator, resample: float) -> Any:
    """Explore one hyper-parameter: resample with probability ``resample``, else x0.8 or x1.2."""
    if isinstance(spec, tuple):
        return tuple(_perturb(v, s, rng, resample) for v, s in zip(value, spec, strict=True))
    if not _searched(spec):
        return value
    if rng.random() < resample:
        return _draw(spec, rng)
    if isinstance(spec, Categorical):  # no order to move along: keep it
        return value
    factor = PERTURB_FACTORS[int(rng.integers(len(PERTURB_FACTORS)))]
    moved = min(max(value * factor, spec.low), spec.high)
    return int(round(moved)) if isinstance(spec, IntUniform) else float(moved)


def learned_hyperparameters(
    optimizer_state: Mapping[str, Any], hyperparameters: Mapping[str, Any]
) -> dict[str, Any]:
    """``hyperparameters`` as an optimizer ended its training: each read back from its param group.

    They are the values :func:`train_member` wrote in, except those the optimizer learns as it
    trains (SGDHD's and AdamHD's ``lr``): training on with these continues from what it learned.
    """
    group = optimizer_state["param_groups"][0]  # train_member builds one group
    return {name: group.get(name, value) for name, value in hyperparameters.items()}


def set_hyperparameters(
    optimizer: torch.optim.Optimizer, hyperparameters: Mapping[str, Any]
) -> None:
    """Write ``hyperparameters`` into every param group of ``optimizer``.

    Call it after ``optimizer.load_state_dict``, which restores the saved groups' values.
    """
    for group in optimizer.param_groups:
        group.update(hyperparameters)


@dataclass
class Member:
    """One member of the population.

    Attributes:
        index: its place in the population.
        hyperparameters: the optimizer's keyword arguments it trains with now.
        model_state: its weights (``state_dict``), ``None`` before the first round.
        optimizer_state: its optimizer's ``state_dict``, ``None`` before the first round.
        score: its last validation score (``nan`` before the first round or after divergence).
        copied_from: the member it copied before the current round, ``None`` if it did not.
        schedule: one entry per round: ``{"round", "steps", "hyperparameters", "score",
            "copied_from"}``, the hyper-parameters it started that round with (a learned ``lr``
            moves during the round), the score at its end, and whom it had copied before the
            round (``None``: nobody).
    """

    index: int
    hyperparameters: dict[str, Any]
    model_state: dict[str, torch.Tensor] | None = None
    optimizer_state: dict[str, Any] | None = None
    score: float = math.nan
    copied_from: int | None = None
    schedule: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Everything, for the checkpoint (tensors and plain data: ``weights_only`` loads it)."""
        return {
            "index": self.index,
            "hyperparameters": dict(self.hyperparameters),
            "model_state": self.model_state,
            "optimizer_state": self.optimizer_state,
            "score": self.score,
            "copied_from": self.copied_from,
            "schedule": self.schedule,
        }


@dataclass(frozen=True)
class PBTResult:
    """What :func:`population_based_training` found.

    Attributes:
        members: the population after the last round.
        rounds: rounds the population has trained (with a checkpoint, all the rounds it holds,
            even more than the call asked for); each member trained ``rounds * interval`` steps.
        interval: steps per round.
        metric: what the scores are (the workload's validation metric).
        higher_is_better: the metric's direction.
        optimizer_name: the optimizer every member uses.
    """

    members: list[Member]
    rounds: int
    interval: int
    metric: str
    higher_is_better: bool
    optimizer_name: str

    @property
    def best(self) -> Member:
        """The member with the best final score."""
        return max(self.members, key=lambda m: _fitness(m.score, self.higher_is_better))

    @property
    def best_score(self) -> float:
        """The best member's final score."""
        return self.best.score

    @property
    def total_steps(self) -> int:
        """Training steps of the whole population: ``population * rounds * interval``."""
        return len(self.members) * self.rounds * self.interval

    @property
    def schedules(self) -> dict[int, list[dict[str, Any]]]:
        """Each member's hyper-parameter schedule (JSON-compatible), by member index."""
        return {m.index: m.schedule for m in self.members}

    def best_config(self) -> OptimizerConfig:
        """The best member's final hyper-parameters (SGDHD's, AdamHD's: the ``lr`` it learned)."""
        return OptimizerConfig(self.optimizer_name, dict(self.best.hyperparameters))


def _fitness(score: float, higher_is_better: bool) -> float:
    if not math.isfinite(score):
        return -math.inf
    return score if higher_is_better else -score


def _rng(*entropy: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(entropy))


def _torch_seed(*entropy: int) -> int:
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])


@functools.cache
def _workload(name: str) -> Workload:
    """One instance per process of each built-in workload: its data is loaded once."""
    from torchopt_edu.benchmark import get_workload

    return get_workload(name)


def train_member(
    workload: str | Workload,
    optimizer_name: str,
    hyperparameters: Mapping[str, Any],
    model_state: Mapping[str, torch.Tensor] | None,
    optimizer_state: Mapping[str, Any] | None,
    steps: int,
    *,
    init_seed: int,
    batch_seed: int,
) -> tuple[dict[str, torch.Tensor], dict[str, Any], float]:
    """Train one member ``steps`` steps from its state; return the new state and its score.

    A member without state starts from ``init_model(workload.make_model, init_seed)`` and a fresh
    optimizer. Otherwise the optimizer is built, loads ``optimizer_state`` (moments, step counts)
    and then takes ``hyperparameters`` into its ``param_groups``: to continue from a learned
    ``lr`` (SGDHD, AdamHD), pass :func:`learned_hyperparameters` of the state. Batches come from
    a generator seeded with ``batch_seed``. The score is the workload's validation metric (``nan``
    if the training loss became NaN or infinite).
    """
    from torchopt_edu.benchmark import get_workload
    from torchopt_edu.tuning.tasks import init_model

    problem = _workload(workload) if isinstance(workload, str) else get_workload(workload)
    train, valid = problem.data
    model = init_model(problem.make_model, init_seed)
    if model_state is not None:
        model.load_state_dict(model_state)
    config = OptimizerConfig(optimizer_name, dict(hyperparameters))
    optimizer = config.build(model.parameters())
    if optimizer_state is not None:
        optimizer.load_state_dict(copy.deepcopy(dict(optimizer_state)))
        set_hyperparameters(optimizer, config.hyperparameters)
    generator = torch.Generator().manual_seed(batch_seed)
    modes = hasattr(optimizer, "train") and hasattr(optimizer, "eval")  # Schedule-Free
    finite = True
    model.train()
    for _ in range(steps):
        batch = problem.sample_batch(train, generator)
        optimizer.zero_grad()
        loss = problem.loss(model, batch)
        loss.backward()
        optimizer.step()
        if not math.isfinite(loss.item()):
            finite = False
            break
    score = math.nan
    if finite:
        with torch.no_grad():
            if modes:
                optimizer.eval()
            model.eval()
            score = float(problem.validate(model, valid))
            if modes:
                optimizer.train()
    return model.state_dict(), optimizer.state_dict(), score


def _initial_population(space: Mapping[str, Spec], population: int, seed: int) -> list[Member]:
    return [
        Member(i, {name: _draw(spec, _rng(seed, 0, i, 1)) for name, spec in space.items()})
        for i in range(population)
    ]


def exploit_and_explore(
    members: list[Member],
    space: Mapping[str, Spec],
    rng: np.random.Generator,
    *,
    quantile: float,
    resample_probability: float,
    higher_is_better: bool,
) -> dict[int, int]:
    """One PBT selection step on ``members`` (in place); returns ``{loser: winner}``.

    Ranks by score; each member of the bottom ``ceil(quantile * N)`` (and every member whose score
    is not finite) copies the weights, optimizer state and hyper-parameters of a member drawn from
    the top ``ceil(quantile * N)``, then perturbs the hyper-parameters (explore). The winner's
    hyper-parameters are its current ones, a learned ``lr`` included, so explore moves the rate
    the winner learned (clipped to ``space``'s range, where rates start).
    """
    ranked = sorted(members, key=lambda m: _fitness(m.score, higher_is_better), reverse=True)
    cut = max(1, math.ceil(quantile * len(members)))
    winners = [m for m in ranked[:cut] if math.isfinite(m.score)]
    if not winners:  # every member diverged: nothing to copy
        return {}
    losers = {m.index for m in ranked[-cut:]} | {
        m.index for m in members if not math.isfinite(m.score)
    }
    losers -= {m.index for m in winners}
    copies: dict[int, int] = {}
    for member in members:
        member.copied_from = None
    for loser in sorted(losers):
        member = members[loser]
        winner = winners[int(rng.integers(len(winners)))]
        member.model_state = {k: v.clone() for k, v in winner.model_state.items()}
        member.optimizer_state = copy.deepcopy(winner.optimizer_state)
        member.hyperparameters = {
            name: _perturb(value, space[name], rng, resample_probability)
            for name, value in winner.hyperparameters.items()
        }
        member.score = winner.score
        member.copied_from = winner.index
        copies[loser] = winner.index
    return copies


def _save(path: Path, state: dict[str, Any]) -> None:
    """``torch.save`` to a temporary file beside ``path``, then rename: never half a checkpoint."""
    partial = path.with_name(path.name + ".partial")
    torch.save(state, partial)
    os.replace(partial, path)


def _load(path: Path, settings: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint at ``path``, after checking that it was saved by a run with ``settings``.

    Raises:
        ValueError: one line naming ``path``: a damaged or foreign file, or another run's.
    """
    try:
        state = torch.load(path, weights_only=True)
    except Exception as error:  # torch's own message is many lines, and suggests an unsafe load
        raise ValueError(
            f"cannot read the PBT checkpoint {path} ({type(error).__name__}): the file is damaged "
            "or is not a PBT checkpoint; move it away to start a new run there"
        ) from error
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a PBT checkpoint of format {CHECKPOINT_FORMAT}")
    stored = state["settings"]
    differ = sorted(
        key for key in settings.keys() | stored.keys() if settings.get(key) != stored.get(key)
    )
    if differ:
        changes = ", ".join(f"{k}: {stored.get(k)!r} -> {settings.get(k)!r}" for k in differ)
        raise ValueError(
            f"the PBT checkpoint {path} belongs to another run ({changes}); resume it with its "
            "own settings or use another checkpoint path"
        )
    return state


@dataclass(frozen=True)
class _Run:
    """What every member's training call shares."""

    workload: str | Workload
    optimizer_name: str
    interval: int
    seed: int

    def job(self, member: Member, round_: int) -> tuple[tuple[Any, ...], dict[str, int]]:
        """The arguments of :func:`train_member` for ``member`` in round ``round_``."""
        return (
            self.workload,
            self.optimizer_name,
            member.hyperparameters,
            member.model_state,
            member.optimizer_state,
            self.interval,
        ), {
            "init_seed": self.seed,
            "batch_seed": _torch_seed(self.seed, round_, member.index, 2),
        }


def _init_worker() -> None:
    torch.set_num_threads(1)  # the members share the cores: one thread each


@dataclass
class _Pool:
    """Trains members in ``workers`` spawned processes (0: in this process)."""

    workers: int
    executor: concurrent.futures.ProcessPoolExecutor | None = None

    def __enter__(self) -> _Pool:
        if self.workers > 0:
            self.executor = concurrent.futures.ProcessPoolExecutor(
                self.workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_init_worker,
            )
        return self

    def __exit__(self, *exc: object) -> None:
        if self.executor is not None:
            self.executor.shutdown(cancel_futures=True)

    def map(self, jobs: list[tuple[tuple[Any, ...], dict[str, Any]]]) -> Iterator[Any]:
        if self.executor is None:
            return (train_member(*args, **kwargs) for args, kwargs in jobs)
        futures = [self.executor.submit(train_member, *args, **kwargs) for args, kwargs in jobs]
        return (future.result() for future in futures)


def population_based_training(  # noqa: C901 (argument checks, then one loop)
    workload: str | Workload,
    optimizer_name: str = "adam",
    space: Mapping[str, Spec] | None = None,
    *,
    population: int = 8,
    interval: int = 50,
    rounds: int = 12,
    quantile: float = 0.25,
    resample_probability: float = 0.25,
    workers: int = 2,
    seed: int = 0,
    checkpoint: str | os.PathLike[str] | None = None,
    on_round: Callable[[int, list[Member]], None] | None = None,
) -> PBTResult:
    """Train a population on ``workload``, tuning ``optimizer_name``'s hyper-parameters as it goes.

    Args:
        workload: a benchmark workload or its name (``"digits_mlp"``).
        optimizer_name: the optimizer every member uses (ours by key, or ``"torch.optim.X"``).
        space: the searched hyper-parameters (``{"lr": LogUniform(...), "betas": (...)}``);
            ``None``: the optimizer's default space. The initial values are drawn from it, and
            explore keeps them inside it.
        population: members (>= 2).
        interval: training steps between two exploit/explore steps (one round).
        rounds: rounds to train; a resumed run trains until the population has done ``rounds``.
            A checkpoint that already holds more rounds trains no more, and the result describes
            all the rounds it holds (:attr:`PBTResult.rounds`).
        quantile: the bottom ``quantile`` copies the top ``quantile`` (in ``(0, 0.5]``).
        resample_probability: chance that explore draws a hyper-parameter afresh rather than
            multiplying it by 0.8 or 1.2.
        workers: processes training members in parallel (spawned once, reused every round); 0
            trains them one after the other in this process (same numbers).
        seed: seeds the initial weights (shared by all members), the initial hyper-parameters,
            batches, partners and perturbations.
        checkpoint: file saved atomically after every round; if it exists, the run resumes from
            it (its settings must match).
        on_round: called as ``on_round(round, members)`` after every round (progress display).

    Returns:
        A :class:`PBTResult`.

    Raises:
        ValueError: bad arguments, or a checkpoint that is unreadable or belongs to another run
            (the file is left as it was).
    """
    from torchopt_edu.benchmark import get_workload

    problem = get_workload(workload)
    check_int("population", population, 2)
    check_int("interval", interval, 1)
    check_int("rounds", rounds, 1)
    check_int("workers", workers, 0)
    quantile = check_number("quantile", quantile, 0.0, 0.5, open_low=True)
    resample_probability = check_number("resample_probability", resample_probability, 0.0, 1.0)
    seed = check_seed(seed)
    searched = SearchSpace({optimizer_name: space})  # checks names and specs
    specs = searched.optimizers[optimizer_name]
    flat = _flat_specs(specs)
    if not flat:
        raise ValueError(f"the space of {optimizer_name!r} searches no hyper-parameter: {specs}")
    settings = {
        "workload": problem.name,
        "optimizer": optimizer_name,
        "space": searched.fingerprint(),
        "population": population,
        "interval": interval,
        "quantile": quantile,
        "resample_probability": resample_probability,
        "seed": seed,
    }
    path = None if checkpoint is None else Path(checkpoint)
    done = 0
    members = _initial_population(specs, population, seed)
    if path is not None and path.exists():
        state = _load(path, settings)
        done = state["round"]
        members = [Member(**m) for m in state["members"]]
    run = _Run(
        workload if not isinstance(workload, str) else problem.name, optimizer_name, interval, seed
    )
    with _Pool(min(workers, population)) as pool:
        for round_ in range(done, rounds):
            if round_ > 0:  # select on the scores of the round before
                exploit_and_explore(
                    members,
                    specs,
                    _rng(seed, round_, 3),
                    quantile=quantile,
                    resample_probability=resample_probability,
                    higher_is_better=problem.higher_is_better,
                )
            results = pool.map([run.job(member, round_) for member in members])
            for member, (model_state, optimizer_state, score) in zip(members, results, strict=True):
                member.model_state, member.optimizer_state, member.score = (
                    model_state,
                    optimizer_state,
                    score,
                )
                member.schedule.append(
                    {
                        "round": round_,
                        "steps": (round_ + 1) * interval,
                        "hyperparameters": dict(member.hyperparameters),
                        "score": score,
                        "copied_from": member.copied_from,
                    }
                )
                member.hyperparameters = learned_hyperparameters(
                    optimizer_state, member.hyperparameters
                )
            if path is not None:
                _save(
                    path,
                    {
                        "format": CHECKPOINT_FORMAT,
                        "settings": settings,
                        "round": round_ + 1,
                        "members": [m.to_dict() for m in members],
                    },
                )
            if on_round is not None:
                on_round(round_, members)
    trained = max(done, rounds)  # a checkpoint of more rounds than asked trains no more
    return PBTResult(
        members, trained, interval, problem.metric, problem.higher_is_better, optimizer_name
    )


def fixed_hyperparameters_task(
    workload: str | Workload, optimizer_name: str, steps: int, seed: int = 0
) -> Callable[[OptimizerConfig, Callable[[float, int], None]], float]:
    """A training function for :func:`~torchopt_edu.tuning.tune` that spends what one PBT member
    spends: ``steps`` steps of :func:`train_member` from the same initial weights, with the trial's
    hyper-parameters fixed throughout; returns the workload's validation metric.

    With ``n_trials = population`` and ``steps = rounds * interval``, a search costs the same
    training steps as :func:`population_based_training`: the equal-compute comparison.
    """
    check_int("steps", steps, 1)
    seed = check_seed(seed)

    def train(config: OptimizerConfig, report: Callable[[float, int], None]) -> float:
        if config.optimizer_name != optimizer_name:
            raise ValueError(f"this task trains {optimizer_name!r}, got {config.optimizer_name!r}")
        _, _, score = train_member(
            workload,
            optimizer_name,
            config.hyperparameters,
            None,
            None,
            steps,
            init_seed=seed,
            batch_seed=_torch_seed(seed, 4),  # every trial sees the same batches
        )
        return score

    return train


def pbt_against_search(
    workload: str | Workload,
    optimizer_name: str = "adam",
    *,
    population: int = 8,
    interval: int = 50,
    rounds: int = 12,
    samplers: tuple[str, ...] = ("tpe", "random"),
    workers: int = 2,
    seed: int = 0,
) -> dict[str, float]:
    """Best validation score of PBT and of each sampler's search at equal compute.

    PBT trains ``population`` members for ``rounds * interval`` steps each; each search runs
    ``population`` trials of ``rounds * interval`` steps (:func:`fixed_hyperparameters_task`) over
    the same default space. Returns ``{"pbt": score, "tpe": score, ...}``.
    """
    from optuna.storages import InMemoryStorage

    from torchopt_edu.benchmark import get_workload
    from torchopt_edu.tuning.study import tune

    problem = get_workload(workload)
    scores = {
        "pbt": population_based_training(
            workload,
            optimizer_name,
            population=population,
            interval=interval,
            rounds=rounds,
            workers=workers,
            seed=seed,
        ).best_score
    }
    train = fixed_hyperparameters_task(workload, optimizer_name, rounds * interval, seed)
    for sampler in samplers:
        result = tune(
            train,
            SearchSpace([optimizer_name]),
            n_trials=population,
            storage=InMemoryStorage(),
            direction="maximize" if problem.higher_is_better else "minimize",
            pruner="none",
            sampler=sampler,
            seed=seed,
        )
        scores[sampler] = result.best_value
    return scores
