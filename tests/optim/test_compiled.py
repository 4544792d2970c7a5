"""compiled=True: the generated kernels' contract (the parity tests live with each algorithm)."""

from __future__ import annotations

import contextlib
import copy
import functools
from collections.abc import Iterator

import pytest
import torch

from torchopt_edu.optim import Adam, Lion, Prodigy, SGDScheduleFree, lion, prodigy
from torchopt_edu.optim._compiled import CompiledKernel, CppKernel, scalars_for


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


@contextlib.contextmanager
def _no_compiler(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A real build failure: fresh kernels, Inductor pointed at a compiler that does not exist."""
    from torch._inductor import config

    for name in ("lion_kernel",):
        monkeypatch.setattr(lion, name, CompiledKernel(getattr(lion, name).function))
    monkeypatch.setattr(Lion, "compiled_kernels", (lion.lion_kernel,))
    torch._dynamo.reset()  # forget the code compiled so far
    with config.patch({"cpp.cxx": ("/nonexistent/c++",), "fx_graph_cache": False}):
        yield
    torch._dynamo.reset()


def test_without_a_compiler_the_optimizer_is_refused_when_built(monkeypatch):
    params = _params()
    before = [p.detach().clone() for p in params]
    with (
        _no_compiler(monkeypatch),
        pytest.raises(RuntimeError, match="torch.compile could not build the kernel lion_kernel"),
    ):
        Lion(params, compiled=True)
    for p, old in zip(params, before, strict=True):
        assert torch.equal(p.detach(), old)


def test_a_kernel_that_cannot_be_built_at_a_step_changes_nothing(monkeypatch):
    """The kernels are built for every dtype before a step writes: when they cannot be, no
    parameter moves, not even the transposed one the foreach path would take."""
    a, b = _params()
    b = b.detach().T.contiguous().T.requires_grad_()  # not contiguous: the foreach path's
    c = torch.randn(4, dtype=torch.float64, requires_grad=True)
    optimizer = Lion([a, b], lr=0.1, compiled=True)
    for p in (a, b, c):
        p.grad = torch.ones_like(p)
    optimizer.step()
    with _no_compiler(monkeypatch):
        optimizer.param_groups[0]["params"].append(c)  # a new dtype, after construction
        before = [p.detach().clone() for p in (a, b, c)]
        state = copy.deepcopy(optimizer.state_dict())
        with pytest.raises(RuntimeError, match="could not build the kernel lion_kernel"):
            optimizer.step()
        for p, old in zip((a, b, c), before, strict=True):
            assert torch.equal(p.detach(), old)
        for key, value in state["state"].items():
            assert torch.equal(optimizer.state_dict()["state"][key]["exp_avg"], value["exp_avg"])
        with pytest.raises(RuntimeError, match="could not build"):
            optimizer.add_param_group({"params": [torch.zeros(2, dtype=torch.float16)]})
        assert len(optimizer.param_groups) == 1


def test_compiled_set_on_a_group_of_an_algorithm_without_kernels_is_refused_at_the_step():
    params = _params()
    optimizer = Adam(params)
    optimizer.param_groups[0]["compiled"] = True
    for p in params:
        p.grad = torch.ones_like(p)
    before = [p.detach().clone() for p in params]
    with pytest.raises(ValueError, match="Adam has no compiled kernel"):
        optimizer.step()
    assert all(torch.equal(p.detach(), old) for p, old in zip(params, before, strict=True))
    assert not optimizer.state


def test_past_the_recompile_limit_a_kernel_runs_eagerly_with_the_same_numbers():
    from torch._dynamo import config

    kernel = CompiledKernel(lion.lion_kernel.function)
    scalars = torch.tensor([0.1, 0.0, 0.9, 0.99, 1.0], dtype=torch.float64)
    results = []
    with config.patch(recompile_limit=1):
        for dtype in (torch.float32, torch.float64):
            param, grad, m = (torch.linspace(-1, 1, 8, dtype=dtype) for _ in range(3))
            expected = param - 0.1 * m.lerp(grad, 0.1).sign()
            if dtype == torch.float64:
                with pytest.warns(RuntimeWarning, match="reached torch.compile's recompile limit"):
                    kernel(param, grad, m, scalars)
            else:
                kernel(param, grad, m, scalars)
            results.append(torch.equal(param, expected))
    assert results == [True, True]


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


def test_past_the_recompile_limit_a_signature_runs_eagerly_without_trying_again():
    """One warning per dtype, device and thread count, then eager calls: no warning (nor
    torch.compile's own log lines) on every later step."""
    import warnings

    from torch._dynamo import config

    kernel = CompiledKernel(lion.lion_kernel.function)
    scalars = torch.tensor([0.1, 0.0, 0.9, 0.99, 1.0], dtype=torch.float64)
    tensors = {
        dtype: [torch.linspace(-1, 1, 8, dtype=dtype) for _ in range(3)]
        for dtype in (torch.float32, torch.float64)
    }
    with config.patch(recompile_limit=1):
        kernel(*tensors[torch.float32], scalars)
        with pytest.warns(RuntimeWarning, match="float64 tensors on cpu with"):
            kernel(*tensors[torch.float64], scalars)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            param, grad, m = tensors[torch.float64]
            expected = param - 0.1 * m.lerp(grad, 0.1).sign()
            kernel(param, grad, m, scalars)
            assert torch.equal(param, expected)


@pytest.mark.parametrize("size", [0, 1])
def test_tensors_of_size_0_and_1_take_the_eager_math_and_compile_nothing(size):
    """torch.compile would specialise both sizes: two of its eight versions of a kernel."""
    from torch._dynamo.utils import counters

    kernel = CompiledKernel(lion.lion_kernel.function)
    scalars = torch.tensor([0.1, 0.0, 0.9, 0.99, 1.0], dtype=torch.float64)
    param, grad, m = (torch.full((size,), 0.5) for _ in range(3))
    expected = param - 0.1 * m.lerp(grad, 0.1).sign()
    graphs = counters["stats"]["unique_graphs"]
    kernel(param, grad, m, scalars)
    assert counters["stats"]["unique_graphs"] == graphs
    assert torch.equal(param, expected)


@pytest.mark.parametrize(
    "edit, message",
    [
        (dict(compiled="yes"), "compiled must be True or False, got 'yes'"),
        (dict(compiled=True, foreach=False), "leave foreach and fused at None"),
        (dict(compiled=True, fused=True), "leave foreach and fused at None"),
    ],
)
def test_a_compiled_flag_set_on_a_group_later_is_checked_before_anything_changes(edit, message):
    params = _params()
    optimizer = Lion(params)
    optimizer.param_groups[0].update(edit)
    for p in params:
        p.grad = torch.ones_like(p)
    before = [p.detach().clone() for p in params]
    with pytest.raises((TypeError, ValueError, RuntimeError), match=message):
        optimizer.step()
    assert all(torch.equal(p.detach(), old) for p, old in zip(params, before, strict=True))
    assert not optimizer.state


# -- CppKernel: a kernel function with a hand-written C++ translation (Prodigy's two passes)


def _fresh(kernel: CppKernel) -> CppKernel:
    """The same kernel, nothing built yet in this process."""
    return CppKernel(kernel.function, kernel.source, kernel.scalars, kernel.writes, kernel.sums)


def _fresh_prodigy_kernels(monkeypatch: pytest.MonkeyPatch) -> None:
    """Prodigy with kernels that have built nothing yet in this process."""
    for name in ("prodigy_statistics_kernel", "prodigy_step_kernel"):
        monkeypatch.setattr(prodigy, name, _fresh(getattr(prodigy, name)))
    monkeypatch.setattr(
        Prodigy,
        "compiled_kernels",
        (prodigy.prodigy_statistics_kernel, prodigy.prodigy_step_kernel),
    )


def _prodigy_tensors(size: int, dtype: torch.dtype) -> list[torch.Tensor]:
    """x, g, x0, s, m and v for Prodigy's kernels."""
    generator = torch.Generator().manual_seed(size)
    tensors = [torch.randn(size, generator=generator, dtype=dtype) for _ in range(5)]
    return [*tensors, torch.rand(size, generator=generator, dtype=dtype)]


STATISTICS_SCALARS = [0.97, 3e-4]  # beta3, (d/d0) dlr
STEP_SCALARS = [0.3, 0.9, 0.999, 0.01, 0.1, 1e-8]  # d, beta1, beta2, dlr, weight decay, eps


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("size", [0, 1, 7, 4097, 40 * 4096 + 13])  # around blocks and lanes
def test_the_cpp_translations_compute_what_their_kernel_functions_say(dtype, size, monkeypatch):
    """Prodigy's kernels in C++ against the same functions run eagerly: every stored entry
    within an ulp or two of the O(1) values (the same operations in the same order; ATen
    rounds a few entries of the step differently), the sums to rounding, on two OpenMP
    threads; torch.compile never runs for CPU float32 and float64."""
    statistics = _fresh(prodigy.prodigy_statistics_kernel)
    step = _fresh(prodigy.prodigy_step_kernel)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)  # the tests pin torch to one
    ours = _prodigy_tensors(size, dtype)
    theirs = [t.clone() for t in ours]
    x, g, p0, s, m, v = ours
    scalars = scalars_for(x, STATISTICS_SCALARS)
    sums = statistics(x, g, p0, s, scalars)
    expected_sums = statistics.function(*theirs[:4], scalars)
    step(x, g, m, v, scalars_for(x, STEP_SCALARS))
    step.function(*theirs[:2], *theirs[4:], scalars_for(x, STEP_SCALARS))
    ulp = torch.finfo(dtype).eps
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=4 * ulp)
    rtol = 1e-5 if dtype == torch.float32 else 1e-12
    for a, b in zip(sums, expected_sums, strict=True):
        assert a.dtype == torch.float64
        assert a.item() == pytest.approx(b.item(), rel=rtol, abs=1e-9 * size)
    assert statistics._compiled is None and step._compiled is None
    assert statistics.built(x.device, dtype) and step.built(x.device, dtype)


