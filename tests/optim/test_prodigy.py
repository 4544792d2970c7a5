"""Prodigy: parity with prodigyopt, d in closed form, d over groups of several dtypes, exact
resume, state dicts across packages, errors."""

from __future__ import annotations

import contextlib
import io
import math
from typing import Any

import pytest
import torch
from optim_cases import (
    COMPILED_IMPLS,
    assert_close_lists,
    clone_params,
    make_params,
    set_grads,
)

from torchopt_edu.optim import Prodigy

prodigyopt = pytest.importorskip("prodigyopt")

OPTIONS = [
    dict(),
    dict(lr=0.5, weight_decay=0.1),
    dict(weight_decay=0.1, decouple=False),
    dict(use_bias_correction=True, safeguard_warmup=True, d_coef=0.5, growth_rate=1.05),
    dict(use_bias_correction=True, betas=(0.8, 0.95), eps=1e-6, d0=1e-3),
    dict(betas=(0.0, 0.99), weight_decay=0.01),
    dict(slice_p=3, beta3=0.9, d0=1e-3),
]
IMPLS = {
    "loop": dict(foreach=False),
    "foreach": dict(foreach=True),
    "default": dict(),
    "flat": dict(flat=True),
    **COMPILED_IMPLS,
}


def _supports(impl: str, options: dict[str, Any]) -> bool:
    """Flat buffers and the compiled kernels need slice_p=1; the kernels update a first moment
    (betas[0] > 0)."""
    if impl in ("flat", *COMPILED_IMPLS) and options.get("slice_p", 1) != 1:
        return False
    return impl not in COMPILED_IMPLS or options.get("betas", (0.9,))[0] > 0


CASES = [(o, impl) for o in OPTIONS for impl in IMPLS if _supports(impl, o)]


def _theirs(params: Any, **options: Any) -> torch.optim.Optimizer:
    with contextlib.redirect_stdout(io.StringIO()):  # it prints "Using decoupled weight decay"
        return prodigyopt.Prodigy(params, **options)


def _through_a_file(state_dict: dict[str, Any]) -> dict[str, Any]:
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def _params_with_a_zero_tensor(dtype: torch.dtype) -> list[torch.Tensor]:
    params = make_params(dtype)
    params[1].data.zero_()  # its p0 is a 0-d zero, as in the reference
    return params


def _tolerance(options: dict[str, Any], impl: str) -> dict[str, float]:
    if (
        impl in ("default", "flat")
        and options.get("weight_decay")
        and options.get("decouple", True)
    ):
        # torch's fused AdamW decays as p * (1 - a), the reference as p + (-a) p: one rounding
        # apart per step, which the d estimate (a ratio of sums) amplifies to ~1e-11.
        return dict(rtol=1e-8, atol=1e-10)
    return dict(rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(("options", "impl"), CASES, ids=str)
def test_same_numbers_as_prodigyopt_over_50_steps(options, impl):
    reference = _params_with_a_zero_tensor(torch.float64)
    candidate = clone_params(reference)
    theirs = _theirs(reference, **options)
    ours = Prodigy(candidate, **options, **IMPLS[impl])
    for step in range(50):
        set_grads([reference, candidate], step)
        theirs.step()
        ours.step()
    tolerance = _tolerance(options, impl)
    for a, b in zip(candidate, reference, strict=True):
        torch.testing.assert_close(a.detach(), b.detach(), **tolerance)
    for key in ("d", "d_max", "d_hat", "d_numerator", "d_denom", "k"):
        assert ours.param_groups[0][key] == pytest.approx(
            theirs.param_groups[0][key], rel=tolerance["rtol"]
        )
    for p, q in zip(candidate, reference, strict=True):
        assert set(ours.state[p]) == set(theirs.state[q])
        assert ours.state[p]["step"] == theirs.state[q]["step"] == 50
        for key in ("s", "p0", "exp_avg_sq"):
            theirs_value = theirs.state[q][key]
            if "flat" in impl:  # a 0-d p0 (a parameter of zeros) fills its slice of a buffer
                theirs_value = theirs_value.expand_as(ours.state[p][key])
            torch.testing.assert_close(ours.state[p][key], theirs_value, **tolerance)


@pytest.mark.parametrize("impl", ["foreach", "default", "compiled-flat"])
def test_float32_matches_prodigyopt(impl):
    reference = make_params(torch.float32)
    candidate = clone_params(reference)
    theirs, ours = _theirs(reference), Prodigy(candidate, **IMPLS[impl])
    for step in range(20):
        set_grads([reference, candidate], step)
        theirs.step()
        ours.step()
    assert_close_lists(candidate, reference, torch.float32)
    assert ours.param_groups[0]["d"] == pytest.approx(theirs.param_groups[0]["d"], rel=1e-5)


@pytest.mark.parametrize("impl", IMPLS)
def test_d_is_one_estimate_over_groups_that_span_several_dtypes(impl):
    """A group with float32 and float64 tensors is two buckets; d sums over both, and over
    the second group, exactly as the reference's per-tensor loop does."""

    def build() -> list[torch.Tensor]:
        params = make_params(torch.float64)
        return [params[0], params[1].float().detach().requires_grad_(), params[2], params[3]]

    reference = build()
    candidate = clone_params(reference)

    # Decay only in the float64 group: in float32 the first moves (~d0) are a few ulps of x,
    # so fused AdamW's rounding of the decay (p * (1 - a), not p - a p) would shift d by ~1%.
    def groups(ps: list[torch.Tensor]) -> list[dict]:
        return [
            {"params": ps[:2], "eps": 1e-6, "safeguard_warmup": True},
            {"params": ps[2:], "weight_decay": 0.1},
        ]

    theirs = _theirs(groups(reference))
    ours = Prodigy(groups(candidate), **IMPLS[impl])
    for step in range(30):
        set_grads([reference, candidate], step)
        theirs.step()
        ours.step()
    for a, b in zip(candidate, reference, strict=True):
        torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-5, atol=1e-6)
    assert [g["d"] for g in ours.param_groups] == pytest.approx(
        [g["d"] for g in theirs.param_groups], rel=1e-5
    )
    assert ours.param_groups[0]["d"] > 10 * ours.param_groups[0]["d0"]  # d did move


