"""``torchopt-edu bench-e2e`` (and ``python -m torchopt_edu.bench_e2e``): whole training steps.

Measures with :func:`torchopt_edu.bench_e2e.run` and prints its tables.
"""

from __future__ import annotations

import torch

from torchopt_edu.bench_e2e import (
    WORKLOADS,
    flat_gradient_cost,
    format_flat_cost,
    format_table,
    run,
)
from torchopt_edu.cli import _argtypes, _common


def build_parser() -> _common.Parser:
    """The ``torchopt-edu bench-e2e`` argument parser."""
    parser = _common.Parser(
        prog="torchopt-edu bench-e2e",
        description="Whole training iterations (zero_grad, forward, backward, AdamW step): "
        "ours vs torch.optim's fastest AdamW on a small transformer and a small ResNet.",
    )
    parser.add_argument("--quick", action="store_true", help="tiny batches, 3 steps (smoke test)")
    parser.add_argument(
        "--threads",
        type=_argtypes.positive_int,
        nargs="+",
        default=None,
        help="intra-op thread counts to run (default: 1 and torch's default)",
    )
    parser.add_argument("--models", nargs="+", choices=list(WORKLOADS), default=list(WORKLOADS))
    parser.add_argument(
        "--steps",
        type=_argtypes.positive_int,
        default=None,
        help="timed iterations per contender (default 30; quick 3)",
    )
    _common.add_common(parser, seed=False, device=None, progress=False, plot=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print the tables (and save the JSON); return 0."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _common.check_outputs(parser, files=[("--json", args.json)])
    rows = run(args.quick, args.threads, args.models, args.steps)
    costs = [
        flat_gradient_cost(WORKLOADS[r["model"]], r["threads"], 5 if args.quick else 30)
        for r in rows
        if r["candidate"] == "ours flat"
    ]
    print(
        f"torch {torch.__version__}, CPU, median of {rows[0]['steps']} interleaved iterations "
        "after warm-up; ratio = iteration time / torch's fastest AdamW (IQR over rounds)\n"
    )
    print(format_table(rows))
    print(
        "\nflat mode's extra gradient work per iteration (best of N, outside the model) "
        "against the step time it saves:\n"
    )
    print(format_flat_cost(costs, rows))
    if args.json is not None:
        data = {"torch": torch.__version__, "rows": rows, "flat_gradient_cost": costs}
        print(f"results written to {_common.write_json(args.json, data)}")
    return 0
