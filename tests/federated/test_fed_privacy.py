"""DP-FedAvg: clipping and noise as the equations say, the budget as Opacus's RDP accountant
reports it, exact resume, and bad input refused without touching anything."""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn

pytest.importorskip(
    "opacus", reason="the privacy budget is Opacus's: pip install torchopt-edu[fed]"
)
from opacus.accountants import RDPAccountant  # noqa: E402

from torchopt_edu.federated import (  # noqa: E402
    MLP,
    ClientResult,
    FedAdam,
    InvalidUpdateError,
    LocalTraining,
    Simulation,
    iid_partition,
    make_clients,
)
from torchopt_edu.federated.privacy import DPFedAvg  # noqa: E402
from torchopt_edu.optim import SGD  # noqa: E402


def linear(features: int = 3) -> nn.Module:
    model = nn.Linear(features, 1, bias=False, dtype=torch.float64)
    with torch.no_grad():
        model.weight.zero_()
    return model


def result(cid: int, weight: list[float]) -> ClientResult:
    state = {"weight": torch.tensor([weight], dtype=torch.float64)}
    return ClientResult(cid, state, num_samples=100 * (cid + 1), metrics={"loss": 0.0})


def test_without_noise_the_step_is_the_unweighted_mean_of_clipped_updates():
    model = linear()
    strategy = DPFedAvg(clip_norm=5.0, noise_multiplier=0.0, sample_rate=0.5)
    # norms 5 (kept), 10 (halved to 5), 1 (kept); sample counts do not weigh in
    metrics = strategy.aggregate_fit(
        model, [result(0, [3, 4, 0]), result(1, [0, 0, 10]), result(2, [0, 1, 0])]
    )
    expected = torch.tensor([[3 / 3, 5 / 3, 5 / 3]], dtype=torch.float64)
    torch.testing.assert_close(model.weight.detach(), expected, rtol=0, atol=1e-15)
    assert metrics["clipped"] == 1
    assert metrics["epsilon"] == float("inf")  # clipping alone is no privacy


def test_noise_on_the_average_has_standard_deviation_z_s_over_m():
    model = nn.Linear(200, 100, bias=False)
    with torch.no_grad():
        model.weight.zero_()
    zero = {"weight": torch.zeros(100, 200)}
    strategy = DPFedAvg(clip_norm=0.5, noise_multiplier=2.0, sample_rate=0.1, seed=3)
    strategy.aggregate_fit(model, [ClientResult(k, dict(zero), 10) for k in range(4)])
    noise = model.weight.detach().double()
    assert strategy.noise_std(4) == 0.25
    assert abs(float(noise.std()) / 0.25 - 1) < 0.03  # 20,000 draws: sd of the estimate 0.5%
    assert abs(float(noise.mean())) < 0.01


def digits_run(strategy, rounds: int, digits) -> Simulation:
    x, y, x_test, y_test = digits
    clients = make_clients(x, y, iid_partition(len(y), 10, seed=0))
    torch.manual_seed(0)
    train = LocalTraining(functools.partial(SGD, lr=0.1), epochs=1, batch_size=32)
    simulation = Simulation(MLP(), clients, strategy, train, (x_test, y_test), fraction=0.3, seed=0)
    simulation.run(rounds, progress=False)
    return simulation


@pytest.fixture(scope="module")
def digits():
    pytest.importorskip("sklearn", reason="the digits data ships with scikit-learn")
    from torchopt_edu.federated import load_digits_split

    return load_digits_split()


def test_epsilon_each_round_is_opacus_rdp_accountants(digits):
    z, q, delta = 1.1, 0.3, 1e-5
    strategy = DPFedAvg(FedAdam(), clip_norm=1.0, noise_multiplier=z, sample_rate=q, delta=delta)
    history = digits_run(strategy, 3, digits).history
    reference = RDPAccountant()
    for record in history:
        reference.step(noise_multiplier=z, sample_rate=q)
        assert record["epsilon"] == reference.get_epsilon(delta=delta)
        assert record["delta"] == delta
    epsilons = [r["epsilon"] for r in history]
    assert 0 < epsilons[0] < epsilons[1] < epsilons[2]
    assert strategy.epsilon(1e-3) == reference.get_epsilon(delta=1e-3)


def test_resume_from_state_dict_continues_noise_and_budget_exactly(digits):
    def make() -> DPFedAvg:
        return DPFedAvg(FedAdam(), clip_norm=0.5, noise_multiplier=0.8, sample_rate=0.3, seed=7)

    whole = digits_run(make(), 3, digits)
    first = digits_run(make(), 2, digits)
    resumed = make()
    resumed.load_state_dict(first.strategy.state_dict(), first.model)
    first.strategy = resumed
    first.run(1, progress=False)
    for name, tensor in whole.model.state_dict().items():
        assert torch.equal(first.model.state_dict()[name], tensor), name
    assert first.history[-1]["epsilon"] == whole.history[-1]["epsilon"]


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="clip_norm must lie in"):
        DPFedAvg(clip_norm=0.0, noise_multiplier=1.0, sample_rate=0.1)
    with pytest.raises(ValueError, match="noise_multiplier"):
        DPFedAvg(clip_norm=1.0, noise_multiplier=-1.0, sample_rate=0.1)
    with pytest.raises(ValueError, match="sample_rate"):
        DPFedAvg(clip_norm=1.0, noise_multiplier=1.0, sample_rate=0.0)
    with pytest.raises(ValueError, match="delta"):
        DPFedAvg(clip_norm=1.0, noise_multiplier=1.0, sample_rate=0.1, delta=1.0)
    strategy = DPFedAvg(clip_norm=1.0, noise_multiplier=1.0, sample_rate=0.1)
    with pytest.raises(ValueError, match="needs keys"):
        strategy.load_state_dict({"strategy": {}}, linear())


def test_a_malformed_update_changes_nothing():
    model = linear()
    strategy = DPFedAvg(clip_norm=1.0, noise_multiplier=1.0, sample_rate=0.5)
    bad = result(1, [0.0, float("nan"), 0.0])
    with pytest.raises(InvalidUpdateError, match="client 1"):
        strategy.aggregate_fit(model, [result(0, [1, 0, 0]), bad])
    assert torch.equal(model.weight.detach(), torch.zeros(1, 3, dtype=torch.float64))
    assert strategy.rounds == 0 and strategy.epsilon() == 0.0
    assert strategy.accountant.history == []
