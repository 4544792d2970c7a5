"""``torchopt-edu benchmark``: which optimizer reaches the validation target first (AlgoPerf style).

    torchopt-edu benchmark --quick                                  # CI smoke test, seconds
    torchopt-edu benchmark --trials 5 --studies 3 --out runs/benchmark  # the full run
    torchopt-edu benchmark --workloads digits_mlp,sbm_gcn --optimizers adam,torch.optim.Adam

Two tracks: ``external`` (each optimizer tuned by ``--trials`` random draws from its default
search space, in each of ``--studies`` studies) and ``self`` (defaults only, one trial per study:
the learning-rate-free methods' track). Writes under ``--out``:

- ``trials.json``: every finished trial (configuration, seed, steps and seconds to the target,
  validation curve), rewritten atomically after each trial. Run the same command again after an
  interruption and only the missing trials run;
- ``results.md``: per track, the time-to-target tables in steps, training CPU seconds and wall
  seconds, with the scores;
- ``profiles.png``: the performance profiles, per track, by each of the three.

With ``--storage`` (a SQLite file or a ``postgresql://`` URL) the trials live in a database
instead of ``trials.json``, and any number of workers running the same command share the work.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torchopt_edu.cli import _argtypes, _common
from torchopt_edu.cli._optimizers import optimizer_name, usable_names

if TYPE_CHECKING:
    from torchopt_edu.benchmark import TrialResult

PROG = "torchopt-edu benchmark"
FORMAT = 2
"""Version of ``trials.json``'s layout."""
QUICK = {"trials": 2, "studies": 1, "optimizers": ["adam", "sgd"], "self_optimizers": ["prodigy"]}
"""What ``--quick`` sets, unless the flag is given."""


def build_parser() -> _common.Parser:
    """The argument parser of ``torchopt-edu benchmark``."""
    from torchopt_edu.benchmark import EXTERNAL_OPTIMIZERS, SELF_TUNING_OPTIMIZERS, WORKLOADS

    parser = _common.Parser(
        prog=PROG,
        description="Time to a validation target on small workloads, with performance profiles.",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"smoke test: {QUICK['trials']} trials, {QUICK['studies']} study, optimizers "
        f"{','.join(QUICK['optimizers'])} (self track: {','.join(QUICK['self_optimizers'])}), "
        "unless given",
    )
    parser.add_argument(
        "--workloads",
        nargs="+",
        action=_common.NameList,
        convert=_workload_name,
        default=list(WORKLOADS),
        metavar="NAME",
        help=f"any of {', '.join(WORKLOADS)} (default: all)",
    )
    parser.add_argument(
        "--track",
        choices=("external", "self", "both"),
        default="both",
        help="external: tuned with --trials draws per study; self: defaults only (default: both)",
    )
    _common.add_optimizers(
        parser,
        default=(),
        convert=optimizer_name(closure=False),
        help=(
            f"external track (default: {','.join(EXTERNAL_OPTIMIZERS)}); "
            f"any of {usable_names(closure=False)}"
        ),
    )
    parser.add_argument(
        "--self-optimizers",
        nargs="+",
        action=_common.NameList,
        convert=optimizer_name(closure=False),
        default=[],
        metavar="NAME",
        help=f"self-tuning track (default: {','.join(SELF_TUNING_OPTIMIZERS)})",
    )
    parser.add_argument(
        "--trials",
        type=_argtypes.positive_int,
        default=None,
        help="tuning trials per study, external track (default 5)",
    )
    parser.add_argument(
        "--studies",
        type=_argtypes.positive_int,
        default=None,
        help="independent studies; an optimizer's time is the median over them (default 3)",
    )
    parser.add_argument(
        "--threads",
        type=_argtypes.positive_int,
        default=1,
        help="torch CPU threads (default 1: the workloads are small, and one thread times best)",
    )
    parser.add_argument(
        "--storage",
        default=None,
        metavar="URL",
        help="keep the trials in a database that several workers share (a SQLite file or a "
        "postgresql:// URL; run the same command in each worker) instead of <out>/trials.json",
    )
    parser.add_argument(
        "--study-name",
        default="torchopt-edu-benchmark",
        help="the study holding the trials in --storage (default torchopt-edu-benchmark)",
    )
    _common.add_common(parser, out="runs/benchmark", device=None)
    return parser


