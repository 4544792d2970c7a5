"""``torchopt-edu tune``: runs, resumes, saves plots, retrains the best digits configuration."""

import json
import re

import optuna
import pytest
import torch

from torchopt_edu.cli.tune import main
from torchopt_edu.tuning import plot_history, plot_importance


@pytest.fixture
def one_thread():
    """Train the tiny MLP on one thread (faster than two for it), then restore the setting."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_quadratic_run_prints_the_best_trial_saves_plots_and_resumes(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["--task", "quadratic", "--optimizers", "sgd", "torch.optim.sgd", "--out", str(out)]
    assert main([*args, "--n-trials", "6", "--no-progress", "--json", str(out / "best.json")]) == 0
    printed = capsys.readouterr().out
    assert f"study 'quadratic' in {out / 'study.db'}: 6 trials" in printed
    best = re.search(r"best trial #(\d+): (\S+)", printed)
    study = optuna.load_study(study_name="quadratic", storage=f"sqlite:///{out / 'study.db'}")
    assert int(best.group(1)) == study.best_trial.number
    assert float(best.group(2)) == pytest.approx(study.best_value, rel=1e-5)
    assert re.search(r"optimizer: (sgd|torch\.optim\.SGD)  lr=\S+ momentum=\S+", printed)
    for name in ("history.png", "importance.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((out / "best.json").read_text())
    assert saved["best_trial"] == study.best_trial.number and saved["trials"] == 6
    assert saved["objective"] == "loss after 5 steps"

    assert main([*args, "--n-trials", "9", "--no-plots"]) == 0  # same study, larger budget
    assert "9 trials" in capsys.readouterr().out
    assert len(study.trials) == 9


def test_digits_run_retrains_the_best_configuration(tmp_path, capsys, one_thread):
    args = ["--task", "digits", "--optimizers", "adam", "--schedules", "constant,cosine"]
    args += ["--n-trials", "3", "--epochs", "2", "--out", str(tmp_path), "--no-plots"]
    assert main([*args, "--no-progress", "--pruner", "none"]) == 0
    printed = capsys.readouterr().out
    assert "3 trials (3 complete)" in printed
    best_value = float(re.search(r"best trial #\d+: (\S+)", printed)[1])
    retrained = re.search(r"retrained: validation loss (\S+), test accuracy (\S+)", printed)
    assert float(retrained[1]) == pytest.approx(best_value, rel=1e-5)  # training is reproducible
    assert 0.0 < float(retrained[2]) <= 1.0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--n-trials", "0"], r"argument --n-trials: must be an integer >= 1, got 0"),
        (["--epochs", "x"], r"argument --epochs: expected an integer, got 'x'"),
        (["--optimizers", "adam,adamm"], r"argument --optimizers: unknown optimizer 'adamm'"),
        (["--optimizers", "torch.optim.LBFGS"], r"torch.optim.LBFGS needs a closure"),
        (["--schedules", "cosinus"], r"unknown schedule 'cosinus'"),
        (["--pruner", "medain"], r"argument --pruner: invalid choice: 'medain'"),
        (["--seed", "-1"], r"argument --seed: must be an integer in \[0, 4294967295\], got -1"),
        (
            ["--storage", "nosuchdb://host/db"],
            r"argument --storage: study database nosuchdb://host/db: Can't load plugin",
        ),
        (["--sampler", "bayes"], r"argument --sampler: invalid choice: 'bayes'"),
        (["--compare-samplers", "tpe", "--seeds", "0"], r"argument --seeds: must be an integer"),
    ],
)
def test_bad_arguments_exit_2_naming_the_argument(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as exit_:
        main([*args, "--out", str(tmp_path)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert re.search(message, err) and err.count("\n") == 1
    assert not (tmp_path / "study.db").exists()


def test_out_under_a_file_exits_2_naming_out(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    with pytest.raises(SystemExit) as exit_:
        main(["--task", "quadratic", "--out", str(tmp_path / "file" / "run")])
    assert exit_.value.code == 2
    assert "argument --out: cannot write into" in capsys.readouterr().err


def test_another_search_space_in_the_same_study_exits_2_before_any_trial(tmp_path, capsys):
    args = ["--task", "quadratic", "--out", str(tmp_path), "--no-plots", "--no-progress"]
    assert main([*args, "--optimizers", "sgd", "--n-trials", "2"]) == 0
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main([*args, "--optimizers", "adam", "--n-trials", "4"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    # --study-name was not passed: the message does not blame it, it says how to use it
    assert err.startswith("torchopt-edu tune: error: study 'quadratic' in storage")
    assert "another search space; start a new study with --study-name NAME (the default " in err
    assert "argument --study-name" not in err and err.count("\n") == 1
    study = optuna.load_study(study_name="quadratic", storage=f"sqlite:///{tmp_path / 'study.db'}")
    assert len(study.trials) == 2


def test_no_completed_trial_exits_1_with_a_one_line_error(tmp_path, capsys, monkeypatch):
    def failing_task(steps):
        def train(config, report):
            raise RuntimeError("diverged")

        return train

    monkeypatch.setattr("torchopt_edu.tuning.tasks.quadratic_task", failing_task)
    args = ["--task", "quadratic", "--optimizers", "sgd", "--n-trials", "2"]
    assert main([*args, "--out", str(tmp_path), "--no-progress"]) == 1
    captured = capsys.readouterr()
    assert captured.err.startswith("error: study 'quadratic' has no completed trial (2 trials;")
    assert captured.err.count("error: study") == 1 and "Traceback" not in captured.err
    assert not (tmp_path / "history.png").exists()


def test_plots_name_the_objective(tmp_path):
    study = optuna.create_study()
    for value in (3.0, 1.0, 2.0):
        study.add_trial(
            optuna.trial.create_trial(
                params={"lr": value},
                distributions={"lr": optuna.distributions.FloatDistribution(0.5, 4.0)},
                value=value,
            )
        )
    import matplotlib.pyplot as plt

    history = plot_history(study, "validation cross-entropy")
    assert history.get_ylabel() == "validation cross-entropy"
    importance = plot_importance(study, "validation cross-entropy")
    assert importance.get_title(loc="left").endswith("for the validation cross-entropy")
    plt.close("all")


def test_a_damaged_study_file_exits_2_naming_it_and_stays_as_it_was(tmp_path, capsys):
    damaged = b"not a database, a text file saved over it\n" * 100
    (tmp_path / "study.db").write_bytes(damaged)
    with pytest.raises(SystemExit) as exit_:
        main(["--task", "quadratic", "--out", str(tmp_path), "--no-plots", "--no-progress"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(
        f"torchopt-edu tune: error: argument --storage: study database {tmp_path / 'study.db'}: "
        "file is not a database; if the file is damaged, move"
    )
    assert err.count("\n") == 1
    assert (tmp_path / "study.db").read_bytes() == damaged


def test_sampler_flag_and_sampler_comparison_on_a_benchmark_workload(tmp_path, capsys):
    args = ["--task", "quadratic", "--optimizers", "sgd", "--out", str(tmp_path), "--no-plots"]
    assert main([*args, "--sampler", "cmaes", "--n-trials", "3", "--no-progress"]) == 0
    study = optuna.load_study(study_name="quadratic", storage=f"sqlite:///{tmp_path / 'study.db'}")
    assert len(study.trials) == 3
    assert all("cma:generation" in t.system_attrs for t in study.trials[1:])  # CMA-ES drew them

    compare = ["--task", "diabetes", "--optimizers", "adam", "--out", str(tmp_path)]
    compare += ["--compare-samplers", "random,tpe", "--seeds", "2", "--n-trials", "6"]
    assert main([*compare, "--json", str(tmp_path / "samplers.json")]) == 0
    printed = capsys.readouterr().out
    assert (
        "best steps to validation R^2 >= 0.58 after k trials (mean ± std over 2 seeds)" in printed
    )
    assert "| sampler | after 5 | after 6 | s/study |" in printed
    saved = json.loads((tmp_path / "samplers.json").read_text())
    assert saved["samplers"] == ["random", "tpe"] and saved["seeds"] == [0, 1]
    for sampler in ("random", "tpe"):
        for curve in saved["best_so_far"][sampler]:
            assert len(curve) == 6 and curve == sorted(curve, reverse=True)  # best so far
        mean = sum(curve[4] for curve in saved["best_so_far"][sampler]) / 2
        assert re.search(rf"\| {sampler} \| {mean:.4g} ± ", printed)
    assert (tmp_path / "samplers.png").read_bytes()[:4] == b"\x89PNG"


def test_a_study_resumed_with_other_objective_settings_exits_2_naming_them(tmp_path, capsys):
    args = ["--optimizers", "sgd", "--out", str(tmp_path), "--no-plots", "--no-progress"]
    assert main([*args, "--task", "quadratic", "--epochs", "3", "--n-trials", "2"]) == 0
    assert main([*args, "--task", "digits", "--epochs", "1", "--n-trials", "1"]) == 0
    capsys.readouterr()
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    for rerun, differ in [
        (["--task", "quadratic", "--epochs", "1"], "epochs=3, not epochs=1"),
        (["--task", "digits", "--epochs", "1", "--seed", "1"], "seed=0, not seed=1"),
        (["--task", "quadratic", "--study-name", "digits"], "task='digits', epochs=1, seed=0, not"),
    ]:
        with pytest.raises(SystemExit) as exit_:
            main([*args, *rerun, "--n-trials", "4"])
        assert exit_.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith("torchopt-edu tune: error: study '") and err.count("\n") == 1
        assert f"was made with {differ}" in err
        assert "or resume it with its own --task, --epochs and --seed" in err
    for name, trials in (("quadratic", 2), ("digits", 1)):  # nothing was added
        assert len(optuna.load_study(study_name=name, storage=storage).trials) == trials
    assert main([*args, "--task", "quadratic", "--epochs", "3", "--n-trials", "3"]) == 0


def test_a_study_that_predates_the_objective_record_is_refused_unless_resumed_unchecked(
    tmp_path, capsys
):
    from torchopt_edu.tuning import ObjectiveMismatchError, SearchSpace, quadratic_task, tune

    storage, space = str(tmp_path / "study.db"), SearchSpace(["sgd"])
    tune(quadratic_task(steps=5), space, n_trials=2, storage=storage, study_name="quadratic")
    args = ["--task", "quadratic", "--optimizers", "sgd", "--out", str(tmp_path), "--no-plots"]
    with pytest.raises(SystemExit) as exit_:
        main([*args, "--n-trials", "3", "--no-progress"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "records no objective settings (it predates that check)" in err
    assert err.count("\n") == 1
    with pytest.raises(ObjectiveMismatchError, match=r"its 2 trials used task='quadratic'"):
        tune(
            quadratic_task(steps=5),
            space,
            n_trials=3,
            storage=storage,
            study_name="quadratic",
            objective={"task": "quadratic", "epochs": 5},
        )
    result = tune(
        quadratic_task(steps=5), space, n_trials=3, storage=storage, study_name="quadratic"
    )  # objective=None: resumed unchecked
    assert len(result.study.trials) == 3


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--epochs", "3"], r"argument --epochs: --task diabetes is a workload, trained until its"),
        (["--pruner", "median"], r"argument --pruner: --task diabetes is a workload, whose trials"),
    ],
)
def test_epochs_or_a_pruner_for_a_workload_task_exits_2(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as exit_:
        main(["--task", "diabetes", *args, "--n-trials", "1", "--no-plots", "--out", str(tmp_path)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert re.search(message, err) and err.count("\n") == 1
    assert not (tmp_path / "study.db").exists()
