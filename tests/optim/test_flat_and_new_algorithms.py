"""Flat-buffer mode behaviour, and the algorithms torch.optim does not have: Momentum, Yogi."""

from __future__ import annotations

import copy

import pytest
import torch
from optim_cases import assert_close_lists, clone_params, make_params, set_grads

from torchopt_edu import optim as ours

# ---------------------------------------------------------------------------------------
# flat buffers


def _mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))


def test_flat_mode_packs_parameters_and_gradients_into_one_buffer():
    model = _mlp()
    values = [p.detach().clone() for p in model.parameters()]
    optimizer = ours.Adam(model.parameters(), lr=0.01, flat=True)
    (slab,) = optimizer._flat_groups[0].slabs
    assert slab.param_buffer.numel() == sum(v.numel() for v in values)

    def shares(tensor, buffer):
        return tensor.untyped_storage().data_ptr() == buffer.untyped_storage().data_ptr()

    for p, value in zip(model.parameters(), values, strict=True):
        assert torch.equal(p.detach(), value)  # values kept
        assert shares(p, slab.param_buffer)
        assert p.grad is None  # no gradient invented: unused parameters stay untouched
    model(torch.randn(4, 6)).sum().backward()
    optimizer.step()  # the fresh gradients are copied in; from now on they are views
    optimizer.zero_grad(set_to_none=False)
    assert slab.grad_buffer.abs().sum() == 0
    model(torch.randn(4, 6)).sum().backward()  # autograd accumulates into the buffer
    assert slab.grad_buffer.abs().sum() > 0
    for p in model.parameters():
        assert shares(p.grad, slab.grad_buffer)
        assert shares(optimizer.state[p]["exp_avg"], slab.flat_state["exp_avg"])


@pytest.mark.parametrize("zero_grad", ["optimizer_in_place", "optimizer", "module"])
def test_flat_training_equals_normal_training(zero_grad):
    flat_model, model = _mlp(), _mlp()
    flat_opt = ours.AdamW(flat_model.parameters(), lr=0.01, flat=True)
    opt = ours.AdamW(model.parameters(), lr=0.01)
    inputs, targets = torch.randn(16, 6), torch.randn(16, 2)
    for _ in range(20):
        for m, o in ((flat_model, flat_opt), (model, opt)):
            if zero_grad == "optimizer_in_place":
                o.zero_grad(set_to_none=False)  # flat: one memset, gradients stay in the buffer
            elif zero_grad == "optimizer":
                o.zero_grad()  # gradients become fresh tensors, copied into the buffer at step
            else:
                m.zero_grad()
            torch.nn.functional.mse_loss(m(inputs), targets).backward()
            o.step()
    assert_close_lists(list(flat_model.parameters()), list(model.parameters()), torch.float32)


def test_flat_mode_with_a_missing_gradient_falls_back_and_skips_that_parameter():
    reference = make_params(torch.float64)
    candidate = clone_params(reference)
    normal = ours.SGD(reference, lr=0.1, momentum=0.9)
    flat = ours.SGD(candidate, lr=0.1, momentum=0.9, flat=True)
    for step in range(8):
        set_grads([reference, candidate], step)
        if step in (3, 4):  # the scalar parameter gets no gradient: it must not move
            reference[3].grad = None
            candidate[3].grad = None
        normal.step()
        flat.step()
    assert_close_lists(candidate, reference, torch.float64)


def test_flat_state_dict_round_trip_and_resume():
    uninterrupted = make_params(torch.float64)
    resumed = clone_params(uninterrupted)
    reference = ours.RMSprop(uninterrupted, centered=True, flat=True)
    first = ours.RMSprop(resumed, centered=True, flat=True)
    for step in range(5):
        set_grads([uninterrupted, resumed], step)
        reference.step()
        first.step()
    saved = copy.deepcopy(first.state_dict())
    second = ours.RMSprop(resumed, centered=True, flat=True)
    second.load_state_dict(saved)
    state_views = second.state[resumed[0]]["square_avg"]
    slab = second._flat_groups[0].slabs[0]
    assert state_views.untyped_storage().data_ptr() == (
        slab.flat_state["square_avg"].untyped_storage().data_ptr()
    )
    for step in range(5, 12):
        set_grads([uninterrupted, resumed], step)
        reference.step()
        second.step()
    assert_close_lists(resumed, uninterrupted, torch.float64)


# ---------------------------------------------------------------------------------------
# Momentum: the document's EMA form


@pytest.mark.parametrize("impl", [dict(foreach=False), dict(foreach=True), dict(), dict(flat=True)])
def test_momentum_closed_form_on_a_constant_gradient(impl):
    # With g constant: v_t = (1 - beta^t) g, so theta_T = theta_0 - lr g sum_{t<=T} (1 - beta^t).
    lr, beta, g, steps = 0.1, 0.9, 2.0, 30
    theta = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    optimizer = ours.Momentum([theta], lr=lr, beta=beta, **impl)
    for _ in range(steps):
        theta.grad = torch.full((3,), g, dtype=torch.float64)
        optimizer.step()
    expected = -lr * g * sum(1 - beta**t for t in range(1, steps + 1))
    torch.testing.assert_close(
        theta.detach(), torch.full((3,), expected, dtype=torch.float64), rtol=1e-12, atol=0
    )
    velocity = optimizer.state[theta]["momentum_buffer"]
    torch.testing.assert_close(
        velocity, torch.full((3,), (1 - beta**steps) * g, dtype=torch.float64), rtol=1e-12, atol=0
    )


