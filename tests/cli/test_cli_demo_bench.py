"""``torchopt-edu demo`` and ``torchopt-edu bench`` end to end (no timing checks)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from torchopt_edu import bench, cli, demo
from torchopt_edu.cli import bench as bench_cli
from torchopt_edu.cli import demo as demo_cli
from torchopt_edu.optim import OPTIMIZERS


def test_demo_trains_every_optimizer_and_saves_the_plot_and_json(tmp_path, capsys):
    results = tmp_path / "new" / "folder" / "results.json"
    code = cli.main(
        [
            "demo",
            "--dataset",
            "synthetic",
            "--epochs",
            "3",
            "--out",
            str(tmp_path),
            "--no-progress",
            "--json",
            str(results),
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    for name in demo.DEMO_HYPERPARAMETERS:
        assert f"\n{name} " in out
    assert (tmp_path / "loss_curves.png").stat().st_size > 1000
    saved = json.loads(results.read_text())
    assert [r["name"] for r in saved["results"]] == list(demo.DEMO_HYPERPARAMETERS)
    assert len(saved["results"][0]["losses"]) == 3


def test_demo_runs_torch_twins_with_the_same_numbers(tmp_path, capsys):
    argv = [
        "--dataset",
        "synthetic",
        "--epochs",
        "2",
        "--no-plot",
        "--no-progress",
        "--optimizers",
        "adam",
        "torch.optim.ADAM,SGD",
        "torch.optim.sgd",
        "--json",
        str(tmp_path / "r.json"),
    ]
    assert demo_cli.main(argv) == 0
    rows = json.loads((tmp_path / "r.json").read_text())["results"]
    assert [r["name"] for r in rows] == ["adam", "torch.optim.Adam", "sgd", "torch.optim.SGD"]
    torch.testing.assert_close(rows[0]["losses"], rows[1]["losses"], rtol=1e-5, atol=0)
    torch.testing.assert_close(rows[2]["losses"], rows[3]["losses"], rtol=1e-5, atol=0)
    assert not (tmp_path / "loss_curves.png").exists()


def test_demo_plot_marks_identical_curves():
    same = [1.0, 0.5, 0.25]
    results = [
        demo.RunResult("adam", same),
        demo.RunResult("torch.optim.Adam", list(same)),
        demo.RunResult("sgd", [1.0, 0.6, 0.3]),
    ]
    figure = demo.plot_losses(results)
    axis = figure.axes[0]
    labels = [line.get_label() for line in axis.get_lines()]
    assert labels == ["adam", "torch.optim.Adam (identical to adam)", "sgd"]
    styles = {(line.get_linestyle(), line.get_marker()) for line in axis.get_lines()}
    assert len(styles) == 3  # no curve hides another
    import matplotlib.pyplot as plt

    plt.close(figure)


def test_features_constant_on_the_training_set_are_centred_not_blown_up():
    # digits, seed 0: pixel 56 is 0 in every training image and 1/16 in one test image; a
    # near-zero std made that 62,500 and one image dominated the mean test loss
    train_split, test_split = demo.load_dataset("digits", seed=0)
    constant = train_split.features.std(0) == 0
    assert constant.any()
    assert test_split.features[:, constant].abs().max() <= 1.0
    assert test_split.features.abs().max() < 100


def test_demo_learns_digits():
    train_split, test_split = demo.load_dataset("digits", seed=0)
    model = demo.make_model(64, 10, seed=0)
    result = demo.train(
        "adam",
        lambda m: torch.optim.Adam(m.parameters(), lr=3e-3),
        model,
        train_split,
        test_split,
        epochs=5,
        batch_size=64,
        seed=0,
    )
    assert result.losses[-1] < result.losses[0] / 5
    assert result.test_accuracy > 0.9


def test_demo_hyperparameters_are_shared_by_torch_twins():
    assert demo.demo_hyperparameters("torch.optim.Adam") == demo.DEMO_HYPERPARAMETERS["adam"]
    assert demo.demo_hyperparameters("torch.optim.NAdam") == {}


def test_bench_runs_and_writes_json_into_a_missing_folder(tmp_path, capsys):
    out = tmp_path / "missing" / "bench.json"
    code = cli.main(
        [
            "bench",
            "--quick",
            "--steps",
            "2",
            "--warmup",
            "0",
            "--optimizers",
            "adam",
            "torch.optim.RMSprop",
            "--memory-steps",
            "2",
            "--json",
            str(out),
            "--out",
            str(tmp_path / "plots"),
        ]
    )
    assert code == 0
    data = json.loads(out.read_text())
    rows = data["rows"]
    assert {r["candidate"] for r in rows if r["algorithm"] == "adam"} == {
        "torch loop",
        "torch foreach",
        "torch fused",
        "ours foreach",
        "ours",
        "ours flat",
    }
    assert {r["candidate"] for r in rows if r["algorithm"] == "rmsprop"} == {
        "torch loop",
        "torch foreach",
        "ours foreach",
        "ours",
        "ours flat",
    }
    for r in rows:  # state memory: ours never holds more than torch for the same algorithm
        torch_state = max(
            s["state_bytes_per_param"]
            for s in rows
            if s["algorithm"] == r["algorithm"]
            and s["shape"] == r["shape"]
            and s["candidate"].startswith("torch")
        )
        assert r["state_bytes_per_param"] <= torch_state
        assert r["spread"] >= 0
    printed = capsys.readouterr().out
    assert "| adam |" in printed and "| spread |" in printed
    assert (tmp_path / "plots" / "bench.png").read_bytes()[:4] == b"\x89PNG"


def test_spread_is_the_interquartile_range_over_the_median():
    assert bench.spread([1.0, 2.0, 3.0, 4.0, 5.0]) == pytest.approx((4.0 - 2.0) / 3.0)
    assert bench.spread([2.0, 2.0]) == 0.0
    assert math.isnan(bench.spread([1.0]))


def _row(candidate: str, ms: float, spread: float) -> bench.Row:
    return bench.Row("adam", "1M/4", candidate, ms, ms / 10.0, 8.0, 1.0, spread)


def test_noisy_rows_are_marked_and_warned_about():
    quiet = [
        _row("torch fused", 10.0, 0.05),
        _row("ours foreach", 20.0, 0.05),
        _row("ours", 10.0, 0.05),
        _row("ours flat", 9.0, 0.05),
    ]
    assert bench_cli.noise_warning(quiet) is None
    assert "(noisy)" not in bench_cli.format_summary(quiet)
    noisy = [*quiet[:2], _row("ours", 0.1, 2.65), quiet[3]]  # the "0.01" of a busy machine
    warning = bench_cli.noise_warning(noisy)
    assert warning.startswith("warning: 1 of 4 rows are too noisy to read")
    assert "worst 265%: adam 1M/4 ours" in warning
    summary = bench_cli.format_summary(noisy)
    assert "**0.01** (noisy)" in summary and "**0.90** |" in summary
    assert "| 265% |" in bench_cli.format_table(noisy, 1.0)
    one_step = [_row(row.candidate, row.ms_per_step, math.nan) for row in quiet]
    assert "one timed step" in bench_cli.noise_warning(one_step)


def test_bench_maps_optimizer_spellings_to_algorithms():
    args = bench_cli.build_parser().parse_args(
        ["--optimizers", "Adam", "torch.optim.AdamW,momentum", "torch.optim.adagrad"]
    )
    assert args.optimizers == ["adam", "adamw", "momentum", "adagrad"]


def test_bench_chart_path_is_checked_before_measuring(tmp_path, capsys, monkeypatch):
    def no_measuring(*args, **kwargs):
        raise AssertionError("measured before checking the outputs")

    monkeypatch.setattr(bench, "update_bandwidth", no_measuring)
    (tmp_path / "file").write_text("")
    for argv, message in [
        (["--plot", str(tmp_path / "file" / "chart.png")], "argument --plot: "),
        (["--out", str(tmp_path / "file")], "argument --out: "),
        (
            ["--no-plot", "--plot", str(tmp_path / "chart.png")],
            "argument --plot: not allowed with --no-plot",
        ),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            bench_cli.main(["--quick", *argv])
        assert exit_info.value.code == 2
        captured = capsys.readouterr()
        assert message in captured.err and captured.out == ""


def test_bench_times_every_optimizer_of_the_package():
    assert set(bench.ALGORITHMS) == set(OPTIMIZERS)


@pytest.mark.parametrize(
    "name, candidates",
    [
        (
            "lion",
            {"ref lion-pytorch", "ref lion-pytorch foreach", bench.YARDSTICK, "ours foreach"}
            | {"ours", "ours flat", "ours compiled flat"},
        ),
        (
            "prodigy",
            {"ref prodigyopt", bench.YARDSTICK, "ours foreach", "ours", "ours flat"}
            | {"ours compiled flat"},
        ),
        (
            "adamwschedulefree",
            {"ref schedulefree", bench.YARDSTICK, "ours foreach", "ours", "ours flat"}
            | {"ours compiled flat"},
        ),
        ("yogi", {bench.YARDSTICK, "ours foreach", "ours", "ours flat"}),
        ("muon", {"torch loop", "ours foreach", "ours"}),
    ],
)
def test_frontier_rows_time_the_reference_packages_and_the_fused_adam_yardstick(name, candidates):
    for baseline in bench.ALGORITHMS[name].baselines:
        if baseline.requires is not None:
            pytest.importorskip(baseline.requires, reason="reference packages: dev extra")
    algorithm = bench.ALGORITHMS[name]
    shape = bench.shapes_for(algorithm, quick=True)[1]
    rows = {r.candidate: r for r in bench.run_shape(algorithm, shape, torch.device("cpu"), 2, 0)}
    assert set(rows) == candidates
    baselines = [r for r in rows.values() if r.candidate.startswith(("torch", "ref"))]
    baselines = [r for r in baselines if r.candidate != bench.YARDSTICK]
    fastest = min((r.ms_per_step for r in baselines), default=math.nan)
    for row in rows.values():
        if baselines:
            assert row.ratio_to_baseline == pytest.approx(row.ms_per_step / fastest)
        else:
            assert math.isnan(row.ratio_to_baseline)
        if algorithm.yardstick:
            yardstick = rows[bench.YARDSTICK].ms_per_step
            assert row.ratio_to_fused_adam == pytest.approx(row.ms_per_step / yardstick)
        else:
            assert math.isnan(row.ratio_to_fused_adam)
    if algorithm.matrices:
        assert rows["ours"].shape == "100k/100 (32x32)"
        assert rows["ours"].state_bytes_per_param == 4.0  # one momentum buffer, as torch's


def test_summary_shows_the_reference_baseline_and_the_yardstick_ratio():
    rows = [
        bench.Row("lion", "1M/4", "ref lion-pytorch", 3.0, 1.0, 4.0, 1.0, 0.05, 3.0),
        bench.Row("lion", "1M/4", bench.YARDSTICK, 1.0, 1 / 3, 8.0, 1.0, 0.05, 1.0),
        bench.Row("lion", "1M/4", "ours", 2.0, 2 / 3, 4.0, 1.0, 0.05, 2.0),
        bench.Row("lion", "1M/4", "ours compiled flat", 0.75, 0.25, 4.0, 1.0, 0.05, 0.75),
        bench.Row("yogi", "1M/4", bench.YARDSTICK, 4 / 3, math.nan, 8.0, 1.0, 0.05, 1.0),
        bench.Row("yogi", "1M/4", "ours", 2.0, math.nan, 8.0, 1.0, 0.05, 1.5),
    ]
    summary = bench_cli.format_summary(rows)
    lion = (
        "| lion | 1M/4 | ref lion-pytorch | 3.00 | - | 2.00 | **0.67** | - | - | 0.75 | **0.25** "
    )
    assert f"{lion}| **2.00** | **0.75** |" in summary
    assert "| yogi | 1M/4 | none | - | - | 2.00 | - | - | - | - | - | **1.50** | - |" in summary
