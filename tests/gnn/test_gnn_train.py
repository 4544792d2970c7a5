"""Full-batch training: the document's example, accuracies, drop-in parity, schedulers,
early stopping, bad arguments."""

import copy
import math
from collections.abc import Callable

import pytest
import torch
from torch.optim import Optimizer
from torch_geometric.data import Data

from torchopt_edu import lr_scheduler
from torchopt_edu.gnn import (
    GCN,
    compare_optimizers,
    evaluate,
    format_table,
    karate_club,
    random_regression_graph,
    sbm_graph,
    seeded,
    train_node_model,
)
from torchopt_edu.gnn.demo import DEMO_LR
from torchopt_edu.optim import OPTIMIZERS, SGD, Adagrad, Adam, AdamW, RMSprop


def test_documents_example_reaches_near_zero_loss() -> None:
    """GCNConv(10, 64) -> ReLU -> GCNConv(64, 1), Adam lr 0.01, 100 epochs, MSE to ones."""
    data = random_regression_graph(num_nodes=10, num_edges=20, num_features=10, seed=0)
    with seeded(0):
        model = GCN(10, [64], 1)
    history = train_node_model(
        model,
        data,
        Adam(model.parameters(), lr=0.01),
        epochs=100,
        task="regression",
        progress=False,
    )
    assert history.epochs == 100 and history.stop_reason == "max_epochs"
    assert history.loss[0] > 0.5
    assert history.loss[-1] < 0.02  # measured 0.009
    assert history.final["train_loss"] < 0.02


def _karate_model() -> GCN:
    with seeded(0):
        return GCN(34, [16], 4, dropout=0.5)


def test_karate_club_test_accuracy() -> None:
    data = karate_club(seed=0)
    model = _karate_model()
    with seeded(0):
        history = train_node_model(
            model, data, Adam(model.parameters(), lr=0.01), epochs=200, patience=50, progress=False
        )
    assert history.task == "classification" and history.monitor == "val_loss"
    assert history.final["train_acc"] == 1.0
    assert history.final["test_acc"] >= 0.70  # measured 0.75 (15 of 20 test nodes)


def test_sbm_test_accuracy_and_the_graph_matters() -> None:
    """On the SBM the features alone are weak; the GCN's neighbour averaging recovers the
    blocks. Without edges a GCN is a per-node MLP (only self-loops) and does much worse."""
    data = sbm_graph(seed=0)
    no_edges = data.clone()
    no_edges.edge_index = torch.empty(2, 0, dtype=torch.long)
    accuracy = {}
    for name, graph in (("gcn", data), ("mlp", no_edges)):
        with seeded(0):
            model = GCN(8, [16], 3, dropout=0.5)
            history = train_node_model(
                model,
                graph,
                Adam(model.parameters(), lr=0.01),
                epochs=200,
                patience=50,
                progress=False,
            )
        accuracy[name] = history.final["test_acc"]
    assert accuracy["gcn"] >= 0.95  # measured 0.99
    assert accuracy["mlp"] <= 0.75  # measured 0.625


# name -> (ours, torch's, a learning rate that trains karate in 30 epochs)
TORCH_TWINS: dict[str, tuple[type[Optimizer], type[Optimizer], float]] = {
    "adam": (Adam, torch.optim.Adam, 0.01),
    "adamw": (AdamW, torch.optim.AdamW, 0.01),
    "sgd": (SGD, torch.optim.SGD, 0.3),
    "adagrad": (Adagrad, torch.optim.Adagrad, 0.1),
    "rmsprop": (RMSprop, torch.optim.RMSprop, 0.01),
}


@pytest.mark.parametrize("name", sorted(TORCH_TWINS))
@pytest.mark.parametrize("implementation", [{}, {"foreach": False}, {"foreach": True}])
def test_ours_and_torch_give_identical_loss_curves(name: str, implementation: dict) -> None:
    """Drop-in proof: same seed, same initial model (deep copies), same dropout masks.

    With the same implementation (loop or foreach) the curves are bitwise equal; with each
    library's default (ours may pick another implementation than torch's on CPU) they agree
    to float32 rounding, 1e-6.
    """
    ours, theirs, lr = TORCH_TWINS[name]
    histories = compare_optimizers(
        _karate_model(),
        karate_club(),
        epochs=30,
        progress=False,
        optimizers={
            "ours": lambda params: ours(params, lr=lr, **implementation),
            "torch": lambda params: theirs(params, lr=lr, **implementation),
        },
    )
    ours_loss = torch.tensor(histories["ours"].loss)
    torch_loss = torch.tensor(histories["torch"].loss)
    tolerance = 1e-6 if not implementation else 0.0
    torch.testing.assert_close(ours_loss, torch_loss, rtol=0, atol=tolerance)
    assert ours_loss[-1] < ours_loss[0]


