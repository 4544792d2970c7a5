"""simulate_schedule and plot_schedule: the real curve, from a copy that leaves yours alone."""

from __future__ import annotations

import sys

import matplotlib
import pytest
import torch.optim.lr_scheduler as torch_sched
from test_lr_scheduler_cases import GROUP_LRS, hyper_parameters, make_optimizer, metric_sequence

from torchopt_edu.lr_scheduler import (
    CyclicLR,
    ExponentialDecay,
    OneCycleLR,
    ReduceLROnPlateau,
    StepDecay,
    WarmupCosine,
    plot_schedule,
    simulate_schedule,
)

matplotlib.use("Agg")


@pytest.fixture(autouse=True)
def close_figures():
    yield
    import matplotlib.pyplot as plt

    plt.close("all")


FACTORIES = {
    "step": lambda opt: StepDecay(opt, 5, 0.5),
    "exponential": lambda opt: ExponentialDecay(opt, 0.98),
    "cyclic": lambda opt: CyclicLR(opt, None, 0.5, 10, cycle_momentum=True),
    "warmup-cosine": lambda opt: WarmupCosine(opt, 10, 80, min_lr=1e-3),
    "one-cycle": lambda opt: OneCycleLR(opt, 0.5, total_steps=100),
    "torch-cosine": lambda opt: torch_sched.CosineAnnealingLR(opt, 50),
}


def step_for_real(optimizer, scheduler, steps, metrics=None):
    values = []
    for t in range(steps):
        values.append([float(group["lr"]) for group in optimizer.param_groups])
        optimizer.step()
        if metrics is None:
            scheduler.step()
        else:
            scheduler.step(metrics[t])
    return values


@pytest.mark.parametrize("name", FACTORIES)
def test_factory_simulation_is_the_real_curve_and_leaves_the_optimizer_alone(name):
    optimizer = make_optimizer("ours.Adam")
    before = hyper_parameters(optimizer)
    simulated = simulate_schedule(FACTORIES[name], 100, optimizer=optimizer)
    assert hyper_parameters(optimizer) == before  # not even initial_lr was added

    real_optimizer = make_optimizer("ours.Adam")
    assert simulated == step_for_real(real_optimizer, FACTORIES[name](real_optimizer), 100)


def test_scheduler_simulation_continues_from_its_state_and_changes_nothing():
    optimizer = make_optimizer("torch.SGD")
    scheduler = torch_sched.SequentialLR(
        optimizer,
        [torch_sched.LinearLR(optimizer, 0.1, total_iters=5), StepDecay(optimizer, 4, 0.5)],
        milestones=[5],
    )
    step_for_real(optimizer, scheduler, 7)
    state, groups, params = (
        scheduler.state_dict(),
        hyper_parameters(optimizer),
        optimizer.state_dict(),
    )

    simulated = simulate_schedule(scheduler, 30)

    assert scheduler.state_dict() == state
    assert hyper_parameters(optimizer) == groups
    assert optimizer.state_dict() == params
    assert simulated == step_for_real(optimizer, scheduler, 30)  # the real continuation


def test_plateau_simulation_feeds_the_metrics():
    metrics = metric_sequence(60)
    optimizer = make_optimizer("ours.SGD")
    build = lambda opt: ReduceLROnPlateau(opt, factor=0.5, patience=2)  # noqa: E731
    simulated = simulate_schedule(build, 60, optimizer=optimizer, metrics=metrics)
    real_optimizer = make_optimizer("ours.SGD")
    assert simulated == step_for_real(real_optimizer, build(real_optimizer), 60, metrics)
    assert len(set(row[0] for row in simulated)) > 2
    with pytest.raises(ValueError, match="needs metrics, one per step: at least 59"):
        simulate_schedule(build, 60, optimizer=optimizer, metrics=metrics[:10])


