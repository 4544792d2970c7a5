"""The meta-trained weights that ship with the package, and saving and loading nets.

A weights file is a ``torch.save`` of ``{"config": ..., "weights": ..., "meta": ...}``: the
net's constructor arguments, its ``state_dict`` and a record of how it was meta-trained
(settings and the meta-loss curve). Only tensors, numbers, strings, lists and dicts, so it
loads with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from torchopt_edu.learned.nets import LearnedNet

#: The shipped files: meta-trained with the graph stage, and without it (the ablation).
SHIPPED = {
    True: Path(__file__).with_name("graph.pt"),
    False: Path(__file__).with_name("coordinate.pt"),
}


def save_net(net: LearnedNet, path: str | Path, meta: dict[str, Any] | None = None) -> Path:
    """Write ``net`` (and the ``meta`` record) to ``path``; return the path."""
    path = Path(path)
    weights = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
    torch.save({"config": net.config(), "weights": weights, "meta": meta or {}}, path)
    return path


def read_weights_file(path: str | Path) -> dict[str, Any]:
    """The contents of a weights file, loaded with ``weights_only=True`` and checked.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: a file that is empty, truncated, not a weights file, or whose config is
            not one :class:`LearnedNet` takes, naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no learned-optimizer weights file at {path}")
    try:
        contents = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # an empty or truncated file fails in many ways
        raise ValueError(
            f"{path} cannot be read as a weights file ({type(error).__name__}: {error}); it is "
            "damaged or not one"
        ) from None
    if not isinstance(contents, dict) or not {"config", "weights"} <= contents.keys():
        raise ValueError(f"{path} is not a learned-optimizer weights file (no config/weights)")
    config = contents["config"]
    if not isinstance(config, dict) or not set(config) <= {"hidden", "graph_hidden", "use_graph"}:
        raise ValueError(
            f"{path}: config must hold hidden, graph_hidden and use_graph, got {config!r} (a "
            "file of another version?)"
        )
    return contents


def load_net(path: str | Path) -> LearnedNet:
    """The :class:`LearnedNet` saved in ``path`` by :func:`save_net`."""
    contents = read_weights_file(path)
    net = LearnedNet(**contents["config"])
    try:
        net.load_state_dict(contents["weights"])
    except (RuntimeError, KeyError, TypeError) as error:
        raise ValueError(f"{path}: the weights do not fit the config: {error}") from None
    if not all(bool(torch.isfinite(w).all()) for w in net.state_dict().values()):
        raise ValueError(f"{path}: the weights hold NaN or infinite values")
    return net


def load_shipped(graph: bool = True) -> LearnedNet:
    """The shipped meta-trained net: with the graph stage, or per-coordinate only."""
    return load_net(SHIPPED[bool(graph)])


def shipped_meta(graph: bool = True) -> dict[str, Any]:
    """How the shipped net was meta-trained: settings and the meta-loss curve."""
    return read_weights_file(SHIPPED[bool(graph)]).get("meta", {})
