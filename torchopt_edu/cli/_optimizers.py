"""Optimizer names on the command line: the package's one resolver as an argparse type.

Every command accepts the names of :func:`torchopt_edu.optim.resolve_optimizer`, except the
classes its training cannot step.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch

from torchopt_edu.optim import display_name, resolve_optimizer, valid_names

#: torch.optim classes that no command's training can step, and why.
UNSUITABLE = {
    "SparseAdam": "steps sparse gradients only",
    "Muon": "steps 2-D parameters only",
}
#: torch.optim classes whose ``step`` needs a closure that re-evaluates the loss.
NEEDS_CLOSURE = ("LBFGS",)


def usable_names(*, closure: bool) -> str:
    """The names :func:`optimizer_name` accepts, for ``--help``."""
    return valid_names(exclude=(*UNSUITABLE, *(() if closure else NEEDS_CLOSURE)))


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