def test_fused_adam_curves_are_identical() -> None:
    histories = compare_optimizers(
        _karate_model(),
        karate_club(),
        epochs=30,
        progress=False,
        optimizers={
            "ours": lambda p: Adam(p, lr=0.01, fused=True),
            "torch": lambda p: torch.optim.Adam(p, lr=0.01, fused=True),
        },
    )
    assert histories["ours"].loss == histories["torch"].loss


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_every_optimizer_of_the_package_trains(name: str) -> None:
    """Each optimizer at the CLI's demo learning rate fits the SBM graph in 30 epochs."""
    with seeded(0):
        model = GCN(8, [16], 3)
    optimizer = OPTIMIZERS[name](model.parameters(), lr=DEMO_LR[name])
    history = train_node_model(model, sbm_graph(), optimizer, epochs=30, progress=False)
    assert history.loss[-1] < 0.5 * history.loss[0]
    assert history.final["test_acc"] >= 0.9  # measured 0.925 (momentum) to 0.99


def test_closure_optimizers_work() -> None:
    """LBFGS re-evaluates the loss through the closure several times per step."""
    data = random_regression_graph(seed=0)
    with seeded(0):
        model = GCN(10, [64], 1)
    history = train_node_model(
        model, data, torch.optim.LBFGS(model.parameters(), lr=0.1), epochs=10, progress=False
    )
    assert history.loss[-1] < 1e-3 * history.loss[0]


SCHEDULERS: dict[str, Callable[[Optimizer], object]] = {
    "step": lambda opt: lr_scheduler.StepDecay(opt, step_size=5, gamma=0.5),
    "exponential": lambda opt: lr_scheduler.ExponentialDecay(opt, gamma=0.9),
    "plateau": lambda opt: lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=1),
    "torch_plateau": lambda opt: torch.optim.lr_scheduler.ReduceLROnPlateau(
        opt, factor=0.5, patience=1
    ),
    "cyclic": lambda opt: lr_scheduler.CyclicLR(opt, base_lr=0.01, max_lr=0.1, step_size_up=4),
    "warmup_cosine": lambda opt: lr_scheduler.WarmupCosine(opt, warmup_steps=5, total_steps=30),
    "one_cycle": lambda opt: lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=30),
}


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_schedulers_step_once_per_epoch(name: str) -> None:
    """The recorded learning rates are those the scheduler gives when it is stepped once per
    epoch, with the monitored validation loss for the plateau schedulers."""
    model = _karate_model()
    optimizer = Adam(model.parameters(), lr=0.05)  # large enough for the val loss to plateau
    history = train_node_model(
        model, karate_club(), optimizer, SCHEDULERS[name](optimizer), epochs=30, progress=False
    )
    replay_optimizer = Adam([torch.zeros(1, requires_grad=True)], lr=0.05)
    replay = SCHEDULERS[name](replay_optimizer)
    expected = []
    for value in history.metrics["val_loss"]:
        expected.append(replay_optimizer.param_groups[0]["lr"])
        replay_optimizer.step()  # no gradient: changes nothing, keeps torch's order check happy
        if "plateau" in name:
            replay.step(value)
        else:
            replay.step()
    assert history.lr == pytest.approx(expected, rel=1e-12)
    assert len(set(history.lr)) > 1  # the schedule did change the learning rate


def test_early_stopping_restores_the_best_state() -> None:
    data = karate_club()
    model = _karate_model()
    history = train_node_model(
        model, data, Adam(model.parameters(), lr=0.05), epochs=300, patience=10, progress=False
    )
    assert history.stop_reason == "early_stopping"
    assert history.epochs == history.best_epoch + 10 + 1
    best = min(history.metrics["val_loss"])
    assert history.metrics["val_loss"][history.best_epoch] == best
    assert evaluate(model, data, "classification")["val_loss"] == pytest.approx(best, abs=1e-7)
    assert history.final["val_loss"] == pytest.approx(best, abs=1e-7)


