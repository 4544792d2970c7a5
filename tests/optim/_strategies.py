"""Hypothesis strategies and helpers for the optimizer property suite (test_properties.py).

A drawn :class:`Problem` says everything a run needs: which optimizer family and
hyper-parameters, which implementation path of ours, the parameters (shape, dtype, memory
layout, the layout of their gradients), how they split into param groups, and which
parameters get no gradient at which step. :func:`run` then builds fresh tensors from it, so
one problem can be replayed for our optimizer, its torch.optim twin and a resumed copy.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from hypothesis import strategies as st
from torch.optim import Optimizer

from torchopt_edu import optim as ours

Kwargs = dict[str, Any]

# ---------------------------------------------------------------------------------------
# optimizer families: our class, its torch.optim twin, and valid hyper-parameters

#: Flags drawn as bools and as the ints 0/1 (torch.optim accepts either).
flags = st.sampled_from([False, True, 0, 1])


def _maybe_zero(high: float) -> st.SearchStrategy[float]:
    return st.one_of(st.just(0.0), st.floats(0.0, high))


def _sgd(draw: st.DrawFn) -> Kwargs:
    momentum = draw(_maybe_zero(0.95))
    dampening = draw(_maybe_zero(0.9))
    nesterov = momentum > 0 and dampening == 0 and draw(st.booleans())
    return dict(
        lr=draw(st.floats(1e-3, 0.5)),
        momentum=momentum,
        dampening=dampening,
        weight_decay=draw(_maybe_zero(0.1)),
        nesterov=nesterov,
        maximize=draw(flags),
    )


def _momentum(draw: st.DrawFn) -> Kwargs:
    return dict(
        lr=draw(st.floats(1e-3, 0.5)),
        beta=draw(_maybe_zero(0.95)),
        weight_decay=draw(_maybe_zero(0.1)),
        maximize=draw(flags),
    )


def _adagrad(draw: st.DrawFn) -> Kwargs:
    return dict(
        lr=draw(st.floats(1e-3, 0.5)),
        lr_decay=draw(_maybe_zero(0.1)),
        weight_decay=draw(_maybe_zero(0.1)),
        initial_accumulator_value=draw(_maybe_zero(1.0)),
        eps=draw(st.sampled_from([1e-10, 1e-8, 1e-6, 1e-3])),
        maximize=draw(flags),
    )


def _rmsprop(draw: st.DrawFn) -> Kwargs:
    return dict(
        lr=draw(st.floats(1e-4, 0.05)),
        alpha=draw(st.floats(0.1, 0.99)),
        eps=draw(st.sampled_from([1e-8, 1e-6, 1e-3])),
        weight_decay=draw(_maybe_zero(0.1)),
        momentum=draw(_maybe_zero(0.9)),
        centered=draw(flags),
        maximize=draw(flags),
    )


def _betas(draw: st.DrawFn) -> tuple[Any, Any]:
    """Adam-style betas; each may be a float or a 1-element tensor, as torch.optim allows."""
    betas = (draw(st.floats(0.0, 0.95)), draw(st.floats(0.5, 0.999)))
    # mostly floats, sometimes tensors, now and then one of each (which torch.optim refuses)
    as_tensor = draw(
        st.sampled_from([(False, False)] * 4 + [(True, True)] * 2 + [(True, False), (False, True)])
    )
    return tuple(
        torch.tensor(beta, dtype=torch.float64) if tensor else beta
        for beta, tensor in zip(betas, as_tensor, strict=True)
    )


def _adam(draw: st.DrawFn, decoupled: bool | None = None) -> Kwargs:
    kwargs = dict(
        lr=draw(st.floats(1e-4, 0.1)),
        betas=_betas(draw),
        eps=draw(st.sampled_from([1e-8, 1e-6, 1e-3])),
        weight_decay=draw(_maybe_zero(0.1)),
        amsgrad=draw(flags),
        maximize=draw(flags),
    )
    if decoupled is None:  # Adam: its decoupled_weight_decay switch; AdamW: always on
        kwargs["decoupled_weight_decay"] = draw(st.booleans())
    return kwargs


def _yogi(draw: st.DrawFn) -> Kwargs:
    return dict(
        lr=draw(st.floats(1e-4, 0.1)),
        betas=_betas(draw),
        eps=draw(st.sampled_from([1e-4, 1e-3, 1e-2])),
        initial_accumulator_value=draw(st.sampled_from([0.0, 1e-6, 0.1])),
        weight_decay=draw(_maybe_zero(0.1)),
        maximize=draw(flags),
    )


class ZeroStartSGD(torch.optim.SGD):
    """torch.optim.SGD whose momentum buffers start at zero: the twin of our Momentum.

    torch starts a buffer at v_1 = g_1, Momentum (the EMA form) at v_0 = 0, so that
    v_1 = (1 - beta) g_1; from there both compute v = beta v + (1 - beta) g.
    """

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """Create zero buffers for parameters about to get their first one, then step."""
        for group in self.param_groups:
            if group["momentum"] != 0:
                for p in group["params"]:
                    if p.grad is not None and "momentum_buffer" not in self.state[p]:
                        self.state[p]["momentum_buffer"] = torch.zeros_like(p)
        return super().step(closure)


def _momentum_twin(kwargs: Kwargs) -> Kwargs:
    # Momentum(beta) is ZeroStartSGD(momentum=beta, dampening=beta); beta = 0 is plain SGD
    beta = kwargs["beta"]
    rest = {k: v for k, v in kwargs.items() if k != "beta"}
    return dict(rest, momentum=beta, dampening=beta)


@dataclass(frozen=True)
class Family:
    """One of our optimizer classes and how to compare it with torch.optim."""

    name: str
    cls: type[Optimizer]
    hyper: Callable[[st.DrawFn], Kwargs]
    twin: type[Optimizer] | None  # None: compare our paths with our own reference loop
    twin_kwargs: Callable[[Kwargs], Kwargs] = lambda kwargs: dict(kwargs)
    fused: Callable[[Kwargs], bool] = lambda kwargs: True  # may fused=True be passed?


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in [
        Family("SGD", ours.SGD, _sgd, torch.optim.SGD),
        Family("Momentum", ours.Momentum, _momentum, ZeroStartSGD, _momentum_twin),
        Family("Adagrad", ours.Adagrad, _adagrad, torch.optim.Adagrad),
        Family(
            "RMSprop",
            ours.RMSprop,
            _rmsprop,
            torch.optim.RMSprop,
            # torch has no fused RMSprop; ours fuses the plain configuration on the CPU
            fused=lambda kw: (
                not (kw["momentum"] or kw["centered"] or kw["weight_decay"] or kw["maximize"])
            ),
        ),
        Family("Adam", ours.Adam, _adam, torch.optim.Adam),
        Family("AdamW", ours.AdamW, lambda draw: _adam(draw, decoupled=True), torch.optim.AdamW),
        Family("Yogi", ours.Yogi, _yogi, None, fused=lambda kwargs: False),
    ]
}

#: Our implementation switches. "loop" is the readable reference.
PATHS: dict[str, Kwargs] = {
    "loop": dict(foreach=False),
    "foreach": dict(foreach=True),
    "fused": dict(fused=True),
    "default": dict(),
    "flat": dict(flat=True),
    "flat_fused": dict(flat=True, fused=True),
}


def paths_for(family: Family, kwargs: Kwargs) -> list[str]:
    """The paths our class accepts for ``kwargs`` (fused only where a kernel exists)."""
    return [p for p in PATHS if "fused" not in p or family.fused(kwargs)]


# ---------------------------------------------------------------------------------------
# parameters: shape, dtype, memory layout, gradient layout


@dataclass(frozen=True)
class ParamSpec:
    """How to build one parameter and its gradients.

    ``layout`` and ``grad_layout`` are permutations: the tensor is allocated contiguous in
    the permuted dimension order and permuted back, so (1, 0) is a transposed matrix and
    (0, 2, 3, 1) is channels_last. ``offset`` puts the tensor at a storage offset.
    """

    shape: tuple[int, ...]
    layout: tuple[int, ...]
    grad_layout: tuple[int, ...]
    offset: int = 0


def _permutations(ndim: int) -> list[tuple[int, ...]]:
    identity = tuple(range(ndim))
    options = [identity]
    if ndim >= 2:
        options.append(identity[:-2] + (ndim - 1, ndim - 2))  # transposed
    if ndim == 4:
        options.append((0, 2, 3, 1))  # channels_last
        options.append((3, 2, 1, 0))
    return options


@st.composite
def param_specs(draw: st.DrawFn, max_dim: int = 4) -> ParamSpec:
    """A parameter: 0-d, 1-D, 2-D or 4-D, sizes 0..max_dim, in any supported layout."""
    ndim = draw(st.sampled_from([0, 1, 2, 4]))
    shape = tuple(draw(st.lists(st.integers(0, max_dim), min_size=ndim, max_size=ndim)))
    layouts = _permutations(ndim)
    layout = draw(st.sampled_from(layouts))
    grad_layout = draw(st.sampled_from([layout, *layouts]))  # usually the parameter's own
    offset = draw(st.sampled_from([0, 0, 3]))
    return ParamSpec(shape, layout, grad_layout, offset)


def allocate(
    spec_shape: tuple[int, ...], layout: tuple[int, ...], dtype: torch.dtype, offset: int = 0
) -> torch.Tensor:
    """An uninitialised tensor of ``spec_shape`` whose memory order is ``layout``."""
    permuted = [spec_shape[d] for d in layout]
    storage = torch.empty(offset + math.prod(permuted), dtype=dtype)
    base = storage[offset:].view(permuted)
    inverse = sorted(range(len(layout)), key=layout.__getitem__)
    return base.permute(inverse)


def strides_description(spec: ParamSpec) -> str:
    """A short text for failure messages."""
    return f"shape={spec.shape} layout={spec.layout} grad_layout={spec.grad_layout}"


@dataclass(frozen=True)
class Problem:
    """A complete, replayable optimisation run (see the module docstring)."""

    family: str
    kwargs: Kwargs
    path: str
    dtype: torch.dtype
    specs: tuple[ParamSpec, ...]
    groups: tuple[int, ...]  # group index of each parameter
    group_lrs: tuple[float | None, ...]  # lr override per group (None: the default)
    steps: int
    no_grad: tuple[tuple[bool, ...], ...] = field(default=())  # [step][param]: grad None
    seed: int = 0

    def describe(self) -> str:
        """A readable summary for assertion messages."""
        params = "; ".join(strides_description(s) for s in self.specs)
        return (
            f"{self.family}({self.kwargs}) path={self.path} dtype={self.dtype} "
            f"groups={self.groups} group_lrs={self.group_lrs} steps={self.steps} "
            f"no_grad={self.no_grad} params=[{params}]"
        )


@st.composite
def problems(
    draw: st.DrawFn,
    families: list[str] | None = None,
    max_params: int = 4,
    max_steps: int = 4,
    min_steps: int = 1,
    simple_layouts: bool = False,
    odd_types: bool = True,
    large: bool = False,
) -> Problem:
    """A random :class:`Problem`.

    ``simple_layouts`` keeps tensors contiguous; ``odd_types=False`` passes flags as bools and
    betas of one type (torch.optim refuses a float with a tensor);
    ``large`` may make the first parameter large (2**17 elements), where a kernel that reads
    past a too-small state buffer leaves mapped memory and crashes instead of reading junk.
    """
    family = FAMILIES[draw(st.sampled_from(families or list(FAMILIES)))]
    kwargs = family.hyper(draw)
    if not odd_types:
        kwargs = {k: bool(v) if type(v) is int else v for k, v in kwargs.items()}
        if "betas" in kwargs and len({type(beta) for beta in kwargs["betas"]}) > 1:
            kwargs["betas"] = tuple(float(beta) for beta in kwargs["betas"])
    if draw(st.booleans()):  # a tensor learning rate, as torch.optim allows
        kwargs["lr"] = torch.tensor(kwargs["lr"], dtype=torch.float64)
    path = draw(st.sampled_from(paths_for(family, kwargs)))
    dtype = draw(st.sampled_from([torch.float64, torch.float32]))
    specs = draw(st.lists(param_specs(), min_size=1, max_size=max_params))
    if simple_layouts:
        specs = [
            ParamSpec(s.shape, tuple(range(len(s.shape))), tuple(range(len(s.shape))))
            for s in specs
        ]
    if large and draw(st.booleans()):
        specs[0] = ParamSpec((2**17,), (0,), (0,))
    n_groups = draw(st.integers(1, min(3, len(specs))))
    # every group gets at least one parameter: the first n_groups go one per group
    groups = list(range(n_groups)) + draw(
        st.lists(
            st.integers(0, n_groups - 1),
            min_size=len(specs) - n_groups,
            max_size=len(specs) - n_groups,
        )
    )
    group_lrs = (None,) + tuple(
        draw(st.one_of(st.none(), st.floats(1e-4, 0.05))) for _ in range(n_groups - 1)
    )
    steps = draw(st.integers(min_steps, max_steps))
    no_grad = tuple(
        tuple(draw(st.lists(st.booleans(), min_size=len(specs), max_size=len(specs))))
        if draw(st.integers(0, 3)) == 0  # most steps give every parameter a gradient
        else (False,) * len(specs)
        for _ in range(steps)
    )
    return Problem(
        family.name,
        kwargs,
        path,
        dtype,
        tuple(specs),
        tuple(groups),
        group_lrs,
        steps,
        no_grad,
        draw(st.integers(0, 2**16)),
    )


# ---------------------------------------------------------------------------------------
# building and running


def make_params(problem: Problem) -> list[torch.Tensor]:
    """Fresh leaf parameters with the problem's shapes, dtype and layouts."""
    generator = torch.Generator().manual_seed(problem.seed)
    params = []
    for spec in problem.specs:
        values = torch.randn(spec.shape, generator=generator, dtype=problem.dtype)
        param = allocate(spec.shape, spec.layout, problem.dtype, spec.offset)
        param.copy_(values)
        params.append(param.requires_grad_())
    return params


