"""``torchopt-edu learn-optimizer``: meta-train the learned optimizer with antithetic ES.

Example::

    torchopt-edu learn-optimizer --minutes 15 --out runs/learned           # with the graph stage
    torchopt-edu learn-optimizer --minutes 15 --no-graph --out runs/coord  # the ablation
    torchopt-edu learn-optimizer --minutes 15 --out runs/learned --resume  # continue a run

runs meta-steps until ``--steps`` or ``--minutes`` runs out, writes ``checkpoint.pt`` every
``--checkpoint-every`` meta-steps and at the end (``--resume`` continues from it, exactly), and
writes ``weights.pt`` (load it with ``torchopt_edu.learned.load_net`` and pass it as
``LearnedOptimizer(params, net=...)``), ``history.json`` and ``meta_loss.png`` under ``--out``.

``torchopt-edu learn-optimizer --evaluate --seeds 10 --out runs/held-out`` runs the held-out
evaluation instead (:func:`torchopt_edu.learned.evaluate.evaluate`): it prints the summary
table and writes ``evaluation.json`` (every run's losses and metrics) and ``held_out.png``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from tqdm import tqdm

from torchopt_edu.cli import _argtypes, _common
from torchopt_edu.learned.meta import MetaTrainer
from torchopt_edu.learned.nets import LearnedNet
from torchopt_edu.learned.tasks import FAMILIES
from torchopt_edu.learned.weights import save_net

#: Fixed tasks on which the weights are scored before and after meta-training.
VALIDATION_SEED = 10_000


#: The files the command writes under --out (training, then --evaluate).
OUTPUTS = (
    "checkpoint.pt",
    "weights.pt",
    "history.json",
    "meta_loss.png",
    "evaluation.json",
    "held_out.png",
)


def build_parser() -> _common.Parser:
    """The argument parser of ``torchopt-edu learn-optimizer``."""
    parser = _common.Parser(
        prog="torchopt-edu learn-optimizer",
        description="Meta-train the learned optimizer (antithetic evolution strategies).",
    )
    parser.add_argument(
        "--steps", type=_argtypes.positive_int, default=1000, help="meta-steps at most (1000)"
    )
    parser.add_argument(
        "--minutes",
        type=_argtypes.positive_float,
        default=None,
        help="stop after this many minutes of meta-training (default: no limit)",
    )
    parser.add_argument(
        "--families",
        nargs="+",
        action=_common.NameList,
        convert=_family,
        default=list(FAMILIES),
        help=f"task families (default all: {', '.join(FAMILIES)})",
    )
    parser.add_argument(
        "--pairs", type=_argtypes.positive_int, default=4, help="antithetic pairs per meta-step (4)"
    )
    parser.add_argument(
        "--unroll", type=_argtypes.positive_int, default=40, help="training steps per task (40)"
    )
    parser.add_argument(
        "--sigma", type=_argtypes.positive_float, default=0.01, help="ES perturbation scale (0.01)"
    )
    parser.add_argument(
        "--meta-lr",
        type=_argtypes.positive_float,
        default=0.01,
        help="Adam's learning rate on the weights (0.01)",
    )
    parser.add_argument(
        "--lr",
        type=_argtypes.positive_float,
        default=1e-3,
        help="the learned optimizer's lr on the tasks (1e-3)",
    )
    parser.add_argument(
        "--hidden", type=_argtypes.positive_int, default=8, help="per-coordinate MLP width (8)"
    )
    parser.add_argument("--no-graph", action="store_true", help="no graph stage (the ablation)")
    parser.add_argument(
        "--validation-tasks",
        type=_argtypes.non_negative_int,
        default=8,
        help="fixed tasks scored before and after (8; 0 skips)",
    )
    parser.add_argument(
        "--checkpoint-every",
        type=_argtypes.positive_int,
        default=20,
        help="meta-steps between checkpoints (20)",
    )
    parser.add_argument("--resume", action="store_true", help="continue from --out/checkpoint.pt")
    evaluation = parser.add_argument_group(
        "held-out evaluation (instead of meta-training)",
        "--evaluate compares the shipped weights with Adam (default and tuned) and the ablation "
        "on workloads meta-training never saw; prints the table, writes evaluation.json and "
        "held_out.png (the loss curves)",
    )
    evaluation.add_argument(
        "--evaluate", action="store_true", help="evaluate instead of meta-training"
    )
    evaluation.add_argument(
        "--workloads",
        nargs="+",
        action=_common.NameList,
        default=["digits_cnn", "sbm_gcn", "char_lm"],
        help="benchmark workloads (default digits_cnn sbm_gcn char_lm)",
    )
    evaluation.add_argument(
        "--seeds", type=_argtypes.positive_int, default=5, help="seeds per optimizer (5)"
    )
    evaluation.add_argument(
        "--eval-steps",
        type=_argtypes.positive_int,
        default=None,
        help="steps per run (default: the workload's budget)",
    )
    evaluation.add_argument("--no-tuning", action="store_true", help="skip the tuned candidates")
    _common.add_common(parser, out="runs/learned", device=None)
    return parser


def _family(name: str) -> str:
    if name not in FAMILIES:
        raise argparse.ArgumentTypeError(
            f"unknown task family {name!r}; choose from {', '.join(FAMILIES)}"
        )
    return name


def main(argv: list[str] | None = None) -> int:
    """Meta-train as ``argv`` says; return 0 (usage errors exit 2 before any work)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.no_plot:
        _common.require_matplotlib(parser)
    _common.check_outputs(parser, folders=[("--out", args.out)], files=[("--json", args.json)])
    _common.check_json_apart(
        parser, args.json, [(f"the output {name}", args.out / name) for name in OUTPUTS]
    )
    if args.evaluate:
        _common.check_seed_range(parser, args.seed, args.seeds, "--seeds")
        return _evaluate(parser, args)
    checkpoint = args.out / "checkpoint.pt"
    if args.resume and not checkpoint.is_file():
        parser.error(f"argument --resume: there is no checkpoint at {checkpoint}")
    with torch.random.fork_rng():
        torch.manual_seed(args.seed)
        net = LearnedNet(hidden=args.hidden, use_graph=not args.no_graph)
    trainer = MetaTrainer(
        net,
        families=args.families,
        pairs=args.pairs,
        unroll=args.unroll,
        sigma=args.sigma,
        meta_lr=args.meta_lr,
        lr=args.lr,
        seed=args.seed,
    )
    if args.resume:
        try:
            saved = torch.load(checkpoint, weights_only=True)
            trainer.load_state_dict(saved["trainer"])
            validation = saved["validation"]
        except Exception as error:  # an empty, truncated or foreign file fails in many ways
            parser.error(
                f"argument --resume: cannot resume from {checkpoint} ({type(error).__name__}: "
                f"{error}); it is damaged or not a checkpoint of this command"
            )
    else:
        validation = {"tasks": _validation_tasks(args.families, args.validation_tasks)}
        if validation["tasks"]:
            validation["before"] = trainer.evaluate(validation["tasks"])
    start = time.perf_counter()
    bar = tqdm(
        total=args.steps, initial=len(trainer.history), desc="meta-steps", disable=args.no_progress
    )
    while len(trainer.history) < args.steps:
        if args.minutes is not None and time.perf_counter() - start > 60 * args.minutes:
            break
        bar.set_postfix(meta_loss=f"{trainer.step():.4f}")
        bar.update()
        if len(trainer.history) % args.checkpoint_every == 0:
            torch.save({"trainer": trainer.state_dict(), "validation": validation}, checkpoint)
    bar.close()
    torch.save({"trainer": trainer.state_dict(), "validation": validation}, checkpoint)
    if validation["tasks"]:
        validation["after"] = trainer.evaluate(validation["tasks"])
        print(
            f"validation meta-loss on {len(validation['tasks'])} fixed tasks: "
            f"{validation['before']:.4f} before, {validation['after']:.4f} after"
        )
    print(f"{len(trainer.history)} meta-steps; wrote {checkpoint}")
    record = {
        "settings": trainer.settings(),
        "history": trainer.history,
        "validation": {k: v for k, v in validation.items() if k != "tasks"},
        "seconds": time.perf_counter() - start,
    }
    print(f"wrote {save_net(trainer.net, args.out / 'weights.pt', meta=record)}")
    print(f"wrote {_common.write_json(args.out / 'history.json', record)}")
    if args.json is not None:
        print(f"wrote {_common.write_json(args.json, record)}")
    if not args.no_plot:
        _common.use_agg()
        from torchopt_edu.learned.plot import plot_meta_history

        figure = plot_meta_history(trainer.history)
        print(f"wrote {_common.save_figure(figure, Path(args.out) / 'meta_loss.png')}")
    return 0


