"""A workload: data, a model, a loss, a validation metric, a target and a step budget.

A workload is one small class. Subclass :class:`Workload`, set the class attributes and write four
methods; the protocol (:func:`~torchopt_edu.benchmark.run_trial`) does the rest::

    class Iris(Workload):
        name = "iris"
        metric = "validation accuracy"
        target = 0.95            # reached when the metric is >= target
        max_steps = 300          # a trial that has not reached it by then misses
        eval_every = 10          # evaluate (and check the target) every 10 steps
        batch_size = 32          # rows per step (None: the whole training set)

        def load_data(self):     # (train, valid), each a tuple of tensors with equal first dim
            ...
        def make_model(self):
            return nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3))
        def loss(self, model, batch):
            inputs, labels = batch
            return F.cross_entropy(model(inputs), labels)
        def validate(self, model, valid):
            return accuracy(model, valid)

A metric where lower is better (a validation loss) sets ``higher_is_better = False``. Data that is
not rows of tensors (a graph) overrides :meth:`Workload.sample_batch`.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from torchopt_edu.optim._checks import check_int


class Workload(ABC):
    """One benchmark problem: reach ``target`` on the validation ``metric`` within ``max_steps``.

    Class attributes (checked when an instance is made):

    - ``name``: how tables and the command line call it;
    - ``metric``: what :meth:`validate` returns, in words;
    - ``target``: the value to reach; ``higher_is_better`` says in which direction;
    - ``max_steps``: the step budget; ``eval_every``: steps between validations;
    - ``batch_size``: rows per training step, ``None`` for full batches.

    The data is loaded once per instance (:attr:`data`) and shared by every trial.
    """

    name: ClassVar[str]
    metric: ClassVar[str]
    target: ClassVar[float]
    higher_is_better: ClassVar[bool] = True
    max_steps: ClassVar[int]
    eval_every: ClassVar[int]
    batch_size: ClassVar[int | None] = None

    def __init__(self) -> None:
        for attribute in ("name", "metric", "target", "max_steps", "eval_every"):
            if not hasattr(self, attribute):
                raise TypeError(f"workload {type(self).__name__} does not set {attribute!r}")
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"a workload's name must be a non-empty string, got {self.name!r}")
        if not isinstance(self.target, (int, float)) or not math.isfinite(self.target):
            raise ValueError(f"workload {self.name!r}: target must be finite, got {self.target!r}")
        check_int(f"workload {self.name!r}: max_steps", self.max_steps, 1)
        check_int(f"workload {self.name!r}: eval_every", self.eval_every, 1)
        if self.batch_size is not None:
            check_int(f"workload {self.name!r}: batch_size", self.batch_size, 1)
        self._data: tuple[Any, Any] | None = None

    @property
    def data(self) -> tuple[Any, Any]:
        """``(train, valid)`` from :meth:`load_data`, loaded on first use."""
        if self._data is None:
            self._data = self.load_data()
        return self._data

    @abstractmethod
    def load_data(self) -> tuple[Any, Any]:
        """``(train, valid)``: by default each a tuple of tensors sharing their first dimension."""

    @abstractmethod
    def make_model(self) -> nn.Module:
        """A freshly initialised model (the protocol seeds torch's generator before calling)."""

    @abstractmethod
    def loss(self, model: nn.Module, batch: Any) -> Tensor:
        """The training loss of ``model`` on ``batch`` (a scalar to call ``backward()`` on)."""

    @abstractmethod
    def validate(self, model: nn.Module, valid: Any) -> float:
        """The validation metric of ``model`` (called in eval mode, without gradients)."""

    def sample_batch(self, train: Any, generator: torch.Generator) -> Any:
        """The next training batch: ``batch_size`` rows drawn uniformly with replacement.

        ``train`` is a tuple of tensors; with ``batch_size = None`` the whole tuple is the batch.
        Override for other data (a graph: the whole graph every step).
        """
        if self.batch_size is None:
            return train
        rows = torch.randint(len(train[0]), (self.batch_size,), generator=generator)
        return tuple(tensor[rows] for tensor in train)

    def reached(self, value: float) -> bool:
        """Whether a validation ``value`` meets the target (``>=`` or ``<=`` by direction)."""
        return value >= self.target if self.higher_is_better else value <= self.target

    def __repr__(self) -> str:
        direction = ">=" if self.higher_is_better else "<="
        return (
            f"{type(self).__name__}({self.metric} {direction} {self.target} within "
            f"{self.max_steps} steps, validated every {self.eval_every})"
        )
