"""Small real data sets that ship with a package, as tensors (no download)."""

from __future__ import annotations

import torch
from torch import Tensor


def load_digits_tensors() -> tuple[Tensor, Tensor]:
    """scikit-learn's 1,797 handwritten 8x8 digits: ``(pixels, labels)``.

    ``pixels`` is ``[1797, 64]`` float32 scaled from 0..16 to [0, 1]; ``labels`` is ``[1797]``
    int64 in 0..9. Needs the ``data`` extra (scikit-learn), which ships the images.
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as error:
        raise ImportError(
            "the digits data set needs scikit-learn: pip install 'torchopt-edu[data]'"
        ) from error
    digits = load_digits()
    pixels = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    return pixels, torch.tensor(digits.target, dtype=torch.long)
