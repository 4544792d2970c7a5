"""Flower interop: the package's experiment on Flower's simulation engine and on a real
deployment (a SuperLink and two SuperNodes as separate processes) gives Simulation's model."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytest.importorskip("flwr", reason="Flower is an optional extra: pip install torchopt-edu[fed]")
pytest.importorskip("sklearn", reason="the digits data ships with scikit-learn")

from torchopt_edu.federated import ClipUpdates, DPFedAvg, Scaffold, Simulation  # noqa: E402
from torchopt_edu.federated.flower import (  # noqa: E402
    Experiment,
    FlowerStrategy,
    digits_experiment,
    run_flower_simulation,
)

APP = Path(__file__).parent / "flower_app"
BIN = Path(sys.executable).parent


def simulate(config: dict) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """The built-in simulation of ``digits_experiment(config)``."""
    experiment = digits_experiment(config)
    simulation = Simulation(
        experiment.model,
        experiment.clients,
        experiment.strategy,
        experiment.train,
        experiment.test_set,
        fraction=experiment.fraction,
        seed=experiment.seed,
    )
    history = simulation.run(experiment.rounds, progress=False)
    return experiment.model.state_dict(), history


def assert_same_model(flower: dict[str, torch.Tensor], built_in: dict[str, torch.Tensor]) -> None:
    assert flower.keys() == built_in.keys()
    for name, tensor in built_in.items():
        assert torch.equal(flower[name], tensor), name


def test_experiment_checks_its_arguments():
    experiment = digits_experiment({"num-clients": 2})
    with pytest.raises(ValueError, match="fraction must be in"):
        Experiment(
            experiment.model,
            experiment.clients,
            experiment.strategy,
            experiment.train,
            fraction=1.5,
        )
    with pytest.raises(ValueError, match="rounds must be an integer"):
        Experiment(
            experiment.model, experiment.clients, experiment.strategy, experiment.train, rounds=0
        )
    with pytest.raises(ValueError, match="strategy must be one of"):
        digits_experiment({"strategy": "fedmedain"})
    # SCAFFOLD's per-client control variates are not sent through Flower: refused, not ignored
    experiment.strategy = ClipUpdates(Scaffold(num_clients=2), max_norm=1.0)
    with pytest.raises(NotImplementedError, match="Scaffold configures each client"):
        FlowerStrategy(experiment)


def test_flower_simulation_gives_the_built_in_model():
    pytest.importorskip("ray", reason="Flower's simulation engine needs flwr[simulation] (Ray)")
    # half of the clients per round: the server asks the nodes their partitions (query
    # messages) and samples the clients the built-in simulation samples; FedAdam's server
    # optimizer runs on the Flower server
    config = {
        "num-clients": 4,
        "fraction": 0.5,
        "rounds": 2,
        "strategy": "fedadam",
        "batch-size": 32,
        "alpha": 0.5,
    }
    # one single-CPU actor runs both clients: a second actor's start-up (Ray worker, torch)
    # would double the test's cost and change nothing it checks
    one_actor = {"client_resources": {"num_cpus": 1}, "init_args": {"num_cpus": 1}}
    model, history = run_flower_simulation(
        lambda run_config: digits_experiment(config), backend_config=one_actor
    )
    expected_state, expected_history = simulate(config)
    assert_same_model(model.state_dict(), expected_state)
    assert [r["test_accuracy"] for r in history] == [r["test_accuracy"] for r in expected_history]
    assert [r["clients"] for r in history] == [2, 2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args[0]} exited with {process.returncode}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listens on port {port} after {timeout} s")


def stop(processes: list[subprocess.Popen]) -> None:
    """SIGTERM each process group, then reap them (so their helpers see their parent gone)."""
    for process in processes:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def test_flower_deployment_gives_the_built_in_model(tmp_path):
    """A SuperLink and two SuperNodes, each its own process as users deploy them (insecure, on
    localhost), run the Flower App in tests/federated/flower_app with ``flwr run``."""
    home = tmp_path / "flwr"
    home.mkdir()
    link_port = free_port()
    (home / "config.toml").write_text(
        '[superlink]\ndefault = "local-deployment"\n\n[superlink.local-deployment]\n'
        f'address = "127.0.0.1:{link_port}"\ninsecure = true\n'
    )
    env = {**os.environ, "FLWR_HOME": str(home), "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}

    link = ["flower-superlink", "--insecure", "--port", str(link_port)]
    link += ["--database", ":flwr-in-memory:", "--disable-runtime-dependency-installation"]
    commands = {"superlink": link}
    for cid in range(2):
        commands[f"supernode{cid}"] = [
            "flower-supernode",
            "--insecure",
            "--superlink",
            f"127.0.0.1:{link_port}",
            "--port",
            str(free_port()),
            "--node-config",
            f"partition-id={cid} num-partitions=2",
        ]
    config = {"num-clients": 2, "rounds": 2, "strategy": "fedadam", "batch-size": 32, "seed": 0}
    out = tmp_path / "result.pt"
    overrides = " ".join(f"{key}={value!r}" for key, value in config.items())  # TOML values
    processes, logs = [], []
    try:
        for name, command in commands.items():
            logs.append(open(tmp_path / f"{name}.log", "w"))  # noqa: SIM115 - closed below
            processes.append(
                subprocess.Popen(
                    [str(BIN / command[0]), *command[1:]],
                    env=env,
                    stdout=logs[-1],
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # its own process group, stopped as one
                )
            )
            if name == "superlink":
                wait_for_port(link_port, processes[0])
        run = subprocess.run(
            [
                str(BIN / "flwr"),
                "run",
                str(APP),
                "local-deployment",
                "--stream",
                "--run-config",
                f'{overrides} out="{out}"',
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=240,
        )
    finally:
        stop(processes)
        for log in logs:
            log.close()
    report = (
        run.stdout
        + run.stderr
        + "".join((tmp_path / f"{name}.log").read_text() for name in commands)
    )
    assert run.returncode == 0 and out.exists(), report
    saved = torch.load(out, weights_only=True)
    expected_state, expected_history = simulate(config)
    assert_same_model(saved["model"], expected_state)
    assert [r["test_accuracy"] for r in saved["history"]] == [
        r["test_accuracy"] for r in expected_history
    ]


def test_flower_bench_refuses_a_warmup_as_long_as_the_run(capsys):
    from torchopt_edu.cli.flower_bench import main

    with pytest.raises(SystemExit) as exit_:
        main(["--rounds", "2", "--warmup", "2"])
    assert exit_.value.code == 2
    assert "--warmup (2) must be below --rounds (2)" in capsys.readouterr().err


def test_flower_bench_line_names_the_setting_and_the_thread_count():
    from torchopt_edu.cli.flower_bench import format_result

    result = {
        "clients": 100, "sampled": 10, "local_epochs": 5, "batch_size": 10, "rounds": 12,
        "warmup": 2, "threads": 1, "rounds_per_s": 12.345, "flower_rounds_per_s": 2.5,
        "speedup": 4.938, "test_accuracy": 0.8306, "flower_test_accuracy": 0.8306,
    }  # fmt: skip
    assert format_result(result) == (
        "digits, 100 clients, 10 sampled per round, E=5 B=10, 10 timed rounds: torchopt-edu "
        "with 1 thread 12.35 rounds/s, Flower simulation (one single-CPU ClientApp actor per "
        "core) 2.50 rounds/s (4.9x); final test accuracy 0.8306 and 0.8306"
    )
    assert "with 2 threads" in format_result({**result, "threads": 2})


def _reply(node: int, partition: int, state: dict, num_examples) -> object:
    """A SuperNode's train reply as Flower delivers it to the ServerApp."""
    from flwr.app import ArrayRecord, ConfigRecord, Message, Metadata, MetricRecord, RecordDict

    metadata = Metadata(
        run_id=1,
        message_id="",
        src_node_id=node,
        dst_node_id=0,
        reply_to_message_id="query",
        group_id="1",
        created_at=0.0,
        ttl=60.0,
        message_type="train",
    )
    metrics = MetricRecord({"num-examples": num_examples, "loss": 0.5, "train-time-s": 0.0})
    content = RecordDict(
        {
            "metrics": metrics,
            "arrays": ArrayRecord({k: v.detach().clone() for k, v in state.items()}),
            "partition": ConfigRecord({"partition-id": partition}),
        }
    )
    return Message(content, metadata=metadata)


