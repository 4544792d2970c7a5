"""``torchopt-edu lr-robustness``: which optimizers recover from a bad initial step size.

Trains the demo's digits MLP with each optimizer from each initial step size
(:mod:`torchopt_edu.robustness`), prints a Markdown table of test accuracy per optimizer and
initial step size (mean over seeds, and the worst seed), and writes ``--json PATH``.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics

from torchopt_edu import robustness
from torchopt_edu.cli import _argtypes, _common
from torchopt_edu.robustness import FROM_INITIAL_STEP, RobustnessResult


def _optimizer(text: str) -> str:
    name = text.lower()
    if name not in FROM_INITIAL_STEP:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not in the robustness study; choose from {', '.join(FROM_INITIAL_STEP)}"
        )
    return name


def build_parser() -> _common.Parser:
    """The ``torchopt-edu lr-robustness`` argument parser."""
    parser = _common.Parser(
        prog="torchopt-edu lr-robustness",
        description="Train the digits MLP from deliberately bad initial step sizes and compare "
        "which optimizers recover.",
    )
    parser.add_argument(
        "--initial-steps",
        type=_argtypes.positive_float,
        nargs="+",
        default=list(robustness.BAD_INITIAL_STEPS),
        metavar="LR",
        help="initial step sizes (default 1e-5 10)",
    )
    _common.add_optimizers(
        parser,
        default=list(FROM_INITIAL_STEP),
        convert=_optimizer,
        help=f"default: all of {', '.join(FROM_INITIAL_STEP)}",
    )
    parser.add_argument(
        "--seeds", type=_argtypes.positive_int, default=3, help="seeds from --seed (default 3)"
    )
    parser.add_argument("--epochs", type=_argtypes.positive_int, default=10)
    parser.add_argument("--batch-size", type=_argtypes.positive_int, default=64)
    _common.add_common(parser, device=None, progress=False, plot=False)
    return parser


def format_table(results: list[RobustnessResult]) -> str:
    """Test accuracy per optimizer (rows) and initial step size (columns), as Markdown.

    Each cell: the mean over seeds, the worst seed in brackets, and the step size the
    optimizer ended with (mean over seeds).
    """
    steps = list(dict.fromkeys(r.initial_step for r in results))
    names = list(dict.fromkeys(r.optimizer for r in results))
    lines = [
        "| optimizer | "
        + " | ".join(f"from {step:g}: accuracy (worst), final step" for step in steps)
        + " |",
        "|---|" + "---:|" * len(steps),
    ]
    for name in names:
        cells = []
        for step in steps:
            runs = [r for r in results if (r.optimizer, r.initial_step) == (name, step)]
            accuracy = statistics.mean(r.test_accuracy for r in runs)
            worst = min(r.test_accuracy for r in runs)
            final = statistics.mean(r.final_step for r in runs)
            cells.append(f"{100 * accuracy:.1f}% ({100 * worst:.1f}%), {final:.2g}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the study and print the table; return 0 (usage errors exit with 2 up front)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _common.require(parser, "sklearn", "the digits data set", "pip install 'torchopt-edu[data]'")
    _common.check_outputs(parser, files=[("--json", args.json)])
    _common.check_seed_range(parser, args.seed, args.seeds, "--seeds")
    seeds = range(args.seed, args.seed + args.seeds)
    results = robustness.lr_robustness(
        args.initial_steps, args.optimizers, seeds, args.epochs, args.batch_size
    )
    print(
        f"digits MLP, {args.epochs} epochs, batch {args.batch_size}, seeds {seeds.start} to "
        f"{seeds.stop - 1}; test accuracy (chance is about 10%)\n"
    )
    print(format_table(results))
    if args.json is not None:
        _common.write_json(args.json, [dataclasses.asdict(r) for r in results])
        print(f"\nresults written to {args.json}")
    return 0
