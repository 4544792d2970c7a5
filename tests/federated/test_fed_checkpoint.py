"""Exact resume from server checkpoints, and bad checkpoints refused with nothing lost."""

import functools

import pytest
import torch

from torchopt_edu.federated import (
    MLP,
    Attack,
    CheckpointError,
    Faults,
    FedAdam,
    LocalTraining,
    Simulation,
    dirichlet_partition,
    load_digits_split,
    make_clients,
)
from torchopt_edu.federated.robust import ClipUpdates
from torchopt_edu.federated.scaffold import Scaffold
from torchopt_edu.optim import SGD

TIMES = ("client_time_s", "round_time_s", "eval_time_s")
STRATEGIES = {
    "fedadam": lambda: FedAdam(lr=0.03),
    "scaffold": lambda: ClipUpdates(Scaffold(num_clients=8), max_norm=5.0),
}


@pytest.fixture(scope="module")
def clients():
    x_train, y_train, _, _ = load_digits_split(seed=0)
    x, y = x_train[:240], y_train[:240]
    return make_clients(x, y, dirichlet_partition(y, 8, alpha=0.5, seed=0))


def _simulation(clients, strategy, path, seed=0):
    torch.manual_seed(0)
    train = LocalTraining(functools.partial(SGD, lr=0.1), epochs=1, batch_size=10)
    return Simulation(
        MLP(hidden=8),
        clients,
        STRATEGIES[strategy](),
        train,
        fraction=0.5,
        seed=seed,
        attack=Attack("gaussian", fraction=0.125, scale=0.01),
        faults=Faults(dropout=0.2),
        checkpoint=path,
        checkpoint_every=2,
    )


def _without_times(history):
    return [{k: v for k, v in r.items() if k not in TIMES} for r in history]


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_a_run_resumed_after_round_k_ends_bit_identical_to_an_uninterrupted_one(
    clients, strategy, tmp_path
):
    uninterrupted = _simulation(clients, strategy, tmp_path / "a.pt")
    uninterrupted.run(4, progress=False)

    killed = _simulation(clients, strategy, tmp_path / "b.pt")
    killed.run(3, progress=False)  # killed after round 3: the last checkpoint is round 2
    resumed = _simulation(clients, strategy, tmp_path / "b.pt")
    assert resumed.load_checkpoint() == 2
    resumed.run(2, progress=False)

    assert _without_times(resumed.history) == _without_times(uninterrupted.history)
    for name, tensor in uninterrupted.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[name], tensor), name
    want, got = uninterrupted.strategy.state_dict(), resumed.strategy.state_dict()
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert (tmp_path / "b.pt.prev").exists() and not (tmp_path / "b.pt.tmp").exists()


def test_corrupted_and_mismatched_checkpoints_are_refused_and_nothing_is_lost(clients, tmp_path):
    path = tmp_path / "run.pt"
    simulation = _simulation(clients, "fedadam", path)
    simulation.run(4, progress=False)  # checkpoints after rounds 2 and 4
    good = path.read_bytes()
    path.write_bytes(good[: len(good) // 2])  # a truncated file
    fresh = _simulation(clients, "fedadam", path)
    before = {n: t.clone() for n, t in fresh.model.state_dict().items()}
    with pytest.raises(CheckpointError, match="cannot read checkpoint .* corrupted"):
        fresh.load_checkpoint()
    assert fresh.history == [] and fresh.strategy.optimizer is None
    for name, tensor in before.items():
        assert torch.equal(fresh.model.state_dict()[name], tensor)
    assert fresh.load_checkpoint(tmp_path / "run.pt.prev") == 2  # the previous one is kept

    path.write_bytes(good)
    other_seed = _simulation(clients, "fedadam", path, seed=1)
    with pytest.raises(CheckpointError, match="another run: seed is 0 there, 1 here"):
        other_seed.load_checkpoint()
    other_model = _simulation(clients, "fedadam", path)
    other_model.model = MLP(hidden=9)
    with pytest.raises(CheckpointError, match=r"model does not fit: tensor '0.weight': shape"):
        other_model.load_checkpoint()
    other_strategy = _simulation(clients, "scaffold", path)
    with pytest.raises(CheckpointError, match="strategy is 'FedAdam' there, 'ClipUpdates' here"):
        other_strategy.load_checkpoint()
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        fresh.load_checkpoint(tmp_path / "missing.pt")
    torch.save({"format": "something else"}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="is not a torchopt-edu federated checkpoint"):
        fresh.load_checkpoint(tmp_path / "other.pt")
