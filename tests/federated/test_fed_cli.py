"""`torchopt-edu federated` and the federated benchmark, called through main(argv)."""

import csv
import json
import re

import pytest

from torchopt_edu.federated import bench, cli
from torchopt_edu.federated.strategy import FedOpt, FedYogi

SMALL = [
    "--clients",
    "8",
    "--rounds",
    "2",
    "--fraction",
    "0.5",
    "--local-epochs",
    "1",
    "--no-progress",
]


def test_cli_prints_a_table_and_writes_history_config_and_curve(tmp_path, capsys):
    out = tmp_path / "run"
    assert (
        cli.main([*SMALL, "--strategy", "fedadam", "--server-lr", "0.05", "--out", str(out)]) == 0
    )
    printed = capsys.readouterr().out
    assert "FedAdam(Adam(lr=0.05, betas=(0.9, 0.99), eps=0.001))" in printed
    assert "round clients samples" in printed
    rows = list(csv.DictReader((out / "history.csv").open()))
    assert [row["round"] for row in rows] == ["1", "2"] and rows[0]["clients"] == "4"
    assert f"final test accuracy {float(rows[-1]['test_accuracy']):.3f}" in printed
    assert len(json.loads((out / "history.json").read_text())) == 2
    assert json.loads((out / "config.json").read_text())["server_lr"] == 0.05
    assert (out / "accuracy.png").stat().st_size > 0


def test_cli_fedopt_takes_any_package_optimizer(tmp_path, capsys):
    args = [
        *SMALL,
        "--partition",
        "shards",
        "--strategy",
        "fedopt",
        "--server-optimizer",
        "rmsprop",
        "--server-lr",
        "0.01",
        "--client-optimizer",
        "adam",
        "--lr",
        "0.01",
    ]
    assert cli.main([*args, "--out", str(tmp_path)]) == 0
    assert "FedOpt(RMSprop(lr=0.01))" in capsys.readouterr().out
    parsed = cli.build_parser().parse_args(["--strategy", "fedyogi"])
    assert isinstance(cli.build_strategy(parsed), FedYogi)
    parsed = cli.build_parser().parse_args(["--strategy", "fedopt", "--server-optimizer", "yogi"])
    assert isinstance(cli.build_strategy(parsed), FedOpt)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--clients", "0"], "argument --clients: must be an integer >= 1, got 0"),
        (["--fraction", "1.5"], r"argument --fraction: must be in \(0, 1\], got 1.5"),
        (["--partition", "zipf"], "argument --partition: invalid choice: 'zipf'"),
        (["--strategy", "fedopt"], "--strategy fedopt needs --server-optimizer"),
        (["--server-optimizer", "adam"], "--server-optimizer applies to --strategy fedopt"),
        (["--server-lr", "0.1"], "--server-lr: --strategy fedavg has no server optimizer"),
        (["--device", "tpu:x"], "--device: not a device: 'tpu:x'"),
        (["--lr", "-1"], "argument --lr: must be a number > 0, got -1"),
    ],
)
def test_cli_bad_arguments_exit_2_naming_the_argument(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    assert exit_.value.code == 2
    assert re.search(message, capsys.readouterr().err)


def test_benchmark_returns_its_numbers_and_prints_one_line(capsys):
    result = bench.run_benchmark(num_clients=20, fraction=0.1, rounds=2, local_epochs=1, warmup=1)
    assert result["clients"] == 20 and result["sampled"] == 2 and result["rounds"] == 2
    assert result["rounds_per_s"] > 0 and result["client_time_s"] > 0
    assert result["round_time_s"] > result["client_time_s"]
    assert 0 <= result["test_accuracy"] <= 1
    assert bench.main(["--clients", "10", "--rounds", "1", "--local-epochs", "1"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("federated: 10 clients, 1 sampled per round") and "rounds/s" in line


def test_cli_workers_give_the_same_rounds_as_one_process(tmp_path):
    args = [*SMALL, "--strategy", "fedavgm", "--partition", "quantity"]
    assert cli.main([*args, "--out", str(tmp_path / "one")]) == 0
    assert cli.main([*args, "--workers", "2", "--out", str(tmp_path / "two")]) == 0
    columns = ("round", "clients", "samples", "rejected", "test_loss", "test_accuracy")
    runs = [list(csv.DictReader((tmp_path / run / "history.csv").open())) for run in ("one", "two")]
    assert [[row[c] for c in columns] for row in runs[0]] == [
        [row[c] for c in columns] for row in runs[1]
    ]
