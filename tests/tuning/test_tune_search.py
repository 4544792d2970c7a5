"""tune(): finds a known optimum, prunes, survives failing trials, resumes exactly, checks input."""

import statistics

import optuna
import pytest
from optuna.storages import InMemoryStorage
from optuna.trial import TrialState

from torchopt_edu.tuning import (
    MAX_SEED,
    Categorical,
    LogUniform,
    NoCompletedTrialError,
    SearchSpace,
    TrialSeededTPESampler,
    Uniform,
    best_config,
    make_pruner,
    open_storage,
    quadratic_task,
    tune,
)
from torchopt_edu.tuning.study import SEARCH_SPACE_ATTR

optuna.logging.set_verbosity(optuna.logging.WARNING)

SGD_LR = {"sgd": {"lr": LogUniform(1e-3, 1.0)}}


@pytest.mark.parametrize("name", ["sgd", "torch.optim.SGD"])
def test_finds_the_known_best_learning_rate_of_the_seeds_quadratic(name):
    # (w + 2)^2 from w = 0: one gradient step lands on -2 exactly when lr = 1/2, and after
    # T steps the loss is 4 (1 - 2 lr)^(2T). Budget: 30 trials, seed 0, tolerance 0.03.
    space = SearchSpace({name: {"lr": LogUniform(1e-3, 1.0)}})
    result = tune(
        quadratic_task(steps=1), space, n_trials=30, storage=InMemoryStorage(), pruner="none"
    )
    assert result.best.optimizer_name == name
    assert abs(result.best.hyperparameters["lr"] - 0.5) < 0.03
    assert result.best_value == pytest.approx(4 * (1 - 2 * result.best.hyperparameters["lr"]) ** 2)
    assert len(result.study.trials) == 30


def test_median_pruner_stops_trials_worse_than_the_median_at_their_step():
    steps = 8
    space = SearchSpace({"sgd": {"lr": LogUniform(1e-4, 1.0)}})
    result = tune(quadratic_task(steps=steps), space, n_trials=20, storage=InMemoryStorage())
    trials = result.study.trials
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    assert pruned, "the median pruner stopped no trial"
    for trial in pruned:
        step = max(trial.intermediate_values)
        assert step < steps - 1  # stopped before the end
        earlier = [
            t.intermediate_values[step]
            for t in trials
            if t.state == TrialState.COMPLETE and t.number < trial.number
        ]
        assert len(earlier) >= 5  # n_startup_trials
        assert trial.intermediate_values[step] > statistics.median(earlier)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert all(len(t.intermediate_values) == steps for t in complete)


@pytest.mark.parametrize("pruner", ["successive_halving", "hyperband"])
def test_halving_pruners_stop_trials(pruner):
    space = SearchSpace({"sgd": {"lr": LogUniform(1e-4, 1.0)}})
    result = tune(
        quadratic_task(steps=9), space, n_trials=20, storage=InMemoryStorage(), pruner=pruner
    )
    states = [t.state for t in result.study.trials]
    assert TrialState.PRUNED in states and TrialState.COMPLETE in states


def test_without_pruner_every_trial_reports_every_step():
    result = tune(
        quadratic_task(steps=4),
        SearchSpace(SGD_LR),
        n_trials=8,
        storage=InMemoryStorage(),
        pruner="none",
    )
    assert all(t.state == TrialState.COMPLETE for t in result.study.trials)
    assert all(sorted(t.intermediate_values) == [0, 1, 2, 3] for t in result.study.trials)


def test_failing_trials_are_recorded_and_the_study_goes_on():
    # lr up to 1000 diverges: (1 - 2 lr)^(2T) overflows to inf in float64 (a NaN-or-inf loss);
    # a negative momentum makes the optimizer's constructor raise ValueError.
    space = SearchSpace({"sgd": {"lr": LogUniform(1e-3, 1e3), "momentum": Uniform(-0.5, 0.5)}})
    result = tune(
        quadratic_task(steps=200), space, n_trials=24, storage=InMemoryStorage(), pruner="none"
    )
    trials = result.study.trials
    failed = [t for t in trials if t.state == TrialState.FAIL]
    errors = [t.user_attrs["error"] for t in failed]
    assert any(e.startswith("FloatingPointError: trial") and "reported inf" in e for e in errors)
    assert any(e.startswith("ValueError") and "momentum" in e for e in errors)
    assert len(trials) == 24  # the study went on to its budget
    assert any(t.state == TrialState.COMPLETE for t in trials if t.number > failed[0].number)
    best = result.study.trials[result.best_trial]
    assert best.state == TrialState.COMPLETE
    assert result.best.hyperparameters["momentum"] >= 0


