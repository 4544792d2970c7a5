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

import contextlib
import functools
import json
import logging
import math
import os
import socket
import sqlite3
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeAlias

import numpy as np
import optuna
import sqlalchemy
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, TrialState

from torchopt_edu.optim._checks import check_seed
from torchopt_edu.tuning.config import OptimizerConfig
from torchopt_edu.tuning.space import SearchSpace

Report: TypeAlias = Callable[[float, int], None]
"""``report(value, step)``: record an intermediate value; raises ``optuna.TrialPruned`` to stop."""

TrainFn: TypeAlias = Callable[[OptimizerConfig, Report], float]
"""``train(config, report) -> value``: train with ``config``, report, return the objective."""

PRUNERS = ("median", "successive_halving", "hyperband", "none")

SEARCH_SPACE_ATTR = "search_space"
"""Key of the study's ``user_attrs`` holding :meth:`SearchSpace.fingerprint` of its space."""

OBJECTIVE_ATTR = "objective"
"""Key of the study's ``user_attrs`` holding the settings its objective's values depend on
(``tune(objective=...)``: the task, its epochs, the seed)."""

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

    Raises:
        StorageError: (a ``RuntimeError``) the database cannot be opened or read (a damaged
            SQLite file, a folder, an unreachable server); the message names the file or the
            URL.
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
    if url.startswith("sqlite") and database and Path(database).is_dir():
        raise StorageError(
            f"study database {database} is a folder; give the study a file, e.g. "
            f"{Path(database) / 'study.db'}"
        )
    engine_kwargs = None
    if url.startswith("sqlite") and database not in (None, "", ":memory:"):
        engine_kwargs = {"creator": functools.partial(_connect_sqlite, database)}
    with naming_the_database(url), warnings.catch_warnings():  # the heartbeat: experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RDBStorage(
            url,
            engine_kwargs=engine_kwargs,
            heartbeat_interval=HEARTBEAT_INTERVAL_S,
            grace_period=2 * HEARTBEAT_INTERVAL_S,
        )


class StorageError(RuntimeError):
    """A study's database cannot be opened, read or written; the message names it."""


def database_name(storage: str | os.PathLike[str] | optuna.storages.BaseStorage) -> str:
    """How messages name ``storage``: the SQLite file, the URL without its password, or the kind
    of storage object (``InMemoryStorage``)."""
    if isinstance(storage, optuna.storages.BaseStorage):
        storage = getattr(storage, "url", None) or type(storage).__name__
        if "://" not in storage:
            return storage
    url = os.fspath(storage)
    if "://" not in url:
        return url
    parsed = sqlalchemy.engine.make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        return parsed.database
    return parsed.render_as_string(hide_password=True)


@contextlib.contextmanager
def naming_the_database(
    storage: str | os.PathLike[str] | optuna.storages.BaseStorage,
) -> Iterator[None]:
    """Turn the database errors raised inside into a :class:`StorageError` naming ``storage``.

    SQLite reports a damaged file as ``file is not a database``, ``database disk image is
    malformed`` or ``disk I/O error``, and Optuna wraps some of them in a ``StorageInternalError``;
    neither says which file. The original error stays chained (``__cause__``).
    """
    try:
        yield
    except (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError) as error:
        cause = error.__cause__ if isinstance(error.__cause__, sqlalchemy.exc.DBAPIError) else error
        reason = str(getattr(cause, "orig", None) or cause).splitlines()[0]
        name = database_name(storage)
        hint = ""
        if "://" not in name or name.startswith("sqlite"):  # a SQLite file
            hint = (
                f"; if the file is damaged, move {name} (and its -wal and -shm files) away and "
                f"run again to start a new study (`sqlite3 {name} .recover` may save its trials)"
            )
        raise StorageError(f"study database {name}: {reason}{hint}") from error


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


