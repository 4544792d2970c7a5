"""``torchopt-edu benchmark``: the quick smoke run, its files, resuming, and usage errors."""

import json

import pytest

from torchopt_edu.cli import main as dispatch
from torchopt_edu.cli.benchmark import main

FAST = ["--quick", "--workloads", "diabetes", "sbm_gcn", "--no-progress"]


def _steps(path):
    trials = json.loads(path.read_text())["trials"]
    return {json.dumps(t["key"], sort_keys=True): (t["config"], t["steps"]) for t in trials}


def test_quick_run_writes_every_trial_a_table_and_the_profiles_then_resumes(tmp_path, capsys):
    out = tmp_path / "run"
    assert dispatch(["benchmark", *FAST, "--out", str(out), "--json", str(out / "s.json")]) == 0
    printed = capsys.readouterr().out
    # --quick: external adam, sgd x 2 trials; self-tuning prodigy; 1 study; 2 workloads.
    assert "10 trials planned, 0 already in" in printed and "ran 10 trials" in printed
    assert "| optimizer | diabetes (s) | sbm_gcn (s) | score | solved |" in printed
    assert "### self track" in printed and "| `prodigy` |" in printed
    assert (out / "profiles.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "results.md").read_text() in printed
    trials = json.loads((out / "trials.json").read_text())
    assert trials["seed"] == 0 and len(trials["trials"]) == 10
    summary = json.loads((out / "s.json").read_text())
    assert set(summary["external"]["steps"]["score"]) == {"adam", "sgd"}
    first = _steps(out / "trials.json")

    # A killed run: drop four records, rerun the same command, and only those four run again.
    trials["trials"] = trials["trials"][:6]
    (out / "trials.json").write_text(json.dumps(trials))
    assert main([*FAST, "--out", str(out), "--no-plot"]) == 0
    printed = capsys.readouterr().out
    assert "10 trials planned, 6 already in" in printed and "ran 4 trials" in printed
    assert _steps(out / "trials.json") == first


def test_records_of_other_runs_are_kept_and_another_seed_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["--workloads", "diabetes", "--track", "self", "--optimizers", "adam"]
    args += ["--self-optimizers", "adam", "--studies", "1", "--no-progress", "--no-plot"]
    assert main([*args, "--out", str(out)]) == 0
    assert main([*args, "--self-optimizers", "sgd", "--out", str(out)]) == 0
    assert len(json.loads((out / "trials.json").read_text())["trials"]) == 2
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main([*args, "--seed", "1", "--out", str(out)])
    assert exit_.value.code == 2
    assert "holds a run with --seed 0: pass --seed 0 to resume it" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--workloads", "mnist"], "argument --workloads: unknown workload 'mnist': choose from"),
        (["--optimizers", "adamx"], "argument --optimizers: unknown optimizer 'adamx'"),
        (["--self-optimizers", "torch.optim.LBFGS"], "needs a closure in step()"),
        (["--trials", "0"], "argument --trials: must be an integer >= 1, got 0"),
        (["--track", "tuned"], "argument --track: invalid choice: 'tuned'"),
    ],
)
def test_usage_errors_name_the_flag(args, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([*args, "--out", str(tmp_path)])
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "trials.json").exists()


def test_a_file_that_is_not_a_trials_file_is_refused(tmp_path, capsys):
    (tmp_path / "trials.json").write_text('{"seed": 0}')
    with pytest.raises(SystemExit):
        main([*FAST, "--out", str(tmp_path)])
    assert "trials.json is not a trials file of this benchmark" in capsys.readouterr().err


def test_workers_can_share_the_trials_in_a_database(tmp_path, capsys):
    storage = f"sqlite:///{tmp_path / 'benchmark.db'}"
    args = ["--workloads", "diabetes", "--track", "self", "--self-optimizers", "adam", "sgd"]
    args += ["--studies", "1", "--no-progress", "--no-plot", "--out", str(tmp_path / "out")]
    assert main([*args, "--storage", storage]) == 0
    printed = capsys.readouterr().out
    assert "2 trials planned, shared with the other workers of study " in printed
    assert "ran 2 trials" in printed and "| `adam` |" in printed
    assert not (tmp_path / "out" / "trials.json").exists()
    assert main([*args, "--storage", storage]) == 0  # a worker arriving late has nothing to do
    assert "ran 0 trials" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main([*args, "--storage", storage, "--seed", "3"])
    assert "holds a benchmark run with seed 0, not 3" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*args, "--storage", "nosuchdb://nowhere"])
    assert "argument --storage: cannot open 'nosuchdb://nowhere'" in capsys.readouterr().err
