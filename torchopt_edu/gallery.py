"""The optimizer gallery: every optimizer's path on every 2-D test function, each with its own
learning rate tuned on that function by :func:`torchopt_edu.tuning.tune`.

For each function ``f`` of :data:`torchopt_edu.functions.FUNCTIONS` and each optimizer of
:data:`torchopt_edu.optim.OPTIMIZERS` (everything else at the optimizer's defaults):

1. a run is ``steps`` steps from ``f.start``; after each step the point is projected back into
   ``f.box`` (clamped), which keeps a too-large learning rate finite and gives the saddle, which
   is unbounded below, a lowest point;
2. its objective is the mean of ``f`` over the last :data:`TAIL` of the run (robust to a path
   that oscillates around its end point); for a function without a minimum (the saddle), the
   mean over the whole run: every good run ends on the floor of the box, and only how fast it
   got there tells them apart;
3. an Optuna study (TPE, seeded, in memory) searches ``lr`` log-uniformly in :data:`LR_RANGE`
   for the lowest objective;
4. the best learning rate is run once more to record the path.

``python -m torchopt_edu.gallery --out docs/gallery`` (:func:`build_gallery`) redraws the
pictures of the documentation and writes ``gallery.json`` with the tuned learning rates and
final values; a test checks that the committed files list the current optimizers and functions.
Drawing needs matplotlib (``pip install torchopt-edu[viz]``), tuning needs Optuna (``[tune]``).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from torchopt_edu.functions import FUNCTIONS, Function2D
from torchopt_edu.optim import OPTIMIZERS

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from torchopt_edu.tuning import OptimizerConfig

__all__ = [
    "LR_RANGE",
    "N_TRIALS",
    "SEED",
    "STEPS",
    "TAIL",
    "TunedPath",
    "build_gallery",
    "compute_gallery",
    "gallery_json",
    "plot_function",
    "plot_overview",
    "run_objective",
    "run_path",
    "save_png",
    "tune_path",
]

STEPS = 200
"""Steps of every run."""

N_TRIALS = 30
"""Trials of each learning-rate search (one search per function and optimizer)."""

SEED = 0
"""Seed of the searches' TPE sampler."""

LR_RANGE = (1e-4, 10.0)
"""Learning rates searched, log-uniformly: the same range for every optimizer."""

TAIL = 0.1
"""Fraction of the run, at its end, whose mean value is the search's objective (for functions
with a minimum)."""

LINEAR_CONTOURS = frozenset({"rastrigin", "saddle"})
"""Functions drawn with evenly spaced contour levels; the others get log-spaced levels above
their minimum, where the interesting structure sits orders of magnitude below the walls."""

JSON_NAME = "gallery.json"
OVERVIEW_NAME = "overview.png"
COMMAND = "python -m torchopt_edu.gallery --out docs/gallery"
"""The command that regenerates the committed gallery."""


@dataclass(frozen=True)
class TunedPath:
    """One optimizer's run on one function at its tuned learning rate.

    Attributes:
        function: key of :data:`~torchopt_edu.functions.FUNCTIONS`.
        optimizer: key of :data:`~torchopt_edu.optim.OPTIMIZERS`.
        lr: the tuned learning rate.
        path: the points visited, shape ``(steps + 1, 2)``, float64; ``path[0]`` is the start.
        values: ``f`` at each point, shape ``(steps + 1,)``.
        objective: the search's objective at ``lr`` (:func:`run_objective`).
    """

    function: str
    optimizer: str
    lr: float
    path: Tensor
    values: Tensor
    objective: float

    @property
    def final_value(self) -> float:
        """``f`` at the end of the run."""
        return float(self.values[-1])


def run_path(function: Function2D, config: OptimizerConfig, steps: int) -> Tensor:
    """The points visited by ``config``'s optimizer on ``function`` in ``steps`` steps.

    Starts at ``function.start`` in float64 and projects every point into ``function.box``.
    Returns a tensor of shape ``(steps + 1, 2)`` whose first row is the start.
    """
    xy = torch.tensor(function.start, dtype=torch.float64, requires_grad=True)
    optimizer = config.build([xy])
    (x_low, x_high), (y_low, y_high) = function.box
    low = torch.tensor([x_low, y_low], dtype=torch.float64)
    high = torch.tensor([x_high, y_high], dtype=torch.float64)
    path = [xy.detach().clone()]
    for _ in range(steps):
        optimizer.zero_grad()
        function(xy).backward()
        optimizer.step()
        with torch.no_grad():
            xy.clamp_(low, high)
        path.append(xy.detach().clone())
    return torch.stack(path)


def run_objective(function: Function2D, values: Tensor) -> float:
    """What a learning-rate search minimises, from the values ``f(path)`` of one run.

    The mean over the last :data:`TAIL` of the steps; over the whole run for a function that
    has no minimum (the saddle: every good run ends on the box's floor, and the mean tells how
    fast it got there).
    """
    if function.minimum is None:
        return float(values.mean())
    tail = max(1, math.ceil(TAIL * (len(values) - 1)))
    return float(values[-tail:].mean())


