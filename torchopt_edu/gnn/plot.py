"""Loss and accuracy curves of several training runs (needs the ``viz`` extra)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from torchopt_edu._plotting import legend_labels, line_style
from torchopt_edu.gnn.train import History

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def plot_histories(histories: Mapping[str, History], title: str = "") -> Figure:
    """Plot each run's training loss (left, log scale) and validation metric (right).

    The right panel shows the validation accuracy for classification, the validation loss
    for regression, or the eval-mode training loss when the graph has no validation mask.
    Each run has its own line style and marker, so identical runs (``adam`` and
    ``torch.optim.Adam``) stay visible, and the legend names them ``(identical to X)``.

    Args:
        histories: run name -> :class:`~torchopt_edu.gnn.train.History`.
        title: figure title.

    Returns:
        The matplotlib figure (save it with ``figure.savefig(path)``).
    """
    if not histories:
        raise ValueError("histories is empty; nothing to plot")
    try:
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise ImportError("plotting needs matplotlib: pip install torchopt-edu[viz]") from error
    fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(10, 3.6), dpi=80)
    metric = _right_metric(next(iter(histories.values())))
    labels = legend_labels(
        {name: [*history.loss, *history.metrics[metric]] for name, history in histories.items()}
    )
    for index, (name, history) in enumerate(histories.items()):
        style = line_style(index, len(history.loss))
        ax_loss.plot(history.loss, label=labels[name], **style)
        ax_metric.plot(history.metrics[metric], label=labels[name], **style)
    ax_loss.set(xlabel="epoch", ylabel="training loss", yscale="log")
    ax_metric.set(xlabel="epoch", ylabel=metric.replace("_", " "))
    if metric.endswith("loss"):
        ax_metric.set_yscale("log")
    ax_metric.legend(fontsize="small")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def _right_metric(history: History) -> str:
    """The metric of the right panel: val accuracy, val loss, or eval-mode train loss."""
    for name in ("val_acc", "val_loss"):
        if name in history.metrics:
            return name
    return "train_loss"