def test_momentum_differs_from_torch_sgd_dampening_only_by_the_first_step():
    # Same update v = beta*v + (1-beta)*g, different start: torch v_1 = g_1, ours v_1 = (1-beta)g_1.
    # So the velocities differ by exactly beta^t * g_1 at step t.
    beta = 0.8
    ours_params = make_params(torch.float64)
    torch_params = clone_params(ours_params)
    momentum = ours.Momentum(ours_params, lr=0.05, beta=beta)
    sgd = torch.optim.SGD(torch_params, lr=0.05, momentum=beta, dampening=beta)
    first_grads = None
    for step in range(1, 11):
        set_grads([ours_params, torch_params], step)
        if first_grads is None:
            first_grads = [p.grad.clone() for p in ours_params]
        momentum.step()
        sgd.step()
        for p, q, g1 in zip(ours_params, torch_params, first_grads, strict=True):
            gap = sgd.state[q]["momentum_buffer"] - momentum.state[p]["momentum_buffer"]
            torch.testing.assert_close(gap, beta**step * g1, rtol=1e-10, atol=1e-12)


def test_momentum_with_beta_zero_is_plain_sgd():
    ours_params = make_params(torch.float64)
    torch_params = clone_params(ours_params)
    momentum = ours.Momentum(ours_params, lr=0.1, beta=0.0, weight_decay=0.01)
    sgd = torch.optim.SGD(torch_params, lr=0.1, weight_decay=0.01)
    for step in range(10):
        set_grads([ours_params, torch_params], step)
        momentum.step()
        sgd.step()
    assert_close_lists(ours_params, torch_params, torch.float64)


# ---------------------------------------------------------------------------------------
# Yogi


def _yogi_by_hand(theta, grads, lr, beta1, beta2, eps, v0):
    m = torch.zeros_like(theta)
    v = torch.full_like(theta, v0)
    for t, g in enumerate(grads, start=1):
        m = beta1 * m + (1 - beta1) * g
        v = v - (1 - beta2) * torch.sign(v - g * g) * g * g
        m_hat = m / (1 - beta1**t)
        theta = theta - lr * m_hat / (torch.sqrt(v) / (1 - beta2**t) ** 0.5 + eps)
    return theta


@pytest.mark.parametrize("impl", [dict(foreach=False), dict(foreach=True), dict(flat=True)])
def test_yogi_matches_the_equations(impl):
    generator = torch.Generator().manual_seed(0)
    theta0 = torch.randn(5, dtype=torch.float64, generator=generator)
    grads = [
        torch.randn(5, dtype=torch.float64, generator=generator) * (10 if t == 3 else 1)
        for t in range(12)
    ]
    theta = theta0.clone().requires_grad_()
    optimizer = ours.Yogi(
        [theta], lr=0.05, betas=(0.9, 0.99), eps=1e-3, initial_accumulator_value=1e-2, **impl
    )
    for g in grads:
        theta.grad = g.clone()
        optimizer.step()
    expected = _yogi_by_hand(theta0, grads, 0.05, 0.9, 0.99, 1e-3, 1e-2)
    torch.testing.assert_close(theta.detach(), expected, rtol=1e-12, atol=1e-14)


def test_yogi_second_moment_changes_additively():
    # One huge gradient, then small ones: Adam's v shrinks geometrically by beta2 each step,
    # Yogi's by (1-beta2) g^2 only, so Yogi keeps v (and a small effective step) longer.
    theta_adam = torch.zeros(1, requires_grad=True, dtype=torch.float64)
    theta_yogi = torch.zeros(1, requires_grad=True, dtype=torch.float64)
    adam = ours.Adam([theta_adam], betas=(0.9, 0.9))
    yogi = ours.Yogi([theta_yogi], betas=(0.9, 0.9), initial_accumulator_value=0.0)
    for g in [100.0] + [0.1] * 20:
        for theta, optimizer in ((theta_adam, adam), (theta_yogi, yogi)):
            theta.grad = torch.tensor([g], dtype=torch.float64)
            optimizer.step()
    v_adam = adam.state[theta_adam]["exp_avg_sq"].item()
    v_yogi = yogi.state[theta_yogi]["exp_avg_sq"].item()
    assert v_yogi == pytest.approx(0.1 * 100.0**2 - 20 * 0.1 * 0.1**2)
    assert v_adam < v_yogi / 5


def test_flat_mode_detects_a_model_moved_after_construction():
    model = _mlp()
    optimizer = ours.SGD(model.parameters(), lr=0.1, flat=True)
    model.double()  # replaces every parameter's storage: the buffer no longer backs them
    model(torch.randn(2, 6, dtype=torch.float64)).sum().backward()
    with pytest.raises(RuntimeError, match="no longer lives in the optimizer's buffer"):
        optimizer.step()


def test_flat_mode_with_a_parameter_that_starts_late_matches_normal_mode():
    reference = make_params(torch.float64)
    candidate = clone_params(reference)
    normal = ours.Adam(reference, lr=0.1)
    flat = ours.Adam(candidate, lr=0.1, flat=True)
    for step in range(6):
        set_grads([reference, candidate], step)
        if step == 0:  # first step without the scalar: its state starts one step later
            reference[3].grad = None
            candidate[3].grad = None
        normal.step()
        flat.step()
    assert_close_lists(candidate, reference, torch.float64)
