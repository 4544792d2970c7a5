"""tune(sampler=...): TPE, GP, CMA-ES, NSGA-II and random, each seeded per trial."""

import warnings

import optuna
import pytest
from optuna.storages import InMemoryStorage

from torchopt_edu.tuning import (
    SAMPLERS,
    LogUniform,
    SearchSpace,
    TrialSeededSampler,
    Uniform,
    make_sampler,
    quadratic_task,
    tune,
)

optuna.logging.set_verbosity(optuna.logging.CRITICAL)

KINDS = {
    "tpe": optuna.samplers.TPESampler,
    "gp": optuna.samplers.GPSampler,
    "cmaes": optuna.samplers.CmaEsSampler,
    "nsga2": optuna.samplers.NSGAIISampler,
    "random": optuna.samplers.RandomSampler,
}
SPACE = SearchSpace({"sgd": {"lr": LogUniform(1e-3, 1.0), "momentum": Uniform(0.0, 0.9)}})


def _params(study):
    return [(t.number, t.params, t.value) for t in study.trials]


@pytest.mark.parametrize("name", SAMPLERS)
def test_each_sampler_resumes_exactly_as_an_uninterrupted_study(tmp_path, name):
    # 12 trials: past GP's 10 random start-up trials, CMA-ES's first generation (6) and
    # NSGA-II's (10), so each sampler's own model has drawn points before and after the break.
    if name == "gp":
        pytest.importorskip("scipy", reason="Optuna's GPSampler needs scipy")
    if name == "cmaes":
        pytest.importorskip("cmaes", reason="Optuna's CmaEsSampler needs cmaes")
    train = quadratic_task(steps=2)
    options = {"sampler": name, "pruner": "none", "seed": 3}
    whole = tune(train, SPACE, n_trials=12, storage=tmp_path / "whole.db", **options)
    tune(train, SPACE, n_trials=7, storage=tmp_path / "parts.db", **options)
    resumed = tune(train, SPACE, n_trials=12, storage=tmp_path / "parts.db", **options)
    assert _params(resumed.study) == _params(whole.study)
    sampler = whole.study.sampler
    assert isinstance(sampler, TrialSeededSampler) and sampler.name == name
    assert isinstance(sampler._sampler, KINDS[name])
    # Each trial has its own seed: the random start-up draws differ (NSGA-II's children may then
    # inherit a parent's value, by design).
    assert len({t.params["sgd.lr"] for t in whole.study.trials[:6]}) == 6


def test_gp_finds_the_closed_form_best_learning_rate():
    # (w + 2)^2 from w = 0: one step of lr = 1/2 lands on the optimum; loss 4 (1 - 2 lr)^2.
    pytest.importorskip("scipy", reason="Optuna's GPSampler needs scipy")
    space = SearchSpace({"sgd": {"lr": LogUniform(1e-3, 1.0)}})
    result = tune(
        quadratic_task(steps=1),
        space,
        n_trials=18,
        sampler="gp",
        pruner="none",
        storage=InMemoryStorage(),
    )
    assert abs(result.best.hyperparameters["lr"] - 0.5) < 0.01


def test_cmaes_leaves_the_optimizer_choice_to_tpe_without_warnings():
    pytest.importorskip("cmaes", reason="Optuna's CmaEsSampler needs cmaes")
    space = SearchSpace(["sgd", "adam"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "independent sampling" warning per parameter
        result = tune(
            quadratic_task(steps=2), space, n_trials=14, sampler="cmaes", storage=InMemoryStorage()
        )
    assert {t.params["optimizer"] for t in result.study.trials} == {"sgd", "adam"}
    independent = result.study.sampler._sampler._independent_sampler
    assert isinstance(independent, optuna.samplers.TPESampler)


def test_sampler_names_are_checked_and_sampler_objects_pass_through():
    with pytest.raises(ValueError, match=r"unknown sampler 'bayes': use one of \['tpe', 'gp'"):
        tune(quadratic_task(), SPACE, sampler="bayes", storage=InMemoryStorage())
    with pytest.raises(TypeError, match=r"sampler must be a name or an Optuna sampler, got 3"):
        make_sampler(3)
    custom = optuna.samplers.RandomSampler(seed=0)
    assert make_sampler(custom) is custom
    assert make_sampler(None).name == "tpe"
