"""``torchopt-edu federated``: a global model learns on scikit-learn digits from many clients.

Partitions the digits training set among ``--clients`` clients (non-IID by default), runs
``--rounds`` rounds of the chosen strategy, prints one table row per round and writes
``history.csv``, ``history.json``, ``config.json`` and ``accuracy.png`` under ``--out``
(the simulation returns the history; this module saves it).
``--workers N`` runs the same rounds over N torch.distributed (gloo) processes;
``--launcher torchrun`` runs one process per ``torchrun`` rank instead (gloo on CPU, NCCL with
``--device cuda``; one machine or several, see docs/federated.md).

Robust strategies (``fedmedian``, ``fedtrimmedavg``, ``krum``), ``scaffold``, update clipping
(``--clip-norm``), differential privacy (``--dp-noise``, ``--dp-clip``), compression
(``--compress``), attacks (``--attack``), faults (``--dropout``, ``--deadline``,
``--min-replies``) and checkpoints (``--checkpoint-every``, ``--resume``) compose freely.

Options that only one partition or strategy uses (``--alpha``, ``--shards-per-client``,
``--beta``, ``--mu``, ``--trim-beta``, ``--malicious``, ``--keep``) are refused with the others,
and ``--strategy fedopt`` needs both
``--server-optimizer`` and ``--server-lr``: no learning rate suits every server optimizer, and
an optimizer's own default (SGD's ``1e-3``) barely moves the global model.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import functools
import io
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from torchopt_edu.cli import _common
from torchopt_edu.cli._argtypes import (
    fraction,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
)
from torchopt_edu.cli._optimizers import optimizer_name, usable_names
from torchopt_edu.federated.attacks import ATTACKS, Attack
from torchopt_edu.federated.checkpoint import CheckpointError
from torchopt_edu.federated.client import LocalTraining, make_clients
from torchopt_edu.federated.data import MLP, load_digits_split
from torchopt_edu.federated.faults import Faults
from torchopt_edu.federated.partition import (
    dirichlet_partition,
    format_counts,
    iid_partition,
    label_counts,
    quantity_skew_partition,
    shard_partition,
)
from torchopt_edu.federated.robust import ClipUpdates, FedMedian, FedTrimmedAvg, Krum
from torchopt_edu.federated.scaffold import Scaffold
from torchopt_edu.federated.simulation import Record, Simulation
from torchopt_edu.federated.strategy import STRATEGIES, FedOpt, FedProx, Strategy
from torchopt_edu.optim import resolve_optimizer

SERVER_OPTIMIZER_STRATEGIES = ("fedopt", "fedavgm", "fedadagrad", "fedadam", "fedyogi", "scaffold")
HEADER = (
    f"{'round':>5} {'clients':>7} {'samples':>7} {'train loss':>10} {'test loss':>9} "
    f"{'test acc':>8} {'kB sent':>8} {'time s':>7}"
)


# options that only one --partition / --strategy uses: (which one, its default)
PARTITION_OPTIONS = {
    "alpha": ("dirichlet", 0.1),
    "shards_per_client": ("shards", 2),
    "beta": ("quantity", 0.5),
}
STRATEGY_OPTIONS = {
    "mu": ("fedprox", 0.01),
    "trim_beta": ("fedtrimmedavg", 0.2),
    "malicious": ("krum", 0),
    "keep": ("krum", 0),
}
ALL_STRATEGIES = [*STRATEGIES, "fedopt", "fedmedian", "fedtrimmedavg", "krum", "scaffold"]
CHECKPOINT = "checkpoint.pt"
#: The other files the command writes under --out.
OUTPUTS = ("history.csv", "history.json", "config.json", "accuracy.png")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except ``None`` (an option whose default depends on another one) and
    those the help already names (the shared ``--out``, ``--seed``, ``--device``)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or "(default" in (action.help or ""):
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
        help=f"the clients' optimizer: {usable_names(closure=False)}",
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
        "--strategy", choices=ALL_STRATEGIES, default="fedavg", help="server strategy"
    )
    parser.add_argument(
        "--mu", type=non_negative_float, help="proximal weight of --strategy fedprox (default 0.01)"
    )
    parser.add_argument(
        "--trim-beta",
        type=non_negative_float,
        help="share cut at each end by --strategy fedtrimmedavg (default 0.2)",
    )
    parser.add_argument(
        "--malicious", type=non_negative_int, help="Krum's f, malicious clients (default 0)"
    )
    parser.add_argument(
        "--keep",
        type=non_negative_int,
        help="Multi-Krum: average the KEEP best (default 0: Krum, one model)",
    )
    parser.add_argument(
        "--clip-norm", type=positive_float, help="clip every update to this L2 norm first"
    )
    parser.add_argument(
        "--dp-noise", type=non_negative_float, help="DP-FedAvg noise multiplier z (needs --dp-clip)"
    )
    parser.add_argument("--dp-clip", type=positive_float, help="DP-FedAvg clipping norm S")
    parser.add_argument("--dp-delta", type=positive_float, default=1e-5, help="DP delta")
    parser.add_argument(
        "--compress", choices=["topk", "qsgd"], help="compress the uploaded updates"
    )
    parser.add_argument(
        "--compress-ratio", type=fraction, default=0.01, help="share kept by --compress topk"
    )
    parser.add_argument(
        "--compress-bits", type=positive_int, default=8, help="bits of --compress qsgd"
    )
    parser.add_argument(
        "--error-feedback",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="keep what the code dropped for the next round (default: topk yes, qsgd no)",
    )
    parser.add_argument("--attack", choices=ATTACKS, help="attack by --attack-fraction clients")
    parser.add_argument(
        "--attack-fraction", type=fraction, default=0.2, help="share of malicious clients"
    )
    parser.add_argument(
        "--attack-scale", type=positive_float, help="strength of --attack (default: its own)"
    )
    parser.add_argument(
        "--dropout", type=non_negative_float, default=0.0, help="P(a sampled client drops out)"
    )
    parser.add_argument(
        "--deadline",
        type=positive_float,
        help="cut clients slower than this many local steps of a typical client",
    )
    parser.add_argument(
        "--min-replies", type=positive_int, default=1, help="skip rounds with fewer updates"
    )
    parser.add_argument(
        "--on-client-error",
        choices=["skip", "raise"],
        default="skip",
        help="a client whose training raises is skipped (and recorded) or stops the run",
    )
    parser.add_argument(
        "--checkpoint-every",
        type=non_negative_int,
        default=0,
        help=f"save the server state to OUT/{CHECKPOINT} every N rounds (0: never)",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help=f"continue from OUT/{CHECKPOINT} up to --rounds rounds in all (same --seed, "
        "--clients, --fraction, strategy and compression options as the saved run)",
    )
    parser.add_argument(
        "--threads", type=positive_int, help="torch threads per process (default: by model size)"
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
    parser.add_argument(
        "--launcher",
        choices=["spawn", "torchrun"],
        default="spawn",
        help="spawn --workers local processes, or be one rank of a torchrun launch",
    )
    parser.add_argument(
        "--timeout",
        type=positive_float,
        default=60.0,
        help="seconds a worker waits for the others before the run stops",
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
    _check_extras(parser, args)


def _check_extras(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse combinations of the robustness, privacy, compression and fault options that
    cannot work together."""
    if args.launcher == "torchrun" and args.workers > 1:
        parser.error("--launcher torchrun: torchrun starts the processes; drop --workers")
    if args.launcher == "torchrun" and "RANK" not in os.environ:
        parser.error("--launcher torchrun: run under torchrun (RANK is not set)")
    if args.trim_beta is not None and not args.trim_beta < 0.5:
        parser.error(f"argument --trim-beta: must be < 0.5, got {args.trim_beta}")
    if (args.dp_noise is None) != (args.dp_clip is None):
        parser.error("--dp-noise and --dp-clip go together (DP-FedAvg needs both)")
    if args.dp_noise is not None and args.clip_norm is not None:
        parser.error("--clip-norm: DP-FedAvg clips to --dp-clip already")
    if not args.dropout < 1:
        parser.error(f"argument --dropout: must be < 1, got {args.dropout}")
    for name in ("compress_ratio", "compress_bits", "error_feedback"):
        if args.compress is None and getattr(args, name) not in (None, parser.get_default(name)):
            parser.error(f"argument {_option(name)}: applies to --compress")
    if args.compress_bits < 2 or args.compress_bits > 16:
        parser.error(f"argument --compress-bits: must lie in [2, 16], got {args.compress_bits}")
    if args.attack is None and args.attack_scale is not None:
        parser.error("argument --attack-scale: applies to --attack")
    if args.resume and args.checkpoint_every == 0:
        args.checkpoint_every = 1  # a resumed run goes on saving


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
    strategy = _base_strategy(args)
    if args.clip_norm is not None:
        strategy = ClipUpdates(strategy, args.clip_norm)
    if args.dp_noise is not None:
        from torchopt_edu.federated.privacy import DPFedAvg

        strategy = DPFedAvg(
            strategy,
            clip_norm=args.dp_clip,
            noise_multiplier=args.dp_noise,
            # the share of clients Simulation samples per round: max(1, round(C K)) of K
            sample_rate=max(1, round(args.fraction * args.clients)) / args.clients,
            delta=args.dp_delta,
            seed=args.seed,
        )
    return strategy


