"""Flat-buffer mode (``flat=True``): one contiguous buffer per device and dtype.

The parameters, gradients and state of each param group's device/dtype live in a few
contiguous buffers (the parameters become views into them), so a step over thousands of small
tensors runs one kernel over one tensor and costs as much as a step over one large tensor.

It gives the same numbers as the normal mode: whenever a parameter has no dense gradient, or
the parameters' states have different ages, that step takes the per-tensor path over the same
views. Call ``zero_grad(set_to_none=False)`` to keep the gradients in the buffer between steps
(one memset); after ``set_to_none=True`` (torch's default) new gradients are copied into the
buffer at the next step.

When it loses: flat mode is not free in backward. Autograd adds each new gradient into the
buffer in place and frees it (torch.optim keeps the fresh tensor as ``.grad``), and glibc hands
freed megabyte-sized gradients back to the system, so they are page-faulted in again. On a
3.2M-parameter transformer (54 tensors) forward plus backward is 3 to 5% slower (about 1% with
``MALLOC_MMAP_THRESHOLD_``/``MALLOC_TRIM_THRESHOLD_`` raised), more than the step saves. Flat
mode pays off on thousands of small tensors, not on tens of large ones
(``torchopt-edu bench-e2e``).

Parameters that share memory (views of one tensor, or the same tensor listed twice) cannot
each own a slice of a buffer, so they are refused when the optimizer is built.
"""

from __future__ import annotations

import operator
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from torchopt_edu.optim._base import Bucket

if TYPE_CHECKING:
    from torchopt_edu.optim._base import EduOptimizer

#: The attribute flat mode sets on each parameter it makes a slice of a buffer: the slice's
#: address. Parameters that share memory because they are such slices (of this optimizer's
#: buffer or of one that is gone) may move to a new buffer; a parameter whose address has
#: changed since (``.data`` reassigned, tied to another by a user) is not one.
SLICE_ADDRESS = "_torchopt_edu_flat_slice_address"


def _is_flat_slice(param: Tensor) -> bool:
    return getattr(param, SLICE_ADDRESS, None) == param.data_ptr()


_MUTATORS = (
    "__setitem__",
    "__delitem__",
    "__ior__",
    "clear",
    "pop",
    "popitem",
    "setdefault",
    "update",
)


def _noting_changes(cls: type) -> type:
    """Class decorator: every method of ``dict`` that changes the entries first notes it."""

    def noting(method: Callable[..., Any]) -> Callable[..., Any]:
        def changed(self: Any, *args: Any, **kwargs: Any) -> Any:
            self.note_change()
            return method(self, *args, **kwargs)

        return changed

    for name in _MUTATORS:
        setattr(cls, name, noting(getattr(dict, name)))
    return cls


@_noting_changes
class WatchedStates(defaultdict):  # type: ignore[type-arg]
    """``optimizer.state`` in flat mode: notes (``changed``) any change to which state a
    parameter has, and to the entries of a packed parameter's state (a tensor replaced, a key
    or a parameter deleted, all cleared), so that the next step packs the buffers again from
    what the user put in place. Changing a state tensor in place needs nothing: it is a view
    of the buffer. The optimizer's own writes happen inside ``EduOptimizer.step``, whose end
    clears the mark; one made after it (Prodigy's step counts) goes past the watch."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.changed = False

    def note_change(self) -> None:
        """Mark the packing stale."""
        self.changed = True

    def __reduce__(self) -> tuple[Any, ...]:
        # pickled and copied as the plain defaultdict torch.optim keeps: a copy's packing is
        # its own, and its first flat step watches the copy again
        return defaultdict, (self.default_factory,), None, None, iter(self.items())


@_noting_changes
class WatchedState(dict):  # type: ignore[type-arg]
    """One packed parameter's state; a change to it is noted on the mapping that holds it."""

    def __init__(self, entries: dict[str, Any], owner: WatchedStates) -> None:
        super().__init__(entries)
        self.owner = owner

    def note_change(self) -> None:
        """Mark the owner's packing stale."""
        self.owner.note_change()

    def __reduce__(self) -> tuple[Any, ...]:
        # pickled and copied as a plain dict (see WatchedStates.__reduce__)
        return dict, (dict(self),)


@dataclass
class FlatSlab:
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


