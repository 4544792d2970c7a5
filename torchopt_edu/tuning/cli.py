"""``torchopt-edu tune``: search optimizers and hyper-parameters on a built-in task.

    torchopt-edu tune --task digits --n-trials 30 --optimizers adam,sgd,momentum
    torchopt-edu tune --storage postgresql://host/db --study-name shared   # one per worker

The study is stored in ``<out>/study.db`` unless ``--storage`` says otherwise: stop it with
Ctrl+C and run the same command again to resume; run the same command in several terminals (or on
several machines with a database URL) to share the work. Prints the best trial and, for digits,
the test accuracy of the best configuration retrained; saves ``history.png`` and
``importance.png`` under ``--out``.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

import optuna

from torchopt_edu._argtypes import positive_int
from torchopt_edu.tuning.config import CONSTANT_SCHEDULE, SCHEDULES, OptimizerConfig
from torchopt_edu.tuning.space import SearchSpace
from torchopt_edu.tuning.study import (
    MAX_SEED,
    PRUNERS,
    NoCompletedTrialError,
    TuneResult,
    open_storage,
    tune,
)
from torchopt_edu.tuning.tasks import (
    accuracy,
    digits_mlp,
    fit,
    init_model,
    load_digits_splits,
    quadratic_task,
    supervised_task,
)

TASKS = {
    "digits": "64-32-10 MLP on scikit-learn's digits; objective: validation cross-entropy",
    "quadratic": "the seed's (w + 2)^2 from w = 0; objective: loss after --epochs steps",
}
DEFAULT_EPOCHS = {"digits": 10, "quadratic": 5}


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"must be an integer in [0, {MAX_SEED}], got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``torchopt-edu tune``."""
    parser = argparse.ArgumentParser(
        prog="torchopt-edu tune",
        description="Optuna search over optimizers, learning rates and schedules.",
    )
    parser.add_argument(
        "--task",
        choices=sorted(TASKS),
        default="digits",
        help="; ".join(f"{name}: {what}" for name, what in TASKS.items()),
    )
    parser.add_argument(
        "--optimizers",
        type=_names,
        default=None,
        help="comma-separated names: ours (sgd, momentum, adagrad, rmsprop, adam, adamw, yogi) "
        "or torch.optim.<Name>; default: all of ours",
    )
    parser.add_argument(
        "--schedules",
        type=_names,
        default=[CONSTANT_SCHEDULE],
        help=f"comma-separated: {', '.join([CONSTANT_SCHEDULE, *SCHEDULES])}; default: constant",
    )
    parser.add_argument(
        "--n-trials", type=positive_int, default=30, help="the study's trial budget (default 30)"
    )
    parser.add_argument(
        "--epochs",
        type=positive_int,
        default=None,
        help="epochs per trial (gradient steps for quadratic); default: digits 10, quadratic 5",
    )
    parser.add_argument("--pruner", choices=PRUNERS, default="median", help="default: median")
    parser.add_argument(
        "--storage", default=None, help="SQLite file or database URL; default: <out>/study.db"
    )
    parser.add_argument("--study-name", default=None, help="default: the task name")
    parser.add_argument("--seed", type=_seed, default=0, help="sampler and training seed")
    parser.add_argument("--out", type=Path, default=Path("runs/tune"), help="output folder")
    parser.add_argument("--no-plots", action="store_true", help="do not save the plots")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def _describe(config: OptimizerConfig) -> str:
    def show(arguments: dict[str, object]) -> str:
        return " ".join(
            f"{name}={value:.4g}" if isinstance(value, float) else f"{name}={value!r}"
            for name, value in arguments.items()
        )

    lines = [f"  optimizer: {config.optimizer_name}  {show(config.hyperparameters)}"]
    lines.append(f"  schedule:  {config.schedule_name}  {show(config.schedule_hyperparameters)}")
    return "\n".join(line.rstrip() for line in lines)


def _summary(result: TuneResult, storage: str) -> str:
    states = Counter(trial.state.name.lower() for trial in result.study.trials)
    counts = ", ".join(f"{count} {state}" for state, count in sorted(states.items()))
    return (
        f"study {result.study.study_name!r} in {storage}: {len(result.study.trials)} trials "
        f"({counts})\nbest trial #{result.best_trial}: {result.best_value:.6g}\n"
        f"{_describe(result.best)}"
    )


def main(argv: list[str] | None = None) -> int:
    """Run ``torchopt-edu tune`` with ``argv`` (default ``sys.argv[1:]``); return the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    epochs = args.epochs or DEFAULT_EPOCHS[args.task]
    try:
        space = SearchSpace(args.optimizers, args.schedules)
    except (ValueError, TypeError) as error:
        parser.error(f"--optimizers/--schedules: {error}")
    if args.storage is None or not args.no_plots:  # --out is used: check it can be a folder
        try:
            args.out.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            parser.error(f"argument --out: cannot create the folder {str(args.out)!r}: {error}")
    storage = args.storage or str(args.out / "study.db")
    try:
        backend = open_storage(storage)
    except Exception as error:  # a bad URL, a missing driver, an unreachable server
        parser.error(
            f"argument --storage: cannot open {storage!r}: {type(error).__name__}: {error}"
        )
    if args.task == "digits":
        train_data, valid_data, test_data = load_digits_splits(args.seed)
        train = supervised_task(digits_mlp, train_data, valid_data, epochs=epochs, seed=args.seed)
    else:
        train = quadratic_task(steps=epochs)

    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the bar and the summary say enough
    try:
        result = tune(
            train,
            space,
            n_trials=args.n_trials,
            storage=backend,
            study_name=args.study_name or args.task,
            pruner=args.pruner,
            seed=args.seed,
            progress_bar=not args.no_progress,
        )
    except KeyboardInterrupt:
        print(f"\ninterrupted: the study is saved in {storage}; run the same command to resume")
        return 130
    except ValueError as error:  # the study exists with another search space or direction
        parser.error(f"argument --study-name: {error}")
    except NoCompletedTrialError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    finally:
        optuna.logging.set_verbosity(verbosity)
    print(_summary(result, storage))
    if args.task == "digits":
        model = init_model(digits_mlp, args.seed)
        valid_loss = fit(model, result.best, train_data, valid_data, epochs=epochs, seed=args.seed)
        print(
            f"best configuration retrained: validation loss {valid_loss:.6g}, "
            f"test accuracy {accuracy(model, test_data):.4f}"
        )
    if not args.no_plots:
        from torchopt_edu.tuning.plots import save_plots

        paths = save_plots(result.study, args.out)
        print("plots: " + ", ".join(str(path) for path in paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
