"""MultiTaskOptimizer: gradients it writes, MGDA-UB, any optimizer, errors that change nothing."""

import copy
import functools

import pytest
import torch

from torchopt_edu.multitask import (
    DIGITS_TASKS,
    MultiTaskOptimizer,
    gradient_cosine,
    mgda,
    min_norm_weights,
    pcgrad,
    shared_trunk_model,
    task_gradients,
)


def setup(seed=0):
    torch.manual_seed(seed)
    model = shared_trunk_model(64, DIGITS_TASKS, hidden=(16,))
    inputs = torch.rand(32, 64)
    targets = {"digit": torch.randint(0, 10, (32,)), "ink": torch.randn(32)}
    return model, inputs, targets


def losses_of(model, inputs, targets):
    return model.losses(model(inputs), targets)


def grads_of(model):
    return {name: p.grad.clone() for name, p in model.named_parameters()}


def sum_of(grads):
    return grads.sum(0)


@pytest.mark.parametrize("wrt", ["parameters", "representation"])
def test_sum_aggregate_equals_backward_of_the_summed_loss(wrt):
    model, inputs, targets = setup()
    reference = copy.deepcopy(model)
    sum(losses_of(reference, inputs, targets).values()).backward()
    wrapper = MultiTaskOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.0), model.shared_parameters(), sum_of, wrt=wrt
    )
    if wrt == "representation":
        z = model.trunk(inputs)
        wrapper.step(model.losses(model.head_outputs(z), targets), representation=z)
    else:
        wrapper.step(losses_of(model, inputs, targets))
    for name, grad in grads_of(model).items():
        torch.testing.assert_close(grad, dict(reference.named_parameters())[name].grad)


def test_pcgrad_goes_to_shared_parameters_and_heads_get_their_own_gradient():
    model, inputs, targets = setup()
    losses = losses_of(model, inputs, targets)
    shared = model.shared_parameters()
    grads = task_gradients(losses, shared, retain_graph=True)
    expected_shared = pcgrad(grads)
    head_grad = torch.autograd.grad(losses["digit"], model.heads["digit"].weight, retain_graph=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    before = [p.detach().clone() for p in shared]
    returned = MultiTaskOptimizer(optimizer, shared, pcgrad).step(losses)
    torch.testing.assert_close(returned, grads)
    torch.testing.assert_close(torch.cat([p.grad.reshape(-1) for p in shared]), expected_shared)
    torch.testing.assert_close(model.heads["digit"].weight.grad, head_grad[0])
    for old, new in zip(before, shared, strict=True):
        torch.testing.assert_close(new.detach(), old - 0.1 * new.grad)


def test_mgda_ub_uses_min_norm_weights_of_representation_gradients():
    model, inputs, targets = setup()
    reference = copy.deepcopy(model)
    z = reference.trunk(inputs)
    reference_losses = list(reference.losses(reference.head_outputs(z), targets).values())
    z_grads = task_gradients(reference_losses, [z], retain_graph=True)
    weights = min_norm_weights(z_grads).float()
    (weights @ torch.stack(reference_losses)).backward()

    z = model.trunk(inputs)
    wrapper = MultiTaskOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.0),
        model.shared_parameters(),
        mgda,
        wrt="representation",
    )
    wrapper.step(model.losses(model.head_outputs(z), targets), representation=z)
    for p, q in zip(model.shared_parameters(), reference.shared_parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad)


def test_task_gradients_measure_conflict():
    model, inputs, targets = setup()
    grads = task_gradients(losses_of(model, inputs, targets), model.shared_parameters())
    assert grads.shape == (2, sum(p.numel() for p in model.shared_parameters()))
    cosine = gradient_cosine(grads)
    assert -1 <= cosine[0, 1] <= 1 and cosine[0, 0].item() == pytest.approx(1.0)


