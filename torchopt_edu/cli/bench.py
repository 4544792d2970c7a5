"""``torchopt-edu bench`` (and ``python -m torchopt_edu.bench``): step time and memory tables.

Measures with :mod:`torchopt_edu.bench`, prints the full table and the summary (Markdown),
warns about rows too noisy to read, and writes ``--json PATH`` and the bar chart
(``bench.png`` under ``--out``, or ``--plot PATH``; none with ``--no-plot``).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from torchopt_edu import bench
from torchopt_edu.bench import ALGORITHMS, NOISY_SPREAD, Row
from torchopt_edu.cli import _argtypes, _common
from torchopt_edu.cli._optimizers import optimizer_name
from torchopt_edu.optim import display_name

if TYPE_CHECKING:
    from matplotlib.figure import Figure

#: The candidate name of our generated kernel (``compiled=True, flat=True``).
COMPILED = bench.OUR_MODES["compiled"][0]


def algorithm_name(text: str) -> str:
    """argparse ``type=``: the benchmarked algorithm an optimizer name stands for.

    Ours and torch's twin name the same algorithm (``adam``, ``torch.optim.Adam``); a
    torch.optim optimizer we do not implement is refused.
    """
    name = optimizer_name(closure=False)(text)
    for algorithm in ALGORITHMS.values():
        twin = display_name(algorithm.twin) if algorithm.twin is not None else None
        if name in (algorithm.name, twin):
            return algorithm.name
    raise argparse.ArgumentTypeError(
        f"{name} is not benchmarked; choose from {', '.join(ALGORITHMS)} "
        "(or their torch.optim twins)"
    )


def _spread(row: Row) -> str:
    return "n/a" if row.spread != row.spread else f"{100 * row.spread:.0f}%"


def _ratio(value: float, bold: bool = False) -> str:
    if value != value:
        return "-"
    return f"**{value:.2f}**" if bold else f"{value:.2f}"


def format_table(rows: list[Row], update_gb_per_s: float) -> str:
    """The benchmark as a Markdown table (ready to paste into a README or an issue)."""
    lines = [
        f"in-place update bandwidth in this run: {update_gb_per_s:.1f} GB/s "
        "(achieved = ideal one-pass bytes / time)",
        "",
        "| algorithm | shape | candidate | ms/step | spread | / fastest baseline "
        "| / fused Adam | state B/param | achieved GB/s |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        ours = r.candidate.startswith("ours")
        lines.append(
            f"| {r.algorithm} | {r.shape} | {r.candidate} | {r.ms_per_step:.2f} | {_spread(r)} "
            f"| {_ratio(r.ratio_to_baseline, ours)} | {_ratio(r.ratio_to_fused_adam, ours)} "
            f"| {r.state_bytes_per_param:.1f} | {r.gb_per_s:.1f} |"
        )
    return "\n".join(lines)


def format_summary(rows: list[Row]) -> str:
    """One line per algorithm and shape: the fastest baseline against ours.

    The baseline is the fastest torch.optim path, or for an algorithm torch lacks the fastest
    reference package (``ref ...``); the frontier's rows also give ours / torch's fused Adam,
    by default and with ``compiled=True, flat=True`` (the generated kernel).
    A ratio built from a noisy row (see :func:`noisy_rows`) is marked ``(noisy)``.
    """
    lines = [
        "| algorithm | shape | fastest baseline | ms | ours foreach (before) ms "
        "| ours (default) ms | ratio | ours flat ms | ratio | ours compiled flat ms | ratio "
        "| ours / fused Adam | compiled / fused Adam |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for algorithm, shape in dict.fromkeys((r.algorithm, r.shape) for r in rows):
        same = {r.candidate: r for r in rows if r.algorithm == algorithm and r.shape == shape}
        lines.append(f"| {algorithm} | {shape} | {_summary_cells(same)}")
    return "\n".join(lines)


def _summary_cells(same: dict[str, Row]) -> str:
    """The summary's cells after algorithm and shape, from one algorithm and shape's rows."""
    baselines = [
        r
        for r in same.values()
        if r.candidate.startswith(("torch", "ref")) and r.candidate != bench.YARDSTICK
    ]
    best = min(baselines, key=lambda r: r.ms_per_step, default=None)
    yardstick = same.get(bench.YARDSTICK)

    def ms(candidate: str) -> str:
        return f"{same[candidate].ms_per_step:.2f}" if candidate in same else "-"

    def ratio(candidate: str, reference: Row | None) -> str:
        row = same.get(candidate)
        if row is None or reference is None:
            return "-"
        mark = " (noisy)" if row.noisy or reference.noisy else ""
        ratio = row.ratio_to_baseline if reference is best else row.ratio_to_fused_adam
        return f"{_ratio(ratio, bold=True)}{mark}"

    return (
        f"{'none' if best is None else best.candidate.removeprefix('torch ')} "
        f"| {'-' if best is None else f'{best.ms_per_step:.2f}'} | {ms('ours foreach')} "
        f"| {ms('ours')} | {ratio('ours', best)} | {ms('ours flat')} "
        f"| {ratio('ours flat', best)} | {ms(COMPILED)} | {ratio(COMPILED, best)} "
        f"| {ratio('ours', yardstick)} | {ratio(COMPILED, yardstick)} |"
    )


def noise_warning(rows: list[Row]) -> str | None:
    """A warning when some rows' step times spread wider than ``NOISY_SPREAD``, else None."""
    noisy = [r for r in rows if r.noisy]
    if not noisy:
        return None
    if all(r.spread != r.spread for r in noisy):
        return "warning: one timed step per row gives no spread; use --steps 5 or more"
    worst = max((r for r in noisy if r.spread == r.spread), key=lambda r: r.spread)
    return (
        f"warning: {len(noisy)} of {len(rows)} rows are too noisy to read (step times spread "
        f"more than {100 * NOISY_SPREAD:.0f}% around the median; worst {_spread(worst)}: "
        f"{worst.algorithm} {worst.shape} {worst.candidate}). Another process is probably "
        "using the cores: rerun on an idle machine or with more --steps."
    )