def test_a_returned_nan_fails_the_trial():
    calls = []

    def train(config, report):
        calls.append(config)
        return float("nan") if len(calls) == 2 else config.hyperparameters["lr"]

    result = tune(train, SearchSpace(SGD_LR), n_trials=3, storage=InMemoryStorage())
    states = [t.state for t in result.study.trials]
    assert states == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE]
    assert result.study.trials[1].user_attrs["error"] == "FloatingPointError: trial 1 returned nan"


def test_exceptions_outside_catch_fail_the_trial_and_propagate(tmp_path):
    def train(config, report):
        raise ZeroDivisionError("boom")

    storage = tmp_path / "study.db"
    with pytest.raises(ZeroDivisionError, match="boom"):
        tune(train, SearchSpace(SGD_LR), n_trials=3, storage=storage, catch=(ValueError,))
    study = optuna.load_study(study_name="torchopt-edu", storage=f"sqlite:///{storage}")
    assert [t.state for t in study.trials] == [TrialState.FAIL]
    assert study.trials[0].user_attrs["error"] == "ZeroDivisionError: boom"


def test_no_completed_trial_raises_with_the_last_error():
    def train(config, report):
        raise ValueError(f"bad lr {config.hyperparameters['lr']:.3f}")

    with pytest.raises(RuntimeError, match=r"no completed trial \(3 trials; last error: Value"):
        tune(train, SearchSpace(SGD_LR), n_trials=3, storage=InMemoryStorage())


def _params(study):
    return [(t.number, t.params, t.value) for t in study.trials]


def test_resumed_study_continues_the_count_and_matches_an_uninterrupted_one(tmp_path):
    # 14 trials: the first 10 are TPE's random start-up, the rest use its model of the past.
    space = SearchSpace({"sgd": {"lr": LogUniform(1e-3, 1.0), "momentum": Uniform(0.0, 0.9)}})
    whole = tune(quadratic_task(steps=3), space, n_trials=14, storage=tmp_path / "whole.db")
    first = tune(quadratic_task(steps=3), space, n_trials=6, storage=tmp_path / "parts.db")
    assert len(first.study.trials) == 6
    resumed = tune(quadratic_task(steps=3), space, n_trials=14, storage=tmp_path / "parts.db")
    assert [t.number for t in resumed.study.trials] == list(range(14))
    assert _params(resumed.study) == _params(whole.study)
    assert resumed.best == whole.best
    again = tune(quadratic_task(steps=3), space, n_trials=14, storage=tmp_path / "parts.db")
    assert len(again.study.trials) == 14  # budget reached: nothing more to run


def test_bad_arguments_raise_before_any_database_is_written(tmp_path):
    storage = tmp_path / "study.db"
    train = quadratic_task()
    with pytest.raises(ValueError, match=r"n_trials must be a positive integer, got 0"):
        tune(train, SearchSpace(SGD_LR), n_trials=0, storage=storage)
    with pytest.raises(ValueError, match=r"unknown pruner 'medain'"):
        tune(train, SearchSpace(SGD_LR), pruner="medain", storage=storage)
    with pytest.raises(ValueError, match=r"direction must be 'minimize' or 'maximize'"):
        tune(train, SearchSpace(SGD_LR), direction="min", storage=storage)
    with pytest.raises(TypeError, match=r"space must be a SearchSpace or None, got \['sgd'\]"):
        tune(train, ["sgd"], storage=storage)
    assert MAX_SEED == 2**32 - 1  # the package's one seed limit: NumPy's
    for seed in (-1, MAX_SEED + 1):
        with pytest.raises(ValueError, match=rf"seed must be an integer in \[0, {MAX_SEED}\]"):
            tune(train, SearchSpace(SGD_LR), seed=seed, storage=storage)
    for seed in (True, 1.0):
        with pytest.raises(TypeError, match=rf"seed must be an int, got {seed}"):
            tune(train, SearchSpace(SGD_LR), seed=seed, storage=storage)
    assert not storage.exists()


