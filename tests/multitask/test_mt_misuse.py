"""Inputs that gave a NaN, a wrong direction or a silently dropped row: each is refused naming
it, or gets the right answer (closed forms below)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from torchopt_edu.multitask import (
    DynamicWeightAverage,
    FixedWeighting,
    GradNorm,
    cagrad,
    gradient_cosine,
    mgda,
    min_norm_weights,
    pcgrad,
)
from torchopt_edu.multitask.model import Task


@pytest.mark.parametrize("c", [1.0, 2.0, 10.0])
def test_cagrad_at_a_pareto_stationary_point_with_c_at_least_1_is_zero(c):
    """g_1 = (1, 0), g_2 = (-3, 0): 0 = 0.75 g_1 + 0.25 g_2 is in their hull, so every d has
    min_i <g_i, d> <= 0 and d = 0 (feasible: ||0 - g_0|| = ||g_0|| <= c ||g_0||) attains it.
    It returned the mean gradient at c = 2 (task 1 got -1) and NaN at c = 10."""
    grads = torch.tensor([[1.0, 0.0], [-3.0, 0.0]], dtype=torch.float64)
    assert torch.equal(cagrad(grads, c), torch.zeros(2, dtype=torch.float64))
    assert torch.equal(cagrad(grads, c, rescale=False), torch.zeros(2, dtype=torch.float64))


def test_cagrad_below_1_or_away_from_stationarity_is_unchanged():
    grads = torch.tensor([[1.0, 0.0], [-3.0, 0.0]], dtype=torch.float64)
    direction = cagrad(grads, 0.5, rescale=False)
    assert (grads @ direction).min() < 0  # c < 1: 0 is outside the ball around g_0 = (-1, 0)
    agreeing = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    assert (agreeing @ cagrad(agreeing, 2.0)).min() > 0


@pytest.mark.parametrize("aggregate", [min_norm_weights, mgda, pcgrad, cagrad, gradient_cosine])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_aggregators_name_a_task_whose_gradient_is_not_finite(aggregate, bad):
    grads = torch.tensor([[1.0, 0.0], [bad, 0.0], [0.0, 1.0]])
    with pytest.raises(ValueError, match=r"grads of task\(s\) \[1\] have NaN or infinite"):
        aggregate(grads)


@pytest.mark.parametrize("scale", [1e20, 1e-30])
def test_cosines_and_cagrad_survive_float32_extremes(scale):
    grads = torch.tensor([[1.0, 0.0], [0.0, 1.0]]) * scale
    assert torch.equal(gradient_cosine(grads), torch.eye(2))
    direction = cagrad(grads, 0.5, rescale=False)
    assert bool(torch.isfinite(direction).all())
    expected = cagrad(grads.double(), 0.5, rescale=False)
    torch.testing.assert_close(direction.double(), expected, rtol=1e-6, atol=0)


def _losses(*values):
    return [torch.tensor(v, requires_grad=True) for v in values]


def test_dwa_refuses_a_zero_loss_it_would_divide_by():
    weighting = DynamicWeightAverage(2)
    weighting(_losses(1.0, 1.0))
    with pytest.raises(ValueError, match="losses must be > 0: task 0 has loss 0.0"):
        weighting(_losses(0.0, 1.0))
    assert weighting.calls == 1  # nothing recorded
    weighting(_losses(5.0, 1.0))
    assert bool(torch.isfinite(weighting(_losses(1.0, 1.0))))


def test_gradnorm_refuses_a_zero_first_loss():
    w = nn.Parameter(torch.ones(3))
    weighting = GradNorm(2, [w])
    with pytest.raises(ValueError, match="first losses must be > 0"):
        weighting([w.sum() * 0, (w**2).sum()])
    assert not weighting.started


@pytest.mark.parametrize(
    ("build", "words"),
    [
        (lambda: FixedWeighting([0, 0]), "at least one weight must be > 0"),
        (
            lambda: GradNorm(2, [nn.Parameter(torch.ones(2))], alpha=math.inf),
            "alpha must be finite",
        ),
        (lambda: DynamicWeightAverage(2, temperature=math.inf), "temperature must be finite"),
    ],
)
def test_settings_that_train_nothing_or_overflow_are_refused(build, words):
    with pytest.raises(ValueError, match=words):
        build()


@pytest.mark.parametrize(
    ("target", "words"),
    [
        (torch.tensor([0, 1, -100, 2]), "target -100 is not a class index in"),
        (torch.tensor([0, 1, 3, 2]), "target 3 is not a class index in"),
        (torch.full((4, 3), 2.0), "classification targets must be integer class indices"),
    ],
)
def test_classification_targets_must_be_class_indices(target, words):
    task = Task("a", "classification", 3)
    with pytest.raises(ValueError, match=f"task 'a': {words}"):
        task.loss(torch.randn(4, 3), target)
