"""Machinery every optimizer shares, so that an algorithm file holds only its math.

What lives here:

* hyper-parameter checks that raise ``ValueError`` naming the parameter and its value;
* :class:`EduOptimizer`, the ``torch.optim.Optimizer`` subclass every algorithm derives from.
  Its ``step`` gathers the parameters that have gradients, creates state lazily, groups
  tensors into :class:`Bucket` s of one device and dtype (complex tensors viewed as real),
  chooses an implementation (``"loop"``, ``"foreach"`` or ``"fused"``) and hands each bucket
  to the algorithm's ``_update``;
* the flat-buffer mode (``flat=True``): parameters, gradients and state of each
  device/dtype live in a few contiguous buffers, so a step over thousands of small tensors
  costs as much as a step over one large tensor.

An algorithm subclass provides ``_init_state(param, state, group)`` (create its state
tensors), ``_update(group, bucket, impl)`` (apply the math to one bucket) and, when torch has
a fused kernel with identical math for the configuration, ``_can_fuse(group) -> True``.
"""

from __future__ import annotations

import numbers
import operator
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

Impl = str  # "loop" | "foreach" | "fused"

#: torch's elementwise CPU ops run single-threaded below this many elements (at::internal::
#: GRAIN_SIZE); its fused optimizer kernels do not, so we apply the same rule to them.
PARALLEL_GRAIN = 32768


# ---------------------------------------------------------------------------------------
# hyper-parameter checks


def _as_number(name: str, value: float | Tensor) -> float:
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise ValueError(f"Tensor {name} must be 1-element, got shape {tuple(value.shape)}")
        return float(value.item())
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}: {value!r}")
    return float(value)


def check_non_negative(name: str, value: float | Tensor) -> None:
    """Raise ``ValueError("Invalid <name> value: <value>")`` unless ``value >= 0``."""
    number = _as_number(name, value)
    if not number >= 0.0:  # also rejects NaN
        raise ValueError(f"Invalid {name} value: {value} ({name} must be >= 0)")


def check_lr(lr: float | Tensor) -> None:
    """Raise ``ValueError`` unless the learning rate ``lr`` is a number >= 0."""
    number = _as_number("lr", lr)
    if not number >= 0.0:
        raise ValueError(f"Invalid learning rate: lr={lr} (lr must be >= 0)")


def check_beta(name: str, value: float | Tensor) -> None:
    """Raise ``ValueError`` unless ``0 <= value < 1`` (a decay rate such as beta1 or beta2)."""
    number = _as_number(name, value)
    if not 0.0 <= number < 1.0:
        raise ValueError(f"Invalid {name} value: {value} ({name} must be in [0, 1))")


def check_betas(betas: tuple[float, float]) -> None:
    """Check an Adam-style ``betas=(beta1, beta2)`` pair; name the bad index like torch does."""
    try:
        pair = tuple(betas)
    except TypeError:
        pair = ()
    if len(pair) != 2:
        raise ValueError(f"Invalid betas value: {betas!r} (betas must be a pair (beta1, beta2))")
    for index, beta in enumerate(pair):
        number = _as_number(f"betas[{index}]", beta)
        if not 0.0 <= number < 1.0:
            raise ValueError(
                f"Invalid beta parameter at index {index}: betas[{index}]={beta} "
                "(must be in [0, 1))"
            )


def check_impl_flags(foreach: bool | None, fused: bool | None, differentiable: bool) -> None:
    """Reject the flag combinations torch.optim rejects, with torch's exception types."""
    if fused and foreach:
        raise RuntimeError("`fused` and `foreach` cannot be `True` together.")
    if fused and differentiable:
        raise RuntimeError("`fused` does not support `differentiable`")


def check_unsupported(**flags: bool) -> None:
    """Reject torch.optim options we accept for signature compatibility but do not implement."""
    for name, value in flags.items():
        if value:
            raise NotImplementedError(
                f"{name}=True is not supported by torchopt_edu; use torch.optim for it"
            )