def test_d_after_two_steps_has_the_closed_form():
    """One coordinate x_0 = 1, g = 1 twice, defaults (b1=0.9, b2=0.999, b3=sqrt(b2))."""
    x = torch.tensor([1.0], dtype=torch.float64, requires_grad=True)
    optimizer = Prodigy([x])
    d0, eps, beta3 = 1e-6, 1e-8, math.sqrt(0.999)
    x.grad = torch.ones(1, dtype=torch.float64)
    optimizer.step()
    # r_1 = <g, x0 - x0> = 0, so d_hat = 0 and d stays d0; x moves by d0 * m / (sqrt(v) + d0 eps)
    assert optimizer.param_groups[0]["d"] == d0
    assert optimizer.param_groups[0]["d_hat"] == 0.0
    x1 = 1 - d0 * (0.1 * d0) / (math.sqrt(0.001) * d0 + d0 * eps)
    assert x.item() == pytest.approx(x1, rel=1e-14)
    x.grad = torch.ones(1, dtype=torch.float64)
    optimizer.step()
    d_hat = (d0 * (1 - x1)) / (beta3 * d0 + d0)  # r_2 / ||s_2||_1
    assert optimizer.param_groups[0]["d_hat"] == pytest.approx(d_hat, rel=1e-12)
    assert optimizer.param_groups[0]["d"] == pytest.approx(d_hat, rel=1e-12)
    assert d_hat > 1.5 * d0


def test_a_frozen_group_does_not_move_even_with_weight_decay():
    train, frozen = make_params(torch.float64)[:2], make_params(torch.float64, seed=1)[:2]
    before = [p.detach().clone() for p in frozen]
    optimizer = Prodigy([{"params": train}, {"params": frozen, "lr": 0.0, "weight_decay": 0.5}])
    for step in range(5):
        set_grads([train + frozen], step)
        optimizer.step()
    assert_close_lists(frozen, before, torch.float64)
    assert optimizer.param_groups[1]["d"] == optimizer.param_groups[0]["d"] > 1e-6


@pytest.mark.parametrize("impl", ["default", "compiled", "compiled-flat"])
def test_zero_gradients_change_nothing_but_the_moments_like_prodigyopt(impl):
    reference = make_params(torch.float64)
    candidate = clone_params(reference)
    theirs, ours = _theirs(reference), Prodigy(candidate, **IMPLS[impl])
    for params in (reference, candidate):
        for p in params:
            p.grad = torch.zeros_like(p)
    theirs.step()
    ours.step()
    assert_close_lists(candidate, reference, torch.float64)
    assert ours.param_groups[0]["k"] == theirs.param_groups[0]["k"] == 0
    for step in range(1, 6):
        set_grads([reference, candidate], step)
        theirs.step()
        ours.step()
    assert_close_lists(candidate, reference, torch.float64)


