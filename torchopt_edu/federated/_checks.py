"""Type checks shared by the federated modules: NumPy and torch scalars count as numbers."""

from __future__ import annotations

import numbers

import numpy as np


def is_real(value: object) -> bool:
    """Whether ``value`` is a real number (Python, NumPy or any ``numbers.Real``), not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def is_integer(value: object) -> bool:
    """Whether ``value`` is an integer (Python, NumPy or any ``numbers.Integral``), not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))
