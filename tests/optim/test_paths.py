"""Which path runs, and the paths the parity matrix does not reach on its own.

``fused=True`` run to completed steps, the kernel the default picks, parameters whose first
gradient arrives late, flat mode after ``zero_grad(set_to_none=True)``, and checkpoints of an
older torch that lack the newer options.
"""

from __future__ import annotations

import copy

import pytest
import torch
from optim_cases import CASES, assert_close_lists, case_id, clone_params, make_params, set_grads

import torchopt_edu.optim as ours

RMSPROP_UNFUSABLE = ("momentum", "centered", "weight_decay", "maximize")


def _fusable(cls: type, kwargs: dict) -> bool:
    if cls is ours.RMSprop:
        return not any(kwargs.get(k) for k in RMSPROP_UNFUSABLE) and kwargs.get("alpha", 0.99) < 1
    return True


@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
def test_fused_true_runs_to_completed_steps_with_torchs_numbers(case):
    ours_cls, torch_cls, kwargs = case
    reference = make_params(torch.float64)
    candidate = clone_params(reference)
    if not _fusable(ours_cls, kwargs):
        with pytest.raises(RuntimeError, match="fused=True is not available"):
            ours_cls(candidate, fused=True, **kwargs)
        return
    torch_opt = torch_cls(reference, **kwargs)
    our_opt = ours_cls(candidate, fused=True, **kwargs)
    for step in range(20):
        set_grads([reference, candidate], step)
        torch_opt.step()
        our_opt.step()
    assert_close_lists(candidate, reference, torch.float64)


KERNELS = {
    ours.SGD: "_fused_sgd_",
    ours.Momentum: "_fused_sgd_",
    ours.Adagrad: "_fused_adagrad_",
    ours.RMSprop: "_fused_adam_",
    ours.Adam: "_fused_adam_",
    ours.AdamW: "_fused_adamw_",
}


def _count_calls(monkeypatch: pytest.MonkeyPatch, name: str) -> list[int]:
    calls: list[int] = []
    kernel = getattr(torch, name)

    def counting(*args, **kwargs):
        calls.append(len(args[0]))
        return kernel(*args, **kwargs)

    monkeypatch.setattr(torch, name, counting)
    return calls


@pytest.mark.parametrize("cls", list(KERNELS), ids=lambda c: c.__name__)
def test_the_default_runs_torchs_fused_kernel(cls, monkeypatch):
    calls = _count_calls(monkeypatch, KERNELS[cls])
    params = make_params(torch.float32)
    optimizer = cls(params, lr=0.01)
    set_grads([params], 0)
    optimizer.step()
    assert sum(calls) == len(params)


@pytest.mark.parametrize(
    "cls, kwargs, kernel",
    [
        (ours.RMSprop, dict(centered=True), "_fused_adam_"),
        (ours.RMSprop, dict(momentum=0.9), "_fused_adam_"),
        (ours.SGD, dict(foreach=True), "_fused_sgd_"),
        (ours.Adam, dict(foreach=False), "_fused_adam_"),
    ],
)
def test_the_default_skips_the_kernel_where_its_math_differs(cls, kwargs, kernel, monkeypatch):
    calls = _count_calls(monkeypatch, kernel)
    params = make_params(torch.float64)
    twins = clone_params(params)
    optimizer = cls(params, lr=0.01, **kwargs)
    twin = getattr(torch.optim, cls.__name__)(twins, lr=0.01, **kwargs)
    for step in range(3):
        set_grads([params, twins], step)
        optimizer.step()
        twin.step()
    assert calls == []
    assert_close_lists(params, twins, torch.float64)


def test_half_precision_sgd_on_cpu_avoids_the_fused_kernel(monkeypatch):
    calls = _count_calls(monkeypatch, "_fused_sgd_")
    param = torch.randn(100, dtype=torch.float16, requires_grad=True)
    optimizer = ours.SGD([param], lr=0.1, momentum=0.9)
    param.grad = torch.ones_like(param)
    optimizer.step()
    assert calls == []


@pytest.mark.parametrize("flat", [False, True], ids=["default", "flat"])
@pytest.mark.parametrize(
    "case", [c for c in CASES if c[0] in (ours.SGD, ours.Adam, ours.RMSprop)], ids=case_id
)
def test_a_parameter_whose_first_gradient_arrives_late_matches_torch(case, flat):
    ours_cls, torch_cls, kwargs = case
    reference = make_params(torch.float64)
    candidate = clone_params(reference)
    torch_opt = torch_cls(reference, **kwargs)
    our_opt = ours_cls(candidate, flat=flat, **kwargs)
    for step in range(6):
        set_grads([reference, candidate], step)
        if step < 2:  # the last parameter gets no gradient for two steps
            reference[-1].grad = candidate[-1].grad = None
        torch_opt.step()
        our_opt.step()
    assert_close_lists(candidate, reference, torch.float64)
    first_state, late_state = our_opt.state[candidate[0]], our_opt.state[candidate[-1]]
    if "step" in first_state:
        assert (first_state["step"].item(), late_state["step"].item()) == (6, 4)


@pytest.mark.parametrize("cls", [ours.Adam, ours.SGD, ours.Adagrad])
def test_flat_mode_after_zero_grad_set_to_none_matches_torch(cls):
    reference = make_params(torch.float64)
    candidate = clone_params(reference)
    kwargs = dict(lr=0.05, momentum=0.9) if cls is ours.SGD else dict(lr=0.05)
    torch_opt = getattr(torch.optim, cls.__name__)(reference, **kwargs)
    our_opt = cls(candidate, flat=True, **kwargs)
    for step in range(5):
        set_grads([reference, candidate], step)
        torch_opt.step()
        our_opt.step()
        torch_opt.zero_grad(set_to_none=True)
        our_opt.zero_grad(set_to_none=True)
        assert all(p.grad is None for p in candidate)
    assert_close_lists(candidate, reference, torch.float64)


NEWER_OPTIONS = (
    "foreach",
    "maximize",
    "capturable",
    "differentiable",
    "fused",
    "decoupled_weight_decay",
)


@pytest.mark.parametrize(
    "cls, kwargs",
    [
        (ours.Adam, dict(lr=0.01, weight_decay=0.1)),
        (ours.AdamW, dict(lr=0.01)),
        (ours.SGD, dict(lr=0.05, momentum=0.9)),
        (ours.RMSprop, dict(lr=0.01)),
    ],
)
def test_an_older_state_dict_without_the_newer_options_loads_and_continues(cls, kwargs):
    torch_cls = getattr(torch.optim, cls.__name__)
    reference = make_params(torch.float64)
    candidate = clone_params(reference)
    torch_opt = torch_cls(reference, **kwargs)
    for step in range(3):
        set_grads([reference], step)
        torch_opt.step()
    old = copy.deepcopy(torch_opt.state_dict())
    for group in old["param_groups"]:
        for option in NEWER_OPTIONS:
            group.pop(option, None)
    for p, r in zip(candidate, reference, strict=True):
        p.data.copy_(r.detach())
    our_opt = cls(candidate, **kwargs)
    our_opt.load_state_dict(old)
    for option in NEWER_OPTIONS:
        if option in our_opt.defaults:
            assert our_opt.param_groups[0][option] == (
                True
                if cls is ours.AdamW and option == "decoupled_weight_decay"
                else our_opt.defaults[option]
            )
    for step in range(3, 6):
        set_grads([reference, candidate], step)
        torch_opt.step()
        our_opt.step()
    assert_close_lists(candidate, reference, torch.float64)
