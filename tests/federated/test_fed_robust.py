"""Robust aggregation: parity with Flower's FedMedian, FedTrimmedAvg and Krum; clipping; and
robust strategies against 20% attackers on digits while FedAvg fails."""

import functools
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from torchopt_edu.federated import (
    MLP,
    Attack,
    ClientResult,
    FedAvg,
    FedAvgM,
    InvalidUpdateError,
    LocalTraining,
    Simulation,
    iid_partition,
    load_digits_split,
    make_clients,
)
from torchopt_edu.federated.robust import ClipUpdates, FedMedian, FedTrimmedAvg, Krum
from torchopt_edu.optim import SGD


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))


def _results(model, count, seed=0):
    """``count`` client models around ``model``, two of them far off (outliers)."""
    generator = torch.Generator().manual_seed(seed)
    results = []
    for k in range(count):
        spread = 50.0 if k in (1, count - 2) else 1.0
        state = {
            name: t + spread * torch.randn(t.shape, generator=generator)
            for name, t in model.state_dict().items()
        }
        results.append(ClientResult(k, state, num_samples=10 + 7 * k))
    return results


def _flower(results):
    return [([t.numpy() for t in r.state.values()], r.num_samples) for r in results]


def _assert_matches(model, expected):
    for got, want in zip(model.state_dict().values(), expected, strict=True):
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("count", [7, 8])
def test_median_and_trimmed_mean_equal_flowers(count):
    aggregate = pytest.importorskip("flwr.server.strategy.aggregate", reason="needs flwr")
    for strategy, expected in (
        (FedMedian(), lambda r: aggregate.aggregate_median(_flower(r))),
        (FedTrimmedAvg(beta=0.2), lambda r: aggregate.aggregate_trimmed_avg(_flower(r), 0.2)),
        (FedTrimmedAvg(beta=0.3), lambda r: aggregate.aggregate_trimmed_avg(_flower(r), 0.3)),
    ):
        model = _model()
        results = _results(model, count)
        strategy.aggregate_fit(model, results)
        _assert_matches(model, expected(results))


@pytest.mark.parametrize(("malicious", "keep"), [(0, 0), (2, 0), (2, 3), (1, 5)])
def test_krum_and_multi_krum_equal_flowers(malicious, keep):
    aggregate = pytest.importorskip("flwr.server.strategy.aggregate", reason="needs flwr")
    model = _model()
    results = _results(model, 8, seed=malicious + keep)
    Krum(num_malicious_clients=malicious, num_clients_to_keep=keep).aggregate_fit(model, results)
    _assert_matches(model, aggregate.aggregate_krum(_flower(results), malicious, keep))
    if keep == 0:  # Krum picks one client's model, and never an outlier
        chosen = [r for r in results if torch.equal(r.state["0.weight"], model[0].weight)]
        assert len(chosen) == 1 and chosen[0].client not in (1, 6)


def test_median_ignores_a_minority_of_huge_values_and_rounds_integer_buffers():
    model = nn.BatchNorm1d(2)
    states = []
    for k, value in enumerate([1.0, 2.0, 3.0, 1e30, -1e30]):
        state = {
            name: torch.full_like(t, value)
            for name, t in model.state_dict().items()
            if t.is_floating_point()
        }
        state["num_batches_tracked"] = torch.tensor(k + 1)
        states.append(ClientResult(k, state, 5))
    FedMedian().aggregate_fit(model, states)
    assert torch.equal(model.weight.detach(), torch.full((2,), 2.0))
    assert model.num_batches_tracked.item() == 3