def copy_params(params: list[torch.Tensor], problem: Problem) -> list[torch.Tensor]:
    """Independent leaves with the values of ``params`` and the layouts of ``problem``."""
    copies = []
    for p, spec in zip(params, problem.specs, strict=True):
        copy = allocate(spec.shape, spec.layout, problem.dtype, spec.offset)
        copy.copy_(p.detach())
        copies.append(copy.requires_grad_())
    return copies


def param_groups(params: list[torch.Tensor], problem: Problem) -> list[dict[str, Any]]:
    """The problem's param groups over ``params``."""
    groups: list[dict[str, Any]] = []
    for index, lr in enumerate(problem.group_lrs):
        group: dict[str, Any] = {
            "params": [p for p, g in zip(params, problem.groups, strict=True) if g == index]
        }
        if lr is not None:
            group["lr"] = lr
        groups.append(group)
    return groups


def our_optimizer(
    params: list[torch.Tensor], problem: Problem, path: str | None = None
) -> Optimizer:
    """Our optimizer over ``params`` on ``path`` (the problem's path by default)."""
    family = FAMILIES[problem.family]
    return family.cls(
        param_groups(params, problem), **problem.kwargs, **PATHS[path or problem.path]
    )


def reference_optimizer(params: list[torch.Tensor], problem: Problem) -> Optimizer:
    """The reference: torch.optim's twin on its per-tensor path, or our own loop (Yogi)."""
    family = FAMILIES[problem.family]
    if family.twin is None:
        return family.cls(param_groups(params, problem), **problem.kwargs, foreach=False)
    return family.twin(
        param_groups(params, problem), **family.twin_kwargs(problem.kwargs), foreach=False
    )