@pytest.mark.parametrize("bad", [-5, float("nan")])
def test_a_malformed_supernode_reply_is_skipped_with_a_warning(bad):
    experiment = digits_experiment({"num-clients": 3})
    strategy = FlowerStrategy(experiment)
    start = {k: v.clone() for k, v in experiment.model.state_dict().items()}
    states = [{k: v + 0.1 * (c + 1) for k, v in start.items()} for c in range(3)]
    replies = [_reply(10 + c, c, states[c], 10 if c < 2 else bad) for c in range(3)]
    with pytest.warns(RuntimeWarning, match="SuperNode 12 failed: malformed reply: num"):
        strategy.aggregate_train(1, replies)
    for name, tensor in experiment.model.state_dict().items():  # the mean of the two others
        torch.testing.assert_close(tensor, (states[0][name] + states[1][name]) / 2)
    assert strategy.history[-1]["samples"] == 20 and strategy.history[-1]["refused"] is None


def test_a_refused_server_step_is_recorded_and_the_round_goes_on():
    import functools

    from torchopt_edu.federated import FedOpt
    from torchopt_edu.optim import SGD

    experiment = digits_experiment({"num-clients": 2})
    experiment.strategy = FedOpt(functools.partial(SGD, lr=1e38))
    strategy = FlowerStrategy(experiment)
    start = {k: v.clone() for k, v in experiment.model.state_dict().items()}
    replies = [_reply(10 + c, c, {k: v + 1e3 for k, v in start.items()}, 10) for c in range(2)]
    with pytest.warns(RuntimeWarning, match="server step refused"):
        strategy.aggregate_train(1, replies)
    assert "refused" in strategy.history[-1]["refused"]
    for name, tensor in experiment.model.state_dict().items():
        assert torch.equal(tensor, start[name])


def test_flower_refuses_a_dp_sample_rate_that_is_not_the_sampling_it_does():
    """Flower samples m/K of the clients as Simulation does; epsilon for q = 0.01 while every
    client trains every round would be several times too small."""
    experiment = digits_experiment({"num-clients": 4})
    dp = DPFedAvg(clip_norm=0.5, noise_multiplier=1.0, sample_rate=0.01)
    with pytest.raises(ValueError, match=r"sample_rate=0.01 but the simulation samples 4 of 4"):
        Experiment(experiment.model, experiment.clients, dp, experiment.train, fraction=1.0)
    experiment.strategy = dp  # set after the experiment was built
    with pytest.raises(ValueError, match=r"sample_rate=0.01 but the simulation samples 4 of 4"):
        FlowerStrategy(experiment)
    experiment.strategy = DPFedAvg(clip_norm=0.5, noise_multiplier=1.0, sample_rate=1.0)
    FlowerStrategy(experiment)
