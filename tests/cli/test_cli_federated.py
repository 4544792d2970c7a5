"""`torchopt-edu federated` and `federated-bench`, called through main(argv)."""

import csv
import functools
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from torchopt_edu.cli import federated as cli
from torchopt_edu.cli import federated_bench
from torchopt_edu.federated import (
    MLP,
    FedAvg,
    LocalTraining,
    Simulation,
    bench,
    iid_partition,
    load_digits_split,
    make_clients,
)
from torchopt_edu.federated.strategy import FedOpt, FedYogi
from torchopt_edu.optim import SGD

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
        "torch.optim.Adam",
        "--lr",
        "0.01",
    ]
    assert cli.main([*args, "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "FedOpt(RMSprop(lr=0.01))" in printed and "torch.optim.Adam lr 0.01" in printed
    parsed = cli.build_parser().parse_args(["--strategy", "fedyogi"])
    assert isinstance(cli.build_strategy(parsed), FedYogi)
    parsed = cli.build_parser().parse_args(
        ["--strategy", "fedopt", "--server-optimizer", "torch.optim.adam", "--server-lr", "0.1"]
    )
    strategy = cli.build_strategy(parsed)
    assert isinstance(strategy, FedOpt) and "Adam" in repr(strategy)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--clients", "0"], "argument --clients: must be an integer >= 1, got 0"),
        (["--fraction", "1.5"], r"argument --fraction: must be in \(0, 1\], got 1.5"),
        (["--partition", "zipf"], "argument --partition: invalid choice: 'zipf'"),
        (["--strategy", "fedopt"], "--strategy fedopt needs --server-optimizer"),
        (["--server-optimizer", "adam"], "--server-optimizer applies to --strategy fedopt"),
        (["--server-lr", "0.1"], "--server-lr: --strategy fedavg has no server optimizer"),
        (["--device", "tpu:x"], "--device: expected auto, cpu, cuda or cuda:N, got 'tpu:x'"),
        (["--optimizer", "adamm"], "argument --optimizer/--client-optimizer: unknown optimizer"),
        (["--lr", "-1"], r"argument --lr: must be a (finite )?number > 0, got -1"),
        (["--mu", "0.5"], "argument --mu: applies to --strategy fedprox, not --strategy fedavg"),
        (
            ["--partition", "iid", "--alpha", "1"],
            "argument --alpha: applies to --partition dirichlet, not --partition iid",
        ),
        (["--beta", "1"], "argument --beta: applies to --partition quantity, not --partition dir"),
        (
            ["--partition", "quantity", "--shards-per-client", "3"],
            "argument --shards-per-client: applies to --partition shards, not --partition quan",
        ),
        (["--seed", "-1"], r"argument --seed: must be an integer in \[0, 4294967295\], got -1"),
        (["--seed", str(2**32)], "argument --seed: must be an integer in"),
        (["--clients", "2000"], "argument --clients: 2000 clients but the training set has 1437"),
        (
            ["--clients", "800", "--partition", "shards"],
            "argument --clients: 800 clients x 2 shards per client need 1600 samples",
        ),
        (["--device", "meta"], "argument --device: expected auto, cpu, cuda or cuda:N, got 'meta'"),
        (
            ["--strategy", "fedopt", "--server-optimizer", "sgd"],
            "--strategy fedopt needs --server-lr",
        ),
        (["--keep", "2"], "argument --keep: applies to --strategy krum, not --strategy fedavg"),
        (["--strategy", "fedtrimmedavg", "--trim-beta", "0.5"], "--trim-beta: must be < 0.5"),
        (["--dp-noise", "1"], "--dp-noise and --dp-clip go together"),
        (["--compress-ratio", "0.1"], "argument --compress-ratio: applies to --compress"),
        (["--attack-scale", "2"], "argument --attack-scale: applies to --attack"),
        (["--attack", "flip"], "argument --attack: invalid choice: 'flip'"),
        (["--dropout", "1"], "argument --dropout: must be < 1, got 1.0"),
        (["--resume"], "argument --resume: no checkpoint at .*checkpoint.pt"),
        (["--launcher", "torchrun"], "--launcher torchrun: run under torchrun"),
    ],
)
def test_cli_bad_arguments_exit_2_naming_the_argument(argv, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_:
        cli.main([*argv, "--out", str(tmp_path / "out")])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert re.search(message, err) and err.count("\n") == 1
    assert not (tmp_path / "out" / "history.csv").exists()


def test_help_names_each_default_once(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: 0.1)" in text  # --lr
    assert "(default runs/federated)" in text and "(default: runs/federated)" not in text
    assert "(default 0)" in text and "(default 0) (default: 0)" not in text


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without CUDA")
def test_cuda_without_cuda_is_an_argument_error(capsys):
    for main in (cli.main, federated_bench.main):
        with pytest.raises(SystemExit) as exit_:
            main(["--device", "cuda"])
        assert exit_.value.code == 2
        assert "argument --device: cuda: CUDA is not available" in capsys.readouterr().err


def test_out_that_is_a_file_fails_before_training(tmp_path, capsys, monkeypatch):
    def no_training(*args, **kwargs):
        raise AssertionError("trained before checking --out")

    monkeypatch.setattr(cli, "Simulation", no_training)
    (tmp_path / "file").write_text("")
    for out in (tmp_path / "file", tmp_path / "file" / "run"):
        with pytest.raises(SystemExit) as exit_:
            cli.main([*SMALL, "--out", str(out)])
        assert exit_.value.code == 2
        assert "argument --out:" in capsys.readouterr().err


def test_options_that_apply_are_used_and_recorded(tmp_path):
    args = cli.build_parser().parse_args(["--strategy", "fedprox", "--partition", "shards"])
    cli._check(cli.build_parser(), args)
    assert (args.mu, args.shards_per_client, args.alpha, args.beta) == (0.01, 2, None, None)
    assert cli.build_strategy(args).mu == 0.01
    out = tmp_path / "run"
    argv = [*SMALL, "--rounds", "1", "--strategy", "fedprox", "--mu", "0.5", "--out", str(out)]
    assert cli.main([*argv, "--partition", "iid"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["mu"] == 0.5 and config["alpha"] is None and config["device"] == "cpu"


def test_benchmark_returns_its_numbers_and_prints_one_line(capsys):
    result = bench.run_benchmark(num_clients=20, fraction=0.1, rounds=2, local_epochs=1, warmup=1)
    assert set(result) == {
        "clients", "sampled", "local_epochs", "batch_size", "rounds", "device", "rounds_per_s",
        "round_time_s", "client_time_s", "eval_time_s", "overhead", "test_accuracy", "threads",
    }  # fmt: skip
    assert result["clients"] == 20 and result["sampled"] == 2 and result["rounds"] == 2
    assert result["threads"] == 1  # the digits MLP is small: one thread by default
    assert result["device"] == "cpu" and result["local_epochs"] == 1
    assert all(
        isinstance(result[key], float) and math.isfinite(result[key])
        for key in ("rounds_per_s", "round_time_s", "client_time_s", "eval_time_s", "overhead")
    )
    assert 0 <= result["test_accuracy"] <= 1
    argv = ["--clients", "10", "--rounds", "1", "--local-epochs", "1"]
    assert federated_bench.main(argv) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("federated: 10 clients, 1 sampled per round") and "rounds/s" in line
    assert "on cpu with 1 thread:" in line
    before = torch.get_num_threads()
    assert federated_bench.main([*argv, "--threads", "2"]) == 0
    assert "on cpu with 2 threads:" in capsys.readouterr().out
    assert torch.get_num_threads() == before


def test_cli_workers_give_the_same_rounds_as_one_process(tmp_path):
    args = [*SMALL, "--strategy", "fedavgm", "--partition", "quantity"]
    assert cli.main([*args, "--out", str(tmp_path / "one")]) == 0
    assert cli.main([*args, "--workers", "2", "--out", str(tmp_path / "two")]) == 0
    columns = ("round", "clients", "samples", "rejected", "test_loss", "test_accuracy")
    runs = [list(csv.DictReader((tmp_path / run / "history.csv").open())) for run in ("one", "two")]
    assert [[row[c] for c in columns] for row in runs[0]] == [
        [row[c] for c in columns] for row in runs[1]
    ]


def test_torchrun_ranks_give_the_same_rounds_as_one_process(tmp_path):
    """Two ranks under torchrun (gloo), on the gather path (robust, compressed, attacked)."""
    command = Path(sys.executable).parent / "torchopt-edu"
    if not command.exists():
        pytest.skip(f"the torchopt-edu console script is not installed next to {sys.executable}")
    args = [*SMALL, "--strategy", "fedmedian", "--compress", "topk", "--attack", "sign_flip"]
    args += ["--no-plot"]
    assert cli.main([*args, "--out", str(tmp_path / "one")]) == 0
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node"]
    launch += ["2", "--no-python", str(command), "federated", "--launcher", "torchrun"]
    run = subprocess.run(
        [*launch, *args, "--out", str(tmp_path / "two")],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.count("final test accuracy") == 1  # rank 0 reports, rank 1 is quiet
    columns = ("round", "clients", "samples", "train_loss", "test_loss", "test_accuracy")
    columns += ("bytes_sent",)
    runs = [list(csv.DictReader((tmp_path / run / "history.csv").open())) for run in ("one", "two")]
    assert [[row[c] for c in columns] for row in runs[0]] == [
        [row[c] for c in columns] for row in runs[1]
    ]


def _history(rounds=2, diverging=False):
    x_train, y_train, x_test, y_test = load_digits_split(seed=0)
    clients = make_clients(x_train[:80], y_train[:80], iid_partition(80, 4))
    lr = 1e30 if diverging else 0.1
    train = LocalTraining(functools.partial(SGD, lr=lr), epochs=1, batch_size=10)
    simulation = Simulation(
        MLP(), clients, FedAvg(), train, (x_test, y_test), fraction=1.0, on_invalid="skip"
    )
    return simulation.run(rounds, progress=False)


def test_history_is_saved_as_csv_and_json(tmp_path):
    history = _history()
    csv_path, json_path = cli.save_history(history, tmp_path)
    assert json.loads(json_path.read_text()) == history
    rows = list(csv.DictReader(csv_path.open()))
    assert [int(row["round"]) for row in rows] == [1, 2]
    assert float(rows[1]["test_accuracy"]) == history[1]["test_accuracy"]


def test_a_round_with_every_update_rejected_is_saved_as_strict_json(tmp_path):
    with pytest.warns(RuntimeWarning, match="rejected update"):
        history = _history(rounds=1, diverging=True)
    assert history[0]["samples"] == 0 and math.isnan(history[0]["train_loss"])
    csv_path, json_path = cli.save_history(history, tmp_path)

    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")

    saved = json.loads(json_path.read_text(), parse_constant=refuse)
    assert saved[0]["train_loss"] is None and saved[0]["rejected"] == [0, 1, 2, 3]
    assert next(csv.DictReader(csv_path.open()))["train_loss"] == "nan"


def test_cli_robust_clipped_compressed_attacked_faulty_rounds_are_recorded(tmp_path, capsys):
    out = tmp_path / "run"
    args = [*SMALL, "--strategy", "krum", "--malicious", "1", "--keep", "2", "--clip-norm", "5"]
    args += ["--attack", "sign_flip", "--compress", "topk", "--compress-ratio", "0.1"]
    assert cli.main([*args, "--dropout", "0.3", "--min-replies", "1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "ClipUpdates(Krum(num_malicious_clients=1, num_clients_to_keep=2)" in printed
    assert "test acc  kB sent" in printed
    rows = list(csv.DictReader((out / "history.csv").open()))
    parameters = sum(p.numel() for p in MLP().parameters())
    for row in rows:  # top-10%: a value and an int32 index per kept entry
        assert int(row["bytes_sent"]) == int(row["replies"]) * 8 * math.ceil(0.1 * parameters)
        # the bytes sent are printed beside the accuracy
        accuracy_and_bytes = (
            f"{float(row['test_accuracy']):8.3f} {int(row['bytes_sent']) / 1e3:8.1f}"
        )
        assert accuracy_and_bytes in printed
    assert {"dropped", "late", "failed", "skipped", "refused"} <= set(rows[0])


def test_cli_dp_fedavg_and_scaffold_run(tmp_path):
    dp = [*SMALL, "--dp-noise", "0.5", "--dp-clip", "1", "--out", str(tmp_path / "dp")]
    assert cli.main(dp) == 0
    assert json.loads((tmp_path / "dp" / "history.json").read_text())[-1]["epsilon"] > 0
    scaffold = [*SMALL, "--strategy", "scaffold", "--out", str(tmp_path / "scaffold")]
    assert cli.main(scaffold) == 0


def test_cli_resume_continues_to_the_same_rounds_as_an_uninterrupted_run(tmp_path, capsys):
    args = [*SMALL, "--strategy", "fedadam", "--no-plot", "--checkpoint-every", "1"]
    assert cli.main([*args, "--rounds", "3", "--out", str(tmp_path / "whole")]) == 0
    assert cli.main([*args, "--rounds", "2", "--out", str(tmp_path / "parts")]) == 0
    assert cli.main([*args, "--rounds", "3", "--resume", "--out", str(tmp_path / "parts")]) == 0
    assert "resumed after round 2" in capsys.readouterr().out
    columns = ("round", "samples", "train_loss", "test_loss", "test_accuracy")
    runs = [list(csv.DictReader((tmp_path / r / "history.csv").open())) for r in ("whole", "parts")]
    assert [[row[c] for c in columns] for row in runs[0]] == [
        [row[c] for c in columns] for row in runs[1]
    ]
    (tmp_path / "parts" / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(SystemExit) as exit_:
        cli.main([*args, "--rounds", "4", "--resume", "--out", str(tmp_path / "parts")])
    assert exit_.value.code == 2
    assert "cannot read checkpoint" in capsys.readouterr().err
