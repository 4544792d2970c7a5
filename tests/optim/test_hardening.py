"""Bad checkpoints, odd layouts, torch-style flags, refused steps and threads.

Each test here was written against a defect found by attacking the optimizers; it fails on
the code before the fix.
"""

from __future__ import annotations

import collections
import copy
import gc
import io
import threading
import time

import pytest
import torch
from optim_cases import assert_close_lists, stepped

import torchopt_edu.optim as ours
from torchopt_edu.lr_scheduler import CyclicLR

DENSE_TWINS = [
    (ours.SGD, torch.optim.SGD, dict(lr=0.1, momentum=0.9)),
    (ours.Adagrad, torch.optim.Adagrad, dict(lr=0.1)),
    (ours.RMSprop, torch.optim.RMSprop, dict(lr=0.01)),
    (ours.Adam, torch.optim.Adam, dict(lr=0.01)),
    (ours.AdamW, torch.optim.AdamW, dict(lr=0.01)),
]
TWIN_IDS = [cls.__name__ for cls, _, _ in DENSE_TWINS]


def _leaf(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().clone().requires_grad_()


def _snapshot(optimizer: torch.optim.Optimizer) -> dict:
    return copy.deepcopy(
        {
            k: {n: v.clone() if torch.is_tensor(v) else v for n, v in s.items()}
            for k, s in enumerate(optimizer.state.values())
        }
    )


def _assert_same_snapshot(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].keys() == b[key].keys()
        for name in a[key]:
            assert torch.equal(torch.as_tensor(a[key][name]), torch.as_tensor(b[key][name]))


# ---------------------------------------------------------------------------------------
# 1. checkpoints whose state does not fit the parameters


def _checkpoint_of_other_model(cls, shape, flat=False):
    other = [torch.randn(shape, dtype=torch.float64, requires_grad=True)]
    return stepped(cls, other, flat=flat).state_dict()


@pytest.mark.parametrize("flat", [False, True], ids=["default", "flat"])
@pytest.mark.parametrize(
    "bad_shape", [(4, 8), (2, 16), (1,), (100, 100)], ids=["transposed", "same-numel", "1", "big"]
)
@pytest.mark.parametrize(
    "cls", [ours.Adam, ours.AdamW, ours.SGD, ours.Adagrad, ours.RMSprop, ours.Yogi, ours.Momentum]
)
def test_a_checkpoint_with_wrong_state_shapes_is_refused_and_nothing_changes(cls, bad_shape, flat):
    kwargs = dict(momentum=0.9) if cls is ours.SGD else {}
    params = [torch.randn(8, 4, dtype=torch.float64, requires_grad=True)]
    reference = [_leaf(p) for p in params]
    optimizer = stepped(cls, params, flat=flat, **kwargs)
    untouched = stepped(cls, reference, flat=flat, **kwargs)
    before = _snapshot(optimizer)
    bad = _checkpoint_of_other_model(cls, bad_shape)
    if cls is ours.SGD:
        bad = stepped(
            cls, [torch.randn(bad_shape, dtype=torch.float64, requires_grad=True)], momentum=0.9
        ).state_dict()
    with pytest.raises(
        ValueError,
        match=r"param group 0, parameter 0: state\['\w+'\] has shape "
        rf"\({bad_shape[0]},.*but the parameter has shape \(8, 4\)",
    ):
        optimizer.load_state_dict(bad)
    _assert_same_snapshot(_snapshot(optimizer), before)
    for opt, ps in ((optimizer, params), (untouched, reference)):  # the old state still works
        for p in ps:
            p.grad = torch.ones_like(p)
        opt.step()
    assert_close_lists(params, reference, torch.float64)


def test_a_checkpoint_missing_a_state_key_or_with_wrong_types_is_refused():
    params = [torch.randn(3, 2, requires_grad=True)]
    optimizer = stepped(ours.Adam, params)
    good = optimizer.state_dict()
    before = _snapshot(optimizer)

    def corrupted(**state_changes):
        saved = copy.deepcopy(good)
        saved["state"][0].update(state_changes)
        return saved

    missing = copy.deepcopy(good)
    del missing["state"][0]["exp_avg_sq"]
    with pytest.raises(ValueError, match="has no 'exp_avg_sq'"):
        optimizer.load_state_dict(missing)
    with pytest.raises(ValueError, match=r"state\['exp_avg'\] must be a tensor, got float"):
        optimizer.load_state_dict(corrupted(exp_avg=0.5))
    with pytest.raises(ValueError, match=r"state\['step'\] must be a one-element"):
        optimizer.load_state_dict(corrupted(step=torch.zeros(3)))
    with pytest.raises(ValueError, match=r"state\['step'\] must be a whole number >= 0"):
        optimizer.load_state_dict(corrupted(step=torch.tensor(float("nan"))))
    with pytest.raises(ValueError, match=r"state\['step'\] must be a number, got str"):
        optimizer.load_state_dict(corrupted(step="3"))
    with pytest.raises(ValueError, match="different number of parameter groups"):
        optimizer.load_state_dict({"state": {}, "param_groups": []})
    with pytest.raises(ValueError, match="expects a dict with keys 'state' and 'param_groups'"):
        optimizer.load_state_dict({"weights": 1})
    bad_option = copy.deepcopy(good)
    bad_option["param_groups"][0]["lr"] = "fast"
    with pytest.raises(ValueError, match="param group 0 of the checkpoint has a bad option"):
        optimizer.load_state_dict(bad_option)
    _assert_same_snapshot(_snapshot(optimizer), before)
    optimizer.load_state_dict(good)  # and a good one still loads


def test_a_state_saved_with_other_strides_loads_into_the_parameters_layout():
    # saved from a contiguous (4, 3) weight, loaded for a transposed one: same numbers as torch
    contiguous = [torch.randn(4, 3, dtype=torch.float64, requires_grad=True)]
    saved = stepped(torch.optim.Adam, contiguous, lr=0.01).state_dict()
    transposed = _leaf(torch.randn(3, 4, dtype=torch.float64).t())
    assert transposed.stride() == (1, 4)
    twin = _leaf(transposed.detach())
    mine, theirs = ours.Adam([transposed], lr=0.01), torch.optim.Adam([twin], lr=0.01)
    mine.load_state_dict(copy.deepcopy(saved))  # torch's load aliases the checkpoint's tensors
    theirs.load_state_dict(copy.deepcopy(saved))
    for _ in range(3):
        transposed.grad = torch.arange(12.0, dtype=torch.float64).view(4, 3)
        twin.grad = transposed.grad.clone()
        mine.step()
        theirs.step()
    assert_close_lists([transposed], [twin], torch.float64)


# ---------------------------------------------------------------------------------------
# 2. gradients whose memory layout differs from the parameter's


def _layouts():
    transposed = torch.randn(6, 5, dtype=torch.float64).t()  # (5, 6), strides (1, 5)
    channels_last = torch.randn(2, 3, 4, 5, dtype=torch.float64).to(
        memory_format=torch.channels_last
    )
    return {"transposed": transposed, "channels_last": channels_last}


@pytest.mark.parametrize(
    "impl", [{}, dict(fused=True), dict(foreach=True)], ids=["default", "fused", "foreach"]
)
@pytest.mark.parametrize("layout", ["transposed", "channels_last"])
@pytest.mark.parametrize("case", DENSE_TWINS, ids=TWIN_IDS)
def test_a_gradient_with_other_strides_gets_torchs_numbers(case, layout, impl):
    ours_cls, torch_cls, kwargs = case
    base = _layouts()[layout]
    mine, theirs = _leaf(base), _leaf(base)
    assert mine.stride() == base.stride()
    our_opt, torch_opt = ours_cls([mine], **kwargs, **impl), torch_cls([theirs], **kwargs)
    generator = torch.Generator().manual_seed(0)
    for _ in range(3):
        grad = torch.randn(base.shape, generator=generator, dtype=torch.float64).contiguous()
        assert grad.stride() != mine.stride()
        mine.grad, theirs.grad = grad.clone(), grad.clone()
        our_opt.step()
        torch_opt.step()
    assert_close_lists([mine], [theirs], torch.float64)


FUSED_BY_DEFAULT = [
    (ours.AdamWScheduleFree, dict(lr=0.01, warmup_steps=2)),
    (ours.Prodigy, dict(weight_decay=0.01)),
    (ours.Lion, dict(lr=0.01, weight_decay=0.1)),
    (ours.AdamHD, dict(lr=0.01)),
    (ours.Muon, dict(lr=0.01)),  # a 4-D weight goes to its AdamW companion
]


def _run_with_a_layout_change(make, before, after):
    """Four steps on a conv weight laid out as ``before``, converted to ``after`` (what
    ``model.to(memory_format=...)`` does) once the state exists; gradients in its layout."""
    generator = torch.Generator().manual_seed(0)
    weight = torch.nn.Parameter(
        torch.randn(4, 3, 2, 2, generator=generator, dtype=torch.float64).contiguous(
            memory_format=before
        )
    )
    optimizer = make([weight])
    for k in range(4):
        if k == 1:
            weight.data = weight.data.contiguous(memory_format=after)
        weight.grad = torch.sin(weight.detach() * (k + 1))  # sin keeps the layout
        optimizer.step()
    return weight.detach()


LAYOUT_CHANGES = [
    (torch.contiguous_format, torch.channels_last),
    (torch.channels_last, torch.contiguous_format),
]


@pytest.mark.parametrize(("before", "after"), LAYOUT_CHANGES, ids=["to_cl", "from_cl"])
@pytest.mark.parametrize("case", DENSE_TWINS, ids=TWIN_IDS)
def test_a_layout_change_after_the_state_exists_gets_torchs_numbers(case, before, after):
    """torch's fused kernels walk parameter, gradient and state as one layout; state made in
    the old layout was paired with the wrong elements (0.28 off in Adam)."""
    ours_cls, torch_cls, kwargs = case
    mine = _run_with_a_layout_change(lambda ps: ours_cls(ps, **kwargs), before, after)
    theirs = _run_with_a_layout_change(
        lambda ps: torch_cls(ps, **kwargs, foreach=True), before, after
    )
    torch.testing.assert_close(mine, theirs, rtol=0, atol=1e-14)


@pytest.mark.parametrize(("before", "after"), LAYOUT_CHANGES, ids=["to_cl", "from_cl"])
@pytest.mark.parametrize("case", FUSED_BY_DEFAULT, ids=lambda c: c[0].__name__)
def test_a_layout_change_gives_the_reference_loops_numbers(case, before, after):
    cls, kwargs = case
    default = _run_with_a_layout_change(lambda ps: cls(ps, **kwargs), before, after)
    loop = _run_with_a_layout_change(lambda ps: cls(ps, **kwargs, foreach=False), before, after)
    torch.testing.assert_close(default, loop, rtol=0, atol=1e-14)


@pytest.mark.parametrize("case", DENSE_TWINS, ids=TWIN_IDS)
def test_a_strided_parameter_is_updated_whole_and_nothing_beside_it(case):
    """A parameter that is every third entry of a tensor, with a gradient of its strides: the
    fused kernel updated 3 of its 7 entries and wrote into the entries between them."""
    ours_cls, torch_cls, kwargs = case
    storage = torch.arange(1.0, 21.0, dtype=torch.float64)
    mine = storage[::3].detach().requires_grad_()
    theirs = _leaf(mine)
    our_opt, torch_opt = ours_cls([mine], **kwargs), torch_cls([theirs], **kwargs)
    gradient_storage = torch.linspace(-1, 1, 20, dtype=torch.float64)
    mine.grad, theirs.grad = gradient_storage[::3], gradient_storage[::3].clone()
    our_opt.step()
    torch_opt.step()
    torch.testing.assert_close(mine.detach(), theirs.detach(), rtol=0, atol=1e-15)
    between = torch.ones(20, dtype=torch.bool)
    between[::3] = False
    assert torch.equal(storage[between], torch.arange(1.0, 21.0, dtype=torch.float64)[between])


@pytest.mark.parametrize("case", DENSE_TWINS, ids=TWIN_IDS)
def test_an_expanded_parameter_gets_torchs_refusal(case):
    """Eight entries over one memory location: torch refuses to write them; the fused
    kernel wrote past the end of the storage (a segfault for large expansions)."""
    ours_cls, torch_cls, kwargs = case
    for cls in (torch_cls, ours_cls):
        storage = torch.zeros(1, dtype=torch.float64)
        param = storage.expand(8).requires_grad_()
        param.grad = torch.ones(1, dtype=torch.float64).expand(8)
        with pytest.raises(RuntimeError, match="more than one element of the written-to"):
            cls([param], **kwargs).step()
        assert storage.item() == 0.0


# ---------------------------------------------------------------------------------------
# 3. flags as torch accepts them; a failed update changes no state


@pytest.mark.parametrize("flag", ["maximize", "amsgrad"])
def test_integer_flags_mean_what_they_mean_in_torch(flag):
    mine, theirs = (
        _leaf(torch.randn(5, dtype=torch.float64)),
        _leaf(torch.randn(5, dtype=torch.float64)),
    )
    theirs.data.copy_(mine.detach())
    our_opt = ours.Adam([mine], lr=0.1, **{flag: 1})
    torch_opt = torch.optim.Adam([theirs], lr=0.1, **{flag: 1})
    for step in range(4):
        mine.grad = torch.full_like(mine, step - 1.5)
        theirs.grad = mine.grad.clone()
        our_opt.step()
        torch_opt.step()
    assert_close_lists([mine], [theirs], torch.float64)
    assert our_opt.param_groups[0][flag] is True


@pytest.mark.parametrize("value", ["yes", 2, None, 0.5])
def test_other_flag_values_are_refused_at_construction(value):
    with pytest.raises(TypeError, match=f"maximize must be True or False, got {value!r}"):
        ours.Adam([torch.zeros(2, requires_grad=True)], maximize=value)


def test_a_failed_update_takes_back_the_step_count(monkeypatch):
    param = _leaf(torch.randn(4))
    optimizer = ours.Adam([param], lr=0.1)
    param.grad = torch.ones(4)
    optimizer.step()

    def broken(bucket, hyper):
        raise RuntimeError("kernel failed")

    monkeypatch.setitem(ours.Adam.paths, "fused", broken)
    for _ in range(3):
        with pytest.raises(RuntimeError, match="kernel failed"):
            optimizer.step()
    assert optimizer.state[param]["step"].item() == 1


# ---------------------------------------------------------------------------------------
# 4. a refused step changes nothing in any group


def test_a_sparse_gradient_in_a_later_group_refuses_the_whole_step():
    dense, sparse = _leaf(torch.randn(3)), _leaf(torch.randn(4, 2))
    optimizer = ours.Adam([{"params": [dense]}, {"params": [sparse]}], lr=0.1)
    dense.grad = torch.ones(3)
    sparse.grad = torch.sparse_coo_tensor([[0]], torch.ones(1, 2), (4, 2))
    before = dense.detach().clone()
    with pytest.raises(
        RuntimeError, match=r"Adam does not support sparse gradients \(param group 1"
    ):
        optimizer.step()
    assert torch.equal(dense.detach(), before)
    assert len(optimizer.state) == 0


def test_adagrad_sparse_gradient_with_weight_decay_in_a_later_group_changes_nothing():
    dense, sparse = _leaf(torch.randn(3)), _leaf(torch.randn(4, 2))
    optimizer = ours.Adagrad([{"params": [dense]}, {"params": [sparse], "weight_decay": 0.1}])
    dense.grad = torch.ones(3)
    sparse.grad = torch.sparse_coo_tensor([[0]], torch.ones(1, 2), (4, 2))
    before, sums = dense.detach().clone(), optimizer.state[dense]["sum"].clone()
    with pytest.raises(RuntimeError, match="weight_decay option is not compatible with sparse"):
        optimizer.step()
    assert torch.equal(dense.detach(), before)
    assert torch.equal(optimizer.state[dense]["sum"], sums)
    assert optimizer.state[dense]["step"].item() == 0


@pytest.mark.parametrize(
    "option, name",
    [
        (dict(centered=True), "centered=True"),
        (dict(momentum=0.9), "momentum > 0"),
        (dict(weight_decay=0.1), "weight_decay > 0"),
        (dict(maximize=True), "maximize=True"),
    ],
)
def test_rmsprop_fused_with_an_option_it_cannot_fuse_is_refused_at_construction(option, name):
    with pytest.raises(RuntimeError, match=f"fused=True is not available.*not with {name}"):
        ours.RMSprop([torch.zeros(2, requires_grad=True)], fused=True, **option)


def test_rmsprop_fused_refuses_a_momentum_set_by_a_scheduler_before_any_change():
    first, second = _leaf(torch.randn(3)), _leaf(torch.randn(3))
    optimizer = ours.RMSprop([{"params": [first]}, {"params": [second]}], lr=0.01, fused=True)
    for p in (first, second):
        p.grad = torch.ones(3)
    optimizer.step()
    state_before = _snapshot(optimizer)
    params_before = [first.detach().clone(), second.detach().clone()]
    CyclicLR(optimizer, base_lr=0.001, max_lr=0.01, cycle_momentum=False)
    optimizer.param_groups[1]["momentum"] = 0.9  # as a momentum-cycling scheduler would
    with pytest.raises(RuntimeError, match="not with momentum > 0"):
        optimizer.step()
    _assert_same_snapshot(_snapshot(optimizer), state_before)
    assert torch.equal(first.detach(), params_before[0])


# ---------------------------------------------------------------------------------------
# 5. flat mode and parameters that share memory


def test_flat_mode_refuses_parameters_that_share_memory():
    storage = torch.randn(10)
    first, second = torch.nn.Parameter(storage[:5]), torch.nn.Parameter(storage[5:])
    with pytest.raises(ValueError, match="parameter 1 .* shares memory with parameter 0"):
        ours.Adam([first, second], flat=True)
    ours.Adam([first, second])  # the normal mode handles them like torch


def test_flat_mode_refuses_a_duplicate_parameter_with_a_clear_message():
    param = torch.nn.Parameter(torch.randn(3))
    with (
        pytest.warns(UserWarning, match="duplicate parameters"),
        pytest.raises(ValueError, match="parameter 1 .* is listed twice"),
    ):
        ours.SGD([param, param], lr=0.1, flat=True)


def _train_three_steps(model, lr):
    """A training function that builds its own optimizer, as many do."""
    inputs = torch.linspace(-1, 1, 12).reshape(4, 3)
    optimizer = ours.Adam(model.parameters(), lr=lr, flat=True)
    for _ in range(3):
        optimizer.zero_grad()
        model(inputs).pow(2).mean().backward()
        optimizer.step()


def test_flat_mode_takes_a_model_whose_previous_flat_optimizer_is_gone():
    """The first optimizer's buffer object died with it while the parameters kept its memory;
    the second call read them as parameters a user had tied and refused the model."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 1))
    _train_three_steps(model, 1e-2)
    gc.collect()
    before = [p.detach().clone() for p in model.parameters()]
    _train_three_steps(model, 1e-2)
    assert all(not torch.equal(p, b) for p, b in zip(model.parameters(), before, strict=True))


def test_flat_mode_still_refuses_parameters_tied_after_a_flat_optimizer():
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 3))
    ours.SGD(model.parameters(), lr=0.1, flat=True)
    model[1].weight.data = model[0].weight.data  # tied by the user
    with pytest.raises(ValueError, match="parameter 2 .* shares memory with parameter 0"):
        ours.SGD(model.parameters(), lr=0.1, flat=True)


def test_flat_mode_refuses_parameters_in_shared_memory():
    """Hogwild workers share the weights through shared memory; flat mode moved them into a
    private buffer, silently."""
    model = torch.nn.Linear(3, 2)
    model.share_memory()
    with pytest.raises(ValueError, match="parameter 0 .* is in shared memory"):
        ours.SGD(model.parameters(), lr=0.1, flat=True)
    assert all(p.is_shared() for p in model.parameters())
    optimizer = ours.Adagrad(torch.nn.Linear(3, 2).parameters(), lr=0.1, flat=True)
    with pytest.raises(ValueError, match="share_memory\\(\\) with flat=True"):
        optimizer.share_memory()


@pytest.mark.parametrize("swap", [False, True])
def test_flat_mode_copies_gradients_that_alias_each_others_slots(swap):
    """``b.grad = a.grad`` (a view of a's slot) then ``a.grad = 10 a.grad``: copying a's new
    gradient in first overwrote the numbers b's gradient still pointed at."""
    results = []
    for flat in (False, True):
        a, b = torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(3))
        optimizer = ours.SGD([a, b], lr=1.0, flat=flat)
        for _ in range(2):
            optimizer.zero_grad(set_to_none=False)
            (a * torch.tensor([1.0, 2.0, 3.0]) + b * torch.tensor([4.0, 5.0, 6.0])).sum().backward()
            if swap:
                a.grad, b.grad = b.grad, a.grad
            else:
                b.grad = a.grad
                a.grad = a.grad * 10
            optimizer.step()
        results.append((a.detach().clone(), b.detach().clone()))
    for normal, flat in zip(*results, strict=True):
        assert torch.equal(normal, flat)


# ---------------------------------------------------------------------------------------
# 6. AdamW stays AdamW; betas as torch takes them


def test_adamw_loading_an_adam_state_dict_keeps_decoupled_decay_like_torch():
    adam_state = stepped(
        torch.optim.Adam, [_leaf(torch.randn(4, dtype=torch.float64))], lr=0.01, weight_decay=0.1
    ).state_dict()
    mine, theirs = _leaf(torch.randn(4, dtype=torch.float64)), None
    theirs = _leaf(mine.detach())
    our_opt, torch_opt = ours.AdamW([mine], lr=0.01), torch.optim.AdamW([theirs], lr=0.01)
    our_opt.load_state_dict(copy.deepcopy(adam_state))
    torch_opt.load_state_dict(copy.deepcopy(adam_state))
    assert our_opt.param_groups[0]["decoupled_weight_decay"] is True
    for _ in range(3):
        mine.grad = torch.ones(4, dtype=torch.float64)
        theirs.grad = mine.grad.clone()
        our_opt.step()
        torch_opt.step()
    assert_close_lists([mine], [theirs], torch.float64)


@pytest.mark.parametrize("cls", [ours.Adam, ours.AdamW, ours.Yogi])
def test_mixed_float_and_tensor_betas_are_refused_like_torch(cls):
    with pytest.raises(ValueError, match="betas must be either both floats or both Tensors"):
        cls([torch.zeros(2, requires_grad=True)], betas=(0.9, torch.tensor(0.999)))


# ---------------------------------------------------------------------------------------
# 7. two threads stepping at once


@pytest.mark.parametrize(
    "cls, kwargs",
    [
        (ours.Adam, {}),
        (ours.SGD, dict(lr=0.1, momentum=0.9)),
        (ours.Adagrad, {}),
        (ours.RMSprop, {}),
    ],
)
def test_two_threads_stepping_at_once_get_torchs_numbers_and_keep_the_thread_count(cls, kwargs):
    torch_cls = getattr(torch.optim, cls.__name__)
    sizes = (40_000, 300, 10, 7) * 3  # small tensors take the single-thread path
    results, errors, thread_counts = {}, [], {}
    both_done = threading.Barrier(2, timeout=60)

    def train(name: str) -> None:
        try:
            torch.set_num_threads(2)
            generator = torch.Generator().manual_seed(hash(name) % 1000)
            mine = [
                torch.randn(n, generator=generator, dtype=torch.float64).requires_grad_()
                for n in sizes
            ]
            theirs = [_leaf(p) for p in mine]
            our_opt, torch_opt = cls(mine, **kwargs), torch_cls(theirs, **kwargs)
            for step in range(30):
                for a, b in zip(mine, theirs, strict=True):
                    a.grad = torch.sin(a.detach() * (step + 1))
                    b.grad = a.grad.clone()
                our_opt.step()
                torch_opt.step()
            results[name] = (mine, theirs)
            both_done.wait()  # read the count once neither thread is inside a step
            thread_counts[name] = torch.get_num_threads()
        except BaseException as error:  # reported by the main thread
            errors.append(error)

    previous = torch.get_num_threads()
    try:
        workers = [threading.Thread(target=train, args=(name,)) for name in ("a", "b")]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
    finally:
        torch.set_num_threads(previous)
    assert not errors, errors
    assert thread_counts == {"a": 2, "b": 2}
    for mine, theirs in results.values():
        assert_close_lists(mine, theirs, torch.float64)


def test_checkpoints_round_trip_through_weights_only_loads():
    params = [_leaf(torch.randn(3, 2))]
    optimizer = stepped(ours.Adam, params, amsgrad=1)
    buffer = io.BytesIO()
    torch.save(optimizer.state_dict(), buffer)
    buffer.seek(0)
    restored = ours.Adam([_leaf(params[0].detach())], amsgrad=True)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    assert restored.param_groups[0]["amsgrad"] is True


def test_the_thread_count_survives_two_threads_when_the_setting_is_process_wide(monkeypatch):
    # ATen's native thread pool keeps one process-wide count (this build uses OpenMP, whose
    # count is per thread): emulate it, with a slow setter to widen any race, and record
    # whether two threads were ever inside a single-thread section at once.
    setting = {"threads": 2}
    inside: set[int] = set()
    overlaps: list[int] = []

    def set_num_threads(count: int) -> None:
        me = threading.get_ident()
        if count == 1:
            if inside:
                overlaps.append(me)
            inside.add(me)
        else:
            inside.discard(me)
        time.sleep(0.002)
        setting["threads"] = count

    monkeypatch.setattr(torch, "get_num_threads", lambda: setting["threads"])
    monkeypatch.setattr(torch, "set_num_threads", set_num_threads)

    def train() -> None:
        params = [torch.randn(n).requires_grad_() for n in (40_000, 10, 7)]
        optimizer = ours.Adam(params)
        for _ in range(20):
            for p in params:
                p.grad = torch.ones_like(p)
            optimizer.step()

    workers = [threading.Thread(target=train) for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert overlaps == []
    assert setting["threads"] == 2


@pytest.mark.parametrize(
    "option, value",
    [("lr", "0.1"), ("lr", None), ("weight_decay", None), ("amsgrad", "yes"), ("betas", (0.9,))],
)
def test_a_checkpoint_with_an_option_of_the_wrong_kind_is_refused(option, value):
    params = [_leaf(torch.randn(3))]
    optimizer = stepped(ours.Adam, params)
    saved = copy.deepcopy(optimizer.state_dict())
    saved["param_groups"][0][option] = value
    lr_before = optimizer.param_groups[0]["lr"]
    with pytest.raises(ValueError, match="param group 0 of the checkpoint has a bad option"):
        optimizer.load_state_dict(saved)
    assert optimizer.param_groups[0]["lr"] == lr_before


def test_a_checkpoint_saved_with_the_default_path_loads_into_a_fused_optimizer():
    params = [_leaf(torch.randn(3))]
    saved = stepped(ours.Adam, params).state_dict()
    assert saved["param_groups"][0]["fused"] is None
    fused = ours.Adam([_leaf(params[0].detach())], fused=True)
    fused.load_state_dict(saved)
    assert fused.param_groups[0]["fused"] is None  # the checkpoint's options win, as in torch


# ---------------------------------------------------------------------------------------
# complex parameters: an accumulator starts at its value in both parts


def test_complex_adagrad_starts_both_parts_of_its_accumulator_like_torch():
    """torch starts the sum at complex(v, v); ours started the imaginary part at 0, whose
    first step was then about 7x too large."""
    start = torch.tensor([1 + 2j, -0.5 + 0.3j], dtype=torch.complex128)
    results = []
    for cls in (torch.optim.Adagrad, ours.Adagrad):
        param = torch.nn.Parameter(start.clone())
        optimizer = cls([param], lr=0.1, initial_accumulator_value=0.5)
        for k in range(3):
            param.grad = torch.full_like(start, 0.1 + 0.2j) * (k + 1)
            optimizer.step()
        results.append(param.detach())
    torch.testing.assert_close(results[1], results[0], rtol=0, atol=1e-15)


def test_complex_yogi_is_yogi_on_the_pair_of_reals():
    start = torch.tensor([1 + 2j, -0.5 + 0.3j], dtype=torch.complex128)
    as_complex = torch.nn.Parameter(start.clone())
    as_reals = torch.nn.Parameter(torch.view_as_real(start).clone())
    optimizers = [
        ours.Yogi([p], lr=0.1, initial_accumulator_value=0.3) for p in (as_complex, as_reals)
    ]
    for k in range(3):
        as_complex.grad = torch.full_like(start, 0.01 + 0.02j) * (k + 1)
        as_reals.grad = torch.view_as_real(as_complex.grad).clone()
        for optimizer in optimizers:
            optimizer.step()
    torch.testing.assert_close(torch.view_as_real(as_complex.detach()), as_reals.detach())


# ---------------------------------------------------------------------------------------
# an option that needs state turned on mid-run: refused before anything changes


FLIPS = [
    (ours.Adam, dict(lr=0.1, weight_decay=0.1), "amsgrad", True, "max_exp_avg_sq"),
    (ours.AdamW, dict(lr=0.1), "amsgrad", True, "max_exp_avg_sq"),
    (ours.RMSprop, dict(lr=0.1, weight_decay=0.1), "momentum", 0.9, "momentum_buffer"),
    (ours.RMSprop, dict(lr=0.1), "centered", True, "grad_avg"),
]


@pytest.mark.parametrize(
    "impl",
    [{}, dict(foreach=True), dict(foreach=False), dict(flat=True)],
    ids=["default", "foreach", "loop", "flat"],
)
@pytest.mark.parametrize(("cls", "kwargs", "option", "value", "key"), FLIPS)
def test_an_option_needing_state_turned_on_mid_run_changes_nothing(
    cls, kwargs, option, value, key, impl
):
    """torch raises KeyError before any update; ours updated the moments (and with weight
    decay the parameters) before it looked the missing state up."""
    params = [torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2))]
    optimizer = cls(params, **kwargs, **impl)
    for p in params:
        p.grad = torch.ones_like(p)
    optimizer.step()
    optimizer.param_groups[0][option] = value
    state_before, params_before = _snapshot(optimizer), [p.detach().clone() for p in params]
    for p in params:
        p.grad = torch.full_like(p, 5.0)
    with pytest.raises(KeyError, match=f"no state\\['{key}'\\] .* turned on after"):
        optimizer.step()
    _assert_same_snapshot(_snapshot(optimizer), state_before)
    for p, before in zip(params, params_before, strict=True):
        assert torch.equal(p.detach(), before)


