"""What every command shares: dispatch, --version, one optimizer spelling, up-front checks."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import torchopt_edu
from torchopt_edu import cli
from torchopt_edu.cli import _common
from torchopt_edu.optim import OPTIMIZERS, resolve_optimizer

PACKAGE = Path(torchopt_edu.__file__).parent


def test_lists_commands_and_rejects_unknown(capsys):
    assert cli.main([]) == 2
    assert "demo" in capsys.readouterr().out
    assert cli.main(["frobnicate"]) == 2
    err = capsys.readouterr().err
    assert "unknown command 'frobnicate'" in err and err.count("\n") == 1


def test_version(capsys):
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out == f"torchopt-edu {torchopt_edu.__version__}\n"
    completed = subprocess.run(
        [sys.executable, "-m", "torchopt_edu", "--version"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0 and completed.stdout.startswith("torchopt-edu 0.")


@pytest.mark.parametrize(
    "name, expected",
    [
        ("adam", OPTIMIZERS["adam"]),
        ("AdamW", OPTIMIZERS["adamw"]),
        (" YOGI ", OPTIMIZERS["yogi"]),
        ("torch.optim.Adam", torch.optim.Adam),
        ("torch.optim.adamw", torch.optim.AdamW),
        ("TORCH.OPTIM.NADAM", torch.optim.NAdam),
        ("torch.sgd", torch.optim.SGD),
    ],
)
def test_resolver_is_case_insensitive(name, expected):
    assert resolve_optimizer(name) is expected


@pytest.mark.parametrize("name", ["adamm", "torch.optim.Optimizer", "torch.optim.nope", "Adam2"])
def test_resolver_lists_the_valid_names(name):
    with pytest.raises(ValueError, match=re.escape(f"unknown optimizer {name!r}")) as error:
        resolve_optimizer(name)
    for valid in [*OPTIMIZERS, "torch.optim.<Name>", "NAdam", "RAdam"]:
        assert valid in str(error.value)


def test_new_optimizers_are_resolved_without_a_change(monkeypatch):
    class Shiny(torch.optim.SGD):
        pass

    monkeypatch.setitem(OPTIMIZERS, "shiny", Shiny)
    assert resolve_optimizer("SHINY") is Shiny


# the option that takes optimizer names, and the other arguments that make each command valid
COMMANDS = {
    "demo": ["--optimizers"],
    "gnn": ["--optimizers"],
    "tune": ["--optimizers"],
    "federated": ["--optimizer"],
    "federated-server": ["--strategy", "fedopt", "--server-lr", "1", "--server-optimizer"],
    "bench": ["--optimizers"],
}
SPELLINGS = ["adam", "Adam", "ADAM", "torch.optim.Adam", "torch.optim.adam"]


def _parse(command: str, argv: list[str]):
    module = {"federated-server": "federated"}.get(command, command)
    parser = __import__(f"torchopt_edu.cli.{module}", fromlist=["build_parser"]).build_parser()
    return parser.parse_args(argv)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_accepts_the_same_spellings(command):
    seen = set()
    for spelling in SPELLINGS:
        args = _parse(command, [*COMMANDS[command], spelling])
        value = (
            args.server_optimizer
            if command == "federated-server"
            else (args.optimizer if command == "federated" else args.optimizers)
        )
        seen.add(str(value))
    # ours spelled any way is one optimizer, torch's twin another (bench: the same algorithm)
    assert len(seen) == (1 if command == "bench" else 2)


@pytest.mark.parametrize("command", ["demo", "gnn", "tune", "bench"])
def test_lists_take_spaces_and_commas(command):
    args = _parse(command, ["--optimizers", "adam,sgd", "AdamW", "adam"])
    assert args.optimizers == ["adam", "sgd", "adamw"]


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    captured = capsys.readouterr()
    return exit_.value.code, captured.out, captured.err


@pytest.mark.parametrize("command", ["demo", "gnn", "tune", "federated", "bench"])
def test_usage_errors_are_one_line_before_any_work(command, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    for argv in (
        ["--out", str(blocker)],
        ["--json", str(blocker / "x.json")],
        ["--seed", str(2**64)],
        ["--out", "/proc/torchopt-edu/x"],
    ):
        code, out, err = _run([command, *argv], capsys)
        assert code == 2 and out == ""
        assert err.startswith(f"torchopt-edu {command}: error: argument ") and err.count("\n") == 1
    assert sorted(path.name for path in tmp_path.iterdir()) == ["file"]


def test_missing_folders_are_created_up_front(tmp_path):
    folder = tmp_path / "a" / "b"
    assert _common.output_file_problem(folder / "r.json") is None
    assert folder.is_dir() and list(folder.iterdir()) == []  # the probe file is gone


@pytest.mark.parametrize(
    "argv, package, hint",
    [
        (["demo"], "sklearn", "pip install 'torchopt-edu[data]', or pass --dataset synthetic"),
        (
            ["demo", "--dataset", "synthetic"],
            "matplotlib",
            "pip install 'torchopt-edu[viz]', or pass --no-plot",
        ),
        (["gnn"], "matplotlib", "pip install 'torchopt-edu[viz]', or pass --no-plot"),
        (["bench"], "matplotlib", "pip install 'torchopt-edu[viz]', or pass --no-plot"),
        (["federated"], "sklearn", "pip install 'torchopt-edu[data]'"),
        (["tune"], "optuna", "pip install 'torchopt-edu[tune]'"),
        (
            ["tune", "--no-plot"],
            "sklearn",
            "pip install 'torchopt-edu[data]', or pass --task quadratic",
        ),
    ],
)
def test_missing_optional_packages_are_named_before_any_work(
    argv, package, hint, tmp_path, capsys, monkeypatch
):
    monkeypatch.setitem(sys.modules, package, None)  # as if it were not installed
    code, out, err = _run([*argv, "--out", str(tmp_path / "out")], capsys)
    assert code == 2 and out == "" and err.count("\n") == 1
    assert f"needs {package}, which is not installed: {hint}" in err
    assert not (tmp_path / "out").exists()


def _library_modules() -> list[str]:
    return sorted(
        ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        for path in PACKAGE.rglob("*.py")
        if "cli" not in path.relative_to(PACKAGE).parts[:1] and path.name != "__main__.py"
    )


def test_no_module_outside_cli_imports_argparse():
    offenders = [
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if path.relative_to(PACKAGE).parts[0] != "cli"
        and re.search(r"^\s*(import argparse|from argparse import)", path.read_text(), re.M)
    ]
    assert offenders == []


def test_library_modules_do_not_import_the_command_line():
    script = (
        "import importlib, sys\n"
        f"for name in {_library_modules()!r}:\n"
        "    importlib.import_module(name)\n"
        "print(sorted(m for m in sys.modules if m.startswith('torchopt_edu.cli')))\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=False
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("command", "own_file", "what"),
    [
        ("tune", "study.db", "the study's database"),
        ("tune", "history.png", "the plot history.png"),
        ("federated", "checkpoint.pt", "the checkpoint"),
        ("federated", "history.csv", "the output history.csv"),
        ("demo", "loss_curves.png", "the plot"),
        ("pbt", "population.pt", "the population checkpoint"),
        ("learn-optimizer", "weights.pt", "the output weights.pt"),
    ],
)
def test_json_onto_one_of_the_commands_own_files_is_refused(
    command, own_file, what, tmp_path, capsys
):
    """--json out/study.db turned a study into JSON; --json out/checkpoint.pt broke --resume."""
    out = tmp_path / "run"
    out.mkdir()
    kept = out / own_file
    kept.write_bytes(b"precious")
    code, stdout, err = _run([command, "--out", str(out), "--json", str(kept)], capsys)
    assert code == 2 and stdout == ""
    assert f"argument --json: {kept} is {what}; write the JSON elsewhere" in err
    assert kept.read_bytes() == b"precious"


def test_tune_json_onto_an_explicit_sqlite_storage_is_refused(tmp_path, capsys):
    study = tmp_path / "shared.db"
    for storage in (str(study), f"sqlite:///{study}"):
        code, _, err = _run(["tune", "--storage", storage, "--json", str(study)], capsys)
        assert code == 2 and "is the study's database" in err


@pytest.mark.parametrize(
    "argv",
    [
        ["tune", "--compare-samplers", "tpe", "--seeds", "2", "--seed", str(2**32 - 1)],
        ["pbt", "--compare-seeds", "2", "--seed", str(2**32 - 1)],
        ["learn-optimizer", "--evaluate", "--seeds", "2", "--seed", str(2**32 - 1)],
        ["lr-robustness", "--seeds", "2", "--seed", str(2**32 - 1)],
    ],
)
def test_seeds_past_the_largest_seed_are_a_usage_error(argv, tmp_path, capsys):
    code, out, err = _run(
        [*argv, "--out", str(tmp_path)] if argv[0] != "lr-robustness" else argv, capsys
    )
    assert code == 2 and out == ""
    assert "seeds passes 2**32-1" in err and err.count("\n") == 1


def test_an_unknown_sampler_to_compare_is_a_usage_error(tmp_path, capsys):
    code, out, err = _run(
        ["tune", "--compare-samplers", "tpe", "foo", "--out", str(tmp_path)], capsys
    )
    assert code == 2 and out == ""
    assert "argument --compare-samplers: unknown ['foo']" in err and err.count("\n") == 1


@pytest.mark.parametrize(
    ("command", "listed", "left_out"),
    [
        ("tune", [], ["LBFGS", "SparseAdam", ", Muon"]),
        ("demo", [], ["LBFGS", "SparseAdam", ", Muon"]),
        ("gnn", ["LBFGS"], ["SparseAdam", ", Muon"]),
    ],
)
def test_help_lists_only_the_optimizers_the_command_can_train_with(
    command, listed, left_out, capsys
):
    """--help listed LBFGS, Muon and SparseAdam, which the command then refused."""
    code, out, _ = _run([command, "--help"], capsys)
    text = " ".join(out.split())
    torch_names = text[text.index("torch.optim.<Name> with <Name> one of") :]
    assert code == 0
    assert all(name in torch_names for name in listed)
    assert not any(name in torch_names.split(")")[0] for name in left_out)
