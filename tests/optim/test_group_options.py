"""Hyper-parameter values are checked wherever a param group comes from: the constructor,
add_param_group and a checkpoint. A bad value is refused naming it, and nothing changes."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from torchopt_edu import optim as ours

NAN = math.nan

#: (class, constructor options, a bad group option, the words the error must contain)
CASES = [
    (ours.SGDScheduleFree, {}, dict(lr=NAN), "learning rate"),
    (ours.SGDScheduleFree, {}, dict(momentum=1.5), "momentum must lie in"),
    (ours.SGDScheduleFree, {}, dict(warmup_steps=-3), "warmup_steps must be >= 0"),
    (ours.SGDScheduleFree, {}, dict(weight_sum=NAN), "weight_sum must lie in"),
    (ours.SGDScheduleFree, {}, dict(k=-1), "k must be >= 0"),
    (ours.AdamWScheduleFree, {}, dict(eps=-1.0), "eps"),
    (ours.AdamWScheduleFree, {}, dict(betas=(0.0, 0.999)), "needs betas\\[0\\] in \\(0, 1\\)"),
    (ours.Prodigy, {}, dict(d=NAN), "d must lie in"),
    (ours.Prodigy, {}, dict(eps=0.0), "eps must lie in"),
    (ours.Prodigy, {}, dict(slice_p=0), "slice_p must be >= 1"),
    (ours.Prodigy, {}, dict(k=-1), "k must be >= 0"),
    (ours.Prodigy, {}, dict(safeguard_warmup="no"), "safeguard_warmup must be True or False"),
    (ours.SGDHD, {}, dict(hypergrad_lr=-1.0), "hypergrad_lr"),
    (ours.SGDHD, {}, dict(idle=[5]), "idle must list distinct indices"),
    (ours.AdamHD, {}, dict(hypergrad_lr=NAN), "hypergrad_lr"),
    (ours.Lion, {}, dict(lr=-1.0), "learning rate"),
    (ours.Lion, {}, dict(lr=math.inf), "lr must be finite"),
    (ours.Adam, {}, dict(weight_decay=math.inf), "weight_decay must be finite"),
    (ours.SGD, {}, dict(nesterov=True, momentum=0.0), "Nesterov momentum requires"),
    (ours.Muon, {}, dict(momentum=1.5), "momentum"),
    (ours.Muon, {}, dict(ns_steps=1000), "ns_steps must be < 100"),
    (ours.Muon, {}, dict(adjust_lr_fn="bogus"), "adjust_lr_fn must be one of"),
]
IDS = [f"{cls.__name__}-{next(iter(bad))}" for cls, _, bad, _ in CASES]


def _matrix(seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(4, 3, generator=generator, dtype=torch.float64).requires_grad_()


def _stepped(cls, options):
    params = [_matrix(0), _matrix(1)]
    optimizer = cls([{"params": [params[0]]}, {"params": [params[1]]}], **options)
    for p in params:
        p.grad = torch.cos(p.detach())
    optimizer.step()
    return params, optimizer


@pytest.mark.parametrize("cls, options, bad, words", CASES, ids=IDS)
def test_a_checkpoint_with_a_bad_value_is_refused_and_the_optimizer_steps_as_before(
    cls, options, bad, words
):
    params, optimizer = _stepped(cls, options)
    twins = [p.detach().clone().requires_grad_() for p in params]
    twin = cls([{"params": [twins[0]]}, {"params": [twins[1]]}], **options)
    twin.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    saved = copy.deepcopy(optimizer.state_dict())
    saved["param_groups"][1].update(bad)
    with pytest.raises(
        ValueError, match=f"param group 1 of the checkpoint has a bad option: .*{words}"
    ):
        optimizer.load_state_dict(saved)
    for group in (params, twins):
        for p in group:
            p.grad = torch.sin(p.detach())
    optimizer.step()
    twin.step()
    assert all(torch.equal(a, b) for a, b in zip(params, twins, strict=True))


@pytest.mark.parametrize("cls, options, bad, words", CASES, ids=IDS)
def test_add_param_group_refuses_a_bad_value_and_keeps_the_groups(cls, options, bad, words):
    if "idle" in bad or "k" in bad or "weight_sum" in bad or "d" in bad:
        pytest.skip("a counter the optimizer sets, not an option a user passes")
    _, optimizer = _stepped(cls, options)
    before = copy.deepcopy(optimizer.param_groups[1:])
    with pytest.raises((TypeError, ValueError), match=f"param group 2: .*{words}"):
        optimizer.add_param_group({"params": [_matrix(2)], **bad})
    assert len(optimizer.param_groups) == 2
    assert [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups[1:]] == [
        {k: v for k, v in g.items() if k != "params"} for g in before
    ]


@pytest.mark.parametrize("name", ["use_bias_correction", "decouple", "safeguard_warmup"])
@pytest.mark.parametrize("value", ["False", None, NAN, 2])
def test_prodigy_refuses_an_on_off_option_that_is_not_a_flag(name, value):
    with pytest.raises(TypeError, match=f"{name} must be True or False"):
        ours.Prodigy([_matrix(0)], **{name: value})


@pytest.mark.parametrize("cls", [ours.Lion, ours.Adam, ours.SGDScheduleFree, ours.Prodigy])
@pytest.mark.parametrize("option", ["lr", "weight_decay"])
def test_an_infinite_rate_or_decay_is_refused_at_construction(cls, option):
    with pytest.raises(ValueError, match=f"{option} must be finite"):
        cls([_matrix(0)], **{option: math.inf})


def test_muon_refuses_a_checkpoint_that_turns_muon_on_for_a_vector():
    matrix, vector = _matrix(0), torch.randn(3, dtype=torch.float64, requires_grad=True)
    optimizer = ours.Muon([{"params": [matrix]}, {"params": [vector]}])
    matrix.grad, vector.grad = torch.ones_like(matrix), torch.ones_like(vector)
    optimizer.step()
    saved = copy.deepcopy(optimizer.state_dict())
    saved["param_groups"][1]["use_muon"] = True
    with pytest.raises(ValueError, match="Muon only supports real 2-D parameters"):
        optimizer.load_state_dict(saved)
    optimizer.step()


@pytest.mark.parametrize("shape", [(5, 0), (0, 0), (0, 4)])
def test_muon_steps_past_an_empty_matrix(shape):
    """An empty weight has nothing to orthogonalise (torch.optim.Muon divides by zero)."""
    matrix, empty = _matrix(0), torch.zeros(*shape, dtype=torch.float64, requires_grad=True)
    reference = matrix.detach().clone().requires_grad_()
    optimizer, alone = ours.Muon([matrix, empty]), ours.Muon([reference])
    for p in (matrix, empty, reference):
        p.grad = torch.ones_like(p)
    optimizer.step()
    alone.step()
    assert torch.equal(matrix, reference)


def test_a_group_given_as_a_generator_keeps_its_parameters():
    params = [_matrix(0), _matrix(1)]
    optimizer = ours.Adam([params[0]])
    optimizer.add_param_group({"params": (p for p in params[1:])})
    assert optimizer.param_groups[1]["params"] == [params[1]]


def test_a_group_edited_into_a_value_that_cannot_step_refuses_the_whole_step():
    """Every group's record is read before any update: group 0 does not move when group 1
    cannot step (AdamWScheduleFree divides by betas[0])."""
    a, b = _matrix(0), _matrix(1)
    optimizer = ours.AdamWScheduleFree([{"params": [a]}, {"params": [b]}], lr=0.1)
    optimizer.param_groups[1]["betas"] = (0.0, 0.999)
    a.grad, b.grad = torch.ones_like(a), torch.ones_like(b)
    before = a.detach().clone()
    with pytest.raises(ValueError, match=r"needs betas\[0\] in \(0, 1\)"):
        optimizer.step()
    assert torch.equal(a.detach(), before)
    assert not optimizer.state and optimizer.param_groups[0]["k"] == 0
