"""Multi-task learning with any optimizer: shared-trunk model, loss weighting, gradient aggregation.

Two ways to combine T task losses:

* loss weighting, ``total = weighting(losses); total.backward()``: :class:`FixedWeighting`
  (the source document's ``alpha * L_cls + (1 - alpha) * L_reg``), :class:`UncertaintyWeighting`,
  :class:`DynamicWeightAverage`, :class:`GradNorm`;
* gradient aggregation over the shared parameters, ``MultiTaskOptimizer(optimizer, shared,
  aggregate).step(losses)`` with :func:`pcgrad`, :func:`mgda` (MGDA-UB with
  ``wrt="representation"``), :func:`cagrad` or :func:`mean_gradient`.
"""

from torchopt_edu.multitask.aggregation import (
    Aggregator,
    cagrad,
    cagrad_weights,
    gradient_cosine,
    mean_gradient,
    mgda,
    min_norm_weights,
    pcgrad,
)
from torchopt_edu.multitask.data import DIGITS_TASKS, MultiTaskData, load_digits_tasks
from torchopt_edu.multitask.model import MultiTaskModel, Task, shared_trunk_model
from torchopt_edu.multitask.optimizer import MultiTaskOptimizer, task_gradients
from torchopt_edu.multitask.train import TrainHistory, evaluate, train_multitask
from torchopt_edu.multitask.weighting import (
    DynamicWeightAverage,
    FixedWeighting,
    GradNorm,
    LossWeighting,
    UncertaintyWeighting,
)

__all__ = [
    "DIGITS_TASKS",
    "Aggregator",
    "DynamicWeightAverage",
    "FixedWeighting",
    "GradNorm",
    "LossWeighting",
    "MultiTaskData",
    "MultiTaskModel",
    "MultiTaskOptimizer",
    "Task",
    "TrainHistory",
    "UncertaintyWeighting",
    "cagrad",
    "cagrad_weights",
    "evaluate",
    "gradient_cosine",
    "load_digits_tasks",
    "mean_gradient",
    "mgda",
    "min_norm_weights",
    "pcgrad",
    "shared_trunk_model",
    "task_gradients",
    "train_multitask",
]