def _base_strategy(args: argparse.Namespace) -> Strategy:
    """The strategy of ``--strategy`` before clipping or privacy wrap it."""
    robust: dict[str, Callable[[], Strategy]] = {
        "fedmedian": FedMedian,
        "fedtrimmedavg": lambda: FedTrimmedAvg(_value(args, "trim_beta")),
        "krum": lambda: Krum(_value(args, "malicious"), _value(args, "keep")),
        "scaffold": lambda: Scaffold(args.clients, lr=_value(args, "server_lr")),
    }
    if args.strategy in robust:
        return robust[args.strategy]()
    if args.strategy == "fedprox":
        return FedProx(_value(args, "mu"))
    if args.strategy == "fedopt":
        if args.server_lr is None:
            raise ValueError("--strategy fedopt needs --server-lr")
        optimizer_class = resolve_optimizer(args.server_optimizer)
        return FedOpt(functools.partial(optimizer_class, lr=args.server_lr))
    lr = {} if args.server_lr is None else {"lr": args.server_lr}
    return STRATEGIES[args.strategy](**lr)


def _value(args: argparse.Namespace, name: str) -> Any:
    """``--name``'s value, or its default where the option applies (SCAFFOLD's server
    learning rate: 1)."""
    value = getattr(args, name, None)
    if value is not None:
        return value
    return 1.0 if name == "server_lr" else STRATEGY_OPTIONS[name][1]


