"""The protocol: workloads reach their targets, trials are deterministic, runs resume exactly,
configurations are drawn reproducibly, and bad names are refused up front."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from torchopt_edu.benchmark import (
    WORKLOADS,
    TrialResult,
    Workload,
    draw_configs,
    get_workload,
    plan_trials,
    run_benchmark,
    run_trial,
)
from torchopt_edu.tuning import OptimizerConfig


@pytest.fixture(autouse=True)
def one_thread():
    """The workloads' models are tiny: one thread is fastest (and restores the setting)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# A sensible optimizer for each workload (Adam at a learning rate from the benchmark's draws).
SENSIBLE = {
    "digits_mlp": {"lr": 1e-2},
    "digits_cnn": {"lr": 1e-2},
    "sbm_gcn": {"lr": 1e-2},
    "char_lm": {"lr": 3e-2},
    "diabetes": {"lr": 3e-3},
    "digits_multitask": {"lr": 1e-2},
}


@pytest.mark.parametrize("name", list(WORKLOADS))
def test_each_workload_reaches_its_target_with_a_sensible_optimizer(name):
    workload = get_workload(name)
    steps, seconds, details = run_trial(workload, OptimizerConfig("adam", SENSIBLE[name]), seed=1)
    assert steps is not None and seconds > 0 and details["cpu_seconds"] > 0, details["curve"]
    assert steps < workload.max_steps and steps % workload.eval_every == 0
    last_step, _, value = details["curve"][-1]
    assert last_step == steps == details["steps_run"] and workload.reached(value)
    # The evaluations before the last one had not reached it: the trial stops at the first hit.
    assert not any(workload.reached(point[2]) for point in details["curve"][:-1])


def test_a_miss_runs_the_whole_budget_and_records_no_time():
    workload = get_workload("diabetes")
    steps, seconds, details = run_trial(workload, OptimizerConfig("sgd", {"lr": 1e-6}), seed=0)
    assert steps is None and seconds is None and details["cpu_seconds"] is None
    assert not details["diverged"]
    assert details["steps_run"] == workload.max_steps
    assert [point[0] for point in details["curve"]] == list(range(5, 301, 5))


def test_a_diverging_trial_stops_and_is_a_miss():
    workload = get_workload("diabetes")
    steps, _, details = run_trial(workload, OptimizerConfig("sgd", {"lr": 1e4}), seed=0)
    assert steps is None and details["diverged"] and details["steps_run"] < workload.max_steps


def test_schedule_free_is_validated_at_its_average_and_trained_at_y():
    # step() raises in eval mode: the trial only finishes if validation switched back to train.
    workload = get_workload("sbm_gcn")
    steps, _, details = run_trial(workload, OptimizerConfig("sgdschedulefree"), seed=0)
    assert steps is not None or details["steps_run"] == workload.max_steps


def test_a_trial_is_a_function_of_its_configuration_and_seed():
    workload = get_workload("digits_mlp")
    config = OptimizerConfig("adam", {"lr": 3e-3})
    first, second, other = (run_trial(workload, config, seed) for seed in (5, 5, 6))
    values = [[point[0], point[2]] for point in first[2]["curve"]]
    assert values == [[point[0], point[2]] for point in second[2]["curve"]]
    assert values != [[point[0], point[2]] for point in other[2]["curve"]]


class Line(Workload):
    """The smallest workload: fit y = 2x + 1 with one linear unit."""

    name = "line"
    metric = "validation MSE"
    target = 1e-3
    higher_is_better = False
    max_steps = 200
    eval_every = 10
    batch_size = 8

    def load_data(self):
        x = torch.linspace(-1, 1, 64).unsqueeze(1)
        return (x, 2 * x + 1), (x[::3], 2 * x[::3] + 1)

    def make_model(self):
        return nn.Linear(1, 1)

    def loss(self, model, batch):
        inputs, targets = batch
        return F.mse_loss(model(inputs), targets)

    def validate(self, model, valid):
        return self.loss(model, valid).item()


def test_a_user_workload_is_one_small_class():
    results = run_benchmark([Line()], ["sgd", "adam"], track="self", studies=2)
    assert [(r.key.optimizer, r.key.study) for r in results] == [
        ("sgd", 0),
        ("adam", 0),
        ("sgd", 1),
        ("adam", 1),
    ]
    # SGD's default lr 1e-3 cannot fit the line in 200 steps; a tuned SGD does.
    assert all(not r.hit for r in results if r.key.optimizer == "sgd")
    steps, _, _ = run_trial(Line(), OptimizerConfig("sgd", {"lr": 0.5}), seed=0)
    assert steps is not None