def use_reference_loop(twin: Optimizer) -> None:
    """Put a torch twin back on its per-tensor path after ``load_state_dict``.

    Loading copies the saver's ``foreach``/``fused`` flags into the groups (torch semantics);
    the twin is our reference, so it keeps torch's loop whatever path the saver used.
    """
    for group in twin.param_groups:
        group["foreach"] = False
        if "fused" in group:
            group["fused"] = None


def gradients(params: list[torch.Tensor], problem: Problem, step: int) -> list[torch.Tensor | None]:
    """The gradients of ``step``: 2 p + noise (a bowl, so errors compound), in grad_layout."""
    generator = torch.Generator().manual_seed(10_000 * problem.seed + step)
    grads: list[torch.Tensor | None] = []
    mask = problem.no_grad[step] if step < len(problem.no_grad) else (False,) * len(params)
    for p, spec, missing in zip(params, problem.specs, mask, strict=True):
        noise = torch.randn(spec.shape, generator=generator, dtype=problem.dtype)
        if missing:
            grads.append(None)
            continue
        grad = allocate(spec.shape, spec.grad_layout, problem.dtype)
        grad.copy_(2 * p.detach() + noise)
        grads.append(grad)
    return grads


def give_grads(params: list[torch.Tensor], grads: list[torch.Tensor | None]) -> None:
    """Assign a copy of each gradient (same strides) to each parameter."""
    for p, g in zip(params, grads, strict=True):
        p.grad = None if g is None else _same_strides_copy(g)