def plot(rows: list[Row]) -> Figure:
    """Bar chart of ours / fastest baseline per algorithm and shape (each of our modes).

    Shapes are grouped by position (first, second, third of each algorithm's set), so Muon's
    matrix shapes share a panel with the vector shapes of the same rank.
    """
    import matplotlib.pyplot as plt

    algorithms = list(dict.fromkeys(r.algorithm for r in rows))
    by_algorithm = {
        a: list(dict.fromkeys(r.shape for r in rows if r.algorithm == a)) for a in algorithms
    }
    n_panels = max(len(shapes) for shapes in by_algorithm.values())
    figure, axes = plt.subplots(
        1, n_panels, figsize=(5 * n_panels, 3.5), dpi=80, sharey=True, squeeze=False
    )
    for panel, axis in enumerate(axes[0]):
        for offset, candidate in ((-0.27, "ours foreach"), (0.0, "ours"), (0.27, "ours flat")):
            values = []
            for a in algorithms:
                shape = by_algorithm[a][panel] if panel < len(by_algorithm[a]) else None
                row = next(
                    (
                        r
                        for r in rows
                        if (r.algorithm, r.shape, r.candidate) == (a, shape, candidate)
                    ),
                    None,
                )
                values.append(row.ratio_to_baseline if row is not None else float("nan"))
            axis.bar(
                [i + offset for i in range(len(algorithms))], values, width=0.27, label=candidate
            )
        axis.axhline(1.0, color="black", linewidth=1)
        axis.set_xticks(range(len(algorithms)), algorithms, rotation=60)
        axis.set_title(
            " / ".join(dict.fromkeys(s[panel] for s in by_algorithm.values() if panel < len(s)))[
                :60
            ]
        )
    axes[0][0].set_ylabel("step time / fastest baseline")
    axes[0][0].legend()
    figure.tight_layout()
    return figure


