"""torchopt-edu: deep-learning optimizers that read like the math and run as fast as torch.optim.

The optimizers and schedules are re-exported here; the applications live in their own
sub-packages (``torchopt_edu.multitask``, ``.tuning``, ``.gnn``, ``.federated``) and are
imported on demand, so ``import torchopt_edu`` does not pull in Optuna or PyTorch Geometric.
"""

from torchopt_edu.lr_scheduler import (
    CyclicLR,
    ExponentialDecay,
    OneCycleLR,
    ReduceLROnPlateau,
    StepDecay,
    WarmupCosine,
)
from torchopt_edu.optim import (
    OPTIMIZERS,
    SGD,
    Adagrad,
    Adam,
    AdamW,
    Momentum,
    RMSprop,
    Yogi,
)

__version__ = "0.1.0"

__all__ = [
    "OPTIMIZERS",
    "SGD",
    "Adagrad",
    "Adam",
    "AdamW",
    "CyclicLR",
    "ExponentialDecay",
    "Momentum",
    "OneCycleLR",
    "RMSprop",
    "ReduceLROnPlateau",
    "StepDecay",
    "WarmupCosine",
    "Yogi",
]
