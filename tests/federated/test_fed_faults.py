"""Faults and attacks in the simulation: refused server steps, failing clients, dropout,
stragglers, too few replies, poisoned updates, compressed uploads and the thread count."""

import copy
import functools

import pytest
import torch
from torch import nn

from torchopt_edu.federated import (
    MLP,
    Attack,
    Client,
    ClientError,
    ClientResult,
    Faults,
    FedAvg,
    FedAvgM,
    LocalTraining,
    ServerStepError,
    Simulation,
    fed_avg,
    iid_partition,
    load_digits_split,
    make_clients,
)
from torchopt_edu.federated.faults import local_steps
from torchopt_edu.federated.simulation import client_seed, default_threads, sample_clients
from torchopt_edu.optim import SGD


@pytest.fixture(scope="module")
def digits():
    x_train, y_train, _, _ = load_digits_split(seed=0)
    return x_train[:200], y_train[:200]


def _train(epochs=1):
    return LocalTraining(functools.partial(SGD, lr=0.1), epochs=epochs, batch_size=10)


def _clients(digits, count=10):
    x, y = digits
    return make_clients(x, y, iid_partition(len(y), count, seed=0))


def _state(model):
    return {name: t.clone() for name, t in model.state_dict().items()}


def _assert_same(state, model):
    for name, tensor in state.items():
        assert torch.equal(model.state_dict()[name], tensor), name


# 1. a server step that overflows is refused, leaving model and optimizer state to the bit


def test_fedavgm_step_that_overflows_is_refused_and_model_and_momentum_stay_bit_identical():
    model = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.zero_()
    strategy = FedAvgM(lr=1.0, momentum=0.9)
    huge = [ClientResult(0, {"weight": torch.tensor([[3e38]])}, 1)]  # finite float32
    strategy.aggregate_fit(model, huge)  # Delta = -3e38: v = -3e38, w = 3e38
    assert model.weight.item() == pytest.approx(3e38)
    weight = _state(model)
    optimizer = copy.deepcopy(strategy.optimizer.state_dict())
    # Delta = 0: v = -2.7e38 and w = 3e38 + 2.7e38 overflows float32
    with pytest.raises(ServerStepError, match="FedAvgM's server step refused: .* 'weight'"):
        strategy.aggregate_fit(model, huge)
    _assert_same(weight, model)
    after = strategy.optimizer.state_dict()
    assert after["param_groups"] == optimizer["param_groups"]
    assert torch.equal(
        after["state"][0]["momentum_buffer"], optimizer["state"][0]["momentum_buffer"]
    )
    assert model.weight.grad is None


class _HugeClient(Client):
    """A client that returns the same finite but huge model every round."""

    def fit(self, model, global_state, train, seed):
        state = {name: torch.full_like(t, 3e38) for name, t in global_state.items()}
        return ClientResult(self.cid, state, self.num_samples, {"loss": 0.0, "train_time_s": 0.0})


def test_the_simulation_records_a_refused_round_and_keeps_the_global_model(digits):
    x, y = digits
    clients = [_HugeClient(0, x[:10], y[:10])]
    torch.manual_seed(0)
    model = nn.Linear(64, 10)
    with torch.no_grad():
        model.weight.zero_()
        model.bias.zero_()
    simulation = Simulation(model, clients, FedAvgM(), _train(), fraction=1.0)
    first = simulation.run_round()
    assert first["refused"] is None
    after_first = _state(model)
    with pytest.warns(RuntimeWarning, match="FedAvgM's server step refused"):
        history = simulation.run(2, progress=False)
    assert [r["refused"] is not None for r in history] == [False, True, True]
    _assert_same(after_first, model)
    assert all(torch.isfinite(t).all() for t in model.state_dict().values())


# 2. a client whose training raises is named; the simulation can skip it


def test_a_failing_client_is_named_and_skip_mode_averages_the_others(digits):
    clients = _clients(digits, 4)
    clients[2] = Client(2, clients[2].features, clients[2].labels + 20)  # labels out of range
    clients[3] = Client(3, clients[3].features[:, :10], clients[3].labels)  # 10 features
    torch.manual_seed(0)
    model = MLP()
    initial = _state(model)
    simulation = Simulation(model, clients, FedAvg(), _train(), fraction=1.0)
    with pytest.raises(ClientError, match="client 2: local training failed in round 1: Index"):
        simulation.run_round()
    _assert_same(initial, model)
    assert simulation.history == []

    simulation = Simulation(
        model, clients, FedAvg(), _train(), fraction=1.0, on_client_error="skip"
    )
    with pytest.warns(RuntimeWarning, match="failed client: client [23]: "):
        record = simulation.run_round()
    assert record["failed"] == [2, 3] and record["replies"] == 2
    worker = MLP()
    good = [clients[k].fit(worker, initial, _train(), client_seed(0, 1, k)) for k in (0, 1)]
    _assert_same(fed_avg([r.state for r in good], [r.num_samples for r in good]), model)


def test_fed_avg_names_the_client_of_a_tensor_or_overflowing_weight():
    states = [{"w": torch.ones(2)}] * 3
    with pytest.raises(TypeError, match="client 1: weight must be a number, got a tensor of shape"):
        fed_avg(states, [1.0, torch.ones(2), 1.0])
    with pytest.raises(ValueError, match="client c: weight must be finite .* 401 digits"):
        fed_avg(states, [1, 1, 10**400], clients=["a", "b", "c"])


# 9. dropout, stragglers and the minimum number of replies


