"""Federated learning with this package's optimizers: FedAvg, FedProx, the FedOpt family,
robust aggregation and SCAFFOLD, under attacks and faults, with exact resume.

A few lines compose a run::

    from functools import partial
    from torchopt_edu.optim import SGD
    from torchopt_edu.federated import (
        MLP, FedAdam, LocalTraining, Simulation, dirichlet_partition, load_digits_split,
        make_clients)

    x, y, x_test, y_test = load_digits_split()
    clients = make_clients(x, y, dirichlet_partition(y, num_clients=50, alpha=0.1))
    train = LocalTraining(partial(SGD, lr=0.1), epochs=2, batch_size=10)
    sim = Simulation(MLP(), clients, FedAdam(lr=0.03), train, (x_test, y_test), fraction=0.2)
    history = sim.run(rounds=20)

Modules: ``aggregate`` (pure averaging and update checks), ``client`` (local training),
``strategy`` (how the server updates the global model), ``partition`` (who holds what),
``simulation`` (the rounds), ``plot`` (accuracy curves), ``distributed`` (the same rounds over
torch.distributed workers), ``privacy`` (DP-FedAvg with Opacus's accountant), ``compression``
(top-k and QSGD uploads with error feedback), ``flower`` (the same experiments on Flower; import
it explicitly, it needs the ``fed`` extra).
"""

from torchopt_edu.federated.aggregate import (
    InvalidUpdateError,
    average,
    check_update,
    fed_avg,
    scale_weights,
    weighted_sum,
)
from torchopt_edu.federated.attacks import ATTACKS, Attack
from torchopt_edu.federated.checkpoint import CheckpointError
from torchopt_edu.federated.client import Client, ClientResult, LocalTraining, make_clients
from torchopt_edu.federated.compression import QSGD, TopK, UpdateCompressor
from torchopt_edu.federated.data import MLP, load_digits_split
from torchopt_edu.federated.faults import Faults
from torchopt_edu.federated.partition import (
    PARTITIONS,
    dirichlet_partition,
    format_counts,
    iid_partition,
    label_counts,
    plot_counts,
    quantity_skew_partition,
    shard_partition,
)
from torchopt_edu.federated.plot import plot_history
from torchopt_edu.federated.privacy import DPFedAvg
from torchopt_edu.federated.robust import ClipUpdates, FedMedian, FedTrimmedAvg, Krum
from torchopt_edu.federated.scaffold import Scaffold
from torchopt_edu.federated.simulation import ClientError, Compressor, Simulation, evaluate
from torchopt_edu.federated.strategy import (
    STRATEGIES,
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedOpt,
    FedProx,
    FedYogi,
    ServerStepError,
    Strategy,
    StrategyWrapper,
)

__all__ = [
    "DPFedAvg",
    "QSGD",
    "TopK",
    "UpdateCompressor",
    "InvalidUpdateError",
    "average",
    "check_update",
    "fed_avg",
    "scale_weights",
    "weighted_sum",
    "ATTACKS",
    "Attack",
    "CheckpointError",
    "Client",
    "ClientError",
    "Compressor",
    "Faults",
    "ClientResult",
    "LocalTraining",
    "make_clients",
    "MLP",
    "load_digits_split",
    "PARTITIONS",
    "dirichlet_partition",
    "format_counts",
    "iid_partition",
    "label_counts",
    "plot_counts",
    "quantity_skew_partition",
    "shard_partition",
    "ClipUpdates",
    "FedMedian",
    "FedTrimmedAvg",
    "Krum",
    "Scaffold",
    "Simulation",
    "evaluate",
    "plot_history",
    "STRATEGIES",
    "FedAdagrad",
    "FedAdam",
    "FedAvg",
    "FedAvgM",
    "FedOpt",
    "FedProx",
    "FedYogi",
    "ServerStepError",
    "Strategy",
    "StrategyWrapper",
]
