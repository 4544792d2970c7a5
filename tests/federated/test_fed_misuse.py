"""Compositions and settings that used to run with a silently wrong number (privacy that was
not applied, a budget for another sampling rate) or leave the global model half-stepped: each
is refused naming what is wrong, and a refused server step changes nothing."""

from __future__ import annotations

import copy
import functools

import pytest
import torch
from torch import nn

from torchopt_edu.federated import (
    ClientResult,
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedOpt,
    FedYogi,
    LocalTraining,
    ServerStepError,
    Simulation,
    make_clients,
)
from torchopt_edu.federated.privacy import DPFedAvg
from torchopt_edu.federated.robust import ClipUpdates, FedMedian, FedTrimmedAvg, Krum
from torchopt_edu.federated.scaffold import Scaffold
from torchopt_edu.optim import SGD, Muon


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Linear(4, 3)


def _clients(count: int = 4, per_client: int = 12):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(count * per_client, 4, generator=generator)
    y = torch.randint(0, 3, (count * per_client,), generator=generator)
    return make_clients(
        x, y, [torch.arange(k * per_client, (k + 1) * per_client) for k in range(count)]
    )


TRAIN = LocalTraining(functools.partial(SGD, lr=0.1), epochs=1, batch_size=4)


@pytest.mark.parametrize("rule", [FedMedian, FedTrimmedAvg, Krum])
@pytest.mark.parametrize(
    "server",
    [
        lambda: DPFedAvg(clip_norm=0.01, noise_multiplier=5.0, sample_rate=1.0),
        lambda: ClipUpdates(FedAvg(), 0.01),
        lambda: Scaffold(4),
        lambda: FedMedian(),
    ],
    ids=["DPFedAvg", "ClipUpdates", "Scaffold", "FedMedian"],
)
def test_a_robust_rule_refuses_a_server_that_would_skip_or_misread_its_work(rule, server):
    """FedMedian(server=DPFedAvg(...)) stepped to the raw median: no clipping, no noise."""
    with pytest.raises(ValueError, match="cannot take a robust combination"):
        rule(server=server())


def test_dp_outside_a_robust_rule_clips_every_update():
    model = _model()
    before = {name: t.clone() for name, t in model.state_dict().items()}
    results = [
        ClientResult(k, {n: t + shift for n, t in before.items()}, 10)
        for k, shift in enumerate((0.5, 0.6, 0.7))
    ]
    strategy = DPFedAvg(FedMedian(), clip_norm=0.01, noise_multiplier=0.0, sample_rate=1.0)
    strategy.aggregate_fit(model, results)
    moved = torch.cat([(model.state_dict()[n] - t).flatten() for n, t in before.items()])
    assert float(moved.norm()) == pytest.approx(0.01, rel=1e-5)  # clipped to S, not 0.6 each


def test_dp_refuses_scaffold_inside_it():
    with pytest.raises(ValueError, match="SCAFFOLD needs each client's own result"):
        DPFedAvg(Scaffold(4), clip_norm=1.0, noise_multiplier=1.0, sample_rate=1.0)


@pytest.mark.parametrize(("fraction", "sample_rate"), [(1.0, 0.01), (0.5, 0.25), (0.3, 0.3)])
def test_simulation_refuses_a_dp_sample_rate_that_is_not_its_own(fraction, sample_rate):
    """With 4 clients and fraction 0.3 the simulation samples 1 (q = 0.25), not 0.3."""
    strategy = DPFedAvg(clip_norm=1.0, noise_multiplier=1.0, sample_rate=sample_rate)
    with pytest.raises(ValueError, match=r"sample_rate=.* but the simulation samples"):
        Simulation(_model(), _clients(4), strategy, TRAIN, None, fraction=fraction)


def test_simulation_accepts_the_sample_rate_it_draws():
    strategy = DPFedAvg(clip_norm=1.0, noise_multiplier=1.0, sample_rate=0.25)
    history = Simulation(_model(), _clients(4), strategy, TRAIN, None, fraction=0.3).run(
        1, progress=False
    )
    assert history[-1]["epsilon"] > 0


@pytest.mark.parametrize("num_clients", [2, 10])
def test_simulation_refuses_a_scaffold_sized_for_another_population(num_clients):
    with pytest.raises(ValueError, match=f"Scaffold\\(num_clients={num_clients}\\) but"):
        Simulation(_model(), _clients(4), Scaffold(num_clients), TRAIN, None, fraction=1.0)