class FlatGroup:
    """Flat buffers for one param group (one slab per device and dtype)."""

    def __init__(self, slabs: list[FlatSlab]) -> None:
        self.slabs = slabs

    @staticmethod
    def check(params: Iterable[Tensor]) -> None:
        """Raise ``ValueError`` for parameters that cannot each own a slice of a buffer.

        Sparse, complex and integer parameters are refused, and so are parameters that share
        memory: the same tensor twice, or two views of one tensor (the buffer would hold two
        copies of the shared numbers, and the step would update them differently), or memory
        shared between processes (Hogwild workers would stop seeing each other's updates).
        """
        params = list(params)
        for i, p in enumerate(params):
            if p.is_sparse or p.is_complex() or not p.is_floating_point():
                raise ValueError(
                    f"flat=True supports dense real floating-point parameters, got {p.dtype}"
                    f"{' (sparse)' if p.is_sparse else ''} of shape {tuple(p.shape)}"
                )
            if p.is_shared():
                raise ValueError(
                    f"flat=True: parameter {i} (shape {tuple(p.shape)}) is in shared memory; "
                    "flat mode would copy it into a private buffer and the processes sharing it "
                    "would stop seeing each other's updates (use flat=False)"
                )
        owners: dict[int, int] = {}
        for i, p in enumerate(params):
            if p.numel() == 0:
                continue
            storage = p.untyped_storage().data_ptr()
            first = owners.setdefault(storage, i)
            if first == i or (_is_flat_slice(p) and _is_flat_slice(params[first])):
                continue  # a parameter already in a flat buffer moves to the new one
            other = params[first]
            how = "is listed twice" if other is p else f"shares memory with parameter {first}"
            raise ValueError(
                f"flat=True: parameter {i} (shape {tuple(p.shape)}) {how}; flat mode gives "
                "every parameter its own slice of a new buffer, so parameters that share memory "
                "would stop sharing it (remove the duplicate, or use flat=False)"
            )

    @classmethod
    def build(cls, group: dict[str, Any]) -> FlatGroup:
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
                slab = FlatSlab(params, offsets, param_buffer, grad_buffer, [], [])
                for i, p in enumerate(params):
                    view = slab.view(param_buffer, i)
                    view.copy_(p)
                    p.data = view
                    setattr(p, SLICE_ADDRESS, view.data_ptr())
                    slab.param_pointers.append(view.data_ptr())
                    slab.grad_views.append(slab.view(grad_buffer, i))
                slabs.append(slab)
        return cls(slabs)

    def buffered_grads(self) -> tuple[list[Tensor], list[Tensor]] | None:
        """The parameters and their gradients, when every gradient is its view of the buffer.

        ``None`` otherwise (a gradient was set to None, replaced, or never moved in).
        """
        params: list[Tensor] = []
        grads: list[Tensor] = []
        for slab in self.slabs:
            slab_grads = list(map(operator.attrgetter("grad"), slab.params))
            if not all(map(operator.is_, slab_grads, slab.grad_views)):
                return None
            params += slab.params
            grads += slab_grads
        return params, grads

    def grads_in_buffer(self) -> bool:
        """Whether every parameter's gradient is its view of the gradient buffer."""
        return self.buffered_grads() is not None

    def zero_grad_buffers(self) -> None:
        """Zero every gradient buffer in place."""
        for slab in self.slabs:
            slab.grad_buffer.zero_()

    def check_in_buffer(self) -> None:
        """Raise ``RuntimeError`` if a parameter no longer lives in its buffer."""
        for slab in self.slabs:
            # list comprehensions and C-level comparisons: this runs every step over
            # thousands of parameters, and a Python-level loop body would cost more than
            # the update itself
            if [p.data_ptr() for p in slab.params] != slab.param_pointers:
                raise RuntimeError(
                    "flat=True: a parameter no longer lives in the optimizer's buffer (moved "
                    "by .to(), or .data reassigned); create the optimizer after moving the model"
                )

    def _move_grads_in(self) -> bool:
        """Copy gradients that are not yet views into the buffer; False if one is missing."""
        for slab in self.slabs:
            grads = [p.grad for p in slab.params]
            if all(map(operator.is_, grads, slab.grad_views)):
                continue
            moving = [
                (p, grad, view)
                for p, grad, view in zip(slab.params, grads, slab.grad_views, strict=True)
                if grad is not view
            ]
            if any(grad is None or grad.is_sparse for _, grad, _ in moving):
                return False
            # a gradient may be another parameter's slot (b.grad = a.grad, or two swapped):
            # read every such one before the first copy writes into the buffer
            buffer = slab.grad_buffer.untyped_storage().data_ptr()
            sources = [
                grad.clone()
                # torch's zero gradients (torch.sgn's) have no memory, so none in the buffer
                if not grad._is_zerotensor() and grad.untyped_storage().data_ptr() == buffer
                else grad
                for _, grad, _ in moving
            ]
            for (p, _, view), grad in zip(moving, sources, strict=True):
                view.copy_(grad)
                p.grad = view
        return True

    def ready_for_fast_step(
        self, optimizer: EduOptimizer, group: dict[str, Any], grads_in_buffer: bool
    ) -> bool:
        """Move gradients into the buffers; return False when the per-tensor path must run.

        The fast path needs every parameter to have a dense gradient and every parameter's
        state to have the same age (all created together, all stepped together).
        ``grads_in_buffer`` says the caller has already seen every gradient in its view.
        """
        if not grads_in_buffer and not self._move_grads_in():
            return False
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

    @staticmethod
    def unpack(slab: FlatSlab) -> None:
        """Forget ``slab``'s packed state: the next step packs it again from the parameters'."""
        slab.flat_state = {}
        slab.step_buffer = None

    def adopt_state(self, state: dict[Tensor, dict[str, Any]]) -> None:
        """Pack the per-parameter state tensors into flat buffers and point the state at views.

        A slab some of whose parameters have no state yet is left unpacked (its old packing,
        if any, is dropped): the per-tensor path runs until every parameter has state.
        """
        with torch.no_grad():
            for slab in self.slabs:
                self.unpack(slab)
                if not all(state.get(p) for p in slab.params):
                    continue
                if isinstance(state, WatchedStates):
                    for p in slab.params:
                        state[p] = WatchedState(state[p], state)
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
                        view, value = slab.view(buffer, i), state[p][key]
                        if value.numel() == p.numel():  # kept in its own shape (Prodigy's s)
                            view = view.view(value.shape)
                        elif value.dim() == 0:  # a constant for a flat state (Prodigy's p0
                            view = view.view(-1)  # of an all-zero parameter) fills it, flat
                        view.copy_(value)
                        state[p][key] = view
                    slab.flat_state[key] = buffer
