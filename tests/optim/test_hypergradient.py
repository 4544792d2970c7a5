"""SGD-HD and Adam-HD: the closed-form hypergradient, the paper's algorithm, resume, errors."""

from __future__ import annotations

import io
import math

import pytest
import torch
from optim_cases import IMPLS, assert_close_lists, clone_params, make_params, set_grads

from torchopt_edu.optim import SGDHD, Adam, AdamHD

A = torch.tensor([[3.0, 1.0], [1.0, 2.0]], dtype=torch.float64)


def quadratic(x: torch.Tensor) -> torch.Tensor:
    """f(x) = 0.5 x^T A x, gradient A x."""
    return 0.5 * x @ A @ x


def test_sgd_hd_first_steps_by_hand():
    """x0 = (1, -1): every number below is worked out from g = A x by hand."""
    x = torch.tensor([1.0, -1.0], dtype=torch.float64, requires_grad=True)
    optimizer = SGDHD([x], lr=0.1, hypergrad_lr=0.01)
    lrs, xs = [], []
    for _ in range(3):
        optimizer.zero_grad()
        quadratic(x).backward()
        optimizer.step()
        lrs.append(optimizer.param_groups[0]["lr"])
        xs.append(x.detach().tolist())
    # step 1: g1 = A x0 = (2, -1); no previous gradient, lr stays 0.1; x1 = (0.8, -0.9)
    # step 2: g2 = A x1 = (1.5, -1.0); h2 = -g2.g1 = -4; lr2 = 0.1 + 0.01*4 = 0.14
    #         x2 = x1 - 0.14 g2 = (0.59, -0.76)
    # step 3: g3 = A x2 = (1.01, -0.93); h3 = -g3.g2 = -2.445; lr3 = 0.14 + 0.02445 = 0.16445
    #         x3 = x2 - 0.16445 g3 = (0.4239055, -0.6070615)
    assert lrs == pytest.approx([0.1, 0.14, 0.16445], abs=1e-15)
    assert xs[0] == pytest.approx([0.8, -0.9], abs=1e-15)
    assert xs[1] == pytest.approx([0.59, -0.76], abs=1e-15)
    assert xs[2] == pytest.approx([0.4239055, -0.6070615], abs=1e-15)


@pytest.mark.parametrize("cls", [SGDHD, AdamHD])
def test_the_lr_moves_against_the_derivative_of_the_loss_in_the_lr(cls):
    """h_t = d/d(alpha) f(theta_{t-2} + alpha u_{t-1}) at alpha_{t-1}, by autograd."""
    x = torch.tensor([1.0, -1.0], dtype=torch.float64, requires_grad=True)
    beta = 1e-3
    optimizer = cls([x], lr=0.05, hypergrad_lr=beta)
    before = x.detach().clone()
    for _ in range(6):
        optimizer.zero_grad()
        quadratic(x).backward()
        optimizer.step()
        after = x.detach().clone()
        direction = (after - before) / optimizer.param_groups[0]["lr"]  # u_{t-1}
        alpha = torch.tensor(optimizer.param_groups[0]["lr"], dtype=torch.float64)
        alpha.requires_grad_()
        (hypergradient,) = torch.autograd.grad(quadratic(before + alpha * direction), alpha)
        # the next step moves lr by -beta * hypergradient
        lr_now = optimizer.param_groups[0]["lr"]
        optimizer.zero_grad()
        quadratic(x).backward()
        optimizer.step()
        assert optimizer.param_groups[0]["lr"] == pytest.approx(
            lr_now - beta * hypergradient.item(), rel=1e-12
        )
        before = x.detach().clone()


def adam_hd_reference(params, steps, lr, beta, betas, eps, weight_decay, amsgrad):
    """The paper's Adam-HD (Algorithm in Baydin et al. 2018), written out per tensor."""
    b1, b2 = betas
    m = [torch.zeros_like(p) for p in params]
    v = [torch.zeros_like(p) for p in params]
    v_max = [torch.zeros_like(p) for p in params]
    u = [torch.zeros_like(p) for p in params]
    lrs = []
    for t in range(1, steps + 1):
        set_grads([params], t - 1)
        grads = [p.grad + weight_decay * p.detach() for p in params]
        h = sum(torch.sum(g * ui).item() for g, ui in zip(grads, u, strict=True))
        lr = lr - beta * h
        lrs.append(lr)
        with torch.no_grad():
            for i, (p, g) in enumerate(zip(params, grads, strict=True)):
                m[i] = b1 * m[i] + (1 - b1) * g
                v[i] = b2 * v[i] + (1 - b2) * g * g
                v_max[i] = torch.maximum(v_max[i], v[i])
                m_hat = m[i] / (1 - b1**t)
                v_hat = (v_max[i] if amsgrad else v[i]) / (1 - b2**t)
                u[i] = -m_hat / (v_hat.sqrt() + eps)
                p.add_(lr * u[i])
    return lrs