@pytest.mark.parametrize("impl", ["default", "flat", "compiled-flat"])
def test_state_dict_resume_is_exact(impl):
    options = dict(weight_decay=0.01, use_bias_correction=True, **IMPLS[impl])

    def run(params: list[torch.Tensor], optimizer: Prodigy, steps: range) -> None:
        for step in steps:
            set_grads([params], step)
            optimizer.step()

    straight = _params_with_a_zero_tensor(torch.float64)
    resumed = clone_params(straight)
    first = Prodigy(resumed, **options)
    run(resumed, first, range(6))
    second = Prodigy(resumed, **options)
    second.load_state_dict(_through_a_file(first.state_dict()))
    assert second.state[resumed[1]]["p0"].shape == (() if "flat" not in impl else (5,))
    run(resumed, second, range(6, 15))
    run(straight, Prodigy(straight, **options), range(15))
    for a, b in zip(resumed, straight, strict=True):
        assert torch.equal(a, b)


def test_state_dicts_load_both_ways_with_prodigyopt():
    reference = _params_with_a_zero_tensor(torch.float64)
    candidate = clone_params(reference)
    theirs = _theirs(reference, slice_p=2)
    for step in range(4):
        set_grads([reference], step)
        theirs.step()
    for p, q in zip(candidate, reference, strict=True):
        p.data.copy_(q)
    ours = Prodigy(candidate, slice_p=2)
    ours.load_state_dict(_through_a_file(theirs.state_dict()))
    for step in range(4, 10):
        set_grads([reference, candidate], step)
        theirs.step()
        ours.step()
    assert_close_lists(candidate, reference, torch.float64)
    back_params = clone_params(candidate)
    back = _theirs(back_params, slice_p=2)
    back.load_state_dict(_through_a_file(ours.state_dict()))
    assert back.param_groups[0]["d"] == ours.param_groups[0]["d"]
    for step in range(10, 13):  # and the reference steps on from our checkpoint
        set_grads([back_params, candidate], step)
        back.step()
        ours.step()
    assert_close_lists(back_params, candidate, torch.float64)


def test_a_checkpoint_with_a_wrong_statistics_shape_is_refused_unchanged():
    params = make_params(torch.float64)
    optimizer = Prodigy(params)
    set_grads([params], 0)
    optimizer.step()
    state_dict = _through_a_file(optimizer.state_dict())
    state_dict["state"][0]["s"] = torch.zeros(5, dtype=torch.float64)
    before = optimizer.state[params[0]]["s"].clone()
    with pytest.raises(
        ValueError,
        match=r"parameter 0: state\['s'\] has shape \(5,\) but expected "
        r"shape \(12,\)",
    ):
        optimizer.load_state_dict(state_dict)
    assert torch.equal(optimizer.state[params[0]]["s"], before)


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        (dict(lr=-1.0), ValueError, "Invalid learning rate: lr=-1.0"),
        (dict(betas=(1.0, 0.9)), ValueError, r"betas\[0\]=1.0"),
        (dict(beta3=1.0), ValueError, r"beta3 must lie in \[0.0, 1.0\), got 1.0"),
        (dict(eps=0.0), ValueError, r"eps must lie in \(0.0, inf\), got 0.0"),
        (dict(weight_decay=-0.1), ValueError, "Invalid weight_decay value: -0.1"),
        (dict(d0=0.0), ValueError, r"d0 must lie in \(0.0, inf\), got 0.0"),
        (dict(d_coef=-1.0), ValueError, "d_coef must lie in"),
        (dict(growth_rate=0.0), ValueError, "growth_rate must lie in"),
        (dict(slice_p=0), ValueError, "slice_p must be >= 1, got 0"),
        (dict(slice_p=2.0), TypeError, "slice_p must be an int"),
        (
            dict(flat=True, slice_p=2),
            ValueError,
            "flat=True needs slice_p=1, param group 0 has slice_p=2",
        ),
        (
            dict(compiled=True, betas=(0.0, 0.9)),
            ValueError,
            r"compiled=True needs betas\[0\] > 0 and slice_p=1",
        ),
    ],
)
def test_bad_hyper_parameters_are_named(options, error, message):
    with pytest.raises(error, match=message):
        Prodigy(make_params(torch.float64), **options)


