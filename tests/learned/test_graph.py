"""The parameter graph: nodes, edges and layers of known models, three ways to build it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from torchopt_edu.learned.graph import (
    BACKWARD,
    FORWARD,
    WEIGHT_BIAS,
    chain_graph,
    parameter_graph,
)


def _mlp() -> nn.Sequential:
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 2))


class Skip(nn.Module):
    """a -> b -> c, and a's output also goes straight into c (a skip connection)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(3, 5)
        self.b = nn.Linear(5, 5, bias=False)
        self.c = nn.Linear(5, 1)

    def forward(self, x):
        h = torch.relu(self.a(x))
        return self.c(self.b(h) + h)


def test_mlp_graph_has_one_node_per_tensor_and_the_expected_edges():
    graph = parameter_graph(_mlp())
    assert graph.names == ["0.weight", "0.bias", "2.weight", "2.bias", "4.weight", "4.bias"]
    assert graph.layer == [0, 0, 1, 1, 2, 2]
    assert graph.edges(WEIGHT_BIAS) == {
        (f"{i}.{a}", f"{i}.{b}")
        for i in (0, 2, 4)
        for a, b in (("weight", "bias"), ("bias", "weight"))
    }
    forward = {
        (f"{i}.{a}", f"{j}.{b}")
        for i, j in ((0, 2), (2, 4))
        for a in ("weight", "bias")
        for b in ("weight", "bias")
    }
    assert graph.edges(FORWARD) == forward
    assert graph.edges(BACKWARD) == {(b, a) for a, b in forward}
    assert graph.num_edges == 6 + 2 * 8


def test_fx_trace_follows_the_skip_connection_and_module_order_does_not():
    model = Skip()
    layers = {("a.weight", "b.weight"), ("b.weight", "c.weight"), ("a.weight", "c.weight")}
    fx_forward = {(s, d) for s, d in parameter_graph(model, "fx").edges(FORWARD)}
    assert {
        (s, d) for s, d in fx_forward if s.endswith("weight") and d.endswith("weight")
    } == layers
    order_forward = parameter_graph(model, "modules").edges(FORWARD)
    assert ("a.weight", "c.weight") not in order_forward
    assert ("a.weight", "b.weight") in order_forward


def test_chain_graph_from_the_parameters_alone_matches_module_order():
    model = _mlp()
    by_modules = parameter_graph(model)
    chain = chain_graph(model.parameters())
    assert chain.layer == by_modules.layer
    assert torch.equal(chain.edge_index, by_modules.edge_index)
    assert torch.equal(chain.edge_type, by_modules.edge_type)
    assert all(a is b for a, b in zip(chain.params, by_modules.params, strict=True))


def test_a_layer_owns_its_childrens_parameters_gcn_and_lstm():
    from torchopt_edu.gnn import GCN

    gcn = parameter_graph(GCN(8, [16], 3))
    assert gcn.names == ["convs.0.bias", "convs.0.lin.weight", "convs.1.bias", "convs.1.lin.weight"]
    assert gcn.layer == [0, 0, 1, 1]
    lstm = parameter_graph(nn.Sequential(nn.Embedding(10, 4), nn.LSTM(4, 6), nn.Linear(6, 10)))
    assert lstm.layer == [0, 1, 1, 1, 1, 2, 2]
    assert ("1.weight_ih_l0", "1.bias_hh_l0") in lstm.edges(WEIGHT_BIAS)


def test_bad_input_is_named():
    with pytest.raises(TypeError, match="torch.nn.Module"):
        parameter_graph([torch.zeros(2)])
    with pytest.raises(ValueError, match="method must be one of"):
        parameter_graph(_mlp(), "order")
    with pytest.raises(ValueError, match="no trainable parameters"):
        parameter_graph(nn.ReLU())
    with pytest.raises(ValueError, match="at least one"):
        chain_graph([])
    from torchopt_edu.gnn import GCN

    with pytest.raises(ValueError, match="torch.fx cannot trace GCN.*method='modules'"):
        parameter_graph(GCN(8, [16], 3), "fx")


def test_graph_plot_draws_every_node():
    pytest.importorskip("matplotlib", reason="plots need matplotlib")
    from torchopt_edu.learned.plot import plot_parameter_graph

    graph = parameter_graph(_mlp())
    figure = plot_parameter_graph(graph)
    texts = [t.get_text() for t in figure.axes[0].texts]
    assert texts == [
        f"{n}\n[{'x'.join(map(str, p.shape))}]"
        for n, p in zip(graph.names, graph.params, strict=True)
    ]