ADAM_OPTIONS = [
    dict(lr=1e-2, hypergrad_lr=1e-3),
    dict(lr=1e-2, hypergrad_lr=1e-4, betas=(0.8, 0.99), eps=1e-3, weight_decay=0.1),
    dict(lr=1e-2, hypergrad_lr=1e-3, amsgrad=True),
]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("options", ADAM_OPTIONS, ids=str)
def test_adam_hd_is_the_papers_algorithm_over_50_steps(options, impl):
    reference = make_params(torch.float64)
    candidate = clone_params(reference)
    full = dict(betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False) | options
    beta = full.pop("hypergrad_lr")
    lrs = adam_hd_reference(reference, 50, beta=beta, **full)
    optimizer = AdamHD(candidate, **options, **IMPLS[impl])
    ours = []
    for step in range(50):
        set_grads([candidate], step)
        optimizer.step()
        ours.append(optimizer.param_groups[0]["lr"])
    assert ours == pytest.approx(lrs, rel=1e-9)
    assert lrs[-1] != pytest.approx(options["lr"])  # the rate did move
    assert_close_lists(candidate, reference, torch.float64)


def sgd_hd_reference(params, steps, lr, beta, weight_decay):
    """The paper's SGD-HD, written out per tensor."""
    previous = [torch.zeros_like(p) for p in params]
    for t in range(steps):
        set_grads([params], t)
        grads = [p.grad + weight_decay * p.detach() for p in params]
        lr = lr + beta * sum(torch.sum(g * q).item() for g, q in zip(grads, previous, strict=True))
        with torch.no_grad():
            for p, g in zip(params, grads, strict=True):
                p.sub_(lr * g)
        previous = grads
    return lr


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_sgd_hd_is_the_papers_algorithm_over_50_steps(weight_decay, impl):
    reference = make_params(torch.float64)
    candidate = clone_params(reference)
    lr = sgd_hd_reference(reference, 50, lr=0.01, beta=1e-4, weight_decay=weight_decay)
    optimizer = SGDHD(
        candidate, lr=0.01, hypergrad_lr=1e-4, weight_decay=weight_decay, **IMPLS[impl]
    )
    for step in range(50):
        set_grads([candidate], step)
        optimizer.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(lr, rel=1e-10)
    assert_close_lists(candidate, reference, torch.float64)


@pytest.mark.parametrize("cls", [SGDHD, AdamHD])
def test_maximize_learns_the_same_lr_as_minimizing_the_negated_loss(cls):
    reference = make_params(torch.float64)
    candidate = clone_params(reference)
    minimizer = cls(reference, lr=0.01, hypergrad_lr=1e-3)
    maximizer = cls(candidate, lr=0.01, hypergrad_lr=1e-3, maximize=True)
    for step in range(10):
        set_grads([reference, candidate], step)
        for p in candidate:
            p.grad.neg_()
        minimizer.step()
        maximizer.step()
    assert maximizer.param_groups[0]["lr"] == pytest.approx(minimizer.param_groups[0]["lr"])
    assert_close_lists(candidate, reference, torch.float64)


@pytest.mark.parametrize(
    ("cls", "torch_cls"), [(SGDHD, torch.optim.SGD), (AdamHD, torch.optim.Adam)]
)
def test_zero_hypergrad_lr_is_the_plain_optimizer(cls, torch_cls):
    reference = make_params(torch.float64)
    candidate = clone_params(reference)
    theirs = torch_cls(reference, lr=0.01, weight_decay=0.1)
    ours = cls(candidate, lr=0.01, weight_decay=0.1, hypergrad_lr=0.0)
    for step in range(20):
        set_grads([reference, candidate], step)
        theirs.step()
        ours.step()
    assert_close_lists(candidate, reference, torch.float64)


@pytest.mark.parametrize("cls", [SGDHD, AdamHD])
def test_each_param_group_learns_its_own_lr(cls):
    first, second = make_params(torch.float64)[:2]
    optimizer = cls(
        [{"params": [first]}, {"params": [second], "hypergrad_lr": 0.0}],
        lr=0.01,
        hypergrad_lr=1e-3,
    )
    for step in range(5):
        set_grads([[first, second]], step)
        optimizer.step()
    assert optimizer.param_groups[0]["lr"] != 0.01
    assert optimizer.param_groups[1]["lr"] == 0.01


