"""Plots: the parameter graph of a model, the meta-training curve, the held-out runs."""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from matplotlib.figure import Figure

from torchopt_edu.learned.evaluate import Run
from torchopt_edu.learned.graph import BACKWARD, EDGE_TYPES, FORWARD, ParameterGraph

_EDGE_STYLE = {0: ("tab:orange", "-"), FORWARD: ("tab:blue", "-"), BACKWARD: ("tab:gray", ":")}


def plot_parameter_graph(graph: ParameterGraph, title: str = "") -> Figure:
    """Nodes (one per parameter tensor, labelled with name and shape) in layers left to right.

    Layer ``l``'s tensors stand in column ``l``; weight-bias edges are orange, forward edges
    blue and backward edges dotted grey (drawn slightly bent so the two directions show).
    """
    figure = Figure(figsize=(max(4.0, 1.6 * (max(graph.layer) + 1)), 3.2))
    axes = figure.subplots()
    position = {}
    for k, layer in enumerate(graph.layer):
        row = graph.layer[:k].count(layer)
        position[k] = (float(layer), -float(row))
    drawn = set()
    for (src, dst), kind in zip(
        graph.edge_index.t().tolist(), graph.edge_type.tolist(), strict=True
    ):
        color, style = _EDGE_STYLE[kind]
        label = EDGE_TYPES[kind] if kind not in drawn else None
        drawn.add(kind)
        (x0, y0), (x1, y1) = position[src], position[dst]
        bend = 0.08 if kind == BACKWARD else -0.08 if kind == FORWARD else 0.0
        axes.plot(
            [x0, (x0 + x1) / 2, x1],
            [y0, (y0 + y1) / 2 + bend, y1],
            style,
            color=color,
            lw=1,
            label=label,
        )
    for k, (x, y) in position.items():
        shape = "x".join(map(str, graph.params[k].shape)) or "scalar"
        axes.scatter([x], [y], s=200, color="white", edgecolors="black", zorder=3)
        axes.annotate(
            f"{graph.names[k]}\n[{shape}]",
            (x, y),
            textcoords="offset points",
            xytext=(0, 11),
            ha="center",
            fontsize=7,
        )
    axes.set_xlabel("layer (computation order)")
    axes.set_xticks(range(max(graph.layer) + 1))
    axes.set_yticks([])
    axes.margins(0.2, 0.4)
    axes.legend(fontsize=7, loc="lower right")
    axes.set_title(title or f"parameter graph: {graph.num_nodes} tensors, {graph.num_edges} edges")
    return figure


def plot_meta_history(history: Sequence[float], window: int = 20, title: str = "") -> Figure:
    """The meta-loss of every meta-step and its moving average over ``window`` steps."""
    figure = Figure(figsize=(5.5, 3.2))
    axes = figure.subplots()
    axes.plot(range(1, len(history) + 1), history, lw=0.6, alpha=0.4, label="meta-step")
    if len(history) >= window:
        average = [sum(history[i - window : i]) / window for i in range(window, len(history) + 1)]
        axes.plot(range(window, len(history) + 1), average, lw=1.6, label=f"mean of {window}")
    axes.set_xlabel("meta-step")
    axes.set_ylabel("meta-loss (mean log loss ratio)")
    axes.set_title(title or "meta-training")
    axes.legend(fontsize=8)
    return figure


def plot_held_out(runs: Sequence[Run], unroll: int = 50, smooth: int = 10) -> Figure:
    """Training loss against step on each held-out workload, one line per optimizer.

    A line is the median over seeds, at each step, of the ``smooth``-step moving mean of the
    training loss (a diverged run stops where it diverged); the dotted line marks
    meta-training's ``unroll``, the horizon the learned optimizer was trained for.
    """
    workloads = list(dict.fromkeys(run.workload for run in runs))
    figure = Figure(figsize=(4.2 * len(workloads), 3.4))
    axes = figure.subplots(1, len(workloads), squeeze=False)[0]
    for ax, workload in zip(axes, workloads, strict=True):
        by_optimizer: dict[str, list[list[float]]] = {}
        for run in runs:
            if run.workload == workload:
                curve = [
                    statistics.fmean(run.losses[max(0, i - smooth + 1) : i + 1])
                    for i in range(len(run.losses))
                ]
                by_optimizer.setdefault(run.optimizer, []).append(curve)
        for optimizer, curves in by_optimizer.items():
            length = max(len(curve) for curve in curves)
            median = [
                statistics.median(curve[i] for curve in curves if i < len(curve))
                for i in range(length)
            ]
            ax.plot(range(1, length + 1), median, lw=1.2, label=optimizer)
        ax.axvline(unroll, color="gray", ls=":", lw=1)
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_title(workload)
    axes[0].set_ylabel(f"training loss ({smooth}-step mean, median over seeds)")
    axes[0].legend(fontsize=7)
    return figure
