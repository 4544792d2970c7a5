"""Edge cases found in review: low precision, copies, frozen parameters, partial state, sparse."""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest
import torch
from optim_cases import CASES, assert_close_lists, case_id, clone_params, make_params, set_grads

from torchopt_edu import optim as ours
from torchopt_edu.lr_scheduler import OneCycleLR

ONE_PER_ALGORITHM = [CASES[i] for i in (3, 8, 14, 20, 23)]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("case", ONE_PER_ALGORITHM, ids=case_id)
def test_low_precision_parameters_follow_torch(case, dtype):
    # torch 2.13's fused SGD skips vector blocks in half precision on CPU; ours must not.
    ours_cls, torch_cls, kwargs = case
    generator = torch.Generator().manual_seed(0)
    base = [torch.randn(70, generator=generator).to(dtype) for _ in range(2)]
    reference = [b.clone().requires_grad_() for b in base]
    candidate = [b.clone().requires_grad_() for b in base]
    torch_opt, our_opt = torch_cls(reference, **kwargs), ours_cls(candidate, **kwargs)
    for step in range(10):
        # |g| in [0.5, 1.5]: g^2 stays representable in float16 (torch's loop would divide by 0)
        noise = torch.rand(70, generator=torch.Generator().manual_seed(step)) + 0.5
        grads = [(noise * torch.randn(70, generator=generator).sign()).to(dtype)] * 2
        for p, q, g in zip(reference, candidate, grads, strict=True):
            p.grad, q.grad = g.clone(), g.clone()
        torch_opt.step()
        our_opt.step()
    for ours_p, torch_p, start in zip(candidate, reference, base, strict=True):
        assert (ours_p.detach() != start).float().mean() > 0.9  # every block really moved
        # a few ulps apart at most: fused kernels compute in float32, torch's loop rounds each op
        torch.testing.assert_close(
            ours_p.detach().float(),
            torch_p.detach().float(),
            rtol=0,
            atol=4 * torch.finfo(dtype).eps * 4,
        )


@pytest.mark.parametrize("flat", [False, True])
@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
@pytest.mark.parametrize("case", ONE_PER_ALGORITHM, ids=case_id)
def test_copied_optimizer_continues_like_the_original(case, how, flat):
    ours_cls, _, kwargs = case
    params = make_params(torch.float64)
    optimizer = ours_cls(params, **kwargs, flat=flat)
    for step in range(3):
        set_grads([params], step)
        optimizer.step()
    twin = copy.deepcopy(optimizer) if how == "deepcopy" else pickle.loads(pickle.dumps(optimizer))
    twin_params = twin.param_groups[0]["params"]
    assert twin_params[0] is not params[0]
    for step in range(3, 8):
        set_grads([params, twin_params], step)
        optimizer.step()
        twin.step()
    assert_close_lists(twin_params, params, torch.float64)


@pytest.mark.parametrize("case", ONE_PER_ALGORITHM, ids=case_id)
def test_flat_mode_leaves_unused_and_frozen_parameters_alone(case):
    ours_cls, torch_cls, kwargs = case
    kwargs = {**kwargs, "weight_decay": 0.1}

    def run(cls, **extra):
        used = torch.nn.Parameter(torch.ones(3, dtype=torch.float64))
        unused = torch.nn.Parameter(torch.ones(3, dtype=torch.float64))
        frozen = torch.ones(3, dtype=torch.float64)
        optimizer = cls([used, unused, frozen], **kwargs, **extra)
        for _ in range(4):
            optimizer.zero_grad()
            (used**2).sum().backward()
            optimizer.step()
        return used, unused, frozen

    used, unused, frozen = run(ours_cls, flat=True)
    torch_used, _, _ = run(torch_cls)
    assert unused.grad is None
    assert torch.equal(unused.detach(), torch.ones(3, dtype=torch.float64))
    assert torch.equal(frozen, torch.ones(3, dtype=torch.float64))
    torch.testing.assert_close(used.detach(), torch_used.detach(), rtol=1e-10, atol=1e-12)