def test_existing_study_with_the_other_direction_is_refused(tmp_path):
    storage = tmp_path / "study.db"
    tune(quadratic_task(), SearchSpace(SGD_LR), n_trials=1, storage=storage)
    with pytest.raises(ValueError, match=r"already exists with direction 'minimize'"):
        tune(
            quadratic_task(), SearchSpace(SGD_LR), n_trials=2, storage=storage, direction="maximize"
        )


def test_storage_must_be_a_path_url_or_optuna_storage():
    with pytest.raises(TypeError, match=r"storage must be a path, a database URL .* got 42"):
        tune(quadratic_task(), SearchSpace(SGD_LR), storage=42)


def test_resuming_a_study_with_another_search_space_is_refused_before_any_trial(tmp_path):
    storage = tmp_path / "study.db"
    tune(quadratic_task(), SearchSpace(SGD_LR), n_trials=2, storage=storage)
    other = SearchSpace({"adam": {"lr": LogUniform(1e-4, 1e-1)}})
    with pytest.raises(ValueError) as error:
        tune(quadratic_task(), other, n_trials=4, storage=storage)
    message = str(error.value)
    assert f"study 'torchopt-edu' in storage {str(storage)!r} was created with another" in message
    assert "pass a new study_name, or the study's own search space" in message
    study = optuna.load_study(study_name="torchopt-edu", storage=f"sqlite:///{storage}")
    assert len(study.trials) == 2  # nothing ran, and the stored best was not returned
    assert study.user_attrs[SEARCH_SPACE_ATTR] == SearchSpace(SGD_LR).fingerprint()
    result = tune(quadratic_task(), other, n_trials=2, storage=storage, study_name="adam")
    assert result.best.optimizer_name == "adam"