def test_wraps_torch_optim_adam_with_same_result_as_manual_loop():
    model, inputs, targets = setup()
    manual = copy.deepcopy(model)
    aggregate = functools.partial(pcgrad, generator=torch.Generator().manual_seed(0))
    wrapper = MultiTaskOptimizer(
        torch.optim.Adam(model.parameters(), lr=0.01), model.shared_parameters(), aggregate
    )
    manual_optimizer = torch.optim.Adam(manual.parameters(), lr=0.01)
    manual_generator = torch.Generator().manual_seed(0)
    shared = manual.shared_parameters()
    heads = [p for p in manual.parameters() if all(p is not q for q in shared)]
    for _ in range(3):
        wrapper.step(losses_of(model, inputs, targets))
        losses = list(losses_of(manual, inputs, targets).values())
        grads = task_gradients(losses, shared, retain_graph=True)
        direction = pcgrad(grads, manual_generator).split([p.numel() for p in shared])
        head_grads = torch.autograd.grad(sum(losses), heads)
        manual_optimizer.zero_grad()
        for p, g in zip([*shared, *heads], [*direction, *head_grads], strict=True):
            p.grad = g.view_as(p)
        manual_optimizer.step()
    for p, q in zip(model.parameters(), manual.parameters(), strict=True):
        torch.testing.assert_close(p, q)


def assert_unchanged(model, optimizer, before):
    for p, old in zip(model.parameters(), before, strict=True):
        assert torch.equal(p, old) and p.grad is None
    assert not optimizer.state


@pytest.mark.parametrize(
    ("make_losses", "error", "message"),
    [
        (
            lambda m, x, y: [losses_of(m, x, y)["digit"]],
            ValueError,
            "at least 2 task losses, got 1",
        ),
        (
            lambda m, x, y: [losses_of(m, x, y)["digit"], (m.heads["ink"].bias ** 2).sum()],
            ValueError,
            "task #1 does not depend on the shared tensors",
        ),
        (
            lambda m, x, y: [losses_of(m, x, y)["digit"], torch.tensor(1.0)],
            ValueError,
            "task #1 does not require grad",
        ),
        (
            lambda m, x, y: {
                "digit": losses_of(m, x, y)["digit"] * float("nan"),
                "ink": m(x)["ink"].mean(),
            },
            ValueError,
            "loss of task 'digit' is not finite: nan",
        ),
        (
            lambda m, x, y: [losses_of(m, x, y)["digit"], (m.trunk(x).sum() * 0).sqrt()],
            ValueError,
            "gradient of task #1 is not finite",
        ),
        (lambda m, x, y: losses_of(m, x, y)["digit"], TypeError, "got Tensor"),
    ],
)
def test_bad_losses_raise_and_change_nothing(make_losses, error, message):
    model, inputs, targets = setup()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    wrapper = MultiTaskOptimizer(optimizer, model.shared_parameters(), pcgrad)
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(error, match=message):
        wrapper.step(make_losses(model, inputs, targets))
    assert_unchanged(model, optimizer, before)


def test_bad_configuration_and_aggregates_raise():
    model, inputs, targets = setup()
    optimizer = torch.optim.SGD(model.heads.parameters(), lr=0.1)
    with pytest.raises(
        ValueError, match="shared parameter #0 .* not in the optimizer's param_groups"
    ):
        MultiTaskOptimizer(optimizer, model.shared_parameters(), pcgrad)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(TypeError, match="must be a torch.optim.Optimizer, got list"):
        MultiTaskOptimizer([], model.shared_parameters(), pcgrad)
    with pytest.raises(
        ValueError, match="wrt must be 'parameters' or 'representation', got 'heads'"
    ):
        MultiTaskOptimizer(optimizer, model.shared_parameters(), pcgrad, wrt="heads")
    ub = MultiTaskOptimizer(optimizer, model.shared_parameters(), mgda, wrt="representation")
    with pytest.raises(ValueError, match="needs step\\(losses, representation=z\\)"):
        ub.step(losses_of(model, inputs, targets))
    plain = MultiTaskOptimizer(optimizer, model.shared_parameters(), mgda)
    with pytest.raises(ValueError, match="representation is only used with wrt='representation'"):
        plain.step(losses_of(model, inputs, targets), representation=model.trunk(inputs))
    before = [p.detach().clone() for p in model.parameters()]
    wrong = MultiTaskOptimizer(optimizer, model.shared_parameters(), lambda grads: grads)
    with pytest.raises(ValueError, match=r"aggregate must return a tensor of shape \(1040,\)"):
        wrong.step(losses_of(model, inputs, targets))
    assert_unchanged(model, optimizer, before)


