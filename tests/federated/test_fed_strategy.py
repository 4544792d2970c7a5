"""Strategies against hand-written math: FedAvg = centralised SGD, FedProx, FedOpt's server steps,
and malformed updates rejected without touching the global model or the server optimizer."""

import copy
import functools
import math

import numpy as np
import pytest
import torch
from torch import nn

from torchopt_edu.federated import (
    Client,
    ClientResult,
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedOpt,
    FedProx,
    FedYogi,
    InvalidUpdateError,
    LocalTraining,
    Simulation,
)
from torchopt_edu.lr_scheduler import StepDecay
from torchopt_edu.optim import OPTIMIZERS, SGD, Adam


def _data(n=12, seed=0):
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(n, 4, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, 3, (n,), generator=generator)
    return features, labels


def _model(seed=0):
    torch.manual_seed(seed)
    return nn.Linear(4, 3).double()


def test_fedavg_with_one_client_and_one_local_step_equals_centralised_sgd():
    features, labels = _data()
    model = _model()
    central = copy.deepcopy(model)
    train = LocalTraining(functools.partial(SGD, lr=0.5), epochs=1, batch_size=len(labels))
    simulation = Simulation(model, [Client(0, features, labels)], FedAvg(), train, fraction=1.0)
    simulation.run(1, progress=False)

    optimizer = SGD(central.parameters(), lr=0.5)
    loss = nn.functional.cross_entropy(central(features), labels)
    loss.backward()
    optimizer.step()
    for name, tensor in central.state_dict().items():
        # equal up to float64 rounding (the client sums its shuffled batch in another order)
        torch.testing.assert_close(model.state_dict()[name], tensor, rtol=0, atol=1e-15)
    assert simulation.history[0]["train_loss"] == pytest.approx(loss.item(), rel=1e-12)


def test_fedprox_client_steps_on_the_proximal_objective():
    """Two full-batch SGD steps on F(w) + mu/2 ||w - w_global||^2, written out by hand."""
    features, labels = _data()
    model, mu, lr = _model(), 0.7, 0.3
    global_params = [p.detach().clone() for p in model.parameters()]
    train = FedProx(mu).configure_fit(
        LocalTraining(functools.partial(SGD, lr=lr), epochs=2, batch_size=len(labels))
    )
    assert train.proximal_mu == mu
    result = Client(0, features, labels).fit(copy.deepcopy(model), model.state_dict(), train, 0)

    weights = [p.detach().clone().requires_grad_() for p in model.parameters()]
    for _ in range(2):
        logits = features @ weights[0].T + weights[1]
        grads = torch.autograd.grad(nn.functional.cross_entropy(logits, labels), weights)
        with torch.no_grad():
            for w, g, w0 in zip(weights, grads, global_params, strict=True):
                w -= lr * (g + mu * (w - w0))  # gradient of the proximal term: mu (w - w^t)
    torch.testing.assert_close(result.state["weight"], weights[0].detach(), rtol=0, atol=1e-12)
    torch.testing.assert_close(result.state["bias"], weights[1].detach(), rtol=0, atol=1e-12)


def _results(model, deltas, weights):
    """Client results whose states are the global state minus the given deltas."""
    state = model.state_dict()
    return [
        ClientResult(k, {name: state[name] - delta[name] for name in state}, n)
        for k, (delta, n) in enumerate(zip(deltas, weights, strict=True))
    ]


def _random_deltas(model, count, seed):
    generator = torch.Generator().manual_seed(seed)
    return [
        {
            name: 0.1 * torch.randn(t.shape, generator=generator, dtype=t.dtype)
            for name, t in model.state_dict().items()
        }
        for _ in range(count)
    ]


def _pseudo_gradient(deltas, weights):
    total = sum(weights)
    return {
        name: sum(n * d[name] for d, n in zip(deltas, weights, strict=True)) / total
        for name in deltas[0]
    }


