"""Machinery every optimizer shares, so that an algorithm file holds only its math.

An algorithm is a subclass of :class:`EduOptimizer` that provides

* ``hyper``: a frozen dataclass (subclass of :class:`Hyper`) naming the hyper-parameters its
  update reads, built from a param group once per step;
* ``paths``: its implementations, ``{"loop": f, "foreach": f, ...}``, each a function
  ``f(bucket, hyper)`` that updates one :class:`Bucket` in place;
* ``_init_state(param, state, group)``: create its state tensors;
* ``_fuse_blocker(group)``: why torch's fused kernel cannot compute this group's update
  (``None`` when it can; the default says the algorithm has no fused path).

The base class does the rest, the same way for every algorithm: it checks the flags, takes
a step in two phases (check everything that can refuse the step in every group, then
update), creates state lazily, groups tensors into buckets of one device and dtype (complex
tensors viewed as real), picks the implementation, counts ``state["step"]`` (and takes the
count back if an update fails), and validates checkpoints before loading them. The
flat-buffer mode lives in :mod:`torchopt_edu.optim._flat`.
"""

from __future__ import annotations

import operator
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from itertools import repeat
from typing import Any, ClassVar

import torch
from torch import Tensor
from torch.optim import Optimizer

from torchopt_edu.optim._checks import (
    as_float,
    check_flag,
    check_impl_flags,
    check_unsupported,
    normalise_flags,
)

Impl = str  # "loop" | "foreach" | "fused"

#: torch's elementwise CPU ops run single-threaded below this many elements (at::internal::
#: GRAIN_SIZE); its fused optimizer kernels do not, so we apply the same rule to them.
PARALLEL_GRAIN = 32768

#: Elements per cache-sized slice of a bucket (1 MiB per float32 stream). Multi-tensor paths
#: with several passes run them one slice at a time: the later passes then read the slice from
#: the CPU's cache, and temporaries are slice-sized (on one core at 10M parameters in 200
#: tensors this made Lion 1.7x, Schedule-Free AdamW 1.3x and Prodigy 2x faster).
CACHE_SLICE = 1 << 18

# ---------------------------------------------------------------------------------------
# hyper-parameter records


@dataclass(frozen=True)
class Hyper:
    """The hyper-parameters an update reads, as plain numbers; subclasses name the fields.

    ``from_group`` reads each field from the param group by name; a tensor learning rate is
    read once, and Adam-style ``betas`` fill the fields ``beta1`` and ``beta2``. A field with
    a default that the group does not hold is a property of the algorithm, not an option.
    """

    lr: float

    @classmethod
    def from_group(cls, group: dict[str, Any]) -> Hyper:
        """The record for one param group (called once per group per step)."""
        values = dict(group)
        values["lr"] = as_float(group["lr"])
        if "betas" in group:
            values["beta1"], values["beta2"] = (as_float(beta) for beta in group["betas"])
        return cls(**{f.name: values[f.name] for f in fields(cls) if f.name in values})


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

    @property
    def steps(self) -> list[Tensor]:
        """``state["step"]`` of every parameter (already counted for this step)."""
        return self.state("step")

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

    def chunks(self) -> list[Bucket]:
        """Consecutive sub-buckets of whole tensors, each about ``CACHE_SLICE`` elements."""
        parts, start, total = [], 0, 0
        for i, param in enumerate(self.params):
            if i > start and total + param.numel() > CACHE_SLICE:
                parts.append(slice(start, i))
                start, total = i, 0
            total += param.numel()
        parts.append(slice(start, len(self.params)))
        if len(parts) == 1:
            return [self]
        return [
            Bucket(
                params=self.params[part],
                grads=self.grads[part],
                states=self.states[part],
                is_complex=self.is_complex,
                first_step=self.first_step,
            )
            for part in parts
        ]

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
        index_lists: list[Any] = [range(len(params))]
    else:
        groups: dict[tuple[torch.device, torch.dtype, bool], list[int]] = {}
        for i, (p, is_fresh) in enumerate(zip(params, fresh, strict=True)):
            groups.setdefault((p.device, p.dtype, is_fresh), []).append(i)
        index_lists = list(groups.values())
    buckets = []
    for idx in index_lists:
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


def fused_supported(tensor: Tensor) -> bool:
    """Whether torch's fused kernels take tensors like this: floating point, on a known device."""
    return tensor.device.type in ("cpu", "cuda", "mps", "xpu") and tensor.is_floating_point()


