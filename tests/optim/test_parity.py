"""Same numbers as torch.optim: every option, every implementation, float64 and float32."""

from __future__ import annotations

import pytest
import torch
from optim_cases import (
    CASES,
    IMPLS,
    assert_close_lists,
    case_id,
    clone_params,
    make_params,
    set_grads,
)

STEPS = 50


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
def test_matches_torch_optim_for_50_steps(case, impl, dtype):
    ours_cls, torch_cls, kwargs = case
    reference = make_params(dtype)
    candidate = clone_params(reference)
    torch_opt = torch_cls(reference, **kwargs)
    our_opt = ours_cls(candidate, **kwargs, **IMPLS[impl])
    for step in range(STEPS):
        set_grads([reference, candidate], step)
        torch_opt.step()
        our_opt.step()
    assert_close_lists(candidate, reference, dtype)
    # same state keys and values (state of flat mode lives in views: same numbers)
    for p_ours, p_torch in zip(candidate, reference, strict=True):
        ours_state, torch_state = our_opt.state[p_ours], torch_opt.state[p_torch]
        assert set(ours_state) == set(torch_state)
        for key, value in torch_state.items():
            torch.testing.assert_close(ours_state[key].to(value.dtype), value, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("impl", ["loop", "foreach", "default"])
@pytest.mark.parametrize(
    "case", [c for c in CASES if c[1] is not torch.optim.Adagrad or not c[2]], ids=case_id
)
def test_tensor_lr_matches_float_lr(case, impl):
    ours_cls, _, kwargs = case
    lr = kwargs.get("lr", 0.01)
    with_float = make_params(torch.float64)
    with_tensor = clone_params(with_float)
    float_opt = ours_cls(with_float, **{**kwargs, "lr": lr}, foreach=False)
    tensor_opt = ours_cls(
        with_tensor, **{**kwargs, "lr": torch.tensor(lr, dtype=torch.float64)}, **IMPLS[impl]
    )
    for step in range(10):
        set_grads([with_float, with_tensor], step)
        float_opt.step()
        tensor_opt.step()
    assert_close_lists(with_tensor, with_float, torch.float64)


@pytest.mark.parametrize("case", CASES[::3], ids=case_id)
def test_complex_parameters_match_torch(case):
    ours_cls, torch_cls, kwargs = case
    generator = torch.Generator().manual_seed(3)
    base = [torch.randn(4, 3, dtype=torch.complex128, generator=generator) for _ in range(2)]
    reference = [b.clone().requires_grad_() for b in base]
    for impl in IMPLS.values():
        if impl.get("flat"):
            continue  # flat buffers are real-only by design (ValueError tested elsewhere)
        candidate = [b.clone().requires_grad_() for b in base]
        torch_opt = torch_cls([r.detach().clone().requires_grad_() for r in reference], **kwargs)
        torch_params = torch_opt.param_groups[0]["params"]
        our_opt = ours_cls(candidate, **kwargs, **impl)
        for step in range(20):
            grads = [
                torch.randn(
                    4,
                    3,
                    dtype=torch.complex128,
                    generator=torch.Generator().manual_seed(step * 7 + i),
                )
                for i in range(2)
            ]
            for p, q, g in zip(torch_params, candidate, grads, strict=True):
                p.grad, q.grad = g.clone(), g.clone()
            torch_opt.step()
            our_opt.step()
        assert_close_lists(candidate, torch_params, torch.float64)


@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
def test_fast_paths_equal_reference_loop(case, impl):
    ours_cls, _, kwargs = case
    reference = make_params(torch.float64)
    candidate = clone_params(reference)
    loop_opt = ours_cls(reference, **kwargs, foreach=False)
    fast_opt = ours_cls(candidate, **kwargs, **IMPLS[impl])
    for step in range(20):
        set_grads([reference, candidate], step)
        loop_opt.step()
        fast_opt.step()
    assert_close_lists(candidate, reference, torch.float64)
