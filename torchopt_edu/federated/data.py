"""The default task: scikit-learn's handwritten digits and a small MLP."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def load_digits_split(
    test_fraction: float = 0.2, seed: int = 0, device: str | torch.device = "cpu"
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """scikit-learn's 1,797 8x8 digits as ``(x_train, y_train, x_test, y_test)``.

    Pixels (0..16) are scaled to [0, 1] and flattened to 64 features; the test set is a
    stratified ``test_fraction`` of the data chosen by ``seed``. Needs scikit-learn.
    """
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as error:
        raise ImportError(
            "the digits data set needs scikit-learn: pip install torchopt-edu[data]"
        ) from error
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    digits = load_digits()
    x_train, x_test, y_train, y_test = train_test_split(
        digits.data / 16.0,
        digits.target,
        test_size=test_fraction,
        random_state=seed,
        stratify=digits.target,
    )
    return (
        torch.as_tensor(x_train, dtype=torch.float32, device=device),
        torch.as_tensor(y_train, dtype=torch.int64, device=device),
        torch.as_tensor(x_test, dtype=torch.float32, device=device),
        torch.as_tensor(y_test, dtype=torch.int64, device=device),
    )


class MLP(nn.Sequential):
    """``in_features -> hidden -> ReLU -> num_classes`` (logits): 2,410 parameters for digits."""

    def __init__(self, in_features: int = 64, hidden: int = 32, num_classes: int = 10) -> None:
        super().__init__(nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))
