"""Graphs for node-level learning, their validation, and device placement.

Three graphs, each reproducible from a seed and returned as a
:class:`torch_geometric.data.Data` with ``x`` of shape ``[N, F]``,
``edge_index`` of shape ``[2, E]`` and ``y``:

- :func:`random_regression_graph`: the source document's task (random features,
  random edges, a target of ones), at any size.
- :func:`karate_club`: Zachary's karate club as shipped in PyG (no download),
  four communities, one labelled node per class as in Kipf & Welling (2017).
- :func:`sbm_graph`: a stochastic block model (Holland et al., 1983) whose
  blocks are the classes, with noisy class-dependent features.

:func:`validate_graph` checks a Data object up front and names the bad field;
:func:`to_device` moves a model and a graph to the chosen device.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor, nn
from torch_geometric.data import Data
from torch_geometric.datasets import KarateClub
from torch_geometric.utils import index_to_mask, stochastic_blockmodel_graph

TASKS = ("regression", "classification")
MASKS = ("train_mask", "val_mask", "test_mask")


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run the body with torch's global generators (CPU and CUDA) seeded, then restore them.

    PyG's generators (``stochastic_blockmodel_graph``) and dropout draw from the global
    generators; forking them makes a graph or a training run reproducible without changing
    the caller's random stream.
    """
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        yield


