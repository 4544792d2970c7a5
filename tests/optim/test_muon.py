"""Muon: torch.optim.Muon's numbers on matrices, AdamW's on the rest, resume, errors."""

from __future__ import annotations

import io

import pytest
import torch

from torchopt_edu.optim import Muon

# repeated shapes (the stacked path batches them), tall, wide and square matrices
SHAPES = [(8, 4), (4, 8), (8, 4), (6, 6), (8, 4), (6, 6), (3, 5)]
OTHER_SHAPES = [(4,), (), (2, 3, 2)]

OPTIONS = [
    dict(lr=0.02),
    dict(lr=0.02, nesterov=False, weight_decay=0.0),
    dict(lr=0.01, momentum=0.9, adjust_lr_fn="match_rms_adamw"),
    dict(lr=0.02, ns_steps=3, ns_coefficients=(3.0, -3.2, 1.2), eps=1e-3),
    dict(lr=0.02, adjust_lr_fn="original", weight_decay=0.3),
]


def matrices(dtype: torch.dtype, shapes=SHAPES, seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=generator, dtype=dtype).requires_grad_() for s in shapes]


def clone(params: list[torch.Tensor]) -> list[torch.Tensor]:
    return [p.detach().clone().requires_grad_() for p in params]


def set_grads(param_lists: list[list[torch.Tensor]], step: int) -> None:
    generator = torch.Generator().manual_seed(1000 + step)
    reference = param_lists[0]
    grads = [
        2 * p.detach().cpu() + torch.randn(p.shape, generator=generator, dtype=p.dtype)
        for p in reference
    ]
    for params in param_lists:
        for p, g in zip(params, grads, strict=True):
            p.grad = g.to(p.device).clone()


def run(optimizers: list[torch.optim.Optimizer], params: list[list[torch.Tensor]], steps) -> None:
    for step in steps:
        set_grads(params, step)
        for optimizer in optimizers:
            optimizer.step()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("options", OPTIONS, ids=str)
def test_loop_gives_exactly_torchs_numbers(options, dtype):
    reference = matrices(dtype)
    candidate = clone(reference)
    theirs = torch.optim.Muon(reference, **options)
    ours = Muon(candidate, **options, foreach=False)
    run([theirs, ours], [reference, candidate], range(20))
    for a, b in zip(candidate, reference, strict=True):
        assert torch.equal(a, b)
    for p, q in zip(candidate, reference, strict=True):
        assert torch.equal(ours.state[p]["momentum_buffer"], theirs.state[q]["momentum_buffer"])