def test_flat_mode_tolerates_state_read_before_the_first_step():
    params = make_params(torch.float64)
    optimizer = ours.Adam(params, flat=True)
    assert all(optimizer.state[p] == {} for p in params)  # creates empty entries
    set_grads([params], 0)
    optimizer.step()
    assert optimizer.state[params[0]]["step"] == 1


@pytest.mark.parametrize("flat", [False, True])
def test_momentum_warm_up_from_zero_matches_torch(flat):
    reference = make_params(torch.float64)
    candidate = clone_params(reference)
    torch_opt = torch.optim.SGD(reference, lr=0.1, momentum=0.0)
    our_opt = ours.SGD(candidate, lr=0.1, momentum=0.0, flat=flat)
    for step in range(6):
        if step == 2:
            for optimizer in (torch_opt, our_opt):
                optimizer.param_groups[0]["momentum"] = 0.5
        set_grads([reference, candidate], step)
        torch_opt.step()
        our_opt.step()
    assert_close_lists(candidate, reference, torch.float64)


def test_flat_mode_loads_partial_state_and_continues_like_normal_mode():
    saved_params = make_params(torch.float64)
    saver = torch.optim.Adam(saved_params, lr=0.1)
    for step in range(3):
        set_grads([saved_params], step)
        saved_params[3].grad = None  # this parameter has no state in the checkpoint
        saver.step()
    checkpoint = copy.deepcopy(saver.state_dict())
    normal_params, flat_params = (
        make_params(torch.float64, seed=5),
        make_params(torch.float64, seed=5),
    )
    normal = ours.Adam(normal_params, lr=0.1)
    flat = ours.Adam(flat_params, lr=0.1, flat=True)
    for step in range(2):  # the flat optimizer has packed state before the load
        set_grads([normal_params, flat_params], step)
        normal.step()
        flat.step()
    normal.load_state_dict(copy.deepcopy(checkpoint))  # torch shares loaded "step" tensors
    flat.load_state_dict(copy.deepcopy(checkpoint))
    for step in range(2, 8):
        set_grads([normal_params, flat_params], step)
        normal.step()
        flat.step()
    assert_close_lists(flat_params, normal_params, torch.float64)
    assert flat.state[flat_params[0]]["step"] == normal.state[normal_params[0]]["step"] == 9


def test_nesterov_with_sparse_gradients_matches_torch():
    torch.manual_seed(0)
    embeddings = [torch.nn.Embedding(6, 2, sparse=True).double() for _ in range(2)]
    embeddings[1].load_state_dict(embeddings[0].state_dict())
    kwargs = dict(lr=0.1, momentum=0.9, nesterov=True)
    optimizers = [
        torch.optim.SGD(embeddings[0].parameters(), **kwargs),
        ours.SGD(embeddings[1].parameters(), **kwargs),
    ]
    for rows in ([1, 2], [2, 3], [1, 4]):
        for embedding, optimizer in zip(embeddings, optimizers, strict=True):
            optimizer.zero_grad()
            embedding(torch.tensor(rows)).pow(2).sum().backward()
            optimizer.step()
    torch.testing.assert_close(embeddings[1].weight, embeddings[0].weight, rtol=1e-12, atol=0)


@pytest.mark.parametrize("cls", [ours.Adam, ours.AdamW, ours.RMSprop, ours.Yogi, ours.Momentum])
def test_sparse_gradient_on_a_dense_only_optimizer_is_rejected_before_any_change(cls):
    dense = torch.nn.Parameter(torch.ones(3))
    embedding = torch.nn.Embedding(4, 2, sparse=True)
    optimizer = cls([dense, embedding.weight])
    dense.grad = torch.ones(3)
    embedding(torch.tensor([1])).sum().backward()
    if cls is ours.Momentum:  # SGD's family handles sparse gradients: it must just work
        optimizer.step()
        return
    weight_before = embedding.weight.detach().clone()
    with pytest.raises(RuntimeError, match=f"{cls.__name__} does not support sparse gradients"):
        optimizer.step()
    assert torch.equal(dense.detach(), torch.ones(3))
    assert torch.equal(embedding.weight.detach(), weight_before)
    assert all(not state or state["step"] == 0 for state in optimizer.state.values())


