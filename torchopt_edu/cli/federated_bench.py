"""``torchopt-edu federated-bench`` (and ``python -m torchopt_edu.federated.bench``).

Measures with :func:`torchopt_edu.federated.bench.run_benchmark` and prints its line.
"""

from __future__ import annotations

from torchopt_edu.cli import _argtypes, _common
from torchopt_edu.federated.bench import format_result, run_benchmark


def build_parser() -> _common.Parser:
    """The ``torchopt-edu federated-bench`` argument parser."""
    parser = _common.Parser(
        prog="torchopt-edu federated-bench",
        description="Rounds per second and framework overhead of the federated simulation.",
    )
    parser.add_argument("--clients", type=_argtypes.positive_int, default=100)
    parser.add_argument("--fraction", type=_argtypes.fraction, default=0.1)
    parser.add_argument("--rounds", type=_argtypes.positive_int, default=20)
    parser.add_argument("--local-epochs", type=_argtypes.positive_int, default=5)
    parser.add_argument("--batch-size", type=_argtypes.positive_int, default=10)
    parser.add_argument(
        "--warmup",
        type=_argtypes.non_negative_int,
        default=2,
        help="rounds before the timed ones (default 2)",
    )
    parser.add_argument(
        "--threads",
        type=_argtypes.positive_int,
        help="torch threads during the rounds (default: 1 for this small model)",
    )
    _common.add_common(parser, device="cpu", progress=False, plot=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its line; return 0 (usage errors exit 2 up front)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _common.require(parser, "sklearn", "the digits data set", "pip install 'torchopt-edu[data]'")
    _common.check_outputs(parser, files=[("--json", args.json)])
    result = run_benchmark(
        args.clients,
        args.fraction,
        args.rounds,
        args.local_epochs,
        args.batch_size,
        warmup=args.warmup,
        device=args.device,
        seed=args.seed,
        threads=args.threads,
    )
    print(format_result(result))
    if args.json is not None:
        print(f"results written to {_common.write_json(args.json, result)}")
    return 0
