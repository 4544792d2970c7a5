"""The end-to-end benchmark runs and reports what it says it does (smoke test, no timing checks)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from torchopt_edu import bench_e2e
from torchopt_edu.cli import bench_e2e as cli_bench_e2e

CONTENDERS = ["torch foreach", "torch fused", "ours", "ours flat"]


@pytest.fixture(scope="module")
def quick_rows():
    return bench_e2e.run(quick=True, threads=[1])


def test_models_have_the_documented_sizes():
    counts = {
        name: sum(p.numel() for p in w.build().parameters())
        for name, w in bench_e2e.WORKLOADS.items()
    }
    assert round(counts["transformer"] / 1e6, 1) == 3.2
    assert round(counts["cnn"] / 1e6, 1) == 0.7


def test_quick_run_has_one_row_per_model_and_contender(quick_rows):
    assert [(r["model"], r["threads"], r["candidate"]) for r in quick_rows] == [
        (model, 1, name) for model in ("transformer", "cnn") for name in CONTENDERS
    ]
    for model in ("transformer", "cnn"):
        rows = [r for r in quick_rows if r["model"] == model]
        reference = next(r for r in rows if r["candidate"] == rows[0]["fastest_torch"])
        assert reference["candidate"].startswith("torch")
        assert reference["ratio"] == 1.0
        for r in rows:
            assert r["iteration_ms"] > 0 and r["step_ms"] > 0 and r["forward_backward_ms"] > 0
            assert r["ratio_q1"] <= r["ratio_q3"]
            assert 0 < r["step_share"] < 1
            assert math.isclose(r["ratio"], r["iteration_ms"] / reference["iteration_ms"])


def test_every_contender_trains_the_same_model(quick_rows):
    # same initial weights, batches and AdamW hyper-parameters: the same losses, so the
    # contenders time the same work (flat mode included)
    for model in ("transformer", "cnn"):
        losses = [r["final_loss"] for r in quick_rows if r["model"] == model]
        assert losses == pytest.approx([losses[0]] * len(losses), rel=1e-4)


def test_thread_count_is_restored(quick_rows):
    before = torch.get_num_threads()
    bench_e2e.run(quick=True, threads=[1], models=["cnn"], steps=1)
    assert torch.get_num_threads() == before


def test_format_table_is_markdown_with_a_line_per_row(quick_rows):
    lines = bench_e2e.format_table(quick_rows).splitlines()
    assert lines[0].startswith("| model | threads | contender | iteration ms | ratio |")
    assert len(lines) == 2 + len(quick_rows)
    assert all(line.count("|") == lines[0].count("|") for line in lines)
    assert "| transformer (3.2M) | 1 | ours flat |" in "\n".join(lines)


def test_main_prints_and_saves_json(tmp_path, capsys):
    path = tmp_path / "e2e.json"
    code = cli_bench_e2e.main(
        ["--quick", "--threads", "1", "--models", "cnn", "--steps", "1", "--json", str(path)]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "| cnn (0.7M) | 1 | ours |" in out
    assert "| cnn | 1 | 47 |" in out  # flat mode's gradient cost, one line per model and threads
    saved = json.loads(path.read_text())
    assert [r["candidate"] for r in saved["rows"]] == CONTENDERS
    [cost] = saved["flat_gradient_cost"]
    assert cost["model"] == "cnn" and cost["zero_ms"] > 0 and cost["accumulate_ms"] > 0


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--threads", "0"], "--threads: must be an integer >= 1, got 0"),
        (["--models", "mlp"], "invalid choice: 'mlp'"),
        (["--json", "/proc/e2e.json"], "--json"),
    ],
)
def test_main_rejects_bad_arguments(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_bench_e2e.main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