def test_numpy_scalars_are_accepted_like_torch():
    params, twins = make_params(torch.float64), make_params(torch.float64)
    optimizer = ours.Adam(
        params, lr=np.float32(0.01), betas=np.array([0.9, 0.999]), weight_decay=np.int64(0)
    )
    twin = torch.optim.Adam(twins, lr=float(np.float32(0.01)), betas=(0.9, 0.999))
    sgd = ours.SGD(params, lr=np.float64(0.1), momentum=np.float32(0.9))
    sgd_twin = torch.optim.SGD(twins, lr=0.1, momentum=float(np.float32(0.9)))
    for step in range(3):
        set_grads([params, twins], step)
        optimizer.step()
        twin.step()
        sgd.step()
        sgd_twin.step()
    assert_close_lists(params, twins, torch.float64)


def test_failed_flat_add_param_group_leaves_the_optimizer_usable():
    params = make_params(torch.float64)
    optimizer = ours.Adam(params[:2], flat=True)
    with pytest.raises(ValueError, match="flat=True supports dense real floating-point"):
        optimizer.add_param_group({"params": [torch.ones(2, dtype=torch.complex64)]})
    assert len(optimizer.param_groups) == 1
    set_grads([params], 0)
    optimizer.step()


def test_failed_flat_constructor_changes_no_parameter():
    good = torch.nn.Parameter(torch.ones(3))
    storage = good.untyped_storage().data_ptr()
    bad = torch.ones(2, dtype=torch.complex64, requires_grad=True)
    with pytest.raises(ValueError, match="complex64"):
        ours.SGD([{"params": [good]}, {"params": [bad]}], lr=0.1, flat=True)
    assert good.untyped_storage().data_ptr() == storage
    assert good.grad is None


def test_adagrad_state_exists_from_construction_like_torch():
    params, torch_params = make_params(torch.float64), make_params(torch.float64)
    optimizer = ours.Adagrad(params, initial_accumulator_value=0.5)
    reference = torch.optim.Adagrad(torch_params, initial_accumulator_value=0.5)
    ours_state, torch_state = optimizer.state_dict()["state"], reference.state_dict()["state"]
    assert ours_state.keys() == torch_state.keys()
    for index in ours_state:
        torch.testing.assert_close(ours_state[index]["sum"], torch_state[index]["sum"])
    optimizer.share_memory()
    assert optimizer.state[params[0]]["sum"].is_shared()


def test_sgd_without_momentum_keeps_no_state_like_torch():
    params = make_params(torch.float64)
    optimizer = ours.SGD(params, lr=0.1)
    set_grads([params], 0)
    optimizer.step()
    assert optimizer.state_dict()["state"] == {}


@pytest.mark.parametrize("impl", [dict(foreach=False), dict(), dict(flat=True)])
def test_momentum_follows_a_cycled_beta(impl):
    # With beta_t changing every step the EMA is v_t = beta_t v_{t-1} + (1 - beta_t) g_t.
    theta = torch.zeros(4, dtype=torch.float64, requires_grad=True)
    optimizer = ours.Momentum([theta], lr=0.1, beta=0.9, **impl)
    scheduler = OneCycleLR(
        optimizer,
        max_lr=0.5,
        total_steps=12,
        cycle_momentum=True,
        base_momentum=0.8,
        max_momentum=0.95,
    )
    velocity, expected = torch.zeros(4, dtype=torch.float64), torch.zeros(4, dtype=torch.float64)
    for step in range(12):
        lr, beta = optimizer.param_groups[0]["lr"], optimizer.param_groups[0]["momentum"]
        grad = torch.full((4,), float(step + 1), dtype=torch.float64)
        theta.grad = grad.clone()
        optimizer.step()
        velocity = beta * velocity + (1 - beta) * grad
        expected = expected - lr * velocity
        scheduler.step() if step < 11 else None
    torch.testing.assert_close(theta.detach(), expected, rtol=1e-12, atol=1e-14)