def test_default_storage_and_study_name_do_not_hand_back_an_unrelated_study(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the defaults: tuning.db in the working folder, "torchopt-edu"
    tune(lambda config, report: 1.0, SearchSpace(SGD_LR), n_trials=3)
    with pytest.raises(ValueError, match=r"study 'torchopt-edu' in storage 'tuning.db'"):
        tune(quadratic_task(), SearchSpace(["adam"]), n_trials=3)


def test_a_study_not_created_by_tune_is_refused_unless_it_is_empty(tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    optuna.create_study(study_name="empty", storage=url)
    result = tune(quadratic_task(), SearchSpace(SGD_LR), n_trials=1, storage=url, study_name="x")
    assert result.study.user_attrs[SEARCH_SPACE_ATTR] == SearchSpace(SGD_LR).fingerprint()
    tune(quadratic_task(), SearchSpace(SGD_LR), n_trials=1, storage=url, study_name="empty")
    foreign = optuna.create_study(study_name="foreign", storage=url)
    foreign.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=1)
    with pytest.raises(ValueError, match=r"study 'foreign' in storage .* records no search space"):
        tune(quadratic_task(), SearchSpace(SGD_LR), n_trials=2, storage=url, study_name="foreign")


def test_widening_a_categorical_choice_is_refused_up_front(tmp_path):
    storage = tmp_path / "study.db"
    narrow = {"sgd": {"lr": 0.1, "nesterov": False, "momentum": Categorical((0.0, 0.5))}}
    tune(quadratic_task(), SearchSpace(narrow), n_trials=2, storage=storage)
    wide = {"sgd": {"lr": 0.1, "nesterov": False, "momentum": Categorical((0.0, 0.5, 0.9))}}
    with pytest.raises(ValueError, match="another search space"):
        tune(quadratic_task(), SearchSpace(wide), n_trials=4, storage=storage)
    with pytest.raises(ValueError, match="another search space"):  # the order of choices too
        tune(quadratic_task(), SearchSpace(["sgd", "adam"]), n_trials=1, storage=tmp_path / "o.db")
        tune(quadratic_task(), SearchSpace(["adam", "sgd"]), n_trials=2, storage=tmp_path / "o.db")


def test_a_failing_draw_is_recorded_in_the_trial(tmp_path):
    # Optuna refuses to draw a categorical whose choices changed; get past the up-front check
    # by recording the new space, as a study shared with an older version of a space could.
    storage = tmp_path / "study.db"
    narrow = SearchSpace({"sgd": {"lr": 0.1, "momentum": Categorical((0.0, 0.5))}})
    tune(quadratic_task(), narrow, n_trials=2, storage=storage)
    wide = SearchSpace({"sgd": {"lr": 0.1, "momentum": Categorical((0.0, 0.5, 0.9))}})
    study = optuna.load_study(study_name="torchopt-edu", storage=f"sqlite:///{storage}")
    study.set_user_attr(SEARCH_SPACE_ATTR, wide.fingerprint())
    result = tune(quadratic_task(), wide, n_trials=3, storage=storage)
    failed = result.study.trials[2]
    assert failed.state == TrialState.FAIL
    assert failed.user_attrs["error"].startswith("ValueError: ")
    assert "dynamic value space" in failed.user_attrs["error"]


def test_no_completed_trial_error_is_a_runtime_error():
    def train(config, report):
        raise ValueError("no")

    with pytest.raises(NoCompletedTrialError):
        tune(train, SearchSpace(SGD_LR), n_trials=1, storage=InMemoryStorage())
    assert issubclass(NoCompletedTrialError, RuntimeError)


def test_default_warmup_cosine_space_fits_runs_of_any_length():
    space = SearchSpace(["sgd"], ["warmup_cosine"])
    for steps in (1, 2, 3):
        result = tune(
            quadratic_task(steps=steps), space, n_trials=6, storage=InMemoryStorage(), pruner="none"
        )
        assert all(t.state == TrialState.COMPLETE for t in result.study.trials), [
            t.user_attrs.get("error") for t in result.study.trials
        ]


def test_seeds_up_to_max_seed_run_and_nearby_seeds_draw_unrelated_points():
    space = SearchSpace(SGD_LR)

    def lrs(seed):
        result = tune(
            quadratic_task(steps=1),
            space,
            n_trials=4,
            seed=seed,
            storage=InMemoryStorage(),
            pruner="none",
        )
        return [t.params["sgd.lr"] for t in result.study.trials]

    assert len(set(lrs(MAX_SEED))) == 4
    # Seeds 0 and 1 share no draw (with seed + trial number, seed 1 drew seed 0's next points).
    assert not set(lrs(0)) & set(lrs(1))
    sampler = TrialSeededTPESampler(MAX_SEED)
    seeds = [sampler.trial_seed(k) for k in range(100)]
    assert len(set(seeds)) == 100 and all(0 <= seed <= MAX_SEED for seed in seeds)
    with pytest.raises(ValueError, match=rf"seed must be an integer in \[0, {MAX_SEED}\]"):
        TrialSeededTPESampler(MAX_SEED + 1)


def test_file_storage_runs_sqlite_in_wal_mode_with_heartbeats(tmp_path):
    import sqlite3

    from torchopt_edu.tuning.study import HEARTBEAT_INTERVAL_S

    path = tmp_path / "new" / "folder" / "study.db"
    storage = open_storage(path)  # the folder is created
    assert storage.heartbeat_interval == HEARTBEAT_INTERVAL_S == 60
    assert storage.grace_period == 2 * HEARTBEAT_INTERVAL_S
    with storage.engine.connect() as connection:
        pragma = connection.exec_driver_sql
        assert pragma("PRAGMA journal_mode").scalar() == "wal"
        assert pragma("PRAGMA synchronous").scalar() == 1  # NORMAL
    with sqlite3.connect(path) as other:  # WAL is a property of the file, seen by any reader
        assert other.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    url_storage = open_storage(f"sqlite:///{tmp_path / 'url.db'}")
    with url_storage.engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    memory = InMemoryStorage()
    assert open_storage(memory) is memory


def test_pruners_by_name():
    median = make_pruner("median")
    assert isinstance(median, optuna.pruners.MedianPruner) and median._n_startup_trials == 5
    assert isinstance(make_pruner("successive_halving"), optuna.pruners.SuccessiveHalvingPruner)
    assert isinstance(make_pruner("hyperband"), optuna.pruners.HyperbandPruner)
    assert isinstance(make_pruner("none"), optuna.pruners.NopPruner)
    custom = optuna.pruners.PercentilePruner(25.0)
    assert make_pruner(custom) is custom
    with pytest.raises(ValueError, match=r"unknown pruner 'best': use one of \['median'"):
        make_pruner("best")


def test_best_config_of_a_study_without_trials_says_so():
    study = optuna.create_study(storage=InMemoryStorage(), study_name="empty")
    with pytest.raises(
        NoCompletedTrialError,
        match=r"'empty' has no completed trial \(0 trials; "
        r"last error: none recorded\)",
    ):
        best_config(study)