def _two_rounds(strategy, seed=3):
    """Apply two rounds of random client results; return the model, pseudo-gradients, start."""
    model = _model(seed)
    start = {name: t.clone() for name, t in model.state_dict().items()}
    gradients = []
    for round_ in range(2):
        deltas = _random_deltas(model, 3, seed=10 * seed + round_)
        weights = [5, 2, 9]
        gradients.append(_pseudo_gradient(deltas, weights))
        strategy.aggregate_fit(model, _results(model, deltas, weights))
    return model, gradients, start


def _adam_by_hand(w, gradients, lr, betas, tau):
    beta1, beta2 = betas
    m, v = torch.zeros_like(w), torch.zeros_like(w)
    for t, delta in enumerate(gradients, start=1):  # Delta = w^t - w_avg
        m = beta1 * m + (1 - beta1) * delta
        v = beta2 * v + (1 - beta2) * delta**2
        m_hat, v_hat = m / (1 - beta1**t), v / (1 - beta2**t)
        w = w - lr * m_hat / (v_hat.sqrt() + tau)
    return w


def _yogi_by_hand(w, gradients, lr, betas, tau):
    beta1, beta2 = betas
    m, v = torch.zeros_like(w), torch.full_like(w, tau**2)
    for t, delta in enumerate(gradients, start=1):
        m = beta1 * m + (1 - beta1) * delta
        v = v - (1 - beta2) * torch.sign(v - delta**2) * delta**2
        w = w - lr / (1 - beta1**t) * m / (v.sqrt() / math.sqrt(1 - beta2**t) + tau)
    return w


def _adagrad_by_hand(w, gradients, lr, tau):
    v = torch.full_like(w, tau**2)
    for delta in gradients:
        v = v + delta**2
        w = w - lr * delta / (v.sqrt() + tau)
    return w


def _momentum_by_hand(w, gradients, lr, momentum):
    velocity = torch.zeros_like(w)
    for delta in gradients:
        velocity = momentum * velocity + delta
        w = w - lr * velocity
    return w


def _check_two_rounds(strategy, by_hand, **hyper_parameters):
    model, gradients, start = _two_rounds(strategy)
    for name, w in start.items():
        expected = by_hand(w.clone(), [g[name] for g in gradients], **hyper_parameters)
        torch.testing.assert_close(model.state_dict()[name], expected, rtol=0, atol=1e-12)


def test_fedadam_rounds_equal_adam_by_hand_and_keep_state_across_rounds():
    _check_two_rounds(
        FedAdam(lr=0.05, betas=(0.8, 0.95), tau=1e-2),
        _adam_by_hand,
        lr=0.05,
        betas=(0.8, 0.95),
        tau=1e-2,
    )


def test_fedyogi_rounds_equal_yogi_by_hand():
    _check_two_rounds(
        FedYogi(lr=0.05, betas=(0.8, 0.95), tau=1e-2),
        _yogi_by_hand,
        lr=0.05,
        betas=(0.8, 0.95),
        tau=1e-2,
    )


def test_fedadagrad_rounds_equal_adagrad_by_hand():
    _check_two_rounds(FedAdagrad(lr=0.05, tau=1e-2), _adagrad_by_hand, lr=0.05, tau=1e-2)


def test_fedavgm_rounds_equal_server_momentum_by_hand():
    _check_two_rounds(FedAvgM(lr=0.8, momentum=0.5), _momentum_by_hand, lr=0.8, momentum=0.5)


@pytest.mark.parametrize(
    ("strategy", "by_hand", "defaults"),
    [
        (FedAvgM, _momentum_by_hand, {"lr": 1.0, "momentum": 0.9}),
        (FedAdagrad, _adagrad_by_hand, {"lr": 0.1, "tau": 1e-3}),
        (FedAdam, _adam_by_hand, {"lr": 0.03, "betas": (0.9, 0.99), "tau": 1e-3}),
        (FedYogi, _yogi_by_hand, {"lr": 0.03, "betas": (0.9, 0.99), "tau": 1e-3}),
    ],
    ids=["FedAvgM", "FedAdagrad", "FedAdam", "FedYogi"],
)
def test_default_hyper_parameters_are_the_documented_ones(strategy, by_hand, defaults):
    _check_two_rounds(strategy(), by_hand, **defaults)