def _same_strides_copy(tensor: torch.Tensor) -> torch.Tensor:
    copy = torch.empty_strided(tensor.shape, tensor.stride(), dtype=tensor.dtype)
    return copy.copy_(tensor)


def run(
    problem: Problem,
    optimizers: list[Optimizer],
    param_lists: list[list[torch.Tensor]],
    steps: range,
) -> None:
    """Step every optimizer through ``steps`` with the same gradients."""
    for step in steps:
        grads = gradients(param_lists[0], problem, step)
        for optimizer, params in zip(optimizers, param_lists, strict=True):
            give_grads(params, grads)
            optimizer.step()


def tolerances(dtype: torch.dtype) -> dict[str, float]:
    """Relative/absolute tolerance: ~1e-10 in float64, ~1e-5 in float32."""
    return dict(rtol=1e-10, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-6)


def assert_same_run(
    actual_params: list[torch.Tensor],
    actual: Optimizer,
    expected_params: list[torch.Tensor],
    expected: Optimizer,
    problem: Problem,
    what: str,
) -> None:
    """Parameters and state tensors agree (state keys too, where both keep state)."""
    tol = tolerances(problem.dtype)
    context = f"{what}\n{problem.describe()}"
    for i, (a, e) in enumerate(zip(actual_params, expected_params, strict=True)):
        assert a.shape == e.shape, f"param {i}: shape {a.shape} != {e.shape}\n{context}"
        torch.testing.assert_close(
            a.detach(), e.detach(), **tol, msg=lambda m, i=i: f"param {i}: {m}\n{context}"
        )
        a_state = _tensor_state(actual.state.get(a, {}))
        e_state = _tensor_state(expected.state.get(e, {}))
        if not a_state and float(e_state.get("step", 0)) == 0:
            continue  # torch's Adagrad creates (untouched) state up front; ours lazily
        assert set(a_state) == set(e_state), (
            f"param {i}: state keys {sorted(a_state)} != {sorted(e_state)}\n{context}"
        )
        for key, value in e_state.items():
            assert a_state[key].shape == value.shape, (
                f"param {i}: state[{key!r}] shape {a_state[key].shape} != {value.shape}\n{context}"
            )
            torch.testing.assert_close(
                a_state[key].to(value.dtype),
                value,
                **tol,
                msg=lambda m, i=i, key=key: f"param {i} state[{key!r}]: {m}\n{context}",
            )


def _tensor_state(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
