"""``tune``: a durable Optuna study over optimizers, schedules and their hyper-parameters.

The loop, per trial ``k``:

1. the sampler (TPE, Bergstra et al. 2011, "Algorithms for Hyper-Parameter Optimization") draws a
   configuration ``x_k`` from the :class:`~torchopt_edu.tuning.SearchSpace`, modelling
   ``l(x) = p(x | y < y*)`` and ``g(x) = p(x | y >= y*)`` from past trials and maximising
   ``l(x) / g(x)``;
2. the user's training function trains with ``x_k`` and reports ``(value, step)`` pairs;
3. after each report the pruner compares the trial with the others at the same step (median rule,
   or successive halving / Hyperband, Li et al. 2018) and may stop it early;
4. the final value, or the failure, is stored in the study's database.

The study lives in a database (a SQLite file by default), so a run that stops for any reason
resumes where it stopped, and several processes on one or more machines can share it.
"""

from __future__ import annotations

import functools
import math
import os
import socket
import sqlite3
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeAlias

import optuna
import sqlalchemy
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, TrialState

from torchopt_edu.optim._checks import MAX_SEED, check_seed
from torchopt_edu.tuning.config import OptimizerConfig
from torchopt_edu.tuning.space import SearchSpace

Report: TypeAlias = Callable[[float, int], None]
"""``report(value, step)``: record an intermediate value; raises ``optuna.TrialPruned`` to stop."""

TrainFn: TypeAlias = Callable[[OptimizerConfig, Report], float]
"""``train(config, report) -> value``: train with ``config``, report, return the objective."""

PRUNERS = ("median", "successive_halving", "hyperband", "none")

SEARCH_SPACE_ATTR = "search_space"
"""Key of the study's ``user_attrs`` holding :meth:`SearchSpace.fingerprint` of its space."""

HEARTBEAT_INTERVAL_S = 60
"""Seconds between a running trial's heartbeats in a database storage; a trial silent for twice
as long (its process was killed) is marked failed by the next trial that starts."""


def open_storage(
    storage: str | os.PathLike[str] | optuna.storages.BaseStorage,
) -> optuna.storages.BaseStorage:
    """An Optuna storage from a file path, a database URL, or a storage object.

    - a path (``"runs/tune/study.db"``): a SQLite file, created with its folder if missing;
    - a URL (``"sqlite:///study.db"``, ``"postgresql://user@host/db"``, ``"mysql://..."``): an
      ``RDBStorage`` that any number of worker processes, on any machines that reach the
      database, can share;
    - an ``optuna.storages.BaseStorage`` (e.g. ``InMemoryStorage()`` for a throw-away study):
      used as is.

    Database storages record a heartbeat for running trials (:data:`HEARTBEAT_INTERVAL_S`), so a
    trial whose worker was killed is marked failed rather than left running forever. SQLite files
    are opened in write-ahead-log mode with ``synchronous=NORMAL`` (readers do not block the
    writer; a commit survives a crash of the process, and only an OS crash may lose the last
    ones), and wait up to 60 s for a lock, so workers on one machine queue instead of failing.
    WAL needs a local disk: for workers on several machines, use a database server URL.
    """
    if isinstance(storage, optuna.storages.BaseStorage):
        return storage
    if not isinstance(storage, (str, os.PathLike)):
        raise TypeError(
            f"storage must be a path, a database URL or an Optuna storage, got {storage!r}"
        )
    url = os.fspath(storage)
    if "://" not in url:
        path = Path(url).expanduser().resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        url = f"sqlite:///{path}"
    database = sqlalchemy.engine.make_url(url).database
    engine_kwargs = None
    if url.startswith("sqlite") and database not in (None, "", ":memory:"):
        engine_kwargs = {"creator": functools.partial(_connect_sqlite, database)}
    with warnings.catch_warnings():  # the heartbeat is marked experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RDBStorage(
            url,
            engine_kwargs=engine_kwargs,
            heartbeat_interval=HEARTBEAT_INTERVAL_S,
            grace_period=2 * HEARTBEAT_INTERVAL_S,
        )


