"""Loss weightings: formulas with known answers, learned parameters, errors that change nothing."""

import math

import pytest
import torch
from torch import nn

from torchopt_edu.multitask import (
    DynamicWeightAverage,
    FixedWeighting,
    GradNorm,
    UncertaintyWeighting,
)


def scalars(*values):
    return [torch.tensor(v, dtype=torch.float32, requires_grad=True) for v in values]


def test_fixed_weighting_is_the_documents_alpha_sum():
    alpha = 0.5
    cls_loss, reg_loss = scalars(1.2, 3.0)
    total = FixedWeighting([alpha, 1 - alpha])({"cls": cls_loss, "reg": reg_loss})
    torch.testing.assert_close(total, torch.tensor(alpha * 1.2 + (1 - alpha) * 3.0))
    total.backward()
    assert cls_loss.grad == alpha and reg_loss.grad == 1 - alpha


def test_uncertainty_weighting_formula():
    weighting = UncertaintyWeighting(["classification", "regression"])
    with torch.no_grad():
        weighting.log_variance.copy_(torch.tensor([0.3, -0.7]))
    total = weighting(scalars(1.5, 2.0))
    # c exp(-s) L + s / 2 with c = 1 (classification), 1/2 (regression).
    expected = math.exp(-0.3) * 1.5 + 0.15 + 0.5 * math.exp(0.7) * 2.0 - 0.35
    assert total.item() == pytest.approx(expected, rel=1e-6)
    torch.testing.assert_close(
        weighting.weights, torch.tensor([math.exp(-0.3), 0.5 * math.exp(0.7)])
    )


def test_uncertainty_weighting_learns_sigma_squared_equal_to_2c_times_loss():
    weighting = UncertaintyWeighting(["classification", "regression"])
    optimizer = torch.optim.Adam(weighting.parameters(), lr=0.05)
    for _ in range(600):
        optimizer.zero_grad()
        weighting(scalars(1.5, 2.0)).backward()
        optimizer.step()
    # d/ds (c e^{-s} L + s/2) = 0  =>  sigma^2 = e^s = 2 c L: 2*1*1.5 = 3 and 2*0.5*2 = 2.
    torch.testing.assert_close(
        weighting.log_variance.exp(), torch.tensor([3.0, 2.0]), rtol=1e-3, atol=0
    )


def test_dynamic_weight_average_follows_loss_ratios():
    weighting = DynamicWeightAverage(2, temperature=2.0)
    weighting(scalars(1.0, 1.0))
    torch.testing.assert_close(weighting.weights, torch.ones(2))  # first two periods: 1
    weighting(scalars(0.5, 0.9))
    ratio = torch.tensor([0.5 / 1.0, 0.9 / 1.0])
    expected = 2 * torch.softmax(ratio / 2.0, dim=0)
    torch.testing.assert_close(weighting.weights, expected)
    assert expected[1] > expected[0]  # the slower task gains weight
    total = weighting(scalars(2.0, 3.0))
    torch.testing.assert_close(total, expected @ torch.tensor([2.0, 3.0]))


def test_dynamic_weight_average_periods_average_and_resume_from_state_dict():
    weighting = DynamicWeightAverage(2, period=2)
    for values in [(1.0, 2.0), (3.0, 2.0), (1.0, 1.0), (1.0, 3.0)]:
        weighting(scalars(*values))
    # period means: (2, 2) then (1, 2): ratios (0.5, 1).
    torch.testing.assert_close(weighting.weights, 2 * torch.softmax(torch.tensor([0.25, 0.5]), 0))
    weighting(scalars(4.0, 1.0))  # half of a period
    resumed = DynamicWeightAverage(2, period=2)
    resumed.load_state_dict(weighting.state_dict())
    for module in (weighting, resumed):
        module(scalars(2.0, 1.0))
    torch.testing.assert_close(resumed.weights, weighting.weights)
    torch.testing.assert_close(
        weighting.weights, 2 * torch.softmax(torch.tensor([3.0 / 1.0, 1.0 / 2.0]) / 2.0, 0)
    )


def two_task_net():
    torch.manual_seed(0)
    shared = nn.Linear(3, 4)
    heads = nn.ModuleList([nn.Linear(4, 1), nn.Linear(4, 1)])
    inputs = torch.randn(8, 3)

    def losses():
        z = torch.relu(shared(inputs))
        return [(heads[0](z) ** 2).mean(), (3 * heads[1](z) - 1).pow(2).mean()]

    return shared, heads, losses


