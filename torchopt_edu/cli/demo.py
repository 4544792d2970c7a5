"""``torchopt-edu demo``: train one small MLP with every optimizer and compare them.

Prints a table (final loss, test accuracy, ms per step) and saves ``loss_curves.png`` under
``--out``; ``--json PATH`` also writes the results. See :mod:`torchopt_edu.demo`.
"""

from __future__ import annotations

import copy
import dataclasses
from functools import partial
from pathlib import Path

from torch import nn
from torch.optim import Optimizer
from tqdm.auto import tqdm

from torchopt_edu import demo
from torchopt_edu.cli import _argtypes, _common
from torchopt_edu.cli._optimizers import optimizer_name, usable_names
from torchopt_edu.optim import resolve_optimizer


def build_parser() -> _common.Parser:
    """The ``torchopt-edu demo`` argument parser."""
    parser = _common.Parser(
        prog="torchopt-edu demo",
        description="Train a small MLP with every optimizer and compare loss, accuracy, speed.",
    )
    parser.add_argument(
        "--dataset",
        choices=["digits", "synthetic"],
        default="digits",
        help="digits (needs scikit-learn) or synthetic (needs nothing more)",
    )
    _common.add_optimizers(
        parser,
        default=list(demo.DEMO_HYPERPARAMETERS),
        convert=optimizer_name(closure=False),
        help=f"default: all of ours; any of {usable_names(closure=False)}",
    )
    parser.add_argument("--epochs", type=_argtypes.positive_int, default=15)
    parser.add_argument("--batch-size", type=_argtypes.positive_int, default=64)
    _common.add_common(parser, out="runs/demo", device="cpu")
    return parser


def _build(cls: type[Optimizer], hyperparameters: dict[str, float], model: nn.Module) -> Optimizer:
    return cls(model.parameters(), **hyperparameters)


def main(argv: list[str] | None = None) -> int:
    """Run the demo; return 0 (usage errors exit with 2 before any training)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.dataset == "digits":
        _common.require(
            parser,
            "sklearn",
            "--dataset digits",
            "pip install 'torchopt-edu[data]', or pass --dataset synthetic",
        )
    if not args.no_plot:
        _common.require_matplotlib(parser)
    _common.check_outputs(
        parser,
        folders=[("--out", None if args.no_plot else args.out)],
        files=[("--json", args.json)],
    )
    _common.check_json_apart(parser, args.json, [("the plot", Path(args.out) / "loss_curves.png")])

    train_split, test_split = (
        split.to(args.device) for split in demo.load_dataset(args.dataset, args.seed)
    )
    n_classes = int(train_split.labels.max()) + 1
    initial = demo.make_model(train_split.features.shape[1], n_classes, args.seed).to(args.device)
    results = []
    with tqdm(
        total=args.epochs * len(args.optimizers),
        desc="training",
        unit="epoch",
        disable=args.no_progress,
    ) as bar:
        for name in args.optimizers:
            bar.set_postfix_str(name)
            results.append(
                demo.train(
                    name,
                    partial(_build, resolve_optimizer(name), demo.demo_hyperparameters(name)),
                    copy.deepcopy(initial),
                    train_split,
                    test_split,
                    args.epochs,
                    args.batch_size,
                    args.seed,
                    progress=bar,
                )
            )
    print(
        f"\n{args.dataset}: {len(train_split.labels)} train / {len(test_split.labels)} test, "
        f"{args.epochs} epochs, batch {args.batch_size}, {args.device}\n"
    )
    print(demo.format_table(results))
    if args.json is not None:
        _common.write_json(
            args.json,
            {
                "dataset": args.dataset,
                "epochs": args.epochs,
                "batch_size": args.batch_size,
                "seed": args.seed,
                "device": str(args.device),
                "results": [dataclasses.asdict(result) for result in results],
            },
        )
        print(f"\nresults written to {args.json}")
    if not args.no_plot:
        _common.use_agg()
        path = _common.save_figure(
            demo.plot_losses(results), Path(args.out) / "loss_curves.png", dpi=100
        )
        print(f"\nloss curves saved to {path}")
    return 0