def _evaluate(parser: _common.Parser, args: argparse.Namespace) -> int:
    """Run the held-out evaluation, print its summary, write ``evaluation.json``."""
    import dataclasses

    from torchopt_edu.learned import evaluate

    try:
        from torchopt_edu.benchmark.workloads import WORKLOADS
    except ImportError:  # pragma: no cover - the benchmark package ships with this one
        parser.error("--evaluate needs torchopt_edu.benchmark")
    unknown = [w for w in args.workloads if w not in WORKLOADS]
    if unknown:
        parser.error(f"argument --workloads: unknown {unknown}; choose from {', '.join(WORKLOADS)}")
    bar = tqdm(desc="runs", disable=args.no_progress)
    runs = evaluate.evaluate(
        args.workloads,
        seeds=range(args.seed, args.seed + args.seeds),
        steps=args.eval_steps,
        grid=() if args.no_tuning else evaluate.LR_GRID,
        progress=lambda line: (bar.update(), bar.set_postfix_str(line)),
    )
    bar.close()
    summary = evaluate.summarise(runs)
    print(evaluate.format_summary(summary))
    record = {
        "summary": [dataclasses.asdict(row) for row in summary],
        "runs": [dataclasses.asdict(run) for run in runs],
    }
    print(f"wrote {_common.write_json(args.out / 'evaluation.json', record)}")
    if args.json is not None:
        print(f"wrote {_common.write_json(args.json, record)}")
    if not args.no_plot:
        _common.use_agg()
        from torchopt_edu.learned.plot import plot_held_out

        print(f"wrote {_common.save_figure(plot_held_out(runs), Path(args.out) / 'held_out.png')}")
    return 0


