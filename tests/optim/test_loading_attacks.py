"""Checkpoints an attacker or a careless user hands to load_state_dict: each is refused with
a message naming what is wrong and the optimizer stays as it was, or it loads and resumes."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from optim_cases import stepped

from torchopt_edu import optim as ours


def _snapshot(optimizer):
    return copy.deepcopy(optimizer.state_dict())


def _assert_same(before, after):
    assert before["param_groups"] == after["param_groups"]
    assert before["state"].keys() == after["state"].keys()
    for key, state in before["state"].items():
        assert state.keys() == after["state"][key].keys()
        for name, value in state.items():
            other = after["state"][key][name]
            if isinstance(value, torch.Tensor):
                assert torch.equal(value, other), name
            else:
                assert value == other, name


@pytest.mark.parametrize("flat", [False, True])
def test_a_state_entry_of_none_is_refused_and_nothing_changes(flat):
    params = [torch.randn(3, requires_grad=True), torch.randn(2, requires_grad=True)]
    optimizer = stepped(ours.Lion, params, flat=flat, steps=2)
    before = _snapshot(optimizer)
    bad = copy.deepcopy(before)
    bad["state"][0] = None
    with pytest.raises(ValueError, match="parameter 0 must be a dict, got NoneType"):
        optimizer.load_state_dict(bad)
    _assert_same(before, _snapshot(optimizer))


@pytest.mark.parametrize(
    "cls, kwargs", [(ours.Lion, {}), (ours.AdamHD, {}), (ours.Adam, {}), (ours.Prodigy, {})]
)
@pytest.mark.parametrize("flat", [False, True])
def test_state_of_another_optimizer_or_an_extra_key_is_refused_and_nothing_changes(
    cls, kwargs, flat
):
    params = [torch.randn(4, 3, requires_grad=True), torch.randn(3, requires_grad=True)]
    optimizer = stepped(cls, params, flat=flat, **kwargs, steps=2)
    before = _snapshot(optimizer)
    bad = copy.deepcopy(before)
    first = next(iter(bad["state"].values()))
    for value in first.values():
        if isinstance(value, torch.Tensor) and value.dim() > 0:
            value.fill_(123.0)
    bad["state"][1]["extra"] = torch.zeros(3)
    with pytest.raises(ValueError, match=r"parameter 1: the checkpoint's state has \['extra'\]"):
        optimizer.load_state_dict(bad)
    _assert_same(before, _snapshot(optimizer))


def test_lion_refuses_a_prodigy_checkpoint_whose_exp_avg_means_something_else():
    p, q = torch.randn(3, requires_grad=True), torch.randn(3, requires_grad=True)
    prodigy = stepped(ours.Prodigy, [p], steps=2)
    lion = stepped(ours.Lion, [q], steps=2)
    with pytest.raises(ValueError, match="does not keep"):
        lion.load_state_dict(prodigy.state_dict())


def _muon_companion(params, **kwargs):
    return ours.Muon([{"params": params, "use_muon": False}], **kwargs)


@pytest.mark.parametrize("flat", [False, True])
@pytest.mark.parametrize("cls", [ours.AdamHD, ours.Adam, _muon_companion])
def test_a_step_count_saved_as_a_number_loads_and_resumes_like_a_tensor_one(cls, flat):
    """Older torch and prodigyopt save ``step`` as a number; it counts the same."""
    shapes = [(4, 3), (3, 2)]
    params = [torch.randn(*shape, dtype=torch.float64, requires_grad=True) for shape in shapes]
    if cls is _muon_companion and flat:
        pytest.skip("Muon has no flat buffers")
    kwargs = {} if cls is _muon_companion else dict(flat=flat)
    optimizer = stepped(cls, params, **kwargs, steps=2)
    saved = optimizer.state_dict()
    as_numbers = copy.deepcopy(saved)
    for state in as_numbers["state"].values():
        state["step"] = int(state["step"])
    twins = [[p.detach().clone().requires_grad_() for p in params] for _ in range(2)]
    resumed = [cls(twin, **kwargs) for twin in twins]
    resumed[0].load_state_dict(copy.deepcopy(saved))
    resumed[1].load_state_dict(as_numbers)
    for _ in range(2):
        for twin, optimizer in zip(twins, resumed, strict=True):
            for p in twin:
                p.grad = torch.cos(p.detach())
            optimizer.step()
    for a, b in zip(*twins, strict=True):
        assert torch.equal(a, b)


def test_prodigy_takes_a_tensor_step_count_as_its_int():
    p = torch.randn(3, dtype=torch.float64, requires_grad=True)
    optimizer = stepped(ours.Prodigy, [p], steps=2)
    saved = copy.deepcopy(optimizer.state_dict())
    saved["state"][0]["step"] = torch.tensor(2.0)
    optimizer.load_state_dict(saved)
    assert optimizer.state[p]["step"] == 2 and isinstance(optimizer.state[p]["step"], int)
    optimizer.step()
    assert optimizer.state[p]["step"] == 3


@pytest.mark.parametrize("zero_shape", [(2, 2), (0, 3)])
@pytest.mark.parametrize("into_flat", [True, False])
def test_flat_prodigy_reloads_its_own_checkpoint_with_an_all_zero_matrix(zero_shape, into_flat):
    """An all-zero parameter's p0 is a 0-d zero; in flat buffers it fills a flat slice."""
    params = [torch.randn(4, 3, requires_grad=True), torch.zeros(*zero_shape, requires_grad=True)]
    optimizer = stepped(ours.Prodigy, params, flat=True, steps=2)
    saved = copy.deepcopy(optimizer.state_dict())
    twins = [p.detach().clone().requires_grad_() for p in params]
    other = ours.Prodigy(twins, flat=into_flat)
    other.load_state_dict(saved)
    optimizer.load_state_dict(copy.deepcopy(saved))
    for pair in ((params, optimizer), (twins, other)):
        for p in pair[0]:
            p.grad = torch.cos(p.detach())
        pair[1].step()
    for a, b in zip(params, twins, strict=True):
        assert torch.allclose(a, b, rtol=0, atol=1e-7)


