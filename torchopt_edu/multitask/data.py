"""A real two-task data set: scikit-learn's handwritten digits.

Each 8 x 8 image (inputs scaled to [0, 1]) has two targets:

* ``"digit"`` (classification, 10 classes): which digit it shows;
* ``"ink"`` (regression): the image's mean intensity, standardised with the training split's
  mean and standard deviation. How much ink a digit needs depends on its shape, so the two
  tasks share features, and their gradients on a shared trunk sometimes conflict.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from torchopt_edu.datasets import load_digits_tensors
from torchopt_edu.multitask.model import Task

DIGITS_TASKS = (Task("digit", "classification", 10), Task("ink", "regression"))
"""The tasks of :func:`load_digits_tasks`, ready for :func:`shared_trunk_model`."""


@dataclass(frozen=True)
class MultiTaskData:
    """Inputs ``[N, F]`` and one target tensor ``[N]`` per task."""

    inputs: Tensor
    targets: dict[str, Tensor]

    def __post_init__(self) -> None:
        sizes = {name: len(target) for name, target in self.targets.items()}
        if any(size != len(self.inputs) for size in sizes.values()):
            raise ValueError(f"{len(self.inputs)} inputs but target sizes {sizes}")

    def __len__(self) -> int:
        return len(self.inputs)

    def subset(self, index: Tensor) -> MultiTaskData:
        """The rows ``index`` of inputs and of every target."""
        return MultiTaskData(
            self.inputs[index], {name: target[index] for name, target in self.targets.items()}
        )


def load_digits_tasks(
    test_fraction: float = 0.25, seed: int = 0
) -> tuple[MultiTaskData, MultiTaskData]:
    """Split scikit-learn's digits (1797 images) into train and test :class:`MultiTaskData`.

    The split is a permutation drawn with ``torch.Generator().manual_seed(seed)``. Needs the
    ``data`` extra (scikit-learn).
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    inputs, labels = load_digits_tensors()
    ink = inputs.mean(1)
    order = torch.randperm(len(inputs), generator=torch.Generator().manual_seed(seed))
    num_test = round(test_fraction * len(inputs))
    test_index, train_index = order[:num_test], order[num_test:]
    ink_mean, ink_std = ink[train_index].mean(), ink[train_index].std()
    data = MultiTaskData(inputs, {"digit": labels, "ink": (ink - ink_mean) / ink_std})
    return data.subset(train_index), data.subset(test_index)