def test_dropout_and_deadline_cut_the_clients_they_say_and_the_rest_are_averaged(digits):
    clients = _clients(digits, 10)
    faults = Faults(dropout=0.3, deadline=2.5, slowness_sigma=0.6)
    torch.manual_seed(0)
    model = MLP()
    initial = _state(model)
    simulation = Simulation(model, clients, FedAvg(), _train(), fraction=1.0, faults=faults)
    record = simulation.run_round()
    sampled = sample_clients(10, 1.0, 0, 1)
    steps = [local_steps(clients[k].num_samples, 1, 10) for k in sampled]
    slowness = faults.slowness(10, 0)
    replying, dropped, late = faults.split(sampled, steps, slowness, 0, 1)
    assert record["dropped"] == dropped and record["late"] == late
    assert dropped and late and replying  # this seed exercises all three
    assert all(slowness[k] * 2 > 2.5 for k in late)
    worker = MLP()
    good = [clients[k].fit(worker, initial, _train(), client_seed(0, 1, k)) for k in replying]
    _assert_same(fed_avg([r.state for r in good], [r.num_samples for r in good]), model)
    assert record["replies"] == len(replying)
    assert record["bytes_sent"] == len(replying) * 4 * sum(p.numel() for p in model.parameters())


def test_a_round_with_fewer_replies_than_the_minimum_is_skipped_and_logged(digits):
    torch.manual_seed(0)
    model = MLP()
    initial = _state(model)
    faults = Faults(dropout=0.5, min_replies=8)
    simulation = Simulation(
        model, _clients(digits), FedAvg(), _train(), fraction=1.0, faults=faults
    )
    with pytest.warns(RuntimeWarning, match="round skipped: .* fewer than min_replies=8"):
        record = simulation.run_round()
    assert record["skipped"].endswith("fewer than min_replies=8") and record["replies"] < 8
    _assert_same(initial, model)
    with pytest.raises(ValueError, match=r"dropout must lie in \[0.0, 1.0\), got 1.0"):
        Faults(dropout=1.0)
    with pytest.raises(ValueError, match="min_replies must be >= 1, got 0"):
        Faults(min_replies=0)


# 5. attacks poison exactly the attackers' updates


def test_attackers_send_the_poisoned_update_and_the_others_their_own(digits):
    clients = _clients(digits, 10)
    attack = Attack("sign_flip", fraction=0.3, scale=2.0)
    attackers = attack.attackers(10, seed=0)
    assert len(attackers) == 3 and attackers == Attack("scaling", 0.3).attackers(10, seed=0)
    torch.manual_seed(0)
    model = MLP()
    initial = _state(model)
    simulation = Simulation(model, clients, FedAvg(), _train(), fraction=1.0, attack=attack)
    simulation.run_round()
    worker = MLP()
    states = []
    for k in range(10):
        state = clients[k].fit(worker, initial, _train(), client_seed(0, 1, k)).state
        if k in attackers:
            state = {n: initial[n] - 2.0 * (t - initial[n]) for n, t in state.items()}
        states.append(state)
    torch.testing.assert_close(
        model.state_dict(), fed_avg(states, [c.num_samples for c in clients]), rtol=0, atol=1e-6
    )
    flipped = Attack("label_flip").poison_client(clients[0])
    assert torch.equal(flipped.labels, 9 - clients[0].labels)
    with pytest.raises(ValueError, match="kind must be one of"):
        Attack("flip")


# the compressor interface: the server aggregates global + decoded update, bytes recorded


class _Float16:
    """Sends each update in float16 and keeps the rounding error for the next round."""

    def __init__(self):
        self.memory = {}

    def compress(self, cid, update):
        decoded = {}
        for name, u in update.items():
            corrected = u + self.memory.get((cid, name), 0)
            decoded[name] = corrected.half().float()
            self.memory[(cid, name)] = corrected - decoded[name]
        return decoded, sum(2 * u.numel() for u in update.values())

    def state_dict(self):
        return {"memory": self.memory}

    def load_state_dict(self, state):
        self.memory = dict(state["memory"])


def test_a_compressor_decodes_what_the_server_averages_and_bytes_are_recorded(digits):
    clients = _clients(digits, 4)
    torch.manual_seed(0)
    model = MLP()
    initial = _state(model)
    compressor = _Float16()
    simulation = Simulation(model, clients, FedAvg(), _train(), fraction=1.0, compressor=compressor)
    record = simulation.run_round()
    assert record["bytes_sent"] == 4 * 2 * sum(p.numel() for p in model.parameters())
    worker = MLP()
    states = []
    for k in range(4):
        state = clients[k].fit(worker, initial, _train(), client_seed(0, 1, k)).state
        states.append({n: initial[n] + (t - initial[n]).half().float() for n, t in state.items()})
    _assert_same(fed_avg(states, [c.num_samples for c in clients]), model)
    assert len(compressor.memory) == 4 * 4


def test_small_models_train_on_one_thread_and_the_count_is_restored(digits):
    assert default_threads(MLP(), 10) == 1
    assert default_threads(nn.Linear(4096, 4096), 32) == torch.get_num_threads()
    before = torch.get_num_threads()
    simulation = Simulation(MLP(), _clients(digits, 2), FedAvg(), _train(), fraction=1.0)
    simulation.run_round()
    assert simulation.threads == 1 and torch.get_num_threads() == before
    with pytest.raises(ValueError, match="threads must be >= 1, got 0"):
        Simulation(MLP(), _clients(digits, 2), FedAvg(), _train(), threads=0)