def test_diverging_run_stops_and_keeps_finite_parameters() -> None:
    data = random_regression_graph(seed=0)
    with seeded(0):
        model = GCN(10, [64], 1)
    history = train_node_model(
        model, data, SGD(model.parameters(), lr=50.0), epochs=100, progress=False
    )
    assert history.stop_reason == "non_finite"
    assert history.epochs < 100
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert history.final["train_loss"] == pytest.approx(min(history.metrics["train_loss"]))


def test_without_validation_nodes_the_training_loss_is_monitored() -> None:
    data = karate_club(num_val=0)
    model = _karate_model()
    history = train_node_model(
        model, data, Adam(model.parameters(), lr=0.01), epochs=20, patience=5, progress=False
    )
    assert history.monitor == "train_loss" and history.stop_reason == "max_epochs"
    assert set(history.final) == {"train_loss", "train_acc", "test_loss", "test_acc"}


def test_compare_optimizers_leaves_the_model_alone_and_tabulates() -> None:
    model = _karate_model()
    initial = copy.deepcopy(model.state_dict())
    histories = compare_optimizers(
        model,
        karate_club(),
        {"a": lambda p: Adam(p, lr=0.01), "b": lambda p: Adam(p, lr=0.01)},
        epochs=10,
        progress=False,
    )
    for name, value in model.state_dict().items():
        assert torch.equal(value, initial[name]), name
    assert histories["a"].loss == histories["b"].loss  # same init, same dropout masks
    table = format_table(histories).splitlines()
    assert table[0].split() == [
        "optimizer",
        "epochs",
        "best",
        "stop",
        "train_loss",
        "train_acc",
        "val_loss",
        "val_acc",
        "test_loss",
        "test_acc",
        "seconds",
    ]
    assert [line.split()[0] for line in table[2:]] == ["a", "b"]


def test_bad_arguments_are_rejected_before_training() -> None:
    data = karate_club()
    model = _karate_model()
    initial = copy.deepcopy(model.state_dict())
    optimizer = Adam(model.parameters(), lr=0.01)
    with pytest.raises(TypeError, match="optimizer must be a torch.optim.Optimizer, got str"):
        train_node_model(model, data, "adam", epochs=5)
    with pytest.raises(ValueError, match="optimizer must hold parameters of this model"):
        train_node_model(copy.deepcopy(model), data, optimizer, epochs=5)
    other = Adam(model.parameters(), lr=0.01)
    with pytest.raises(ValueError, match="scheduler must be built on the optimizer"):
        train_node_model(model, data, optimizer, lr_scheduler.StepDecay(other), epochs=5)
    with pytest.raises(ValueError, match="epochs must be an int >= 1, got 0"):
        train_node_model(model, data, optimizer, epochs=0)
    with pytest.raises(ValueError, match="patience must be None or an int >= 1, got 0"):
        train_node_model(model, data, optimizer, epochs=5, patience=0)
    too_few = GCN(34, [16], 2)
    with pytest.raises(
        ValueError, match="model outputs 2 class scores but data.y has labels up to 3"
    ):
        train_node_model(too_few, data, Adam(too_few.parameters()), epochs=5)
    with pytest.raises(ValueError, match="data.y must be a float tensor"):
        train_node_model(model, data, optimizer, epochs=5, task="regression")
    for name, value in model.state_dict().items():
        assert torch.equal(value, initial[name]), name
    assert optimizer.state == {}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_training_matches_torch_adam() -> None:
    from torchopt_edu.gnn import to_device

    model, data = to_device(_karate_model(), karate_club(), "cuda")
    histories = compare_optimizers(
        model,
        data,
        epochs=30,
        progress=False,
        optimizers={
            "ours": lambda p: Adam(p, lr=0.01),
            "torch": lambda p: torch.optim.Adam(p, lr=0.01),
        },
    )
    torch.testing.assert_close(
        torch.tensor(histories["ours"].loss),
        torch.tensor(histories["torch"].loss),
        rtol=0,
        atol=1e-6,
    )
    assert histories["ours"].final["train_acc"] == 1.0


