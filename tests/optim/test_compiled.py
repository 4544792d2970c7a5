"""compiled=True: the generated kernels' contract (the parity tests live with each algorithm)."""

from __future__ import annotations

import copy

import pytest
import torch

from torchopt_edu.optim import Adam, Lion, SGDScheduleFree, lion
from torchopt_edu.optim._compiled import CompiledKernel


def _params() -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return [torch.randn(5, 3, generator=generator).requires_grad_() for _ in range(2)]


def test_an_algorithm_without_a_kernel_refuses_compiled():
    optimizer = Adam(_params()[:1])
    with pytest.raises(ValueError, match="Adam has no compiled kernel"):
        optimizer.add_param_group({"params": _params()[1:], "compiled": True})
    assert len(optimizer.param_groups) == 1


@pytest.mark.parametrize("flag", [dict(foreach=True), dict(foreach=False), dict(fused=True)])
def test_compiled_with_another_implementation_flag_is_refused(flag):
    with pytest.raises(ValueError, match="leave foreach and fused at None"):
        SGDScheduleFree(_params(), compiled=True, **flag)


def test_a_param_group_may_ask_for_the_kernel_alone():
    params = _params()
    optimizer = Lion(params[:1], lr=0.1)
    optimizer.add_param_group({"params": params[1:], "compiled": True})
    for p in params:
        p.grad = torch.ones_like(p)
    before = [p.detach().clone() for p in params]
    optimizer.step()
    for p, old in zip(params, before, strict=True):  # both paths: every coordinate moves by lr
        torch.testing.assert_close(p.detach(), old - 0.1)


def test_a_kernel_that_cannot_be_built_raises_and_changes_nothing(monkeypatch):
    """A real build failure: Inductor pointed at a C++ compiler that does not exist."""
    from torch._inductor import config

    params = _params()
    optimizer = Lion(params, lr=0.1, compiled=True)
    for p in params:
        p.grad = torch.ones_like(p)
    optimizer.step()  # with the compiler: Lion's state now exists
    before = [p.detach().clone() for p in params]
    state = copy.deepcopy(optimizer.state_dict())
    monkeypatch.setattr(lion, "lion_kernel", CompiledKernel(lion.lion_kernel.function))
    torch._dynamo.reset()  # forget the code compiled for the first step
    with (
        config.patch({"cpp.cxx": ("/nonexistent/c++",), "fx_graph_cache": False}),
        pytest.raises(RuntimeError, match="torch.compile could not build the kernel lion_kernel"),
    ):
        optimizer.step()
    for p, old in zip(params, before, strict=True):
        assert torch.equal(p.detach(), old)
    for key, value in state["state"].items():
        assert torch.equal(optimizer.state_dict()["state"][key]["exp_avg"], value["exp_avg"])


def test_a_learning_rate_schedule_does_not_recompile_the_kernel():
    from torch._dynamo.utils import counters

    params = _params()
    optimizer = SGDScheduleFree(params, lr=0.5, warmup_steps=3, compiled=True, flat=True)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    for p in params:
        p.grad = torch.ones_like(p)
    optimizer.step()  # compiles (or finds) the float32 kernel
    graphs = counters["stats"]["unique_graphs"]
    for _ in range(5):  # a new warmed-up rate, averaging weight and lr every step
        scheduler.step()
        optimizer.step()
    assert counters["stats"]["unique_graphs"] == graphs
