"""The 2-D test functions and the optimizer gallery drawn on them."""

import json
import math
import runpy
from pathlib import Path

import pytest
import torch

from torchopt_edu import gallery
from torchopt_edu.functions import FUNCTIONS, QUADRATIC_CENTER, QUADRATIC_CONDITION, Function2D
from torchopt_edu.optim import OPTIMIZERS
from torchopt_edu.tuning import OptimizerConfig

GALLERY_DIR = Path(__file__).resolve().parents[1] / "docs" / "gallery"
WITH_MINIMUM = [name for name, function in FUNCTIONS.items() if function.minimum is not None]


def value_and_gradient(function: Function2D, point: tuple[float, float]):
    xy = torch.tensor(point, dtype=torch.float64, requires_grad=True)
    value = function(xy)
    value.backward()
    return value.item(), xy.grad


def box_grid(function: Function2D, resolution: int = 401) -> torch.Tensor:
    (x_low, x_high), (y_low, y_high) = function.box
    x = torch.linspace(x_low, x_high, resolution, dtype=torch.float64)
    y = torch.linspace(y_low, y_high, resolution, dtype=torch.float64)
    return torch.stack(torch.meshgrid(x, y, indexing="xy"), dim=-1)


# --- the functions ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", WITH_MINIMUM)
def test_known_minimum_is_a_stationary_point_with_the_known_value(name):
    function = FUNCTIONS[name]
    value, gradient = value_and_gradient(function, function.minimum)
    assert value == pytest.approx(function.minimum_value, abs=1e-12)
    assert gradient.abs().max().item() < 1e-10


@pytest.mark.parametrize("name", WITH_MINIMUM)
def test_known_minimum_is_the_lowest_value_on_the_box(name):
    function = FUNCTIONS[name]
    values = function(box_grid(function))
    assert values.min().item() >= function.minimum_value - 1e-12
    x, y = function.minimum
    for dx, dy in [(1e-3, 0), (-1e-3, 0), (0, 1e-3), (0, -1e-3), (1e-3, 1e-3), (-1e-3, 1e-3)]:
        nearby = torch.tensor([x + dx, y + dy], dtype=torch.float64)
        assert function(nearby).item() > function.minimum_value


@pytest.mark.parametrize(
    ("name", "point", "expected"),
    [
        ("rosenbrock", (-1.2, 1.0), 24.2),  # Rosenbrock's start: (2.2)^2 + 100 (1 - 1.44)^2
        ("rosenbrock", (1.0, 1.0), 0.0),
        ("rastrigin", (1.0, 0.0), 1.0),  # 20 + 1 - 10 + 0 - 10
        ("rastrigin", (0.5, 0.5), 40.5),  # 20 + 2 (0.25 + 10)
        ("beale", (0.0, 0.0), 1.5**2 + 2.25**2 + 2.625**2),
        ("beale", (3.0, 0.5), 0.0),
        ("saddle", (1.0, 2.0), -3.0),
        ("quadratic", (1 + math.cos(math.pi / 6), 0.5 + math.sin(math.pi / 6)), 0.5),  # flat axis
        ("quadratic", (1 - math.sin(math.pi / 6), 0.5 + math.cos(math.pi / 6)), 25.0),  # steep
    ],
)
def test_formulas_at_hand_computed_points(name, point, expected):
    assert FUNCTIONS[name](torch.tensor(point, dtype=torch.float64)).item() == pytest.approx(
        expected, abs=1e-12
    )


def test_saddle_has_no_minimum_and_a_saddle_point_at_the_origin():
    saddle = FUNCTIONS["saddle"]
    assert saddle.minimum is None and saddle.minimum_value is None
    value, gradient = value_and_gradient(saddle, (0.0, 0.0))
    assert value == 0.0 and gradient.abs().max().item() == 0.0
    hessian = torch.autograd.functional.hessian(saddle, torch.zeros(2, dtype=torch.float64))
    assert torch.linalg.eigvalsh(hessian).tolist() == pytest.approx([-2.0, 2.0])


def test_quadratic_has_the_stated_condition_number_off_the_axes():
    quadratic = FUNCTIONS["quadratic"]
    center = torch.tensor(QUADRATIC_CENTER, dtype=torch.float64)
    hessian = torch.autograd.functional.hessian(quadratic, center)
    curvatures = torch.linalg.eigvalsh(hessian)
    assert (curvatures[1] / curvatures[0]).item() == pytest.approx(QUADRATIC_CONDITION)
    assert hessian[0, 1].abs().item() > 1.0  # not diagonal: per-coordinate scaling cannot fix it


@pytest.mark.parametrize("name", list(FUNCTIONS))
def test_grid_evaluation_matches_pointwise(name):
    function = FUNCTIONS[name]
    grid = box_grid(function, resolution=7)
    values = function(grid)
    assert values.shape == (7, 7)
    assert values[2, 5].item() == function(grid[2, 5]).item()