def test_fedprox_and_fedavg_defaults():
    train = LocalTraining(functools.partial(SGD, lr=0.1))
    assert FedProx().configure_fit(train).proximal_mu == 0.01
    assert FedAvg().configure_fit(train) is train
    assert repr(FedAvg()) == "FedAvg()" and repr(FedProx()) == "FedProx(mu=0.01)"
    model, _, _ = _two_rounds(FedProx())  # the server side of FedProx is FedAvg's
    reference, _, _ = _two_rounds(FedAvg())
    for name, tensor in reference.state_dict().items():
        assert torch.equal(model.state_dict()[name], tensor)


class _TiedLinear(nn.Module):
    """One weight matrix used twice (encoder and transposed decoder), as in tied embeddings."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.encoder = nn.Linear(4, 3, bias=False).double()
        self.decoder = nn.Linear(3, 4, bias=True).double()
        self.decoder.weight = self.encoder.weight  # the same Parameter under two names
        self.register_buffer("scale", torch.ones(2, dtype=torch.float64))


def test_fedopt_steps_a_tied_parameter_once_and_keeps_the_tie():
    model = _TiedLinear()
    assert set(model.state_dict()) == {"encoder.weight", "decoder.weight", "decoder.bias", "scale"}
    start = {name: t.clone() for name, t in model.state_dict().items()}
    generator = torch.Generator().manual_seed(4)
    results = []
    for k, n in enumerate((3, 1)):
        state = {
            name: t + torch.randn(t.shape, generator=generator, dtype=t.dtype)
            for name, t in start.items()
        }
        state["decoder.weight"] = state["encoder.weight"]  # the clients' models are tied too
        results.append(ClientResult(k, state, n))
    average = {name: (3 * results[0].state[name] + results[1].state[name]) / 4 for name in start}

    FedAvgM(lr=0.5, momentum=0.0).aggregate_fit(model, results)

    expected = start["encoder.weight"] - 0.5 * (start["encoder.weight"] - average["encoder.weight"])
    torch.testing.assert_close(model.encoder.weight.detach(), expected, rtol=0, atol=1e-15)
    assert model.decoder.weight is model.encoder.weight
    expected_bias = start["decoder.bias"] - 0.5 * (start["decoder.bias"] - average["decoder.bias"])
    torch.testing.assert_close(model.decoder.bias.detach(), expected_bias, rtol=0, atol=1e-15)
    torch.testing.assert_close(model.scale, average["scale"], rtol=0, atol=1e-15)  # a buffer


def test_fedopt_with_sgd_lr_1_is_fedavg_and_torch_optim_works_as_server_optimizer():
    model_sgd, _, _ = _two_rounds(FedOpt(functools.partial(SGD, lr=1.0)))
    model_avg, _, _ = _two_rounds(FedAvg())
    for name, tensor in model_avg.state_dict().items():
        torch.testing.assert_close(model_sgd.state_dict()[name], tensor, rtol=0, atol=1e-15)
    model_ours, _, _ = _two_rounds(FedOpt(functools.partial(Adam, lr=0.02)))
    model_torch, _, _ = _two_rounds(FedOpt(functools.partial(torch.optim.Adam, lr=0.02)))
    for name, tensor in model_torch.state_dict().items():
        torch.testing.assert_close(model_ours.state_dict()[name], tensor, rtol=0, atol=1e-12)


def test_fedopt_averages_buffers_and_steps_only_parameters():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    strategy = FedAdam(lr=0.1)
    clients = []
    for k, batches in enumerate((2, 5)):
        client = copy.deepcopy(model)
        for _ in range(batches):
            client(torch.randn(8, 3) + k)  # training mode: running statistics move
        clients.append(ClientResult(k, client.state_dict(), 1))
    strategy.aggregate_fit(model, clients)
    bn = model[1]
    expected_mean = (clients[0].state["1.running_mean"] + clients[1].state["1.running_mean"]) / 2
    torch.testing.assert_close(bn.running_mean, expected_mean)
    assert bn.num_batches_tracked.item() == 4  # (2 + 5) / 2 = 3.5 rounds to even: 4
    assert set(strategy.optimizer.state) == set(model.parameters())


def _trained_fedadam():
    model = _model(5)
    strategy = FedAdam(lr=0.05)
    deltas = _random_deltas(model, 2, seed=1)
    strategy.aggregate_fit(model, _results(model, deltas, [1, 1]))
    return model, strategy


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (
            lambda s: s.__setitem__(
                "weight", s["weight"].index_fill(0, torch.tensor([1]), math.nan)
            ),
            r"client 1: tensor 'weight': 4 of 12 values are NaN",
        ),
        (
            lambda s: s.__setitem__("bias", torch.zeros(4, dtype=torch.float64)),
            r"client 1: tensor 'bias': shape \(4,\) != expected \(3,\)",
        ),
        (
            lambda s: s.__setitem__("bias", s["bias"].float()),
            r"client 1: tensor 'bias': dtype torch.float32 != expected torch.float64",
        ),
        (lambda s: s.pop("bias"), r"client 1: keys do not match the model: missing \['bias'\]"),
    ],
)
def test_malformed_update_is_rejected_without_touching_model_or_server_state(corrupt, message):
    model, strategy = _trained_fedadam()
    before_model = copy.deepcopy(model.state_dict())
    before_optimizer = copy.deepcopy(strategy.optimizer.state_dict())
    results = _results(model, _random_deltas(model, 2, seed=2), [3, 4])
    corrupt(results[1].state)
    with pytest.raises(InvalidUpdateError, match=message):
        strategy.aggregate_fit(model, results)
    for name, tensor in before_model.items():
        assert torch.equal(model.state_dict()[name], tensor)
    after_optimizer = strategy.optimizer.state_dict()
    for index, state in before_optimizer["state"].items():
        for key, value in state.items():
            assert torch.equal(after_optimizer["state"][index][key], value), (index, key)


def test_fedopt_refuses_a_second_model_and_bad_arguments():
    model, strategy = _trained_fedadam()
    other = _model(6)
    with pytest.raises(ValueError, match="FedAdam's server optimizer holds the parameters of"):
        strategy.aggregate_fit(other, _results(other, _random_deltas(other, 1, 0), [1]))
    with pytest.raises(TypeError, match="server_optimizer must be callable"):
        FedOpt("adam")
    with pytest.raises(ValueError, match=r"mu must lie in \[0.0, inf\), got -1"):
        FedProx(-1)
    with pytest.raises(ValueError, match=r"mu must lie in \[0.0, inf\), got inf"):
        FedProx(math.inf)
    with pytest.raises(ValueError, match="Invalid learning rate"):
        FedAdam(lr=-1.0)
    with pytest.raises(ValueError, match="Invalid beta parameter at index 1"):
        FedYogi(betas=(0.9, 1.5))
    assert repr(FedAdam(lr=0.03)) == "FedAdam(Adam(lr=0.03, betas=(0.9, 0.99), eps=0.001))"


@pytest.mark.parametrize("interval", ["epoch", "batch"])
def test_client_steps_a_package_scheduler_per_epoch_or_per_batch(interval):
    """StepDecay halves the learning rate after every epoch (or batch): SGD by hand."""
    features, labels = _data(n=12)
    model, lr, seed = _model(), 0.4, 11
    batch_size = 12 if interval == "epoch" else 6
    train = LocalTraining(
        functools.partial(SGD, lr=lr),
        epochs=2,
        batch_size=batch_size,
        scheduler=functools.partial(StepDecay, step_size=1, gamma=0.5),
        scheduler_interval=interval,
    )
    result = Client(0, features, labels).fit(copy.deepcopy(model), model.state_dict(), train, seed)

    torch.default_generator.manual_seed(seed)  # the client's batch order
    weights = [p.detach().clone().requires_grad_() for p in model.parameters()]
    step_lr = lr
    for _ in range(2):
        for batch in torch.randperm(12).split(batch_size):
            logits = features[batch] @ weights[0].T + weights[1]
            grads = torch.autograd.grad(nn.functional.cross_entropy(logits, labels[batch]), weights)
            with torch.no_grad():
                for w, g in zip(weights, grads, strict=True):
                    w -= step_lr * g
            if interval == "batch":
                step_lr *= 0.5
        if interval == "epoch":
            step_lr *= 0.5
    torch.testing.assert_close(result.state["weight"], weights[0].detach(), rtol=0, atol=1e-12)
    torch.testing.assert_close(result.state["bias"], weights[1].detach(), rtol=0, atol=1e-12)


def _simulated(strategy, rounds=2):
    """Two clients with different data, both sampled, two local epochs, ``rounds`` rounds."""
    features, labels = _data(n=24)
    clients = [Client(0, features[:12], labels[:12]), Client(1, features[12:], labels[12:])]
    train = LocalTraining(functools.partial(SGD, lr=0.5), epochs=2, batch_size=4)
    simulation = Simulation(_model(), clients, strategy, train, fraction=1.0, seed=1)
    simulation.run(rounds, progress=False)
    return simulation.model.state_dict()


def test_simulation_applies_fedprox_proximal_term_and_mu_0_is_fedavg():
    fedavg = _simulated(FedAvg())
    fedprox_0 = _simulated(FedProx(mu=0.0))
    fedprox = _simulated(FedProx(mu=np.float32(0.5)))
    for name, tensor in fedavg.items():
        assert torch.equal(fedprox_0[name], tensor)
    # the proximal term pulls the clients back towards the global model: a smaller step
    start = _model().state_dict()
    for name, tensor in fedavg.items():
        assert not torch.allclose(fedprox[name], tensor, rtol=0, atol=1e-6)
        assert (fedprox[name] - start[name]).norm() < (tensor - start[name]).norm()


def test_numpy_numbers_are_accepted_as_hyper_parameters():
    assert FedProx(mu=np.float32(0.25)).mu == 0.25 and type(FedProx(np.int64(1)).mu) is float
    train = LocalTraining(
        functools.partial(SGD, lr=0.1), epochs=np.int64(2), proximal_mu=np.float32(0.5)
    )
    assert (train.epochs, train.proximal_mu) == (2, 0.5) and type(train.epochs) is int
    with pytest.raises(TypeError, match="mu must be a real number, got True"):
        FedProx(True)


class _Factory:
    """A server-optimizer factory without a ``__name__`` (an object with ``__call__``)."""

    def __call__(self, params, lr=1.0):
        return SGD(params, lr=lr)

    def __repr__(self):
        return "_Factory()"


def test_fedopt_repr_names_the_factory_and_its_options():
    assert repr(FedOpt(functools.partial(Adam, lr=0.02))) == "FedOpt(Adam(lr=0.02))"
    assert repr(FedOpt(functools.partial(_Factory(), lr=0.5))) == "FedOpt(_Factory()(lr=0.5))"
    assert repr(FedAvgM()) == "FedAvgM(SGD(lr=1.0, momentum=0.9))"
    assert repr(FedYogi()) == (
        "FedYogi(Yogi(lr=0.03, betas=(0.9, 0.99), eps=0.001, initial_accumulator_value=1e-06))"
    )


def _server_sgd(params):
    return SGD(params, lr=1.0)


def _server_sgd_at(lr, params):
    return SGD(params, lr=lr)


class _Plain:
    """A factory object with object's default repr (which holds a memory address)."""

    def __call__(self, params, lr=1.0):
        return SGD(params, lr=lr)


