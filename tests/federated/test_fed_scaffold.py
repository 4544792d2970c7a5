"""SCAFFOLD: two rounds equal Algorithm 1 (option II) computed by hand, and its state."""

import copy
import functools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from torchopt_edu.federated import Client, LocalTraining
from torchopt_edu.federated.scaffold import Scaffold
from torchopt_edu.optim import SGD

ETA, STEPS, SERVER_LR, N = 0.1, 3, 0.5, 3


def _clients():
    generator = torch.Generator().manual_seed(0)
    clients = []
    for k, slope in enumerate([1.0, -2.0, 3.0]):  # heterogeneous: a different target per client
        x = torch.randn(4, 1, generator=generator, dtype=torch.float64)
        clients.append(Client(k, x, slope * x[:, 0]))
    return clients


def _loss(outputs, targets):
    return F.mse_loss(outputs[:, 0], targets)


def _gradient(w, client):
    x, y = client.features[:, 0], client.labels
    return float(2 * (x * (w * x - y)).mean())


def _by_hand(clients, rounds):
    """Algorithm 1 of Karimireddy et al. on the scalar model ``w * x`` with full batches."""
    x, c, c_k = 0.5, 0.0, [0.0] * N
    for sampled in rounds:
        steps, control_steps = [], []
        for k in sampled:
            y = x
            for _ in range(STEPS):
                y -= ETA * (_gradient(y, clients[k]) - c_k[k] + c)
            new = c_k[k] - c + (x - y) / (STEPS * ETA)
            steps.append(y - x)
            control_steps.append(new - c_k[k])
            c_k[k] = new
        x += SERVER_LR * sum(steps) / len(sampled)
        c += sum(control_steps) / N
    return x, c, c_k


def test_two_rounds_equal_scaffold_by_hand_and_control_variates_are_the_state():
    clients = _clients()
    model = nn.Linear(1, 1, bias=False).double()
    with torch.no_grad():
        model.weight.fill_(0.5)
    train = LocalTraining(functools.partial(SGD, lr=ETA), epochs=STEPS, batch_size=4, loss_fn=_loss)
    strategy = Scaffold(num_clients=N, lr=SERVER_LR)
    rounds = [[0, 1], [1, 2]]
    worker = copy.deepcopy(model)
    for sampled in rounds:
        global_state = {n: t.clone() for n, t in model.state_dict().items()}
        results = [
            clients[k].fit(worker, global_state, strategy.configure_client(k, train), seed=k)
            for k in sampled
        ]
        strategy.aggregate_fit(model, results)
    w, c, c_k = _by_hand(clients, rounds)
    assert model.weight.item() == pytest.approx(w, rel=1e-12)
    assert strategy.control["weight"].item() == pytest.approx(c, rel=1e-12)
    for k in range(N):
        assert strategy.client_controls[k]["weight"].item() == pytest.approx(c_k[k], rel=1e-12)

    restored = Scaffold(num_clients=N, lr=SERVER_LR)
    restored.load_state_dict(strategy.state_dict(), model)
    corrected = restored.configure_client(0, train).gradient_correction
    assert corrected[0].item() == pytest.approx(c - c_k[0], rel=1e-12)
    with pytest.raises(ValueError, match="control variates .* do not fit the model"):
        Scaffold(N).load_state_dict(strategy.state_dict(), nn.Linear(2, 1, bias=False))
    with pytest.raises(ValueError, match="num_clients must be >= 1, got 0"):
        Scaffold(0)
