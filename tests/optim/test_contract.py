"""The drop-in contract: closures, groups, state_dict exchange, schedulers, AMP, sparse, CUDA."""

from __future__ import annotations

import copy

import pytest
import torch
from optim_cases import CASES, assert_close_lists, case_id, clone_params, make_params, set_grads

from torchopt_edu import optim as ours

DISTINCT = [CASES[i] for i in (3, 8, 14, 20, 23)]  # one rich case per algorithm


def _least_squares(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(32, 5, generator=generator, dtype=torch.float64)
    targets = features @ torch.arange(1.0, 6.0, dtype=torch.float64) + 0.5
    return features, targets


@pytest.mark.parametrize("case", DISTINCT, ids=case_id)
def test_closure_returns_loss_and_matches_torch(case):
    ours_cls, torch_cls, kwargs = case
    features, targets = _least_squares()
    models = [torch.nn.Linear(5, 1).double() for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    optimizers = [
        torch_cls(models[0].parameters(), **kwargs),
        ours_cls(models[1].parameters(), **kwargs),
    ]
    for _ in range(15):
        losses = []
        for model, optimizer in zip(models, optimizers, strict=True):

            def closure(model=model, optimizer=optimizer):
                optimizer.zero_grad()
                loss = ((model(features).squeeze(1) - targets) ** 2).mean()
                loss.backward()
                return loss

            losses.append(optimizer.step(closure))
        torch.testing.assert_close(losses[1], losses[0], rtol=1e-10, atol=0)
    assert_close_lists(list(models[1].parameters()), list(models[0].parameters()), torch.float64)


@pytest.mark.parametrize("flat", [False, True])
@pytest.mark.parametrize("case", DISTINCT, ids=case_id)
def test_param_groups_and_add_param_group(case, flat):
    ours_cls, torch_cls, kwargs = case
    reference = make_params(torch.float64)
    candidate = clone_params(reference)
    lr = kwargs.get("lr", 0.01)

    def groups(params):
        return [{"params": params[:2]}, {"params": params[2:3], "lr": lr / 3}]

    torch_opt = torch_cls(groups(reference), **kwargs)
    our_opt = ours_cls(groups(candidate), **kwargs, flat=flat)
    for step in range(10):
        if step == 4:  # a group added mid-run, with its own hyper-parameter
            torch_opt.add_param_group({"params": reference[3:], "lr": lr * 2})
            our_opt.add_param_group({"params": candidate[3:], "lr": lr * 2})
        set_grads([reference, candidate], step)
        if step < 4:
            for p in (reference[3], candidate[3]):
                p.grad = None
        torch_opt.step()
        our_opt.step()
    assert_close_lists(candidate, reference, torch.float64)
    assert our_opt.param_groups[1]["lr"] == lr / 3


@pytest.mark.parametrize("direction", ["torch_to_ours", "ours_to_torch"])
@pytest.mark.parametrize("flat", [False, True])
@pytest.mark.parametrize("case", DISTINCT, ids=case_id)
def test_state_dict_exchange_continues_identically(case, direction, flat):
    ours_cls, torch_cls, kwargs = case
    if direction == "ours_to_torch" and flat:
        pytest.skip("covered by torch_to_ours: flat mode changes storage, not the saved format")
    first_cls, second_cls = (
        (torch_cls, ours_cls) if direction == "torch_to_ours" else (ours_cls, torch_cls)
    )
    extra = {"flat": True} if flat else {}

    def build(cls, params):
        return cls(params, **kwargs, **(extra if cls is ours_cls else {}))

    uninterrupted = make_params(torch.float64)
    resumed = clone_params(uninterrupted)
    reference_opt = build(first_cls, uninterrupted)
    first_opt = build(first_cls, resumed)
    for step in range(10):
        set_grads([uninterrupted, resumed], step)
        reference_opt.step()
        first_opt.step()
    saved = copy.deepcopy(first_opt.state_dict())
    # continue with the other library's optimizer on the same parameters
    second_opt = build(second_cls, resumed)
    second_opt.load_state_dict(saved)
    for step in range(10, 25):
        set_grads([uninterrupted, resumed], step)
        reference_opt.step()
        second_opt.step()
    assert_close_lists(resumed, uninterrupted, torch.float64)


@pytest.mark.parametrize("case", DISTINCT, ids=case_id)
def test_torch_schedulers_drive_our_optimizers(case):
    ours_cls, torch_cls, kwargs = case
    reference = make_params(torch.float64)
    candidate = clone_params(reference)
    torch_opt = torch_cls(reference, **kwargs)
    our_opt = ours_cls(candidate, **kwargs)
    schedulers = [
        torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5) for opt in (torch_opt, our_opt)
    ]
    for step in range(12):
        set_grads([reference, candidate], step)
        torch_opt.step()
        our_opt.step()
        for scheduler in schedulers:
            scheduler.step()
    assert schedulers[0].get_last_lr() == schedulers[1].get_last_lr()
    assert_close_lists(candidate, reference, torch.float64)


@pytest.mark.parametrize("cls", [ours.SGD, ours.Adam])
def test_one_cycle_cycles_momentum_and_betas_of_ours(cls):
    params = make_params(torch.float64)
    kwargs = {"momentum": 0.9} if cls is ours.SGD else {}
    optimizer = cls(params, lr=0.01, **kwargs)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.1, total_steps=20)
    seen = set()
    for step in range(19):
        set_grads([params], step)
        optimizer.step()
        scheduler.step()
        group = optimizer.param_groups[0]
        seen.add(round(group["momentum"] if cls is ours.SGD else group["betas"][0], 6))
    assert len(seen) > 5  # the scheduler really moved our momentum / beta1