def test_fedopt_repr_identifies_any_factory_without_a_memory_address():
    """A checkpoint records the strategy's repr and a resumed run must match it: an address
    (``<function _server_sgd at 0x...>``) would differ in every process."""
    assert repr(FedOpt(_server_sgd)) == "FedOpt(_server_sgd)"
    assert repr(FedOpt(_Plain())) == "FedOpt(_Plain)"
    assert repr(FedOpt(functools.partial(_Plain(), lr=0.5))) == "FedOpt(_Plain(lr=0.5))"
    lambda_repr = repr(FedOpt(lambda params: SGD(params, lr=1.0)))
    assert lambda_repr.endswith(".<locals>.<lambda>)") and "0x" not in lambda_repr
    # a partial's positional arguments are settings too
    assert repr(FedOpt(functools.partial(_server_sgd_at, 0.5))) == "FedOpt(_server_sgd_at(0.5))"


def test_errors_name_the_clients_by_their_ids_and_the_server_leaves_no_gradients():
    model = _model(2)
    results = _results(model, _random_deltas(model, 2, seed=0), [1, 1])
    results[0].client, results[1].client = 17, 4
    results[1].state["bias"] = torch.ones(5, dtype=torch.float64)
    with pytest.raises(InvalidUpdateError, match=r"^client 4: tensor 'bias': shape \(5,\)"):
        FedAvg().aggregate_fit(model, results)
    strategy = FedAdam()
    strategy.aggregate_fit(model, _results(model, _random_deltas(model, 2, seed=1), [1, 2]))
    assert all(p.grad is None for p in model.parameters())  # the pseudo-gradient is cleared
    with pytest.raises(
        ValueError,
        match=(
            r"^FedAdam's server optimizer holds the parameters of the model of its first round; "
            r"use a new strategy for another model$"
        ),
    ):
        other = _model(6)
        strategy.aggregate_fit(other, _results(other, _random_deltas(other, 1, 0), [1]))


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_every_optimizer_of_the_package_works_as_the_server_optimizer(name):
    # FedOpt's promise: any of our optimizers steps on the pseudo-gradient. Its first step
    # must descend along it (sign, Adam-like, orthogonalised and learned-rate steps all do).
    lr = 1.0 if name == "prodigy" else 0.01
    strategy = FedOpt(functools.partial(OPTIMIZERS[name], lr=lr))
    model = _model(3)
    start = {key: t.clone() for key, t in model.state_dict().items()}
    deltas, weights = _random_deltas(model, 3, seed=30), [5, 2, 9]
    strategy.aggregate_fit(model, _results(model, deltas, weights))
    gradient = _pseudo_gradient(deltas, weights)
    moved = {key: model.state_dict()[key] - start[key] for key in start}
    assert sum(float((moved[k] * gradient[k]).sum()) for k in start) < 0
    for round_ in range(2):  # and it keeps its state across rounds
        deltas = _random_deltas(model, 3, seed=31 + round_)
        strategy.aggregate_fit(model, _results(model, deltas, weights))
    assert all(torch.isfinite(t).all() for t in model.state_dict().values())