# ---------------------------------------------------------------------------------------
# flat mode: state a user resets or replaces between steps


def _reset_everything(optimizer, params):
    optimizer.state.clear()


def _forget_the_weight(optimizer, params):
    del optimizer.state[params[0]]


def _zero_a_moment_by_replacement(optimizer, params):
    optimizer.state[params[0]]["exp_avg"] = torch.zeros_like(params[0])


def _replace_a_parameters_state(optimizer, params):
    old = optimizer.state[params[1]]
    optimizer.state[params[1]] = {key: value.clone() * 0.5 for key, value in old.items()}


def _new_state_mapping(optimizer, params):
    optimizer.state = collections.defaultdict(dict)


@pytest.mark.parametrize(
    "edit",
    [
        _reset_everything,
        _forget_the_weight,
        _zero_a_moment_by_replacement,
        _replace_a_parameters_state,
        _new_state_mapping,
    ],
)
def test_flat_mode_steps_with_the_state_a_user_put_in_place(edit):
    """Packed flat mode kept stepping its old buffers after the state was cleared or its
    tensors replaced (0.10 to 0.51 off torch.optim)."""
    inputs = torch.linspace(-1, 1, 24, dtype=torch.float64).reshape(8, 3)
    results = []
    for make in (
        lambda ps: torch.optim.Adam(ps, lr=0.1),
        lambda ps: ours.Adam(ps, lr=0.1, flat=True),
    ):
        torch.manual_seed(0)
        model = torch.nn.Linear(3, 2).double()
        params = list(model.parameters())
        optimizer = make(params)
        for k in range(6):
            optimizer.zero_grad()
            model(inputs).pow(2).sum().backward()
            optimizer.step()
            if k == 2:
                edit(optimizer, params)
        results.append([p.detach().clone() for p in params])
    for theirs, mine in zip(*results, strict=True):
        torch.testing.assert_close(mine, theirs, rtol=0, atol=1e-13)