def test_gradnorm_gives_network_the_weighted_gradient_and_weights_the_balance_gradient():
    shared, heads, losses = two_task_net()
    gradnorm = GradNorm(2, [shared.weight], alpha=1.5)
    with torch.no_grad():
        gradnorm.task_weights.copy_(torch.tensor([0.5, 1.5]))
    values = losses()
    norms = torch.stack(
        [torch.autograd.grad(v, shared.weight, retain_graph=True)[0].norm() for v in values]
    )
    gradnorm(values).backward()
    # First call: L/L0 = 1, so r = 1 and the target is the mean of G_i = w_i ||grad_W L_i||.
    weights = torch.tensor([0.5, 1.5])
    g = weights * norms
    expected_weight_grad = torch.sign(g - g.mean()) * norms
    torch.testing.assert_close(gradnorm.task_weights.grad, expected_weight_grad)
    reference_shared, reference_heads, reference_losses = two_task_net()
    (weights @ torch.stack(reference_losses())).backward()
    torch.testing.assert_close(shared.weight.grad, reference_shared.weight.grad)
    torch.testing.assert_close(heads[1].weight.grad, reference_heads[1].weight.grad)


def test_gradnorm_renormalises_weights_and_uses_initial_losses():
    shared, heads, losses = two_task_net()
    gradnorm = GradNorm(2, shared.parameters())
    optimizer = torch.optim.SGD(
        [*shared.parameters(), *heads.parameters(), *gradnorm.parameters()], lr=0.05
    )
    first = torch.stack(losses()).detach()
    for _ in range(5):
        optimizer.zero_grad()
        gradnorm(losses()).backward()
        optimizer.step()
    torch.testing.assert_close(gradnorm.initial_losses, first)
    assert gradnorm.weights.sum().item() == pytest.approx(2.0)
    assert not torch.allclose(gradnorm.weights, torch.ones(2))


def test_gradnorm_task_without_shared_gradient_raises_and_changes_nothing():
    shared, heads, losses = two_task_net()
    gradnorm = GradNorm(2, [shared.weight])
    unrelated = (heads[1].bias ** 2).sum()
    with pytest.raises(ValueError, match="task #1 does not depend on the shared parameters"):
        gradnorm([losses()[0], unrelated])
    assert not gradnorm.started and torch.equal(gradnorm.task_weights, torch.ones(2))


@pytest.mark.parametrize(
    "make",
    [
        lambda: FixedWeighting([0.5, 0.5]),
        lambda: UncertaintyWeighting(["classification", "regression"]),
        lambda: DynamicWeightAverage(2),
    ],
)
def test_weightings_reject_bad_losses(make):
    weighting = make()
    state = {k: v.clone() for k, v in weighting.state_dict().items() if torch.is_tensor(v)}
    with pytest.raises(ValueError, match="expected 2 task losses, got 3"):
        weighting(scalars(1.0, 2.0, 3.0))
    with pytest.raises(ValueError, match=r"loss of task #1 is not finite: nan"):
        weighting(scalars(1.0, float("nan")))
    with pytest.raises(ValueError, match=r"loss of task 'reg' is not finite: inf"):
        weighting(dict(zip(["cls", "reg"], scalars(1.0, float("inf")), strict=True)))
    with pytest.raises(ValueError, match="loss of task #0 does not require grad"):
        weighting([torch.tensor(1.0), *scalars(2.0)])
    with pytest.raises(ValueError, match=r"must be a scalar, got shape \(2,\)"):
        weighting([torch.ones(2, requires_grad=True), *scalars(2.0)])
    with pytest.raises(TypeError, match="got Tensor"):
        weighting(torch.ones(2, requires_grad=True))
    for key, value in state.items():
        torch.testing.assert_close(weighting.state_dict()[key], value)


def test_weightings_reject_bad_settings():
    with pytest.raises(ValueError, match=r"weights must be finite and >= 0, got \[0.5, -1.0\]"):
        FixedWeighting([0.5, -1.0])
    with pytest.raises(ValueError, match="num_tasks must be an int >= 2, got 1"):
        FixedWeighting([1.0])
    with pytest.raises(ValueError, match=r"kinds must be .* got \['ranking'\]"):
        UncertaintyWeighting(["regression", "ranking"])
    with pytest.raises(ValueError, match="temperature must be finite and > 0, got 0"):
        DynamicWeightAverage(2, temperature=0)
    with pytest.raises(ValueError, match="non-empty list of tensors requiring grad"):
        GradNorm(2, [])