@pytest.mark.parametrize("cls", [SGDHD, AdamHD])
def test_state_dict_resume_is_exact(cls):
    def run(params, optimizer, steps):
        for step in steps:
            set_grads([params], step)
            optimizer.step()

    straight = make_params(torch.float64)
    resumed = clone_params(straight)
    first = cls(resumed, lr=0.01, hypergrad_lr=1e-3)
    run(resumed, first, range(5))
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    second = cls(resumed, lr=0.01, hypergrad_lr=1e-3)
    second.load_state_dict(torch.load(buffer, weights_only=True))
    assert second.param_groups[0]["lr"] == first.param_groups[0]["lr"] != 0.01
    run(resumed, second, range(5, 12))
    uninterrupted = cls(straight, lr=0.01, hypergrad_lr=1e-3)
    run(straight, uninterrupted, range(12))
    assert second.param_groups[0]["lr"] == uninterrupted.param_groups[0]["lr"]
    for a, b in zip(resumed, straight, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("cls", [SGDHD, AdamHD])
def test_a_refused_step_changes_no_lr(cls):
    dense, sparse = torch.ones(2, requires_grad=True), torch.ones(3, requires_grad=True)
    optimizer = cls([{"params": [dense]}, {"params": [sparse]}], lr=0.1, hypergrad_lr=0.1)
    for _ in range(2):
        dense.grad, sparse.grad = torch.ones(2), torch.ones(3)
        optimizer.step()
    lrs = [group["lr"] for group in optimizer.param_groups]
    values = [dense.detach().clone(), sparse.detach().clone()]
    dense.grad = torch.ones(2)
    sparse.grad = torch.sparse_coo_tensor([[0]], [1.0], (3,))
    with pytest.raises(RuntimeError, match="does not support sparse gradients"):
        optimizer.step()
    assert [group["lr"] for group in optimizer.param_groups] == lrs
    assert torch.equal(dense.detach(), values[0]) and torch.equal(sparse.detach(), values[1])


def test_a_tensor_lr_is_learned_in_place():
    x = torch.tensor([1.0, -1.0], dtype=torch.float64, requires_grad=True)
    lr = torch.tensor(0.1, dtype=torch.float64)
    optimizer = SGDHD([x], lr=lr, hypergrad_lr=0.01)
    for _ in range(2):
        optimizer.zero_grad()
        quadratic(x).backward()
        optimizer.step()
    assert optimizer.param_groups[0]["lr"] is lr
    assert lr.item() == pytest.approx(0.14)


def test_complex_parameters_learn_as_pairs_of_reals():
    z = torch.tensor([1 + 2j, -3 - 0.5j], dtype=torch.complex128, requires_grad=True)
    x = torch.view_as_real(z.detach()).clone().requires_grad_()
    complex_opt = AdamHD([z], lr=0.1, hypergrad_lr=0.01)
    real_opt = AdamHD([x], lr=0.1, hypergrad_lr=0.01)
    for step in range(4):
        grad = torch.randn(2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(step))
        z.grad, x.grad = torch.view_as_complex(grad.clone()), grad.clone()
        complex_opt.step()
        real_opt.step()
    assert complex_opt.param_groups[0]["lr"] == real_opt.param_groups[0]["lr"] != 0.1
    torch.testing.assert_close(torch.view_as_real(z.detach()), x.detach())


@pytest.mark.parametrize("cls", [SGDHD, AdamHD])
@pytest.mark.parametrize(
    ("options", "message"),
    [
        (dict(lr=-1.0), "Invalid learning rate: lr=-1.0"),
        (dict(hypergrad_lr=-1e-3), "Invalid hypergrad_lr value: -0.001"),
        (dict(hypergrad_lr=math.nan), "Invalid hypergrad_lr value: nan"),
        (dict(weight_decay=-0.1), "Invalid weight_decay value: -0.1"),
    ],
)
def test_bad_hyper_parameters_are_named(cls, options, message):
    with pytest.raises(ValueError, match=message):
        cls([torch.zeros(2, requires_grad=True)], **options)


def test_adam_hd_names_bad_betas():
    with pytest.raises(ValueError, match=r"betas\[1\]=1.5"):
        AdamHD([torch.zeros(2, requires_grad=True)], betas=(0.9, 1.5))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("cls", [SGDHD, AdamHD])
def test_cuda_matches_cpu(cls):
    cpu = make_params(torch.float64)
    cuda = [p.detach().cuda().requires_grad_() for p in cpu]
    cpu_opt, cuda_opt = cls(cpu, lr=0.01, hypergrad_lr=1e-3), cls(cuda, lr=0.01, hypergrad_lr=1e-3)
    for step in range(10):
        set_grads([cpu, cuda], step)
        cpu_opt.step()
        cuda_opt.step()
    assert cuda_opt.param_groups[0]["lr"] == pytest.approx(cpu_opt.param_groups[0]["lr"])
    assert_close_lists([p.cpu() for p in cuda], cpu, torch.float64)


@pytest.mark.parametrize("cls", [SGDHD, AdamHD])
def test_step_hooks_run_once_per_step_after_the_base_class_was_built(cls):
    # torch wraps a class's step with the hook runner when its first instance is built;
    # AdamHD's step must not run Adam's wrapped step (and its hooks) a second time
    torch.optim.Adam([torch.nn.Parameter(torch.ones(1))])
    Adam([torch.nn.Parameter(torch.ones(1))])
    p = torch.nn.Parameter(torch.ones(3))
    optimizer = cls([p], lr=0.1)
    calls = []
    optimizer.register_step_pre_hook(lambda *_: calls.append("pre"))
    optimizer.register_step_post_hook(lambda *_: calls.append("post"))
    p.grad = torch.ones(3)
    optimizer.step()
    assert calls == ["pre", "post"]


@pytest.mark.parametrize("impl", ["loop", "foreach"])
def test_a_parameter_without_a_gradient_did_not_move_so_it_adds_nothing_to_the_next_h(impl):
    """b has no gradient at step 3, so u_3 = 0 for it and h_4 = g_4 . u_3 sees only a.

    By hand, with g_a = (1, 1) every step and g_b = 2, 5, -, 7, lr 0.1, beta 0.01:
    h_2 = -(1*1 + 1*1 + 5*2)*0.1 ... worked through as lr_t = lr_{t-1} + beta g_t . g_{t-1}.
    """
    a = torch.tensor([1.0, 2.0], dtype=torch.float64, requires_grad=True)
    b = torch.tensor([3.0], dtype=torch.float64, requires_grad=True)
    optimizer = SGDHD([a, b], lr=0.1, hypergrad_lr=0.01, foreach=impl == "foreach")
    lrs = []
    for grad_b in [2.0, 5.0, None, 7.0]:
        a.grad = torch.ones(2, dtype=torch.float64)
        b.grad = None if grad_b is None else torch.tensor([grad_b], dtype=torch.float64)
        optimizer.step()
        lrs.append(optimizer.param_groups[0]["lr"])
    # step 2: 0.1 + 0.01 (1 + 1 + 10); step 3: + 0.01 (1 + 1), b absent; step 4: + 0.01 (1 + 1)
    assert lrs == pytest.approx([0.1, 0.22, 0.24, 0.26], abs=1e-15)


def test_adam_hd_skips_a_parameter_that_did_not_move_and_resumes_exactly():
    """Adam-HD's h_t leaves out a parameter without a gradient at t-1 (its u is 0), also
    after a state_dict round trip taken right after that step."""
    a = torch.tensor([1.0, 2.0], dtype=torch.float64, requires_grad=True)
    b = torch.tensor([3.0], dtype=torch.float64, requires_grad=True)
    grads_b = [2.0, 5.0, None, 7.0]

    def run(resume_after: int | None) -> list[float]:
        x, y = a.detach().clone().requires_grad_(), b.detach().clone().requires_grad_()
        optimizer = AdamHD([x, y], lr=0.1, hypergrad_lr=0.01)
        lrs = []
        for t, grad_b in enumerate(grads_b):
            x.grad = torch.tensor([1.0, -0.5], dtype=torch.float64) * (t + 1)
            y.grad = None if grad_b is None else torch.tensor([grad_b], dtype=torch.float64)
            if t == 3:  # h_4 = g_4 . u_3 over x only: u_3 of y is 0
                state = optimizer.state[x]
                beta1, beta2 = 0.9, 0.999
                m_hat = state["exp_avg"] / (1 - beta1**3)
                v_hat = state["exp_avg_sq"] / (1 - beta2**3)
                u = -m_hat / (v_hat.sqrt() + 1e-8)
                expected = lrs[-1] - 0.01 * float(x.grad @ u)
            optimizer.step()
            lrs.append(optimizer.param_groups[0]["lr"])
            if t == resume_after:
                saved = optimizer.state_dict()
                buffer = io.BytesIO()
                torch.save(saved, buffer)
                buffer.seek(0)
                optimizer = AdamHD([x, y], lr=0.1, hypergrad_lr=0.01)
                optimizer.load_state_dict(torch.load(buffer, weights_only=True))
        assert lrs[-1] == pytest.approx(expected, rel=1e-12)
        return lrs

    assert run(resume_after=2) == run(resume_after=None)
