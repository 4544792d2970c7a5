"""The one optimizer-name resolver of the command line.

Every command accepts the same names, case-insensitively: this package's optimizers by their
key in :data:`torchopt_edu.optim.OPTIMIZERS` (``adam``, ``AdamW``) and torch's as
``torch.optim.<Name>`` (``torch.optim.Adam``, ``torch.optim.adamw``; ``torch.adam`` is
accepted too). New optimizers of either library appear without a change here.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
from torch.optim import Optimizer

from torchopt_edu.optim import OPTIMIZERS

TORCH_PREFIX = "torch.optim."

#: torch.optim classes that no command's training can step, and why.
UNSUITABLE = {
    "SparseAdam": "steps sparse gradients only",
    "Muon": "steps 2-D parameters only",
}
#: torch.optim classes whose ``step`` needs a closure that re-evaluates the loss.
NEEDS_CLOSURE = ("LBFGS",)


def _torch_optimizers() -> dict[str, type[Optimizer]]:
    """torch.optim's optimizer classes by lower-case name."""
    return {
        name.lower(): cls for name, cls in vars(torch.optim).items()
        if isinstance(cls, type) and issubclass(cls, Optimizer) and cls is not Optimizer
    }


def valid_names() -> str:
    """The accepted names, for error and help messages."""
    ours = ", ".join(OPTIMIZERS)
    theirs = ", ".join(sorted(cls.__name__ for cls in _torch_optimizers().values()))
    return f"{ours}, or torch.optim.<Name> with <Name> one of {theirs}"


def resolve_optimizer(name: str) -> type[Optimizer]:
    """The optimizer class called ``name`` (ours by key, torch's as ``torch.optim.<Name>``).

    Case-insensitive. Raises ``ValueError`` naming ``name`` and listing the valid names.
    """
    key = name.strip().lower()
    ours = {our_name.lower(): cls for our_name, cls in OPTIMIZERS.items()}
    if key in ours:
        return ours[key]
    for prefix in (TORCH_PREFIX, "torch."):
        if key.startswith(prefix):
            theirs = _torch_optimizers().get(key.removeprefix(prefix))
            if theirs is not None:
                return theirs
            break
    raise ValueError(f"unknown optimizer {name!r}; choose from {valid_names()}")


def display_name(cls: type[Optimizer]) -> str:
    """How tables, files and the tuning library name ``cls``: ``adam`` or ``torch.optim.Adam``."""
    for name, ours in OPTIMIZERS.items():
        if ours is cls:
            return name
    return TORCH_PREFIX + cls.__name__


def optimizer_name(*, closure: bool) -> Callable[[str], str]:
    """argparse ``type=``: a name the command can train with, as :func:`display_name` spells it.

    ``closure`` says whether the command's training passes a closure to ``step`` (as L-BFGS
    needs); every name of :func:`resolve_optimizer` is accepted except the classes that cannot
    step a model's dense parameters (:data:`UNSUITABLE`).
    """

    def convert(text: str) -> str:
        try:
            cls = resolve_optimizer(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None
        name = cls.__name__
        if name in UNSUITABLE and cls is getattr(torch.optim, name, None):
            raise argparse.ArgumentTypeError(f"{display_name(cls)} {UNSUITABLE[name]}")
        if not closure and name in NEEDS_CLOSURE and cls is getattr(torch.optim, name, None):
            raise argparse.ArgumentTypeError(
                f"{display_name(cls)} needs a closure in step(), which this command's "
                "training loop does not pass"
            )
        return display_name(cls)

    return convert