@pytest.mark.parametrize("impl", [dict(foreach=True), dict()], ids=["foreach", "default"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("options", OPTIONS, ids=str)
def test_stacked_path_agrees_with_torch_to_bfloat16_rounding(options, dtype, impl):
    """torch's bmm and mm round bfloat16 products differently in a few entries, so the stacked
    Newton-Schulz can differ from torch's by about one bfloat16 unit of the update (2**-8
    relative); a wrong update (momentum, scale, decay) differs by the whole step."""
    reference = matrices(dtype)
    candidate = clone(reference)
    theirs = torch.optim.Muon(reference, **options)
    ours = Muon(candidate, **options, **impl)
    steps = 20
    run([theirs, ours], [reference, candidate], range(steps))
    lr = options["lr"] * (0.2 * 8 if options.get("adjust_lr_fn") == "match_rms_adamw" else 2**0.5)
    for a, b in zip(candidate, reference, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=steps * lr * 2**-8)


def test_stacked_newton_schulz_is_per_matrix_newton_schulz():
    from torchopt_edu.optim.muon import NS_COEFFICIENTS, zeropower_via_newton_schulz

    stack = torch.randn(5, 16, 8, generator=torch.Generator().manual_seed(3))
    each = torch.stack(
        [zeropower_via_newton_schulz(m, NS_COEFFICIENTS, 5, 1e-7) for m in stack.unbind(0)]
    )
    together = zeropower_via_newton_schulz(stack, NS_COEFFICIENTS, 5, 1e-7)
    assert together.dtype == torch.bfloat16 and together.shape == (5, 16, 8)
    torch.testing.assert_close(together.float(), each.float(), rtol=0, atol=2**-7)
    # orthogonalised: singular values of every matrix near 1 (within the quintic's band)
    singular = torch.linalg.svdvals(together.float())
    assert bool((singular > 0.5).all() and (singular < 1.3).all())


def torch_pair(params, others, lr, weight_decay, betas=(0.9, 0.95), eps=1e-8, **muon_options):
    return [
        torch.optim.Muon(params, lr=lr, weight_decay=weight_decay, **muon_options),
        torch.optim.AdamW(others, lr=lr, weight_decay=weight_decay, betas=betas, eps=eps),
    ]


@pytest.mark.parametrize("impl", [dict(foreach=False), dict(foreach=True), dict()])
def test_non_matrices_take_adamw_with_the_groups_lr(impl):
    mats, others = matrices(torch.float64), matrices(torch.float64, OTHER_SHAPES, seed=1)
    our_mats, our_others = clone(mats), clone(others)
    theirs = torch_pair(mats, others, lr=0.01, weight_decay=0.1)
    # one group, parameters interleaved: use_muon=None picks by shape
    ours = Muon(
        [our_others[0], *our_mats[:3], our_others[1], *our_mats[3:], our_others[2]],
        lr=0.01,
        weight_decay=0.1,
        **impl,
    )
    run([*theirs, ours], [mats + others, our_mats + our_others], range(30))
    for a, b in zip(our_others, others, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    atol = 0 if impl.get("foreach") is False else 30 * 0.01 * 2**0.5 * 2**-8
    for a, b in zip(our_mats, mats, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=atol)
    assert sorted(ours.state[our_others[0]]) == ["exp_avg", "exp_avg_sq", "step"]
    assert sorted(ours.state[our_mats[0]]) == ["momentum_buffer"]


def test_keller_jordans_param_groups():
    """Hidden matrices with Muon; an embedding (2-D) and biases with AdamW at their own lr."""
    hidden = matrices(torch.float64)
    embedding, bias = matrices(torch.float64, [(10, 4), (4,)], seed=2)
    ours_hidden, ours_rest = clone(hidden), clone([embedding, bias])
    theirs = [
        torch.optim.Muon(hidden, lr=0.02, weight_decay=0.01),
        torch.optim.AdamW(
            [embedding, bias], lr=3e-4, betas=(0.9, 0.95), weight_decay=0.01, eps=1e-10
        ),
    ]
    ours = Muon(
        [
            dict(params=ours_hidden, use_muon=True, lr=0.02, weight_decay=0.01),
            dict(
                params=ours_rest,
                use_muon=False,
                lr=3e-4,
                betas=(0.9, 0.95),
                weight_decay=0.01,
                adamw_eps=1e-10,
            ),
        ],
        foreach=False,
    )
    run([*theirs, ours], [hidden + [embedding, bias], ours_hidden + ours_rest], range(20))
    for a, b in zip(ours_hidden + ours_rest, hidden + [embedding, bias], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=0)
    assert "exp_avg" in ours.state[ours_rest[0]]


@pytest.mark.parametrize("impl", [dict(foreach=False), dict()])
def test_state_dict_resume_is_exact(impl):
    def build(params):
        return Muon(
            [dict(params=params[:-2]), dict(params=params[-2:], use_muon=False)], lr=0.02, **impl
        )

    straight = matrices(torch.float64) + matrices(torch.float64, [(4,), (5, 3)], seed=4)
    resumed = clone(straight)
    first = build(resumed)
    run([first], [resumed], range(4))
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    second = build(resumed)
    second.load_state_dict(torch.load(buffer, weights_only=True))
    run([second], [resumed], range(4, 10))
    uninterrupted = build(straight)
    run([uninterrupted], [straight], range(10))
    for a, b in zip(resumed, straight, strict=True):
        assert torch.equal(a, b)


def test_a_torch_muon_state_dict_loads_and_continues_the_same():
    reference = matrices(torch.float64)
    candidate = clone(reference)
    theirs = torch.optim.Muon(reference, lr=0.02)
    run([theirs], [reference], range(3))
    for p, q in zip(candidate, reference, strict=True):
        p.data.copy_(q)
    ours = Muon(candidate, lr=0.02, foreach=False)
    buffer = io.BytesIO()
    torch.save(theirs.state_dict(), buffer)  # a copy: loading would share the tensors
    buffer.seek(0)
    ours.load_state_dict(torch.load(buffer, weights_only=True))
    run([theirs, ours], [reference, candidate], range(3, 8))
    for a, b in zip(candidate, reference, strict=True):
        assert torch.equal(a, b)


def test_a_checkpoint_whose_state_does_not_fit_use_muon_is_refused():
    params = matrices(torch.float64, [(3, 4)])
    adamw_kind = Muon(params, use_muon=False)
    run([adamw_kind], [params], range(1))
    saved = adamw_kind.state_dict()
    optimizer = Muon(params)
    optimizer.load_state_dict(saved)  # as in torch.optim, the checkpoint's options win
    assert optimizer.param_groups[0]["use_muon"] is False
    saved["param_groups"][0]["use_muon"] = None  # now the matrix expects Muon's state
    with pytest.raises(ValueError, match="no 'momentum_buffer'"):
        Muon(params).load_state_dict(saved)


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        (dict(lr=-1.0), ValueError, "Invalid learning rate: lr=-1.0"),
        (dict(weight_decay=-0.1), ValueError, "Invalid weight_decay value: -0.1"),
        (dict(momentum=1.0), ValueError, "Invalid momentum value: 1.0"),
        (dict(eps=0.0), ValueError, r"eps must lie in \(0.0, inf\), got 0.0"),
        (dict(ns_steps=100), ValueError, "ns_steps must be < 100, got 100"),
        (dict(ns_steps=2.5), TypeError, "ns_steps must be an int, got 2.5"),
        (dict(ns_coefficients=(1.0, 2.0)), ValueError, r"ns_coefficients must be three"),
        (dict(adjust_lr_fn="rms"), ValueError, "adjust_lr_fn must be one of .* got 'rms'"),
        (dict(betas=(0.9, 1.0)), ValueError, r"betas\[1\]=1.0"),
        (dict(adamw_eps=-1.0), ValueError, "Invalid adamw_eps value: -1.0"),
        (dict(use_muon="yes"), TypeError, "use_muon must be None, True or False, got 'yes'"),
    ],
)
def test_bad_options_are_named(options, error, message):
    with pytest.raises(error, match=message):
        Muon(matrices(torch.float32, [(2, 2)]), **options)


def test_a_bad_option_in_a_param_group_names_the_group():
    with pytest.raises(ValueError, match=r"param group 1: ns_steps must be < 100, got 200"):
        Muon(
            [
                dict(params=matrices(torch.float32, [(2, 2)])),
                dict(params=matrices(torch.float32, [(3, 2)]), ns_steps=200),
            ]
        )


@pytest.mark.parametrize(
    ("param", "what"),
    [
        (torch.zeros(3, requires_grad=True), r"torch.float32 parameter of shape \(3,\)"),
        (torch.zeros(2, 2, 2, requires_grad=True), r"shape \(2, 2, 2\)"),
        (
            torch.zeros(2, 2, dtype=torch.complex64, requires_grad=True),
            r"torch.complex64 parameter of shape \(2, 2\)",
        ),
    ],
)
def test_use_muon_true_refuses_what_is_not_a_real_matrix(param, what):
    with pytest.raises(ValueError, match=f"param group 0: .*{what} with use_muon=True"):
        Muon([param], use_muon=True)


def test_complex_and_other_non_matrices_go_to_adamw_by_default():
    z = torch.zeros(2, 2, dtype=torch.complex64, requires_grad=True)
    optimizer = Muon([z], lr=0.1)
    z.grad = torch.full((2, 2), 1 + 1j, dtype=torch.complex64)
    optimizer.step()
    assert sorted(optimizer.state[z]) == ["exp_avg", "exp_avg_sq", "step"]
    assert torch.allclose(z.detach(), torch.full((2, 2), -0.1 - 0.1j))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_matches_torch(dtype):
    reference = [p.detach().cuda().requires_grad_() for p in matrices(dtype)]
    others = [p.detach().cuda().requires_grad_() for p in matrices(dtype, OTHER_SHAPES, seed=1)]
    candidate, our_others = clone(reference), clone(others)
    theirs = torch_pair(reference, others, lr=0.02, weight_decay=0.1)
    ours = Muon(candidate + our_others, lr=0.02, weight_decay=0.1)
    run([*theirs, ours], [reference + others, candidate + our_others], range(10))
    for a, b in zip(candidate, reference, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=10 * 0.02 * 2**0.5 * 2**-8)
    for a, b in zip(our_others, others, strict=True):
        torch.testing.assert_close(a, b)
