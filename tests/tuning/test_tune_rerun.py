"""A rerun runs only the missing trials: after Ctrl+C, a killed worker, or a broken training
function that has since been fixed; a damaged database is named in the error."""

import multiprocessing
import os
import signal
import sqlite3

import optuna
import pytest
from optuna.trial import TrialState

from torchopt_edu.tuning import (
    LogUniform,
    NoCompletedTrialError,
    SearchSpace,
    StorageError,
    counted_trials,
    quadratic_task,
    tune,
)

optuna.logging.set_verbosity(optuna.logging.CRITICAL)

SPACE = SearchSpace({"sgd": {"lr": LogUniform(1e-3, 1.0)}})


def _load(storage):
    return optuna.load_study(study_name="torchopt-edu", storage=f"sqlite:///{storage}")


def test_a_trial_stopped_by_ctrl_c_does_not_count_and_the_rerun_runs_the_full_budget(tmp_path):
    storage = tmp_path / "study.db"
    objective = quadratic_task(steps=2)
    calls = []

    def interrupted_at_trial_3(config, report):
        if len(calls) == 3:
            raise KeyboardInterrupt  # what Ctrl+C raises
        calls.append(config)
        return objective(config, report)

    with pytest.raises(KeyboardInterrupt):
        tune(interrupted_at_trial_3, SPACE, n_trials=8, storage=storage, pruner="none")
    study = _load(storage)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 3 + [TrialState.FAIL]
    assert study.trials[3].user_attrs["interrupted"] == "KeyboardInterrupt"
    assert "error" not in study.trials[3].user_attrs
    assert counted_trials(study) == 3

    result = tune(objective, SPACE, n_trials=8, storage=storage, pruner="none")
    states = [t.state for t in result.study.trials]
    assert states == [TrialState.COMPLETE] * 3 + [TrialState.FAIL] + [TrialState.COMPLETE] * 5
    assert counted_trials(result.study) == 8
    again = tune(objective, SPACE, n_trials=8, storage=storage, pruner="none")
    assert len(again.study.trials) == 9  # the budget is reached: nothing more runs


def _killed_worker(storage: str) -> None:
    """Runs two trials, then is killed (SIGKILL: no handler, no cleanup) inside the third."""
    optuna.logging.set_verbosity(optuna.logging.CRITICAL)
    objective = quadratic_task(steps=2)
    calls = []

    def train(config, report):
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGKILL)
        calls.append(config)
        return objective(config, report)

    tune(train, SPACE, n_trials=6, storage=storage, pruner="none")


def test_the_trial_of_a_killed_worker_is_replaced_by_an_immediate_rerun(tmp_path):
    storage = tmp_path / "study.db"
    process = multiprocessing.get_context("spawn").Process(
        target=_killed_worker, args=(str(storage),)
    )
    process.start()
    process.join(timeout=120)
    assert process.exitcode == -signal.SIGKILL
    study = _load(storage)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2 + [TrialState.RUNNING]

    # Well within the heartbeat's grace period (120 s): the dead pid tells the trial is orphaned.
    result = tune(quadratic_task(steps=2), SPACE, n_trials=6, storage=storage, pruner="none")
    trials = result.study.trials
    assert trials[2].state == TrialState.FAIL
    assert trials[2].user_attrs["interrupted"] == "its worker ended"
    assert [t.state for t in trials[3:]] == [TrialState.COMPLETE] * 4
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 6


def test_a_study_whose_trials_all_failed_runs_again_once_the_training_function_is_fixed(tmp_path):
    storage = tmp_path / "study.db"

    def broken(config, report):
        raise NameError("name 'modle' is not defined")

    with pytest.raises(NoCompletedTrialError) as raised:
        tune(broken, SPACE, n_trials=4, storage=storage)
    message = str(raised.value)
    assert "(4 trials; last error: NameError: name 'modle' is not defined)" in message
    assert "fix the training function and run again" in message
    assert counted_trials(_load(storage)) == 4  # the broken run spent its budget, no more

    result = tune(quadratic_task(steps=2), SPACE, n_trials=4, storage=storage)
    states = [t.state for t in result.study.trials]
    assert states == [TrialState.FAIL] * 4 + [TrialState.COMPLETE] * 4
    assert result.study.user_attrs["failures_retried_below"] == 4
    assert counted_trials(result.study) == 4
    again = tune(quadratic_task(steps=2), SPACE, n_trials=4, storage=storage)
    assert len(again.study.trials) == 8


def test_failures_among_successes_count_against_the_budget(tmp_path):
    objective = quadratic_task(steps=2)
    calls = []

    def fails_every_other_trial(config, report):
        calls.append(config)
        if len(calls) % 2 == 0:
            raise FloatingPointError("diverged")
        return objective(config, report)

    result = tune(fails_every_other_trial, SPACE, n_trials=6, storage=tmp_path / "s.db")
    assert len(result.study.trials) == len(calls) == 6


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_a_damaged_sqlite_file_is_named_in_the_error_and_left_as_it_was(tmp_path, damage):
    storage = tmp_path / "study.db"
    result = tune(quadratic_task(steps=2), SPACE, n_trials=3, storage=storage)
    result.study._storage._backend.engine.dispose()  # close the file: no -wal left beside it
    with sqlite3.connect(storage) as connection:
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    data = storage.read_bytes()
    damaged = os.urandom(len(data)) if damage == "garbage" else data[: len(data) // 2]
    storage.write_bytes(damaged)
    with pytest.raises(StorageError) as raised:
        tune(quadratic_task(steps=2), SPACE, n_trials=5, storage=storage)
    message = str(raised.value)
    assert message.startswith(f"study database {storage}: ")
    assert "is not a database" in message or "malformed" in message
    assert f"move {storage} (and its -wal and -shm files) away" in message
    assert isinstance(raised.value.__cause__, Exception)  # the original error, chained
    assert storage.read_bytes() == damaged  # nothing written over it
