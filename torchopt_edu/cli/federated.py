"""``torchopt-edu federated``: a global model learns on scikit-learn digits from many clients.

Partitions the digits training set among ``--clients`` clients (non-IID by default), runs
``--rounds`` rounds of the chosen strategy, prints one table row per round and writes
``history.csv``, ``history.json``, ``config.json`` and ``accuracy.png`` under ``--out``
(the simulation returns the history; this module saves it).
``--workers N`` runs the same rounds over N torch.distributed (gloo) processes.

Options that only one partition or strategy uses (``--alpha``, ``--shards-per-client``,
``--beta``, ``--mu``) are refused with the others, and ``--strategy fedopt`` needs both
``--server-optimizer`` and ``--server-lr``: no learning rate suits every server optimizer, and
an optimizer's own default (SGD's ``1e-3``) barely moves the global model.
"""

from __future__ import annotations

import argparse
import csv
import functools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from torchopt_edu.cli import _common
from torchopt_edu.cli._argtypes import fraction, non_negative_float, positive_float, positive_int
from torchopt_edu.cli._optimizers import optimizer_name
from torchopt_edu.federated.client import LocalTraining, make_clients
from torchopt_edu.federated.data import MLP, load_digits_split
from torchopt_edu.federated.partition import (
    dirichlet_partition,
    format_counts,
    iid_partition,
    label_counts,
    quantity_skew_partition,
    shard_partition,
)
from torchopt_edu.federated.simulation import Record, Simulation
from torchopt_edu.federated.strategy import STRATEGIES, FedOpt, FedProx, Strategy
from torchopt_edu.optim import resolve_optimizer, valid_names

SERVER_OPTIMIZER_STRATEGIES = ("fedopt", "fedavgm", "fedadagrad", "fedadam", "fedyogi")
HEADER = (
    f"{'round':>5} {'clients':>7} {'samples':>7} {'train loss':>10} {'test loss':>9} "
    f"{'test acc':>8} {'time s':>7}"
)


# options that only one --partition / --strategy uses: (which one, its default)
PARTITION_OPTIONS = {
    "alpha": ("dirichlet", 0.1),
    "shards_per_client": ("shards", 2),
    "beta": ("quantity", 0.5),
}
STRATEGY_OPTIONS = {"mu": ("fedprox", 0.01)}


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except ``None`` (an option whose default depends on another one)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None:
            return action.help
        return super()._get_help_string(action)


