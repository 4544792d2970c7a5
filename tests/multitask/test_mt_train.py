"""Every method trains a real two-task network on scikit-learn's digits; the CAGrad toy."""

import functools

import pytest
import torch

from torchopt_edu.multitask import (
    DIGITS_TASKS,
    DynamicWeightAverage,
    FixedWeighting,
    GradNorm,
    UncertaintyWeighting,
    cagrad,
    evaluate,
    load_digits_tasks,
    mean_gradient,
    mgda,
    pcgrad,
    shared_trunk_model,
    train_multitask,
)
from torchopt_edu.multitask.toy import cagrad_toy, toy_paths
from torchopt_edu.optim import Adam


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # Tiny matrices: extra threads only add contention on a shared 2-core machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def digits():
    return load_digits_tasks(seed=0)


METHODS = {
    # name: (method factory, wrt, minimum test accuracy, maximum test MSE of "ink")
    "fixed 0.5": (lambda model: FixedWeighting([0.5, 0.5]), "parameters", 0.95, 0.2),
    "uncertainty": (
        lambda model: UncertaintyWeighting(["classification", "regression"]),
        "parameters",
        0.95,
        0.2,
    ),
    "dwa": (lambda model: DynamicWeightAverage(2), "parameters", 0.95, 0.2),
    "gradnorm": (
        lambda model: GradNorm(2, model.last_shared_parameters()),
        "parameters",
        0.95,
        0.2,
    ),
    "mean": (lambda model: mean_gradient, "parameters", 0.95, 0.2),
    "pcgrad": (
        lambda model: functools.partial(pcgrad, generator=torch.Generator().manual_seed(0)),
        "parameters",
        0.95,
        0.2,
    ),
    "cagrad": (lambda model: functools.partial(cagrad, c=0.4), "parameters", 0.95, 0.2),
    # MGDA follows the min-norm direction, which favours the classification task here.
    "mgda": (lambda model: mgda, "parameters", 0.95, 0.4),
    "mgda-ub": (lambda model: mgda, "representation", 0.95, 0.4),
}


@pytest.mark.parametrize("name", METHODS)
def test_method_reaches_stated_accuracy_and_error_on_digits(name, digits):
    make, wrt, min_accuracy, max_mse = METHODS[name]
    train, test = digits
    torch.manual_seed(0)
    model = shared_trunk_model(64, DIGITS_TASKS)
    untrained = evaluate(model, test)
    history = train_multitask(
        model,
        train,
        make(model),
        lambda params: Adam(params, lr=0.01),
        steps=300,
        batch_size=64,
        wrt=wrt,
        conflict_every=100,
    )
    metrics = evaluate(model, test)
    assert untrained["digit"] < 0.3 and untrained["ink"] > 0.5
    assert metrics["digit"] >= min_accuracy, metrics
    assert metrics["ink"] <= max_mse, metrics
    assert len(history.losses["digit"]) == 300 and len(history.conflict) == 3
    assert all(-1 <= cosine <= 1 for _, cosine in history.conflict)


def test_ours_and_torch_optim_train_the_same_network(digits):
    train, _ = digits
    models = []
    for optimizer in (Adam, torch.optim.Adam):
        torch.manual_seed(0)
        model = shared_trunk_model(64, DIGITS_TASKS, hidden=(32,))
        train_multitask(
            model,
            train,
            functools.partial(cagrad, c=0.4),
            lambda params, make=optimizer: make(params, lr=0.01),
            steps=40,
        )
        models.append(model)
    for ours, theirs in zip(models[0].parameters(), models[1].parameters(), strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


def test_training_rejects_bad_settings(digits):
    train, _ = digits
    model = shared_trunk_model(64, DIGITS_TASKS)
    with pytest.raises(ValueError, match="steps must be an int >= 1, got 0"):
        train_multitask(model, train, mgda, lambda params: Adam(params), steps=0)
    with pytest.raises(ValueError, match="batch_size must be an int >= 1, got 0"):
        train_multitask(model, train, mgda, lambda params: Adam(params), batch_size=0)


def test_toy_average_is_stationary_at_the_papers_optimum():
    point = torch.tensor([0.0, -8.3552], dtype=torch.float64, requires_grad=True)
    losses = cagrad_toy(point)
    (gradient,) = torch.autograd.grad(losses.mean(), point)
    assert gradient.abs().max() < 1e-4
    torch.testing.assert_close(losses[0], losses[1])  # the landscape's mirror symmetry


def test_toy_paths_batch_is_separate_runs():
    starts = [(-8.5, 7.5), (9.0, 9.0)]
    batch = toy_paths(pcgrad, starts, lambda params: Adam(params, lr=0.01), 30)
    for index, start in enumerate(starts):
        alone = toy_paths(pcgrad, [start], lambda params: Adam(params, lr=0.01), 30)
        torch.testing.assert_close(batch[:, index], alone[:, 0])


@pytest.mark.parametrize(
    ("aggregate", "end"),
    [(mean_gradient, (0.0, -8.3552)), (mgda, (-7.0, -8.43))],  # middle vs. end of the Pareto set
)
def test_toy_paths_from_the_lower_start(aggregate, end):
    path = toy_paths(aggregate, [(-8.5, -5.0)], lambda params: Adam(params, lr=0.02), 1000)
    torch.testing.assert_close(
        path[-1, 0], torch.tensor(end, dtype=torch.float64), atol=0.15, rtol=0
    )
