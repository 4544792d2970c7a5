"""argparse ``type=`` converters shared by every command.

Each raises ``argparse.ArgumentTypeError``, which argparse turns into ``error: argument
--NAME: <message>`` and exit status 2, so a bad value is reported with its argument's name
before any work starts.
"""

from __future__ import annotations

import argparse
import math

import torch

from torchopt_edu.optim._checks import check_seed


def _parse(kind: type[int] | type[float], text: str) -> int | float:
    try:
        return kind(text)
    except ValueError:
        expected = "an integer" if kind is int else "a number"
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None


def positive_int(text: str) -> int:
    """An integer >= 1."""
    value = int(_parse(int, text))
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text}")
    return value


def non_negative_int(text: str) -> int:
    """An integer >= 0."""
    value = int(_parse(int, text))
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text}")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0."""
    value = float(_parse(float, text))
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def non_negative_float(text: str) -> float:
    """A finite number >= 0."""
    value = float(_parse(float, text))
    if not 0 <= value < math.inf:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def fraction(text: str) -> float:
    """A number in (0, 1]."""
    value = float(_parse(float, text))
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def seed(text: str) -> int:
    """A seed in ``[0, MAX_SEED]`` (the package's one limit, ``optim._checks.MAX_SEED``)."""
    try:
        return check_seed(int(_parse(int, text)))
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error).removeprefix("seed ")) from None


def device(text: str) -> torch.device:
    """A device this machine can run on: ``auto`` (CUDA if available), ``cpu``, ``cuda[:N]``."""
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(text)
    except RuntimeError:
        chosen = None
    if chosen is None or chosen.type not in ("cpu", "cuda"):
        raise argparse.ArgumentTypeError(f"expected auto, cpu, cuda or cuda:N, got {text!r}")
    if chosen.type == "cuda":
        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(f"{text}: CUDA is not available on this machine")
        if chosen.index is not None and chosen.index >= torch.cuda.device_count():
            raise argparse.ArgumentTypeError(
                f"{text}: this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
    return chosen


def names(text: str) -> list[str]:
    """One item of a name list: ``adam,sgd`` and ``adam sgd`` both work (``nargs="+"``)."""
    items = [name.strip() for name in text.split(",") if name.strip()]
    if not items:
        raise argparse.ArgumentTypeError(f"expected a name, got {text!r}")
    return items