def random_regression_graph(
    num_nodes: int = 10, num_edges: int = 20, num_features: int = 10, *, seed: int = 0
) -> Data:
    """The source document's random graph: ``x ~ N(0, I)``, uniform random edges, ``y = 1``.

    Edges are drawn as ``edge_index ~ U{0, ..., N-1}^{2 x E}``, so they are directed and may
    repeat or be self-loops, exactly as ``torch.randint(0, 10, (2, 20))`` in the document.
    The target of ones can be fitted by the output bias alone: reaching near-zero loss shows
    that the training loop works, not that message passing learned anything.

    Args:
        num_nodes: N, number of nodes (the document uses 10).
        num_edges: E, number of directed edges (the document uses 20).
        num_features: F, node feature size (the document uses 10).
        seed: seed of the features and edges.

    Returns:
        Data with ``x [N, F]`` float32, ``edge_index [2, E]`` int64, ``y [N, 1]`` of ones.
    """
    for name, value in (("num_nodes", num_nodes), ("num_features", num_features)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if num_edges < 0:
        raise ValueError(f"num_edges must be >= 0, got {num_edges}")
    with seeded(seed):
        x = torch.randn(num_nodes, num_features)
        edge_index = torch.randint(0, num_nodes, (2, num_edges))
    return Data(x=x, edge_index=edge_index, y=torch.ones(num_nodes, 1))


def karate_club(num_val: int = 10, *, seed: int = 0) -> Data:
    """Zachary's karate club (34 nodes, 156 directed edges, 4 classes), shipped with PyG.

    Features are one-hot node ids (``x = I_34``). The training set is PyG's: the first node
    of each community, 4 labelled nodes in all (the semi-supervised setting of Kipf &
    Welling, 2017). Of the other 30 nodes, ``num_val`` drawn at random form the validation
    set and the rest the test set.

    Args:
        num_val: number of validation nodes, in ``[0, 30)``.
        seed: seed of the validation/test split.

    Returns:
        Data with ``x [34, 34]``, ``edge_index [2, 156]``, ``y [34]`` int64 in ``{0,1,2,3}``
        and boolean ``train_mask``, ``val_mask``, ``test_mask`` of shape ``[34]``.
    """
    data = KarateClub()[0]
    unlabelled = (~data.train_mask).nonzero().view(-1)
    if not 0 <= num_val < unlabelled.numel():
        raise ValueError(f"num_val must be in [0, {unlabelled.numel()}), got {num_val}")
    with seeded(seed):
        unlabelled = unlabelled[torch.randperm(unlabelled.numel())]
    data.val_mask = index_to_mask(unlabelled[:num_val], size=data.num_nodes)
    data.test_mask = index_to_mask(unlabelled[num_val:], size=data.num_nodes)
    return data


def sbm_graph(
    block_sizes: Sequence[int] = (60, 60, 60),
    p_in: float = 0.1,
    p_out: float = 0.01,
    num_features: int = 8,
    signal: float = 0.5,
    *,
    train_per_class: int = 10,
    num_val: int = 30,
    seed: int = 0,
) -> Data:
    """A stochastic block model whose blocks are the node classes.

    Nodes ``i, j`` in blocks ``b_i, b_j`` are joined (undirected) with probability
    ``p_in`` if ``b_i = b_j`` and ``p_out`` otherwise. Each class ``c`` has a mean
    ``mu_c ~ N(0, I_F)`` and node features are ``x_i = signal * mu_{b_i} + eps_i``,
    ``eps_i ~ N(0, I_F)``: with a small ``signal`` a node's own features barely tell its
    class, and averaging over neighbours (mostly of the same class when ``p_in >> p_out``)
    is what a GCN adds. The split is ``train_per_class`` nodes per class, ``num_val``
    validation nodes, the rest test (the rule of PyG's ``RandomNodeSplit(split="test_rest")``).

    ``stochastic_blockmodel_graph`` enumerates all ``N(N-1)/2`` pairs, so keep ``N`` to a
    few thousand; :func:`random_regression_graph` generates large graphs.

    Args:
        block_sizes: size of each block (= class); their sum is N.
        p_in: edge probability within a block.
        p_out: edge probability between blocks.
        num_features: F.
        signal: scale of the class means in the features.
        train_per_class: labelled training nodes per class.
        num_val: validation nodes.
        seed: seed of edges, features and split.

    Returns:
        Data with ``x [N, F]``, ``edge_index [2, E]`` (both directions), ``y [N]`` int64 and
        boolean ``train_mask``, ``val_mask``, ``test_mask`` of shape ``[N]``.
    """
    if len(block_sizes) < 2 or min(block_sizes) < 1:
        raise ValueError(f"block_sizes must hold at least 2 positive sizes, got {block_sizes}")
    for name, p in (("p_in", p_in), ("p_out", p_out)):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {p}")
    num_classes, num_nodes = len(block_sizes), sum(block_sizes)
    if not 1 <= train_per_class <= min(block_sizes):
        raise ValueError(
            f"train_per_class must be in [1, {min(block_sizes)}] (the smallest "
            f"block), got {train_per_class}"
        )
    if not 0 <= num_val < num_nodes - train_per_class * num_classes:
        raise ValueError(
            f"num_val must be in [0, {num_nodes - train_per_class * num_classes}) "
            f"so that some test nodes remain, got {num_val}"
        )
    edge_probs = torch.full((num_classes, num_classes), p_out)
    edge_probs.fill_diagonal_(p_in)
    y = torch.repeat_interleave(torch.arange(num_classes), torch.tensor(list(block_sizes)))
    with seeded(seed):
        edge_index = stochastic_blockmodel_graph(list(block_sizes), edge_probs)
        class_means = torch.randn(num_classes, num_features)
        x = signal * class_means[y] + torch.randn(num_nodes, num_features)
        train = torch.cat(
            [
                (y == c).nonzero().view(-1)[torch.randperm(size)[:train_per_class]]
                for c, size in enumerate(block_sizes)
            ]
        )
        rest = index_to_mask(train, size=num_nodes).logical_not().nonzero().view(-1)
        rest = rest[torch.randperm(rest.numel())]
    return Data(
        x=x,
        edge_index=edge_index,
        y=y,
        train_mask=index_to_mask(train, size=num_nodes),
        val_mask=index_to_mask(rest[:num_val], size=num_nodes),
        test_mask=index_to_mask(rest[num_val:], size=num_nodes),
    )


def infer_task(data: Data) -> str:
    """``"classification"`` if ``data.y`` holds integers, ``"regression"`` if floats."""
    _check_is_data(data)
    y = getattr(data, "y", None)
    if not isinstance(y, torch.Tensor):
        raise ValueError(f"data.y must be a tensor of node targets, got {type(y).__name__}")
    return "regression" if y.is_floating_point() else "classification"


def labelled_nodes(data: Data) -> Tensor:
    """Bool ``[N]``: the nodes whose targets the loss or the metrics read.

    Those of ``train_mask``, ``val_mask`` or ``test_mask``, or every node when the graph has
    no mask (then every node is trained on). The other nodes only pass messages.
    """
    masks = [mask for name in MASKS if (mask := getattr(data, name, None)) is not None]
    if not masks:
        return torch.ones(data.x.size(0), dtype=torch.bool, device=data.x.device)
    return torch.stack(masks).any(dim=0)


def validate_graph(data: Data, task: str | None = None) -> None:  # noqa: C901 (a checklist)
    """Check a node-level graph up front; raise ``ValueError`` naming the first bad field.

    Checked:

    - ``x`` is a finite 2-D float tensor ``[N, F]`` with ``N >= 1`` nodes and ``F >= 1``
      features; every other tensor field is on ``x``'s device.
    - ``edge_index`` is int64 ``[2, E]`` with every index in ``[0, N)``.
    - ``edge_weight`` (if present) is ``[E]`` of ``x``'s dtype, finite and ``>= 0``: GCN
      normalises by ``deg^{-1/2}``, which a negative weight can turn into NaN.
    - each mask present is bool ``[N]``; ``train_mask`` selects at least one node; a graph
      with ``val_mask`` or ``test_mask`` but no ``train_mask`` is refused (training on all
      nodes would leak their labels), and so is a held-out mask that shares nodes with
      ``train_mask`` (its metrics would be measured on training nodes).
    - ``y`` has N rows: int64 ``[N]`` labels for classification, float ``[N]`` or ``[N, C]``
      for regression. Labels must be ``>= 0`` (regression targets finite) on the
      :func:`labelled_nodes`, the nodes of some mask; a node outside every mask is never
      read, so it may carry any label, e.g. -1 for unlabelled. cross_entropy's
      ``ignore_index`` (-100) is not used: a masked node labelled -100 is refused rather than
      silently left out of the loss and counted wrong in the accuracy.

    Args:
        data: the graph.
        task: ``"regression"``, ``"classification"`` or None to skip the target checks.
    """
    _check_is_data(data)
    x = data.x
    if not isinstance(x, torch.Tensor) or x.dim() != 2 or not x.is_floating_point():
        raise ValueError(
            f"data.x must be a 2-D float tensor [num_nodes, num_features], got {_describe(x)}"
        )
    num_nodes = x.size(0)
    if num_nodes == 0:
        raise ValueError("data.x has 0 rows: the graph needs at least one node")
    if data.num_nodes != num_nodes:
        raise ValueError(
            f"data.num_nodes is {data.num_nodes} but data.x has {num_nodes} rows (one per node)"
        )
    if x.size(1) == 0:
        raise ValueError(
            f"data.x has 0 features per node (shape {list(x.shape)}); give each "
            "node at least one (a constant 1, or one-hot node ids)"
        )
    for name in ("edge_index", "edge_weight", "y", *MASKS):
        value = getattr(data, name, None)
        if isinstance(value, torch.Tensor) and value.device != x.device:
            raise ValueError(
                f"data.{name} is on {value.device} but data.x is on {x.device}; "
                "move the whole graph with data.to(device)"
            )
    if not torch.isfinite(x).all():
        index, value = _first(x, ~torch.isfinite(x))
        raise ValueError(f"data.x must be finite, got {value} at index {index}")

    edge_index = data.edge_index
    if not isinstance(edge_index, torch.Tensor) or edge_index.dim() != 2 or edge_index.size(0) != 2:
        raise ValueError(
            f"data.edge_index must have shape [2, num_edges], got {_describe(edge_index)}"
        )
    if edge_index.dtype != torch.long:
        raise ValueError(f"data.edge_index must be int64 (torch.long), got {edge_index.dtype}")
    if edge_index.numel() > 0:
        low, high = int(edge_index.min()), int(edge_index.max())
        if low < 0 or high >= num_nodes:
            raise ValueError(
                f"data.edge_index must lie in [0, {num_nodes}) (num_nodes = "
                f"data.x.size(0)), got values in [{low}, {high}]"
            )

    edge_weight = getattr(data, "edge_weight", None)
    if edge_weight is not None:
        _check_edge_weight(edge_weight, edge_index.size(1), x.dtype)

    for name in MASKS:
        mask = getattr(data, name, None)
        if mask is not None and (
            not isinstance(mask, torch.Tensor)
            or mask.dtype != torch.bool
            or tuple(mask.shape) != (num_nodes,)
        ):
            raise ValueError(
                f"data.{name} must be a bool tensor of shape [{num_nodes}], got {_describe(mask)}"
            )
    train_mask = getattr(data, "train_mask", None)
    if train_mask is not None and not train_mask.any():
        raise ValueError("data.train_mask selects no node; it needs at least one")
    held_out = [name for name in MASKS[1:] if getattr(data, name, None) is not None]
    if train_mask is None and held_out:
        # Without a train_mask the loop trains on every node, the held-out ones included.
        raise ValueError(
            f"data has {' and '.join(held_out)} but no train_mask, so training "
            "would use the held-out nodes' labels; add a train_mask"
        )
    for name in held_out:
        overlap = train_mask & getattr(data, name)
        if bool(overlap.any()):
            # the same leak: its metrics would be measured on nodes the model trained on
            raise ValueError(
                f"data.train_mask and data.{name} share {int(overlap.sum())} nodes (the first "
                f"is node {int(overlap.nonzero()[0])}); held-out nodes must not be trained on"
            )

    if task is None:
        return
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    _check_targets(data, task)


def _check_is_data(data: object) -> None:
    """``TypeError`` unless ``data`` is a PyG ``Data`` (a dict of fields is a common slip)."""
    if not isinstance(data, Data):
        hint = "; build one with Data(**fields)" if isinstance(data, Mapping) else ""
        raise TypeError(
            f"data must be a torch_geometric.data.Data, got {type(data).__name__}{hint}"
        )


def _check_edge_weight(edge_weight: object, num_edges: int, dtype: torch.dtype) -> None:
    """One finite weight ``>= 0`` per edge, in the features' dtype."""
    if (
        not isinstance(edge_weight, torch.Tensor)
        or not edge_weight.is_floating_point()
        or tuple(edge_weight.shape) != (num_edges,)
    ):
        raise ValueError(
            f"data.edge_weight must be a float tensor of shape [{num_edges}] (one "
            f"weight per edge), got {_describe(edge_weight)}"
        )
    if edge_weight.dtype != dtype:
        raise ValueError(
            f"data.edge_weight must have data.x's dtype {dtype}, got {edge_weight.dtype}"
        )
    if not torch.isfinite(edge_weight).all():
        index, value = _first(edge_weight, ~torch.isfinite(edge_weight))
        raise ValueError(f"data.edge_weight must be finite, got {value} at edge {index}")
    if (edge_weight < 0).any():
        index, value = _first(edge_weight, edge_weight < 0)
        raise ValueError(
            f"data.edge_weight must be >= 0 (GCN normalises by deg^-1/2, NaN for "
            f"a negative degree), got {value} at edge {index}"
        )


def _check_targets(data: Data, task: str) -> None:
    """``data.y`` fits ``task`` on every node, and is valid on the labelled nodes."""
    num_nodes = data.x.size(0)
    y = getattr(data, "y", None)
    if not isinstance(y, torch.Tensor) or y.dim() == 0 or y.size(0) != num_nodes:
        raise ValueError(f"data.y must have {num_nodes} rows (one per node), got {_describe(y)}")
    masks = [name for name in MASKS if getattr(data, name, None) is not None]
    where = f"the nodes of {' or '.join(masks)}" if masks else "every node (the graph has no mask)"
    labelled = labelled_nodes(data).view(-1, *[1] * (y.dim() - 1))
    if task == "classification":
        if y.dtype != torch.long or y.dim() != 1:
            raise ValueError(
                f"data.y must be int64 class labels of shape [{num_nodes}] for "
                f"classification, got {_describe(y)}"
            )
        if ((y < 0) & labelled).any():
            node, value = _first(y, (y < 0) & labelled)
            raise ValueError(
                f"data.y class labels must be >= 0 on {where}, got {value} at node "
                f"{node} (an unlabelled node may carry any label outside every "
                "mask)"
            )
    else:
        if not y.is_floating_point() or y.dim() > 2:
            raise ValueError(
                f"data.y must be a float tensor [{num_nodes}] or "
                f"[{num_nodes}, C] for regression, got {_describe(y)}"
            )
        if (~torch.isfinite(y) & labelled).any():
            index, value = _first(y, ~torch.isfinite(y) & labelled)
            raise ValueError(
                f"data.y must be finite on {where} for regression, got {value} at index {index}"
            )


def _first(values: Tensor, bad: Tensor) -> tuple[int | list[int], float | int]:
    """The index (an int for 1-D ``values``) and value of the first True of ``bad``."""
    index = bad.nonzero()[0].tolist()
    return (index[0] if len(index) == 1 else index), values[tuple(index)].item()


def _describe(value: object) -> str:
    """A short description of a field for error messages: shape and dtype, or the type."""
    if isinstance(value, torch.Tensor):
        return f"tensor of shape {list(value.shape)} and dtype {value.dtype}"
    return type(value).__name__


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` means CUDA when available, else CPU; a CUDA device must be available."""
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(
            f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}"
        ) from error
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but torch.cuda.is_available() is False")
    return resolved


def to_device(
    model: nn.Module, data: Data, device: str | torch.device = "auto"
) -> tuple[nn.Module, Data]:
    """Validate ``data`` and move ``model`` and ``data`` to ``device`` (in place); return both.

    Build the optimizer after this call: optimizer state created before (e.g. Adam's
    moments) would stay on the old device.
    """
    validate_graph(data)
    target = resolve_device(device)
    return model.to(target), data.to(target)
