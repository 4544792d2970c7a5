"""Command line: ``torchopt-edu COMMAND`` (demo, bench, gnn, federated, tune and two benchmarks).

All command-line code lives in this package: the dispatcher (here), the shared argument types
(``_argtypes``), the common flags and the output and dependency checks (``_common``), the one
optimizer-name resolver (``_optimizers``) and one module per command. The library modules
compute and return; the commands parse, check, print, save and plot.

Each command module is imported only when it runs, so ``torchopt-edu demo`` does not pay for
importing Optuna or PyTorch Geometric, and exposes ``main(argv: list[str] | None) -> int``.
"""

from __future__ import annotations

import importlib
import sys

from torchopt_edu import __version__

COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("torchopt_edu.cli.demo", "train a small model with every optimizer and compare"),
    "bench": ("torchopt_edu.cli.bench", "step time and memory against torch.optim"),
    "gnn": ("torchopt_edu.cli.gnn", "train a GCN on a graph with several optimizers"),
    "federated": ("torchopt_edu.cli.federated", "simulate federated learning on digits"),
    "tune": ("torchopt_edu.cli.tune", "Optuna search over optimizers and hyper-parameters"),
    "pbt": ("torchopt_edu.cli.pbt", "population-based training of hyper-parameters"),
    "lr-robustness": (
        "torchopt_edu.cli.lr_robustness",
        "which optimizers recover from a bad initial learning rate (digits MLP)",
    ),
    "benchmark": ("torchopt_edu.cli.benchmark", "which optimizer reaches a target first"),
    "bench-e2e": (
        "torchopt_edu.cli.bench_e2e",
        "whole training steps (forward, backward, AdamW) against torch.optim",
    ),
    "gnn-bench": ("torchopt_edu.cli.gnn_bench", "GCN epoch time, our Adam against torch's"),
    "federated-bench": (
        "torchopt_edu.cli.federated_bench",
        "federated rounds per second and framework overhead",
    ),
    "flower-bench": (
        "torchopt_edu.cli.flower_bench",
        "federated rounds per second against Flower's simulation",
    ),
    "learn-optimizer": (
        "torchopt_edu.cli.learn_optimizer",
        "meta-train the learned (graph) optimizer with evolution strategies",
    ),
}


def _usage() -> str:
    lines = ["usage: torchopt-edu [--version] COMMAND [options]", "", "commands:"]
    lines += [f"  {name:<16} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += [
        "",
        "Run 'torchopt-edu COMMAND --help' for the options of one command.",
        "Optimizer names are the same everywhere: ours (adam, AdamW, ...) or "
        "torch.optim.<Name>, any case.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Dispatch ``argv`` (default ``sys.argv[1:]``) to a command; return its exit code."""
    args = sys.argv[1:] if argv is None else list(argv)
    if not args or args[0] in ("-h", "--help"):
        print(_usage())
        return 0 if args else 2
    if args[0] in ("-V", "--version"):
        print(f"torchopt-edu {__version__}")
        return 0
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(
            f"torchopt-edu: error: unknown command {name!r}; choose from "
            f"{', '.join(COMMANDS)} (see torchopt-edu --help)",
            file=sys.stderr,
        )
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