@contextlib.contextmanager
def _quiet_optuna() -> Iterator[None]:
    """Silence Optuna's line per trial (hundreds of them) and restore its verbosity after."""
    import optuna

    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(verbosity)


def tune_path(
    function: Function2D,
    optimizer: str,
    *,
    steps: int = STEPS,
    n_trials: int = N_TRIALS,
    seed: int = SEED,
) -> TunedPath:
    """Tune ``optimizer``'s learning rate on ``function`` and run it once more at the best one.

    The search is :func:`torchopt_edu.tuning.tune` over ``lr`` in :data:`LR_RANGE` (log-uniform;
    every other hyper-parameter at the optimizer's default), ``n_trials`` trials, a TPE sampler
    seeded with ``seed``, no pruning, in-memory storage: the same arguments give the same result.
    """
    import optuna

    from torchopt_edu.tuning import LogUniform, Report, SearchSpace, tune

    def train(config: OptimizerConfig, report: Report) -> float:
        value = run_objective(function, function(run_path(function, config, steps)).detach())
        report(value, steps)
        return value

    space = SearchSpace({optimizer: {"lr": LogUniform(*LR_RANGE)}})
    with _quiet_optuna():
        result = tune(
            train,
            space,
            n_trials=n_trials,
            storage=optuna.storages.InMemoryStorage(),
            study_name=f"gallery-{function.name}-{optimizer}",
            pruner="none",
            seed=seed,
        )
    path = run_path(function, result.best, steps)
    values = function(path).detach()
    return TunedPath(
        function=function.name,
        optimizer=optimizer,
        lr=float(result.best.hyperparameters["lr"]),
        path=path,
        values=values,
        objective=run_objective(function, values),
    )


def compute_gallery(
    functions: Sequence[str] | None = None,
    optimizers: Sequence[str] | None = None,
    *,
    steps: int = STEPS,
    n_trials: int = N_TRIALS,
    seed: int = SEED,
) -> dict[str, dict[str, TunedPath]]:
    """``{function: {optimizer: TunedPath}}`` for the given names (``None``: all of them).

    Raises:
        ValueError: an unknown function or optimizer name, or bad ``steps``.
    """
    functions = list(FUNCTIONS) if functions is None else list(functions)
    optimizers = list(OPTIMIZERS) if optimizers is None else list(optimizers)
    for kind, names, known in (
        ("function", functions, FUNCTIONS),
        ("optimizer", optimizers, OPTIMIZERS),
    ):
        unknown = [name for name in names if name not in known]
        if unknown:
            raise ValueError(f"unknown {kind} {unknown}: use some of {list(known)}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    return {
        function: {
            optimizer: tune_path(
                FUNCTIONS[function], optimizer, steps=steps, n_trials=n_trials, seed=seed
            )
            for optimizer in optimizers
        }
        for function in functions
    }


def gallery_json(
    gallery: dict[str, dict[str, TunedPath]], *, steps: int, n_trials: int, seed: int
) -> dict[str, Any]:
    """The gallery as JSON-ready data: settings, and per function its optimizers' results."""

    def point(xy: tuple[float, float] | None) -> list[float] | None:
        return None if xy is None else list(xy)

    return {
        "command": COMMAND,
        "settings": {
            "steps": steps,
            "n_trials": n_trials,
            "seed": seed,
            "lr_range": list(LR_RANGE),
            "tail": TAIL,
        },
        "functions": {
            name: {
                "start": point(FUNCTIONS[name].start),
                "minimum": point(FUNCTIONS[name].minimum),
                "minimum_value": FUNCTIONS[name].minimum_value,
                "optimizers": {
                    optimizer: {
                        "lr": run.lr,
                        "final_value": run.final_value,
                        "objective": run.objective,
                        "final_point": run.path[-1].tolist(),
                    }
                    for optimizer, run in runs.items()
                },
            }
            for name, runs in gallery.items()
        },
    }


def _matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError("gallery plots need matplotlib: pip install torchopt-edu[viz]") from error


def _grid(function: Function2D, resolution: int) -> tuple[Tensor, Tensor, Tensor]:
    (x_low, x_high), (y_low, y_high) = function.box
    x = torch.linspace(x_low, x_high, resolution, dtype=torch.float64)
    y = torch.linspace(y_low, y_high, resolution, dtype=torch.float64)
    grid_x, grid_y = torch.meshgrid(x, y, indexing="xy")
    return grid_x, grid_y, function(torch.stack([grid_x, grid_y], dim=-1))


def _colors(names: Sequence[str]) -> dict[str, Any]:
    import matplotlib

    palette = matplotlib.colormaps["tab10" if len(names) <= 10 else "tab20"]
    return {name: palette(i % palette.N) for i, name in enumerate(names)}


