"""Two worker processes share one study through a database: every trial recorded exactly once.

A SQLite file (workers on one machine) and a PostgreSQL server (workers on several machines; the
server is started by tests/_postgres.py).
"""

import multiprocessing
from collections import Counter

import optuna
from optuna.trial import TrialState

from torchopt_edu.tuning import LogUniform, SearchSpace, open_storage, quadratic_task, tune

BUDGET = 12


def _worker(url: str, barrier: multiprocessing.Barrier) -> None:
    """One worker: tune the shared study; its first trial waits until the other worker's starts."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    objective = quadratic_task(steps=3)
    waited = []

    def train(config, report):
        if not waited:  # both workers are now inside a trial at the same time
            waited.append(barrier.wait(timeout=120))
        return objective(config, report)

    space = SearchSpace({"sgd": {"lr": LogUniform(1e-3, 1.0)}})
    tune(train, space, n_trials=BUDGET, storage=url, study_name="shared", pruner="none", seed=0)


def _two_workers_share_the_budget_and_record_each_trial_once(url: str) -> None:
    open_storage(url)  # create the tables once; the workers race only to create the study
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(2)
    workers = [context.Process(target=_worker, args=(url, barrier)) for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=300)
    assert [worker.exitcode for worker in workers] == [0, 0]

    trials = optuna.load_study(study_name="shared", storage=url).trials
    # Each worker stops once the study holds the budget; two may start their last trials at once.
    assert BUDGET <= len(trials) <= BUDGET + 1
    assert sorted(t.number for t in trials) == list(range(len(trials)))
    assert len({t._trial_id for t in trials}) == len(trials)
    assert all(t.state == TrialState.COMPLETE for t in trials)
    by_worker = Counter(t.user_attrs["worker"] for t in trials)
    pids = {str(worker.pid) for worker in workers}
    assert {name.rsplit(":", 1)[1] for name in by_worker} == pids  # both did work, nobody else
    assert sum(by_worker.values()) == len(trials)
    # One seed for both workers, yet no repeated draws: each trial is seeded by its number.
    assert len({t.params["sgd.lr"] for t in trials}) == len(trials)


def test_two_processes_share_a_sqlite_study(tmp_path):
    _two_workers_share_the_budget_and_record_each_trial_once(f"sqlite:///{tmp_path / 'shared.db'}")


def test_two_processes_share_a_postgresql_study(postgres_url):
    assert postgres_url.startswith("postgresql")
    _two_workers_share_the_budget_and_record_each_trial_once(postgres_url)