def test_a_server_optimizer_that_raises_leaves_model_and_state_as_they_were():
    """Muon at lr 1e39 overflows inside its step after updating the weight but not the bias."""
    model = _model()
    strategy = FedOpt(functools.partial(Muon, lr=1e39, adjust_lr_fn="match_rms_adamw"))
    simulation = Simulation(model, _clients(3), strategy, TRAIN, None, fraction=1.0)
    before = copy.deepcopy(model.state_dict())
    history = simulation.run(1, progress=False)
    assert history[-1]["refused"] and "server step failed" in history[-1]["refused"]
    for name, tensor in before.items():
        assert torch.equal(model.state_dict()[name], tensor), name
    assert strategy.optimizer is None  # built in this round, so dropped with it


def test_the_refusal_names_the_cause_when_called_directly():
    model = _model()
    strategy = FedOpt(functools.partial(Muon, lr=1e39))
    averaged = {name: t + 1.0 for name, t in model.state_dict().items()}
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ServerStepError, match="server step failed .*unchanged"):
        strategy.apply(model, averaged)
    for name, tensor in before.items():
        assert torch.equal(model.state_dict()[name], tensor), name


def _shifted(model: nn.Module, shifts) -> list[ClientResult]:
    state = model.state_dict()
    return [
        ClientResult(k, {n: t + shift for n, t in state.items()}, 10)
        for k, shift in enumerate(shifts)
    ]


@pytest.mark.parametrize(("f", "shifts"), [(2, (0.01, 0.02, 100.0, 100.0)), (1, (0.1, 0.2, 9.0))])
def test_krum_refuses_a_round_too_small_to_tolerate_its_attackers(f, shifts):
    """n = 4, f = 2: Krum picked an attacker's model (n must exceed 2 f + 2)."""
    model = _model()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ServerStepError, match=f"needs more than {2 * f + 2} results"):
        Krum(f).aggregate_fit(model, _shifted(model, shifts))
    for name, tensor in before.items():
        assert torch.equal(model.state_dict()[name], tensor)


def test_a_trimmed_mean_that_would_trim_nothing_refuses_the_round():
    """beta = 0.2 of 4 results trims floor(0.8) = 0: one attacker moved the mean by 25."""
    model = _model()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ServerStepError, match=r"trims floor\(0.2 x 4\) = 0 .* at least 5"):
        FedTrimmedAvg(0.2).aggregate_fit(model, _shifted(model, (0.0, 0.0, 0.0, 100.0)))
    for name, tensor in before.items():
        assert torch.equal(model.state_dict()[name], tensor)


def test_a_simulation_records_a_krum_round_with_too_few_replies_as_refused():
    simulation = Simulation(_model(), _clients(4), Krum(1), TRAIN, None, fraction=1.0)
    before = copy.deepcopy(simulation.model.state_dict())
    record = simulation.run(1, progress=False)[-1]
    assert "needs more than 4 results" in record["refused"]
    for name, tensor in before.items():
        assert torch.equal(simulation.model.state_dict()[name], tensor)


def test_a_failed_round_puts_the_compressors_memory_back():
    """Krum(keep=5) of 3 results raises after the uploads were compressed: the error memory
    (and QSGD's rounding counters) must be as before, so a retry is the same run."""
    from torchopt_edu.federated import QSGD, TopK

    for compressor in (TopK(0.1), QSGD(error_feedback=True)):
        simulation = Simulation(
            _model(),
            _clients(3),
            Krum(0, 5),
            TRAIN,
            None,
            fraction=1.0,
            compressor=compressor,
        )
        before = copy.deepcopy(compressor.state_dict())
        with pytest.raises(ValueError, match="num_clients_to_keep=5 but only 3 results"):
            simulation.run(1, progress=False)
        assert repr(compressor.state_dict()) == repr(before)


class _Liar:
    """A client whose reply lies about itself in one way."""

    def __init__(self, client, change):
        self.client, self.change = client, change

    def __getattr__(self, name):
        return getattr(self.client, name)

    def fit(self, *args):
        result = self.client.fit(*args)
        self.change(result)
        return result


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (lambda r: setattr(r, "num_samples", float("nan")), "num_samples must be a whole"),
        (lambda r: setattr(r, "num_samples", -5), "num_samples must be a whole"),
        (lambda r: setattr(r, "num_samples", "12"), "num_samples must be a whole"),
        (lambda r: setattr(r, "client", 99), "it names client 99"),
        (lambda r: r.metrics.pop("loss"), r"metrics\['loss'\] must be a number"),
    ],
)
def test_a_malformed_reply_is_a_failed_client_named_and_skippable(change, words):
    clients = _clients(3)
    clients[2] = _Liar(clients[2], change)
    strict = Simulation(_model(), clients, FedAvg(), TRAIN, None, fraction=1.0)
    with pytest.raises(RuntimeError, match=f"client 2: .*malformed reply: {words}"):
        strict.run(1, progress=False)
    lenient = Simulation(
        _model(), clients, FedAvg(), TRAIN, None, fraction=1.0, on_client_error="skip"
    )
    with pytest.warns(RuntimeWarning, match="malformed reply"):
        record = lenient.run(1, progress=False)[-1]
    assert record["failed"] == [2] and record["samples"] == 24


