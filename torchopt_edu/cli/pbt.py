"""``torchopt-edu pbt``: population-based training of an optimizer's hyper-parameters.

    torchopt-edu pbt --workload digits_mlp --optimizer adam --population 8 --rounds 12
    torchopt-edu pbt --workload digits_mlp --compare-seeds 3      # PBT vs TPE and random search

The population is saved to ``<out>/population.pt`` after every round: stop the run with Ctrl+C
and run the same command again to resume it. Prints each round's best and mean score, and the
best member's final hyper-parameters; saves every member's hyper-parameter schedule to
``<out>/schedules.json`` and plots it (``<out>/schedules.png``). ``--compare-seeds N`` instead
runs PBT, TPE and random search at equal compute (``population`` trials of ``rounds * interval``
steps) with seeds ``--seed .. --seed + N - 1`` and prints the best validation score of each.
"""

from __future__ import annotations

import math
import statistics
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torchopt_edu.cli import _argtypes, _common
from torchopt_edu.cli._optimizers import optimizer_name

if TYPE_CHECKING:
    from torchopt_edu.tuning.pbt import Member

PROG = "torchopt-edu pbt"


def build_parser() -> _common.Parser:
    """The argument parser of ``torchopt-edu pbt``."""
    from torchopt_edu.benchmark.workloads import WORKLOADS

    parser = _common.Parser(
        prog=PROG, description="Population-based training (Jaderberg et al. 2017)."
    )
    parser.add_argument("--workload", choices=sorted(WORKLOADS), default="digits_mlp")
    parser.add_argument(
        "--optimizer",
        type=optimizer_name(closure=False),
        default="adam",
        help="the optimizer of every member; its default search space is explored",
    )
    for flag, default, what in (
        ("--population", 8, "members"),
        ("--interval", 50, "training steps per round"),
        ("--rounds", 12, "rounds (a resumed run trains until it has this many)"),
        ("--workers", 2, "training processes (0: this process)"),
    ):
        convert = _argtypes.non_negative_int if flag == "--workers" else _argtypes.positive_int
        parser.add_argument(flag, type=convert, default=default, help=f"{what} (default {default})")
    parser.add_argument(
        "--compare-seeds",
        type=_argtypes.positive_int,
        default=None,
        metavar="N",
        help="compare PBT with TPE and random search at equal compute over N seeds",
    )
    _common.add_common(parser, out="runs/pbt", device=None)
    return parser


def _round_line(round_: int, members: list[Member], higher_is_better: bool) -> str:
    """``round r: best s, mean m, k members had copied``; the best by the metric's direction."""
    copies = sum(m.copied_from is not None for m in members)
    finite = [m.score for m in members if math.isfinite(m.score)]
    best = (max if higher_is_better else min)(finite) if finite else math.nan
    mean = statistics.fmean(finite) if finite else math.nan
    return f"round {round_ + 1}: best {best:.4f}, mean {mean:.4f}, {copies} members had copied"


def _compare(args: Any) -> int:
    import optuna

    from torchopt_edu.tuning.pbt import pbt_against_search

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # one line per trial would flood
    rows: dict[str, list[float]] = {}
    for seed in range(args.seed, args.seed + args.compare_seeds):
        scores = pbt_against_search(
            args.workload,
            args.optimizer,
            population=args.population,
            interval=args.interval,
            rounds=args.rounds,
            workers=args.workers,
            seed=seed,
        )
        print(f"seed {seed}: " + ", ".join(f"{k} {v:.4f}" for k, v in scores.items()))
        for method, score in scores.items():
            rows.setdefault(method, []).append(score)
    steps = args.population * args.rounds * args.interval
    print(f"\nbest validation score at {steps} training steps per method:")
    print("| method | mean | std | per seed |\n|---|---:|---:|---|")
    for method, scores in rows.items():
        spread = statistics.stdev(scores) if len(scores) > 1 else 0.0
        shown = ", ".join(f"{s:.4f}" for s in scores)
        print(f"| {method} | {statistics.fmean(scores):.4f} | {spread:.4f} | {shown} |")
    if args.json is not None:
        print(f"results written to {_common.write_json(args.json, rows)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run ``torchopt-edu pbt`` with ``argv`` (default ``sys.argv[1:]``); return the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.population < 2:
        parser.error(f"argument --population: must be an integer >= 2, got {args.population}")
    if not args.no_plot:
        _common.require_matplotlib(parser)
    _common.check_outputs(parser, folders=[("--out", args.out)], files=[("--json", args.json)])
    out = Path(args.out)
    _common.check_json_apart(
        parser,
        args.json,
        [
            ("the population checkpoint", out / "population.pt"),
            ("the schedules", out / "schedules.json"),
            ("the plot", out / "schedules.png"),
        ],
    )
    if args.compare_seeds is not None:
        _common.check_seed_range(parser, args.seed, args.compare_seeds, "--compare-seeds")
        return _compare(args)

    from torchopt_edu.benchmark import get_workload
    from torchopt_edu.tuning.pbt import population_based_training

    higher_is_better = get_workload(args.workload).higher_is_better
    checkpoint = Path(args.out) / "population.pt"
    if checkpoint.exists():
        print(f"resuming from {checkpoint}")
    try:
        result = population_based_training(
            args.workload,
            args.optimizer,
            population=args.population,
            interval=args.interval,
            rounds=args.rounds,
            workers=args.workers,
            seed=args.seed,
            checkpoint=checkpoint,
            on_round=lambda round_, members: print(
                _round_line(round_, members, higher_is_better), flush=True
            ),
        )
    except KeyboardInterrupt:
        print(f"\ninterrupted: the population is saved in {checkpoint}; run again to resume")
        return 130
    except ValueError as error:  # a checkpoint of another run, or a damaged one
        print(f"error: {error}", file=sys.stderr)
        return 1
    if result.rounds > args.rounds:
        print(
            f"{checkpoint} already holds {result.rounds} rounds, more than --rounds "
            f"{args.rounds}: nothing was trained; the result is its population after them"
        )
    best = result.best
    print(f"best member #{best.index}: {result.metric} {best.score:.4f}")
    print(f"  {result.optimizer_name} {best.hyperparameters}")
    schedules = _common.write_json(Path(args.out) / "schedules.json", result.schedules)
    print(f"schedules: {schedules}")
    if args.json is not None:
        summary = {
            "best_member": best.index,
            "best_score": best.score,
            "metric": result.metric,
            "best_hyperparameters": best.hyperparameters,
            "total_steps": result.total_steps,
        }
        print(f"results written to {_common.write_json(args.json, summary)}")
    if not args.no_plot:
        _common.use_agg()
        from torchopt_edu.tuning.plots import plot_pbt_schedules

        figure = plot_pbt_schedules(result)
        print(f"plot: {_common.save_figure(figure, Path(args.out) / 'schedules.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
