"""The simulation on digits: stated accuracy, reproducibility, sampling, rejected clients."""

import copy
import functools

import numpy as np
import pytest
import torch

from torchopt_edu.federated import (
    MLP,
    Client,
    ClipUpdates,
    DPFedAvg,
    FedAdam,
    FedAvg,
    FedMedian,
    InvalidUpdateError,
    Krum,
    LocalTraining,
    Scaffold,
    Simulation,
    dirichlet_partition,
    fed_avg,
    iid_partition,
    load_digits_split,
    make_clients,
)
from torchopt_edu.federated.simulation import client_seed, sample_clients
from torchopt_edu.optim import SGD

TIMES = ("client_time_s", "round_time_s", "eval_time_s")


@pytest.fixture(scope="module")
def digits():
    return load_digits_split(seed=0)


def _simulation(digits, partition, strategy, seed=0, fraction=0.5):
    x_train, y_train, x_test, y_test = digits
    torch.manual_seed(seed)
    train = LocalTraining(functools.partial(SGD, lr=0.1), epochs=5, batch_size=10)
    clients = make_clients(x_train, y_train, partition)
    return Simulation(MLP(), clients, strategy, train, (x_test, y_test), fraction, seed)


def test_iid_fedavg_reaches_90_percent_on_digits_in_15_rounds(digits):
    y_train = digits[1]
    simulation = _simulation(digits, iid_partition(len(y_train), 20, seed=0), FedAvg())
    history = simulation.run(15, progress=False)
    assert history[-1]["test_accuracy"] >= 0.90
    assert history[-1]["test_accuracy"] > history[0]["test_accuracy"]
    assert [r["clients"] for r in history] == [10] * 15


@pytest.mark.parametrize(("strategy", "accuracy"), [(FedAvg, 0.65), (FedAdam, 0.80)])
def test_dirichlet_0_1_accuracy_on_digits_in_15_rounds(digits, strategy, accuracy):
    y_train = digits[1]
    partition = dirichlet_partition(y_train, 20, alpha=0.1, seed=0)
    history = _simulation(digits, partition, strategy()).run(15, progress=False)
    assert history[-1]["test_accuracy"] >= accuracy


def test_same_seed_gives_identical_results(digits):
    partition = dirichlet_partition(digits[1], 10, alpha=0.5, seed=1)
    runs = []
    for _ in range(2):
        simulation = _simulation(digits, partition, FedAdam(lr=0.03), seed=4)
        history = simulation.run(3, progress=False)
        runs.append(
            (
                [{k: v for k, v in r.items() if k not in TIMES} for r in history],
                simulation.model.state_dict(),
            )
        )
    assert runs[0][0] == runs[1][0]
    for name, tensor in runs[0][1].items():
        assert torch.equal(runs[1][1][name], tensor)
    other = _simulation(digits, partition, FedAdam(lr=0.03), seed=5).run(1, progress=False)
    assert other[0]["train_loss"] != runs[0][0][0]["train_loss"]


def test_sampling_is_seeded_per_round_and_a_thousand_clients_train_only_the_sampled(
    monkeypatch,
):
    assert sample_clients(1000, 0.01, seed=0, round_=3) == sample_clients(1000, 0.01, 0, 3)
    assert sample_clients(1000, 0.01, seed=0, round_=3) != sample_clients(1000, 0.01, 0, 4)
    assert len(sample_clients(1000, 0.01, 0, 1)) == 10
    assert len(sample_clients(7, 0.01, 0, 1)) == 1  # at least one client
    assert client_seed(0, 1, 2) != client_seed(0, 2, 1)
    assert len({client_seed(0, 1, k) for k in range(1000)}) == 1000  # depends on the client id

    generator = torch.Generator().manual_seed(0)
    features = torch.randn(3000, 64, generator=generator)
    labels = torch.randint(0, 10, (3000,), generator=generator)
    clients = make_clients(features, labels, iid_partition(3000, 1000, seed=0))
    train = LocalTraining(functools.partial(SGD, lr=0.1), epochs=1, batch_size=3)
    simulation = Simulation(MLP(), clients, FedAvg(), train, fraction=np.float32(0.01), seed=0)
    calls = []
    fit = Client.fit

    def recording_fit(client, model, global_state, train, seed):
        calls.append((client.cid, id(model), seed))
        return fit(client, model, global_state, train, seed)

    monkeypatch.setattr(Client, "fit", recording_fit)
    record = simulation.run_round()
    assert record["clients"] == 10 and record["samples"] == 30
    sampled = sample_clients(1000, 0.01, seed=0, round_=1)
    assert [cid for cid, _, _ in calls] == sampled  # only the sampled clients trained
    assert {model for _, model, _ in calls} == {id(simulation.worker)}  # on one working model
    assert [seed for _, _, seed in calls] == [client_seed(0, 1, k) for k in sampled]


def _with_diverging_client(digits):
    """Three clients; client 1's features are scaled to 1e30, so its SGD overflows to NaN."""
    x_train, y_train, _, _ = digits
    clients = make_clients(x_train[:90], y_train[:90], iid_partition(90, 3, seed=0))
    clients[1] = Client(1, clients[1].features * 1e30, clients[1].labels)
    return clients