def test_dp_noise_past_the_dtypes_range_refuses_the_round():
    strategy = DPFedAvg(clip_norm=1e38, noise_multiplier=10.0, sample_rate=1.0)
    simulation = Simulation(_model(), _clients(3), strategy, TRAIN, None, fraction=1.0)
    before = copy.deepcopy(simulation.model.state_dict())
    with pytest.warns(RuntimeWarning, match="DPFedAvg's noisy average refused"):
        record = simulation.run(1, progress=False)[-1]
    assert "NaN or infinite" in record["refused"] and strategy.rounds == 0
    for name, tensor in before.items():
        assert torch.equal(simulation.model.state_dict()[name], tensor)


def _checkpointed(tmp_path):
    from torchopt_edu.federated import FedAdam

    simulation = Simulation(_model(), _clients(4), FedAdam(), TRAIN, None, fraction=0.5, seed=1)
    simulation.run(1, progress=False)
    return simulation.save_checkpoint(tmp_path / "run.pt")


def _fresh():
    from torchopt_edu.federated import FedAdam

    return Simulation(_model(), _clients(4), FedAdam(), TRAIN, None, fraction=0.5, seed=1)


def test_a_checkpoint_with_a_flipped_bit_is_refused(tmp_path):
    from torchopt_edu.federated.checkpoint import CheckpointError

    path = _checkpointed(tmp_path)
    raw = bytearray(path.read_bytes())
    weight = torch.load(path, weights_only=True)["model"]["weight"].numpy().tobytes()
    raw[bytes(raw).find(weight[:16]) + 1] ^= 0x40
    damaged = tmp_path / "damaged.pt"
    damaged.write_bytes(bytes(raw))
    simulation = _fresh()
    before = copy.deepcopy(simulation.model.state_dict())
    with pytest.raises(CheckpointError, match="does not match its stored checksum"):
        simulation.load_checkpoint(damaged)
    for name, tensor in before.items():
        assert torch.equal(simulation.model.state_dict()[name], tensor)
    assert simulation.load_checkpoint(path) == 1  # the intact one loads


def test_a_checkpoint_with_nan_server_state_or_no_run_record_is_refused(tmp_path):
    from torchopt_edu.federated.checkpoint import CheckpointError

    path = _checkpointed(tmp_path)
    state = torch.load(path, weights_only=True)
    state["strategy"]["optimizer"]["state"][0]["exp_avg_sq"].fill_(float("nan"))
    torch.save(state, tmp_path / "nan.pt")
    with pytest.raises(CheckpointError, match=r"strategy\['optimizer'\].*holds NaN"):
        _fresh().load_checkpoint(tmp_path / "nan.pt")
    state = torch.load(path, weights_only=True)
    state["run"] = None
    torch.save(state, tmp_path / "norun.pt")
    with pytest.raises(CheckpointError, match="'run' must be a dict"):
        _fresh().load_checkpoint(tmp_path / "norun.pt")


def test_qsgd_refuses_a_bucket_it_could_not_allocate():
    from torchopt_edu.federated import QSGD

    with pytest.raises(ValueError, match="bucket_size must be <= 1048576"):
        QSGD(bucket_size=10**13)


@pytest.mark.parametrize("make", [lambda t: t.to_sparse(), lambda t: t.to("meta")])
def test_a_sparse_or_meta_update_is_refused_naming_the_client(make):
    from torchopt_edu.federated import InvalidUpdateError

    model = _model()
    results = _shifted(model, (0.1, 0.2, 0.3, 0.4, 0.5))
    results[1].state["weight"] = make(results[1].state["weight"])
    for strategy in (FedAvg(), FedMedian(), Krum(1), ClipUpdates(FedAvg(), 1.0)):
        before = copy.deepcopy(model.state_dict())
        with pytest.raises(InvalidUpdateError, match="client 1: tensor 'weight': a dense tensor"):
            strategy.aggregate_fit(model, results)
        for name, tensor in before.items():
            assert torch.equal(model.state_dict()[name], tensor)


@pytest.mark.parametrize(
    ("build", "words"),
    [
        (lambda: DPFedAvg(clip_norm=0, noise_multiplier=1.0, sample_rate=0.5), "clip_norm must"),
        (lambda: FedAdagrad(tau=float("nan")), "tau must"),
        (lambda: FedAdam(tau=-1.0), "tau must"),
        (lambda: FedYogi(tau=-1.0), "tau must"),
    ],
)
def test_errors_name_the_argument_the_user_passed(build, words):
    with pytest.raises(ValueError, match=words):
        build()


def test_fedavg_with_no_results_says_so():
    with pytest.raises(ValueError, match="FedAvg needs at least one client result, got none"):
        FedAvg().aggregate_fit(_model(), [])
