"""Lion: parity with lion-pytorch, every path, exact resume, errors."""

from __future__ import annotations

import io

import pytest
import torch
from optim_cases import (
    COMPILED_IMPLS,
    IMPLS,
    assert_close_lists,
    clone_params,
    make_params,
    set_grads,
)

from torchopt_edu.optim import Lion

lion_pytorch = pytest.importorskip("lion_pytorch")

OPTIONS = [
    dict(),
    dict(lr=1e-2, betas=(0.8, 0.9)),
    dict(lr=1e-2, weight_decay=0.5),
    dict(lr=3e-3, betas=(0.95, 0.98), weight_decay=0.1),
    dict(lr=1e-2, betas=(0.0, 0.5)),
]


ALL_IMPLS = {**IMPLS, **COMPILED_IMPLS}


@pytest.mark.parametrize("impl", ALL_IMPLS)
@pytest.mark.parametrize("options", OPTIONS, ids=str)
def test_same_numbers_as_lion_pytorch_over_50_steps(options, impl):
    reference = make_params(torch.float64)
    candidate = clone_params(reference)
    theirs = lion_pytorch.Lion(reference, **options)
    ours = Lion(candidate, **options, **ALL_IMPLS[impl])
    for step in range(50):
        set_grads([reference, candidate], step)
        theirs.step()
        ours.step()
    assert_close_lists(candidate, reference, torch.float64)
    for p, q in zip(candidate, reference, strict=True):
        torch.testing.assert_close(ours.state[p]["exp_avg"], theirs.state[q]["exp_avg"])


@pytest.mark.parametrize("impl", ["loop", "foreach", "compiled-flat"])
def test_float32_matches_lion_pytorch(impl):
    reference = make_params(torch.float32)
    candidate = clone_params(reference)
    theirs = lion_pytorch.Lion(reference, lr=1e-2, weight_decay=0.1)
    ours = Lion(candidate, lr=1e-2, weight_decay=0.1, **ALL_IMPLS[impl])
    for step in range(20):
        set_grads([reference, candidate], step)
        theirs.step()
        ours.step()
    assert_close_lists(candidate, reference, torch.float32)


@pytest.mark.parametrize("impl", ["loop", "foreach", "compiled"])
def test_maximize_is_minimizing_the_negated_gradient(impl):
    reference = make_params(torch.float64)
    candidate = clone_params(reference)
    theirs = lion_pytorch.Lion(reference, lr=1e-2, weight_decay=0.1)
    ours = Lion(candidate, lr=1e-2, weight_decay=0.1, maximize=True, **ALL_IMPLS[impl])
    for step in range(10):
        set_grads([reference, candidate], step)
        for p in reference:
            p.grad.neg_()
        theirs.step()
        ours.step()
    assert_close_lists(candidate, reference, torch.float64)


def test_every_coordinate_moves_by_exactly_lr():
    w = torch.tensor([3.0, -2.0, 0.5], dtype=torch.float64, requires_grad=True)
    optimizer = Lion([w], lr=0.25, betas=(0.9, 0.99))
    w.grad = torch.tensor([1e-8, -5.0, 0.0], dtype=torch.float64)
    optimizer.step()
    # sign(0.1 * g): +1, -1 and 0 (a zero gradient with zero momentum does not move)
    assert w.tolist() == [2.75, -1.75, 0.5]
    assert optimizer.state[w]["exp_avg"].tolist() == pytest.approx([1e-10, -0.05, 0.0])


def test_state_dict_resume_is_exact():
    def run(params: list[torch.Tensor], optimizer: Lion, steps: range) -> None:
        for step in steps:
            set_grads([params], step)
            optimizer.step()

    straight = make_params(torch.float64)
    resumed = clone_params(straight)
    options = dict(lr=1e-2, weight_decay=0.1)
    first = Lion(resumed, **options)
    run(resumed, first, range(5))
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    second = Lion(resumed, **options)
    second.load_state_dict(torch.load(buffer, weights_only=True))
    run(resumed, second, range(5, 12))
    uninterrupted = Lion(straight, **options)
    run(straight, uninterrupted, range(12))
    for a, b in zip(resumed, straight, strict=True):
        assert torch.equal(a, b)


