"""Two real gloo processes give the same global model as the in-process simulation."""

import copy
import functools
import os
import time

import pytest
import torch
import torch.distributed as dist

from torchopt_edu.federated import (
    MLP,
    Attack,
    Client,
    ClipUpdates,
    FedAdam,
    FedMedian,
    InvalidUpdateError,
    LocalTraining,
    Simulation,
    dirichlet_partition,
    load_digits_split,
    make_clients,
)
from torchopt_edu.federated.distributed import WorkerError, run_distributed
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


class _FailsAfterOneFit(Client):
    """Trains normally the first time, then fails as :meth:`fail` says."""

    calls = 0

    def fit(self, model, global_state, train, seed):
        type(self).calls += 1
        if type(self).calls > 1:
            self.fail()
        return super().fit(model, global_state, train, seed)


class _HangingClient(_FailsAfterOneFit):
    """A worker stuck in a client's code."""

    calls = 0

    def fail(self):
        time.sleep(120)


class _DyingClient(_FailsAfterOneFit):
    """A worker whose process dies (a crash in native code, a kill by the out-of-memory
    killer)."""

    calls = 0

    def fail(self):
        os._exit(3)


def _small_clients(count):
    x_train, y_train, _, _ = load_digits_split(seed=0)
    x, y = x_train[: 20 * count], y_train[: 20 * count]
    return make_clients(x, y, dirichlet_partition(y, count, alpha=1.0, seed=0))


@pytest.mark.parametrize(
    ("faulty", "message"),
    [
        (_HangingClient, "a worker did not answer within timeout=3 s"),
        (_DyingClient, "worker 1 died"),
    ],
)
def test_a_hanging_or_dead_worker_stops_the_run_within_seconds_and_completed_rounds_are_kept(
    tmp_path, faulty, message
):
    clients = _small_clients(2)
    clients[1] = faulty(1, clients[1].features, clients[1].labels)  # rank 1's client
    train = LocalTraining(functools.partial(SGD, lr=0.1), epochs=1, batch_size=10)
    torch.manual_seed(0)
    model = MLP(hidden=8)
    initial = copy.deepcopy(model.state_dict())
    path = tmp_path / "run.pt"
    start = time.monotonic()
    with pytest.raises(WorkerError, match=rf"after 1 completed rounds: {message}") as error:
        run_distributed(
            model, clients, FedAdam(), train, 3, fraction=1.0, timeout=3, checkpoint=path
        )
    assert time.monotonic() - start < 60  # gloo's default would wait 30 minutes
    assert [r["round"] for r in error.value.history] == [1] and error.value.checkpoint == path

    expected = MLP(hidden=8)
    expected.load_state_dict(initial)
    clients[1] = Client(1, clients[1].features, clients[1].labels)
    simulation = Simulation(expected, clients, FedAdam(), train, fraction=1.0)
    simulation.run(1, progress=False)
    for name, tensor in expected.state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], tensor, rtol=1e-6, atol=1e-7)
    resumed = Simulation(MLP(hidden=8), clients, FedAdam(), train, fraction=1.0)
    assert resumed.load_checkpoint(path) == 1  # the run can go on from round 1


class _Float16:
    """Sends updates in float16 (no memory); picklable for the workers."""

    def compress(self, cid, update):
        return {n: u.half().float() for n, u in update.items()}, 2 * sum(
            u.numel() for u in update.values()
        )

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


def test_robust_compressed_attacked_rounds_over_gloo_equal_the_simulation_to_the_bit():
    clients = _small_clients(6)
    train = LocalTraining(functools.partial(SGD, lr=0.1), epochs=1, batch_size=10)
    torch.manual_seed(0)
    initial = copy.deepcopy(MLP(hidden=8).state_dict())
    options = dict(
        fraction=1.0, compressor=_Float16(), attack=Attack("sign_flip", fraction=0.2), seed=2
    )
    models, histories = [], []
    for world_size in (None, 2):
        model = MLP(hidden=8)
        model.load_state_dict(initial)
        strategy = ClipUpdates(FedMedian(), max_norm=2.0)
        if world_size is None:
            history = Simulation(model, clients, strategy, train, **options).run(2, progress=False)
        else:
            history = run_distributed(model, clients, strategy, train, 2, world_size, **options)
        models.append(model)
        histories.append([{k: v for k, v in r.items() if not k.endswith("_s")} for r in history])
    assert histories[0] == histories[1]
    assert histories[0][0]["bytes_sent"] == 6 * 2 * sum(t.numel() for t in initial.values())
    for name, tensor in models[0].state_dict().items():
        assert torch.equal(models[1].state_dict()[name], tensor)
