"""``torchopt-edu tune``: search optimizers and hyper-parameters on a built-in task.

    torchopt-edu tune --task digits --n-trials 30 --optimizers adam,sgd,momentum
    torchopt-edu tune --storage postgresql://host/db --study-name shared   # one per worker
    torchopt-edu tune --task digits_mlp --optimizers adam --compare-samplers tpe,gp,random

The study is stored in ``<out>/study.db`` unless ``--storage`` says otherwise: stop it with
Ctrl+C and run the same command again to resume; run the same command in several terminals (or on
several machines with a database URL) to share the work. Prints the best trial and, for digits,
the test accuracy of the best configuration retrained; saves ``history.png`` and
``importance.png`` under ``--out``.

``--task`` may also name a benchmark workload (``digits_mlp``, ``diabetes``, ...): the objective is
then the number of training steps to its validation target (:func:`~torchopt_edu.tuning.compare.
workload_task`); such a trial trains to its target or step budget and reports no intermediate
value, so ``--epochs`` and a pruner do not apply (passing them exits 2).

A study records the settings its values depend on (``--task``, ``--epochs``, ``--seed``:
:func:`objective_settings`); rerunning it with others exits 2 naming them, as does resuming a study
with trials made before this record existed.

``--compare-samplers`` runs, instead of one stored study, one in-memory study per sampler and
``--seeds`` seed and prints the best value after a number of trials (mean and standard deviation
over the seeds), and saves ``samplers.png``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torchopt_edu.cli import _argtypes, _common
from torchopt_edu.cli._optimizers import optimizer_name, usable_names

if TYPE_CHECKING:
    from torchopt_edu.tuning import OptimizerConfig, SearchSpace, TrainFn, TuneResult
    from torchopt_edu.tuning.compare import SamplerComparison

TASKS = {
    "digits": "64-32-10 MLP on scikit-learn's digits; objective: validation cross-entropy",
    "quadratic": "the seed's (w + 2)^2 from w = 0; objective: loss after --epochs steps",
}
WORKLOAD_TASK = (
    "a benchmark workload; objective: steps to its validation target (no --epochs, no pruning: "
    "a trial reports only its result)"
)
DEFAULT_EPOCHS = {"digits": 10, "quadratic": 5}
PROG = "torchopt-edu tune"


def build_parser() -> _common.Parser:
    """The argument parser of ``torchopt-edu tune`` (needs Optuna)."""
    from torchopt_edu.tuning.config import CONSTANT_SCHEDULE, SCHEDULES
    from torchopt_edu.tuning.study import PRUNERS, SAMPLERS

    parser = _common.Parser(
        prog=PROG,
        description="Optuna search over optimizers, learning rates and schedules.",
    )
    from torchopt_edu.benchmark.workloads import WORKLOADS

    parser.add_argument(
        "--task",
        choices=sorted(TASKS) + sorted(WORKLOADS),
        default="digits",
        help="; ".join(f"{name}: {what}" for name, what in TASKS.items())
        + f"; {', '.join(sorted(WORKLOADS))}: {WORKLOAD_TASK}",
    )
    _common.add_optimizers(
        parser,
        default=(),
        convert=optimizer_name(closure=False),
        help=f"default: all of ours; any of {usable_names(closure=False)}",
    )
    schedules = [CONSTANT_SCHEDULE, *SCHEDULES]
    parser.add_argument(
        "--schedules",
        nargs="+",
        action=_common.NameList,
        default=[CONSTANT_SCHEDULE],
        metavar="NAME",
        help=f"any of {', '.join(schedules)}; default: {CONSTANT_SCHEDULE}",
    )
    parser.add_argument(
        "--n-trials",
        type=_argtypes.positive_int,
        default=30,
        help="the study's trial budget (default 30)",
    )
    parser.add_argument(
        "--epochs",
        type=_argtypes.positive_int,
        default=None,
        help="epochs per trial (gradient steps for quadratic); default: digits 10, quadratic 5; "
        "not for a workload task, which trains to its target",
    )
    parser.add_argument(
        "--pruner",
        choices=PRUNERS,
        default=None,
        help="default: median; a workload task's trials report nothing to prune on (none only)",
    )
    parser.add_argument(
        "--sampler",
        choices=SAMPLERS,
        default="tpe",
        help="tpe (default), gp (Gaussian process), cmaes (CMA-ES), nsga2 (NSGA-II), random",
    )
    parser.add_argument(
        "--storage", default=None, help="SQLite file or database URL; default: <out>/study.db"
    )
    parser.add_argument("--study-name", default=None, help="default: the task name")
    parser.add_argument(
        "--compare-samplers",
        nargs="+",
        action=_common.NameList,
        default=None,
        metavar="NAME",
        help=f"compare samplers (any of {', '.join(SAMPLERS)}) instead of running one study",
    )
    parser.add_argument(
        "--seeds",
        type=_argtypes.positive_int,
        default=3,
        help="with --compare-samplers: studies per sampler, seeded --seed, --seed + 1, ...",
    )
    _common.add_common(parser, out="runs/tune", device=None)
    parser.add_argument(
        "--no-plots", dest="no_plot", action="store_true", help="same as --no-plot (older spelling)"
    )
    return parser


def objective_name(task: str, epochs: int) -> str:
    """What the study minimises, as the plots label it."""
    if task == "digits":
        return "validation cross-entropy"
    if task == "quadratic":
        return f"loss after {epochs} steps"
    from torchopt_edu.benchmark import get_workload

    workload = get_workload(task)
    return f"steps to {workload.metric} {'>=' if workload.higher_is_better else '<='} " + (
        f"{workload.target}"
    )


def objective_settings(task: str, epochs: int, seed: int) -> dict[str, Any]:
    """The settings the values of ``task``'s trials depend on, which a study records and a rerun
    must repeat: the task; its epochs (steps for quadratic), except for a workload, which trains
    to its target; the seed of its data split, initial weights and batches, except for
    quadratic, which draws nothing."""
    settings: dict[str, Any] = {"task": task}
    if task in TASKS:
        settings["epochs"] = epochs
    if task != "quadratic":
        settings["seed"] = seed
    return settings


def _check_workload_flags(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Exit 2 for ``--epochs`` or a pruner given with a workload task, which use neither."""
    if args.task in TASKS:
        return
    if args.epochs is not None:
        parser.error(
            f"argument --epochs: --task {args.task} is a workload, trained until its validation "
            "target or its step budget; --epochs applies to digits and quadratic"
        )
    if args.pruner not in (None, "none"):
        parser.error(
            f"argument --pruner: --task {args.task} is a workload, whose trials report no "
            "intermediate values, so no pruner can stop them; leave --pruner out"
        )