def test_bad_points_and_bad_definitions_are_rejected():
    with pytest.raises(ValueError, match=r"rosenbrock takes points of shape \(\.\.\., 2\), got"):
        FUNCTIONS["rosenbrock"](torch.zeros(3))
    box = ((-1.0, 1.0), (-1.0, 1.0))
    args = {"name": "f", "title": "F", "fn": FUNCTIONS["saddle"].fn, "difficulty": "none"}
    with pytest.raises(ValueError, match=r"f: start \(2\.0, 0\.0\) lies outside the box"):
        Function2D(**args, box=box, start=(2.0, 0.0), minimum=None, minimum_value=None)
    with pytest.raises(ValueError, match="give both minimum and minimum_value"):
        Function2D(**args, box=box, start=(0.0, 0.0), minimum=(0.0, 0.0), minimum_value=None)
    with pytest.raises(ValueError, match="box needs low < high"):
        flipped = ((1.0, -1.0), (-1.0, 1.0))
        Function2D(**args, box=flipped, start=(0.0, 0.0), minimum=None, minimum_value=None)


# --- runs and tuning -------------------------------------------------------------------------


def test_run_path_is_gradient_descent_in_closed_form_on_the_quadratic():
    quadratic, lr, steps = FUNCTIONS["quadratic"], 0.03, 25
    path = gallery.run_path(quadratic, OptimizerConfig("sgd", {"lr": lr}), steps)
    center = torch.tensor(QUADRATIC_CENTER, dtype=torch.float64)
    hessian = torch.autograd.functional.hessian(quadratic, center)
    step = torch.eye(2, dtype=torch.float64) - lr * hessian  # x_{t+1} - c = (I - lr A)(x_t - c)
    start = torch.tensor(quadratic.start, dtype=torch.float64) - center
    expected = center + torch.stack(
        [torch.linalg.matrix_power(step, t) @ start for t in range(steps + 1)]
    )
    torch.testing.assert_close(path, expected, rtol=1e-12, atol=1e-12)


def test_run_path_keeps_a_diverging_run_inside_the_box():
    rosenbrock = FUNCTIONS["rosenbrock"]
    path = gallery.run_path(rosenbrock, OptimizerConfig("sgd", {"lr": 1.0}), 20)
    (x_low, x_high), (y_low, y_high) = rosenbrock.box
    assert torch.isfinite(path).all()
    assert (path[:, 0] >= x_low).all() and (path[:, 0] <= x_high).all()
    assert (path[:, 1] >= y_low).all() and (path[:, 1] <= y_high).all()
    assert {x_low, x_high} & set(path[1:, 0].tolist())  # it did hit a wall


SMALL_OPTIMIZERS = ["sgd", "momentum", "adam"]


@pytest.fixture(scope="module")
def small_gallery():
    """Every function, three optimizers, reduced to 100 steps and 4 trials per search."""
    return gallery.compute_gallery(optimizers=SMALL_OPTIMIZERS, steps=100, n_trials=4)


def test_small_gallery_covers_the_functions_and_optimizers_asked_for(small_gallery):
    assert list(small_gallery) == list(FUNCTIONS)
    for runs in small_gallery.values():
        assert list(runs) == SMALL_OPTIMIZERS


def test_paths_start_at_the_start_and_stay_in_the_box(small_gallery):
    low, high = gallery.LR_RANGE
    for name, runs in small_gallery.items():
        function = FUNCTIONS[name]
        (x_low, x_high), (y_low, y_high) = function.box
        for run in runs.values():
            assert run.path.shape == (101, 2)
            assert run.path[0].tolist() == list(function.start)
            assert (run.path[:, 0] >= x_low).all() and (run.path[:, 0] <= x_high).all()
            assert (run.path[:, 1] >= y_low).all() and (run.path[:, 1] <= y_high).all()
            assert low <= run.lr <= high
            torch.testing.assert_close(run.values, function(run.path))
            assert run.final_value == run.values[-1].item()
            # the mean of the last 10% of the steps; of all of them where there is no minimum
            tail = run.values if function.minimum is None else run.values[-10:]
            assert run.objective == pytest.approx(tail.mean().item())


def test_tuned_runs_improve_on_the_start(small_gallery):
    for name, runs in small_gallery.items():
        start = FUNCTIONS[name](torch.tensor(FUNCTIONS[name].start, dtype=torch.float64))
        assert min(run.objective for run in runs.values()) < start.item()


def test_best_optimizer_ends_near_the_minimum_of_the_quadratic(small_gallery):
    best = min(small_gallery["quadratic"].values(), key=lambda run: run.final_value)
    assert best.final_value < 1e-3
    center = torch.tensor(QUADRATIC_CENTER, dtype=torch.float64)
    assert torch.linalg.vector_norm(best.path[-1] - center).item() < 0.05


