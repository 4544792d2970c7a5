"""Command line: ``torchopt-edu demo | bench | gnn | federated | tune``.

Each sub-command lives in its own module and is imported only when it runs, so
``torchopt-edu demo`` does not pay for importing Optuna or PyTorch Geometric.
Every sub-command module exposes ``main(argv: list[str] | None) -> int``.
"""

from __future__ import annotations

import importlib
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("torchopt_edu.demo", "train a small model with every optimizer and compare"),
    "bench": ("torchopt_edu.bench", "step time and memory against torch.optim"),
    "gnn": ("torchopt_edu.gnn.cli", "train a GCN on a graph with several optimizers"),
    "federated": ("torchopt_edu.federated.cli", "simulate federated learning on digits"),
    "tune": ("torchopt_edu.tuning.cli", "Optuna search over optimizers and hyper-parameters"),
}


def _usage() -> str:
    lines = ["usage: torchopt-edu COMMAND [options]", "", "commands:"]
    lines += [f"  {name:<10} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Run 'torchopt-edu COMMAND --help' for the options of one command."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Dispatch ``argv`` (default ``sys.argv[1:]``) to a sub-command; return its exit code."""
    args = sys.argv[1:] if argv is None else list(argv)
    if not args or args[0] in ("-h", "--help"):
        print(_usage())
        return 0 if args else 2
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"torchopt-edu: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