def _connect_sqlite(database: str) -> sqlite3.Connection:
    # WAL + synchronous=NORMAL: one fsync per checkpoint instead of two per commit, about 4x
    # faster for Optuna's many small transactions. The heartbeat thread shares the pool, hence
    # check_same_thread=False (what SQLAlchemy itself sets for a file database).
    connection = sqlite3.connect(database, timeout=60, check_same_thread=False)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=NORMAL")
    return connection


def make_pruner(pruner: str | optuna.pruners.BasePruner) -> optuna.pruners.BasePruner:
    """An Optuna pruner by name, or ``pruner`` itself if it already is one.

    - ``"median"``: stop a trial whose value at step ``t`` is worse than the median of earlier
      trials at ``t`` (after 5 trials, so there is a median to compare with);
    - ``"successive_halving"``: asynchronous successive halving (Li et al. 2020): at resource
      ``r * eta^k`` only the best ``1/eta`` of trials go on;
    - ``"hyperband"``: several successive-halving brackets with different ``r`` (Li et al. 2018);
    - ``"none"``: never stop a trial (intermediate values are still recorded).
    """
    if isinstance(pruner, optuna.pruners.BasePruner):
        return pruner
    factories = {
        "median": lambda: optuna.pruners.MedianPruner(n_startup_trials=5),
        "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
        "hyperband": optuna.pruners.HyperbandPruner,
        "none": optuna.pruners.NopPruner,
    }
    if pruner not in factories:
        raise ValueError(
            f"unknown pruner {pruner!r}: use one of {list(PRUNERS)} or an Optuna pruner"
        )
    return factories[pruner]()