@pytest.mark.parametrize(
    "case", ["broadcast", "strided", "bfloat16", "mixed dtypes", "negated view", "zero tensor"]
)
def test_what_the_cpp_cannot_take_runs_the_generated_code_with_the_same_numbers(case):
    """A broadcast 0-d argument, a tensor that is not contiguous, a dtype the C++ is not built
    for and two dtypes at once go to torch.compile's code; tensors whose memory is not their
    values (a view negated lazily, which Inductor's code reads wrong, and torch's zero
    gradient with no memory) to the eager math."""
    statistics = _fresh(prodigy.prodigy_statistics_kernel)
    dtype = torch.bfloat16 if case == "bfloat16" else torch.float32
    x, g, p0, s, _, _ = _prodigy_tensors(64, dtype)
    if case == "broadcast":
        p0 = torch.zeros((), dtype=dtype)
    if case == "strided":
        x = torch.randn(128, dtype=dtype)[::2]
    if case == "mixed dtypes":
        p0 = p0.double()
    if case == "negated view":
        g = torch.randn(64, dtype=torch.complex64).conj().imag.contiguous()
        g = torch._neg_view(g)
        assert g.is_neg() and g.is_contiguous()
    if case == "zero tensor":
        leaf = torch.randn(64, requires_grad=True)
        torch.sgn(leaf).sum().backward()
        g = leaf.grad
        assert g._is_zerotensor()
    theirs = [t.clone() for t in (x, g, p0, s)]
    scalars = scalars_for(x, STATISTICS_SCALARS)
    sums = statistics(x, g, p0, s, scalars)
    expected = statistics.function(*theirs, scalars)
    lazy = case in ("negated view", "zero tensor")
    assert (statistics._compiled is None) == lazy  # whether torch.compile ran
    torch.testing.assert_close(s, theirs[3])
    for a, b in zip(sums, expected, strict=True):
        torch.testing.assert_close(a.double(), b.double(), rtol=1e-2, atol=1e-2)