SAMPLERS = ("tpe", "gp", "cmaes", "nsga2", "random")
"""Names :func:`make_sampler` (and ``tune(sampler=...)``) accepts."""

NSGA2_POPULATION = 10
"""NSGA-II's generation size: Optuna's default (50) would spend a whole tuning budget on the
first, random generation."""


def _build_sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    """Optuna's sampler called ``name``, seeded with ``seed`` (see :func:`make_sampler`)."""
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(population_size=NSGA2_POPULATION, seed=seed)
    # GP and CMA-ES model one joint space; what lies outside it goes to TPE, silently (below).
    independent = optuna.samplers.TPESampler(seed=seed)
    with warnings.catch_warnings():  # both are marked experimental in some Optuna versions
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if name == "gp":
            return optuna.samplers.GPSampler(
                seed=seed, independent_sampler=independent, warn_independent_sampling=False
            )
        return optuna.samplers.CmaEsSampler(
            seed=seed, independent_sampler=independent, warn_independent_sampling=False
        )


class TrialSeededSampler(optuna.samplers.BaseSampler):
    """One of Optuna's samplers whose randomness in trial ``k`` comes from ``(seed, k)`` alone.

    A plain ``TPESampler(seed=seed)`` restarts its random stream whenever a process starts, so a
    resumed study would replay its first random draws and two workers with one seed would draw the
    same points. Seeding per trial number makes every trial a function of the seed and the trials
    before it: an interrupted and resumed study samples exactly what an uninterrupted one would,
    and workers sharing a study never repeat each other's random draws. Every sampler of
    :data:`SAMPLERS` keeps its model in the study (past trials, and CMA-ES's and NSGA-II's state
    in the trials' system attributes), so building a fresh one per trial loses nothing.

    ``seed`` is any integer in ``[0, MAX_SEED]``. The trial seeds mix ``seed`` and the trial
    number through NumPy's ``SeedSequence`` rather than adding them: with ``seed + k``, the study
    seeded 1 would draw what the study seeded 0 draws one trial later, so a comparison "over
    seeds" would repeat the same random points.
    """

    def __init__(self, name: str = "tpe", seed: int = 0) -> None:
        if name not in SAMPLERS:
            raise ValueError(f"unknown sampler {name!r}: use one of {list(SAMPLERS)}")
        self.name = name
        self._seed = check_seed(seed)
        self._sampler = _build_sampler(name, self._seed)

    def trial_seed(self, number: int) -> int:
        """The seed of trial ``number``: 32 bits of ``SeedSequence((seed, number))``."""
        return int(np.random.SeedSequence((self._seed, number)).generate_state(1)[0])

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        """Start trial ``trial.number`` with a sampler seeded by :meth:`trial_seed`."""
        self._sampler = _build_sampler(self.name, self.trial_seed(trial.number))
        self._sampler.before_trial(study, trial)

    def infer_relative_search_space(
        self, study: optuna.Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        """The sampler's joint search space (the parameters every past trial shares)."""
        return self._sampler.infer_relative_search_space(study, trial)

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        """The sampler's joint sample of ``search_space``."""
        return self._sampler.sample_relative(study, trial, search_space)

    def sample_independent(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        """The sampler's draw of one parameter outside the joint space (a conditional one)."""
        return self._sampler.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        state: TrialState,
        values: Sequence[float] | None,
    ) -> None:
        """The sampler's bookkeeping after a trial."""
        self._sampler.after_trial(study, trial, state, values)


class TrialSeededTPESampler(TrialSeededSampler):
    """:class:`TrialSeededSampler` of TPE (Bergstra et al. 2011), the default of :func:`tune`."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__("tpe", seed)


def make_sampler(
    sampler: str | optuna.samplers.BaseSampler | None, seed: int = 0
) -> optuna.samplers.BaseSampler:
    """A sampler by name (seeded per trial, :class:`TrialSeededSampler`), or ``sampler`` itself.

    - ``"tpe"`` (default, ``None``): tree-structured Parzen estimators (Bergstra et al. 2011);
      models each parameter on its own, so it handles categorical and conditional parameters
      (``optimizer``, then ``adam.lr``) and costs milliseconds per trial. The general choice.
    - ``"gp"``: Gaussian-process Bayesian optimisation (Matern-5/2 kernel, log expected
      improvement); the most sample-efficient on a few (< 10) continuous parameters and small
      budgets, at a cost per trial growing with the trials (a GP fit: ~0.1-1 s).
    - ``"cmaes"``: CMA-ES (Hansen 2016), an evolution strategy adapting a Gaussian's mean and
      covariance; strong on continuous, correlated parameters and budgets of hundreds of trials.
      It cannot sample categorical parameters, nor one-dimensional spaces: those (the optimizer
      choice, the parameters of an optimizer not chosen in every trial) are drawn by TPE.
    - ``"nsga2"``: NSGA-II (Deb et al. 2002), a genetic algorithm (generations of
      :data:`NSGA2_POPULATION`, crossover and mutation); made for several objectives, it runs
      single-objective studies too. Conditional parameters outside its joint space are random.
    - ``"random"``: independent uniform draws; the baseline every other sampler must beat.

    GP and CMA-ES model the parameters that every trial shares: for a space of several optimizers
    (``adam.lr`` exists only when Adam is chosen) that is the optimizer choice alone, so they are
    at their best on one optimizer's space.
    """
    if sampler is None:
        sampler = "tpe"
    if isinstance(sampler, optuna.samplers.BaseSampler):
        return sampler
    if not isinstance(sampler, str):
        raise TypeError(f"sampler must be a name or an Optuna sampler, got {sampler!r}")
    return TrialSeededSampler(sampler, seed)


INTERRUPTED_ATTR = "interrupted"
"""Key of a failed trial's ``user_attrs`` saying why it stopped without a result of its own
(Ctrl+C, ``SystemExit``, its worker process gone); such a trial is not counted by
:func:`counted_trials`."""


def interrupted(trial: FrozenTrial) -> bool:
    """Whether ``trial`` failed by an interruption rather than by its training function.

    That is: it records :data:`INTERRUPTED_ATTR`, or it failed without any recorded error, which
    happens only when Optuna's heartbeat marks the trial of a killed worker failed.
    """
    return trial.state == TrialState.FAIL and (
        INTERRUPTED_ATTR in trial.user_attrs or "error" not in trial.user_attrs
    )


RETRIED_BELOW_ATTR = "failures_retried_below"
"""Key of the study's ``user_attrs``: failed trials numbered below it are not counted, set by a
rerun of a study in which every trial had failed (:func:`retry_a_study_that_never_succeeded`)."""


def counted_trials(study: optuna.Study) -> int:
    """How much of :func:`tune`'s ``n_trials`` budget ``study`` has used, over all workers.

    Counted: the complete, pruned and failed trials, and the running ones (of other workers).
    Not counted: interrupted trials (:func:`interrupted`), which a rerun replaces, and the
    failures that :func:`retry_a_study_that_never_succeeded` set aside.
    """
    retried_below = study.user_attrs.get(RETRIED_BELOW_ATTR, 0)
    counted = (
        TrialState.COMPLETE,
        TrialState.PRUNED,
        TrialState.RUNNING,
        TrialState.WAITING,
    )
    return sum(
        t.state in counted
        or (t.state == TrialState.FAIL and not interrupted(t) and t.number >= retried_below)
        for t in study.get_trials(deepcopy=False)
    )


def retry_a_study_that_never_succeeded(study: optuna.Study) -> bool:
    """Set aside the failures of a study in which no trial has completed or been pruned.

    Such failures say that the training function is broken, not the configurations: once it is
    fixed, a rerun must run the whole budget rather than find it spent. The failed trials stay in
    the study (their errors remain readable); they stop counting against ``n_trials``. Returns
    whether there were failures to set aside.
    """
    trials = study.get_trials(deepcopy=False)
    if any(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials):
        return False
    if not any(t.state == TrialState.FAIL and not interrupted(t) for t in trials):
        return False
    study.set_user_attr(RETRIED_BELOW_ATTR, max(t.number for t in trials) + 1)
    return True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: nothing is sent, the process's existence is checked
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


def fail_trials_of_ended_workers(study: optuna.Study) -> list[int]:
    """Mark failed (interrupted) the running trials of this machine's worker processes that ended.

    A killed worker leaves its trial running; Optuna's heartbeat marks it failed only after
    ``2 * HEARTBEAT_INTERVAL_S``, so an immediate rerun would count it against the budget and wait
    for it. A trial records its worker as ``host:pid``: on this host (POSIX only), a pid that no
    longer runs is a worker that ended. Returns the numbers of the trials marked.
    """
    if os.name != "posix":  # os.kill(pid, 0) would terminate the process on Windows
        return []
    host, storage, marked = socket.gethostname(), study._storage, []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker_host, _, pid = str(trial.user_attrs.get("worker", "")).rpartition(":")
        if worker_host != host or not pid.isdigit() or _alive(int(pid)):
            continue
        try:
            storage.set_trial_user_attr(trial._trial_id, INTERRUPTED_ATTR, "its worker ended")
            storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:  # another rerun marked it first
            continue
        marked.append(trial.number)
    return marked


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
            if "error" in t.user_attrs and not interrupted(t)
        ]
        last = errors[-1] if errors else "none recorded"
        hint = ""
        if errors:
            hint = (
                "; fix the training function and run again: in a study where no trial has "
                "succeeded, a rerun sets the failures aside and runs the whole budget"
            )
        raise NoCompletedTrialError(
            f"study {study.study_name!r} has no completed trial "
            f"({len(study.trials)} trials; last error: {last}){hint}"
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


class ObjectiveMismatchError(ValueError):
    """A study exists with other objective settings (or records none): its trials' values would
    not compare with new ones. The message is one line naming the settings."""


def _check_objective(
    study: optuna.Study,
    objective: Mapping[str, Any],
    storage: str | os.PathLike[str] | optuna.storages.BaseStorage,
) -> None:
    """Record ``objective`` in a new study; refuse to resume one made with other settings.

    A study that records no settings but holds trials was made before the check existed (or
    without ``objective``): it is refused too, since nothing says its trials are comparable.
    """
    requested = json.loads(json.dumps(dict(objective)))  # as the study stores it: tuples are lists
    stored = study.user_attrs.get(OBJECTIVE_ATTR)
    if stored is None and not study.trials:  # a new study (or an empty one): adopt the settings
        study.set_user_attr(OBJECTIVE_ATTR, requested)
        return
    if stored == requested:
        return
    where = f"study {study.study_name!r} in {database_name(storage)}"
    if stored is None:
        shown = ", ".join(f"{key}={value!r}" for key, value in requested.items())
        raise ObjectiveMismatchError(
            f"{where} records no objective settings (it predates that check), so nothing says "
            f"its {len(study.trials)} trials used {shown}"
        )
    differ = [key for key in {**stored, **requested} if stored.get(key) != requested.get(key)]
    raise ObjectiveMismatchError(
        f"{where} was made with "
        + ", ".join(f"{key}={stored.get(key)!r}" for key in differ)
        + ", not "
        + ", ".join(f"{key}={requested.get(key)!r}" for key in differ)
        + " (its trials' values would not compare with new ones)"
    )


class _QuietInterrupts(logging.Filter):
    """Drop Optuna's "Trial N failed ... KeyboardInterrupt" record and its traceback: Ctrl+C
    is how a study is paused (the trial is marked failed and rerun on resume), not an error."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Whether to keep ``record``."""
        return "KeyboardInterrupt" not in record.getMessage()


def tune(  # noqa: C901 (argument checks, then one loop)
    train: TrainFn,
    space: SearchSpace | None = None,
    *,
    n_trials: int = 20,
    storage: str | os.PathLike[str] | optuna.storages.BaseStorage = "tuning.db",
    study_name: str = "torchopt-edu",
    direction: Literal["minimize", "maximize"] = "minimize",
    pruner: str | optuna.pruners.BasePruner = "median",
    sampler: str | optuna.samplers.BaseSampler | None = None,
    seed: int = 0,
    catch: tuple[type[Exception], ...] = (Exception,),
    timeout: float | None = None,
    progress_bar: bool = False,
    objective: Mapping[str, Any] | None = None,
) -> TuneResult:
    """Search ``space`` for the configuration that gives ``train`` its best value.

    ``train(config, report)`` builds a model, trains it with ``config.build(params)`` (and
    ``config.build_scheduler(optimizer, total_steps)``), calls ``report(value, step)`` as it goes,
    and returns the value to minimise (or maximise). ``report`` raises ``optuna.TrialPruned`` when
    the pruner stops the trial, and ``FloatingPointError`` for a NaN or infinite value; let both
    propagate. :func:`~torchopt_edu.tuning.supervised_task` is such a function for a standard
    loop.

    ``n_trials`` is the study's budget, counted over all its trials and all workers by
    :func:`counted_trials`: a call runs trials until the study holds ``n_trials`` finished
    (complete, pruned or failed) or running ones, so workers sharing a storage share the budget
    (two workers may each start a trial at the last moment: at most one extra trial per worker).
    A rerun runs only the missing trials: a trial stopped by Ctrl+C or by a killed process does not
    count, and is replaced; nor do the failures of a study in which no trial has succeeded yet, so
    a rerun after fixing the training function runs the whole budget again.

    Args:
        train: the training function.
        space: what to search; ``None`` means :class:`SearchSpace` ``()`` (all our optimizers).
        n_trials: the study's trial budget (>= 1).
        storage: a SQLite file path, a database URL, or an Optuna storage (:func:`open_storage`).
        study_name: the study in ``storage``; an existing one is resumed.
        direction: ``"minimize"`` (a loss) or ``"maximize"`` (an accuracy).
        pruner: ``"median"``, ``"successive_halving"``, ``"hyperband"``, ``"none"`` or an Optuna
            pruner.
        sampler: ``"tpe"`` (``None``, the default), ``"gp"``, ``"cmaes"``, ``"nsga2"`` or
            ``"random"`` (:func:`make_sampler`: each seeded per trial from ``seed`` and the trial
            number, :class:`TrialSeededSampler`), or an Optuna sampler.
        seed: the seed of the default sampler, in ``[0, MAX_SEED]`` (``2**32 - 1``, the one seed
            limit of the package: :data:`torchopt_edu.optim._checks.MAX_SEED`).
        catch: exceptions of ``train`` that fail the trial and let the study go on (the message is
            kept in the trial's ``user_attrs["error"]``); others fail the trial and propagate.
        timeout: stop starting trials after this many seconds.
        progress_bar: show a tqdm bar of the study's trials and best value.
        objective: the settings ``train``'s values depend on (JSON data, e.g. ``{"task":
            "digits", "epochs": 10, "seed": 0}``), recorded in a new study
            (``user_attrs["objective"]``); resuming the study with other settings, or a study
            holding trials that records none (made before this check), raises
            :class:`ObjectiveMismatchError`. ``None``: nothing recorded nor checked (resume such
            an older study this way, knowing its trials are comparable).

    Returns:
        A :class:`TuneResult` with the best configuration.

    Raises:
        ValueError: bad ``n_trials``, ``direction``, ``pruner`` or ``seed``; or ``study_name``
            exists in ``storage`` with another direction or search space (checked before any
            trial runs); :class:`ObjectiveMismatchError` (a ``ValueError``) for other
            ``objective`` settings.
        TypeError: ``seed`` is not an integer.
        NoCompletedTrialError: (a ``RuntimeError``) no trial of the study completed.
        StorageError: (a ``RuntimeError``) the database cannot be opened, read or written (a
            damaged SQLite file); the message names it.
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
    chosen_sampler = make_sampler(sampler, seed)
    backend = open_storage(storage)  # last: a bad argument leaves no database behind
    with naming_the_database(storage):
        study = optuna.create_study(
            storage=backend,
            study_name=study_name,
            direction=direction,
            pruner=pruning,
            sampler=chosen_sampler,
            load_if_exists=True,
        )
        if study.direction.name.lower() != direction:
            raise ValueError(
                f"study {study_name!r} already exists with direction "
                f"{study.direction.name.lower()!r}, not {direction!r}"
            )
        _check_search_space(study, space, storage)
        if objective is not None:
            _check_objective(study, objective, storage)
        with warnings.catch_warnings():  # fail_stale_trials is marked experimental
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)  # trials of killed workers elsewhere
        fail_trials_of_ended_workers(study)  # and on this machine, without waiting
        retry_a_study_that_never_succeeded(study)
        _optimize(
            study, space, train, n_trials, timeout=timeout, catch=catch, progress_bar=progress_bar
        )
        best = best_config(study)
        return TuneResult(
            best=best, best_value=study.best_value, best_trial=study.best_trial.number, study=study
        )


def _objective(space: SearchSpace, train: TrainFn, worker: str) -> Callable[[optuna.Trial], float]:
    """The Optuna objective: draw a configuration, train, check the value, record failures."""

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
        except Exception as error:
            trial.set_user_attr("error", f"{type(error).__name__}: {error}")
            raise
        except BaseException as error:  # Ctrl+C, SystemExit: the configuration is not to blame
            trial.set_user_attr(INTERRUPTED_ATTR, f"{type(error).__name__}: {error}".rstrip(": "))
            raise
        return value

    return objective


def _optimize(
    study: optuna.Study,
    space: SearchSpace,
    train: TrainFn,
    n_trials: int,
    *,
    timeout: float | None,
    catch: tuple[type[Exception], ...],
    progress_bar: bool,
) -> None:
    """Run trials until :func:`counted_trials` reaches ``n_trials`` (over all workers)."""

    def stop_at_budget(study: optuna.Study, trial: FrozenTrial) -> None:
        if counted_trials(study) >= n_trials:
            study.stop()

    callbacks: list[Callable[[optuna.Study, FrozenTrial], None]] = [stop_at_budget]
    bar = None
    if progress_bar:
        from tqdm.auto import tqdm

        bar = tqdm(
            total=n_trials,
            initial=min(counted_trials(study), n_trials),
            desc=study.study_name,
            unit="trial",
        )

        def show(study: optuna.Study, trial: FrozenTrial) -> None:
            bar.n = min(counted_trials(study), n_trials)
            complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if complete:
                bar.set_postfix(best=f"{study.best_value:.4g}", trial=study.best_trial.number)
            bar.refresh()

        callbacks.append(show)
    worker = f"{socket.gethostname()}:{os.getpid()}"
    interrupt_notes = _QuietInterrupts()
    optuna_log = logging.getLogger("optuna.study._optimize")  # where the failure is logged
    optuna_log.addFilter(interrupt_notes)
    try:
        remaining = n_trials - counted_trials(study)
        if remaining > 0:  # at most this many attempts in this call, even if all of them fail
            study.optimize(
                _objective(space, train, worker),
                n_trials=remaining,
                timeout=timeout,
                catch=catch,
                callbacks=callbacks,
            )
    finally:
        optuna_log.removeFilter(interrupt_notes)
        if bar is not None:
            bar.close()
