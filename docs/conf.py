"""Sphinx configuration for the torchopt-edu documentation site.

Build it with ``sphinx-build -W --keep-going -b html docs docs/_build/html`` (warnings are errors,
as in CI: ``tests/test_docs.py`` runs the same build).

Sphinx rather than MkDocs because the docstrings are already reStructuredText: the update rules
are ``.. math::`` blocks and ``:math:`` roles, which autodoc + napoleon render through MathJax
as they stand. Pages are Markdown (MyST); the notebooks are rendered by MyST-NB from their stored
outputs, never executed (``docs/notebooks`` is a link to ``../notebooks``).
"""

import inspect
import json
import os
import sys
from pathlib import Path

from sphinx.application import Sphinx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # document the working tree, installed or not
os.environ.setdefault("MPLBACKEND", "Agg")

project = "torchopt-edu"
author = "torchopt-edu contributors"
copyright = "torchopt-edu contributors"

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "myst_nb",  # Markdown pages (it loads myst_parser) and .ipynb notebooks
]

exclude_patterns = ["_build", "**.ipynb_checkpoints"]
html_theme = "furo"
html_title = "torchopt-edu"

# Autodoc: every page lists the public API (``__all__``) of the module it names.
autodoc_default_options = {"members": True, "member-order": "bysource"}
autodoc_typehints = "description"  # hints under Parameters, not in one long signature line
autodoc_preserve_defaults = True  # show `lr=1e-3`, not the float's repr
napoleon_google_docstring = True
napoleon_numpy_docstring = True
napoleon_use_rtype = False

# MyST: $...$ and $$...$$ math in Markdown pages and notebooks, like Jupyter shows it.
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "substitution"]
myst_heading_anchors = 3
nb_execution_mode = "off"  # notebooks are rendered with the outputs stored in them
nb_render_markdown_format = "gfm"  # Markdown tables printed by notebooks render as tables


def bench_table(path: Path) -> str:
    """The full step-time table of a ``python -m torchopt_edu.bench --json`` run, as Markdown."""
    run = json.loads(path.read_text(encoding="utf-8"))
    lines = [
        f"{run['device']}, torch {run['torch']}, median of {run['steps']} steps; in-place update "
        f"bandwidth (the memory ceiling): {run['update_gb_per_s']:.1f} GB/s.",
        "",
        "| algorithm | shape | implementation | ms per step | ratio to fastest baseline "
        "| ratio to fused Adam | GB/s | state bytes per parameter |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]

    def ratio(value: float | None) -> str:  # JSON writes NaN (no baseline) as null
        return "-" if value is None or value != value else f"{value:.2f}"

    for row in run["rows"]:
        lines.append(
            f"| {row['algorithm']} | {row['shape']} | {row['candidate']} "
            f"| {row['ms_per_step']:.2f} | {ratio(row['ratio_to_baseline'])} "
            f"| {ratio(row['ratio_to_fused_adam'])} "
            f"| {row['gb_per_s']:.1f} | {row['state_bytes_per_param']:g} |"
        )
    return "\n".join(lines)


myst_substitutions = {"bench_cpu_table": bench_table(ROOT / "docs" / "bench_cpu.json")}


def skip_function_valued_field(
    app: Sphinx, what: str, name: str, obj: object, skip: bool, options: object
) -> bool | None:
    """Leave out class attributes whose value is a module-level function.

    A dataclass field defaulting to a function (``loss_fn = F.cross_entropy``) looks to autodoc
    like a method, documented with the function's own docstring and clashing with the field's
    entry under "Attributes". Methods defined in a class have a dotted ``__qualname__``.
    """
    if what == "class" and inspect.isroutine(obj) and "." not in getattr(obj, "__qualname__", "."):
        return True
    return None


def setup(app: Sphinx) -> None:
    """Connect the hooks above."""
    app.connect("autodoc-skip-member", skip_function_valued_field)
