"""Exact resume from server checkpoints, and bad checkpoints refused with nothing lost."""

import copy
import functools
import hashlib

import pytest
import torch
from torch import nn

from torchopt_edu.cli import federated as cli
from torchopt_edu.federated import (
    MLP,
    QSGD,
    Attack,
    CheckpointError,
    Client,
    Faults,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedProx,
    LocalTraining,
    Simulation,
    TopK,
    dirichlet_partition,
    load_digits_split,
    make_clients,
)
from torchopt_edu.federated.privacy import DPFedAvg
from torchopt_edu.federated.robust import ClipUpdates, FedMedian, Krum
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
    with pytest.raises(
        CheckpointError, match=r"strategy is 'FedAdam\(Adam\(lr=0.03, .*' there, 'ClipUpdates\("
    ):
        other_strategy.load_checkpoint()
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        fresh.load_checkpoint(tmp_path / "missing.pt")
    torch.save({"format": "something else"}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="is not a torchopt-edu federated checkpoint"):
        fresh.load_checkpoint(tmp_path / "other.pt")


def _small(strategy, compressor=None):
    """Five clients of ten random samples, all sampled: a round takes milliseconds."""
    generator = torch.Generator().manual_seed(0)
    clients = [
        Client(
            k,
            torch.randn(10, 8, generator=generator),
            torch.randint(0, 3, (10,), generator=generator),
        )
        for k in range(5)
    ]
    torch.manual_seed(1)
    train = LocalTraining(functools.partial(SGD, lr=0.1))
    return Simulation(
        nn.Linear(8, 3), clients, strategy, train, fraction=1.0, compressor=compressor
    )


def _dp(strategy=None, noise_multiplier=1.0, seed=0):
    return DPFedAvg(
        strategy, clip_norm=1.0, noise_multiplier=noise_multiplier, sample_rate=1.0, seed=seed
    )


def _recorded(component):
    """A strategy or compressor as the checkpoint's run record holds it."""
    return None if component is None else repr(component)


def _server_state(simulation):
    """The model, strategy and compressor states (tensors) and the history (numbers, text)."""
    compressor = simulation.compressor
    tensors = {
        "model": simulation.model.state_dict(),
        "strategy": simulation.strategy.state_dict(),
        "compressor": None if compressor is None else compressor.state_dict(),
    }
    return copy.deepcopy(tensors), copy.deepcopy(simulation.history)


@pytest.mark.parametrize(
    ("saved", "resumed", "differs"),
    [
        # a server optimizer's loaded state would bring back the saved lr, betas or momentum
        (lambda: (FedAdam(lr=0.001),), lambda: (FedAdam(lr=1.0),), "strategy"),
        (lambda: (FedAvgM(momentum=0.9),), lambda: (FedAvgM(lr=2.0, momentum=0.0),), "strategy"),
        (lambda: (Scaffold(5),), lambda: (Scaffold(5, lr=0.5),), "strategy"),
        # the rule inside a wrapper, a rule's settings, a robust rule's server step
        (
            lambda: (ClipUpdates(FedMedian(), 1.0),),
            lambda: (ClipUpdates(Krum(1, 0), 1.0),),
            "strategy",
        ),
        (
            lambda: (_dp(FedMedian()),),
            lambda: (_dp(FedAdam(), noise_multiplier=3.0),),
            "strategy",
        ),
        (lambda: (_dp(seed=7),), lambda: (_dp(seed=9),), "strategy"),
        (lambda: (Krum(1, 2),), lambda: (Krum(0, 0),), "strategy"),
        (lambda: (FedMedian(server=FedProx(0.5)),), lambda: (FedMedian(),), "strategy"),
        # another compressor, other settings, none
        (lambda: (FedAvg(), TopK(0.1)), lambda: (FedAvg(), TopK(0.5)), "compressor"),
        (
            lambda: (FedAvg(), QSGD(error_feedback=True)),
            lambda: (FedAvg(), TopK(0.1)),
            "compressor",
        ),
        (lambda: (FedAvg(), QSGD(seed=0)), lambda: (FedAvg(), QSGD(seed=1)), "compressor"),
        (lambda: (FedAvg(), TopK(0.1)), lambda: (FedAvg(),), "compressor"),
    ],
)
def test_a_resume_with_other_strategy_or_compressor_settings_is_refused_and_nothing_changes(
    saved, resumed, differs, tmp_path
):
    """The checkpoint records the strategy's and compressor's repr (every setting, nested
    strategies included); a run with other settings is refused, naming both, and neither the
    run nor the file changes. The same settings resume."""
    path = tmp_path / "run.pt"
    writer = _small(*saved())
    writer.run(2, progress=False)
    writer.save_checkpoint(path)
    written = hashlib.sha256(path.read_bytes()).hexdigest()
    other = _small(*resumed())
    other.run(1, progress=False)  # a state of its own, which must survive
    tensors, history = _server_state(other)
    with pytest.raises(CheckpointError, match="belongs to another run") as error:
        other.load_checkpoint(path)
    there, here = _recorded(getattr(writer, differs)), _recorded(getattr(other, differs))
    assert f"{differs} is {there!r} there, {here!r} here" in str(error.value)
    torch.testing.assert_close(_server_state(other)[0], tensors, rtol=0, atol=0)
    assert other.history == history
    assert hashlib.sha256(path.read_bytes()).hexdigest() == written
    assert _small(*saved()).load_checkpoint(path) == 2