def build_compressor(args: argparse.Namespace) -> Any:
    """The compressor of ``--compress`` (``None`` without it)."""
    if args.compress is None:
        return None
    from torchopt_edu.federated.compression import QSGD, TopK

    feedback = {} if args.error_feedback is None else {"error_feedback": args.error_feedback}
    if args.compress == "topk":
        return TopK(args.compress_ratio, **feedback)
    return QSGD(args.compress_bits, seed=args.seed, **feedback)


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
        f"{record['test_accuracy']:>8.3f} {record['bytes_sent'] / 1e3:>8.1f} "
        f"{record['round_time_s']:>7.3f}"
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
            row = {
                key: " ".join(str(k) for k in value) if isinstance(value, list) else value
                for key, value in record.items()
            }  # client-id lists (rejected, failed, dropped, late) as "3 7"
            writer.writerow(row)
    return csv_path, json_path


def main(argv: list[str] | None = None) -> int:
    """Run the simulation described by ``argv``; return 0 (usage errors exit 2 up front).

    Under ``--launcher torchrun`` every rank runs this; only rank 0 prints and saves.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    _check(parser, args)
    _common.require(parser, "sklearn", "the digits data set", "pip install 'torchopt-edu[data]'")
    if not args.no_plot:
        _common.require_matplotlib(parser)
    _common.check_outputs(parser, folders=[("--out", args.out)], files=[("--json", args.json)])
    checkpoint = args.out / CHECKPOINT
    owned = [
        ("the checkpoint", checkpoint),
        ("the previous checkpoint", checkpoint.with_name(CHECKPOINT + ".prev")),
        ("the checkpoint being written", checkpoint.with_name(CHECKPOINT + ".tmp")),
    ]
    owned += [(f"the output {name}", args.out / name) for name in OUTPUTS]
    _common.check_json_apart(parser, args.json, owned)
    if args.resume and not checkpoint.exists():
        parser.error(f"argument --resume: no checkpoint at {checkpoint}")
    if args.launcher == "torchrun":
        return _main_torchrun(parser, args)
    return _run(parser, args, args.device)


def _run(parser: argparse.ArgumentParser, args: argparse.Namespace, device: torch.device) -> int:
    """Build the experiment, run it (here, over spawned workers or as one torchrun rank),
    print and save on the reporting process."""
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
        test_set=(x_test, y_test),
        fraction=args.fraction,
        seed=args.seed,
        on_invalid="skip",
        on_client_error=args.on_client_error,
        compressor=build_compressor(args),
        attack=None
        if args.attack is None
        else Attack(args.attack, args.attack_fraction, args.attack_scale),
        faults=Faults(dropout=args.dropout, deadline=args.deadline, min_replies=args.min_replies),
        threads=args.threads,
        checkpoint=args.out / CHECKPOINT if args.checkpoint_every else None,
        checkpoint_every=max(1, args.checkpoint_every),
    )
    try:
        history = _simulate(args, model, clients, strategy, train, options)
    except CheckpointError as error:
        parser.error(f"argument --resume: {error}")
    if not history or (args.launcher == "torchrun" and _rank() != 0):
        return 0
    _report(args, history, strategy)
    return 0


def _simulate(
    args: argparse.Namespace,
    model: torch.nn.Module,
    clients: list[Any],
    strategy: Strategy,
    train: LocalTraining,
    options: dict[str, Any],
) -> list[Record]:
    """The rounds up to ``--rounds`` in all, by the chosen launcher."""
    if args.launcher == "torchrun":
        from torchopt_edu.federated.distributed import DistributedSimulation, run_rounds

        simulation: Simulation = DistributedSimulation(model, clients, strategy, train, **options)
        if args.resume:
            simulation.load_checkpoint()
        return run_rounds(simulation, args.rounds, log=print_row)
    if args.workers > 1:
        from torchopt_edu.federated.distributed import run_distributed

        return run_distributed(
            model,
            clients,
            strategy,
            train,
            args.rounds,
            world_size=args.workers,
            log=print_row,
            timeout=args.timeout,
            resume=args.resume,
            **options,
        )
    simulation = Simulation(model, clients, strategy, train, **options)
    if args.resume:
        done = simulation.load_checkpoint()
        print(f"resumed after round {done}")
    remaining = args.rounds - len(simulation.history)
    if remaining > 0:
        simulation.run(remaining, progress=not args.no_progress, log=print_row)
    return simulation.history


def _report(args: argparse.Namespace, history: list[Record], strategy: Strategy) -> None:
    """Save the history, the configuration and the curve; print where they went."""
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


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _main_torchrun(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """One rank of a torchrun launch: join the group (NCCL with ``--device cuda``, else gloo),
    run, leave; ranks other than 0 print nothing."""
    import torch.distributed as dist

    from torchopt_edu.federated.distributed import init_from_env

    backend = "nccl" if args.device.type == "cuda" else "gloo"
    device = init_from_env(backend, timeout=args.timeout)
    quiet = contextlib.redirect_stdout(io.StringIO()) if _rank() != 0 else contextlib.nullcontext()
    try:
        with quiet:
            return _run(parser, args, device)
    finally:
        dist.destroy_process_group()