def _small_graph(**fields: object) -> Data:
    data = Data(
        x=torch.randn(6, 3, generator=torch.Generator().manual_seed(0)),
        edge_index=torch.tensor([[0, 1, 1, 2, 3, 4], [1, 0, 2, 1, 4, 5]]),
        y=torch.tensor([0, 1, 0, 1, 0, 1]),
    )
    for key, value in fields.items():
        data[key] = value
    return data


def _losses(data: Data, epochs: int = 5, **model_options: object) -> list[float]:
    with seeded(0):
        model = GCN(data.x.size(1), [4], 2, **model_options)
    history = train_node_model(
        model, data, Adam(model.parameters(), lr=0.05), epochs=epochs, progress=False
    )
    return history.loss


def test_edge_weights_reach_the_model() -> None:
    """Unit weights are GCN's default (the same curve as no weights), zero weights cut every
    edge (the same curve as no edges), and other weights change the curve."""
    unweighted = _losses(_small_graph())
    assert _losses(_small_graph(edge_weight=torch.ones(6))) == unweighted
    no_edges = _losses(_small_graph(edge_index=torch.empty(2, 0, dtype=torch.long)))
    assert no_edges != unweighted
    torch.testing.assert_close(_losses(_small_graph(edge_weight=torch.zeros(6))), no_edges)
    weighted = _losses(_small_graph(edge_weight=torch.tensor([0.1, 0.1, 5.0, 5.0, 1.0, 1.0])))
    assert all(math.isfinite(value) for value in weighted)
    assert weighted != unweighted


def test_negative_edge_weights_are_refused_before_training() -> None:
    """A negative weight can make a degree negative; its -1/2 power is NaN and so is the loss."""
    data = _small_graph(edge_weight=torch.tensor([1.0, 1.0, -3.0, 1.0, 1.0, 1.0]))
    with seeded(0):
        model = GCN(3, [4], 2)
    initial = copy.deepcopy(model.state_dict())
    optimizer = Adam(model.parameters(), lr=0.05)
    with pytest.raises(ValueError, match="data.edge_weight must be >= 0 .* got -3.0 at edge 2"):
        train_node_model(model, data, optimizer, epochs=5, progress=False)
    for name, value in model.state_dict().items():
        assert torch.equal(value, initial[name]), name
    assert optimizer.state == {}


def test_one_node_graph_trains() -> None:
    """One labelled node, with no edge or with a self-loop (GCN adds the same self-loop), is a
    valid if tiny graph: it trains, and both forms give the same curve."""
    x, y = torch.randn(1, 3, generator=torch.Generator().manual_seed(0)), torch.tensor([1])
    no_edge = Data(x=x, edge_index=torch.empty(2, 0, dtype=torch.long), y=y)
    self_loop = Data(
        x=x,
        edge_index=torch.zeros(2, 1, dtype=torch.long),
        y=y,
        train_mask=torch.ones(1, dtype=torch.bool),
    )
    losses = _losses(no_edge, epochs=20)
    assert losses[-1] < 0.5 * losses[0]
    assert _losses(self_loop, epochs=20) == losses


def test_a_dict_instead_of_data_is_a_clear_type_error() -> None:
    model = _karate_model()
    optimizer = Adam(model.parameters(), lr=0.01)
    graph = karate_club()
    fields = {"x": graph.x, "edge_index": graph.edge_index, "y": graph.y}
    for task in (None, "classification"):
        with pytest.raises(
            TypeError,
            match="data must be a torch_geometric.data.Data, got "
            "dict; build one with Data\\(\\*\\*fields\\)",
        ):
            train_node_model(model, fields, optimizer, epochs=5, task=task, progress=False)
    train_node_model(model, Data(**fields), optimizer, epochs=1, progress=False)  # as advised


