"""``torchopt-edu gnn``: train a GCN on a graph with several optimizers and compare them.

Example::

    torchopt-edu gnn --dataset sbm --optimizer adam sgd torch.adam --epochs 200

prints one row per optimizer (final train/val/test metrics of the best epoch, epochs run,
seconds) and writes ``histories.json`` and ``curves.png`` under ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import os
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import NamedTuple

import torch
from torch.optim import Optimizer
from torch_geometric.data import Data

from torchopt_edu._argtypes import non_negative_float, positive_float, positive_int
from torchopt_edu.gnn.data import (
    infer_task,
    karate_club,
    random_regression_graph,
    resolve_device,
    sbm_graph,
    seeded,
    to_device,
)
from torchopt_edu.gnn.model import GCN
from torchopt_edu.gnn.train import OptimizerFactory, compare_optimizers, format_table
from torchopt_edu.optim import OPTIMIZERS


class Dataset(NamedTuple):
    """A demo graph and the GCN that suits it."""

    make: Callable[[int], Data]
    hidden: tuple[int, ...]
    dropout: float
    description: str


DATASETS: dict[str, Dataset] = {
    "seed": Dataset(lambda seed: random_regression_graph(seed=seed), (64,), 0.0,
                    "the source document's task: 10 nodes, 20 random edges, target 1"),
    "karate": Dataset(lambda seed: karate_club(seed=seed), (16,), 0.5,
                      "Zachary's karate club: 34 nodes, 4 classes, 4 labelled nodes"),
    "sbm": Dataset(lambda seed: sbm_graph(seed=seed), (16,), 0.5,
                   "stochastic block model: 180 nodes, 3 classes, noisy features"),
}

# Learning rates for the demo graphs, from a grid over {0.003, 0.01, ..., 1} on all three
# (lowest validation loss, or train loss on "seed", that is stable on every graph): plain SGD
# needs steps ~30x larger than Adam's, whose step size does not scale with the gradient.
DEMO_LR: dict[str, float] = {
    "sgd": 0.3, "momentum": 0.3, "adagrad": 0.1, "rmsprop": 0.01,
    "adam": 0.01, "adamw": 0.01, "yogi": 0.03,
}

# torch.optim classes that step dense parameters of any shape, as a GCN has (weights and
# biases). Left out on purpose: SparseAdam (sparse gradients only) and Muon (2-D only).
TORCH_OPTIMIZER_NAMES = ("adadelta", "adafactor", "adagrad", "adam", "adamax", "adamw", "asgd",
                         "lbfgs", "nadam", "radam", "rmsprop", "rprop", "sgd")
TORCH_OPTIMIZERS: dict[str, type[Optimizer]] = {
    cls.__name__.lower(): cls for cls in vars(torch.optim).values()
    if isinstance(cls, type) and issubclass(cls, Optimizer)
    and cls.__name__.lower() in TORCH_OPTIMIZER_NAMES
}


def optimizer_class(name: str) -> type[Optimizer]:
    """Our optimizer ``name`` (a key of ``OPTIMIZERS``), or torch's for ``"torch.<name>"``."""
    if name.startswith("torch."):
        base = name.removeprefix("torch.")
        if base in TORCH_OPTIMIZERS:
            return TORCH_OPTIMIZERS[base]
    elif name in OPTIMIZERS:
        return OPTIMIZERS[name]
    raise ValueError(f"unknown optimizer {name!r}; choose from {sorted(OPTIMIZERS)} or "
                     f"torch.<name> with <name> in {sorted(TORCH_OPTIMIZERS)}")


def default_lr(name: str) -> float:
    """The demo learning rate of ``name`` (ours or ``torch.<name>``), else its class default."""
    base = name.removeprefix("torch.")
    if base in DEMO_LR:
        return DEMO_LR[base]
    return float(inspect.signature(optimizer_class(name)).parameters["lr"].default)


