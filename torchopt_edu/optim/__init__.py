"""torch.optim-compatible optimizers: readable reference code with fast default paths.

Every class is a ``torch.optim.Optimizer`` with torch.optim's constructor signature, defaults
and state keys, so ``torchopt_edu.optim.Adam(model.parameters())`` replaces
``torch.optim.Adam(model.parameters())`` unchanged.
"""

from torch.optim import Optimizer

from torchopt_edu.optim._names import display_name, resolve_optimizer, valid_names
from torchopt_edu.optim.adagrad import Adagrad
from torchopt_edu.optim.adam import Adam, AdamW
from torchopt_edu.optim.hypergradient import SGDHD, AdamHD
from torchopt_edu.optim.lion import Lion
from torchopt_edu.optim.muon import Muon
from torchopt_edu.optim.prodigy import Prodigy
from torchopt_edu.optim.rmsprop import RMSprop
from torchopt_edu.optim.schedulefree import AdamWScheduleFree, SGDScheduleFree, evaluation_point
from torchopt_edu.optim.sgd import SGD, Momentum
from torchopt_edu.optim.yogi import Yogi

__all__ = [
    "SGD",
    "Momentum",
    "Adagrad",
    "RMSprop",
    "Adam",
    "AdamW",
    "Yogi",
    "Lion",
    "SGDHD",
    "AdamHD",
    "Muon",
    "SGDScheduleFree",
    "AdamWScheduleFree",
    "evaluation_point",
    "Prodigy",
    "OPTIMIZERS",
    "resolve_optimizer",
    "display_name",
    "valid_names",
]

OPTIMIZERS: dict[str, type[Optimizer]] = {
    "sgd": SGD,
    "momentum": Momentum,
    "adagrad": Adagrad,
    "rmsprop": RMSprop,
    "adam": Adam,
    "adamw": AdamW,
    "yogi": Yogi,
    "lion": Lion,
    "sgdschedulefree": SGDScheduleFree,
    "adamwschedulefree": AdamWScheduleFree,
    "prodigy": Prodigy,
    "sgdhd": SGDHD,
    "adamhd": AdamHD,
    "muon": Muon,
}
