"""Two real gloo processes give the same global model as the in-process simulation."""

import copy
import functools

import pytest
import torch
import torch.distributed as dist

from torchopt_edu.federated import (
    MLP,
    Client,
    FedAdam,
    InvalidUpdateError,
    LocalTraining,
    Simulation,
    dirichlet_partition,
    load_digits_split,
    make_clients,
)
from torchopt_edu.federated.distributed import run_distributed
from torchopt_edu.optim import SGD

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="needs torch.distributed")


def test_two_gloo_workers_match_the_in_process_simulation():
    x_train, y_train, x_test, y_test = load_digits_split(seed=0)
    x_train, y_train = x_train[:400], y_train[:400]
    clients = make_clients(x_train, y_train, dirichlet_partition(y_train, 8, alpha=0.5, seed=0))
    # client 5 has corrupted features: its training overflows and its update is rejected
    clients[5] = Client(5, clients[5].features * 1e30, clients[5].labels)
    train = LocalTraining(functools.partial(SGD, lr=0.1), epochs=1, batch_size=10)
    torch.manual_seed(0)
    model = MLP(hidden=8)
    initial = copy.deepcopy(model.state_dict())
    options = dict(test_set=(x_test, y_test), fraction=0.75, seed=3, on_invalid="skip")

    local = Simulation(model, clients, FedAdam(), train, **options)
    with pytest.warns(RuntimeWarning, match="rejected update: client 5"):
        expected = local.run(3, progress=False)

    distributed_model = MLP(hidden=8)
    distributed_model.load_state_dict(initial)
    history = run_distributed(
        distributed_model, clients, FedAdam(), train, 3, world_size=2, **options
    )

    assert any(5 in record["rejected"] for record in history)
    for got, want in zip(history, expected, strict=True):
        for key in ("round", "clients", "samples", "rejected"):
            assert got[key] == want[key]
        assert got["train_loss"] == pytest.approx(want["train_loss"], rel=1e-12)
        assert got["test_accuracy"] == want["test_accuracy"]
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(
            distributed_model.state_dict()[name], tensor, rtol=1e-6, atol=1e-7
        )
    assert not torch.equal(distributed_model.state_dict()["0.weight"], initial["0.weight"])


def test_run_distributed_checks_arguments_before_spawning():
    clients = [Client(0, torch.zeros(2, 64), torch.zeros(2, dtype=torch.int64))]
    train = LocalTraining(functools.partial(SGD, lr=0.1))
    with pytest.raises(ValueError, match="world_size must be an integer >= 1, got 0"):
        run_distributed(MLP(), clients, FedAdam(), train, 1, world_size=0)
    with pytest.raises(ValueError, match="rounds must be an integer >= 1, got 0"):
        run_distributed(MLP(), clients, FedAdam(), train, 0)
    with pytest.raises(ValueError, match=r"fraction must be in \(0, 1\], got 2"):
        run_distributed(MLP(), clients, FedAdam(), train, 1, fraction=2)


def test_on_invalid_raise_raises_the_same_error_as_the_simulation():
    x_train, y_train, _, _ = load_digits_split(seed=0)
    clients = make_clients(x_train[:60], y_train[:60], dirichlet_partition(y_train[:60], 3, 1.0))
    clients[1] = Client(1, torch.full_like(clients[1].features, float("nan")), clients[1].labels)
    train = LocalTraining(functools.partial(SGD, lr=0.1), epochs=1, batch_size=10)
    torch.manual_seed(0)
    initial = copy.deepcopy(MLP(hidden=8).state_dict())
    errors, models = [], []
    for run in ("simulation", "distributed"):
        model = MLP(hidden=8)
        model.load_state_dict(initial)
        with pytest.raises(InvalidUpdateError) as error:
            if run == "simulation":
                Simulation(model, clients, FedAdam(), train, fraction=1.0).run(1, progress=False)
            else:
                run_distributed(model, clients, FedAdam(), train, 1, world_size=2, fraction=1.0)
        errors.append(error.value)
        models.append(model)
    assert type(errors[1]) is InvalidUpdateError
    assert str(errors[1]) == str(errors[0]) and errors[1].client == 1
    assert "NaN or infinite" in str(errors[1])
    for model in models:  # the failed round left the global model as it was
        for name, tensor in initial.items():
            assert torch.equal(model.state_dict()[name], tensor)
