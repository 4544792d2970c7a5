"""The demo: train one small model with every optimizer and compare them.

``torchopt-edu demo`` (:mod:`torchopt_edu.cli.demo`) runs it from the shell. The task is
scikit-learn's handwritten digits (8x8 images, 10 classes; ships with scikit-learn, no download)
or, with ``--dataset synthetic``, a generated 10-class problem that needs nothing beyond torch.
Every optimizer starts from the same initial weights and sees the same mini-batches, so the
table compares the optimizers and nothing else.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from torchopt_edu._plotting import legend_labels, line_style
from torchopt_edu.datasets import load_digits_tensors
from torchopt_edu.optim import evaluation_point

if TYPE_CHECKING:
    from matplotlib.figure import Figure

#: Learning rates that work for a small MLP on digits (each optimizer's own scale).
DEMO_HYPERPARAMETERS: dict[str, dict[str, float]] = {
    "sgd": {"lr": 0.05, "momentum": 0.9},
    "momentum": {"lr": 0.5, "beta": 0.9},
    "adagrad": {"lr": 0.05},
    "rmsprop": {"lr": 1e-3},
    "adam": {"lr": 3e-3},
    "adamw": {"lr": 3e-3, "weight_decay": 1e-2},
    "yogi": {"lr": 1e-2},
    # the frontier: the best of a small grid (3 rates each, seed 0, 15 epochs, batch 64)
    "lion": {"lr": 1e-3},
    "sgdschedulefree": {"lr": 1.0},
    "adamwschedulefree": {"lr": 1e-2},
    "prodigy": {"lr": 1.0},  # Prodigy's lr multiplies its own step-size estimate d: keep 1
    "sgdhd": {"lr": 0.05, "hypergrad_lr": 1e-3},
    "adamhd": {"lr": 3e-3},
    "muon": {"lr": 1e-2},  # 2-D weights; biases take the AdamW companion at the same lr
}


def demo_hyperparameters(name: str) -> dict[str, float]:
    """The demo's keyword arguments for optimizer ``name`` (``adam``, ``torch.optim.Adam``).

    A torch.optim class gets those of our optimizer of the same name, so twins train alike;
    any other class runs with its own defaults.
    """
    key = name.removeprefix("torch.optim.").lower()
    return dict(DEMO_HYPERPARAMETERS.get(key, {}))


@dataclass
class Split:
    """Features and integer labels of one split."""

    features: Tensor
    labels: Tensor

    def to(self, device: torch.device) -> Split:
        """This split on ``device``."""
        return Split(self.features.to(device), self.labels.to(device))


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
    mean, std = features[train].mean(0), features[train].std(0)
    # a feature constant on the training set is centred, not scaled (as scikit-learn's
    # StandardScaler does): dividing by a tiny std would blow up its test values
    features = (features - mean) / torch.where(std > 0, std, 1.0)
    return Split(features[train], labels[train]), Split(features[test], labels[test])


def make_model(n_features: int, n_classes: int, seed: int) -> nn.Module:
    """A small MLP: Linear(n_features, 64), ReLU, Linear(64, 64), ReLU, Linear(64, n_classes)."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(n_features, 64),
        nn.ReLU(),
        nn.Linear(64, 64),
        nn.ReLU(),
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
            _synchronize(loss.device)
            started = time.perf_counter()
            optimizer.step()
            _synchronize(loss.device)
            step_seconds += time.perf_counter() - started
            steps += 1
            epoch_loss += loss.item() * len(batch)
        result.losses.append(epoch_loss / len(order))
        if progress is not None:
            progress.update(1)
    with torch.no_grad(), evaluation_point(optimizer):
        predictions = model(test_split.features).argmax(1)
    result.test_accuracy = (predictions == test_split.labels).float().mean().item()
    result.ms_per_step = 1e3 * step_seconds / steps
    return result


def _synchronize(device: torch.device) -> None:
    """Wait for queued kernels, so that the timer measures the step alone."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def format_table(results: list[RunResult]) -> str:
    """A plain-text table: optimizer, final training loss, test accuracy, ms per step."""
    width = max([len("optimizer"), *(len(r.name) for r in results)])
    lines = [f"{'optimizer':<{width}} {'final loss':>10} {'test acc':>9} {'ms/step':>8}"]
    lines.append("-" * len(lines[0]))
    for r in results:
        lines.append(
            f"{r.name:<{width}} {r.losses[-1]:>10.4f} {r.test_accuracy:>9.3f} {r.ms_per_step:>8.3f}"
        )
    return "\n".join(lines)


def plot_losses(results: list[RunResult]) -> Figure:
    """The loss curves of ``results`` (needs matplotlib); coinciding curves stay visible and
    the legend names them ``(identical to X)``."""
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4), dpi=100)
    labels = legend_labels({r.name: r.losses for r in results})
    for index, r in enumerate(results):
        style: dict[str, Any] = line_style(index, len(r.losses))
        axis.plot(range(1, len(r.losses) + 1), r.losses, label=labels[r.name], **style)
    axis.set(
        xlabel="epoch",
        ylabel="training loss (cross-entropy)",
        yscale="log",
        title="Same model, same batches, different optimizers",
    )
    axis.legend()
    figure.tight_layout()
    return figure