def snapshot(model, optimizer):
    params = [p.detach().clone() for p in model.parameters()]
    grads = [None if p.grad is None else p.grad.clone() for p in model.parameters()]
    state = copy.deepcopy(optimizer.state_dict())
    return params, grads, state


def assert_same_snapshot(model, optimizer, snap):
    params, grads, state = snap
    for p, old, old_grad in zip(model.parameters(), params, grads, strict=True):
        assert torch.equal(p, old)
        assert (p.grad is None) == (old_grad is None)
        if old_grad is not None:
            assert torch.equal(p.grad, old_grad)
    new_state = optimizer.state_dict()["state"]
    assert new_state.keys() == state["state"].keys()
    for key, entry in state["state"].items():
        for name, value in entry.items():
            assert torch.equal(torch.as_tensor(new_state[key][name]), torch.as_tensor(value))


def stepped_wrapper(wrt="parameters"):
    """A wrapper around Adam that has already stepped once (state and .grad exist)."""
    model, inputs, targets = setup()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    wrapper = MultiTaskOptimizer(optimizer, model.shared_parameters(), mgda, wrt=wrt)
    if wrt == "representation":
        z = model.trunk(inputs)
        wrapper.step(model.losses(model.head_outputs(z), targets), representation=z)
    else:
        wrapper.step(losses_of(model, inputs, targets))
    return model, inputs, targets, optimizer, wrapper


@pytest.mark.parametrize("wrt", ["parameters", "representation"])
def test_non_finite_head_gradient_raises_naming_the_task_and_changes_nothing(wrt):
    model, inputs, targets, optimizer, wrapper = stepped_wrapper(wrt)
    with torch.no_grad():
        model.heads["ink"].bias.zero_()
    snap = snapshot(model, optimizer)
    z = model.trunk(inputs)
    outputs = model.head_outputs(z)
    # Finite loss, but d/d bias of sqrt(|bias|) at 0 is inf: only the head's gradient is bad.
    ink = outputs["ink"].pow(2).mean() + (model.heads["ink"].bias.abs().sqrt() * z).mean()
    losses = {"digit": model.losses(outputs, targets)["digit"], "ink": ink}
    kwargs = {"representation": z} if wrt == "representation" else {}
    with pytest.raises(ValueError, match="gradient of task 'ink' is not finite"):
        wrapper.step(losses, **kwargs)
    assert_same_snapshot(model, optimizer, snap)


def test_representation_mode_checks_the_pass_through_the_trunk():
    torch.manual_seed(0)
    weight = torch.nn.Parameter(torch.randn(3, 4))
    bias = torch.nn.Parameter(torch.zeros(4))
    heads = [torch.nn.Linear(4, 1), torch.nn.Linear(4, 1)]
    params = [weight, bias, *heads[0].parameters(), *heads[1].parameters()]
    optimizer = torch.optim.SGD(params, lr=0.1)
    wrapper = MultiTaskOptimizer(optimizer, [weight, bias], mgda, wrt="representation")
    inputs = torch.randn(5, 3)
    z = inputs @ weight + bias.sqrt()  # finite z and grad_z L_i, but dz/dbias = inf at 0
    losses = [head(z).pow(2).mean() for head in heads]
    before = [p.detach().clone() for p in params]
    with pytest.raises(ValueError, match="not finite after the pass through the shared"):
        wrapper.step(losses, representation=z)
    for p, old in zip(params, before, strict=True):
        assert torch.equal(p, old) and p.grad is None
    assert not optimizer.state


def test_representation_detached_from_the_trunk_raises_and_changes_nothing():
    model, inputs, targets, optimizer, wrapper = stepped_wrapper("representation")
    snap = snapshot(model, optimizer)
    z = model.trunk(inputs).detach().requires_grad_()
    with pytest.raises(ValueError, match="does not depend on the shared parameters"):
        wrapper.step(model.losses(model.head_outputs(z), targets), representation=z)
    assert_same_snapshot(model, optimizer, snap)
