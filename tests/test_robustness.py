"""The learning-rate robustness study: who recovers from a bad initial step size (one seed)."""

import json

import pytest

from torchopt_edu import cli
from torchopt_edu.robustness import FROM_INITIAL_STEP, final_step, lr_robustness

pytest.importorskip("sklearn", reason="the study trains on scikit-learn's digits")

#: The claim of the README's table, asserted on seed 0: test accuracy from each start.
RECOVERS = 0.9
STUCK = 0.3


@pytest.fixture(scope="module")
def results():
    return {(r.optimizer, r.initial_step): r for r in lr_robustness(seeds=(0,), epochs=10)}


@pytest.mark.parametrize("name", ["prodigy", "sgdhd", "adamhd"])
def test_self_tuning_optimizers_recover_from_a_tiny_initial_step(results, name):
    result = results[name, 1e-5]
    assert result.test_accuracy >= RECOVERS
    assert result.final_step > 100 * 1e-5  # they grew their step size to get there


@pytest.mark.parametrize("name", ["sgd", "adam", "sgdschedulefree", "adamwschedulefree"])
def test_fixed_step_optimizers_stay_stuck_at_a_tiny_step(results, name):
    result = results[name, 1e-5]
    assert result.test_accuracy < STUCK
    assert result.final_step == 1e-5  # Schedule-Free removes the schedule, not the step size


@pytest.mark.parametrize("name", list(FROM_INITIAL_STEP))
def test_no_optimizer_recovers_from_a_step_of_ten(results, name):
    assert results[name, 10.0].test_accuracy < STUCK


def test_final_step_reads_prodigy_d_and_the_learned_rate():
    import torch

    from torchopt_edu.optim import SGD, Prodigy

    p = torch.nn.Parameter(torch.ones(3))
    prodigy = Prodigy([p], lr=0.5, d0=1e-3)
    assert final_step(prodigy) == pytest.approx(0.5 * 1e-3)
    assert final_step(SGD([p], lr=0.1)) == pytest.approx(0.1)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"optimizers": ["adam", "nadam"]}, "unknown optimizers ['nadam']"),
        ({"initial_steps": [0.0]}, "initial step size"),
        ({"epochs": 0}, "epochs must be >= 1"),
        ({"seeds": [-1]}, "seed must be an integer"),
    ],
)
def test_bad_arguments_are_refused_before_training(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        lr_robustness(**kwargs)


def test_cli_prints_the_table_and_writes_json(tmp_path, capsys):
    out = tmp_path / "r.json"
    argv = ["lr-robustness", "--optimizers", "sgdhd", "--initial-steps", "1e-5", "--seeds", "1"]
    assert cli.main([*argv, "--epochs", "1", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| sgdhd | " in printed and "from 1e-05" in printed
    rows = json.loads(out.read_text())
    assert [(r["optimizer"], r["initial_step"], r["seed"]) for r in rows] == [("sgdhd", 1e-5, 0)]


def test_cli_refuses_an_unknown_optimizer(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["lr-robustness", "--optimizers", "lbfgs"])
    assert exit_info.value.code == 2
    assert "'lbfgs' is not in the robustness study" in capsys.readouterr().err
