"""``torchopt-edu demo``: train one small model with every optimizer and compare them.

The task is scikit-learn's handwritten digits (8x8 images, 10 classes; ships with
scikit-learn, no download) or, with ``--dataset synthetic``, a generated 10-class problem
that needs nothing beyond torch. Every optimizer starts from the same initial weights and
sees the same mini-batches, so the table compares the optimizers and nothing else.
"""

from __future__ import annotations

import argparse
import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from torchopt_edu._argtypes import positive_int
from torchopt_edu.datasets import load_digits_tensors
from torchopt_edu.optim import OPTIMIZERS

#: Learning rates that work for a small MLP on digits (each optimizer's own scale).
DEMO_HYPERPARAMETERS: dict[str, dict[str, float]] = {
    "sgd": {"lr": 0.05, "momentum": 0.9},
    "momentum": {"lr": 0.5, "beta": 0.9},
    "adagrad": {"lr": 0.05},
    "rmsprop": {"lr": 1e-3},
    "adam": {"lr": 3e-3},
    "adamw": {"lr": 3e-3, "weight_decay": 1e-2},
    "yogi": {"lr": 1e-2},
}


@dataclass
class Split:
    """Features and integer labels of one split."""

    features: Tensor
    labels: Tensor


@dataclass
class RunResult:
    """What one optimizer achieved: per-epoch mean training loss, test accuracy, step time."""

    name: str
    losses: list[float] = field(default_factory=list)
    test_accuracy: float = 0.0
    ms_per_step: float = 0.0


def load_dataset(name: str, seed: int) -> tuple[Split, Split]:
    """Return (train, test) splits of ``"digits"`` or ``"synthetic"``, standardised."""
    if name == "digits":
        features, labels = load_digits_tensors()
    elif name == "synthetic":
        generator = torch.Generator().manual_seed(seed)
        centers = torch.randn(10, 64, generator=generator) * 1.5
        labels = torch.randint(0, 10, (1800,), generator=generator)
        features = centers[labels] + torch.randn(1800, 64, generator=generator) * 2.0
    else:
        raise ValueError(f"unknown dataset {name!r}; choose 'digits' or 'synthetic'")
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    n_test = len(labels) // 5
    test, train = order[:n_test], order[n_test:]
    mean, std = features[train].mean(0), features[train].std(0).clamp_min(1e-6)
    features = (features - mean) / std
    return Split(features[train], labels[train]), Split(features[test], labels[test])


def make_model(n_features: int, n_classes: int, seed: int) -> nn.Module:
    """A small MLP: Linear(n_features, 64), ReLU, Linear(64, 64), ReLU, Linear(64, n_classes)."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(n_features, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(),
        nn.Linear(64, n_classes),
    )


def train(
    name: str,
    make_optimizer: Callable[[nn.Module], torch.optim.Optimizer],
    model: nn.Module,
    train_split: Split,
    test_split: Split,
    epochs: int,
    batch_size: int,
    seed: int,
    progress: tqdm | None = None,
) -> RunResult:
    """Train ``model`` with cross-entropy for ``epochs``; time only ``optimizer.step()``."""
    optimizer = make_optimizer(model)
    loss_fn = nn.CrossEntropyLoss()
    generator = torch.Generator().manual_seed(seed)
    result = RunResult(name)
    step_seconds = 0.0
    steps = 0
    for _ in range(epochs):
        order = torch.randperm(len(train_split.labels), generator=generator)
        epoch_loss = 0.0
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            optimizer.zero_grad()
            loss = loss_fn(model(train_split.features[batch]), train_split.labels[batch])
            loss.backward()
            started = time.perf_counter()
            optimizer.step()
            step_seconds += time.perf_counter() - started
            steps += 1
            epoch_loss += loss.item() * len(batch)
        result.losses.append(epoch_loss / len(order))
        if progress is not None:
            progress.update(1)
    with torch.no_grad():
        predictions = model(test_split.features).argmax(1)
    result.test_accuracy = (predictions == test_split.labels).float().mean().item()
    result.ms_per_step = 1e3 * step_seconds / steps
    return result


def format_table(results: list[RunResult]) -> str:
    """A plain-text table: optimizer, final training loss, test accuracy, ms per step."""
    lines = [f"{'optimizer':<10} {'final loss':>10} {'test acc':>9} {'ms/step':>8}"]
    lines.append("-" * len(lines[0]))
    for r in results:
        lines.append(
            f"{r.name:<10} {r.losses[-1]:>10.4f} {r.test_accuracy:>9.3f} {r.ms_per_step:>8.3f}"
        )
    return "\n".join(lines)


def plot_losses(results: list[RunResult], path: Path) -> Path | None:
    """Save the loss curves to ``path``; return None (and say why) without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install 'torchopt-edu[viz]'): no plot saved")
        return None
    figure, axis = plt.subplots(figsize=(7, 4), dpi=100)
    for r in results:
        axis.plot(range(1, len(r.losses) + 1), r.losses, label=r.name)
    axis.set(xlabel="epoch", ylabel="training loss (cross-entropy)", yscale="log",
             title="Same model, same batches, different optimizers")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path


def build_parser() -> argparse.ArgumentParser:
    """The ``torchopt-edu demo`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="torchopt-edu demo",
        description="Train a small MLP with every optimizer and compare loss, accuracy, speed.",
    )
    parser.add_argument("--dataset", choices=["digits", "synthetic"], default="digits")
    parser.add_argument("--optimizers", nargs="+", choices=sorted(DEMO_HYPERPARAMETERS),
                        default=list(DEMO_HYPERPARAMETERS), metavar="NAME",
                        help=f"subset of: {', '.join(DEMO_HYPERPARAMETERS)}")
    parser.add_argument("--epochs", type=positive_int, default=15)
    parser.add_argument("--batch-size", type=positive_int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/demo"),
                        help="folder for the loss-curve plot (default runs/demo)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the demo; return 0 on success (argparse exits with 2 on bad arguments)."""
    args = build_parser().parse_args(argv)
    train_split, test_split = load_dataset(args.dataset, args.seed)
    n_classes = int(train_split.labels.max()) + 1
    initial = make_model(train_split.features.shape[1], n_classes, args.seed)
    results = []
    with tqdm(total=args.epochs * len(args.optimizers), desc="training", unit="epoch") as bar:
        for name in args.optimizers:
            bar.set_postfix_str(name)
            hyperparameters = DEMO_HYPERPARAMETERS[name]
            results.append(train(
                name,
                lambda model, cls=OPTIMIZERS[name], hp=hyperparameters: cls(
                    model.parameters(), **hp),
                copy.deepcopy(initial),
                train_split,
                test_split,
                args.epochs,
                args.batch_size,
                args.seed,
                progress=bar,
            ))
    print(f"\n{args.dataset}: {len(train_split.labels)} train / {len(test_split.labels)} test, "
          f"{args.epochs} epochs, batch {args.batch_size}\n")
    print(format_table(results))
    args.out.mkdir(parents=True, exist_ok=True)
    saved = plot_losses(results, args.out / "loss_curves.png")
    if saved is not None:
        print(f"\nloss curves saved to {saved}")
    return 0