@pytest.mark.parametrize("copier", [copy.deepcopy, lambda o: pickle.loads(pickle.dumps(o))])
@pytest.mark.parametrize("flat", [False, True])
def test_a_copied_prodigy_loads_checkpoints_and_takes_param_groups(copier, flat):
    params = [torch.randn(3, requires_grad=True)]
    optimizer = stepped(ours.Prodigy, params, flat=flat, steps=2)
    duplicate = copier(optimizer)
    duplicate.load_state_dict(optimizer.state_dict())
    duplicate.add_param_group({"params": [torch.randn(2, requires_grad=True)]})
    assert len(duplicate.param_groups) == 2
    if flat:
        with pytest.raises(ValueError, match="flat=True needs slice_p=1"):
            duplicate.add_param_group(
                {"params": [torch.randn(2, requires_grad=True)], "slice_p": 2}
            )


@pytest.mark.parametrize(
    "key, value",
    [("betas", (0.8, 0.99)), ("lr", 0.5), ("d0", 1e-5), ("use_bias_correction", True)],
)
def test_prodigy_refuses_a_checkpoint_whose_groups_do_not_share_one_d(key, value):
    a, b = torch.randn(3, requires_grad=True), torch.randn(2, requires_grad=True)
    optimizer = stepped(ours.Prodigy, [a, b], steps=2)
    optimizer = ours.Prodigy([{"params": [a]}, {"params": [b]}])
    for p in (a, b):
        p.grad = torch.ones_like(p)
    optimizer.step()
    before = _snapshot(optimizer)
    bad = copy.deepcopy(before)
    bad["param_groups"][1][key] = value
    with pytest.raises(ValueError, match=f"the checkpoint's param group 1 has|{key} must be"):
        optimizer.load_state_dict(bad)
    _assert_same(before, _snapshot(optimizer))
    optimizer.step()  # still steps
