"""The test-accuracy curve of a federated run (needs the ``viz`` extra)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from torchopt_edu.federated.simulation import Record

if TYPE_CHECKING:
    from matplotlib.axes import Axes


def plot_history(
    history: Sequence[Record], ax: Axes | None = None, label: str | None = None
) -> Axes:
    """Test accuracy of the global model per round, on ``ax`` or new axes; returns the axes."""
    try:
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise ImportError("plot_history needs matplotlib: pip install torchopt-edu[viz]") from error
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 3), dpi=80)
    rounds = [record["round"] for record in history]
    ax.plot(rounds, [record["test_accuracy"] for record in history], label=label)
    ax.set_xlabel("round")
    ax.set_ylabel("test accuracy")
    ax.grid(alpha=0.3)
    if label is not None:
        ax.legend()
    return ax
