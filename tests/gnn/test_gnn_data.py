"""Graph generators, validation of Data objects, and device placement."""

import pytest
import torch
from torch_geometric.data import Data

from torchopt_edu.gnn import (
    GCN,
    karate_club,
    random_regression_graph,
    resolve_device,
    sbm_graph,
    to_device,
    train_node_model,
    validate_graph,
)
from torchopt_edu.optim import Adam


def test_random_graph_is_the_documents_graph() -> None:
    torch.manual_seed(3)
    x = torch.randn(10, 10)  # the document's code, verbatim
    edge_index = torch.randint(0, 10, (2, 20))
    data = random_regression_graph(seed=3)
    assert torch.equal(data.x, x)
    assert torch.equal(data.edge_index, edge_index)
    assert torch.equal(data.y, torch.ones(10, 1))


def test_generators_are_reproducible_and_leave_the_global_generator_alone() -> None:
    torch.manual_seed(0)
    expected_next = torch.rand(3)
    torch.manual_seed(0)
    first, again = sbm_graph(seed=1), sbm_graph(seed=1)
    assert torch.equal(torch.rand(3), expected_next)
    for key in ("x", "edge_index", "y", "train_mask", "val_mask", "test_mask"):
        assert torch.equal(first[key], again[key]), key
    assert not torch.equal(sbm_graph(seed=2).x, first.x)


def test_karate_club_split() -> None:
    data = karate_club(num_val=10, seed=0)
    masks = torch.stack([data.train_mask, data.val_mask, data.test_mask])
    assert masks.sum(dim=1).tolist() == [4, 10, 20]
    assert torch.equal(masks.sum(dim=0), torch.ones(34, dtype=torch.long))  # a partition
    assert sorted(data.y[data.train_mask].tolist()) == [0, 1, 2, 3]  # one node per class
    assert not torch.equal(karate_club(seed=1).val_mask, data.val_mask)
    with pytest.raises(ValueError, match="num_val must be in \\[0, 30\\), got 30"):
        karate_club(num_val=30)


def test_sbm_blocks_are_classes_and_edges_mostly_stay_inside_blocks() -> None:
    data = sbm_graph(
        block_sizes=(60, 60, 60), p_in=0.1, p_out=0.01, train_per_class=10, num_val=30, seed=0
    )
    assert torch.equal(data.y, torch.arange(3).repeat_interleave(60))
    assert torch.bincount(data.y[data.train_mask]).tolist() == [10, 10, 10]
    assert int(data.val_mask.sum()) == 30 and int(data.test_mask.sum()) == 120
    masks = torch.stack([data.train_mask, data.val_mask, data.test_mask])
    assert torch.equal(masks.sum(dim=0), torch.ones(180, dtype=torch.long))  # a partition
    assert data.is_undirected()
    same_block = (data.y[data.edge_index[0]] == data.y[data.edge_index[1]]).float().mean()
    # expected p_in*3*C(60,2) / (p_in*3*C(60,2) + p_out*3*60*60) = 531 / 639 = 0.83
    assert 0.75 < float(same_block) < 0.9


def test_generator_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="p_in must be in \\[0, 1\\], got 1.5"):
        sbm_graph(p_in=1.5)
    with pytest.raises(ValueError, match="train_per_class must be in \\[1, 5\\]"):
        sbm_graph(block_sizes=(5, 8), train_per_class=6)
    with pytest.raises(ValueError, match="num_nodes must be >= 1, got 0"):
        random_regression_graph(num_nodes=0)