def test_best_optimizer_escapes_the_saddle(small_gallery):
    best = min(small_gallery["saddle"].values(), key=lambda run: run.final_value)
    assert best.path[-1, 1].abs().item() > 1.0  # from y = 1e-3 to the box's edge region
    assert best.final_value < -1.0


def test_tuning_is_reproducible_and_depends_on_the_seed():
    rosenbrock = FUNCTIONS["rosenbrock"]
    first = gallery.tune_path(rosenbrock, "adam", steps=30, n_trials=4, seed=3)
    again = gallery.tune_path(rosenbrock, "adam", steps=30, n_trials=4, seed=3)
    other = gallery.tune_path(rosenbrock, "adam", steps=30, n_trials=4, seed=4)
    assert first.lr == again.lr
    assert torch.equal(first.path, again.path)
    assert other.lr != first.lr


def test_unknown_names_are_rejected():
    with pytest.raises(ValueError, match=r"unknown function \['himmelblau'\]"):
        gallery.compute_gallery(["himmelblau"])
    with pytest.raises(ValueError, match=r"unknown optimizer \['lbfgs'\]"):
        gallery.compute_gallery(["saddle"], ["lbfgs"])
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        gallery.compute_gallery(["saddle"], steps=0)


# --- drawing and the committed gallery -------------------------------------------------------


def test_build_gallery_writes_pictures_and_json(tmp_path):
    pytest.importorskip("matplotlib")
    written = gallery.build_gallery(tmp_path / "out", functions=["saddle"], steps=20, n_trials=2)
    names = sorted(path.name for path in written)
    assert names == ["gallery.json", "overview.png", "saddle.png"]
    for path in written:
        if path.suffix == ".png":
            assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads((tmp_path / "out" / "gallery.json").read_text())
    assert data["settings"]["steps"] == 20 and data["settings"]["n_trials"] == 2
    assert list(data["functions"]["saddle"]["optimizers"]) == list(OPTIMIZERS)
    assert data["functions"]["saddle"]["minimum"] is None


# runpy warns that the module was imported (by this test file) before it runs as __main__.
@pytest.mark.filterwarnings("ignore:'torchopt_edu.gallery' found in sys.modules:RuntimeWarning")
def test_main_without_out_prints_usage(monkeypatch):
    monkeypatch.setattr("sys.argv", ["gallery"])
    with pytest.raises(SystemExit, match="usage: python -m torchopt_edu.gallery --out FOLDER"):
        runpy.run_module("torchopt_edu.gallery", run_name="__main__")


def committed_gallery():
    path = GALLERY_DIR / gallery.JSON_NAME
    assert path.exists(), f"{path} is missing: run `{gallery.COMMAND}`"
    return json.loads(path.read_text())


def test_committed_gallery_lists_the_current_functions_and_optimizers():
    data = committed_gallery()
    stale = f"docs/gallery is out of date: run `{gallery.COMMAND}` and commit the result"
    assert list(data["functions"]) == list(FUNCTIONS), stale
    for name, entry in data["functions"].items():
        assert list(entry["optimizers"]) == list(OPTIMIZERS), f"{name}: {stale}"
        assert entry["start"] == list(FUNCTIONS[name].start), f"{name}: {stale}"
        assert (GALLERY_DIR / f"{name}.png").exists(), stale
    assert (GALLERY_DIR / gallery.OVERVIEW_NAME).exists(), stale
    settings = {
        "steps": gallery.STEPS,
        "n_trials": gallery.N_TRIALS,
        "seed": gallery.SEED,
        "lr_range": list(gallery.LR_RANGE),
        "tail": gallery.TAIL,
    }
    assert data["settings"] == settings, stale


# Rastrigin's runs hop between ripples: changing lr by one part in 1e12 moves SGD's final value
# by 200% (measured), so a last-bit difference in cos between CPUs could too. The other runs
# move by at most 3e-5 for the same change.
CHAOTIC = {"rastrigin"}


def test_committed_learning_rates_reproduce_the_committed_final_values():
    data = committed_gallery()
    steps = data["settings"]["steps"]
    for name, entry in data["functions"].items():
        if name in CHAOTIC:
            continue
        for optimizer, result in entry["optimizers"].items():
            config = OptimizerConfig(optimizer, {"lr": result["lr"]})
            path = gallery.run_path(FUNCTIONS[name], config, steps)
            final = FUNCTIONS[name](path[-1]).item()
            assert final == pytest.approx(result["final_value"], rel=1e-6, abs=1e-9), (
                f"{name}/{optimizer}: docs/gallery is out of date: run `{gallery.COMMAND}`"
            )
