"""``torchopt-edu gnn``: train a GCN on a graph with several optimizers and compare them.

Example::

    torchopt-edu gnn --dataset sbm --optimizers adam sgd torch.optim.Adam --epochs 200

prints one row per optimizer (final train/val/test metrics of the best epoch, epochs run,
seconds) and writes ``histories.json`` and ``curves.png`` under ``--out``.
"""

from __future__ import annotations

import dataclasses
from functools import partial
from pathlib import Path

from torch_geometric.data import Data

from torchopt_edu.cli import _argtypes, _common
from torchopt_edu.cli._optimizers import optimizer_name, usable_names
from torchopt_edu.gnn.data import infer_task, seeded, to_device
from torchopt_edu.gnn.demo import DATASETS, DEMO_LR, default_lr
from torchopt_edu.gnn.model import GCN
from torchopt_edu.gnn.train import OptimizerFactory, compare_optimizers, format_table
from torchopt_edu.optim import OPTIMIZERS, resolve_optimizer


def build_parser() -> _common.Parser:
    """The argument parser of ``torchopt-edu gnn``."""
    parser = _common.Parser(
        prog="torchopt-edu gnn",
        description="Train a GCN on a graph with several optimizers and compare them.",
    )
    parser.add_argument(
        "--dataset",
        choices=sorted(DATASETS),
        default="sbm",
        help="; ".join(f"{k}: {d.description}" for k, d in DATASETS.items()),
    )
    _common.add_optimizers(
        parser,
        "--optimizer",
        default=list(OPTIMIZERS),
        convert=optimizer_name(closure=True),
        help=f"default: all of ours; any of {usable_names(closure=True)}",
    )
    parser.add_argument(
        "--lr",
        type=_argtypes.positive_float,
        default=None,
        help=f"learning rate for every optimizer; default per optimizer {DEMO_LR}",
    )
    parser.add_argument("--epochs", type=_argtypes.positive_int, default=200)
    parser.add_argument(
        "--patience",
        type=_argtypes.positive_int,
        default=50,
        help="stop after this many epochs without improvement (default 50)",
    )
    parser.add_argument(
        "--hidden",
        type=_argtypes.positive_int,
        nargs="+",
        default=None,
        help="hidden layer widths (default: per dataset)",
    )
    parser.add_argument(
        "--dropout",
        type=_argtypes.non_negative_float,
        default=None,
        help="dropout probability (default: per dataset)",
    )
    _common.add_common(parser, out="runs/gnn", device="auto")
    parser.add_argument(
        "--quiet",
        dest="no_progress",
        action="store_true",
        help="same as --no-progress (older spelling)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the comparison described by ``argv``; return 0 (usage errors exit 2 up front)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.dropout is not None and args.dropout >= 1:
        parser.error(f"argument --dropout: must be < 1, got {args.dropout}")
    if not args.no_plot:
        _common.require_matplotlib(parser)
    _common.check_outputs(parser, folders=[("--out", args.out)], files=[("--json", args.json)])
    dataset = DATASETS[args.dataset]
    data = dataset.make(args.seed)
    hidden = args.hidden or list(dataset.hidden)
    out_channels = _out_channels(data)
    with seeded(args.seed):
        model = GCN(
            data.num_features,
            hidden,
            out_channels,
            dropout=dataset.dropout if args.dropout is None else args.dropout,
        )
    model, data = to_device(model, data, args.device)
    optimizers: dict[str, OptimizerFactory] = {}
    for name in args.optimizers:
        cls = resolve_optimizer(name)
        optimizers[name] = partial(cls, lr=args.lr or default_lr(cls))
    histories = compare_optimizers(
        model,
        data,
        optimizers,
        epochs=args.epochs,
        seed=args.seed,
        patience=args.patience,
        progress=not args.no_progress,
    )

    print(
        f"GCN({data.num_features}, {hidden}, {out_channels}) on {args.dataset} "
        f"({dataset.description}), device {data.x.device}"
    )
    print(format_table(histories))
    results = {name: dataclasses.asdict(history) for name, history in histories.items()}
    histories_path = _common.write_json(args.out / "histories.json", results)
    print(f"wrote {histories_path}")
    if args.json is not None:
        _common.write_json(
            args.json,
            {
                "dataset": args.dataset,
                "hidden": hidden,
                "device": str(data.x.device),
                "seed": args.seed,
                "histories": results,
            },
        )
        print(f"wrote {args.json}")
    if not args.no_plot:
        _common.use_agg()
        from torchopt_edu.gnn.plot import plot_histories

        figure = plot_histories(histories, title=f"GCN on {args.dataset}")
        print(f"wrote {_common.save_figure(figure, Path(args.out) / 'curves.png')}")
    return 0


def _out_channels(data: Data) -> int:
    """Output width: the number of classes, or of regression targets per node."""
    if infer_task(data) == "classification":
        return int(data.y.max()) + 1
    return data.y.size(1) if data.y.dim() == 2 else 1