def _optimizer_name(text: str) -> str:
    try:
        optimizer_class(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text



def _out_problem(out: Path) -> str | None:
    """Why ``out`` cannot become the output directory, or None if it can."""
    if out.exists():
        if not out.is_dir():
            return f"{out} exists and is not a directory"
        return None if os.access(out, os.W_OK | os.X_OK) else f"{out} is not writable"
    ancestor = out.absolute().parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        return f"cannot create {out}: {ancestor} is not a directory"
    if not os.access(ancestor, os.W_OK | os.X_OK):
        return f"cannot create {out}: {ancestor} is not writable"
    return None


def _device(text: str) -> torch.device:
    try:
        return resolve_device(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``torchopt-edu gnn``."""
    parser = argparse.ArgumentParser(
        prog="torchopt-edu gnn",
        description="Train a GCN on a graph with several optimizers and compare them.",
    )
    parser.add_argument("--dataset", choices=sorted(DATASETS), default="sbm",
                        help="; ".join(f"{k}: {d.description}" for k, d in DATASETS.items()))
    parser.add_argument("--optimizer", nargs="+", type=_optimizer_name, default=list(OPTIMIZERS),
                        metavar="NAME",
                        help=f"ours {sorted(OPTIMIZERS)} or torch.<name> (torch.adam, ...); "
                             "default: all of ours")
    parser.add_argument("--lr", type=positive_float, default=None,
                        help=f"learning rate for every optimizer; default per optimizer {DEMO_LR}")
    parser.add_argument("--epochs", type=positive_int, default=200)
    parser.add_argument("--patience", type=positive_int, default=50,
                        help="stop after this many epochs without improvement (default 50)")
    parser.add_argument("--hidden", type=positive_int, nargs="+", default=None,
                        help="hidden layer widths (default: per dataset)")
    parser.add_argument("--dropout", type=non_negative_float, default=None,
                        help="dropout probability (default: per dataset)")
    parser.add_argument("--device", type=_device, default="auto",
                        help="auto (CUDA if available), cpu, cuda or cuda:N")
    parser.add_argument("--seed", type=int, default=0, help="seed of graph, init and dropout")
    parser.add_argument("--out", type=Path, default=Path("runs/gnn"),
                        help="directory for histories.json and curves.png (default runs/gnn)")
    parser.add_argument("--no-plot", action="store_true", help="do not write curves.png")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the comparison described by ``argv``; return the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.dropout is not None and args.dropout >= 1:
        parser.error(f"argument --dropout: must be < 1, got {args.dropout}")
    out_problem = _out_problem(args.out)  # before training, not after minutes of it
    if out_problem is not None:
        parser.error(f"argument --out: {out_problem}")
    dataset = DATASETS[args.dataset]
    data = dataset.make(args.seed)
    hidden = args.hidden or list(dataset.hidden)
    out_channels = _out_channels(data)
    with seeded(args.seed):
        model = GCN(data.num_features, hidden, out_channels,
                    dropout=dataset.dropout if args.dropout is None else args.dropout)
    model, data = to_device(model, data, args.device)
    optimizers: dict[str, OptimizerFactory] = {
        name: partial(optimizer_class(name), lr=args.lr or default_lr(name))
        for name in dict.fromkeys(args.optimizer)
    }
    histories = compare_optimizers(model, data, optimizers, epochs=args.epochs, seed=args.seed,
                                   patience=args.patience, progress=not args.quiet)

    print(f"GCN({data.num_features}, {hidden}, {out_channels}) on {args.dataset} "
          f"({dataset.description}), device {data.x.device}")
    print(format_table(histories))
    args.out.mkdir(parents=True, exist_ok=True)
    histories_path = args.out / "histories.json"
    histories_path.write_text(json.dumps(
        {name: dataclasses.asdict(history) for name, history in histories.items()}, indent=1))
    print(f"wrote {histories_path}")
    if not args.no_plot:
        from matplotlib import pyplot

        from torchopt_edu.gnn.plot import plot_histories

        curves_path = args.out / "curves.png"
        pyplot.close(plot_histories(histories, curves_path, title=f"GCN on {args.dataset}"))
        print(f"wrote {curves_path}")
    return 0


def _out_channels(data: Data) -> int:
    """Output width: the number of classes, or of regression targets per node."""
    if infer_task(data) == "classification":
        return int(data.y.max()) + 1
    return data.y.size(1) if data.y.dim() == 2 else 1