def _validation_tasks(families: list[str], count: int) -> list[tuple[str, int]]:
    """``count`` fixed tasks, the families in turn, seeds from ``VALIDATION_SEED``."""
    return [(families[i % len(families)], VALIDATION_SEED + i) for i in range(count)]


def build_bench_parser() -> _common.Parser:
    """The parser of ``python -m torchopt_edu.learned.bench`` (step time vs fused Adam)."""
    parser = _common.Parser(
        prog="python -m torchopt_edu.learned.bench",
        description="Step time of LearnedOptimizer against torch's fused Adam, interleaved.",
    )
    parser.add_argument("--quick", action="store_true", help="one small shape (smoke test)")
    parser.add_argument(
        "--steps", type=_argtypes.positive_int, default=10, help="timed rounds (10)"
    )
    parser.add_argument(
        "--warmup", type=_argtypes.non_negative_int, default=2, help="discarded rounds (2)"
    )
    parser.add_argument(
        "--hidden", type=_argtypes.positive_int, default=8, help="per-coordinate MLP width (8)"
    )
    parser.add_argument(
        "--threads",
        type=_argtypes.positive_int,
        default=None,
        help="torch's intra-op threads (default: torch's; 1 on a busy machine, where spinning "
        "threads inflate every row)",
    )
    _common.add_common(parser, device="cpu", progress=False, plot=False)
    return parser


def bench_main(argv: list[str] | None = None) -> int:
    """Time the step, print the table; return 0 (usage errors exit 2 up front)."""
    from torchopt_edu.learned.bench import QUICK_SHAPES, SHAPES, format_table, step_time_table

    parser = build_bench_parser()
    args = parser.parse_args(argv)
    _common.check_outputs(parser, files=[("--json", args.json)])
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    rows = step_time_table(
        QUICK_SHAPES if args.quick else SHAPES,
        steps=args.steps,
        warmup=args.warmup,
        hidden=args.hidden,
        device=args.device,
        seed=args.seed,
    )
    print(
        f"device {rows[0]['device']}, {rows[0]['threads']} threads, "
        f"median of {args.steps} interleaved steps"
    )
    print(format_table(rows))
    if args.json is not None:
        print(f"wrote {_common.write_json(args.json, rows)}")
    return 0