def _workload_name(text: str) -> str:
    import argparse

    from torchopt_edu.benchmark import WORKLOADS

    if text not in WORKLOADS:
        raise argparse.ArgumentTypeError(
            f"unknown workload {text!r}: choose from {', '.join(WORKLOADS)}"
        )
    return text


def _settings(args: Any) -> dict[str, Any]:
    """The tracks to run, each with its optimizers, and the trial and study counts."""
    from torchopt_edu.benchmark import EXTERNAL_OPTIMIZERS, SELF_TUNING_OPTIMIZERS

    quick = args.quick
    fields = {
        "external": args.optimizers
        or (QUICK["optimizers"] if quick else list(EXTERNAL_OPTIMIZERS)),
        "self": args.self_optimizers
        or (QUICK["self_optimizers"] if quick else list(SELF_TUNING_OPTIMIZERS)),
    }
    tracks = ("external", "self") if args.track == "both" else (args.track,)
    return {
        "tracks": {track: fields[track] for track in tracks},
        "trials": args.trials or (QUICK["trials"] if quick else 5),
        "studies": args.studies or (QUICK["studies"] if quick else 3),
    }


def load_trials(path: Path, seed: int) -> list[TrialResult]:
    """The records in ``path`` (none if it does not exist).

    Raises:
        ValueError: the file is not a trials file of this format, or holds another seed's run.
    """
    from torchopt_edu.benchmark import TrialResult

    if not path.exists():
        return []
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        stored_seed, records = data["seed"], data["trials"]
        if data.get("format") != FORMAT:
            raise ValueError(f"format {data.get('format')!r}, expected {FORMAT}")
        results = [TrialResult.from_dict(record) for record in records]
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{path} is not a trials file of this benchmark: {error}") from None
    if stored_seed != seed:
        raise ValueError(
            f"{path} holds a run with --seed {stored_seed}: pass --seed {stored_seed} to resume "
            "it, or another --out"
        )
    return results


def save_trials(path: Path, seed: int, results: list[TrialResult]) -> None:
    """Write the records to ``path`` atomically: a temporary file in its folder, then a rename,
    so an interruption leaves either the old file or the new one, never half of one."""
    data = {"format": FORMAT, "seed": seed, "trials": [result.to_dict() for result in results]}
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with temporary.open("w", encoding="utf-8") as file:
            json.dump(_common.finite_or_none(data), file, allow_nan=False)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _count(number: int, noun: str) -> str:
    plural = noun[:-1] + "ies" if noun.endswith("y") else noun + "s"
    return f"{number} {noun if number == 1 else plural}"


def _report(results_by_track: dict[str, list[TrialResult]], settings: dict[str, Any]) -> str:
    from torchopt_edu.benchmark import format_table

    sections = []
    for track, results in results_by_track.items():
        what = (
            f"tuned: best of {settings['trials']} random draws from the default search space"
            if track == "external"
            else "self-tuning: default hyper-parameters, no tuning"
        )
        sections.append(
            f"### {track} track ({what}; median over {_count(settings['studies'], 'study')})\n\n"
            f"Steps to the target:\n\n{format_table(results, 'steps')}\n\n"
            f"Training CPU seconds to the target:\n\n{format_table(results, 'cpu_seconds')}\n\n"
            f"Training wall seconds to the target:\n\n{format_table(results, 'seconds')}\n"
        )
    return "\n".join(sections)


def _plot(results_by_track: dict[str, list[TrialResult]], path: Path) -> Path:
    _common.use_agg()
    import matplotlib.pyplot as plt

    from torchopt_edu.benchmark import performance_ratios, time_to_target
    from torchopt_edu.benchmark.plots import plot_profiles

    rows = len(results_by_track)
    figure, axes = plt.subplots(rows, 3, figsize=(16, 4.2 * rows), squeeze=False)
    for row, (track, results) in enumerate(results_by_track.items()):
        for column, by in enumerate(("steps", "cpu_seconds", "seconds")):
            ratios = performance_ratios(time_to_target(results, by))
            plot_profiles(ratios, title=f"{track} track, by {by}", ax=axes[row][column])
    figure.tight_layout()
    return _common.save_figure(figure, path, dpi=90)