def test_plot_draws_one_line_per_schedule_with_the_simulated_values():
    optimizer = make_optimizer("ours.Adam")
    ax = plot_schedule(FACTORIES, 100, optimizer=optimizer, group=1, log_scale=True)
    lines = ax.get_lines()
    assert [line.get_label() for line in lines] == list(FACTORIES)
    for line, factory in zip(lines, FACTORIES.values(), strict=True):
        expected = [lrs[1] for lrs in simulate_schedule(factory, 100, optimizer=optimizer)]
        assert list(line.get_xdata()) == list(range(100))
        assert list(line.get_ydata()) == expected
    assert ax.get_yscale() == "log"
    assert optimizer.param_groups[1]["lr"] == GROUP_LRS[1]


def test_plot_of_a_built_scheduler_is_labelled_by_its_class():
    optimizer = make_optimizer("torch.SGD")
    ax = plot_schedule(ExponentialDecay(optimizer), 10)
    assert [line.get_label() for line in ax.get_lines()] == ["ExponentialDecay"]


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda opt: simulate_schedule(FACTORIES["step"], 0, optimizer=opt), ValueError, "steps"),
        (lambda opt: simulate_schedule(FACTORIES["step"], 10), TypeError, "optimizer="),
        (lambda opt: simulate_schedule("cosine", 10, optimizer=opt), TypeError, "got str"),
        (lambda opt: simulate_schedule(lambda o: o, 10, optimizer=opt), TypeError, "not an LRSch"),
        (lambda opt: plot_schedule(FACTORIES, 10, optimizer=opt, group=2), ValueError, "group"),
    ],
    ids=["zero steps", "factory without optimizer", "not a schedule", "factory", "group"],
)
def test_bad_arguments_are_named(call, error, match):
    with pytest.raises(error, match=match):
        call(make_optimizer("torch.SGD"))


def test_plot_without_matplotlib_says_which_extra_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)  # as if it were not installed
    with pytest.raises(ImportError, match=r"pip install torchopt-edu\[viz\]"):
        plot_schedule(FACTORIES["step"], 10, optimizer=make_optimizer("torch.SGD"))


def test_a_factory_is_drawn_from_the_initial_lr_even_after_training():
    trained = make_optimizer("ours.SGD")
    step_for_real(trained, ExponentialDecay(trained, 0.8), 40)  # rates end far below the start
    fresh = make_optimizer("ours.SGD")
    for name in FACTORIES:
        expected = simulate_schedule(FACTORIES[name], 50, optimizer=fresh)
        assert simulate_schedule(FACTORIES[name], 50, optimizer=trained) == expected, name
    assert simulate_schedule(FACTORIES["step"], 1, optimizer=trained) == [list(GROUP_LRS)]
    assert trained.param_groups[0]["lr"] < GROUP_LRS[0] / 1000  # and it is left as it was


def test_plot_saves_the_figure_creating_folders_and_returns_the_open_axes(tmp_path):
    import matplotlib.pyplot as plt

    path = tmp_path / "runs" / "plots" / "schedules.png"
    ax = plot_schedule(FACTORIES, 30, optimizer=make_optimizer("torch.SGD"), path=path)
    assert path.read_bytes().startswith(b"\x89PNG")
    assert plt.fignum_exists(ax.figure.number)  # neither shown nor closed: the caller's to use
    svg = tmp_path / "schedule.svg"
    plot_schedule(FACTORIES["step"], 30, optimizer=make_optimizer("torch.SGD"), path=str(svg))
    assert svg.read_text().lstrip().startswith("<?xml")
    with pytest.raises(TypeError, match="path must be a file path"):
        plot_schedule(FACTORIES["step"], 30, optimizer=make_optimizer("torch.SGD"), path=3)


def test_the_axis_labels_lie_inside_a_new_figure():
    ax = plot_schedule(FACTORIES, 30, optimizer=make_optimizer("torch.SGD"), log_scale=True)
    figure = ax.figure
    figure.canvas.draw()
    inside = figure.bbox
    for label in (ax.xaxis.label, ax.yaxis.label):
        extent = label.get_window_extent()
        assert extent.x0 >= inside.x0 and extent.y0 >= inside.y0, label.get_text()
        assert extent.x1 <= inside.x1 and extent.y1 <= inside.y1, label.get_text()