def _flower_adam_by_hand(w, gradients, lr, betas, tau):
    """Flower's FedAdam as strategy.py documents it: corrected with t + 1, tau on sqrt(v)."""
    beta1, beta2 = betas
    m, v = torch.zeros_like(w), torch.zeros_like(w)
    for t, delta in enumerate(gradients, start=1):  # t: Flower's server_round
        m = beta1 * m + (1 - beta1) * delta
        v = beta2 * v + (1 - beta2) * delta**2
        eta_t = lr * math.sqrt(1 - beta2 ** (t + 1)) / (1 - beta1 ** (t + 1))
        w = w - eta_t * m / (v.sqrt() + tau)
    return w


def _flower_yogi_by_hand(w, gradients, lr, betas, tau):
    """Flower's FedYogi as documented: no bias correction, v starts at 0."""
    beta1, beta2 = betas
    m, v = torch.zeros_like(w), torch.zeros_like(w)
    for delta in gradients:
        m = beta1 * m + (1 - beta1) * delta
        v = v - (1 - beta2) * torch.sign(v - delta**2) * delta**2
        w = w - lr * m / (v.sqrt() + tau)
    return w


def _flower_adagrad_by_hand(w, gradients, lr, tau):
    """Flower's FedAdagrad as documented: v starts at 0."""
    v = torch.zeros_like(w)
    for delta in gradients:
        v = v + delta**2
        w = w - lr * delta / (v.sqrt() + tau)
    return w


