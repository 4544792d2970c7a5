"""Schedule-Free SGD and AdamW: parity with the reference package `schedulefree`, the train/eval
switch, warm-up, exact resume, state dicts across packages, errors."""

from __future__ import annotations

import io
from typing import Any

import pytest
import torch
from optim_cases import COMPILED_IMPLS, assert_close_lists, clone_params, make_params, set_grads

from torchopt_edu.optim import AdamWScheduleFree, SGDScheduleFree, evaluation_point

schedulefree = pytest.importorskip("schedulefree")

OURS = {"sgd": SGDScheduleFree, "adamw": AdamWScheduleFree}
THEIRS = {"sgd": schedulefree.SGDScheduleFree, "adamw": schedulefree.AdamWScheduleFree}
OPTIONS = {
    "sgd": [
        dict(lr=0.1),
        dict(lr=0.05, momentum=0.5, weight_decay=0.1),
        dict(lr=0.2, warmup_steps=10, r=0.5, weight_lr_power=1.0, weight_decay=0.01),
    ],
    "adamw": [
        dict(),
        dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1),
        dict(lr=0.05, warmup_steps=10, r=1.0, weight_lr_power=0.0, weight_decay=0.01),
        dict(lr=0.02, warmup_steps=5, betas=(0.95, 0.9)),
    ],
}
IMPLS = {
    "loop": dict(foreach=False),
    "foreach": dict(foreach=True),
    "default": dict(),
    "flat": dict(flat=True),
    **COMPILED_IMPLS,
}
CASES = [
    (name, options, impl)
    for name, option_list in OPTIONS.items()
    for options in option_list
    for impl in [*IMPLS, *(["fused"] if name == "adamw" else [])]
]
GROUP_COUNTERS = ("k", "lr_max", "weight_sum", "scheduled_lr", "train_mode")


def _impl(impl: str) -> dict[str, Any]:
    return dict(fused=True) if impl == "fused" else IMPLS[impl]


def _run_both(name: str, options: dict[str, Any], impl: str, dtype: torch.dtype, steps: int):
    reference = make_params(dtype)
    candidate = clone_params(reference)
    theirs = THEIRS[name](reference, **options)
    ours = OURS[name](candidate, **options, **_impl(impl))
    theirs.train()
    ours.train()
    for step in range(steps):
        set_grads([reference, candidate], step)
        theirs.step()
        ours.step()
        if step in (7, 30):  # a round trip to the average and back changes nothing
            theirs.eval(), ours.eval()
            assert_close_lists(candidate, reference, dtype)
            theirs.train(), ours.train()
    return reference, candidate, theirs, ours


@pytest.mark.parametrize(("name", "options", "impl"), CASES, ids=str)
def test_same_numbers_as_schedulefree_over_50_steps(name, options, impl):
    reference, candidate, theirs, ours = _run_both(name, options, impl, torch.float64, 50)
    assert_close_lists(candidate, reference, torch.float64)  # y
    for p, q in zip(candidate, reference, strict=True):
        assert set(ours.state[p]) == set(theirs.state[q])
        for key in theirs.state[q]:
            torch.testing.assert_close(
                ours.state[p][key], theirs.state[q][key], rtol=1e-10, atol=1e-12
            )
    theirs.eval(), ours.eval()
    assert_close_lists(candidate, reference, torch.float64)  # x, the average
    for key in GROUP_COUNTERS:
        assert ours.param_groups[0][key] == pytest.approx(theirs.param_groups[0][key], rel=1e-14)


@pytest.mark.parametrize("impl", ["default", "compiled-flat"])
@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_float32_default_and_compiled_paths_match_schedulefree(name, impl):
    options = OPTIONS[name][1]
    reference, candidate, *_ = _run_both(name, options, impl, torch.float32, 20)
    assert_close_lists(candidate, reference, torch.float32)


def test_a_parameter_that_gets_its_first_gradient_late_matches_schedulefree():
    reference = make_params(torch.float64)
    candidate = clone_params(reference)
    theirs = schedulefree.AdamWScheduleFree(reference, lr=0.02, warmup_steps=3)
    ours = AdamWScheduleFree(candidate, lr=0.02, warmup_steps=3)
    theirs.train()
    for step in range(12):
        set_grads([reference, candidate], step)
        if step < 5:
            reference[0].grad = candidate[0].grad = None
        theirs.step()
        ours.step()
    theirs.eval(), ours.eval()
    assert_close_lists(candidate, reference, torch.float64)


