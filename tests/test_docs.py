"""The documentation site builds with warnings as errors and shows what it promises.

One build (``sphinx-build -W --keep-going -b html docs <tmp>``, the README's command), then the
checks on its HTML: the equations reach MathJax, every optimizer has a page, the application
packages are documented, the notebooks are shown with their stored outputs, and the benchmark
table is rendered from ``docs/bench_cpu.json``. One test, not one per check: under
``pytest -n 2`` separate tests could land on both workers and build the site twice.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("sphinx", reason="building the docs needs the [docs] extra (Sphinx)")
pytest.importorskip("myst_nb", reason="building the docs needs the [docs] extra (MyST-NB)")
pytest.importorskip("furo", reason="building the docs needs the [docs] extra (furo)")

from sphinx.util.inventory import InventoryFile  # noqa: E402

from torchopt_edu.optim import OPTIMIZERS  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def build(tmp_path: Path) -> Path:
    """Build the site from scratch (no cache) and return its HTML folder."""
    out = tmp_path / "html"
    doctrees = out.parent / "doctrees"
    command = [
        sys.executable,
        "-m",
        "sphinx",
        "-W",
        "--keep-going",
        "-q",
        "-b",
        "html",
        "-d",
        str(doctrees),
        str(DOCS),
        str(out),
    ]
    built = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False
    )
    assert built.returncode == 0, f"sphinx-build failed:\n{built.stdout}\n{built.stderr}"
    return out


def _documented_objects(site: Path) -> set[str]:
    with (site / "objects.inv").open("rb") as stream:
        inventory = InventoryFile.load(stream, "", lambda base, uri: uri)
    return {name for entries in inventory.values() for name in entries}


def test_docs_build_without_warnings_and_show_what_they_promise(tmp_path: Path) -> None:
    site = build(tmp_path)
    check_adam_equations_reach_mathjax(site)
    check_every_optimizer_has_a_documented_page(site)
    check_application_packages_are_documented(site)
    check_notebooks_are_rendered_with_their_outputs(site)
    check_benchmark_table_comes_from_the_stored_run(site)


def check_adam_equations_reach_mathjax(site: Path) -> None:
    html = (site / "algorithms" / "adam.html").read_text(encoding="utf-8")
    assert re.search(r'<script[^>]+src="[^"]*mathjax[^"]*"', html), "no MathJax script"
    blocks = re.findall(r'<div class="math notranslate nohighlight">(.*?)</div>', html, re.S)
    # The docstring's update rule, as TeX for MathJax to typeset (not mangled into text).
    assert any(r"m_t &amp;= \beta_1 m_{t-1} + (1-\beta_1)\, g_t" in block for block in blocks)
    assert r"\(\theta\)" in html  # an inline :math: role


def check_every_optimizer_has_a_documented_page(site: Path) -> None:
    documented = _documented_objects(site)
    missing = [
        f"{cls.__module__}.{cls.__qualname__}"
        for cls in OPTIMIZERS.values()
        if f"{cls.__module__}.{cls.__qualname__}" not in documented
    ]
    assert not missing, f"add a page under docs/algorithms/ (copy adam.md) for: {missing}"


def check_application_packages_are_documented(site: Path) -> None:
    documented = _documented_objects(site)
    for name in (
        "torchopt_edu.lr_scheduler.OneCycleLR",
        "torchopt_edu.multitask.pcgrad",
        "torchopt_edu.tuning.SearchSpace",
        "torchopt_edu.gnn.GCN",
        "torchopt_edu.federated.FedAdam",
    ):
        module, _, attribute = name.rpartition(".")
        # Documented under the name of the package it is imported from, or where it is defined.
        defined_in = getattr(__import__(module, fromlist=[attribute]), attribute).__module__
        assert {name, f"{defined_in}.{attribute}"} & documented, name


def check_notebooks_are_rendered_with_their_outputs(site: Path) -> None:
    notebooks = sorted((ROOT / "notebooks").glob("*.ipynb"))
    assert notebooks
    for notebook in notebooks:
        html = (site / "notebooks" / f"{notebook.stem}.html").read_text(encoding="utf-8")
        stored = json.loads(notebook.read_text(encoding="utf-8"))
        images = sum(
            "image/png" in output.get("data", {})
            for cell in stored["cells"]
            for output in cell.get("outputs", [])
        )
        assert html.count("<img") >= images, f"{notebook.name}: stored plots missing"
        assert "cell_output" in html, f"{notebook.name}: no outputs shown"


def check_benchmark_table_comes_from_the_stored_run(site: Path) -> None:
    html = (site / "benchmarks.html").read_text(encoding="utf-8")
    run = json.loads((DOCS / "bench_cpu.json").read_text(encoding="utf-8"))
    first = run["rows"][0]
    row = re.search(
        rf"<td[^>]*><p>{first['candidate']}</p></td>\s*"
        rf"<td[^>]*><p>{first['ms_per_step']:.2f}</p></td>",
        html,
    )
    assert row, "the first row of docs/bench_cpu.json is not in the rendered table"
    assert "bench_cpu.png" in html
