"""Checking an optimizer checkpoint before it is loaded.

torch.optim's ``load_state_dict`` checks only that the groups have as many parameters as
before. A checkpoint of another model with the same number of tensors then loads silently,
and a fused kernel that trusts the state's shapes writes past the end of a tensor (the
process dies) or updates the right number of elements in the wrong shape. Here every state
entry is compared with what the optimizer itself would create for that parameter, and a
mismatch raises ``ValueError`` naming the group, the parameter's index in it, the key and
both shapes, before anything is changed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from torchopt_edu.optim._checks import (
    check_betas,
    check_flag,
    check_optional_flag,
    is_real,
    normalise_flags,
)

if TYPE_CHECKING:
    from torchopt_edu.optim._base import EduOptimizer


def check_state_dict(optimizer: EduOptimizer, state_dict: Any) -> None:
    """Raise ``ValueError``/``TypeError`` unless ``state_dict`` fits ``optimizer``'s parameters."""
    name = type(optimizer).__name__
    if not isinstance(state_dict, Mapping) or not {"state", "param_groups"} <= state_dict.keys():
        raise ValueError(
            f"{name}.load_state_dict expects a dict with keys 'state' and 'param_groups' "
            f"(what state_dict() returns), got {_describe(state_dict)}"
        )
    saved_groups, saved_state = state_dict["param_groups"], state_dict["state"]
    if not isinstance(saved_groups, (list, tuple)) or not isinstance(saved_state, Mapping):
        raise ValueError(
            f"{name}.load_state_dict: 'param_groups' must be a list and 'state' a dict, got "
            f"{_describe(saved_groups)} and {_describe(saved_state)}"
        )
    if len(saved_groups) != len(optimizer.param_groups):
        raise ValueError(
            "loaded state dict has a different number of parameter groups: "
            f"{len(saved_groups)} in the checkpoint, {len(optimizer.param_groups)} here"
        )
    for g, (group, saved_group) in enumerate(
        zip(optimizer.param_groups, saved_groups, strict=True)
    ):
        if not isinstance(saved_group, Mapping) or not isinstance(
            saved_group.get("params"), (list, tuple)
        ):
            raise ValueError(f"param group {g} of the checkpoint has no list 'params'")
        if len(saved_group["params"]) != len(group["params"]):
            raise ValueError(
                "loaded state dict contains a parameter group that doesn't match the size of "
                f"optimizer's group: group {g} has {len(saved_group['params'])} parameters in "
                f"the checkpoint, {len(group['params'])} here"
            )
        merged = {**group, **{k: v for k, v in saved_group.items() if k != "params"}}
        try:
            _check_options(optimizer.defaults, merged)
            optimizer.check_options(normalise_flags(merged))
            optimizer._hyper(normalise_flags(merged))
        except (TypeError, ValueError, KeyError) as error:
            raise ValueError(
                f"param group {g} of the checkpoint has a bad option: {error}"
            ) from None
        for index, (param, key) in enumerate(
            zip(group["params"], saved_group["params"], strict=True)
        ):
            if key not in saved_state:  # no state yet: it is created on the first step
                continue
            state = saved_state[key]
            if not isinstance(state, Mapping):
                raise ValueError(
                    f"state of param group {g}, parameter {index} must be a dict, got "
                    f"{_describe(state)}"
                )
            if state:
                _check_param_state(
                    optimizer, merged, param, state, f"param group {g}, parameter {index}"
                )


def _check_options(defaults: dict[str, Any], group: dict[str, Any]) -> None:
    """Each option the optimizer knows has a value of its kind: a number, a flag, a pair."""
    for key, default in defaults.items():
        value = group.get(key)
        if key == "betas":
            check_betas(value)
        elif key in ("foreach", "fused"):
            check_optional_flag(key, value)
        elif isinstance(default, bool):
            check_flag(key, value)
        elif is_real(default) or key == "lr":
            if not (is_real(value) or (isinstance(value, Tensor) and value.numel() == 1)):
                raise TypeError(f"{key} must be a number, got {_describe(value)}")