def build_parser() -> _common.Parser:
    """The ``torchopt-edu bench`` argument parser."""
    parser = _common.Parser(
        prog="torchopt-edu bench",
        description="Step time, state memory and bandwidth of our optimizers vs torch.optim "
        "and the reference packages.",
    )
    parser.add_argument("--quick", action="store_true", help="small shapes, few steps (CI smoke)")
    _common.add_optimizers(
        parser,
        "--algorithms",
        default=list(ALGORITHMS),
        convert=algorithm_name,
        help=f"default: all of {', '.join(ALGORITHMS)} (ours or torch.optim spelling)",
    )
    parser.add_argument(
        "--steps",
        type=_argtypes.positive_int,
        default=None,
        help="timed steps (default 20; quick 5)",
    )
    parser.add_argument("--warmup", type=_argtypes.non_negative_int, default=3)
    parser.add_argument(
        "--memory-steps",
        type=_argtypes.positive_int,
        default=None,
        help="steps of the memory-growth check (default 1000; quick 50)",
    )
    _common.add_common(parser, out="runs/bench", device="cpu")
    parser.add_argument(
        "--plot",
        type=Path,
        default=None,
        metavar="PATH",
        help="save the bar chart at PATH instead of <out>/bench.png",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print the tables; return 0 (usage errors exit with 2 up front)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.no_plot:
        _common.require_matplotlib(parser)
    if args.no_plot and args.plot is not None:
        parser.error("argument --plot: not allowed with --no-plot")
    chart = None if args.no_plot else (args.plot or Path(args.out) / "bench.png")
    _common.check_outputs(
        parser, files=[("--json", args.json), ("--plot" if args.plot else "--out", chart)]
    )
    device = args.device
    steps = args.steps if args.steps is not None else (5 if args.quick else 20)
    memory_steps = (
        args.memory_steps if args.memory_steps is not None else (50 if args.quick else 1000)
    )
    shapes = bench.QUICK_SHAPES if args.quick else bench.FULL_SHAPES
    update_gb_per_s = bench.update_bandwidth(shapes[-1][1] * shapes[-1][2], device, repeats=steps)
    rows: list[Row] = []
    for name in args.optimizers:
        for shape in bench.shapes_for(ALGORITHMS[name], args.quick):
            rows.extend(
                bench.run_shape(ALGORITHMS[name], shape, device, steps, args.warmup, seed=args.seed)
            )
            if not args.no_progress:
                print(f"  done: {name} {shape[0]}", file=sys.stderr, flush=True)
    memory = bench.memory_growth(device, memory_steps)
    print(
        f"{torch.__version__} on {device} ({torch.get_num_threads()} threads), "
        f"median of {steps} interleaved steps after {args.warmup} warm-up\n"
    )
    print(format_table(rows, update_gb_per_s))
    print(
        "\nsummary (ratio = ours / fastest baseline: torch.optim's paths, or the reference "
        "package where torch has none; measured in the same run):\n"
    )
    print(format_summary(rows))
    growth = f"RSS {memory['rss_growth_mb']:+.1f} MB"
    if device.type == "cuda":
        growth += f", CUDA {memory['cuda_allocated_growth_mb']:+.1f} MB"
    print(f"\nmemory growth over {memory['steps']} Adam steps: {growth}")
    warning = noise_warning(rows)
    if warning is not None:
        print(f"\n{warning}")
        print(warning, file=sys.stderr)
    if args.json is not None:
        _common.write_json(
            args.json,
            {
                "torch": torch.__version__,
                "device": str(device),
                "steps": steps,
                "update_gb_per_s": update_gb_per_s,
                "noisy_spread": NOISY_SPREAD,
                "rows": [dataclasses.asdict(r) for r in rows],
                "memory": memory,
            },
        )
        print(f"results written to {args.json}")
    if chart is not None:
        _common.use_agg()
        path = _common.save_figure(plot(rows), chart)
        print(f"bar chart saved to {path}")
    return 0
