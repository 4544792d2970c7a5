"""``torchopt-edu flower-bench``: rounds per second, our simulation against Flower's.

Runs the same digits experiment (:func:`torchopt_edu.federated.flower.digits_experiment`) with
:class:`~torchopt_edu.federated.simulation.Simulation` and on Flower's simulation engine
(:func:`torchopt_edu.federated.flower.compare_with_flower`) and prints both rates.
"""

from __future__ import annotations

from typing import Any

from torchopt_edu.cli import _argtypes, _common

FED_HINT = "pip install 'torchopt-edu[fed]'"


def build_parser() -> _common.Parser:
    """The ``torchopt-edu flower-bench`` argument parser."""
    parser = _common.Parser(
        prog="torchopt-edu flower-bench",
        description="Federated rounds per second: this package's simulation and Flower's "
        "simulation engine on the same digits experiment (same global model).",
    )
    parser.add_argument("--clients", type=_argtypes.positive_int, default=100)
    parser.add_argument("--fraction", type=_argtypes.fraction, default=0.1)
    parser.add_argument("--rounds", type=_argtypes.positive_int, default=12)
    parser.add_argument("--local-epochs", type=_argtypes.positive_int, default=5)
    parser.add_argument("--batch-size", type=_argtypes.positive_int, default=10)
    parser.add_argument(
        "--warmup",
        type=_argtypes.non_negative_int,
        default=2,
        help="rounds before the timed ones (default 2; Flower starts Ray in its first)",
    )
    _common.add_common(parser, device=None, progress=False, plot=False)
    return parser


def format_result(result: dict[str, Any]) -> str:
    """The comparison line."""
    return (
        f"digits, {result['clients']} clients, {result['sampled']} sampled per round, "
        f"E={result['local_epochs']} B={result['batch_size']}, "
        f"{result['rounds'] - result['warmup']} timed rounds: torchopt-edu with "
        f"{result['threads']} thread{'s' if result['threads'] != 1 else ''} "
        f"{result['rounds_per_s']:.2f} rounds/s, Flower simulation (one single-CPU ClientApp "
        f"actor per core) {result['flower_rounds_per_s']:.2f} rounds/s "
        f"({result['speedup']:.1f}x); final test "
        f"accuracy {result['test_accuracy']:.4f} and {result['flower_test_accuracy']:.4f}"
    )


def main(argv: list[str] | None = None) -> int:
    """Run both simulations and print the comparison; return 0 (usage errors exit 2)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _common.require(parser, "sklearn", "the digits data set", "pip install 'torchopt-edu[data]'")
    _common.require(parser, "flwr", "the Flower comparison", FED_HINT)
    _common.require(parser, "ray", "Flower's simulation engine", FED_HINT)
    if args.warmup >= args.rounds:
        parser.error(f"--warmup ({args.warmup}) must be below --rounds ({args.rounds})")
    _common.check_outputs(parser, files=[("--json", args.json)])
    from torchopt_edu.federated.flower import compare_with_flower

    config = {
        "num-clients": args.clients,
        "fraction": args.fraction,
        "rounds": args.rounds,
        "epochs": args.local_epochs,
        "batch-size": args.batch_size,
        "seed": args.seed,
    }
    result = compare_with_flower(config, warmup=args.warmup)
    print(format_result(result))
    if args.json is not None:
        print(f"results written to {_common.write_json(args.json, result)}")
    return 0