def test_groups_must_share_the_d_options_and_lr():
    a, b, c = make_params(torch.float64)[:3]
    with pytest.raises(ValueError, match=r"betas must be the same in each: param group 1"):
        Prodigy([{"params": [a]}, {"params": [b], "betas": (0.8, 0.99)}])
    with pytest.raises(ValueError, match=r"largest lr \(1.0\) or 0, param group 1 has lr=0.5"):
        Prodigy([{"params": [a]}, {"params": [b], "lr": 0.5}])
    optimizer = Prodigy([{"params": [a]}, {"params": [b], "betas": [0.9, 0.999]}])  # a list
    with pytest.raises(ValueError, match="d_coef must be the same"):
        optimizer.add_param_group({"params": [c], "d_coef": 2.0})
    assert len(optimizer.param_groups) == 2
    set_grads([[a, b]], 0)
    optimizer.param_groups[1]["lr"] = 0.3  # e.g. a scheduler that treats groups differently
    before = [a.detach().clone(), b.detach().clone()]
    with pytest.raises(ValueError, match="param group 1 has lr=0.3"):
        optimizer.step()
    assert_close_lists([a, b], before, torch.float64)
    assert optimizer.state == {} or all(not s for s in optimizer.state.values())


def test_complex_parameters_are_refused():
    z = torch.zeros(2, dtype=torch.complex128, requires_grad=True)
    optimizer = Prodigy([z])
    z.grad = torch.ones_like(z)
    with pytest.raises(RuntimeError, match="real parameters only"):
        optimizer.step()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("options", [dict(), dict(weight_decay=0.1, decouple=False)], ids=str)
def test_cuda_default_path_matches_the_cpu_loop(options):
    cpu = _params_with_a_zero_tensor(torch.float64)
    cuda = [p.detach().cuda().requires_grad_() for p in cpu]
    loop, default = Prodigy(cpu, **options, foreach=False), Prodigy(cuda, **options)
    for step in range(20):
        set_grads([cpu], step)
        for p, q in zip(cuda, cpu, strict=True):
            p.grad = q.grad.cuda()
        loop.step()
        default.step()
    assert_close_lists([p.cpu() for p in cuda], cpu, torch.float64)
    assert default.param_groups[0]["d"] == pytest.approx(loop.param_groups[0]["d"], rel=1e-10)


@pytest.mark.parametrize("impl", ["foreach", "default"])
def test_slicing_a_bucket_into_chunks_changes_no_number(impl, monkeypatch):
    """The multi-tensor paths work through a bucket a few tensors at a time (here: chunks of
    at most 16 elements: the tensors of 12, 5, 12 and 1 elements make 3 chunks)."""
    from torchopt_edu.optim import _base

    reference = _params_with_a_zero_tensor(torch.float64)
    candidate = clone_params(reference)
    theirs, ours = _theirs(reference, slice_p=2), Prodigy(candidate, slice_p=2, **IMPLS[impl])
    monkeypatch.setattr(_base, "CACHE_SLICE", 16)
    assert len(_bucket_of(candidate).chunks()) == 3
    for step in range(20):
        set_grads([reference, candidate], step)
        theirs.step()
        ours.step()
    assert_close_lists(candidate, reference, torch.float64)


def _bucket_of(params: list[torch.Tensor]) -> Any:
    from torchopt_edu.optim._base import Bucket

    return Bucket(params=params, grads=params, states=[{} for _ in params])


@pytest.mark.parametrize("impl", ["flat", "compiled", "compiled-flat"])
def test_a_missing_gradient_and_a_transposed_parameter_match_the_loop(impl):
    """Flat mode falls back to the per-tensor path for a step where a gradient is missing;
    the compiled kernels send a transposed (non-contiguous) parameter's both passes to the
    foreach path; the step counts advance only where a gradient was."""
    reference = _params_with_a_zero_tensor(torch.float64)
    reference[0] = reference[0].detach().T.contiguous().T.requires_grad_()  # strides (1, 4)
    candidate = clone_params(reference)
    loop = Prodigy(reference, weight_decay=0.1, foreach=False)
    ours = Prodigy(candidate, weight_decay=0.1, **IMPLS[impl])
    for step in range(12):
        set_grads([reference, candidate], step)
        if step == 5:
            reference[2].grad = candidate[2].grad = None
        loop.step()
        ours.step()
    assert_close_lists(candidate, reference, torch.float64)
    assert [ours.state[p]["step"] for p in candidate] == [12, 12, 11, 12]
    assert ours.param_groups[0]["d"] == pytest.approx(loop.param_groups[0]["d"], rel=1e-10)