# One lock for every thread that lowers torch's thread count: with ATen's native thread pool
# torch.set_num_threads is process-wide, so two threads saving and restoring it without a lock
# could leave it at 1; with OpenMP it is per thread and the lock costs one uncontended acquire.
_THREAD_COUNT_LOCK = threading.Lock()


@contextmanager
def single_intra_op_thread() -> Iterator[None]:
    """Run the enclosed CPU kernels on one thread, then restore torch's thread count."""
    with _THREAD_COUNT_LOCK:
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


_GRAD = operator.attrgetter("grad")
_IS_SPARSE = operator.attrgetter("is_sparse")


@dataclass
class _Plan:
    """One param group's step, checked but not yet applied: what has a gradient."""

    group: dict[str, Any]
    params: list[Tensor]
    grads: list[Tensor]
    grads_in_buffer: bool = False  # flat mode: every gradient already is its buffer view


# ---------------------------------------------------------------------------------------
# the optimizer base class


class EduOptimizer(Optimizer):
    """Base class: the ``torch.optim.Optimizer`` contract plus implementation choice.

    ``foreach`` and ``fused`` mean what they mean in torch.optim; when both are ``None`` (the
    default) the fastest implementation is chosen per bucket: torch's fused kernel where the
    math is identical and the tensors allow it, otherwise the multi-tensor ``foreach`` path.
    ``foreach=False`` selects the readable per-tensor loop, the reference implementation.

    ``flat=True`` stores the parameters, gradients and state of each device/dtype in one
    contiguous buffer (see :mod:`torchopt_edu.optim._flat`).

    A step either happens in full or not at all: every reason to refuse it (a sparse gradient
    the algorithm cannot use, ``fused=True`` where no kernel applies, a parameter moved out of
    a flat buffer) is checked in every param group before any parameter or state changes.

    Subclasses set ``hyper``, ``paths``, ``supports_sparse`` (SGD, Adagrad) and
    ``fused_on_accelerators`` (whether their fused path also runs on GPUs, which decides
    where ``state["step"]`` lives) and ``broadcast_state``.
    """

    hyper: ClassVar[type[Hyper]] = Hyper
    paths: ClassVar[dict[Impl, Callable[[Bucket, Any], None]]] = {}
    supports_sparse: ClassVar[bool] = False
    fused_on_accelerators: ClassVar[bool] = True
    #: State keys that may be a 0-d tensor standing for a constant (checked on load).
    broadcast_state: ClassVar[frozenset[str]] = frozenset()

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        defaults: dict[str, Any],
        *,
        flat: bool = False,
    ) -> None:
        from torchopt_edu.optim._flat import FlatGroup

        if isinstance(params, Tensor):
            raise TypeError(
                "params argument given to the optimizer should be an iterable of Tensors or "
                f"dicts, but got {torch.typename(params)}"
            )
        defaults = normalise_flags(defaults)
        check_impl_flags(
            defaults.get("foreach"), defaults.get("fused"), defaults.get("differentiable", False)
        )
        check_unsupported(
            differentiable=defaults.get("differentiable", False),
            capturable=defaults.get("capturable", False),
        )
        flat = check_flag("flat", flat)
        if flat and (defaults.get("foreach") is False):
            raise ValueError("flat=True needs a multi-tensor path; do not pass foreach=False")
        self._flat = False  # add_param_group, called by torch's __init__, must not flatten yet
        self._flat_groups: list[FlatGroup] = []
        super().__init__(params, defaults)
        if flat:
            for group in self.param_groups:  # check every group before changing any
                FlatGroup.check(group["params"])
            FlatGroup.check([p for group in self.param_groups for p in group["params"]])
            self._flat = True
            self._flat_groups = [FlatGroup.build(group) for group in self.param_groups]

    # -- hooks an algorithm implements ---------------------------------------------------

    def _init_state(self, param: Tensor, state: dict[str, Any], group: dict[str, Any]) -> None:
        """Create the state of ``param`` (first time it has a gradient)."""
        raise NotImplementedError

    def _fuse_blocker(self, group: dict[str, Any]) -> str | None:
        """Why no torch fused kernel computes this group's update; ``None`` if one does."""
        return f"torch has no fused {type(self).__name__} kernel"

    def _check_grads(self, group: dict[str, Any], grads: list[Tensor]) -> None:
        """Raise if this algorithm cannot use these gradients (beyond the sparse check)."""

    def _hyper(self, group: dict[str, Any]) -> Hyper:
        """The hyper-parameter record the update of ``group`` reads."""
        return self.hyper.from_group(group)

    def _new_step(self, param: Tensor, group: dict[str, Any]) -> Tensor:
        """A zero ``state["step"]`` where this optimizer's kernels read it."""
        fused = self.fused_on_accelerators and self._fuse_blocker(group) is None
        return new_step_tensor(param, fused)

    # -- torch.optim plumbing -------------------------------------------------------------

    def __getstate__(self) -> dict[str, Any]:
        """What ``pickle`` and ``copy.deepcopy`` keep: torch's fields plus the flat flag."""
        return {**super().__getstate__(), "flat": self._flat}

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Restore after unpickling or ``load_state_dict``; fill in options old saves lack."""
        from torchopt_edu.optim._flat import FlatGroup

        flat = state.pop("flat", None)
        super().__setstate__(state)
        for group in self.param_groups:
            for key, value in self.defaults.items():
                group.setdefault(key, value)
        if "_flat" not in self.__dict__:  # unpickled or deep-copied, not load_state_dict
            self._flat = bool(flat)
            self._flat_groups = [FlatGroup.build(g) for g in self.param_groups] if flat else []
            for flat_group in self._flat_groups:
                flat_group.adopt_state(self.state)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load like torch.optim, after checking every state tensor against its parameter.

        A state dict that does not fit (another model's checkpoint, a corrupted file) raises
        ``ValueError`` naming the group, the parameter's index, the key and the shapes, and
        the optimizer keeps its current state. In flat mode the loaded state moves into the
        buffers.
        """
        from torchopt_edu.optim._checkpoint import check_state_dict, restride_state

        check_state_dict(self, state_dict)
        super().load_state_dict(state_dict)
        restride_state(self)
        for flat_group in self._flat_groups:
            flat_group.adopt_state(self.state)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a param group (as torch.optim does); in flat mode it gets buffers of its own."""
        from torchopt_edu.optim._flat import FlatGroup

        if not isinstance(param_group, dict):
            raise TypeError(f"param_group must be a dict, but got {torch.typename(param_group)}")
        param_group = normalise_flags(param_group)
        if self._flat:
            params = param_group["params"]
            params = [params] if isinstance(params, Tensor) else list(params)
            FlatGroup.check(params)
            param_group = {**param_group, "params": params}
        merged = {**self.defaults, **param_group}
        if merged.get("fused"):
            self._check_fusable(merged)
        super().add_param_group(param_group)
        if self._flat:
            self._flat_groups.append(FlatGroup.build(self.param_groups[-1]))

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Reset gradients as torch.optim does; flat mode zeroes each buffer with one memset."""
        if self._flat and not set_to_none and all(f.grads_in_buffer() for f in self._flat_groups):
            for flat_group in self._flat_groups:
                flat_group.zero_grad_buffers()
            return
        super().zero_grad(set_to_none=set_to_none)

    # -- one step -------------------------------------------------------------------------

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """Perform one optimisation step; ``closure`` re-evaluates the model, returns the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        plans = [self._plan(index, group) for index, group in enumerate(self.param_groups)]
        for index, plan in enumerate(plans):
            if self._flat:
                flat_group = self._flat_groups[index]
                if flat_group.ready_for_fast_step(self, plan.group, plan.grads_in_buffer):
                    hyper = self._hyper(plan.group)
                    for bucket in flat_group.buckets():
                        self._run(plan.group, bucket, hyper)
                    flat_group.after_fast_step()
                    continue
            self._step_planned(plan)
        return loss

    def _plan(self, index: int, group: dict[str, Any]) -> _Plan:
        """Gather the group's parameters with gradients; raise if the step must be refused."""
        if self._flat:
            flat_group = self._flat_groups[index]
            flat_group.check_in_buffer()
            buffered = flat_group.buffered_grads()
            if buffered is not None:  # dense gradients, all present: nothing else to refuse
                self._check_grads(group, buffered[1])
                if group.get("fused"):
                    self._check_fusable(group)
                return _Plan(group, *buffered, grads_in_buffer=True)
        params = group["params"]
        grads = list(map(_GRAD, params))
        if any(map(operator.is_, grads, repeat(None))):  # C-level: this runs every step
            params = [p for p, grad in zip(params, grads, strict=True) if grad is not None]
            grads = list(map(_GRAD, params))
        if not self.supports_sparse and any(map(_IS_SPARSE, grads)):
            shape = next(tuple(p.shape) for p in params if p.grad.is_sparse)
            raise RuntimeError(
                f"{type(self).__name__} does not support sparse gradients (param group "
                f"{index}, parameter of shape {shape}); use SGD or Adagrad"
            )
        self._check_grads(group, grads)
        if group.get("fused") and params:
            self._check_fusable(group)
            for p in params:
                if not fused_supported(p) or p.grad.is_sparse:
                    raise RuntimeError(
                        "`fused=True` requires all the params to be floating point Tensors of "
                        "supported devices (CPU, CUDA, MPS, XPU) with dense gradients, got a "
                        f"{'sparse gradient for a ' if p.grad.is_sparse else ''}{p.dtype} "
                        f"parameter on {p.device} in param group {index}"
                    )
        return _Plan(group, params, grads)

    def _check_fusable(self, group: dict[str, Any]) -> None:
        reason = self._fuse_blocker(group)
        if reason is not None:
            raise RuntimeError(f"{type(self).__name__}: fused=True is not available: {reason}")

    def _step_planned(self, plan: _Plan) -> None:
        if not plan.params:
            return
        group, optimizer_state = plan.group, self.state
        states: list[dict[str, Any]] = []
        fresh: list[bool] = []
        for p in plan.params:
            state = optimizer_state.get(p)
            is_fresh = not state
            if is_fresh:
                state = {}
                self._init_state(p, state, group)
                if state:  # optimizers without state (SGD, momentum 0) keep no entry
                    optimizer_state[p] = state
            states.append(state)
            fresh.append(is_fresh)
        hyper = self._hyper(group)
        for bucket in make_buckets(plan.params, plan.grads, states, fresh):
            self._run(group, bucket, hyper)

    def _choose_impl(self, group: dict[str, Any], bucket: Bucket) -> Impl:
        if group.get("fused"):
            return "fused"
        if bucket.has_sparse_grad or group.get("foreach") is False:
            return "loop"
        if (
            group.get("foreach") is None
            and "fused" in self.paths
            and fused_supported(bucket.params[0])
            and self._fuse_blocker(group) is None
        ):
            return "fused"
        return "foreach"

    def _run(self, group: dict[str, Any], bucket: Bucket, hyper: Hyper) -> None:
        """Count the step, then update one bucket; take the count back if the update fails."""
        impl = self._choose_impl(group, bucket)
        steps = bucket.steps if "step" in bucket.states[0] else []
        if impl == "fused" and bucket.device.type != "cpu":
            _move_steps_to(bucket, bucket.device)  # e.g. state loaded from a CPU checkpoint
            steps = bucket.steps if steps else []
        if steps:
            torch._foreach_add_(steps, 1)
        try:
            self._dispatch(bucket, hyper, impl)
        except BaseException:
            if steps:
                torch._foreach_sub_(steps, 1)
            raise

    def _dispatch(self, bucket: Bucket, hyper: Hyper, impl: Impl) -> None:
        """Send tensors each to a path that is exact for them, then run the paths.

        torch's fused kernels walk a parameter, its gradient and its state as if they had one
        memory layout; a hand-assigned gradient with other strides (a transposed or
        channels-last parameter) would be read in the wrong order, so such tensors take the
        multi-tensor path, which follows each tensor's strides.

        torch's fused CPU kernels open a parallel region for every tensor, however small.
        For a 1000-element tensor the fork and join cost more than the arithmetic, and on a
        busy machine a join that waits for a descheduled thread costs milliseconds. Below
        ``PARALLEL_GRAIN`` elements we run them on one thread, as torch's own elementwise
        ops do; the numbers are the same either way (elementwise math, no reductions).
        """
        update = self.paths[impl]
        if impl != "fused":
            update(bucket, hyper)
            return
        # C-level maps: this runs every step over thousands of tensors, nearly all contiguous
        if not (
            all(map(Tensor.is_contiguous, bucket.params))
            and all(map(Tensor.is_contiguous, bucket.grads))
        ) and list(map(Tensor.stride, bucket.grads)) != list(map(Tensor.stride, bucket.params)):
            same, other = bucket.split(
                [g.stride() == p.stride() for g, p in zip(bucket.grads, bucket.params, strict=True)]
            )
            self.paths["foreach"](other, hyper)
            if not same.params:
                return
            bucket = same
        if bucket.device.type != "cpu" or torch.get_num_threads() == 1:
            update(bucket, hyper)
            return
        small, large = bucket.split([p.numel() < PARALLEL_GRAIN for p in bucket.params])
        if large.params:
            update(large, hyper)
        if small.params:
            with single_intra_op_thread():
                update(small, hyper)


def _move_steps_to(bucket: Bucket, device: torch.device) -> None:
    """Fused GPU kernels read ``state["step"]`` on the device; move counters that are not."""
    for state in bucket.states:
        step = state.get("step")
        if step is not None and step.device != device:
            state["step"] = step.to(device)
    bucket._views.pop("step", None)