def as_float(value: float | Tensor) -> float:
    """A hyper-parameter as a Python float (a tensor learning rate is read once per step)."""
    return float(value.item()) if isinstance(value, Tensor) else float(value)


# ---------------------------------------------------------------------------------------
# buckets: tensors of one device and dtype, ready for a multi-tensor kernel


@dataclass
class Bucket:
    """The parameters of one param group that share a device and a dtype.

    ``params`` and ``grads`` are real views when the parameters are complex (every
    optimizer here treats a complex number as a pair of reals, as torch.optim does).
    ``first_step`` is True when the state of all these parameters was created in this step.
    """

    params: list[Tensor]
    grads: list[Tensor]
    states: list[dict[str, Any]]
    is_complex: bool = False
    first_step: bool = False
    _views: dict[str, list[Tensor]] = field(default_factory=dict, repr=False)

    def state(self, key: str) -> list[Tensor]:
        """The list of state tensors ``state[key]`` (viewed as real for complex parameters)."""
        views = self._views.get(key)
        if views is None:
            tensors = [state[key] for state in self.states]
            if self.is_complex:  # "step" and other real state stay as they are
                tensors = [torch.view_as_real(t) if t.is_complex() else t for t in tensors]
            views = tensors
            self._views[key] = views
        return views

    def split(self, keep: list[bool]) -> tuple[Bucket, Bucket]:
        """Two buckets: the tensors where ``keep`` is True, and the others."""
        parts = []
        for wanted in (True, False):
            idx = [i for i, k in enumerate(keep) if k is wanted]
            parts.append(
                Bucket(
                    params=[self.params[i] for i in idx],
                    grads=[self.grads[i] for i in idx],
                    states=[self.states[i] for i in idx],
                    is_complex=self.is_complex,
                    first_step=self.first_step,
                )
            )
        return parts[0], parts[1]

    @property
    def device(self) -> torch.device:
        """The device all tensors of this bucket live on."""
        return self.params[0].device

    @property
    def has_sparse_grad(self) -> bool:
        """Whether any gradient in the bucket is a sparse tensor."""
        return any(g.is_sparse for g in self.grads)


def _real(tensors: list[Tensor]) -> list[Tensor]:
    return [torch.view_as_real(t) for t in tensors]


def make_buckets(
    params: list[Tensor], grads: list[Tensor], states: list[dict[str, Any]], fresh: list[bool]
) -> list[Bucket]:
    """Split parallel lists into buckets by (device, dtype, freshly-initialised state)."""
    first = params[0]
    if all(p.device == first.device and p.dtype == first.dtype for p in params) and (
        all(fresh) or not any(fresh)
    ):
        keys = [None]
        index_lists = [range(len(params))]
    else:
        groups: dict[tuple[torch.device, torch.dtype, bool], list[int]] = {}
        for i, (p, is_fresh) in enumerate(zip(params, fresh, strict=True)):
            groups.setdefault((p.device, p.dtype, is_fresh), []).append(i)
        keys = list(groups)
        index_lists = list(groups.values())
    buckets = []
    for _key, idx in zip(keys, index_lists, strict=True):
        b_params = [params[i] for i in idx]
        b_grads = [grads[i] for i in idx]
        is_complex = b_params[0].is_complex()
        if is_complex:
            b_params, b_grads = _real(b_params), _real(b_grads)
        buckets.append(
            Bucket(
                params=b_params,
                grads=b_grads,
                states=[states[i] for i in idx],
                is_complex=is_complex,
                first_step=fresh[idx[0]],
            )
        )
    return buckets


def fused_supported(bucket: Bucket) -> bool:
    """Whether torch's fused kernels accept this bucket: dense floating point, CPU or GPU."""
    first = bucket.params[0]
    return (
        first.device.type in ("cpu", "cuda", "mps", "xpu")
        and first.is_floating_point()
        and not bucket.has_sparse_grad
    )


