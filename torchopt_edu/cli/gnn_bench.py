"""``torchopt-edu gnn-bench`` (and ``python -m torchopt_edu.gnn.bench``): GCN epoch time.

Measures with :func:`torchopt_edu.gnn.bench.benchmark_epoch` and prints its table.
"""

from __future__ import annotations

from torchopt_edu.cli import _argtypes, _common
from torchopt_edu.gnn.bench import FULL_SIZE, QUICK_SIZE, benchmark_epoch, format_results


def build_parser() -> _common.Parser:
    """The ``torchopt-edu gnn-bench`` argument parser."""
    parser = _common.Parser(
        prog="torchopt-edu gnn-bench",
        description="Time one GCN training epoch with our Adam and torch.optim.Adam.",
    )
    parser.add_argument(
        "--quick", action="store_true", help=f"small graph {QUICK_SIZE} instead of {FULL_SIZE}"
    )
    parser.add_argument(
        "--repeats", type=_argtypes.positive_int, default=7, help="timed rounds (default 7)"
    )
    parser.add_argument(
        "--warmup", type=_argtypes.non_negative_int, default=2, help="discarded rounds (default 2)"
    )
    _common.add_common(parser, device="auto", progress=False, plot=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its table; return 0 (usage errors exit 2 up front)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _common.check_outputs(parser, files=[("--json", args.json)])
    size = QUICK_SIZE if args.quick else FULL_SIZE
    results = benchmark_epoch(
        **size, repeats=args.repeats, warmup=args.warmup, device=args.device, seed=args.seed
    )
    print(format_results(results))
    if args.json is not None:
        print(f"results written to {_common.write_json(args.json, results)}")
    return 0