def test_clipping_scales_each_update_to_max_norm_and_composes_with_any_strategy():
    model = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 1.0]]))
    # updates (3, 4) (norm 5, clipped to (0.6, 0.8)) and (0.3, 0) (norm 0.3, kept)
    results = [
        ClientResult(0, {"weight": torch.tensor([[4.0, 5.0]])}, 1),
        ClientResult(1, {"weight": torch.tensor([[1.3, 1.0]])}, 3),
    ]
    ClipUpdates(FedAvg(), max_norm=1.0).aggregate_fit(model, results)
    expected = torch.tensor([[1.0 + (0.6 + 3 * 0.3) / 4, 1.0 + 0.8 / 4]])
    torch.testing.assert_close(model.weight.detach(), expected)
    # around a robust rule: clipping first, then the median of three
    median = ClipUpdates(FedMedian(), max_norm=1.0)
    results.append(ClientResult(2, {"weight": torch.tensor([[-99.0, 1.0]])}, 1))
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 1.0]]))
    median.aggregate_fit(model, results)
    torch.testing.assert_close(model.weight.detach(), torch.tensor([[1.3, 1.0]]))
    assert repr(median) == "ClipUpdates(FedMedian(), max_norm=1.0)"


def test_robust_rules_name_a_malformed_client_and_check_their_arguments():
    model = _model()
    results = _results(model, 4)
    results[2].state["2.bias"] = torch.tensor([float("nan"), 0.0])
    before = {name: t.clone() for name, t in model.state_dict().items()}
    for strategy in (FedMedian(), FedTrimmedAvg(), Krum(1), ClipUpdates(FedAvg(), 1.0)):
        with pytest.raises(InvalidUpdateError, match="client 2: tensor '2.bias'"):
            strategy.aggregate_fit(model, results)
        for name, tensor in before.items():
            assert torch.equal(model.state_dict()[name], tensor)
    with pytest.raises(ValueError, match=r"beta must lie in \[0.0, 0.5\), got 0.5"):
        FedTrimmedAvg(beta=0.5)
    with pytest.raises(ValueError, match="num_malicious_clients must be >= 0, got -1"):
        Krum(num_malicious_clients=-1)
    with pytest.raises(ValueError, match="num_clients_to_keep=9 but only 4 results"):
        Krum(num_clients_to_keep=9).aggregate_fit(model, _results(model, 4))
    with pytest.raises(ValueError, match=r"max_norm must lie in \(0.0, inf\), got 0"):
        ClipUpdates(FedAvg(), max_norm=0)


def test_a_robust_rule_steps_through_its_server_strategy():
    model = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(1.0)
    results = [
        ClientResult(k, {"weight": torch.tensor([[v]])}, 1) for k, v in enumerate([0.0, 2.0, 3.0])
    ]
    strategy = FedMedian(server=FedAvgM(lr=0.5, momentum=0.0))
    strategy.aggregate_fit(model, results)  # median 2: w = 1 - 0.5 (1 - 2)
    assert model.weight.item() == 1.5
    assert set(strategy.state_dict()) == {"server"}


@pytest.fixture(scope="module")
def digits_clients():
    x_train, y_train, x_test, y_test = load_digits_split(seed=0)
    clients = make_clients(x_train, y_train, iid_partition(len(y_train), 20, seed=0))
    return clients, (x_test, y_test)


def _accuracy(digits_clients, strategy, attack=None):
    clients, test_set = digits_clients
    torch.manual_seed(0)
    train = LocalTraining(functools.partial(SGD, lr=0.1), epochs=3, batch_size=10)
    simulation = Simulation(
        MLP(), clients, strategy, train, test_set, fraction=1.0, attack=attack, on_invalid="skip"
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return simulation.run(10, progress=False)[-1]["test_accuracy"]


def test_with_20_percent_attackers_robust_rules_stay_within_5_points_and_fedavg_fails(
    digits_clients,
):
    clean = _accuracy(digits_clients, FedAvg())
    assert clean > 0.85
    assert _accuracy(digits_clients, FedAvg(), Attack("scaling", fraction=0.2)) < 0.5
    sign_flip = Attack("sign_flip", fraction=0.2)
    assert _accuracy(digits_clients, FedAvg(), sign_flip) < 0.5
    for strategy in (FedMedian(), FedTrimmedAvg(beta=0.2), Krum(4, num_clients_to_keep=10)):
        assert _accuracy(digits_clients, strategy, sign_flip) > clean - 0.05, strategy