@pytest.mark.parametrize(
    ("cls", "kwargs"),
    [
        (ours.Adam, dict(lr=0.1)),
        (ours.SGD, dict(lr=0.1, momentum=0.9)),
        (ours.Adagrad, dict(lr=0.1)),
        (ours.RMSprop, dict(lr=0.1)),
        (ours.Yogi, dict(lr=0.1)),
        (ours.Lion, dict(lr=0.1)),
        (ours.AdamWScheduleFree, dict(lr=0.1)),
        (ours.Prodigy, dict()),
        (ours.SGDHD, dict(lr=0.1)),
        (ours.AdamHD, dict(lr=0.1)),
    ],
    ids=lambda value: value.__name__ if isinstance(value, type) else "",
)
def test_flat_mode_packs_the_state_once_when_nobody_touches_it(cls, kwargs):
    """The optimizer's own writes are not a user's: Prodigy's step counts, advanced after the
    updates, made every step pack the buffers again (12x slower at 2000 tensors)."""
    params = [torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2))]
    optimizer = cls(params, **kwargs, flat=True)
    packed = []
    for _ in range(3):
        for p in params:
            p.grad = torch.full_like(p, 0.5)
        optimizer.step()
        slab = optimizer._flat_groups[0].slabs[0]
        packed.append({key: id(value) for key, value in slab.flat_state.items()})
    assert packed[0] and packed[1] == packed[2] == packed[0]


