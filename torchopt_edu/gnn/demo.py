"""The demo graphs and learning rates of ``torchopt-edu gnn`` (and of notebook 07)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import NamedTuple

from torch.optim import Optimizer
from torch_geometric.data import Data

from torchopt_edu.gnn.data import karate_club, random_regression_graph, sbm_graph
from torchopt_edu.optim import OPTIMIZERS


class Dataset(NamedTuple):
    """A demo graph and the GCN that suits it."""

    make: Callable[[int], Data]
    hidden: tuple[int, ...]
    dropout: float
    description: str


DATASETS: dict[str, Dataset] = {
    "seed": Dataset(
        lambda seed: random_regression_graph(seed=seed),
        (64,),
        0.0,
        "the source document's task: 10 nodes, 20 random edges, target 1",
    ),
    "karate": Dataset(
        lambda seed: karate_club(seed=seed),
        (16,),
        0.5,
        "Zachary's karate club: 34 nodes, 4 classes, 4 labelled nodes",
    ),
    "sbm": Dataset(
        lambda seed: sbm_graph(seed=seed),
        (16,),
        0.5,
        "stochastic block model: 180 nodes, 3 classes, noisy features",
    ),
}

# Learning rates for the demo graphs, from a grid over {0.003, 0.01, ..., 1} on all three
# (lowest validation loss, or train loss on "seed", that is stable on every graph): plain SGD
# needs steps ~30x larger than Adam's, whose step size does not scale with the gradient.
DEMO_LR: dict[str, float] = {
    "sgd": 0.3,
    "momentum": 0.3,
    "adagrad": 0.1,
    "rmsprop": 0.01,
    "adam": 0.01,
    "adamw": 0.01,
    "yogi": 0.03,
    # the frontier optimizers, from the same grid on the SBM graph (30 epochs, test acc >= 0.9)
    "lion": 0.03,
    "sgdhd": 0.3,
    "adamhd": 0.01,
    "muon": 0.1,
    "sgdschedulefree": 1.0,
    "adamwschedulefree": 0.03,
    "prodigy": 1.0,
}


def default_lr(cls: type[Optimizer]) -> float:
    """The demo learning rate of ``cls``: ours and torch's twin share :data:`DEMO_LR`; any
    other class keeps its own default."""
    for name, ours in OPTIMIZERS.items():
        if ours is cls:
            return DEMO_LR[name]
    if cls.__name__.lower() in DEMO_LR:
        return DEMO_LR[cls.__name__.lower()]
    return float(inspect.signature(cls).parameters["lr"].default)