def _graph(**fields: object) -> Data:
    data = Data(
        x=torch.randn(10, 3),
        edge_index=torch.tensor([[0, 1, 2], [1, 2, 9]]),
        y=torch.zeros(10, dtype=torch.long),
        train_mask=torch.ones(10, dtype=torch.bool),
    )
    for key, value in fields.items():
        data[key] = value
    return data


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"x": torch.randn(10)}, "data.x must be a 2-D float tensor .* of shape \\[10\\]"),
        ({"x": torch.ones(10, 3, dtype=torch.long)}, "data.x must be a 2-D float .*torch.int64"),
        (
            {
                "x": torch.randn(10, 3).index_put_(
                    (torch.tensor(4), torch.tensor(1)), torch.tensor(float("nan"))
                )
            },
            "data.x must be finite, got nan at index \\[4, 1\\]",
        ),
        (
            {"edge_index": torch.zeros(3, 4, dtype=torch.long)},
            "data.edge_index must have shape \\[2, num_edges\\], got tensor of shape \\[3, 4\\]",
        ),
        ({"edge_index": torch.zeros(2, 4)}, "data.edge_index must be int64 .*torch.float32"),
        (
            {"edge_index": torch.tensor([[0, 10], [1, 2]])},
            "data.edge_index must lie in \\[0, 10\\) .* got values in \\[0, 10\\]",
        ),
        ({"edge_index": torch.tensor([[0, -1], [1, 2]])}, "got values in \\[-1, 2\\]"),
        (
            {"edge_weight": torch.ones(4)},
            "data.edge_weight must be a float tensor of shape "
            "\\[3\\] .* got tensor of shape \\[4\\]",
        ),
        (
            {"edge_weight": torch.ones(3, dtype=torch.long)},
            "data.edge_weight must be a float tensor .*torch.int64",
        ),
        ({"edge_weight": [1.0, 1.0, 1.0]}, "data.edge_weight must be a float tensor .* got list"),
        (
            {"edge_weight": torch.ones(3, dtype=torch.float64)},
            "data.edge_weight must have data.x's dtype torch.float32, got torch.float64",
        ),
        (
            {"edge_weight": torch.tensor([1.0, 2.0, float("nan")])},
            "data.edge_weight must be finite, got nan at edge 2",
        ),
        (
            {"edge_weight": torch.tensor([1.0, -0.5, -2.0])},
            "data.edge_weight must be >= 0 .* got -0.5 at edge 1",
        ),
        (
            {
                "x": torch.randn(0, 3),
                "edge_index": torch.empty(2, 0, dtype=torch.long),
                "y": torch.zeros(0, dtype=torch.long),
                "train_mask": torch.zeros(0, dtype=torch.bool),
            },
            "data.x has 0 rows: the graph needs at least one node",
        ),
        ({"x": torch.randn(10, 0)}, "data.x has 0 features per node \\(shape \\[10, 0\\]\\)"),
        (
            {"edge_index": torch.tensor([[0, 1, 2], [1, 2, 9]], device="meta")},
            "data.edge_index is on meta but data.x is on cpu",
        ),
        (
            {"train_mask": torch.ones(10, dtype=torch.bool, device="meta")},
            "data.train_mask is on meta but data.x is on cpu",
        ),
        ({"train_mask": torch.ones(10)}, "data.train_mask must be a bool tensor of shape \\[10\\]"),
        ({"val_mask": torch.ones(9, dtype=torch.bool)}, "data.val_mask must be a bool tensor"),
        ({"train_mask": torch.zeros(10, dtype=torch.bool)}, "data.train_mask selects no node"),
        ({"y": torch.zeros(9, dtype=torch.long)}, "data.y must have 10 rows .* shape \\[9\\]"),
        ({"y": torch.zeros(10)}, "data.y must be int64 class labels of shape \\[10\\]"),
        ({"y": -torch.ones(10, dtype=torch.long)}, "class labels must be >= 0 .* got -1 at node 0"),
        # one bad label among good ones, not the smallest: the first bad node is named
        (
            {"y": torch.tensor([0, 1, 2, -1, 1, 0, -100, 0, 1, 2])},
            "data.y class labels must be >= 0 on the nodes of train_mask, got -1 at node 3",
        ),
    ],
)
def test_validate_graph_names_the_bad_field(fields: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        validate_graph(_graph(**fields), task="classification")


def test_regression_targets_are_checked() -> None:
    validate_graph(_graph(y=torch.ones(10, 2)), task="regression")
    with pytest.raises(ValueError, match="data.y must be finite on .* for regression, got inf"):
        validate_graph(_graph(y=torch.full((10,), float("inf"))), task="regression")
    with pytest.raises(ValueError, match="task must be one of"):
        validate_graph(_graph(), task="ranking")


def test_training_rejects_nan_features_before_touching_the_model() -> None:
    data = karate_club()
    data.x[3, 3] = float("nan")
    model = GCN(34, [8], 4)
    before = {name: value.clone() for name, value in model.state_dict().items()}
    optimizer = Adam(model.parameters(), lr=0.01)
    with pytest.raises(ValueError, match="data.x must be finite, got nan at index \\[3, 3\\]"):
        train_node_model(model, data, optimizer, epochs=5, progress=False)
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name
    assert optimizer.state == {}


def test_to_device_cpu_and_bad_devices() -> None:
    model, data = to_device(GCN(34, [8], 4), karate_club(), "cpu")
    assert data.x.device.type == "cpu" and next(model.parameters()).device.type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(
        ValueError, match="device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got 'gpu0'"
    ):
        resolve_device("gpu0")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without a GPU")
def test_cuda_request_without_gpu_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="torch.cuda.is_available\\(\\) is False"):
        to_device(GCN(34, [8], 4), karate_club(), "cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_to_device_moves_model_and_graph_to_cuda() -> None:
    model, data = to_device(GCN(34, [8], 4, cached=True), karate_club(), "cuda")
    assert data.x.is_cuda and data.edge_index.is_cuda and data.train_mask.is_cuda
    assert all(p.is_cuda for p in model.parameters())
    assert model(data.x, data.edge_index).is_cuda


def test_held_out_masks_without_train_mask_are_refused() -> None:
    # Without a train_mask the loop would train on every node, val and test labels included.
    data = karate_club()
    del data.train_mask
    model = GCN(34, [8], 4)
    optimizer = Adam(model.parameters(), lr=0.01)
    with pytest.raises(ValueError, match="val_mask and test_mask but no train_mask"):
        train_node_model(model, data, optimizer, epochs=2, progress=False)
    assert optimizer.state == {}
    graph = _graph(val_mask=torch.ones(10, dtype=torch.bool))
    del graph.train_mask
    with pytest.raises(ValueError, match="val_mask but no train_mask"):
        validate_graph(graph)
    del graph.val_mask
    validate_graph(graph, task="classification")  # no masks at all: train on every node


def test_unlabelled_nodes_outside_every_mask_may_carry_any_label() -> None:
    """Only the labels the loss and metrics read must be valid: those of the masked nodes.

    A label of -1 (or cross_entropy's ignore_index -100) on a masked node would be skipped by
    the loss or miscounted by the accuracy, so it is refused and the node named; outside every
    mask it is never read, the usual way to mark an unlabelled node.
    """
    y = torch.tensor([0, 1, -1, -1, -1, -1, -1, -1, -1, -100])
    train = torch.tensor([True, True] + [False] * 8)
    validate_graph(_graph(y=y, train_mask=train), task="classification")
    val = torch.zeros(10, dtype=torch.bool).index_fill_(0, torch.tensor([5]), True)
    with pytest.raises(
        ValueError, match="on the nodes of train_mask or val_mask, got -1 at node 5"
    ):
        validate_graph(_graph(y=y, train_mask=train, val_mask=val), task="classification")
    graph = _graph(y=y)
    del graph.train_mask  # no mask: every node is trained on, so every label must be valid
    with pytest.raises(
        ValueError, match="on every node \\(the graph has no mask\\), got -1 at node 2"
    ):
        validate_graph(graph, task="classification")

    targets = torch.ones(10, 2)
    targets[7, 1] = float("nan")  # an unlabelled node's missing regression target
    validate_graph(_graph(y=targets, train_mask=train), task="regression")
    train[7] = True
    with pytest.raises(
        ValueError,
        match="data.y must be finite on the nodes of train_mask for "
        "regression, got nan at index \\[7, 1\\]",
    ):
        validate_graph(_graph(y=targets, train_mask=train), task="regression")


def test_valid_edge_weights_are_accepted() -> None:
    for weight in ([0.5, 2.0, 1.0], [0.0, 0.0, 0.0]):  # zero weights are allowed: no message
        validate_graph(_graph(edge_weight=torch.tensor(weight)), task="classification")
    validate_graph(
        _graph(edge_index=torch.empty(2, 0, dtype=torch.long), edge_weight=torch.empty(0)),
        task="classification",
    )


def test_one_node_graph_is_valid() -> None:
    for edge_index in (torch.empty(2, 0, dtype=torch.long), torch.zeros(2, 1, dtype=torch.long)):
        one = Data(
            x=torch.randn(1, 3),
            edge_index=edge_index,
            y=torch.zeros(1, dtype=torch.long),
            train_mask=torch.ones(1, dtype=torch.bool),
        )
        validate_graph(one, task="classification")
    with pytest.raises(ValueError, match="data.train_mask selects no node"):
        validate_graph(
            Data(
                x=torch.randn(1, 3),
                edge_index=torch.empty(2, 0, dtype=torch.long),
                train_mask=torch.zeros(1, dtype=torch.bool),
            )
        )


def test_empty_graph_is_refused_before_training() -> None:
    """0 nodes used to pass and then fail inside torch (classification) or train on NaN."""
    empty = Data(
        x=torch.randn(0, 3), edge_index=torch.empty(2, 0, dtype=torch.long), y=torch.zeros(0, 1)
    )
    model = GCN(3, [4], 1)
    before = {name: value.clone() for name, value in model.state_dict().items()}
    optimizer = Adam(model.parameters(), lr=0.01)
    with pytest.raises(ValueError, match="data.x has 0 rows"):
        train_node_model(model, empty, optimizer, epochs=2, progress=False)
    with pytest.raises(ValueError, match="data.x has 0 rows"):
        to_device(model, empty, "cpu")
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name
    assert optimizer.state == {}
