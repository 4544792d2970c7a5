"""Several workers, one benchmark: the trial records in an Optuna storage (SQLite or PostgreSQL).

:func:`run_shared` runs the plan of :func:`~torchopt_edu.benchmark.plan_trials` like
:func:`~torchopt_edu.benchmark.run_benchmark`, but keeps the records in one Optuna study of a
database that any number of worker processes, on one machine (a SQLite file) or several (a
``postgresql://`` URL), share. Each worker, for each planned trial in turn:

1. skips it if the study holds its record (a complete Optuna trial with its key) or a running
   claim on it;
2. otherwise claims it: its Optuna trial takes the key (``user_attrs["key"]``), then creates the
   study ``"<study_name>:claim:<key>:<attempt>"``, where ``attempt`` counts the failed trials of
   that key. Study names are unique in the database, so of two workers that claim one trial in
   the same instant exactly one creates that study; the other gives the key up and moves on;
3. the winner runs it and completes its Optuna trial with the record in ``user_attrs["record"]``.

So every planned trial runs once. A killed worker's claims stop sending heartbeats
(:func:`~torchopt_edu.tuning.open_storage`) and are marked failed by the next worker that starts
a trial (at once for a dead process of the same machine), which raises the trial's attempt count:
the next worker claims it afresh and runs it again.
"""

from __future__ import annotations

import json
import os
import socket
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from torchopt_edu.benchmark.protocol import (
    Track,
    TrialKey,
    TrialResult,
    _quiet_optuna,
    plan_trials,
    run_trial,
)
from torchopt_edu.benchmark.workload import Workload
from torchopt_edu.benchmark.workloads import get_workload

KEY_ATTR = "key"
RECORD_ATTR = "record"
SEED_ATTR = "benchmark_seed"


def _key_text(key: TrialKey) -> str:
    return json.dumps([key.track, key.workload, key.optimizer, key.study, key.trial])


def stored_records(study: Any) -> dict[TrialKey, TrialResult]:
    """The records of ``study``'s complete trials, by key (the first record of a key counts)."""
    from optuna.trial import TrialState

    records: dict[TrialKey, TrialResult] = {}
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if RECORD_ATTR in trial.user_attrs:
            record = TrialResult.from_dict(trial.user_attrs[RECORD_ATTR])
            records.setdefault(record.key, record)
    return records


def _claims(study: Any) -> tuple[set[str], Counter[str]]:
    """The keys held by a running or complete trial, and each key's failed attempts."""
    from optuna.trial import TrialState

    held: set[str] = set()
    failed: Counter[str] = Counter()
    for trial in study.get_trials(deepcopy=False):
        key = trial.user_attrs.get(KEY_ATTR)
        if not key:
            continue
        if trial.state in (TrialState.COMPLETE, TrialState.RUNNING):
            held.add(key)
        elif trial.state == TrialState.FAIL:
            failed[key] += 1
    return held, failed


def _claim(study: Any, trial: Any, key: str, attempt: int) -> bool:
    """Claim ``key`` for ``trial``: True for the one worker whose claim study is created."""
    import optuna

    trial.set_user_attr(KEY_ATTR, key)  # first: a worker killed from here on is an attempt
    try:
        study._storage.create_new_study(
            [optuna.study.StudyDirection.MINIMIZE],
            f"{study.study_name}:claim:{key}:{attempt}",
        )
    except optuna.exceptions.DuplicatedStudyError:  # another worker claimed it first
        trial.set_user_attr(KEY_ATTR, "")
        return False
    return True


def run_shared(
    workloads: Sequence[str | Workload],
    optimizers: Sequence[str],
    *,
    storage: Any,
    study_name: str = "torchopt-edu-benchmark",
    track: Track = "external",
    trials: int = 5,
    studies: int = 3,
    seed: int = 0,
    on_trial: Callable[[TrialResult], None] | None = None,
) -> list[TrialResult]:
    """Run the plan's unrecorded trials, sharing ``storage``'s study ``study_name`` with others.

    Start the same call in as many processes as you like; each returns when no planned trial is
    left unclaimed, with the records of every planned trial finished so far (all of them, for
    the last worker to finish).

    Args:
        workloads, optimizers, track, trials, studies, seed: as in
            :func:`~torchopt_edu.benchmark.run_benchmark`.
        storage: a SQLite file path, a database URL (``postgresql://...``) or an Optuna storage
            (:func:`~torchopt_edu.tuning.open_storage`).
        study_name: the Optuna study holding the records; one study holds one seed's runs (both
            tracks, any workloads and budgets).
        on_trial: called with each record this worker produces.

    Returns:
        The recorded trials of the plan, in plan order.

    Raises:
        ValueError: a bad argument (see :func:`~torchopt_edu.benchmark.plan_trials`), or the study
            holds another seed's run.
    """
    import optuna

    from torchopt_edu.tuning import open_storage
    from torchopt_edu.tuning.study import fail_trials_of_ended_workers

    plan = plan_trials(
        workloads, optimizers, track=track, trials=trials, studies=studies, seed=seed
    )
    instances = {}
    for workload in workloads:
        instance = get_workload(workload)
        instances[instance.name] = instance
    with _quiet_optuna():
        study = optuna.create_study(
            storage=open_storage(storage), study_name=study_name, load_if_exists=True
        )
    stored_seed = study.user_attrs.get(SEED_ATTR)
    if stored_seed is None:
        study.set_user_attr(SEED_ATTR, seed)
    elif stored_seed != seed:
        raise ValueError(
            f"study {study_name!r} holds a benchmark run with seed {stored_seed}, not {seed}: "
            "pass its seed to resume it, or another study name"
        )
    fail_trials_of_ended_workers(study)  # free the claims of this machine's dead workers now
    worker = f"{socket.gethostname()}:{os.getpid()}"
    pending = iter(plan)

    def objective(trial: optuna.Trial) -> float:
        trial.set_user_attr("worker", worker)
        held, failed = _claims(study)
        for planned in pending:
            key = _key_text(planned.key)
            if key in held or not _claim(study, trial, key, failed[key]):
                continue
            instance = instances[planned.key.workload]
            steps, seconds, details = run_trial(instance, planned.config, planned.seed)
            config = planned.config.to_dict()
            record = TrialResult(planned.key, config, planned.seed, steps, seconds, **details)
            trial.set_user_attr(RECORD_ATTR, record.to_dict())
            if on_trial is not None:
                on_trial(record)
            return float(record.steps_run)
        study.stop()
        raise optuna.TrialPruned("every planned trial is recorded or claimed")

    with _quiet_optuna():
        study.optimize(objective, n_trials=None if plan else 0)
    records = stored_records(study)
    for planned in plan:  # the records must be of this plan: same configuration and seed
        record = records.get(planned.key)
        if record is not None and not planned.matches(record):
            raise ValueError(f"recorded trial {planned.key} does not match this run's plan")
    return [records[planned.key] for planned in plan if planned.key in records]