def checkpoints(n_trials: int) -> list[int]:
    """The trial counts the sampler table shows: 5, 10, 20, 50, 100, ... below ``n_trials``,
    then ``n_trials``."""
    return [k for k in (5, 10, 20, 50, 100, 200, 500) if k < n_trials] + [n_trials]


def comparison_table(comparison: SamplerComparison) -> str:
    """The comparison as a Markdown table: best value (mean +- std over seeds) after k trials."""
    columns = checkpoints(comparison.n_trials)
    lines = [
        "| sampler | " + " | ".join(f"after {k}" for k in columns) + " | s/study |",
        "|---|" + "---:|" * (len(columns) + 1),
    ]
    for sampler, cells in comparison.rows(columns):
        shown = " | ".join(f"{mean:.4g} ± {std:.2g}" for mean, std in cells)
        lines.append(f"| {sampler} | {shown} | {comparison.seconds[sampler]:.1f} |")
    return "\n".join(lines)


def _compare(args: argparse.Namespace, space: SearchSpace, train: TrainFn, objective: str) -> int:
    """``--compare-samplers``: print the table, save the JSON and ``samplers.png``."""
    from torchopt_edu.tuning.compare import compare_samplers

    seeds = [args.seed + k for k in range(args.seeds)]
    print(
        f"comparing {', '.join(args.compare_samplers)} on {args.task}: seeds {seeds}, "
        f"{args.n_trials} trials each"
    )
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # one line per trial would flood
    comparison = compare_samplers(
        train, space, samplers=args.compare_samplers, seeds=seeds, n_trials=args.n_trials
    )
    print(f"best {objective} after k trials (mean ± std over {len(seeds)} seeds):")
    print(comparison_table(comparison))
    if args.json is not None:
        path = _common.write_json(args.json, dataclasses.asdict(comparison))
        print(f"results written to {path}")
    if not args.no_plot:
        _common.use_agg()
        import matplotlib.pyplot as plt

        figure, axes = plt.subplots(figsize=(6, 4))
        trials = range(1, comparison.n_trials + 1)
        for sampler in comparison.samplers:
            means = [comparison.best_after(sampler, k)[0] for k in trials]
            axes.plot(trials, means, label=sampler)
        axes.set(xlabel="trials", ylabel=f"best {objective}", title=f"Samplers on {args.task}")
        axes.legend()
        figure.tight_layout()
        print(f"plot: {_common.save_figure(figure, Path(args.out) / 'samplers.png')}")
    return 0


