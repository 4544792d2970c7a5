"""What every command shares: the parser, the common flags, output and dependency checks.

Every command checks its arguments, its output locations and its optional dependencies
before any work, and a usage error ends the run with exit status 2 and one line on stderr:
``torchopt-edu COMMAND: error: <what is wrong>``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from torchopt_edu.cli import _argtypes

VIZ_HINT = "pip install 'torchopt-edu[viz]'"


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line: ``PROG: error: MESSAGE`` (exit 2)."""

    def error(self, message: str) -> NoReturn:
        """Print ``message`` on one line (with a pointer to ``--help``) and exit with 2."""
        one_line = " ".join(message.split())
        self.exit(2, f"{self.prog}: error: {one_line} (see {self.prog} --help)\n")


class NameList(argparse.Action):
    """``--optimizers adam sgd`` and ``--optimizers adam,sgd``: one flat list, duplicates dropped.

    ``convert`` (a ``type=``-style function) checks and spells each name; its
    ``ArgumentTypeError`` becomes a usage error naming the flag.
    """

    def __init__(self, *args: Any, convert: Callable[[str], str] = str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.convert = convert

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        """Split every word on commas, convert each name, store the list."""
        try:
            flat = [self.convert(name) for word in values for name in _argtypes.names(word)]
        except argparse.ArgumentTypeError as error:
            raise argparse.ArgumentError(self, str(error)) from None
        setattr(namespace, self.dest, list(dict.fromkeys(flat)))


def add_common(
    parser: argparse.ArgumentParser,
    *,
    out: str | None = None,
    seed: bool = True,
    device: str | None = "cpu",
    progress: bool = True,
    plot: bool = True,
) -> None:
    """Add the flags every command spells the same way (those that apply to it).

    ``--out DIR`` (default ``out``; omitted when ``None``), ``--seed N``, ``--device D``
    (default ``device``; omitted when ``None``), ``--no-progress``, ``--no-plot`` and
    ``--json PATH`` (always: write the results as JSON to PATH).
    """
    if out is not None:
        parser.add_argument(
            "--out",
            type=Path,
            default=Path(out),
            metavar="DIR",
            help=f"folder for the output files (default {out})",
        )
    if seed:
        parser.add_argument(
            "--seed", type=_argtypes.seed, default=0, help="random seed, 0 to 2**32-1 (default 0)"
        )
    if device is not None:
        parser.add_argument(
            "--device",
            type=_argtypes.device,
            default=device,
            help=f"auto (CUDA if available), cpu, cuda or cuda:N (default {device})",
        )
    if progress:
        parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    if plot:
        parser.add_argument("--no-plot", action="store_true", help="do not draw or save plots")
    parser.add_argument(
        "--json",
        type=Path,
        default=None,
        metavar="PATH",
        help="also write the results as JSON to PATH",
    )


def add_optimizers(
    parser: argparse.ArgumentParser,
    *aliases: str,
    default: Sequence[str],
    help: str,
    convert: Callable[[str], str],
) -> None:
    """``--optimizers NAME [NAME ...]`` (commas work too), with older spellings as aliases."""
    parser.add_argument(
        "--optimizers",
        *aliases,
        dest="optimizers",
        nargs="+",
        action=NameList,
        convert=convert,
        default=list(default),
        metavar="NAME",
        help=help,
    )


def _probe_folder(folder: Path) -> None:
    """Create ``folder`` (and its parents) and a file in it: raises ``OSError`` if it cannot.

    Creating a file is the only test that holds as root and on read-only or virtual file
    systems (``/proc``), where permission bits say "writable".
    """
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile(dir=folder):
        pass


def _reason(error: OSError) -> str:
    return error.strerror or str(error)


def output_folder_problem(folder: Path) -> str | None:
    """Why ``folder`` cannot receive output files (``None`` if it can; it is then created)."""
    if folder.exists() and not folder.is_dir():
        return f"{folder} exists and is not a folder"
    try:
        _probe_folder(folder)
    except OSError as error:
        return f"cannot write into {folder}: {_reason(error)}"
    return None


def output_file_problem(path: Path) -> str | None:
    """Why ``path`` cannot be written (``None`` if it can; its folder is then created)."""
    if path.is_dir():
        return f"{path} is a folder, not a file"
    problem = output_folder_problem(path.parent)
    if problem is not None:
        return problem
    if path.exists() and not os.access(path, os.W_OK):
        return f"{path} is not writable"
    return None


def check_outputs(
    parser: argparse.ArgumentParser,
    *,
    folders: Iterable[tuple[str, Path | None]] = (),
    files: Iterable[tuple[str, Path | None]] = (),
) -> None:
    """Exit 2 naming the flag unless every given output location can be written."""
    for flag, folder in folders:
        if folder is not None and (problem := output_folder_problem(folder)) is not None:
            parser.error(f"argument {flag}: {problem}")
    for flag, path in files:
        if path is not None and (problem := output_file_problem(path)) is not None:
            parser.error(f"argument {flag}: {problem}")


def check_seed_range(parser: argparse.ArgumentParser, seed: int, count: int, flag: str) -> None:
    """Exit 2 naming ``flag`` if seeds ``seed, seed + 1, ..., seed + count - 1`` pass 2**32-1."""
    from torchopt_edu.optim._checks import MAX_SEED

    if seed + count - 1 > MAX_SEED:
        parser.error(f"argument {flag}: --seed {seed} + {count} seeds passes 2**32-1")


def check_json_apart(
    parser: argparse.ArgumentParser, json_path: Path | None, owned: Iterable[tuple[str, Path]]
) -> None:
    """Exit 2 if ``--json`` names a file the command writes itself (``owned``: what it is and
    where): the JSON would overwrite a study, a checkpoint or a plot, or be overwritten."""
    if json_path is None:
        return
    target = json_path.resolve()
    for what, path in owned:
        if path.resolve() == target:
            parser.error(f"argument --json: {json_path} is {what}; write the JSON elsewhere")


def missing(module: str) -> bool:
    """Whether the top-level package ``module`` cannot be imported."""
    try:
        return importlib.util.find_spec(module) is None
    except (ImportError, ValueError):
        return True


def require(parser: argparse.ArgumentParser, module: str, purpose: str, hint: str) -> None:
    """Exit 2 with ``<purpose> needs <module>: <hint>`` when ``module`` is not installed."""
    if missing(module):
        parser.error(f"{purpose} needs {module}, which is not installed: {hint}")


def require_matplotlib(parser: argparse.ArgumentParser) -> None:
    """Plots need matplotlib: exit 2 with the install hint (or ``--no-plot``) without it."""
    require(parser, "matplotlib", "plotting", f"{VIZ_HINT}, or pass --no-plot")


def finite_or_none(value: Any) -> Any:
    """``value`` with every NaN or infinite float (in nested dicts, lists and tuples) replaced
    by ``None``, so that ``json.dumps(..., allow_nan=False)`` writes ``null`` for it."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite_or_none(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(item) for item in value]
    return value


def write_json(path: Path, data: Any) -> Path:
    """Write ``data`` to ``path`` as strict JSON (NaN and infinity become ``null``)."""
    path.write_text(
        json.dumps(finite_or_none(data), indent=1, allow_nan=False) + "\n", encoding="utf-8"
    )
    return path


def save_figure(figure: Any, path: Path, dpi: int = 80) -> Path:
    """Save a matplotlib figure to ``path`` and close it; return ``path``."""
    import matplotlib.pyplot as plt

    figure.savefig(path, dpi=dpi, bbox_inches="tight")
    plt.close(figure)
    return path


def use_agg() -> None:
    """Draw off-screen: the commands only save figures."""
    import matplotlib

    matplotlib.use("Agg")
