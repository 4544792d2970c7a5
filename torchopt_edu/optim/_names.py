"""The one optimizer-name resolver: every command and the tuning package spell names alike.

This package's optimizers by their key in :data:`torchopt_edu.optim.OPTIMIZERS` (``adam``,
``AdamW``) and torch's as ``torch.optim.<Name>`` (``torch.optim.Adam``, ``torch.optim.adamw``;
``torch.adam`` is accepted too), case-insensitively. New optimizers of either library appear
without a change here.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch.optim import Optimizer

TORCH_PREFIX = "torch.optim."


def _ours() -> dict[str, type[Optimizer]]:
    from torchopt_edu.optim import OPTIMIZERS  # the registry imports this module

    return OPTIMIZERS


def torch_optimizers() -> dict[str, type[Optimizer]]:
    """torch.optim's optimizer classes by lower-case name."""
    return {
        name.lower(): cls
        for name, cls in vars(torch.optim).items()
        if isinstance(cls, type) and issubclass(cls, Optimizer) and cls is not Optimizer
    }


def valid_names(exclude: Iterable[str] = ()) -> str:
    """The accepted names, for error and help messages; ``exclude``: torch.optim class names to
    leave out (those a caller cannot use)."""
    ours = ", ".join(_ours())
    left_out = set(exclude)
    theirs = ", ".join(
        sorted(cls.__name__ for cls in torch_optimizers().values() if cls.__name__ not in left_out)
    )
    return f"{ours}, or torch.optim.<Name> with <Name> one of {theirs}"


def resolve_optimizer(name: str) -> type[Optimizer]:
    """The optimizer class called ``name`` (ours by key, torch's as ``torch.optim.<Name>``).

    Case-insensitive. Raises ``ValueError`` naming ``name`` and listing the valid names.
    """
    if not isinstance(name, str):
        raise ValueError(f"an optimizer name must be a string, got {name!r}")
    key = name.strip().lower()
    ours = {our_name.lower(): cls for our_name, cls in _ours().items()}
    if key in ours:
        return ours[key]
    for prefix in (TORCH_PREFIX, "torch."):
        if key.startswith(prefix):
            theirs = torch_optimizers().get(key.removeprefix(prefix))
            if theirs is not None:
                return theirs
            break
    raise ValueError(f"unknown optimizer {name!r}; choose from {valid_names()}")


def display_name(cls: type[Optimizer]) -> str:
    """How tables, files and the tuning package name ``cls``: ``adam`` or ``torch.optim.Adam``."""
    for name, ours in _ours().items():
        if ours is cls:
            return name
    return TORCH_PREFIX + cls.__name__
