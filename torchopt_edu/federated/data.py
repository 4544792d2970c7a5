"""The default task: scikit-learn's handwritten digits and a small MLP."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from torchopt_edu.datasets import load_digits_tensors


def load_digits_split(
    test_fraction: float = 0.2, seed: int = 0, device: str | torch.device = "cpu"
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """scikit-learn's 1,797 8x8 digits as ``(x_train, y_train, x_test, y_test)``.

    Pixels (0..16) are scaled to [0, 1] and flattened to 64 features; the test set is a
    stratified ``test_fraction`` of the data chosen by ``seed``. Needs scikit-learn.
    """
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    pixels, labels = load_digits_tensors()  # raises the install hint without scikit-learn
    from sklearn.model_selection import train_test_split

    train, test = train_test_split(
        torch.arange(len(labels)).numpy(),
        test_size=test_fraction,
        random_state=seed,
        stratify=labels.numpy(),
    )
    train, test = torch.as_tensor(train), torch.as_tensor(test)
    return (
        pixels[train].to(device),
        labels[train].to(device),
        pixels[test].to(device),
        labels[test].to(device),
    )


class MLP(nn.Sequential):
    """``in_features -> hidden -> ReLU -> num_classes`` (logits): 2,410 parameters for digits."""

    def __init__(self, in_features: int = 64, hidden: int = 32, num_classes: int = 10) -> None:
        super().__init__(nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))