def test_a_flat_buffer_is_sliced_into_cache_sized_pieces_without_changing_a_number(monkeypatch):
    """Flat mode's one buffer of 30 elements in slices of at most 16: the statistics' scratch
    and the fused step's d g are slice-sized, and every slice carries its s, p0, m and v."""
    from torchopt_edu.optim import _base

    reference = _params_with_a_zero_tensor(torch.float64)
    candidate = clone_params(reference)
    theirs, ours = (
        _theirs(reference, weight_decay=0.1),
        Prodigy(candidate, weight_decay=0.1, flat=True),
    )
    monkeypatch.setattr(_base, "CACHE_SLICE", 16)
    for step in range(20):
        set_grads([reference, candidate], step)
        theirs.step()
        ours.step()
        if step == 0:
            (bucket,) = ours._flat_groups[0].buckets()
            assert [len(part.params[0]) for part in bucket.chunks(slice_flat=True)] == [16, 14]
    for a, b in zip(candidate, reference, strict=True):
        torch.testing.assert_close(
            a.detach(), b.detach(), **_tolerance(dict(weight_decay=0.1), "flat")
        )
    assert ours.param_groups[0]["d"] == pytest.approx(theirs.param_groups[0]["d"], rel=1e-8)


@pytest.mark.parametrize("impl", ["flat", "compiled"])
def test_a_checkpoint_with_slice_p_is_refused_by_flat_and_compiled_optimizers_unchanged(impl):
    reference = make_params(torch.float64)
    theirs = _theirs(reference, slice_p=2)
    set_grads([reference], 0)
    theirs.step()
    params = make_params(torch.float64)
    ours = Prodigy(params, **IMPLS[impl])
    set_grads([params], 0)
    ours.step()
    before = _through_a_file(ours.state_dict())
    with pytest.raises(ValueError, match="the checkpoint's param group 0 has .*slice_p=2"):
        ours.load_state_dict(_through_a_file(theirs.state_dict()))
    after = ours.state_dict()
    assert after["param_groups"][0]["slice_p"] == 1
    for key, state in before["state"].items():
        assert torch.equal(after["state"][key]["s"], state["s"])
    set_grads([params], 1)
    ours.step()  # still works


@pytest.mark.parametrize("kwargs", [{}, dict(foreach=False), dict(flat=True)])
def test_float16_parameters_are_refused_before_anything_changes(kwargs):
    """d g and d^2 g^2 underflow float16 (d starts at 1e-6): the default path used to move
    the parameters by ~100 with d stuck at d0, the loop and prodigyopt gave NaN."""
    params = [torch.randn(64, dtype=torch.float16, requires_grad=True), torch.randn(3)]
    params[1].requires_grad_()
    optimizer = Prodigy(params, **kwargs)
    for p in params:
        p.grad = torch.full_like(p, 1e-2)
    before = [p.detach().clone() for p in params]
    with pytest.raises(TypeError, match="Prodigy cannot update float16 parameters"):
        optimizer.step()
    assert all(torch.equal(p.detach(), b) for p, b in zip(params, before, strict=True))
    assert not optimizer.state


def test_betas_given_as_one_tensor_step_like_a_tuple():
    """torch.optim takes betas=torch.tensor([b1, b2]); the groups' agreement check compared
    the tensors and raised 'Boolean value of Tensor ... is ambiguous'."""
    results = []
    for betas in ((0.9, 0.99), torch.tensor([0.9, 0.99], dtype=torch.float64)):
        a = torch.linspace(-1, 1, 5, dtype=torch.float64, requires_grad=True)
        b = torch.linspace(1, 2, 3, dtype=torch.float64, requires_grad=True)
        optimizer = Prodigy([{"params": [a]}, {"params": [b]}], betas=betas)
        for _ in range(3):
            a.grad, b.grad = torch.cos(a.detach()), torch.sin(b.detach())
            optimizer.step()
        results.append(torch.cat([a.detach(), b.detach()]))
    assert torch.equal(results[0], results[1])


@pytest.mark.parametrize(
    ("beta3", "error", "message"),
    [
        (torch.tensor(0.9), TypeError, "beta3 must be a real number"),
        (1.0, ValueError, r"beta3 must lie in \[0.0, 1.0\)"),
        (-0.1, ValueError, r"beta3 must lie in \[0.0, 1.0\)"),
    ],
)
def test_a_beta3_that_is_not_a_rate_is_refused_when_built(beta3, error, message):
    """A 0-d tensor passed the range check, then the first step failed iterating over it."""
    with pytest.raises(error, match=message):
        Prodigy([torch.nn.Parameter(torch.ones(2))], beta3=beta3)