# in "raise" mode the simulation leaves the value checks to the strategy: every kind of
# strategy must name the client and the tensor and leave the global model as it was
STRATEGIES = {
    "FedAvg": FedAvg,
    "FedAdam": FedAdam,
    "FedMedian": FedMedian,
    "Krum": lambda: Krum(num_clients_to_keep=2),
    "ClipUpdates": lambda: ClipUpdates(FedAvg(), max_norm=1.0),
    "DPFedAvg": lambda: DPFedAvg(clip_norm=1.0, noise_multiplier=1.0, sample_rate=1.0),
    "Scaffold": lambda: Scaffold(num_clients=3),
}


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_a_diverged_client_is_rejected_naming_it_and_the_global_model_is_untouched(
    digits, strategy
):
    torch.manual_seed(0)
    model = MLP()
    before = copy.deepcopy(model.state_dict())
    train = LocalTraining(functools.partial(SGD, lr=0.1), epochs=1, batch_size=10)
    clients = _with_diverging_client(digits)
    simulation = Simulation(model, clients, STRATEGIES[strategy](), train, fraction=1.0)
    with pytest.raises(InvalidUpdateError, match=r"client 1: tensor '0.weight': .* NaN or inf"):
        simulation.run_round()
    for name, tensor in before.items():
        assert torch.equal(model.state_dict()[name], tensor)
    assert simulation.history == [] and simulation.strategy.state_dict() == (
        STRATEGIES[strategy]().state_dict()
    )


class _ClientSendingANumber(Client):
    """A client whose result holds a Python number instead of a tensor."""

    def fit(self, model, global_state, train, seed):
        result = super().fit(model, global_state, train, seed)
        result.state["0.bias"] = 0.5
        return result


def test_a_client_result_that_is_not_a_tensor_is_named(digits):
    x_train, y_train, _, _ = digits
    clients = make_clients(x_train[:90], y_train[:90], iid_partition(90, 3, seed=0))
    clients[2] = _ClientSendingANumber(2, clients[2].features, clients[2].labels)
    simulation = Simulation(MLP(), clients, FedAvg(), LocalTraining(SGD), fraction=1.0)
    with pytest.raises(InvalidUpdateError, match="client 2: tensor '0.bias': expected a Tensor"):
        simulation.run_round()


def test_skip_mode_averages_the_other_clients_and_records_the_rejection(digits):
    torch.manual_seed(0)
    model = MLP()
    global_state = copy.deepcopy(model.state_dict())
    train = LocalTraining(functools.partial(SGD, lr=0.1), epochs=1, batch_size=10)
    clients = _with_diverging_client(digits)
    simulation = Simulation(model, clients, FedAvg(), train, fraction=1.0, on_invalid="skip")
    with pytest.warns(RuntimeWarning, match="rejected update: client 1: tensor"):
        record = simulation.run_round()
    assert record["rejected"] == [1] and record["samples"] == 60

    worker = MLP()
    good = [clients[k].fit(worker, global_state, train, client_seed(0, 1, k)) for k in (0, 2)]
    expected = fed_avg([r.state for r in good], [r.num_samples for r in good])
    for name, tensor in expected.items():
        assert torch.equal(model.state_dict()[name], tensor)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"fraction": 0.0}, r"fraction must be in \(0, 1\], got 0.0"),
        ({"fraction": 1.5}, r"fraction must be in \(0, 1\], got 1.5"),
        ({"on_invalid": "ignore"}, "on_invalid must be 'raise' or 'skip', got 'ignore'"),
    ],
)
def test_bad_simulation_arguments_raise(digits, kwargs, message):
    x_train, y_train = digits[0][:20], digits[1][:20]
    clients = make_clients(x_train, y_train, iid_partition(20, 2))
    train = LocalTraining(functools.partial(SGD, lr=0.1))
    with pytest.raises(ValueError, match=message):
        Simulation(MLP(), clients, FedAvg(), train, **kwargs)


def test_bad_local_training_and_clients_raise():
    with pytest.raises(ValueError, match="epochs must be an integer >= 1, got 0"):
        LocalTraining(functools.partial(SGD, lr=0.1), epochs=0)
    with pytest.raises(ValueError, match="proximal_mu must be a finite number >= 0, got -0.5"):
        LocalTraining(functools.partial(SGD, lr=0.1), proximal_mu=-0.5)
    with pytest.raises(ValueError, match="scheduler_interval must be 'epoch' or 'batch'"):
        LocalTraining(functools.partial(SGD, lr=0.1), scheduler_interval="step")
    with pytest.raises(TypeError, match="optimizer must be a callable"):
        LocalTraining("sgd")
    with pytest.raises(ValueError, match="client 3: has no samples"):
        Client(3, torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64))
    with pytest.raises(ValueError, match="client 2: 5 features but 4 labels"):
        Client(2, torch.zeros(5, 4), torch.zeros(4, dtype=torch.int64))
