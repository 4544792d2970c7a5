"""Search spaces and configurations: validation errors, defaults, building real optimizers."""

import inspect
import json
import math

import optuna
import pytest
import torch
from torch.optim.lr_scheduler import CosineAnnealingLR

from torchopt_edu import lr_scheduler
from torchopt_edu.optim import OPTIMIZERS
from torchopt_edu.tuning import (
    SCHEDULES,
    Categorical,
    IntUniform,
    LogUniform,
    OptimizerConfig,
    SearchSpace,
    Uniform,
    default_optimizer_space,
)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: LogUniform(0.0, 1.0), r"LogUniform needs 0 < low .* low=0\.0"),
        (lambda: LogUniform(-1e-3, 1.0), r"LogUniform needs 0 < low .* low=-0\.001"),
        (lambda: LogUniform(1.0, 1.0), r"LogUniform needs low < high, got low=1\.0, high=1\.0"),
        (lambda: Uniform(0.9, 0.1), r"Uniform needs low < high, got low=0\.9, high=0\.1"),
        (lambda: Uniform(0.0, math.inf), r"Uniform needs a finite number for high"),
        (lambda: IntUniform(3, 3), r"IntUniform needs low < high, got low=3, high=3"),
        (lambda: IntUniform(1, 2.5), r"IntUniform needs an integer high, got high=2\.5"),
        (lambda: IntUniform(0, 8, log=True), r"IntUniform\(log=True\) needs 1 <= low"),
        (lambda: Categorical(()), r"Categorical needs at least one choice"),
        (lambda: Categorical((1, 1)), r"Categorical choices must be distinct"),
        (lambda: Categorical(([0.9, 0.99],)), r"Categorical choices must be None, bool"),
    ],
)
def test_invalid_distribution_raises_naming_the_bound(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_unknown_optimizer_is_named_with_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown optimizer 'adamm'; choose from sgd, momentum"):
        SearchSpace(["adam", "adamm"])
    with pytest.raises(ValueError, match=r"unknown optimizer 'torch\.optim\.Adamm'"):
        SearchSpace(["torch.optim.Adamm"])
    with pytest.raises(ValueError, match=r"unknown optimizer 'torch\.optim\.Optimizer'"):
        SearchSpace(["torch.optim.Optimizer"])  # the base class is not an algorithm


def test_unknown_hyperparameter_names_the_class_and_what_it_takes():
    with pytest.raises(ValueError, match=r"'betaz' is not a hyper-parameter of .*Adam; it takes"):
        SearchSpace({"adam": {"lr": LogUniform(1e-4, 1e-1), "betaz": (0.9, 0.999)}})
    # torch's SGD has momentum, the seed's EMA Momentum calls it beta
    with pytest.raises(ValueError, match=r"optimizer 'momentum': 'momentum' is not a hyper-param"):
        SearchSpace({"momentum": {"momentum": Uniform(0.5, 0.9)}})
    with pytest.raises(ValueError, match=r"'params' is filled in when the object is built"):
        SearchSpace({"sgd": {"params": None}})


def test_bad_schedules_and_specs_raise():
    with pytest.raises(ValueError, match=r"unknown schedule 'cosinus'"):
        SearchSpace(["sgd"], ["constant", "cosinus"])
    with pytest.raises(ValueError, match=r"schedule 'cosine': 'T_max' is filled in"):
        SearchSpace(["sgd"], {"cosine": {"T_max": IntUniform(1, 10)}})
    with pytest.raises(ValueError, match=r"schedule 'step': 'lr_factor' is not a hyper-parameter"):
        SearchSpace(["sgd"], {"step": {"lr_factor": 2.0}})  # only schedules with an lr argument
    with pytest.raises(ValueError, match=r"schedule 'constant' takes no hyper-parameters"):
        SearchSpace(["sgd"], {"constant": {"gamma": 0.5}})
    with pytest.raises(TypeError, match=r"optimizer 'adam': hyper-parameter 'betas' must be"):
        SearchSpace({"adam": {"betas": [0.9, 0.999]}})  # a list: use a tuple
    with pytest.raises(ValueError, match=r"SearchSpace needs at least one optimizer"):
        SearchSpace([])
    with pytest.raises(ValueError, match=r"optimizers listed more than once: \['sgd'\]"):
        SearchSpace(["sgd", "adam", "sgd"])


def test_default_spaces_cover_every_optimizer_and_schedule():
    space = SearchSpace(None, ["constant", *SCHEDULES])
    assert set(space.optimizers) == set(OPTIMIZERS)
    assert set(space.schedules) == {"constant", *SCHEDULES}
    for name, optimizer_space in space.optimizers.items():
        assert isinstance(optimizer_space["lr"], LogUniform), name
    # torch.optim classes borrow the space of ours with the same name, else get a learning rate
    assert default_optimizer_space("torch.optim.Adam") == default_optimizer_space("adam")
    assert default_optimizer_space("torch.optim.NAdam") == {"lr": LogUniform(1e-4, 1.0)}


def test_every_sampled_configuration_builds_its_optimizer_and_schedule():
    space = SearchSpace([*OPTIMIZERS, "torch.optim.Adam"], ["constant", *SCHEDULES])
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(60):
        trial = study.ask()
        config = space.suggest(trial)
        seen.add((config.optimizer_name, config.schedule_name))
        weight = torch.zeros(3, requires_grad=True)
        optimizer = config.build([weight])
        assert isinstance(optimizer, config.optimizer_class)
        scheduler = config.build_scheduler(optimizer, total_steps=10)
        weight.sum().backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step(1.0) if config.schedule.needs_metric else scheduler.step()
        assert torch.isfinite(weight).all()
        study.tell(trial, 0.0)
    assert len({optimizer for optimizer, _ in seen}) == len(OPTIMIZERS) + 1


def test_suggest_names_parameters_by_optimizer_and_keeps_constants():
    space = SearchSpace(
        {"adam": {"lr": LogUniform(1e-3, 1e-1), "betas": (Uniform(0.8, 0.95), 0.999)}, "sgd": None}
    )
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    configs = [space.suggest(study.ask()) for _ in range(20)]
    adam_trials = [t for t in study.trials if t.params["optimizer"] == "adam"]
    assert adam_trials and set(adam_trials[0].params) == {"optimizer", "adam.lr", "adam.betas[0]"}
    for config in configs:
        if config.optimizer_name == "adam":
            assert config.hyperparameters["betas"][1] == 0.999
            assert 0.8 <= config.hyperparameters["betas"][0] <= 0.95


def test_config_round_trips_through_json_and_builds_ours_and_torchs_alike():
    config = OptimizerConfig(
        "adam", {"lr": 0.01, "betas": (0.85, 0.99)}, "cosine", {"eta_min": 1e-4}
    )
    again = OptimizerConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config
    assert again.hyperparameters["betas"] == (0.85, 0.99)  # JSON lists back to tuples
    ours_weight = torch.tensor([1.0, -2.0], requires_grad=True)
    torch_weight = ours_weight.detach().clone().requires_grad_()
    ours = again.build([ours_weight])
    torchs = OptimizerConfig("torch.optim.Adam", again.hyperparameters).build([torch_weight])
    assert type(ours) is OPTIMIZERS["adam"] and type(torchs) is torch.optim.Adam
    for weight, optimizer in ((ours_weight, ours), (torch_weight, torchs)):
        for _ in range(3):
            optimizer.zero_grad()
            (weight**2).sum().backward()
            optimizer.step()
    torch.testing.assert_close(ours_weight, torch_weight)


def test_schedules_get_the_run_length_and_the_learning_rate():
    weight = torch.zeros(1, requires_grad=True)
    cosine = OptimizerConfig("sgd", {"lr": 0.1}, "cosine", {})
    scheduler = cosine.build_scheduler(cosine.build([weight]), total_steps=7)
    assert isinstance(scheduler, CosineAnnealingLR) and scheduler.T_max == 7
    cyclic = OptimizerConfig("sgd", {"lr": 0.1}, "cyclic", {"base_lr": None, "lr_factor": 4.0})
    scheduler = cyclic.build_scheduler(cyclic.build([weight]), total_steps=7)
    assert isinstance(scheduler, lr_scheduler.CyclicLR)
    assert scheduler.max_lrs == [pytest.approx(0.4)]
    one_cycle = OptimizerConfig("adam", {"lr": 0.02}, "one_cycle", {"cycle_momentum": False})
    optimizer = one_cycle.build([weight])
    scheduler = one_cycle.build_scheduler(optimizer, total_steps=10)
    lrs = []
    for _ in range(9):
        optimizer.step()
        scheduler.step()
        lrs.append(optimizer.param_groups[0]["lr"])
    assert max(lrs) == pytest.approx(0.02)  # the tuned learning rate is the peak of the cycle
    assert OptimizerConfig("sgd", {"lr": 0.1}).build_scheduler(optimizer, 10) is None
    with pytest.raises(ValueError, match=r"total_steps must be a positive integer, got 0"):
        cosine.build_scheduler(cosine.build([weight]), total_steps=0)


def test_schedule_registry_matches_the_scheduler_signatures():
    for name, schedule in SCHEDULES.items():
        parameters = inspect.signature(schedule.scheduler.__init__).parameters
        for argument in (schedule.total_steps_argument, schedule.lr_argument):
            assert argument is None or argument in parameters, (name, argument)


def test_every_optimizer_of_the_package_has_its_own_checked_default_space():
    from torchopt_edu.optim import OPTIMIZERS
    from torchopt_edu.tuning.space import DEFAULT_OPTIMIZER_SPACES

    assert set(DEFAULT_OPTIMIZER_SPACES) == set(OPTIMIZERS)
    space = SearchSpace(list(OPTIMIZERS))  # checks every argument against the constructor
    assert set(space.optimizers) == set(OPTIMIZERS)
