"""Bad input: the same exception type as torch.optim, a message naming the parameter and value."""

from __future__ import annotations

import pytest
import torch

from torchopt_edu import optim as ours

# (our class, torch class or None, bad keyword arguments, text the message must contain)
BAD = [
    (ours.SGD, torch.optim.SGD, dict(lr=-0.1), "lr=-0.1"),
    (ours.SGD, torch.optim.SGD, dict(lr=0.1, momentum=-0.5), "momentum value: -0.5"),
    (ours.SGD, torch.optim.SGD, dict(lr=0.1, weight_decay=-1e-4), "weight_decay value: -0.0001"),
    (ours.SGD, torch.optim.SGD, dict(lr=0.1, nesterov=True), "momentum=0"),
    (
        ours.SGD,
        torch.optim.SGD,
        dict(lr=0.1, momentum=0.9, dampening=0.1, nesterov=True),
        "dampening=0.1",
    ),
    (ours.Momentum, None, dict(beta=1.0), "beta value: 1.0"),
    (ours.Momentum, None, dict(beta=-0.1), "beta value: -0.1"),
    (ours.Momentum, None, dict(lr=-1.0), "lr=-1.0"),
    (ours.Adagrad, torch.optim.Adagrad, dict(lr=-0.01), "lr=-0.01"),
    (ours.Adagrad, torch.optim.Adagrad, dict(lr_decay=-0.1), "lr_decay value: -0.1"),
    (ours.Adagrad, torch.optim.Adagrad, dict(weight_decay=-0.1), "weight_decay value: -0.1"),
    (
        ours.Adagrad,
        torch.optim.Adagrad,
        dict(initial_accumulator_value=-1.0),
        "initial_accumulator_value value: -1.0",
    ),
    (ours.Adagrad, torch.optim.Adagrad, dict(eps=-1e-10), "eps value: -1e-10"),
    (ours.RMSprop, torch.optim.RMSprop, dict(lr=-0.01), "lr=-0.01"),
    (ours.RMSprop, torch.optim.RMSprop, dict(alpha=-0.5), "alpha value: -0.5"),
    (ours.RMSprop, torch.optim.RMSprop, dict(eps=-1.0), "eps value: -1.0"),
    (ours.RMSprop, torch.optim.RMSprop, dict(momentum=-0.9), "momentum value: -0.9"),
    (ours.RMSprop, torch.optim.RMSprop, dict(weight_decay=-0.9), "weight_decay value: -0.9"),
    (ours.Adam, torch.optim.Adam, dict(lr=-1e-3), "lr=-0.001"),
    (ours.Adam, torch.optim.Adam, dict(eps=-1e-8), "eps value: -1e-08"),
    (ours.Adam, torch.optim.Adam, dict(betas=(1.0, 0.999)), "index 0: betas[0]=1.0"),
    (ours.Adam, torch.optim.Adam, dict(betas=(0.9, -0.1)), "index 1: betas[1]=-0.1"),
    (ours.Adam, torch.optim.Adam, dict(weight_decay=-0.1), "weight_decay value: -0.1"),
    (ours.AdamW, torch.optim.AdamW, dict(betas=(0.9, 1.5)), "index 1: betas[1]=1.5"),
    (ours.AdamW, torch.optim.AdamW, dict(lr=-1.0), "lr=-1.0"),
    (ours.Yogi, None, dict(eps=-1.0), "eps value: -1.0"),
    (ours.Yogi, None, dict(betas=(0.9, 1.0)), "betas[1]=1.0"),
    (ours.Yogi, None, dict(initial_accumulator_value=-1.0), "initial_accumulator_value"),
]


@pytest.mark.parametrize(
    "ours_cls, torch_cls, kwargs, message",
    BAD,
    ids=[f"{c.__name__}-{','.join(k)}" for c, _, k, _ in BAD],
)
def test_invalid_hyper_parameter_raises_like_torch_and_names_it(
    ours_cls, torch_cls, kwargs, message
):
    param = torch.nn.Parameter(torch.ones(3))
    param.grad = torch.full((3,), 0.5)
    with pytest.raises(ValueError, match=_escape(message)):
        ours_cls([param], **kwargs)
    if torch_cls is not None:  # torch.optim rejects the same input with the same type
        with pytest.raises(ValueError):
            torch_cls([param], **kwargs)
    # nothing was touched: the parameter and its gradient are as they were
    assert torch.equal(param.detach(), torch.ones(3))
    assert torch.equal(param.grad, torch.full((3,), 0.5))


def _escape(text: str) -> str:
    import re

    return re.escape(text)


@pytest.mark.parametrize(
    "cls", [ours.SGD, ours.Momentum, ours.Adagrad, ours.RMSprop, ours.Adam, ours.AdamW, ours.Yogi]
)
def test_single_tensor_instead_of_iterable_is_a_type_error_like_torch(cls):
    with pytest.raises(TypeError, match="iterable of Tensors.*got torch.FloatTensor"):
        cls(torch.ones(3, requires_grad=True))
    with pytest.raises(TypeError):
        torch.optim.SGD(torch.ones(3, requires_grad=True))


@pytest.mark.parametrize("cls", [ours.SGD, ours.Adagrad, ours.Adam, ours.AdamW])
def test_fused_and_foreach_together_is_a_runtime_error_like_torch(cls):
    with pytest.raises(RuntimeError, match="`fused` and `foreach` cannot be `True` together"):
        cls([torch.ones(2, requires_grad=True)], fused=True, foreach=True)


def test_non_numeric_hyper_parameter_is_a_type_error_naming_it():
    with pytest.raises(TypeError, match="weight_decay must be a number, got str"):
        ours.Adam([torch.ones(2, requires_grad=True)], weight_decay="0.1")


def test_nan_learning_rate_is_rejected():
    with pytest.raises(ValueError, match="lr=nan"):
        ours.SGD([torch.ones(2, requires_grad=True)], lr=float("nan"))


def test_tensor_lr_must_have_one_element():
    with pytest.raises(ValueError, match="Tensor lr must be 1-element"):
        ours.Adam([torch.ones(2, requires_grad=True)], lr=torch.tensor([0.1, 0.2]))


def test_unsupported_torch_options_say_so():
    with pytest.raises(NotImplementedError, match="capturable=True is not supported"):
        ours.Adam([torch.ones(2, requires_grad=True)], capturable=True)
    with pytest.raises(NotImplementedError, match="differentiable=True is not supported"):
        ours.SGD([torch.ones(2, requires_grad=True)], lr=0.1, differentiable=True)


def test_fused_true_on_a_configuration_without_kernel_is_refused_at_construction():
    param = torch.ones(2, requires_grad=True)
    with pytest.raises(RuntimeError, match="RMSprop: fused=True is not available.*centered=True"):
        ours.RMSprop([param], centered=True, fused=True)
    optimizer = ours.RMSprop([param], fused=True)
    with pytest.raises(RuntimeError, match="fused=True is not available.*centered=True"):
        optimizer.add_param_group({"params": [torch.ones(3, requires_grad=True)], "centered": True})
    assert len(optimizer.param_groups) == 1


def test_flat_mode_rejects_complex_and_foreach_false():
    with pytest.raises(ValueError, match="flat=True supports dense real floating-point"):
        ours.Adam([torch.ones(2, dtype=torch.complex64, requires_grad=True)], flat=True)
    with pytest.raises(ValueError, match="foreach=False"):
        ours.Adam([torch.ones(2, requires_grad=True)], flat=True, foreach=False)