def test_eval_holds_the_average_and_train_the_gradient_point():
    """y = (1-b) z + b x: eval() recovers x from y and z, train() goes back exactly."""
    params = make_params(torch.float64)
    optimizer = SGDScheduleFree(params, lr=0.1, momentum=0.9)
    for step in range(5):
        set_grads([params], step)
        optimizer.step()
    y = [p.detach().clone() for p in params]
    z = [optimizer.state[p]["z"].clone() for p in params]
    optimizer.eval()
    optimizer.eval()  # a no-op in eval mode
    for p, y_i, z_i in zip(params, y, z, strict=True):
        torch.testing.assert_close(p.detach(), (y_i - 0.1 * z_i) / 0.9, rtol=1e-12, atol=1e-12)
    optimizer.train()
    optimizer.train()
    assert_close_lists(params, y, torch.float64)


def test_first_step_with_warmup_has_the_closed_form():
    """Step 1: c_1 = 1, so x_1 = z_1 and y_1 = z_1 = x_0 - (lr/warmup) g (SGD)."""
    w = torch.tensor([1.0, -2.0], dtype=torch.float64, requires_grad=True)
    optimizer = SGDScheduleFree([w], lr=0.5, warmup_steps=4)
    w.grad = torch.tensor([0.4, 1.0], dtype=torch.float64)
    optimizer.step()
    assert w.tolist() == pytest.approx([1.0 - 0.125 * 0.4, -2.0 - 0.125 * 1.0], rel=1e-15)
    group = optimizer.param_groups[0]
    assert (group["k"], group["scheduled_lr"], group["lr_max"]) == (1, 0.125, 0.125)
    assert group["weight_sum"] == pytest.approx(0.125**2)


def test_steps_without_train_work_and_steps_in_eval_mode_are_refused_unchanged():
    params = make_params(torch.float64)
    optimizer = AdamWScheduleFree(params, lr=0.01)  # starts in train mode
    set_grads([params], 0)
    optimizer.step()
    optimizer.eval()
    before = [p.detach().clone() for p in params]
    state = {p: {k: v.clone() for k, v in optimizer.state[p].items()} for p in params}
    set_grads([params], 1)
    refused = r"step\(\) was called in eval mode .*optimizer.train\(\)"
    with pytest.raises(RuntimeError, match=refused):
        optimizer.step()
    assert_close_lists(params, before, torch.float64)
    for p in params:
        for key, value in state[p].items():
            assert torch.equal(optimizer.state[p][key], value)
    assert optimizer.param_groups[0]["k"] == 1


def test_a_group_added_in_eval_mode_is_in_eval_mode():
    a, b = make_params(torch.float64)[:2]
    optimizer = SGDScheduleFree([a], lr=0.1)
    optimizer.eval()
    optimizer.add_param_group({"params": [b]})
    assert [g["train_mode"] for g in optimizer.param_groups] == [False, False]
    assert optimizer.param_groups[1]["k"] == 0