class TrialSeededTPESampler(optuna.samplers.BaseSampler):
    """TPE whose randomness in trial ``k`` comes from ``seed + k`` alone.

    A plain ``TPESampler(seed=seed)`` restarts its random stream whenever a process starts, so a
    resumed study would replay its first random draws and two workers with one seed would draw the
    same points. Seeding per trial number makes every trial a function of the seed and the trials
    before it: an interrupted and resumed study samples exactly what an uninterrupted one would,
    and workers sharing a study never repeat each other's random draws.

    ``seed`` is any integer in ``[0, MAX_SEED]``; the trial seeds wrap around past ``MAX_SEED``
    (NumPy takes no larger seed), so every seed allows any number of trials.
    """

    def __init__(self, seed: int = 0) -> None:
        self._seed = check_seed(seed)
        self._tpe = optuna.samplers.TPESampler(seed=self._seed)

    def trial_seed(self, number: int) -> int:
        """The seed of trial ``number``: ``(seed + number) mod (MAX_SEED + 1)``."""
        return (self._seed + number) % (MAX_SEED + 1)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        """Start trial ``trial.number`` with a TPE seeded by :meth:`trial_seed`."""
        self._tpe = optuna.samplers.TPESampler(seed=self.trial_seed(trial.number))
        self._tpe.before_trial(study, trial)

    def infer_relative_search_space(
        self, study: optuna.Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        """TPE's joint search space over the parameters every past trial shares."""
        return self._tpe.infer_relative_search_space(study, trial)

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        """TPE's joint sample of ``search_space``."""
        return self._tpe.sample_relative(study, trial, search_space)

    def sample_independent(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        """TPE's sample of one parameter outside the joint space (a conditional one)."""
        return self._tpe.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        state: TrialState,
        values: Sequence[float] | None,
    ) -> None:
        """TPE's bookkeeping after a trial."""
        self._tpe.after_trial(study, trial, state, values)


class NoCompletedTrialError(RuntimeError):
    """A study has no completed trial, so it has no best configuration."""


@dataclass(frozen=True)
class TuneResult:
    """What :func:`tune` found.

    Attributes:
        best: the best trial's configuration; ``best.build(model.parameters())`` is ready to train.
        best_value: its objective value.
        best_trial: its trial number.
        study: the Optuna study, to inspect (``study.trials``), plot or resume.
    """

    best: OptimizerConfig
    best_value: float
    best_trial: int
    study: optuna.Study


def best_config(study: optuna.Study) -> OptimizerConfig:
    """The configuration of ``study``'s best completed trial.

    Raises:
        NoCompletedTrialError: (a ``RuntimeError``) no trial completed; the message quotes the
            last recorded failure.
    """
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        errors = [
            t.user_attrs["error"]
            for t in study.get_trials(deepcopy=False)
            if "error" in t.user_attrs
        ]
        last = errors[-1] if errors else "none recorded"
        raise NoCompletedTrialError(
            f"study {study.study_name!r} has no completed trial "
            f"({len(study.trials)} trials; last error: {last})"
        )
    return OptimizerConfig.from_dict(study.best_trial.user_attrs["config"])


def _check_search_space(
    study: optuna.Study,
    space: SearchSpace,
    storage: str | os.PathLike[str] | optuna.storages.BaseStorage,
) -> None:
    """Record ``space`` in a new study; refuse to resume an existing one with another space."""
    fingerprint = space.fingerprint()
    stored = study.user_attrs.get(SEARCH_SPACE_ATTR)
    if stored is None and not study.trials:  # a new study (or an empty one): adopt it
        study.set_user_attr(SEARCH_SPACE_ATTR, fingerprint)
        return
    if stored == fingerprint:
        return
    if isinstance(storage, (str, os.PathLike)):
        name = os.fspath(storage)
    else:  # a database's URL, or the kind of storage (in memory)
        name = getattr(storage, "url", None) or type(storage).__name__
    what = (
        "records no search space (it was not created by tune())"
        if stored is None
        else f"was created with another search space:\n  stored:    {stored}"
    )
    raise ValueError(
        f"study {study.study_name!r} in storage {name!r} {what}\n  requested: {fingerprint}\n"
        "Resuming it would mix unrelated trials (and Optuna cannot sample changed ranges): "
        "pass a new study_name, or the study's own search space to resume it."
    )


def tune(  # noqa: C901 (argument checks, then one loop)
    train: TrainFn,
    space: SearchSpace | None = None,
    *,
    n_trials: int = 20,
    storage: str | os.PathLike[str] | optuna.storages.BaseStorage = "tuning.db",
    study_name: str = "torchopt-edu",
    direction: Literal["minimize", "maximize"] = "minimize",
    pruner: str | optuna.pruners.BasePruner = "median",
    sampler: optuna.samplers.BaseSampler | None = None,
    seed: int = 0,
    catch: tuple[type[Exception], ...] = (Exception,),
    timeout: float | None = None,
    progress_bar: bool = False,
) -> TuneResult:
    """Search ``space`` for the configuration that gives ``train`` its best value.

    ``train(config, report)`` builds a model, trains it with ``config.build(params)`` (and
    ``config.build_scheduler(optimizer, total_steps)``), calls ``report(value, step)`` as it goes,
    and returns the value to minimise (or maximise). ``report`` raises ``optuna.TrialPruned`` when
    the pruner stops the trial, and ``FloatingPointError`` for a NaN or infinite value; let both
    propagate. :func:`~torchopt_edu.tuning.supervised_task` is such a function for a standard
    loop.

    ``n_trials`` is the study's budget, counted over all its trials and all workers: a call runs
    trials until the study holds ``n_trials`` (finished or running), so rerunning an interrupted
    call finishes the rest, and workers sharing a storage share the budget (two workers may each
    start a trial at the last moment: at most one extra trial per worker).

    Args:
        train: the training function.
        space: what to search; ``None`` means :class:`SearchSpace` ``()`` (all our optimizers).
        n_trials: the study's trial budget (>= 1).
        storage: a SQLite file path, a database URL, or an Optuna storage (:func:`open_storage`).
        study_name: the study in ``storage``; an existing one is resumed.
        direction: ``"minimize"`` (a loss) or ``"maximize"`` (an accuracy).
        pruner: ``"median"``, ``"successive_halving"``, ``"hyperband"``, ``"none"`` or an Optuna
            pruner.
        sampler: an Optuna sampler; ``None`` means TPE seeded per trial with ``seed + number``.
        seed: the seed of the default sampler, in ``[0, MAX_SEED]`` (``2**32 - 1``, the one seed
            limit of the package: :data:`torchopt_edu.optim._checks.MAX_SEED`).
        catch: exceptions of ``train`` that fail the trial and let the study go on (the message is
            kept in the trial's ``user_attrs["error"]``); others fail the trial and propagate.
        timeout: stop starting trials after this many seconds.
        progress_bar: show a tqdm bar of the study's trials and best value.

    Returns:
        A :class:`TuneResult` with the best configuration.

    Raises:
        ValueError: bad ``n_trials``, ``direction``, ``pruner`` or ``seed``; or ``study_name``
            exists in ``storage`` with another direction or search space (checked before any
            trial runs).
        TypeError: ``seed`` is not an integer.
        NoCompletedTrialError: (a ``RuntimeError``) no trial of the study completed.
    """
    if isinstance(n_trials, bool) or not isinstance(n_trials, int) or n_trials < 1:
        raise ValueError(f"n_trials must be a positive integer, got {n_trials!r}")
    if direction not in ("minimize", "maximize"):
        raise ValueError(f"direction must be 'minimize' or 'maximize', got {direction!r}")
    seed = check_seed(seed)
    space = SearchSpace() if space is None else space
    if not isinstance(space, SearchSpace):
        raise TypeError(f"space must be a SearchSpace or None, got {space!r}")
    pruning = make_pruner(pruner)
    backend = open_storage(storage)  # last: a bad argument leaves no database behind
    study = optuna.create_study(
        storage=backend,
        study_name=study_name,
        direction=direction,
        pruner=pruning,
        sampler=TrialSeededTPESampler(seed) if sampler is None else sampler,
        load_if_exists=True,
    )
    if study.direction.name.lower() != direction:
        raise ValueError(
            f"study {study_name!r} already exists with direction {study.direction.name.lower()!r}, "
            f"not {direction!r}"
        )
    _check_search_space(study, space, storage)
    with warnings.catch_warnings():  # fail_stale_trials is marked experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)  # so trials of killed workers are not counted
    worker = f"{socket.gethostname()}:{os.getpid()}"

    def objective(trial: optuna.Trial) -> float:
        trial.set_user_attr("worker", worker)

        def report(value: float, step: int) -> None:
            value = float(value)
            if not math.isfinite(value):
                raise FloatingPointError(f"trial {trial.number} reported {value} at step {step}")
            trial.report(value, step)
            if trial.should_prune():
                raise optuna.TrialPruned(
                    f"trial {trial.number} pruned at step {step} ({value:.4g})"
                )

        try:
            config = space.suggest(trial)  # inside: a failed draw is recorded like any failure
            trial.set_user_attr("config", config.to_dict())
            value = float(train(config, report))
            if not math.isfinite(value):
                raise FloatingPointError(f"trial {trial.number} returned {value}")
        except optuna.TrialPruned:
            raise
        except BaseException as error:
            trial.set_user_attr("error", f"{type(error).__name__}: {error}")
            raise
        return value

    budget = optuna.study.MaxTrialsCallback(n_trials, states=None)
    callbacks: list[Callable[[optuna.Study, FrozenTrial], None]] = [budget]
    bar = None
    if progress_bar:
        from tqdm.auto import tqdm

        bar = tqdm(total=n_trials, initial=len(study.trials), desc=study_name, unit="trial")

        def show(study: optuna.Study, trial: FrozenTrial) -> None:
            bar.n = min(len(study.trials), n_trials)
            complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if complete:
                bar.set_postfix(best=f"{study.best_value:.4g}", trial=study.best_trial.number)
            bar.refresh()

        callbacks.append(show)
    try:
        remaining = n_trials - len(study.trials)
        if remaining > 0:
            study.optimize(
                objective, n_trials=remaining, timeout=timeout, catch=catch, callbacks=callbacks
            )
    finally:
        if bar is not None:
            bar.close()
    best = best_config(study)
    return TuneResult(
        best=best, best_value=study.best_value, best_trial=study.best_trial.number, study=study
    )