def test_a_lion_pytorch_state_dict_loads_and_continues_the_same():
    reference = make_params(torch.float64)
    candidate = clone_params(reference)
    theirs = lion_pytorch.Lion(reference, lr=1e-2)
    for step in range(3):
        set_grads([reference], step)
        theirs.step()
    for p, q in zip(candidate, reference, strict=True):
        p.data.copy_(q)
    ours = Lion(candidate, lr=1e-2)
    ours.load_state_dict(theirs.state_dict())
    for step in range(3, 8):
        set_grads([reference, candidate], step)
        theirs.step()
        ours.step()
    assert_close_lists(candidate, reference, torch.float64)


def test_complex_parameters_step_as_pairs_of_reals():
    z = torch.tensor([1 + 2j, -3 - 0.5j], dtype=torch.complex128, requires_grad=True)
    x = torch.view_as_real(z.detach()).clone().requires_grad_()
    complex_opt, real_opt = Lion([z], lr=0.1), Lion([x], lr=0.1)
    for step in range(3):
        grad = torch.randn(2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(step))
        z.grad, x.grad = torch.view_as_complex(grad.clone()), grad.clone()
        complex_opt.step()
        real_opt.step()
    assert torch.equal(torch.view_as_real(z.detach()), x.detach())


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (dict(lr=-1.0), "Invalid learning rate: lr=-1.0"),
        (dict(betas=(1.0, 0.99)), r"betas\[0\]=1.0"),
        (dict(betas=(0.9, -0.1)), r"betas\[1\]=-0.1"),
        (dict(weight_decay=-0.1), "Invalid weight_decay value: -0.1"),
    ],
)
def test_bad_hyper_parameters_are_named(options, message):
    with pytest.raises(ValueError, match=message):
        Lion([torch.zeros(2, requires_grad=True)], **options)


def test_fused_is_refused_with_the_reason():
    with pytest.raises(RuntimeError, match="Lion: fused=True is not available"):
        Lion([torch.zeros(2, requires_grad=True)]).add_param_group(
            {"params": [torch.zeros(1, requires_grad=True)], "fused": True}
        )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    cpu = make_params(torch.float64)
    cuda = [p.detach().cuda().requires_grad_() for p in cpu]
    cpu_opt, cuda_opt = Lion(cpu, lr=1e-2, weight_decay=0.1), Lion(cuda, lr=1e-2, weight_decay=0.1)
    for step in range(10):
        set_grads([cpu, cuda], step)
        cpu_opt.step()
        cuda_opt.step()
    assert_close_lists([p.cpu() for p in cuda], cpu, torch.float64)


@pytest.mark.parametrize(
    "options",
    [dict(foreach=True), dict(flat=True), dict(compiled=True)],
    ids=["foreach", "flat", "compiled"],
)
def test_the_fast_path_in_pieces_gives_the_loops_numbers(monkeypatch, options):
    """Pieces of 5 elements: whole small tensors gathered, large ones sliced, and a transposed
    (non-contiguous) parameter kept whole."""
    from torchopt_edu.optim import _base

    monkeypatch.setattr(_base, "CACHE_SLICE", 5)
    generator = torch.Generator().manual_seed(0)
    shapes = [(2,), (3,), (4, 3), (1,), (13,), (6, 2)]
    reference = [torch.randn(s, generator=generator, dtype=torch.float64) for s in shapes]
    reference.append(torch.randn(3, 4, generator=generator, dtype=torch.float64).T)
    reference = [p.requires_grad_() for p in reference]
    candidate = clone_params(reference)
    if "flat" not in options:
        assert not candidate[-1].is_contiguous()
    ours = Lion(candidate, lr=1e-2, weight_decay=0.1, **options)
    loop = Lion(reference, lr=1e-2, weight_decay=0.1, foreach=False)
    for step in range(10):
        set_grads([reference, candidate], step)
        loop.step()
        ours.step()
    # with weight decay the fast path's fused SGD kernel rounds the decay differently
    assert_close_lists(candidate, reference, torch.float64)


def test_pieces_gather_small_tensors_and_slice_large_contiguous_ones():
    from torchopt_edu.optim.lion import pieces

    tensors = [torch.zeros(s) for s in [(2,), (3,), (4, 3), (1,), (13,), (6, 2)]]
    tensors.append(torch.zeros(3, 4).T)  # not contiguous: stays whole
    sizes = [[t.numel() for t in piece[0]] for piece in pieces([tensors, tensors], 5)]
    assert sizes == [[2, 3], [5], [5], [2, 1, 5], [5], [3, 5], [5], [2, 12]]
