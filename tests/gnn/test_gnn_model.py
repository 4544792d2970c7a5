"""The GCN model: configurations, formula, caching, reset."""

import pytest
import torch
from torch import nn
from torch_geometric.nn import GCNConv

from torchopt_edu.gnn import GCN, count_parameters, karate_club, random_regression_graph, seeded


def test_documents_configuration() -> None:
    model = GCN(10, [64], 1)
    assert [(c.in_channels, c.out_channels) for c in model.convs] == [(10, 64), (64, 1)]
    assert count_parameters(model) == (10 * 64 + 64) + (64 * 1 + 1)
    data = random_regression_graph()
    assert model(data.x, data.edge_index).shape == (10, 1)


def test_forward_is_the_documents_forward() -> None:
    """GCN(10, [64], 1) computes conv2(relu(conv1(x))) with the document's layers."""
    data = random_regression_graph(seed=1)
    model = GCN(10, [64], 1)
    conv1, conv2 = GCNConv(10, 64), GCNConv(64, 1)
    conv1.load_state_dict(model.convs[0].state_dict())
    conv2.load_state_dict(model.convs[1].state_dict())
    expected = conv2(torch.relu(conv1(data.x, data.edge_index)), data.edge_index)
    torch.testing.assert_close(model(data.x, data.edge_index), expected, rtol=0, atol=0)


def test_residual_layers_add_their_input_back() -> None:
    data = karate_club()
    model = GCN(34, [16, 16], 4, residual=True, activation="tanh").eval()
    convs, skips = model.convs, model.skips
    assert isinstance(skips[0], nn.Linear) and isinstance(skips[1], nn.Identity)
    x, edges = data.x, data.edge_index
    h1 = torch.tanh(convs[0](x, edges)) + skips[0](x)  # widths 34 -> 16: projected
    h2 = torch.tanh(convs[1](h1, edges)) + h1  # widths 16 -> 16: identity
    torch.testing.assert_close(model(x, edges), convs[2](h2, edges), rtol=0, atol=0)


@pytest.mark.parametrize(
    ("norm", "norm_type"), [("batch", nn.BatchNorm1d), ("layer", nn.LayerNorm)]
)
def test_normalisation_between_layers(norm: str, norm_type: type) -> None:
    data = karate_club()
    model = GCN(34, [16, 8], 4, norm=norm, dropout=0.5)
    assert [type(n) for n in model.norms] == [norm_type, norm_type]
    assert [n.weight.numel() for n in model.norms] == [16, 8]
    model.norms[0].register_forward_hook(lambda _m, _i, out: outputs.append(out))
    outputs: list[torch.Tensor] = []
    model(data.x, data.edge_index)
    dim = 0 if norm == "batch" else 1  # batch norm: over nodes; layer norm: over channels
    torch.testing.assert_close(
        outputs[0].mean(dim=dim), torch.zeros(34 if dim else 16), atol=1e-5, rtol=0
    )


def test_reset_parameters_restarts_every_layer() -> None:
    data = karate_club()
    model = GCN(34, [16, 16], 4, residual=True, norm="batch")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(3):  # move biases away from 0 and batch-norm statistics away from (0, 1)
        optimizer.zero_grad()
        model(data.x, data.edge_index).square().mean().backward()
        optimizer.step()
    other = GCN(34, [16, 16], 4, residual=True, norm="batch")
    with seeded(0):
        model.reset_parameters()
    with seeded(0):
        other.reset_parameters()
    for (name, value), expected in zip(
        model.state_dict().items(), other.state_dict().values(), strict=True
    ):
        assert torch.equal(value, expected), name
    assert all(torch.equal(conv.bias, torch.zeros_like(conv.bias)) for conv in model.convs)
    assert torch.equal(model.norms[0].running_mean, torch.zeros(16))
    assert torch.equal(model.norms[0].running_var, torch.ones(16))


def test_cached_normalisation_gives_the_same_outputs_and_gradients() -> None:
    data = karate_club()
    with seeded(0):
        plain = GCN(34, [16], 4)
    cached = GCN(34, [16], 4, cached=True)
    cached.load_state_dict(plain.state_dict())
    for _ in range(2):  # the second call uses the cache
        for model in (plain, cached):
            model.zero_grad()
            model(data.x, data.edge_index).square().sum().backward()
        assert cached.convs[0]._cached_edge_index is not None
        torch.testing.assert_close(
            cached(data.x, data.edge_index), plain(data.x, data.edge_index), rtol=0, atol=0
        )
        for p, q in zip(cached.parameters(), plain.parameters(), strict=True):
            torch.testing.assert_close(p.grad, q.grad, rtol=0, atol=0)


def test_cache_is_dropped_on_move_and_reset() -> None:
    data = karate_club()
    model = GCN(34, [16], 4, cached=True)
    model(data.x, data.edge_index)
    model.to(torch.float64)
    assert all(conv._cached_edge_index is None for conv in model.convs)
    model(data.x.double(), data.edge_index)
    assert model.convs[0]._cached_edge_index[1].dtype == torch.float64
    model.reset_parameters()
    assert all(conv._cached_edge_index is None for conv in model.convs)


def test_hidden_channels_must_be_a_sequence() -> None:
    with pytest.raises(
        TypeError, match="hidden_channels must be a sequence of widths such as \\[64\\], got 64"
    ):
        GCN(10, 64, 1)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"hidden_channels": [0]}, "channel sizes must be positive ints"),
        ({"activation": "swish"}, "activation must be one of .* got 'swish'"),
        ({"norm": "group"}, "norm must be None or one of .* got 'group'"),
        ({"dropout": 1.0}, "dropout must be in \\[0, 1\\), got 1.0"),
    ],
)
def test_bad_configuration(kwargs: dict, message: str) -> None:
    arguments = {"in_channels": 4, "hidden_channels": [8], "out_channels": 2} | kwargs
    with pytest.raises(ValueError, match=message):
        GCN(**arguments)
