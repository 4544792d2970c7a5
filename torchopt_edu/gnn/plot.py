"""Loss and accuracy curves of several training runs (needs the ``viz`` extra)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from torchopt_edu.gnn.train import History

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def plot_histories(
    histories: Mapping[str, History], path: str | Path | None = None, title: str = ""
) -> Figure:
    """Plot each run's training loss (left, log scale) and validation metric (right).

    The right panel shows the validation accuracy for classification, the validation loss
    for regression, or the eval-mode training loss when the graph has no validation mask.

    Args:
        histories: run name -> :class:`~torchopt_edu.gnn.train.History`.
        path: if given, save the figure there (PNG, 80 dpi).
        title: figure title.

    Returns:
        The matplotlib figure.
    """
    if not histories:
        raise ValueError("histories is empty; nothing to plot")
    try:
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise ImportError("plotting needs matplotlib: pip install torchopt-edu[viz]") from error
    fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(10, 3.6), dpi=80)
    for name, history in histories.items():
        ax_loss.plot(history.loss, label=name)
        metric = _right_metric(history)
        ax_metric.plot(history.metrics[metric], label=name)
    ax_loss.set(xlabel="epoch", ylabel="training loss", yscale="log")
    ax_metric.set(xlabel="epoch", ylabel=metric.replace("_", " "))
    if metric.endswith("loss"):
        ax_metric.set_yscale("log")
    ax_metric.legend(fontsize="small")
    fig.suptitle(title)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=80)
    return fig


def _right_metric(history: History) -> str:
    """The metric of the right panel: val accuracy, val loss, or eval-mode train loss."""
    for name in ("val_acc", "val_loss"):
        if name in history.metrics:
            return name
    return "train_loss"
