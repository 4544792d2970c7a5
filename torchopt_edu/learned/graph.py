"""The parameter graph: one node per parameter tensor, edges along the model's computation.

A model's parameters are not a bag of numbers: a weight and its bias feed the same units, and
each layer feeds the next. :class:`ParameterGraph` records that structure so that a graph
network (:mod:`torchopt_edu.learned.nets`) can pass messages between the tensors it optimizes.

Three edge types, each stored in both directions so that information flows both ways:

- ``WEIGHT_BIAS``: a module's parameters among themselves (a weight and its bias);
- ``FORWARD``: a parameter of layer ``l`` to a parameter of the layer its output feeds;
- ``BACKWARD``: the same pair, reversed (the direction in which gradients flow).

Three ways to build it, all automatic:

- :func:`parameter_graph` with ``method="modules"``: modules with parameters in registration
  order, each linked to the next (right for ``nn.Sequential``-like models);
- :func:`parameter_graph` with ``method="fx"``: a ``torch.fx`` trace; layer ``a`` feeds layer
  ``b`` when ``a``'s output reaches ``b`` through operations without parameters (right for
  skips and branches; needs a traceable model);
- :func:`chain_graph` from a list of tensors only (what ``LearnedOptimizer(model.parameters())``
  gets): a 1-D tensor right after a tensor whose first dimension it matches is its bias, and
  each layer links to the next one.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

WEIGHT_BIAS, FORWARD, BACKWARD = 0, 1, 2
EDGE_TYPES = ("weight-bias", "forward", "backward")
METHODS = ("modules", "fx")


@dataclass
class ParameterGraph:
    """Nodes are parameter tensors; ``edge_index [2, E]`` and ``edge_type [E]`` join them.

    ``layer[k]`` numbers the layer (module) node ``k`` belongs to, in computation order; it is
    what the plot puts on the x axis. ``params`` holds the tensors themselves (the optimizer
    matches its parameters to nodes by identity); ``names`` their names.
    """

    names: list[str]
    params: list[Tensor]
    layer: list[int]
    edge_index: Tensor
    edge_type: Tensor

    @property
    def num_nodes(self) -> int:
        """Number of parameter tensors."""
        return len(self.params)

    @property
    def num_edges(self) -> int:
        """Number of directed edges (each relation counts twice, once per direction)."""
        return int(self.edge_index.size(1))

    def edges(self, kind: int | None = None) -> set[tuple[str, str]]:
        """The directed edges as ``(source name, target name)`` pairs, of one type or all."""
        pairs = set()
        for (src, dst), t in zip(
            self.edge_index.t().tolist(), self.edge_type.tolist(), strict=True
        ):
            if kind is None or t == kind:
                pairs.add((self.names[src], self.names[dst]))
        return pairs


def _from_layers(
    layers: Sequence[Sequence[tuple[str, Tensor]]], links: Iterable[tuple[int, int]]
) -> ParameterGraph:
    """The graph of ``layers`` (each a list of named tensors) with ``links`` (layer a -> b)."""
    names, params, layer_of, first = [], [], [], []
    for index, members in enumerate(layers):
        first.append(len(params))
        for name, p in members:
            names.append(name)
            params.append(p)
            layer_of.append(index)
    edges: list[tuple[int, int, int]] = []
    for index, members in enumerate(layers):
        nodes = range(first[index], first[index] + len(members))
        edges += [(i, j, WEIGHT_BIAS) for i in nodes for j in nodes if i != j]
    for a, b in sorted(set(links)):
        for i in range(first[a], first[a] + len(layers[a])):
            for j in range(first[b], first[b] + len(layers[b])):
                edges += [(i, j, FORWARD), (j, i, BACKWARD)]
    edge_index = torch.tensor([e[:2] for e in edges], dtype=torch.long).reshape(-1, 2).t()
    edge_type = torch.tensor([e[2] for e in edges], dtype=torch.long)
    return ParameterGraph(names, params, layer_of, edge_index.contiguous(), edge_type)


def _parameter_layers(model: nn.Module) -> dict[str, list[tuple[str, Tensor]]]:
    """The layers: modules that own parameters directly, each with its whole subtree's.

    A module with parameters of its own is one layer together with its children's parameters
    (PyG's ``GCNConv`` owns its bias, its child ``lin`` the weight: one layer); containers
    (``nn.Sequential``, ``nn.ModuleList``) own none, so their children are the layers.
    """
    layers: dict[str, list[tuple[str, Tensor]]] = {}
    seen: set[int] = set()
    for module_name, module in model.named_modules():
        if any(module_name.startswith(f"{owner}.") for owner in layers if owner):
            continue
        if not any(True for _ in module.parameters(recurse=False)):
            continue
        members = []
        for name, p in module.named_parameters():
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                members.append((f"{module_name}.{name}" if module_name else name, p))
        if members:
            layers[module_name] = members
    return layers


def parameter_graph(model: nn.Module, method: str = "modules") -> ParameterGraph:
    """The parameter graph of ``model`` (see the module docstring for the two methods).

    Raises ``TypeError`` unless ``model`` is an ``nn.Module``, ``ValueError`` for an unknown
    ``method`` or a model without trainable parameters, and, for ``method="fx"``, ``ValueError``
    naming the reason when ``torch.fx`` cannot trace the model.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    layers = _parameter_layers(model)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no trainable parameters")
    order = list(layers)
    if method == "modules":
        links = [(i, i + 1) for i in range(len(order) - 1)]
    else:
        links = [(order.index(a), order.index(b)) for a, b in _fx_links(model, set(order))]
    return _from_layers(list(layers.values()), links)


def _fx_links(model: nn.Module, owners: set[str]) -> set[tuple[str, str]]:
    """Pairs ``(a, b)`` of parameter-owning modules where ``a``'s output reaches ``b``.

    Walks the traced graph backwards from each call of an owner ``b`` through nodes that are
    not owners, and links ``b`` to every owner met. A parameter used directly (``get_attr``)
    counts as its module.
    """
    try:
        traced = torch.fx.symbolic_trace(model)
    except Exception as error:  # tracing fails in many ways; say which, and what to use
        raise ValueError(
            f"torch.fx cannot trace {type(model).__name__} ({type(error).__name__}: {error}); "
            "use method='modules'"
        ) from error

    def owner(node: torch.fx.Node) -> str | None:
        if node.op == "call_module" and node.target in owners:
            return str(node.target)
        if node.op == "get_attr":
            module_name = str(node.target).rpartition(".")[0]
            return module_name if module_name in owners else None
        return None

    links: set[tuple[str, str]] = set()
    for node in traced.graph.nodes:
        b = owner(node)
        if b is None:
            continue
        stack, seen = list(node.all_input_nodes), set()
        while stack:
            source = stack.pop()
            if source in seen:
                continue
            seen.add(source)
            a = owner(source)
            if a is not None and a != b:
                links.add((a, b))
            elif a is None:
                stack.extend(source.all_input_nodes)
    return links


def chain_graph(params: Iterable[Tensor]) -> ParameterGraph:
    """A parameter graph from the tensors alone, in the order given (``model.parameters()``).

    A 1-D tensor directly after a tensor of two or more dimensions whose first dimension equals
    its length is that tensor's bias (``nn.Linear``, ``nn.Conv2d`` order their parameters this
    way); every other tensor starts a new layer; each layer links to the next.
    """
    layers: list[list[tuple[str, Tensor]]] = []
    for index, p in enumerate(params):
        previous = layers[-1][-1][1] if layers else None
        is_bias = (
            previous is not None
            and len(layers[-1]) == 1
            and p.dim() == 1
            and previous.dim() >= 2
            and previous.size(0) == p.numel()
        )
        if is_bias:
            layers[-1].append((str(index), p))
        else:
            layers.append([(str(index), p)])
    if not layers:
        raise ValueError("chain_graph needs at least one parameter tensor")
    return _from_layers(layers, [(i, i + 1) for i in range(len(layers) - 1)])
