"""``torchopt-edu tune``: runs, resumes, saves plots, retrains the best digits configuration."""

import re

import optuna
import pytest
import torch

from torchopt_edu.tuning.cli import main


@pytest.fixture
def one_thread():
    """Train the tiny MLP on one thread (faster than two for it), then restore the setting."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_quadratic_run_prints_the_best_trial_saves_plots_and_resumes(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["--task", "quadratic", "--optimizers", "sgd,torch.optim.SGD", "--out", str(out)]
    assert main([*args, "--n-trials", "6", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert f"study 'quadratic' in {out / 'study.db'}: 6 trials" in printed
    best = re.search(r"best trial #(\d+): (\S+)", printed)
    study = optuna.load_study(study_name="quadratic", storage=f"sqlite:///{out / 'study.db'}")
    assert int(best.group(1)) == study.best_trial.number
    assert float(best.group(2)) == pytest.approx(study.best_value, rel=1e-5)
    assert re.search(r"optimizer: (sgd|torch\.optim\.SGD)  lr=\S+ momentum=\S+", printed)
    for name in ("history.png", "importance.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

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
        (["--optimizers", "adam,adamm"], r"unknown optimizer 'adamm'"),
        (["--schedules", "cosinus"], r"unknown schedule 'cosinus'"),
        (["--pruner", "medain"], r"argument --pruner: invalid choice: 'medain'"),
    ],
)
def test_bad_arguments_exit_2_naming_the_argument(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as exit_:
        main([*args, "--out", str(tmp_path)])
    assert exit_.value.code == 2
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "study.db").exists()