@pytest.mark.parametrize(
    ("name", "ours", "flower_by_hand", "ours_by_hand", "options"),
    [
        ("FedAdam", FedAdam, _flower_adam_by_hand, _adam_by_hand, {"betas": (0.8, 0.95)}),
        ("FedYogi", FedYogi, _flower_yogi_by_hand, _yogi_by_hand, {"betas": (0.8, 0.95)}),
        ("FedAdagrad", FedAdagrad, _flower_adagrad_by_hand, _adagrad_by_hand, {}),
    ],
)
def test_flowers_adaptive_strategies_step_as_the_module_docstring_says(
    name, ours, flower_by_hand, ours_by_hand, options
):
    """strategy.py documents how Flower's FedAdam, FedYogi and FedAdagrad differ from ours;
    Flower's own strategy, fed the same pseudo-gradients, follows that formula, and ours
    (its formula tested above) ends elsewhere."""
    flwr = pytest.importorskip("flwr.server.strategy", reason="needs flwr")
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays

    model = _model(3)
    names = list(model.state_dict())
    lr, tau = 0.05, 1e-2
    flwr_options = {f"beta_{i + 1}": b for i, b in enumerate(options.get("betas", ()))}
    flower = getattr(flwr, name)(
        initial_parameters=ndarrays_to_parameters([t.numpy() for t in model.state_dict().values()]),
        eta=lr,
        tau=tau,
        **flwr_options,
    )
    strategy = ours(lr=lr, tau=tau, **options)
    start = {k: t.clone() for k, t in model.state_dict().items()}
    gradients = []
    for round_ in (1, 2):
        deltas = _random_deltas(model, 3, seed=round_)
        weights = [5, 2, 9]
        gradients.append(_pseudo_gradient(deltas, weights))
        strategy.aggregate_fit(model, _results(model, deltas, weights))
        replies = []  # Flower's clients: its global model minus the same deltas
        for delta, n in zip(deltas, weights, strict=True):
            arrays = [
                w - delta[k].numpy() for k, w in zip(names, flower.current_weights, strict=True)
            ]
            replies.append(
                (None, FitRes(Status(Code.OK, ""), ndarrays_to_parameters(arrays), n, {}))
            )
        flower_state = parameters_to_ndarrays(flower.aggregate_fit(round_, replies, [])[0])
    for k, got in zip(names, flower_state, strict=True):
        w = start[k]
        flower_expected = flower_by_hand(w, [g[k] for g in gradients], lr, tau=tau, **options)
        ours_expected = ours_by_hand(w, [g[k] for g in gradients], lr, tau=tau, **options)
        torch.testing.assert_close(torch.from_numpy(got), flower_expected, rtol=0, atol=1e-12)
        torch.testing.assert_close(model.state_dict()[k], ours_expected, rtol=0, atol=1e-12)
        assert (flower_expected - ours_expected).abs().max() > 1e-4