def _draw(
    axes: Axes,
    function: Function2D,
    runs: dict[str, TunedPath],
    colors: dict[str, Any],
    *,
    resolution: int = 200,
) -> None:
    """Contours of ``function`` on its box, each run's path, the start and the minimum."""
    import numpy as np

    grid_x, grid_y, values = (t.numpy() for t in _grid(function, resolution))
    if function.name in LINEAR_CONTOURS or function.minimum_value is None:
        levels = np.linspace(values.min(), values.max(), 13)[1:-1]
    else:
        gap = values - function.minimum_value
        low = max(np.quantile(gap, 0.001), 1e-3 * np.median(gap))
        levels = function.minimum_value + np.geomspace(low, gap.max(), 22)[:-1]
    greys = [str(shade) for shade in np.linspace(0.15, 0.8, len(levels))]  # dark low, light high
    axes.contour(grid_x, grid_y, values, levels=levels, colors=greys, linewidths=0.6)
    for optimizer, run in runs.items():
        path = run.path.numpy()
        axes.plot(
            path[:, 0],
            path[:, 1],
            "-",
            color=colors[optimizer],
            linewidth=1.3,
            alpha=0.85,
            label=f"{optimizer} (lr {run.lr:.2g}): f = {run.final_value:.3g}",
        )
        axes.plot(*path[-1], "o", color=colors[optimizer], markersize=4)
    axes.plot(*function.start, "ko", markersize=6, label="start")
    if function.minimum is not None:
        star = {"color": "gold", "markeredgecolor": "k", "markersize": 13}
        axes.plot(*function.minimum, "*", **star, label="minimum")
    (x_low, x_high), (y_low, y_high) = function.box
    axes.set_xlim(x_low, x_high)
    axes.set_ylim(y_low, y_high)
    axes.set_aspect("equal")
    axes.set_title(f"{function.title}: {function.difficulty}", fontsize=10)


def plot_function(name: str, runs: dict[str, TunedPath]) -> Figure:
    """One function's contours with every optimizer's path; the legend gives the tuned lr and
    the final value."""
    _matplotlib()
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8.5, 5.5))
    _draw(axes, FUNCTIONS[name], runs, _colors(list(runs)))
    axes.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, frameon=False)
    figure.tight_layout()
    return figure


def plot_overview(gallery: dict[str, dict[str, TunedPath]]) -> Figure:
    """Every function in one figure, one panel each, with one shared legend of optimizers."""
    _matplotlib()
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    optimizers = list(next(iter(gallery.values())))
    colors = _colors(optimizers)
    columns = 3
    rows = math.ceil((len(gallery) + 1) / columns)
    figure, grid = plt.subplots(rows, columns, figsize=(4.2 * columns, 4.0 * rows))
    cells = list(grid.flat)
    for axes, (name, runs) in zip(cells, gallery.items(), strict=False):
        _draw(axes, FUNCTIONS[name], runs, colors, resolution=150)
    legend_axes = cells[len(gallery)]
    handles = [Line2D([], [], color=colors[name], linewidth=2) for name in optimizers]
    legend_axes.legend(handles, optimizers, loc="center", title="optimizer (lr tuned per panel)")
    for axes in cells[len(gallery) :]:
        axes.axis("off")
    figure.tight_layout()
    return figure


def save_png(figure: Figure, path: str | Path, dpi: int = 100) -> None:
    """Save ``figure`` as a PNG with a palette of 256 colours.

    Contour and line plots lose nothing visible, and the file is several times smaller than a
    full-colour one (the committed pictures stay well under 200 KB).
    """
    from PIL import Image  # matplotlib depends on Pillow

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    buffer.seek(0)
    with Image.open(buffer) as image:
        palette = image.convert("RGB").quantize(256, method=Image.Quantize.FASTOCTREE)
        palette.save(path, optimize=True)


def build_gallery(
    out_dir: str | Path,
    *,
    steps: int = STEPS,
    n_trials: int = N_TRIALS,
    seed: int = SEED,
    functions: Sequence[str] | None = None,
    dpi: int = 100,
) -> list[Path]:
    """Compute the gallery and write ``<function>.png``, ``overview.png`` and ``gallery.json``
    into ``out_dir`` (created if missing). Returns the paths written."""
    _matplotlib()
    import matplotlib.pyplot as plt

    gallery = compute_gallery(functions, steps=steps, n_trials=n_trials, seed=seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    figures = [(f"{name}.png", plot_function(name, runs)) for name, runs in gallery.items()]
    figures.append((OVERVIEW_NAME, plot_overview(gallery)))
    for file_name, figure in figures:
        save_png(figure, out / file_name, dpi)
        plt.close(figure)
        written.append(out / file_name)
    data = gallery_json(gallery, steps=steps, n_trials=n_trials, seed=seed)
    (out / JSON_NAME).write_text(json.dumps(data, indent=1) + "\n")
    written.append(out / JSON_NAME)
    return written


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "--out":
        sys.exit(f"usage: python -m torchopt_edu.gallery --out FOLDER   (e.g. {COMMAND})")
    for written_path in build_gallery(sys.argv[2]):
        print(written_path)