def test_a_checkpoint_of_format_version_1_is_refused_saying_why(tmp_path):
    """Version 1 named only the strategy's class; it cannot say which settings it ran with."""
    simulation = _small(FedAdam())
    simulation.run(1, progress=False)
    state = simulation.checkpoint_state()
    state["version"] = 1
    state["run"]["strategy"] = "FedAdam"
    del state["run"]["compressor"]
    torch.save(state, tmp_path / "v1.pt")
    fresh = _small(FedAdam())
    with pytest.raises(
        CheckpointError,
        match=r"v1.pt is a checkpoint of version 1; this torchopt-edu reads version 2 .*settings "
        "of the strategy and the compressor.*start a new run",
    ):
        fresh.load_checkpoint(tmp_path / "v1.pt")
    assert fresh.history == [] and fresh.strategy.optimizer is None


def test_cli_resume_with_another_server_lr_is_refused_before_anything_is_written(tmp_path, capsys):
    """``--server-lr 1.0 --resume`` of a ``--server-lr 0.001`` run used to step with 0.001
    while config.json said 1.0; now it is a usage error and the run's files stay as they are."""
    args = [
        *("--clients", "4", "--fraction", "1", "--local-epochs", "1", "--strategy", "fedadam"),
        *("--checkpoint-every", "1", "--no-plot", "--no-progress", "--out", str(tmp_path)),
    ]
    assert cli.main([*args, "--server-lr", "0.001", "--rounds", "2"]) == 0
    files = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert {"checkpoint.pt", "config.json", "history.json"} <= set(files)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        cli.main([*args, "--server-lr", "1.0", "--rounds", "4", "--resume"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "argument --resume:" in err and "strategy is 'FedAdam(Adam(lr=0.001," in err
    assert "'FedAdam(Adam(lr=1.0," in err
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == files


class _Half:
    """A compressor of the duck-typed kind, with object's default repr (a memory address)."""

    def compress(self, cid, update):
        return {name: u.half().float() for name, u in update.items()}, 0

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


def test_an_object_with_objects_default_repr_is_recorded_by_its_class_name(tmp_path):
    """Its address differs in every process (the distributed backend's workers load rank 0's
    checkpoint into a copy): the record is the class's name."""
    simulation = _small(FedAvg(), _Half())
    simulation.run(1, progress=False)
    simulation.save_checkpoint(tmp_path / "run.pt")
    assert torch.load(tmp_path / "run.pt", weights_only=True)["run"]["compressor"] == "_Half"
    assert _small(FedAvg(), _Half()).load_checkpoint(tmp_path / "run.pt") == 1
