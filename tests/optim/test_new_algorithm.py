"""The README's "Writing an algorithm" example: a page of math gets the whole contract."""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import pytest
import torch

README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.fixture(scope="module")
def example() -> dict:
    text = README.read_text(encoding="utf-8")
    match = re.search(r"<!-- new-algorithm-example -->\s*```python\n(.*?)```", text, re.S)
    assert match, "README.md has no block marked new-algorithm-example"
    module = types.ModuleType("readme_new_algorithm")  # dataclasses look their module up
    sys.modules[module.__name__] = module
    exec(compile(match.group(1), "README.md", "exec"), module.__dict__)
    yield module.__dict__
    del sys.modules[module.__name__]


def test_the_example_runs_and_steps_by_exactly_lr(example):
    assert example["w"].tolist() == [1.0, 0.0]


@pytest.mark.parametrize("options", [dict(foreach=False), dict(foreach=True), dict(flat=True)])
def test_every_path_of_the_example_gives_the_closed_form(example, options):
    sign_sgd = example["SignSGD"]
    w = torch.tensor([[3.0, -2.0], [0.25, 1.0]], requires_grad=True)
    optimizer = sign_sgd([w], lr=0.25, **options)
    for _ in range(3):
        optimizer.zero_grad()
        (w**2).sum().backward()
        optimizer.step()
    expected = torch.tensor([[2.25, -1.25], [0.0, 0.25]])  # |w| shrinks by 0.25 until it hits 0
    torch.testing.assert_close(w.detach(), expected)


def test_the_example_inherits_checkpoint_checks_and_atomic_steps(example):
    sign_sgd = example["SignSGD"]
    first, second = torch.ones(2, requires_grad=True), torch.ones(3, requires_grad=True)
    optimizer = sign_sgd([{"params": [first]}, {"params": [second]}], lr=0.1)
    first.grad = torch.ones(2)
    second.grad = torch.sparse_coo_tensor([[0]], [1.0], (3,))
    with pytest.raises(RuntimeError, match="SignSGD does not support sparse gradients"):
        optimizer.step()
    assert first.tolist() == [1.0, 1.0]
