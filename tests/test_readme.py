"""The README's promises: the drop-in example runs as pasted, the CI command is the README's."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def _block(marker: str) -> str:
    text = README.read_text(encoding="utf-8")
    match = re.search(rf"<!-- {marker} -->\s*```\w*\n(.*?)```\s*<!-- /{marker} -->", text, re.S)
    assert match, f"README.md has no block marked {marker}"
    return match.group(1)


def test_drop_in_example_runs_in_a_fresh_interpreter():
    completed = subprocess.run(
        [sys.executable, "-c", _block("drop-in-example")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    loss = float(re.search(r"loss after 100 steps: ([0-9.]+)", completed.stdout).group(1))
    assert loss < 0.9  # it trained: the targets are unit-variance noise fit by 16 hidden units


def test_ci_runs_the_readme_test_command():
    command = _block("test-command").strip()
    assert "python3 -m venv --clear .venv" in command  # a fresh environment every run
    assert "pip install torch==2.13.0" in command.split("pip install -e")[0]
    ci = (README.parent / ".ci" / "run").read_text(encoding="utf-8")
    assert "<!-- test-command -->" in ci