def test_a_workload_must_say_what_it_measures():
    class NoTarget(Line):
        eval_every = 0

    with pytest.raises(ValueError, match="workload 'line': eval_every must be >= 1, got 0"):
        NoTarget()

    class Unnamed(Workload):
        def load_data(self): ...
        def make_model(self): ...
        def loss(self, model, batch): ...
        def validate(self, model, valid): ...

    with pytest.raises(TypeError, match="workload Unnamed does not set 'name'"):
        Unnamed()


def test_draws_are_a_prefix_shared_by_ours_and_torchs_twin():
    five = draw_configs("adam", 5, study=1, seed=3)
    assert draw_configs("adam", 3, study=1, seed=3) == five[:3]
    twins = draw_configs("torch.optim.Adam", 5, study=1, seed=3)
    assert [c.hyperparameters for c in twins] == [c.hyperparameters for c in five]
    assert draw_configs("adam", 5, study=2, seed=3) != five
    lrs = [config.hyperparameters["lr"] for config in five]
    assert len(set(lrs)) == 5 and all(1e-4 <= lr <= 1e-1 for lr in lrs)  # adam's default space


def test_every_optimizer_sees_the_same_seeds():
    plan = plan_trials(["diabetes"], ["adam", "sgd"], trials=2, studies=2, seed=7)
    seeds = {}
    for planned in plan:
        seeds.setdefault((planned.key.study, planned.key.trial), set()).add(planned.seed)
    assert len(seeds) == 4 and all(len(s) == 1 for s in seeds.values())
    assert len({next(iter(s)) for s in seeds.values()}) == 4


def _outcome(results):
    return [(r.key, r.config, r.seed, r.steps, [[p[0], p[2]] for p in r.curve]) for r in results]


def test_an_interrupted_run_resumes_with_only_the_missing_trials_and_the_same_results():
    arguments = {"trials": 2, "studies": 2, "seed": 1}
    field = (["diabetes", Line()], ["adam", "sgd"])
    uninterrupted = run_benchmark(*field, **arguments)
    assert len(uninterrupted) == 16

    kept = []

    def killed_after_five(record):
        kept.append(record)
        if len(kept) == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_benchmark(*field, **arguments, on_trial=killed_after_five)
    ran = []
    resumed = run_benchmark(*field, **arguments, done=kept, on_trial=ran.append)
    assert len(ran) == 11 and not {r.key for r in ran} & {r.key for r in kept}
    assert _outcome(resumed) == _outcome(uninterrupted)
    # A JSON round trip of the records changes nothing (tuples such as betas come back as lists).
    stored = [TrialResult.from_dict(r.to_dict()) for r in resumed]
    assert run_benchmark(*field, **arguments, done=stored, on_trial=ran.append) == stored
    assert len(ran) == 11


def test_records_from_another_seed_are_refused():
    records = run_benchmark(["diabetes"], ["adam"], trials=1, studies=1, seed=0)
    with pytest.raises(ValueError, match="comes from a run with another seed or search space"):
        run_benchmark(["diabetes"], ["adam"], trials=1, studies=1, seed=1, done=records)


@pytest.mark.parametrize(
    ("arguments", "error", "message"),
    [
        ({"workloads": ["mnist"]}, ValueError, "unknown workload 'mnist': choose from digits_mlp"),
        ({"workloads": [3]}, TypeError, "a workload must be a name or a Workload, got 3"),
        ({"optimizers": ["adamx"]}, ValueError, "unknown optimizer 'adamx'"),
        ({"track": "tuned"}, ValueError, "unknown track 'tuned'"),
        ({"trials": 0}, ValueError, "trials must be >= 1, got 0"),
        ({"studies": 0}, ValueError, "studies must be >= 1, got 0"),
        ({"seed": -1}, ValueError, "seed must be an integer in"),
        ({"optimizers": []}, ValueError, "need at least one workload and one optimizer"),
    ],
)
def test_bad_arguments_fail_before_any_trial(arguments, error, message):
    ran = []
    call = {"workloads": ["diabetes"], "optimizers": ["adam"], **arguments}
    with pytest.raises(error, match=message):
        run_benchmark(call.pop("workloads"), call.pop("optimizers"), **call, on_trial=ran.append)
    assert ran == []


def test_records_round_trip_through_json_types():
    record = run_benchmark(["diabetes"], ["adam"], trials=1, studies=1)[0]
    again = TrialResult.from_dict(record.to_dict())
    assert again == record and again.hit == record.hit
    assert math.isfinite(again.eval_seconds)
