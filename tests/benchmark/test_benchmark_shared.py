"""Workers sharing one benchmark through a database: every planned trial run once, the same records
as one process alone, resumable, and one seed per study.

Two worker processes on a PostgreSQL server (tests/_postgres.py starts one); SQLite is the same
code path (an Optuna RDB storage), tested in one process.
"""

import multiprocessing

import optuna
import pytest
from optuna.trial import TrialState

from torchopt_edu.benchmark import run_benchmark, run_shared
from torchopt_edu.tuning import open_storage

FIELD = (["diabetes"], ["adam", "sgd"])
BUDGET = {"trials": 2, "studies": 2, "seed": 0}


def _outcome(results):
    return [(r.key, r.seed, r.steps, [[p[0], p[2]] for p in r.curve]) for r in results]


def _worker(url: str) -> None:
    import torch

    torch.set_num_threads(1)
    run_shared(*FIELD, storage=url, **BUDGET)


def _two_workers_record_the_plan(url: str) -> None:
    open_storage(url)  # create the tables once; the workers race only to create the study
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_worker, args=(url,)) for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=300)
    assert [worker.exitcode for worker in workers] == [0, 0]

    alone = run_benchmark(*FIELD, **BUDGET)
    ran = []
    shared = run_shared(*FIELD, storage=url, **BUDGET, on_trial=ran.append)
    assert ran == []  # every trial was recorded by the workers
    assert _outcome(shared) == _outcome(alone)
    study = optuna.load_study(study_name="torchopt-edu-benchmark", storage=url)
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    keys = [trial.user_attrs["key"] for trial in complete]
    assert sorted(keys) == sorted(set(keys)) and len(keys) == len(alone)  # each trial ran once
    assert not study.get_trials(states=(TrialState.FAIL,))
    assert {trial.user_attrs["worker"].rsplit(":", 1)[1] for trial in complete} <= {
        str(worker.pid) for worker in workers
    }


def test_two_processes_share_a_postgresql_benchmark(postgres_url):
    assert postgres_url.startswith("postgresql")
    _two_workers_record_the_plan(postgres_url)


def test_a_shared_study_resumes_and_keeps_one_seed(tmp_path):
    storage = tmp_path / "benchmark.db"
    ran = []
    first = run_shared(
        ["diabetes"], ["adam"], storage=storage, trials=1, studies=1, on_trial=ran.append
    )
    assert len(ran) == 1
    larger = run_shared(
        ["diabetes"], ["adam"], storage=storage, trials=2, studies=1, on_trial=ran.append
    )
    assert len(ran) == 2 and larger[0] == first[0]  # the first trial was not run again
    with pytest.raises(ValueError, match="holds a benchmark run with seed 0, not 1"):
        run_shared(["diabetes"], ["adam"], storage=storage, trials=1, studies=1, seed=1)


def test_a_trial_claimed_by_another_worker_is_left_to_it_until_that_worker_dies(tmp_path):
    storage = open_storage(tmp_path / "benchmark.db")
    plan = {"trials": 2, "studies": 1}
    first = '["external", "diabetes", "adam", 0, 0]'
    # Another worker claimed the first trial in the instant after this one read the claims.
    storage.create_new_study(
        [optuna.study.StudyDirection.MINIMIZE], f"torchopt-edu-benchmark:claim:{first}:0"
    )
    ran = []
    records = run_shared(["diabetes"], ["adam"], storage=storage, **plan, on_trial=ran.append)
    assert [r.key.trial for r in ran] == [r.key.trial for r in records] == [1]

    # That worker dies inside the trial: its claim fails, so the next run claims it afresh.
    study = optuna.load_study(study_name="torchopt-edu-benchmark", storage=storage)
    study.add_trial(optuna.trial.create_trial(state=TrialState.FAIL, user_attrs={"key": first}))
    records = run_shared(["diabetes"], ["adam"], storage=storage, **plan, on_trial=ran.append)
    assert [r.key.trial for r in ran] == [1, 0]
    assert [r.key.trial for r in records] == [0, 1]
    assert _outcome(records) == _outcome(run_benchmark(["diabetes"], ["adam"], **plan))