def test_model_and_graph_that_do_not_fit_are_named_before_training() -> None:
    data = _small_graph()
    with seeded(0):
        model = GCN(3, [4], 2)
    initial = copy.deepcopy(model.state_dict())
    optimizer = Adam(model.parameters(), lr=0.05)
    with pytest.raises(
        ValueError, match="model parameters are torch.float32 but data.x is torch.float64"
    ):
        train_node_model(model, _small_graph(x=data.x.double()), optimizer, epochs=2)
    with pytest.raises(
        ValueError,
        match="model\\(x, edge_index\\) failed on this graph \\(x of "
        "shape \\[6, 5\\]\\).*cannot be multiplied",
    ):
        train_node_model(model, _small_graph(x=torch.randn(6, 5)), optimizer, epochs=2)
    for bad in (True, 2.0):
        with pytest.raises(ValueError, match="epochs must be an int >= 1, got"):
            train_node_model(model, data, optimizer, epochs=bad)
        with pytest.raises(ValueError, match="patience must be None or an int >= 1, got"):
            train_node_model(model, data, optimizer, epochs=2, patience=bad)
    for name, value in model.state_dict().items():
        assert torch.equal(value, initial[name]), name
    assert optimizer.state == {}


def test_labels_outside_every_mask_are_not_read() -> None:
    """Unlabelled nodes (label -1, outside every mask) take part in message passing only; the
    class count is checked against the labelled nodes."""
    data = _small_graph(
        y=torch.tensor([0, 1, -1, -1, 7, 1]),
        train_mask=torch.tensor([True, True, False, False, False, False]),
        test_mask=torch.tensor([False, False, False, False, False, True]),
    )
    history = _losses(data, epochs=20)
    assert history[-1] < history[0]


@pytest.mark.parametrize("restore_best", [False, True])
def test_schedule_free_is_measured_and_kept_at_its_averaged_point(restore_best):
    """The metrics, the early-stopping decision and the kept state are the average x the
    method produces (they were the gradient point y); the optimizer ends in eval mode."""
    from torchopt_edu.optim import AdamWScheduleFree

    data = sbm_graph(block_sizes=(30, 30), num_features=4, train_per_class=5, num_val=10, seed=0)
    with seeded(0):
        model = GCN(4, [16], 2)
    optimizer = AdamWScheduleFree(model.parameters(), lr=0.05)
    with seeded(0):
        history = train_node_model(
            model, data, optimizer, epochs=40, restore_best=restore_best, progress=False
        )
    assert not optimizer.param_groups[0]["train_mode"]
    epoch = history.best_epoch if restore_best else len(history.loss) - 1
    assert evaluate(model, data, "classification")["val_loss"] == pytest.approx(
        history.metrics["val_loss"][epoch], rel=1e-6
    )


@pytest.mark.parametrize("held_out", ["val_mask", "test_mask"])
def test_a_held_out_mask_overlapping_the_training_nodes_is_refused(held_out):
    """Its metrics were measured on nodes the model trained on (a val mask without a train
    mask was already refused for the same leak)."""
    data = sbm_graph(block_sizes=(10, 10), num_features=4, train_per_class=3, num_val=4, seed=0)
    setattr(data, held_out, data.train_mask.clone())
    with seeded(0):
        model = GCN(4, [8], 2)
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match=f"data.train_mask and data.{held_out} share 6 nodes"):
        train_node_model(model, data, Adam(model.parameters()), epochs=1, progress=False)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())


def test_num_nodes_disagreeing_with_the_features_is_named():
    data = Data(
        x=torch.randn(5, 3),
        edge_index=torch.tensor([[0, 1], [1, 2]]),
        y=torch.zeros(5, dtype=torch.long),
        num_nodes=7,
    )
    with seeded(0):
        model = GCN(3, [4], 2)
    with pytest.raises(ValueError, match="data.num_nodes is 7 but data.x has 5 rows"):
        train_node_model(model, data, Adam(model.parameters()), epochs=1, progress=False)


class _Pair(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gcn = GCN(3, [4], 2)

    def forward(self, x, edge_index):
        return self.gcn(x, edge_index), None


@pytest.mark.parametrize(
    ("make_model", "words"),
    [
        (lambda: GCN(3, [4], 1), "a classifier needs at least 2 class scores"),
        (_Pair, "must return a tensor"),
        (lambda: torch.nn.Linear(3, 2), r"model\(x, edge_index\) failed on this graph"),
    ],
)
def test_models_that_cannot_classify_this_graph_are_named(make_model, words):
    data = Data(
        x=torch.randn(5, 3),
        edge_index=torch.tensor([[0, 1], [1, 2]]),
        y=torch.zeros(5, dtype=torch.long),
    )
    with seeded(0):
        model = make_model()
    with pytest.raises(ValueError, match=words):
        train_node_model(model, data, Adam(model.parameters()), epochs=1, progress=False)