def _check_param_state(
    optimizer: EduOptimizer,
    group: dict[str, Any],
    param: Tensor,
    state: Mapping[str, Any],
    where: str,
) -> None:
    expected: dict[str, Any] = {}
    optimizer._init_state(torch.empty_like(param, device="meta"), expected, group)
    for key, template in expected.items():
        if key not in state:
            raise ValueError(
                f"{where}: the checkpoint's state has no {key!r} (it has {sorted(state)}); "
                f"{type(optimizer).__name__} with these options keeps {sorted(expected)}"
            )
        value = state[key]
        if key == "step":
            _check_step(value, where)
        elif isinstance(template, Tensor):
            if not isinstance(value, Tensor):
                raise ValueError(
                    f"{where}: state[{key!r}] must be a tensor, got {_describe(value)}"
                )
            # Most state has the parameter's shape; some (Prodigy's slices) has its own, and
            # keys in the optimizer's ``broadcast_state`` may also be a 0-d constant.
            broadcast = key in optimizer.broadcast_state and value.dim() == 0
            if value.shape != template.shape and not broadcast:
                expected = "the parameter has" if template.shape == param.shape else "expected"
                raise ValueError(
                    f"{where}: state[{key!r}] has shape {tuple(value.shape)} but {expected} "
                    f"shape {tuple(template.shape)} (a checkpoint of another model?)"
                )
            if value.is_complex() != param.is_complex() or not (
                value.is_floating_point() or value.is_complex()
            ):
                raise ValueError(
                    f"{where}: state[{key!r}] has dtype {value.dtype}, which does not fit a "
                    f"{param.dtype} parameter"
                )
        elif not is_real(value):
            raise ValueError(f"{where}: state[{key!r}] must be a number, got {_describe(value)}")
    unknown = sorted(set(state) - set(expected))
    if unknown:
        raise ValueError(
            f"{where}: the checkpoint's state has {unknown}, which {type(optimizer).__name__} "
            f"with these options does not keep (it keeps {sorted(expected)}); a checkpoint "
            "of another optimizer would give wrong numbers here"
        )


def _check_step(value: Any, where: str) -> None:
    if isinstance(value, Tensor):
        if value.numel() != 1 or value.is_complex():
            raise ValueError(
                f"{where}: state['step'] must be a one-element real tensor, got shape "
                f"{tuple(value.shape)} {value.dtype}"
            )
        number = float(value.item())
    elif is_real(value):
        number = float(value)
    else:
        raise ValueError(f"{where}: state['step'] must be a number, got {_describe(value)}")
    if not (math.isfinite(number) and number >= 0 and number == int(number)):
        raise ValueError(f"{where}: state['step'] must be a whole number >= 0, got {number}")


def settle_loaded_state(optimizer: EduOptimizer) -> None:
    """Give each loaded state tensor its parameter's memory layout (a fused kernel needs it),
    and each step count the kind this optimizer keeps.

    A checkpoint saved from a contiguous parameter and loaded for a transposed or
    channels-last one keeps the saved strides; the numbers are copied, not changed. A step
    count saved as a number (older torch, prodigyopt) becomes a tensor where this optimizer's
    kernels read one, and a tensor becomes an ``int`` where it counts in Python.
    """
    with torch.no_grad():
        for group in optimizer.param_groups:
            for param in group["params"]:
                state = optimizer.state.get(param)
                if state and "step" in state:
                    state["step"] = _step_like(optimizer, group, param, state["step"])
        for param, state in optimizer.state.items():
            if not isinstance(param, Tensor):
                continue
            for key, value in state.items():
                if (
                    isinstance(value, Tensor)
                    and key != "step"
                    and value.shape == param.shape
                    and value.stride() != param.stride()
                ):
                    state[key] = torch.empty_like(param, dtype=value.dtype).copy_(value)


def _step_like(
    optimizer: EduOptimizer, group: dict[str, Any], param: Tensor, step: Any
) -> Tensor | int:
    """``step`` as the kind of step count ``optimizer`` creates for ``param``."""
    template: dict[str, Any] = {}
    optimizer._init_state(torch.empty_like(param, device="meta"), template, group)
    if not isinstance(template["step"], Tensor):
        return int(step.item()) if isinstance(step, Tensor) else int(step)
    if isinstance(step, Tensor):
        return step
    return optimizer._new_step(param, group).fill_(step)


def _describe(value: object) -> str:
    if isinstance(value, Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    text = repr(value)
    return f"{type(value).__name__} {text[:60]}{'...' if len(text) > 60 else ''}"