def _through_a_file(state_dict: dict[str, Any]) -> dict[str, Any]:
    """A state dict as a checkpoint gives it back (no tensor shared with the saver)."""
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def _resume_case(cls, options):
    def run(params, optimizer, steps):
        optimizer.train()
        for step in steps:
            set_grads([params], step)
            optimizer.step()
        optimizer.eval()

    straight = make_params(torch.float64)
    resumed = clone_params(straight)
    first = cls(resumed, **options)
    run(resumed, first, range(6))
    second = cls(resumed, **options)
    second.load_state_dict(_through_a_file(first.state_dict()))
    run(resumed, second, range(6, 15))
    uninterrupted = cls(straight, **options)
    run(straight, uninterrupted, range(6))  # the same eval()/train() round trip, no checkpoint
    run(straight, uninterrupted, range(6, 15))
    for a, b in zip(resumed, straight, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("impl", ["default", "flat", "compiled-flat"])
@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_state_dict_resume_is_exact(name, impl):
    _resume_case(OURS[name], dict(lr=0.02, warmup_steps=4, weight_decay=0.01, **IMPLS[impl]))


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_state_dicts_load_both_ways_with_schedulefree(name):
    options = dict(lr=0.02, warmup_steps=4, weight_decay=0.01)
    reference = make_params(torch.float64)
    candidate = clone_params(reference)
    theirs = THEIRS[name](reference, **options)
    theirs.train()
    for step in range(3):
        set_grads([reference], step)
        theirs.step()
    theirs.eval()  # the reference saves in eval mode
    for p, q in zip(candidate, reference, strict=True):
        p.data.copy_(q)
    ours = OURS[name](candidate, **options)
    ours.load_state_dict(_through_a_file(theirs.state_dict()))
    theirs.train(), ours.train()
    for step in range(3, 8):
        set_grads([reference, candidate], step)
        theirs.step()
        ours.step()
    theirs.eval(), ours.eval()
    back = THEIRS[name](clone_params(candidate), **options)
    back.load_state_dict(_through_a_file(ours.state_dict()))
    assert back.param_groups[0]["k"] == 8
    assert_close_lists(candidate, reference, torch.float64)


@pytest.mark.parametrize(
    ("cls", "options", "error", "message"),
    [
        (SGDScheduleFree, dict(lr=-1.0), ValueError, "Invalid learning rate: lr=-1.0"),
        (SGDScheduleFree, dict(momentum=0.0), ValueError, r"momentum must lie in \(0.0, 1.0\)"),
        (SGDScheduleFree, dict(momentum=1.0), ValueError, "momentum must lie in"),
        (SGDScheduleFree, dict(weight_decay=-0.1), ValueError, "Invalid weight_decay value"),
        (SGDScheduleFree, dict(warmup_steps=-1), ValueError, "warmup_steps must be >= 0"),
        (SGDScheduleFree, dict(warmup_steps=1.5), TypeError, "warmup_steps must be an int"),
        (SGDScheduleFree, dict(r=-1.0), ValueError, r"r must lie in \[0.0, inf\), got -1.0"),
        (AdamWScheduleFree, dict(weight_lr_power=-2.0), ValueError, "weight_lr_power must lie"),
        (AdamWScheduleFree, dict(betas=(0.0, 0.9)), ValueError, r"betas\[0\]=0.0"),
        (AdamWScheduleFree, dict(betas=(0.9, 1.0)), ValueError, r"betas\[1\]=1.0"),
        (AdamWScheduleFree, dict(eps=-1e-8), ValueError, "Invalid eps value: -1e-08"),
    ],
)
def test_bad_hyper_parameters_are_named(cls, options, error, message):
    with pytest.raises(error, match=message):
        cls(make_params(torch.float64), **options)


def test_fused_is_refused_where_no_kernel_applies():
    with pytest.raises(RuntimeError, match="fused=True is not available"):
        SGDScheduleFree(make_params(torch.float64), fused=True)


def test_batchnorm_recipe_recomputes_the_statistics_at_the_average():
    """The docstring's recipe: after eval(), forward passes in train mode under no_grad give
    BatchNorm the statistics of the averaged weights (here: the mean of x @ W_avg)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4, momentum=None))
    optimizer = SGDScheduleFree(model.parameters(), lr=0.5)
    data = torch.randn(64, 3)
    for _ in range(10):
        optimizer.zero_grad()
        model(data).pow(2).sum().backward()
        optimizer.step()
    optimizer.eval()
    model[1].reset_running_stats()
    model.train()
    with torch.no_grad():
        model(data)
    model.eval()
    features = model[0](data).detach()
    torch.testing.assert_close(model[1].running_mean, features.mean(0))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_cuda_default_path_matches_the_cpu_loop(name):
    cpu = make_params(torch.float64)
    cuda = [p.detach().cuda().requires_grad_() for p in cpu]
    options = OPTIONS[name][1]
    loop, default = OURS[name](cpu, **options, foreach=False), OURS[name](cuda, **options)
    for step in range(20):
        set_grads([cpu], step)
        for p, q in zip(cuda, cpu, strict=True):
            p.grad = q.grad.cuda()
        loop.step()
        default.step()
    loop.eval(), default.eval()
    assert_close_lists([p.cpu() for p in cuda], cpu, torch.float64)


@pytest.mark.parametrize(("name", "impl"), [("sgd", "foreach"), ("adamw", "fused")])
def test_the_fast_paths_in_cache_sized_slices_change_no_number(name, impl, monkeypatch):
    from torchopt_edu.optim import _base

    monkeypatch.setattr(_base, "CACHE_SLICE", 16)  # 3 slices of make_params
    reference, candidate, *_ = _run_both(name, OPTIONS[name][1], impl, torch.float64, 30)
    assert_close_lists(candidate, reference, torch.float64)


def test_evaluation_point_holds_the_average_inside_and_the_training_point_after():
    params = make_params(torch.float64)
    optimizer = AdamWScheduleFree(params, lr=0.05)
    for step in range(3):
        set_grads([params], step)
        optimizer.step()
    training_point = clone_params(params)
    optimizer.eval()
    average = clone_params(params)
    optimizer.train()
    with evaluation_point(optimizer):
        assert_close_lists(params, average, torch.float64)
    assert_close_lists(params, training_point, torch.float64)
    with pytest.raises(KeyError), evaluation_point(optimizer):  # back to training on an error
        raise KeyError("evaluation failed")
    assert_close_lists(params, training_point, torch.float64)
    set_grads([params], 3)
    optimizer.step()  # in train mode again: the step is allowed


def test_evaluation_point_leaves_an_optimizer_without_modes_alone():
    params = make_params(torch.float64)
    before = clone_params(params)
    with evaluation_point(torch.optim.SGD(params, lr=0.1)):
        assert_close_lists(params, before, torch.float64)
    assert_close_lists(params, before, torch.float64)