def _run_shared(
    parser: _common.Parser, args: Any, optimizers: list[str], common: dict[str, Any]
) -> list[TrialResult]:
    """:func:`~torchopt_edu.benchmark.run_shared` on ``--storage``; a usage error for a database
    that cannot be opened or that holds another seed's run."""
    from torchopt_edu.benchmark import run_shared
    from torchopt_edu.tuning import open_storage

    try:
        backend = open_storage(args.storage)
    except Exception as error:  # a bad URL, a missing driver, an unreachable server
        parser.error(
            f"argument --storage: cannot open {args.storage!r}: {type(error).__name__}: {error}"
        )
    try:
        return run_shared(
            args.workloads, optimizers, storage=backend, study_name=args.study_name, **common
        )
    except ValueError as error:  # the study holds another seed's run
        parser.error(f"argument --storage: {error}")


def main(argv: list[str] | None = None) -> int:
    """Run ``torchopt-edu benchmark`` with ``argv``; return the exit code."""
    _common.require(_common.Parser(prog=PROG), "optuna", PROG, "pip install 'torchopt-edu[tune]'")
    parser = build_parser()
    args = parser.parse_args(argv)
    _common.require(parser, "sklearn", PROG, "pip install 'torchopt-edu[data]'")
    if not args.no_plot:
        _common.require_matplotlib(parser)
    _common.check_outputs(parser, folders=[("--out", args.out)], files=[("--json", args.json)])
    _common.check_json_apart(
        parser,
        args.json,
        [
            (f"the output {name}", args.out / name)
            for name in ("trials.json", "results.md", "profiles.png")
        ],
    )

    import torch

    from torchopt_edu.benchmark import (
        MEASURES,
        benchmark_score,
        performance_ratios,
        plan_trials,
        run_benchmark,
        time_to_target,
    )

    settings = _settings(args)
    path = args.out / "trials.json"
    try:
        stored = [] if args.storage else load_trials(path, args.seed)
        plans = {
            track: plan_trials(
                args.workloads,
                optimizers,
                track=track,
                trials=settings["trials"],
                studies=settings["studies"],
                seed=args.seed,
            )
            for track, optimizers in settings["tracks"].items()
        }
    except ValueError as error:
        parser.error(str(error))
    torch.set_num_threads(args.threads)
    records = {record.key: record for record in stored}
    planned = [planned.key for plan in plans.values() for planned in plan]
    todo = sum(key not in records for key in planned)
    where = f"study {args.study_name!r} in {args.storage}" if args.storage else str(path)
    print(
        f"{len(planned)} trials planned, {len(planned) - todo} already in {where}, {todo} to run "
        f"({_count(settings['trials'], 'trial')} x {_count(settings['studies'], 'study')}, "
        f"seed {args.seed})"
        if not args.storage
        else f"{len(planned)} trials planned, shared with the other workers of {where}"
    )
    bar = None
    if not args.no_progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(planned), initial=len(planned) - todo, unit="trial")
    ran = []

    def keep(record: TrialResult) -> None:
        ran.append(record)
        if not args.storage:
            records[record.key] = record
            save_trials(path, args.seed, list(records.values()))
        if bar is not None:
            bar.set_postfix_str(f"{record.key.workload} {record.key.optimizer}")
            bar.update()

    start = time.perf_counter()
    results_by_track = {}
    try:
        for track, optimizers in settings["tracks"].items():
            common = {
                "track": track,
                "trials": settings["trials"],
                "studies": settings["studies"],
                "seed": args.seed,
                "on_trial": keep,
            }
            if args.storage:
                results = _run_shared(parser, args, optimizers, common)
            else:
                results = run_benchmark(args.workloads, optimizers, done=stored, **common)
            results_by_track[track] = results
    except KeyboardInterrupt:
        print(
            f"\ninterrupted: the finished trials are saved in {where}; run the same command to "
            "resume"
        )
        return 130
    finally:
        if bar is not None:
            bar.close()
    seconds = time.perf_counter() - start
    print(f"ran {len(ran)} trials in {seconds:.1f} s\n")
    report = _report(results_by_track, settings)
    print(report)
    (args.out / "results.md").write_text(report, encoding="utf-8")
    outputs = [args.out / "results.md"] if args.storage else [path, args.out / "results.md"]
    if not args.no_plot:
        outputs.append(_plot(results_by_track, args.out / "profiles.png"))
    if args.json is not None:
        summary = {
            track: {
                by: {
                    "time_to_target": time_to_target(results, by),
                    "score": benchmark_score(performance_ratios(time_to_target(results, by))),
                }
                for by in MEASURES
            }
            for track, results in results_by_track.items()
        }
        outputs.append(_common.write_json(args.json, {"settings": settings, **summary}))
    print("written: " + ", ".join(str(output) for output in outputs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