@contextmanager
def single_intra_op_thread() -> Iterator[None]:
    """Run the enclosed CPU kernels on one thread, then restore torch's thread count."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def new_step_tensor(param: Tensor, on_param_device: bool) -> Tensor:
    """A fresh ``state["step"]``: a float32 scalar counter.

    As in torch.optim: on the parameter's device where a fused kernel reads it, otherwise on
    the CPU, where reading it for the bias corrections costs no device synchronisation.
    """
    return torch.zeros((), dtype=torch.float32, device=param.device if on_param_device else "cpu")


# ---------------------------------------------------------------------------------------
# the optimizer base class


class EduOptimizer(Optimizer):
    """Base class: the ``torch.optim.Optimizer`` contract plus implementation choice.

    ``foreach`` and ``fused`` mean what they mean in torch.optim; when both are ``None`` (the
    default) the fastest implementation is chosen per bucket: torch's fused kernel where the
    math is identical and the tensors allow it, otherwise the multi-tensor ``foreach`` path.
    ``foreach=False`` selects the readable per-tensor loop, the reference implementation.

    ``flat=True`` stores the parameters, gradients and state of each device/dtype in one
    contiguous buffer (parameters become views into it), and a step runs one kernel over one
    tensor. It gives the same numbers as the normal mode: whenever a parameter has no dense
    gradient, or the parameters' states have different ages, that step takes the per-tensor
    path over the same views. Call ``zero_grad(set_to_none=False)`` to keep the gradients in
    the buffer between steps (one memset); after ``set_to_none=True`` (torch's default) new
    gradients are copied into the buffer at the next step.

    Subclasses set ``supports_sparse`` (SGD, Adagrad) and ``fused_on_accelerators`` (whether
    their fused path also runs on GPUs, which decides where ``state["step"]`` lives).
    """

    supports_sparse = False
    fused_on_accelerators = True

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        defaults: dict[str, Any],
        *,
        flat: bool = False,
    ) -> None:
        if isinstance(params, Tensor):
            raise TypeError(
                "params argument given to the optimizer should be an iterable of Tensors or "
                f"dicts, but got {torch.typename(params)}"
            )
        check_impl_flags(
            defaults.get("foreach"), defaults.get("fused"), defaults.get("differentiable", False)
        )
        check_unsupported(
            differentiable=defaults.get("differentiable", False),
            capturable=defaults.get("capturable", False),
        )
        if flat and (defaults.get("foreach") is False):
            raise ValueError("flat=True needs a multi-tensor path; do not pass foreach=False")
        self._flat = False  # add_param_group, called by torch's __init__, must not flatten yet
        self._flat_groups: list[_FlatGroup] = []
        super().__init__(params, defaults)
        if flat:
            for group in self.param_groups:  # check every group before changing any
                _FlatGroup.check(group["params"])
            self._flat = True
            self._flat_groups = [_FlatGroup.build(group) for group in self.param_groups]

    # -- hooks an algorithm implements ---------------------------------------------------

    def _init_state(self, param: Tensor, state: dict[str, Any], group: dict[str, Any]) -> None:
        """Create the state of ``param`` (first time it has a gradient)."""
        raise NotImplementedError

    def _update(self, group: dict[str, Any], bucket: Bucket, impl: Impl) -> None:
        """Apply the algorithm to one bucket with implementation ``impl``."""
        raise NotImplementedError

    def _can_fuse(self, group: dict[str, Any]) -> bool:
        """Whether a torch fused kernel computes exactly this group's update."""
        return False

    def _new_step(self, param: Tensor, group: dict[str, Any]) -> Tensor:
        """A zero ``state["step"]`` where this optimizer's kernels read it."""
        return new_step_tensor(param, self.fused_on_accelerators and self._can_fuse(group))

    # -- torch.optim plumbing -------------------------------------------------------------

    def __getstate__(self) -> dict[str, Any]:
        """What ``pickle`` and ``copy.deepcopy`` keep: torch's fields plus the flat flag."""
        return {**super().__getstate__(), "flat": self._flat}

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Restore after unpickling or ``load_state_dict``; fill in options old saves lack."""
        flat = state.pop("flat", None)
        super().__setstate__(state)
        for group in self.param_groups:
            for key, value in self.defaults.items():
                group.setdefault(key, value)
        if "_flat" not in self.__dict__:  # unpickled or deep-copied, not load_state_dict
            self._flat = bool(flat)
            self._flat_groups = [_FlatGroup.build(g) for g in self.param_groups] if flat else []
            for flat_group in self._flat_groups:
                flat_group.adopt_state(self.state)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load like torch.optim; in flat mode the loaded state moves into the buffers."""
        super().load_state_dict(state_dict)
        for flat_group in self._flat_groups:
            flat_group.adopt_state(self.state)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a param group (as torch.optim does); in flat mode it gets buffers of its own."""
        if self._flat:
            params = param_group["params"]
            params = [params] if isinstance(params, Tensor) else list(params)
            _FlatGroup.check(params)
            param_group = {**param_group, "params": params}
        super().add_param_group(param_group)
        if self._flat:
            self._flat_groups.append(_FlatGroup.build(self.param_groups[-1]))

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Reset gradients as torch.optim does; flat mode zeroes each buffer with one memset."""
        if self._flat and not set_to_none and all(f.grads_in_buffer() for f in self._flat_groups):
            for flat_group in self._flat_groups:
                flat_group.zero_grad_buffers()
            return
        super().zero_grad(set_to_none=set_to_none)

    def _choose_impl(self, group: dict[str, Any], bucket: Bucket) -> Impl:
        foreach, fused = group.get("foreach"), group.get("fused")
        if fused:
            if not self._can_fuse(group):
                raise RuntimeError(
                    f"{type(self).__name__}: fused=True is not available for this configuration"
                )
            if not fused_supported(bucket):
                raise RuntimeError(
                    "`fused=True` requires all the params to be floating point Tensors of "
                    "supported devices (CPU, CUDA, MPS, XPU) with dense gradients"
                )
            return "fused"
        if bucket.has_sparse_grad or foreach is False:
            return "loop"
        if foreach is None and self._can_fuse(group) and fused_supported(bucket):
            return "fused"
        return "foreach"

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """Perform one optimisation step; ``closure`` re-evaluates the model, returns the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for index, group in enumerate(self.param_groups):
            if self._flat:
                flat_group = self._flat_groups[index]
                if flat_group.ready_for_fast_step(self, group):
                    for bucket in flat_group.buckets():
                        self._run(group, bucket)
                    flat_group.after_fast_step()
                    continue
            self._step_group(group)
        return loss

    def _step_group(self, group: dict[str, Any]) -> None:
        params: list[Tensor] = []
        grads: list[Tensor] = []
        states: list[dict[str, Any]] = []
        fresh: list[bool] = []
        optimizer_state = self.state
        for p in group["params"]:
            grad = p.grad
            if grad is None:
                continue
            if grad.is_sparse and not self.supports_sparse:
                raise RuntimeError(
                    f"{type(self).__name__} does not support sparse gradients "
                    f"(parameter of shape {tuple(p.shape)}); use SGD or Adagrad"
                )
            state = optimizer_state.get(p)
            is_fresh = not state
            if is_fresh:
                state = {}
                self._init_state(p, state, group)
                if state:  # optimizers without state (SGD, momentum 0) keep no entry
                    optimizer_state[p] = state
            params.append(p)
            grads.append(grad)
            states.append(state)
            fresh.append(is_fresh)
        if not params:
            return
        for bucket in make_buckets(params, grads, states, fresh):
            self._run(group, bucket)

    def _run(self, group: dict[str, Any], bucket: Bucket) -> None:
        """Update one bucket; small tensors go through CPU fused kernels on one thread.

        torch's fused CPU kernels open a parallel region for every tensor, however small.
        For a 1000-element tensor the fork and join cost more than the arithmetic, and on a
        busy machine a join that waits for a descheduled thread costs milliseconds. Below
        ``PARALLEL_GRAIN`` elements we run them on one thread, as torch's own elementwise
        ops do; the numbers are the same either way (elementwise math, no reductions).
        """
        impl = self._choose_impl(group, bucket)
        if impl == "fused" and bucket.device.type != "cpu":
            _move_steps_to(bucket, bucket.device)  # e.g. state loaded from a CPU checkpoint
        if impl != "fused" or bucket.device.type != "cpu" or torch.get_num_threads() == 1:
            self._update(group, bucket, impl)
            return
        small, large = bucket.split([p.numel() < PARALLEL_GRAIN for p in bucket.params])
        if large.params:
            self._update(group, large, impl)
        if small.params:
            with single_intra_op_thread():
                self._update(group, small, impl)


def _move_steps_to(bucket: Bucket, device: torch.device) -> None:
    """Fused GPU kernels read ``state["step"]`` on the device; move counters that are not."""
    for state in bucket.states:
        step = state.get("step")
        if step is not None and step.device != device:
            state["step"] = step.to(device)
    bucket._views.pop("step", None)


# ---------------------------------------------------------------------------------------
# flat-buffer mode


@dataclass
class _FlatSlab:
    """The parameters of one group with one device and dtype, packed into one buffer.

    ``flat_state`` holds the packed state (one buffer per state key, one ``step`` counter)
    once every parameter of the slab has state; it is empty before.
    """

    params: list[Tensor]
    offsets: list[int]
    param_buffer: Tensor
    grad_buffer: Tensor
    grad_views: list[Tensor]
    param_pointers: list[int]
    flat_state: dict[str, Tensor] = field(default_factory=dict)
    step_buffer: Tensor | None = None
    first_step: bool = False

    def view(self, buffer: Tensor, i: int) -> Tensor:
        """Parameter ``i``'s slice of ``buffer``, shaped like the parameter."""
        p = self.params[i]
        return buffer[self.offsets[i] : self.offsets[i] + p.numel()].view_as(p)


class _FlatGroup:
    """Flat buffers for one param group (one slab per device and dtype)."""

    def __init__(self, slabs: list[_FlatSlab]) -> None:
        self.slabs = slabs

    @staticmethod
    def check(params: Iterable[Tensor]) -> None:
        """Raise ``ValueError`` for a parameter that cannot live in a flat buffer."""
        for p in params:
            if p.is_sparse or p.is_complex() or not p.is_floating_point():
                raise ValueError(
                    f"flat=True supports dense real floating-point parameters, got {p.dtype}"
                    f"{' (sparse)' if p.is_sparse else ''} of shape {tuple(p.shape)}"
                )

    @classmethod
    def build(cls, group: dict[str, Any]) -> _FlatGroup:
        """Copy the group's parameters into new buffers and make them views of it."""
        by_kind: dict[tuple[torch.device, torch.dtype], list[Tensor]] = {}
        for p in group["params"]:
            by_kind.setdefault((p.device, p.dtype), []).append(p)
        slabs = []
        with torch.no_grad():
            for (device, dtype), params in by_kind.items():
                sizes = [p.numel() for p in params]
                offsets = [sum(sizes[:i]) for i in range(len(sizes))]
                param_buffer = torch.empty(sum(sizes), device=device, dtype=dtype)
                grad_buffer = torch.zeros(sum(sizes), device=device, dtype=dtype)
                slab = _FlatSlab(params, offsets, param_buffer, grad_buffer, [], [])
                for i, p in enumerate(params):
                    view = slab.view(param_buffer, i)
                    view.copy_(p)
                    p.data = view
                    slab.param_pointers.append(view.data_ptr())
                    slab.grad_views.append(slab.view(grad_buffer, i))
                slabs.append(slab)
        return cls(slabs)

    def grads_in_buffer(self) -> bool:
        """Whether every parameter's gradient is its view of the gradient buffer."""
        return all(
            p.grad is view
            for slab in self.slabs
            for p, view in zip(slab.params, slab.grad_views, strict=True)
        )

    def zero_grad_buffers(self) -> None:
        """Zero every gradient buffer in place."""
        for slab in self.slabs:
            slab.grad_buffer.zero_()

    def ready_for_fast_step(self, optimizer: EduOptimizer, group: dict[str, Any]) -> bool:
        """Move gradients into the buffers; return False when the per-tensor path must run.

        The fast path needs every parameter to have a dense gradient and every parameter's
        state to have the same age (all created together, all stepped together).
        """
        for slab in self.slabs:
            # list comprehensions and C-level comparisons: this runs every step over
            # thousands of parameters, and a Python-level loop body would cost more than
            # the update itself
            if [p.data_ptr() for p in slab.params] != slab.param_pointers:
                raise RuntimeError(
                    "flat=True: a parameter no longer lives in the optimizer's buffer (moved "
                    "by .to(), or .data reassigned); create the optimizer after moving the model"
                )
            grads = [p.grad for p in slab.params]
            if all(map(operator.is_, grads, slab.grad_views)):
                continue
            for p, grad, view in zip(slab.params, grads, slab.grad_views, strict=True):
                if grad is view:
                    continue
                if grad is None or grad.is_sparse:
                    return False
                view.copy_(grad)
                p.grad = view
        if all(slab.flat_state for slab in self.slabs):  # packed: every parameter has state
            first_step = False
        else:
            state = optimizer.state
            has_state = [bool(state.get(p)) for slab in self.slabs for p in slab.params]
            if any(has_state) and not all(has_state):
                return False
            if not any(has_state):
                for p in group["params"]:
                    new_state: dict[str, Any] = {}
                    optimizer._init_state(p, new_state, group)
                    if new_state:
                        state[p] = new_state
            self.adopt_state(state)
            first_step = not any(has_state)
        for slab in self.slabs:
            slab.first_step = first_step
            if slab.step_buffer is not None:
                steps = slab.step_buffer
                if bool(steps.min() != steps.max()):
                    return False
                slab.flat_state["step"].copy_(steps[0])
        return True

    def buckets(self) -> list[Bucket]:
        """One bucket per slab: the whole buffer as a single tensor."""
        return [
            Bucket(
                params=[slab.param_buffer],
                grads=[slab.grad_buffer],
                states=[slab.flat_state],
                first_step=slab.first_step,
            )
            for slab in self.slabs
        ]

    def after_fast_step(self) -> None:
        """Copy the slab's step counter back into every parameter's ``state["step"]``."""
        for slab in self.slabs:
            if slab.step_buffer is not None:
                slab.step_buffer.fill_(slab.flat_state["step"])

    def adopt_state(self, state: dict[Tensor, dict[str, Any]]) -> None:
        """Pack the per-parameter state tensors into flat buffers and point the state at views.

        A slab some of whose parameters have no state yet is left unpacked (its old packing,
        if any, is dropped): the per-tensor path runs until every parameter has state.
        """
        with torch.no_grad():
            for slab in self.slabs:
                slab.flat_state = {}
                slab.step_buffer = None
                if not all(state.get(p) for p in slab.params):
                    continue
                for key, value in state[slab.params[0]].items():
                    if not isinstance(value, Tensor):
                        continue
                    if key == "step":
                        steps = torch.stack([state[p][key].reshape(()) for p in slab.params])
                        for i, p in enumerate(slab.params):
                            state[p][key] = steps[i]
                        slab.step_buffer = steps
                        slab.flat_state["step"] = steps[0].clone()
                        continue
                    buffer = torch.empty_like(slab.param_buffer)
                    for i, p in enumerate(slab.params):
                        view = slab.view(buffer, i)
                        view.copy_(state[p][key])
                        state[p][key] = view
                    slab.flat_state[key] = buffer