def test_prodigy_without_a_compiler_is_refused_with_the_cpp_kernel_named(monkeypatch):
    from torch._inductor import config

    _fresh_prodigy_kernels(monkeypatch)
    params = _params()
    before = [p.detach().clone() for p in params]
    with (
        config.patch({"cpp.cxx": ("/nonexistent/c++",)}),
        pytest.raises(
            RuntimeError, match="could not build the C\\+\\+ kernel prodigy_statistics_kernel"
        ),
    ):
        Prodigy(params, compiled=True)
    for p, old in zip(params, before, strict=True):
        assert torch.equal(p.detach(), old)


def test_a_scalars_vector_of_another_length_is_refused_not_read_past_its_end():
    step = _fresh(prodigy.prodigy_step_kernel)
    x, g, _, _, m, v = _prodigy_tensors(8, torch.float32)
    before = [t.clone() for t in (x, m, v)]
    for scalars in ([0.3, 0.9], []):
        with pytest.raises(Exception, match="expected 6, got"):
            step(x, g, m, v, torch.tensor(scalars, dtype=torch.float64))
    for a, b in zip((x, m, v), before, strict=True):
        assert torch.equal(a, b)


def test_a_backward_through_a_graph_the_cpp_step_changed_is_refused_as_with_torch():
    """The C++ writes through pointers; the parameters' autograd versions still advance, so a
    stale graph cannot silently use the updated weights (torch.optim's loop raises too)."""
    for optimizer_class in (torch.optim.Adam, functools.partial(Prodigy, compiled=True)):
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Tanh(), torch.nn.Linear(5, 1))
        kwargs = dict(foreach=False) if optimizer_class is torch.optim.Adam else {}
        optimizer = optimizer_class(net.parameters(), **kwargs)
        loss = net(torch.randn(4, 3)).square().sum()
        loss.backward(retain_graph=True)
        optimizer.step()
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            loss.backward()


def test_a_parameter_that_started_at_zero_needs_no_generated_code(monkeypatch):
    """Its 0-d x0 is spelled out for the C++, so no kernel is compiled in the middle of a step
    (where a failure would leave s of the earlier parameters updated)."""
    _fresh_prodigy_kernels(monkeypatch)
    params = [torch.zeros(6, requires_grad=True), torch.randn(5, requires_grad=True)]
    reference = [p.detach().clone().requires_grad_() for p in params]
    ours, theirs = Prodigy(params, compiled=True), Prodigy(reference, foreach=False)
    for step in range(3):
        for a, b in zip(params, reference, strict=True):
            a.grad = torch.full_like(a, 0.5 - step)
            b.grad = torch.full_like(b, 0.5 - step)
        ours.step()
        theirs.step()
    assert ours.state[params[0]]["p0"].dim() == 0  # the reference's saving is kept
    assert prodigy.prodigy_statistics_kernel._compiled is None
    for a, b in zip(params, reference, strict=True):
        torch.testing.assert_close(a, b)