@pytest.mark.parametrize("case", DISTINCT, ids=case_id)
def test_grad_scaler_skips_inf_step_and_leaves_state_untouched(case):
    ours_cls, _, kwargs = case
    model = torch.nn.Linear(4, 2)
    optimizer = ours_cls(model.parameters(), **kwargs)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**4)
    inputs = torch.randn(8, 4)

    def train_step(poison: bool) -> None:
        optimizer.zero_grad()
        loss = model(inputs).pow(2).mean()
        scaler.scale(loss).backward()
        if poison:
            model.weight.grad[0, 0] = float("inf")
        scaler.step(optimizer)
        scaler.update()

    train_step(poison=False)
    params_before = [p.detach().clone() for p in model.parameters()]
    state_before = copy.deepcopy(optimizer.state_dict()["state"])
    train_step(poison=True)
    for p, before in zip(model.parameters(), params_before, strict=True):
        assert torch.equal(p.detach(), before)
    state_after = optimizer.state_dict()["state"]
    assert state_after.keys() == state_before.keys()
    for index, entries in state_before.items():
        for key, value in entries.items():
            assert torch.equal(state_after[index][key], value), key
    assert scaler.get_scale() == 2.0**3  # the scaler saw the inf and backed off


@pytest.mark.parametrize(
    "ours_cls, torch_cls, kwargs",
    [
        (ours.Adagrad, torch.optim.Adagrad, dict(lr=0.1)),
        (ours.Adagrad, torch.optim.Adagrad, dict(lr=0.1, lr_decay=0.05, maximize=True)),
        (ours.SGD, torch.optim.SGD, dict(lr=0.1)),
        (ours.SGD, torch.optim.SGD, dict(lr=0.1, momentum=0.9)),
    ],
)
def test_sparse_gradients_match_torch(ours_cls, torch_cls, kwargs):
    torch.manual_seed(0)
    embeddings = [torch.nn.Embedding(10, 3, sparse=True).double() for _ in range(2)]
    embeddings[1].load_state_dict(embeddings[0].state_dict())
    optimizers = [
        torch_cls(embeddings[0].parameters(), **kwargs),
        ours_cls(embeddings[1].parameters(), **kwargs),
    ]
    generator = torch.Generator().manual_seed(1)
    for _ in range(8):
        rows = torch.randint(0, 10, (5,), generator=generator)
        for embedding, optimizer in zip(embeddings, optimizers, strict=True):
            optimizer.zero_grad()
            embedding(rows).pow(2).sum().backward()
            assert embedding.weight.grad.is_sparse
            optimizer.step()
    torch.testing.assert_close(embeddings[1].weight, embeddings[0].weight, rtol=1e-10, atol=0)


