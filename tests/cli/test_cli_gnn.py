"""``torchopt-edu gnn`` and the GNN benchmark, called through their main(argv)."""

import json
from pathlib import Path

import pytest
import torch

from torchopt_edu.cli import main as torchopt_edu_main
from torchopt_edu.gnn import bench
from torchopt_edu.gnn.cli import main


def test_compares_optimizers_and_writes_curves(tmp_path: Path, capsys: pytest.CaptureFixture
                                                ) -> None:
    out = tmp_path / "karate"
    code = main(["--dataset", "karate", "--optimizer", "adam", "torch.adam", "sgd",
                 "--epochs", "20", "--out", str(out)])
    assert code == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("GCN(34, [16], 4) on karate")
    rows = {line.split()[0]: line.split() for line in lines[3:6]}
    assert list(rows) == ["adam", "torch.adam", "sgd"]
    assert rows["adam"][4:-1] == rows["torch.adam"][4:-1]  # same metrics: a drop-in
    histories = json.loads((out / "histories.json").read_text())
    assert list(histories) == ["adam", "torch.adam", "sgd"]
    assert histories["sgd"]["lr"][0] == 0.3 and histories["adam"]["lr"][0] == 0.01
    assert len(histories["adam"]["loss"]) == 20
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_regression_dataset_one_learning_rate_and_dispatch(tmp_path: Path,
                                                           capsys: pytest.CaptureFixture) -> None:
    code = torchopt_edu_main(["gnn", "--dataset", "seed", "--optimizer", "adam", "yogi",
                              "--lr", "0.02", "--epochs", "5", "--out", str(tmp_path),
                              "--no-plot", "--quiet", "--hidden", "8", "8"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "GCN(10, [8, 8], 1) on seed" in printed and "train_loss" in printed
    assert "val_acc" not in printed
    histories = json.loads((tmp_path / "histories.json").read_text())
    assert histories["yogi"]["lr"] == [0.02] * 5
    assert not (tmp_path / "curves.png").exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--lr", "-1"], "argument --lr: must be a finite number > 0, got -1"),
        (["--epochs", "0"], "argument --epochs: must be an integer >= 1, got 0"),
        (["--optimizer", "adamm"], "argument --optimizer: unknown optimizer 'adamm'"),
        (["--optimizer", "torch.nope"], "argument --optimizer: unknown optimizer 'torch.nope'"),
        (["--optimizer", "torch.sparseadam"],
         "argument --optimizer: unknown optimizer 'torch.sparseadam'"),
        (["--optimizer", "torch.muon"], "argument --optimizer: unknown optimizer 'torch.muon'"),
        (["--lr", "inf"], "argument --lr: must be a finite number > 0, got inf"),
        (["--dataset", "cora"], "argument --dataset: invalid choice: 'cora'"),
        (["--dropout", "1.5"], "argument --dropout: must be < 1, got 1.5"),
        (["--device", "tpu"], "argument --device: device must be 'auto', 'cpu', 'cuda'"),
    ],
)
def test_bad_arguments_exit_2_naming_the_argument(argv: list[str], message: str,
                                                  capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--out", "unused"])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_benchmark_returns_comparable_results() -> None:
    results = bench.benchmark_epoch(num_nodes=300, num_edges=3_000, num_features=8,
                                    hidden_channels=(16,), repeats=2, warmup=1, device="cpu")
    names = [bench.OURS, bench.TORCH_DEFAULT, bench.TORCH_FUSED]
    assert list(results["epoch_seconds"]) == names
    assert results["num_parameters"] == (8 * 16 + 16) + (16 + 1)
    # the three runs do the same work: the same losses after 3 epochs, to float32 rounding
    losses = torch.tensor([results["final_loss"][name] for name in names])
    torch.testing.assert_close(losses, losses[:1].expand(3), rtol=0, atol=1e-6)
    epoch = results["epoch_seconds"]
    assert results["ratio_vs_torch_fused"] == epoch[bench.OURS] / epoch[bench.TORCH_FUSED]


def test_benchmark_main_quick(capsys: pytest.CaptureFixture) -> None:
    assert bench.main(["--quick", "--repeats", "1", "--warmup", "0", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "2,000 nodes, 20,000 edges" in printed and "ratio ours / torch fused" in printed
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--repeats", "0"])
    assert exit_info.value.code == 2
    assert "argument --repeats: must be >= 1, got 0" in capsys.readouterr().err


def test_bad_out_is_refused_before_training(tmp_path: Path, capsys: pytest.CaptureFixture
                                            ) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    for out, message in [(blocker, "exists and is not a directory"),
                         (blocker / "sub", "is not a directory")]:
        with pytest.raises(SystemExit) as exit_info:
            main(["--dataset", "karate", "--optimizer", "adam", "--epochs", "1", "--quiet",
                  "--no-plot", "--out", str(out)])
        assert exit_info.value.code == 2
        captured = capsys.readouterr()
        assert "argument --out:" in captured.err and message in captured.err
        assert captured.out == ""  # nothing trained or printed