def _describe(config: OptimizerConfig) -> str:
    def show(arguments: dict[str, object]) -> str:
        return " ".join(
            f"{name}={value:.4g}" if isinstance(value, float) else f"{name}={value!r}"
            for name, value in arguments.items()
        )

    lines = [f"  optimizer: {config.optimizer_name}  {show(config.hyperparameters)}"]
    lines.append(f"  schedule:  {config.schedule_name}  {show(config.schedule_hyperparameters)}")
    return "\n".join(line.rstrip() for line in lines)


#: The plots tune saves under --out.
PLOTS = ("history.png", "importance.png", "samplers.png")


def _check_outputs(
    parser: argparse.ArgumentParser, args: argparse.Namespace, comparing: bool
) -> None:
    """Exit 2 unless ``--out`` (where it is used) and ``--json`` can be written, and the JSON
    is none of the files tune writes itself."""
    uses_out = (args.storage is None and not comparing) or not args.no_plot
    _common.check_outputs(
        parser, folders=[("--out", args.out if uses_out else None)], files=[("--json", args.json)]
    )
    _common.check_json_apart(parser, args.json, _owned_files(args))


def _check_comparison(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Exit 2 for an unknown sampler of ``--compare-samplers`` or seeds past 2**32-1."""
    from torchopt_edu.tuning import SAMPLERS

    if args.compare_samplers is None:
        return

    unknown = [name for name in args.compare_samplers if name not in SAMPLERS]
    if unknown:
        parser.error(
            f"argument --compare-samplers: unknown {unknown}; choose from {list(SAMPLERS)}"
        )
    _common.check_seed_range(parser, args.seed, args.seeds, "--seeds")


def _owned_files(args: argparse.Namespace) -> list[tuple[str, Path]]:
    """What tune writes itself: its plots and, for SQLite, the study's file
    (``<out>/study.db`` by default)."""
    owned = [(f"the plot {name}", args.out / name) for name in PLOTS]
    storage = args.storage
    if storage is None:
        owned.append(("the study's database", args.out / "study.db"))
    elif storage.startswith("sqlite:///"):
        owned.append(("the study's database", Path(storage.removeprefix("sqlite:///"))))
    elif "://" not in storage:
        owned.append(("the study's database", Path(storage)))
    return owned


def _summary(result: TuneResult, storage: str) -> str:
    states = Counter(trial.state.name.lower() for trial in result.study.trials)
    counts = ", ".join(f"{count} {state}" for state, count in sorted(states.items()))
    return (
        f"study {result.study.study_name!r} in {storage}: {len(result.study.trials)} trials "
        f"({counts})\nbest trial #{result.best_trial}: {result.best_value:.6g}\n"
        f"{_describe(result.best)}"
    )


def _study_error(error: ValueError, study_name: str, named: bool) -> str:
    """One line for a study that exists with another search space, direction or objective."""
    from torchopt_edu.tuning import ObjectiveMismatchError

    first = str(error).splitlines()[0].rstrip(":")
    flag = "another --study-name" if named else f"--study-name NAME (the default is {study_name!r})"
    own = (
        "--task, --epochs and --seed"
        if isinstance(error, ObjectiveMismatchError)
        else "--optimizers and --schedules"
    )
    return (
        f"{first}; start a new study with {flag} or another --out/--storage, or resume it with "
        f"its own {own}"
    )


def _task(task: str, epochs: int, seed: int) -> tuple[TrainFn, tuple[Any, Any, Any]]:
    """The training function of ``task``, and the digits splits (``None``s for other tasks)."""
    from torchopt_edu.tuning.compare import workload_task
    from torchopt_edu.tuning.tasks import (
        digits_mlp,
        load_digits_splits,
        quadratic_task,
        supervised_task,
    )

    if task == "digits":
        splits = load_digits_splits(seed)
        return supervised_task(digits_mlp, *splits[:2], epochs=epochs, seed=seed), splits
    if task == "quadratic":
        return quadratic_task(steps=epochs), (None, None, None)
    return workload_task(task, seed=seed), (None, None, None)


def main(argv: list[str] | None = None) -> int:
    """Run ``torchopt-edu tune`` with ``argv`` (default ``sys.argv[1:]``); return the exit code."""
    _common.require(_common.Parser(prog=PROG), "optuna", PROG, "pip install 'torchopt-edu[tune]'")
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_workload_flags(parser, args)
    if args.task not in ("quadratic",):
        _common.require(
            parser,
            "sklearn",
            f"--task {args.task}",
            "pip install 'torchopt-edu[data]', or pass --task quadratic",
        )
    if not args.no_plot:
        _common.require_matplotlib(parser)
    comparing = args.compare_samplers is not None
    _check_outputs(parser, args, comparing)
    _check_comparison(parser, args)

    import optuna

    from torchopt_edu.tuning import (
        NoCompletedTrialError,
        SearchSpace,
        StorageError,
        open_storage,
        tune,
    )
    from torchopt_edu.tuning.tasks import accuracy, digits_mlp, fit, init_model

    epochs = args.epochs or DEFAULT_EPOCHS.get(args.task, 0)
    try:
        space = SearchSpace(args.optimizers or None, args.schedules)
    except (ValueError, TypeError) as error:
        parser.error(f"argument --optimizers/--schedules: {error}")
    train, (train_data, valid_data, test_data) = _task(args.task, epochs, args.seed)
    if comparing:
        return _compare(args, space, train, objective_name(args.task, epochs))
    storage = args.storage or str(args.out / "study.db")
    try:
        backend = open_storage(storage)
    except StorageError as error:  # a damaged file, an unreachable server: named in the message
        parser.error(f"argument --storage: {error}")
    except Exception as error:  # a bad URL, a missing driver
        parser.error(
            f"argument --storage: cannot open {storage!r}: {type(error).__name__}: {error}"
        )
    study_name = args.study_name or args.task
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the bar and the summary say enough
    try:
        result = tune(
            train,
            space,
            n_trials=args.n_trials,
            storage=backend,
            study_name=study_name,
            pruner=args.pruner or ("median" if args.task in TASKS else "none"),
            sampler=args.sampler,
            seed=args.seed,
            progress_bar=not args.no_progress,
            objective=objective_settings(args.task, epochs, args.seed),
        )
    except KeyboardInterrupt:
        print(f"\ninterrupted: the study is saved in {storage}; run the same command to resume")
        return 130
    except ValueError as error:  # the study exists with another space, direction or objective
        if not str(error).startswith("study "):
            parser.error(str(error))
        parser.error(_study_error(error, study_name, args.study_name is not None))
    except (NoCompletedTrialError, StorageError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    finally:
        optuna.logging.set_verbosity(verbosity)
    print(_summary(result, storage))
    summary: dict[str, Any] = {
        "study": study_name,
        "storage": storage,
        "trials": len(result.study.trials),
        "best_trial": result.best_trial,
        "best_value": result.best_value,
        "objective": objective_name(args.task, epochs),
        "best": result.best.to_dict(),
    }
    if args.task == "digits":
        model = init_model(digits_mlp, args.seed)
        valid_loss = fit(model, result.best, train_data, valid_data, epochs=epochs, seed=args.seed)
        summary["retrained_valid_loss"] = valid_loss
        summary["test_accuracy"] = accuracy(model, test_data)
        print(
            f"best configuration retrained: validation loss {valid_loss:.6g}, "
            f"test accuracy {summary['test_accuracy']:.4f}"
        )
    if args.json is not None:
        print(f"results written to {_common.write_json(args.json, summary)}")
    if not args.no_plot:
        _common.use_agg()
        from torchopt_edu.tuning.plots import plot_history, plot_importance

        paths = []
        for name, plot in (("history", plot_history), ("importance", plot_importance)):
            axes = plot(result.study, objective_name(args.task, epochs))
            axes.figure.tight_layout()
            paths.append(_common.save_figure(axes.figure, Path(args.out) / f"{name}.png"))
        print("plots: " + ", ".join(str(path) for path in paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