def build_parser() -> _common.Parser:
    """The argument parser of ``torchopt-edu federated``."""
    parser = _common.Parser(
        prog="torchopt-edu federated",
        description="Simulate federated learning on scikit-learn digits with an MLP.",
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("--clients", type=positive_int, default=50, help="number of clients K")
    parser.add_argument("--rounds", type=positive_int, default=30, help="communication rounds")
    parser.add_argument(
        "--fraction", type=fraction, default=0.2, help="clients sampled per round C"
    )
    parser.add_argument("--local-epochs", type=positive_int, default=5, help="local epochs E")
    parser.add_argument("--batch-size", type=positive_int, default=10, help="local batch size B")
    parser.add_argument(
        "--optimizer",
        "--client-optimizer",
        dest="optimizer",
        type=optimizer_name(closure=False),
        default="sgd",
        metavar="NAME",
        help=f"the clients' optimizer: {valid_names()}",
    )
    parser.add_argument("--lr", type=positive_float, default=0.1, help="clients' learning rate")
    parser.add_argument(
        "--partition",
        choices=["iid", "dirichlet", "shards", "quantity"],
        default="dirichlet",
        help="how the training set is split among the clients",
    )
    parser.add_argument(
        "--alpha", type=positive_float, help="label skew of --partition dirichlet (default 0.1)"
    )
    parser.add_argument(
        "--shards-per-client", type=positive_int, help="for --partition shards (default 2)"
    )
    parser.add_argument(
        "--beta", type=positive_float, help="size skew of --partition quantity (default 0.5)"
    )
    parser.add_argument(
        "--strategy", choices=[*STRATEGIES, "fedopt"], default="fedavg", help="server strategy"
    )
    parser.add_argument(
        "--mu", type=non_negative_float, help="proximal weight of --strategy fedprox (default 0.01)"
    )
    parser.add_argument(
        "--server-optimizer",
        type=optimizer_name(closure=False),
        metavar="NAME",
        help="server optimizer of --strategy fedopt (required there); same names as --optimizer",
    )
    parser.add_argument(
        "--server-lr",
        type=positive_float,
        help="server learning rate (default: the strategy's; required with --strategy fedopt)",
    )
    parser.add_argument(
        "--workers", type=positive_int, default=1, help="torch.distributed (gloo) processes"
    )
    _common.add_common(parser, out="runs/federated", device="cpu")
    return parser


def _option(name: str) -> str:
    return "--" + name.replace("_", "-")


def _check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse options that do not fit together; fill in the defaults of the ones that apply."""
    for options, chosen, flag in (
        (PARTITION_OPTIONS, args.partition, "--partition"),
        (STRATEGY_OPTIONS, args.strategy, "--strategy"),
    ):
        for name, (user, default) in options.items():
            if getattr(args, name) is None:
                setattr(args, name, default if chosen == user else None)
            elif chosen != user:
                parser.error(
                    f"argument {_option(name)}: applies to {flag} {user}, not {flag} {chosen}"
                )
    if args.strategy == "fedopt" and args.server_optimizer is None:
        parser.error("--strategy fedopt needs --server-optimizer (any optimizer name)")
    if args.strategy == "fedopt" and args.server_lr is None:
        # an optimizer's own default lr (SGD's 1e-3, say) is meant for gradients, not for the
        # pseudo-gradient of a round; there is no default that suits every server optimizer
        parser.error("--strategy fedopt needs --server-lr (SGD with lr 1.0 is FedAvg)")
    if args.server_optimizer is not None and args.strategy != "fedopt":
        parser.error(
            f"--server-optimizer applies to --strategy fedopt; {args.strategy} "
            "has its own server optimizer (or none)"
        )
    if args.server_lr is not None and args.strategy not in SERVER_OPTIMIZER_STRATEGIES:
        parser.error(f"--server-lr: --strategy {args.strategy} has no server optimizer")
    if args.workers > 1 and args.device.type != "cpu":
        parser.error(f"--workers {args.workers} runs gloo on the CPU; use --device cpu")


def _check_sizes(parser: argparse.ArgumentParser, args: argparse.Namespace, samples: int) -> None:
    """Refuse more clients (or shards) than the training set has samples."""
    if args.partition == "shards" and args.clients * args.shards_per_client > samples:
        parser.error(
            f"argument --clients: {args.clients} clients x {args.shards_per_client} shards per "
            f"client need {args.clients * args.shards_per_client} samples, the training set has "
            f"{samples}"
        )
    if args.clients > samples:
        parser.error(
            f"argument --clients: {args.clients} clients but the training set has {samples} "
            "samples (every client needs at least one)"
        )


def build_strategy(args: argparse.Namespace) -> Strategy:
    """The strategy named by ``--strategy``, with ``--mu``, ``--server-optimizer``, ``--server-lr``.

    ``--server-lr`` overrides the learning rate of the strategy's server optimizer; ``fedopt``
    needs it (``ValueError`` without it), ``fedprox`` without ``--mu`` uses ``mu = 0.01``.
    """
    if args.strategy == "fedprox":
        return FedProx(STRATEGY_OPTIONS["mu"][1] if args.mu is None else args.mu)
    if args.strategy == "fedopt":
        if args.server_lr is None:
            raise ValueError("--strategy fedopt needs --server-lr")
        optimizer_class = resolve_optimizer(args.server_optimizer)
        return FedOpt(functools.partial(optimizer_class, lr=args.server_lr))
    lr = {} if args.server_lr is None else {"lr": args.server_lr}
    return STRATEGIES[args.strategy](**lr)


def _partition(args: argparse.Namespace, labels: torch.Tensor) -> list[torch.Tensor]:
    builders: dict[str, Callable[[], list[torch.Tensor]]] = {
        "iid": lambda: iid_partition(len(labels), args.clients, args.seed),
        "dirichlet": lambda: dirichlet_partition(labels, args.clients, args.alpha, args.seed),
        "shards": lambda: shard_partition(labels, args.clients, args.shards_per_client, args.seed),
        "quantity": lambda: quantity_skew_partition(
            len(labels), args.clients, args.beta, args.seed
        ),
    }
    return builders[args.partition]()


def print_row(record: Record) -> None:
    """Print one round as a row under :data:`HEADER` (above the progress bar)."""
    tqdm.write(
        f"{record['round']:>5} {record['clients']:>7} {record['samples']:>7} "
        f"{record['train_loss']:>10.4f} {record['test_loss']:>9.4f} "
        f"{record['test_accuracy']:>8.3f} {record['round_time_s']:>7.3f}"
    )


def save_history(history: Sequence[Record], directory: Path) -> tuple[Path, Path]:
    """Write ``history.csv`` and ``history.json`` into ``directory``; return both paths.

    The JSON is strict: a NaN or infinite number (the train loss of a round whose updates were
    all rejected, a diverged test loss) is written as ``null``; the CSV writes ``nan``.
    """
    json_path = _common.write_json(directory / "history.json", list(history))
    csv_path = directory / "history.csv"
    fields = list(dict.fromkeys(key for record in history for key in record))
    with csv_path.open("w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, fieldnames=fields)
        writer.writeheader()
        for record in history:
            row = dict(record)
            row["rejected"] = " ".join(str(k) for k in record.get("rejected", []))
            writer.writerow(row)
    return csv_path, json_path


def main(argv: list[str] | None = None) -> int:
    """Run the simulation described by ``argv``; return 0 (usage errors exit 2 up front)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _check(parser, args)
    _common.require(parser, "sklearn", "the digits data set", "pip install 'torchopt-edu[data]'")
    if not args.no_plot:
        _common.require_matplotlib(parser)
    _common.check_outputs(parser, folders=[("--out", args.out)], files=[("--json", args.json)])
    device = args.device
    x_train, y_train, x_test, y_test = load_digits_split(seed=args.seed, device=device)
    _check_sizes(parser, args, len(y_train))
    partition = _partition(args, y_train)
    counts = label_counts(partition, y_train, num_classes=10)
    print(f"{args.clients} clients, {args.partition} partition (samples per label):")
    print(format_counts(counts, max_rows=10))
    torch.manual_seed(args.seed)
    model = MLP().to(device)
    clients = make_clients(x_train, y_train, partition)
    strategy = build_strategy(args)
    train = LocalTraining(
        functools.partial(resolve_optimizer(args.optimizer), lr=args.lr),
        epochs=args.local_epochs,
        batch_size=args.batch_size,
    )
    print(f"\n{strategy!r}, {args.optimizer} lr {args.lr} on the clients\n{HEADER}")
    options: dict[str, Any] = dict(
        test_set=(x_test, y_test), fraction=args.fraction, seed=args.seed, on_invalid="skip"
    )
    if args.workers > 1:
        from torchopt_edu.federated.distributed import run_distributed

        history = run_distributed(
            model,
            clients,
            strategy,
            train,
            args.rounds,
            world_size=args.workers,
            progress=not args.no_progress,
            log=print_row,
            **options,
        )
    else:
        simulation = Simulation(model, clients, strategy, train, **options)
        history = simulation.run(args.rounds, progress=not args.no_progress, log=print_row)
    csv_path, _ = save_history(history, args.out)
    config = {
        key: str(value) if isinstance(value, (Path, torch.device)) else value
        for key, value in vars(args).items()
    }
    _common.write_json(args.out / "config.json", config)
    print(f"\nfinal test accuracy {history[-1]['test_accuracy']:.3f}; history in {csv_path}")
    if args.json is not None:
        _common.write_json(args.json, {"config": config, "history": list(history)})
        print(f"results written to {args.json}")
    if not args.no_plot:
        _common.use_agg()
        from torchopt_edu.federated.plot import plot_history

        ax = plot_history(history, label=type(strategy).__name__)
        ax.set_title(f"{args.partition} partition, {args.clients} clients")
        path = _common.save_figure(ax.figure, args.out / "accuracy.png")
        print(f"accuracy curve in {path}")
    return 0