ZERO_GRADIENT_CASES = [
    (name, kwargs)
    for name in ours.__all__
    if isinstance(getattr(ours, name), type)
    and issubclass(getattr(ours, name), torch.optim.Optimizer)
    for kwargs in (dict(), dict(foreach=True), dict(flat=True))
    if not (name == "Muon" and "flat" in kwargs)  # Muon has no flat mode
] + [
    (name, kwargs)
    for name in ("Lion", "SGDScheduleFree", "AdamWScheduleFree", "Prodigy")
    for kwargs in (dict(compiled=True), dict(compiled=True, flat=True))
]


@pytest.mark.parametrize(
    "name, kwargs", ZERO_GRADIENT_CASES, ids=[f"{n}-{k}" for n, k in ZERO_GRADIENT_CASES]
)
def test_torchs_zero_gradient_steps_as_zeros(name, kwargs):
    """The gradient of a function with zero derivative (torch.sgn) is a tensor with no memory;
    fused kernels refused it ("ZeroTensors are immutable"), compiled kernels crashed the
    interpreter on it and flat mode failed to copy it. Every path now steps as on zeros."""
    cls = getattr(ours, name)
    options = dict(lr=0.01, **kwargs)

    def make() -> list[torch.Tensor]:
        generator = torch.Generator().manual_seed(0)
        return [torch.randn(4, 3, generator=generator).requires_grad_() for _ in range(2)]

    zero_tensor_params, zeros_params = make(), make()
    optimizers = [cls(zero_tensor_params, **options), cls(zeros_params, **options)]
    for step in range(3):
        for params in (zero_tensor_params, zeros_params):
            for p in params:
                p.grad = torch.full_like(p, 0.1 * (step + 1))
        if step == 1:  # the middle step's gradients are zero, one way or the other
            for p in zero_tensor_params:
                p.grad = None
            torch.sgn(torch.stack(zero_tensor_params)).sum().backward()
            assert all(p.grad._is_zerotensor() for p in zero_tensor_params)
            for p in zeros_params:
                p.grad = torch.zeros_like(p)
        for optimizer in optimizers:
            optimizer.step()
    assert_close_lists(zero_tensor_params, zeros_params, torch.float32)
