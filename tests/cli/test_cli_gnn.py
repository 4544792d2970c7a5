"""``torchopt-edu gnn`` and ``gnn-bench``, called through their main(argv)."""

import json
from pathlib import Path

import pytest
import torch

from torchopt_edu.cli import gnn as gnn_cli
from torchopt_edu.cli import gnn_bench
from torchopt_edu.cli import main as torchopt_edu_main
from torchopt_edu.gnn import bench
from torchopt_edu.gnn.demo import default_lr
from torchopt_edu.gnn.plot import plot_histories

main = gnn_cli.main


def test_compares_optimizers_and_writes_curves(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "karate"
    code = main(
        [
            "--dataset",
            "karate",
            "--optimizers",
            "adam",
            "torch.optim.Adam,sgd",
            "--epochs",
            "20",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert code == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("GCN(34, [16], 4) on karate")
    rows = {line.split()[0]: line.split() for line in lines[3:6]}
    assert list(rows) == ["adam", "torch.optim.Adam", "sgd"]
    assert rows["adam"][4:-1] == rows["torch.optim.Adam"][4:-1]  # same metrics: a drop-in
    histories = json.loads((out / "histories.json").read_text())
    assert list(histories) == ["adam", "torch.optim.Adam", "sgd"]
    assert histories["sgd"]["lr"][0] == 0.3 and histories["adam"]["lr"][0] == 0.01
    assert len(histories["adam"]["loss"]) == 20
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_regression_dataset_one_learning_rate_and_dispatch(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    code = torchopt_edu_main(
        [
            "gnn",
            "--dataset",
            "seed",
            "--optimizer",
            "adam",
            "yogi",
            "--lr",
            "0.02",
            "--epochs",
            "5",
            "--out",
            str(tmp_path),
            "--no-plot",
            "--quiet",
            "--hidden",
            "8",
            "8",
            "--json",
            str(tmp_path / "run.json"),
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "GCN(10, [8, 8], 1) on seed" in printed and "train_loss" in printed
    assert "val_acc" not in printed
    histories = json.loads((tmp_path / "histories.json").read_text())
    assert histories["yogi"]["lr"] == [0.02] * 5
    assert json.loads((tmp_path / "run.json").read_text())["histories"] == histories
    assert not (tmp_path / "curves.png").exists()


def test_demo_learning_rates_are_shared_by_torch_twins() -> None:
    assert default_lr(torch.optim.Adam) == 0.01 and default_lr(torch.optim.SGD) == 0.3
    assert default_lr(torch.optim.NAdam) == 2e-3  # torch's own default


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--lr", "-1"], "argument --lr: must be a finite number > 0, got -1"),
        (["--epochs", "0"], "argument --epochs: must be an integer >= 1, got 0"),
        (["--optimizers", "adamm"], "argument --optimizers/--optimizer: unknown optimizer 'adamm'"),
        (["--optimizers", "torch.optim.nope"], "unknown optimizer 'torch.optim.nope'"),
        (
            ["--optimizers", "torch.optim.SparseAdam"],
            "torch.optim.SparseAdam steps sparse gradients only",
        ),
        (["--optimizers", "torch.optim.muon"], "torch.optim.Muon steps 2-D parameters only"),
        (["--lr", "inf"], "argument --lr: must be a finite number > 0, got inf"),
        (["--dataset", "cora"], "argument --dataset: invalid choice: 'cora'"),
        (["--dropout", "1.5"], "argument --dropout: must be < 1, got 1.5"),
        (["--device", "tpu"], "argument --device: expected auto, cpu, cuda or cuda:N, got 'tpu'"),
        (["--seed", str(2**64)], "argument --seed: must be an integer in [0, 4294967295]"),
        (["--out", "/proc/torchopt-edu-test"], "argument --out: cannot write into /proc/"),
    ],
)
def test_bad_arguments_exit_2_naming_the_argument(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--out", str(tmp_path / "out"), *argv])
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert message in captured.err and captured.err.count("\n") == 1
    assert captured.out == ""


def test_bad_out_is_refused_before_training(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_training(*args: object, **kwargs: object) -> None:
        raise AssertionError("trained before checking the outputs")

    monkeypatch.setattr(gnn_cli, "compare_optimizers", no_training)
    blocker = tmp_path / "file"
    blocker.write_text("")
    for flag, out, message in [
        ("--out", blocker, "exists and is not a folder"),
        ("--out", blocker / "sub", "Not a directory"),
        ("--json", tmp_path, "is a folder, not a file"),
        ("--json", blocker / "r.json", "file exists and is not a folder"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            main(
                [
                    "--dataset",
                    "karate",
                    "--optimizers",
                    "adam",
                    "--epochs",
                    "1",
                    "--out",
                    str(tmp_path / "ok"),
                    flag,
                    str(out),
                ]
            )
        assert exit_info.value.code == 2
        captured = capsys.readouterr()
        assert f"argument {flag}:" in captured.err and message in captured.err
        assert captured.out == ""  # nothing trained or printed


def test_plot_names_identical_runs(tmp_path: Path) -> None:
    from torchopt_edu.gnn.train import History

    same = History("classification", "val_loss", [1.0, 0.5], {"val_acc": [0.5, 0.7]})
    other = History("classification", "val_loss", [1.0, 0.9], {"val_acc": [0.5, 0.6]})
    figure = plot_histories({"adam": same, "torch.optim.Adam": same, "sgd": other})
    labels = [line.get_label() for line in figure.axes[1].get_lines()]
    assert labels == ["adam", "torch.optim.Adam (identical to adam)", "sgd"]
    import matplotlib.pyplot as plt

    plt.close(figure)


def test_benchmark_returns_comparable_results() -> None:
    results = bench.benchmark_epoch(
        num_nodes=300,
        num_edges=3_000,
        num_features=8,
        hidden_channels=(16,),
        repeats=2,
        warmup=1,
        device="cpu",
    )
    names = [bench.OURS, bench.TORCH_DEFAULT, bench.TORCH_FUSED]
    assert list(results["epoch_seconds"]) == names
    assert results["num_parameters"] == (8 * 16 + 16) + (16 + 1)
    # the three runs do the same work: the same losses after 3 epochs, to float32 rounding
    losses = torch.tensor([results["final_loss"][name] for name in names])
    torch.testing.assert_close(losses, losses[:1].expand(3), rtol=0, atol=1e-6)
    epoch = results["epoch_seconds"]
    assert results["ratio_vs_torch_fused"] == epoch[bench.OURS] / epoch[bench.TORCH_FUSED]


def test_benchmark_main_quick(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "gnn.json"
    argv = [
        "gnn-bench",
        "--quick",
        "--repeats",
        "1",
        "--warmup",
        "0",
        "--device",
        "cpu",
        "--json",
        str(out),
    ]
    assert torchopt_edu_main(argv) == 0
    printed = capsys.readouterr().out
    assert "2,000 nodes, 20,000 edges" in printed and "ratio ours / torch fused" in printed
    assert json.loads(out.read_text())["num_nodes"] == 2000
    with pytest.raises(SystemExit) as exit_info:
        gnn_bench.main(["--repeats", "0"])
    assert exit_info.value.code == 2
    assert "argument --repeats: must be an integer >= 1, got 0" in capsys.readouterr().err
