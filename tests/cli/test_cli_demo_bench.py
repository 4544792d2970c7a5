"""The command line: dispatch, the demo and the benchmark run end to end (no timing checks)."""

from __future__ import annotations

import json

import pytest

from torchopt_edu import bench, cli, demo


def test_cli_lists_commands_and_rejects_unknown(capsys):
    assert cli.main([]) == 2
    assert "demo" in capsys.readouterr().out
    assert cli.main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err


def test_demo_trains_every_optimizer_and_saves_the_plot(tmp_path, capsys):
    code = cli.main(["demo", "--dataset", "synthetic", "--epochs", "3", "--out", str(tmp_path)])
    assert code == 0
    out = capsys.readouterr().out
    for name in demo.DEMO_HYPERPARAMETERS:
        assert f"\n{name} " in out
    assert (tmp_path / "loss_curves.png").stat().st_size > 1000


def test_demo_learns_digits():
    train_split, test_split = demo.load_dataset("digits", seed=0)
    model = demo.make_model(64, 10, seed=0)
    result = demo.train("adam", lambda m: demo.OPTIMIZERS["adam"](m.parameters(), lr=3e-3),
                        model, train_split, test_split, epochs=5, batch_size=64, seed=0)
    assert result.losses[-1] < result.losses[0] / 5
    assert result.test_accuracy > 0.9


@pytest.mark.parametrize("argv, message", [
    (["--epochs", "0"], "--epochs: must be an integer >= 1, got 0"),
    (["--optimizers", "lbfgs"], "invalid choice: 'lbfgs'"),
    (["--dataset", "mnist"], "invalid choice: 'mnist'"),
])
def test_demo_rejects_bad_arguments(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        demo.main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_bench_runs_and_writes_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    code = bench.main(["--quick", "--steps", "1", "--warmup", "0", "--algorithms", "adam",
                       "rmsprop", "--memory-steps", "2", "--json", str(out)])
    assert code == 0
    data = json.loads(out.read_text())
    rows = data["rows"]
    assert {r["candidate"] for r in rows if r["algorithm"] == "adam"} == {
        "torch loop", "torch foreach", "torch fused", "ours foreach", "ours", "ours flat"}
    assert {r["candidate"] for r in rows if r["algorithm"] == "rmsprop"} == {
        "torch loop", "torch foreach", "ours foreach", "ours", "ours flat"}
    for r in rows:  # state memory: ours never holds more than torch for the same algorithm
        torch_state = max(s["state_bytes_per_param"] for s in rows
                          if s["algorithm"] == r["algorithm"] and s["shape"] == r["shape"]
                          and s["candidate"].startswith("torch"))
        assert r["state_bytes_per_param"] <= torch_state
    assert "| adam |" in capsys.readouterr().out


def test_bench_rejects_unavailable_device(capsys):
    with pytest.raises(SystemExit):
        bench.main(["--device", "cuda:7" if not bench.torch.cuda.is_available() else "nope"])
    assert "--device" in capsys.readouterr().err