def test_sparse_gradient_with_weight_decay_is_rejected_before_any_change():
    embedding = torch.nn.Embedding(6, 2, sparse=True)
    optimizer = ours.Adagrad(embedding.parameters(), weight_decay=0.1)
    embedding(torch.tensor([1, 2])).sum().backward()
    before = embedding.weight.detach().clone()
    with pytest.raises(RuntimeError, match="weight_decay.*sparse"):
        optimizer.step()
    assert torch.equal(embedding.weight.detach(), before)


def test_sparse_gradient_with_fused_true_is_rejected():
    embedding = torch.nn.Embedding(6, 2, sparse=True)
    optimizer = ours.SGD(embedding.parameters(), lr=0.1, fused=True)
    embedding(torch.tensor([1])).sum().backward()
    with pytest.raises(RuntimeError, match="fused=True"):
        optimizer.step()


def test_rmsprop_fast_path_leaves_gradients_untouched():
    params = make_params(torch.float32)
    set_grads([params], 0)
    grads_before = [p.grad.clone() for p in params]
    ours.RMSprop(params).step()
    for p, g in zip(params, grads_before, strict=True):
        assert torch.equal(p.grad, g)


def test_named_parameters_are_accepted_like_torch():
    model = torch.nn.Linear(3, 1)
    optimizer = ours.Adam(model.named_parameters(), lr=0.1)
    assert optimizer.param_groups[0]["param_names"] == ["weight", "bias"]
    model(torch.ones(2, 3)).sum().backward()
    optimizer.step()


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@CUDA
@pytest.mark.parametrize("impl", [dict(foreach=False), dict(foreach=True), dict(), dict(flat=True)])
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_cuda_matches_torch_on_cuda(case, impl):
    ours_cls, torch_cls, kwargs = case
    reference = make_params(torch.float32, device="cuda")
    candidate = clone_params(reference)
    torch_opt = torch_cls(reference, **kwargs)
    our_opt = ours_cls(candidate, **kwargs, **impl)
    for step in range(30):
        set_grads([reference, candidate], step)
        torch_opt.step()
        our_opt.step()
    for p in candidate:
        assert p.device.type == "cuda"
    assert_close_lists(candidate, reference, torch.float32)


@pytest.mark.parametrize(
    "cls, kwargs",
    [
        (ours.Adam, {}),
        (ours.SGD, dict(lr=0.1, momentum=0.9)),
        (ours.Adagrad, {}),
        (ours.RMSprop, {}),
    ],
)
def test_small_and_large_tensors_split_across_thread_counts_give_the_same_numbers(cls, kwargs):
    # Tensors below PARALLEL_GRAIN run the fused kernel on one thread, larger ones on all.
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        generator = torch.Generator().manual_seed(0)
        base = [torch.randn(n, generator=generator, dtype=torch.float64) for n in (40_000, 10, 7)]
        fast = [b.clone().requires_grad_() for b in base]
        reference = [b.clone().requires_grad_() for b in base]
        fast_opt, loop_opt = cls(fast, **kwargs), cls(reference, foreach=False, **kwargs)
        for step in range(5):
            set_grads([fast, reference], step)
            fast_opt.step()
            loop_opt.step()
            assert torch.get_num_threads() == 2  # restored after the single-threaded part
        assert_close_lists(fast, reference, torch.float64)
    finally:
        torch.set_num_threads(previous)
