"""Plots of a study (optimisation history, hyper-parameter importance) and of a PBT population.

Each function returns the plot's axes or figure; ``torchopt-edu tune`` and ``pbt`` save them.
Pass the name of what the study minimises (``"validation cross-entropy"``) as ``objective`` so
the axes say it, rather than Optuna's generic "Objective Value".

Importance uses PED-ANOVA (Watanabe et al., IJCAI 2023, "PED-ANOVA: Efficiently Quantifying
Hyperparameter Importance in Arbitrary Subspaces"), Optuna's default evaluator since 4.x: it needs
nothing beyond Optuna (fANOVA and mean-decrease-impurity need scikit-learn's random forests) and it
handles conditional parameters such as ``adam.lr``, which exist only in trials that chose Adam.
PED-ANOVA scores a parameter by how much its distribution among the top ``q`` fraction of trials
differs from its distribution among all trials (a Pearson divergence of Parzen estimates).
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import optuna
from optuna.trial import TrialState

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from torchopt_edu.tuning.pbt import PBTResult

MIN_TOP_TRIALS = 5
"""The top quantile of the importance evaluator holds at least this many trials (as PED-ANOVA's
authors advise), but never less than the top 10 % nor more than the top half."""


def _matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError as error:
        raise ImportError("plots need matplotlib: pip install torchopt-edu[viz]") from error


def importance_evaluator(study: optuna.Study) -> optuna.importance.PedAnovaImportanceEvaluator:
    """PED-ANOVA with top quantile ``q = clip(5 / n_complete, 0.1, 0.5)`` for ``study``."""
    n_complete = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    quantile = min(max(MIN_TOP_TRIALS / max(n_complete, 1), 0.1), 0.5)
    return optuna.importance.PedAnovaImportanceEvaluator(target_quantile=quantile)


def _quiet_small_regimes() -> None:
    # A conditional parameter seen in one or two trials (an optimizer tried rarely) gets a warning
    # per parameter; its importance is small anyway, and a study with few trials would flood.
    warnings.filterwarnings("ignore", message="Some regimes for parameter", category=UserWarning)


def param_importances(study: optuna.Study) -> dict[str, float]:
    """Importance of each parameter of ``study`` (sums to 1), by :func:`importance_evaluator`."""
    with warnings.catch_warnings():
        _quiet_small_regimes()
        return optuna.importance.get_param_importances(study, evaluator=importance_evaluator(study))


def plot_history(study: optuna.Study, objective: str = "objective") -> Axes:
    """``objective`` of every completed trial and the best value so far, against trial number."""
    _matplotlib()
    with warnings.catch_warnings():  # Optuna marks its matplotlib plots experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.visualization.matplotlib.plot_optimization_history(
            study, target_name=objective
        )


def plot_importance(study: optuna.Study, objective: str = "objective") -> Axes:
    """Bar chart of :func:`param_importances` (for ``objective``, as the title says)."""
    _matplotlib()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        _quiet_small_regimes()
        axes = optuna.visualization.matplotlib.plot_param_importances(
            study, evaluator=importance_evaluator(study), target_name=objective
        )
    axes.set_title(f"Hyperparameter importance for the {objective}", loc="left")
    return axes


def plot_pbt_schedules(result: PBTResult) -> Figure:
    """Each PBT member's hyper-parameters against training steps, and its validation score.

    One panel per searched hyper-parameter (one per component of a tuple such as Adam's
    ``betas``), log-scaled for the learning rate and weight decay; a step is an exploit/explore
    move. The last panel shows the scores at the end of each round. The best member is drawn
    thick and black.
    """
    _matplotlib()
    import matplotlib.pyplot as plt

    first = result.members[0].schedule[0]["hyperparameters"]
    panels = [
        (f"{name}[{i}]", name, i) if isinstance(value, (tuple, list)) else (name, name, None)
        for name, value in first.items()
        for i in (range(len(value)) if isinstance(value, (tuple, list)) else [None])
    ]
    figure, axes = plt.subplots(
        1, len(panels) + 1, figsize=(3.6 * (len(panels) + 1), 3.2), squeeze=False
    )
    best = result.best.index
    for member in result.members:
        style = (
            {"color": "black", "lw": 2.2, "zorder": 3} if member.index == best else {"alpha": 0.6}
        )
        steps = [entry["steps"] - result.interval for entry in member.schedule]
        steps.append(member.schedule[-1]["steps"])
        for axis, (shown, name, i) in zip(axes[0], panels, strict=False):
            values = [entry["hyperparameters"][name] for entry in member.schedule]
            values = [value if i is None else value[i] for value in values]
            axis.step(steps, values + values[-1:], where="post", **style)
            axis.set(xlabel="training step", title=shown)
            if name in ("lr", "weight_decay"):
                axis.set_yscale("log")
        scores = [entry["score"] for entry in member.schedule]
        axes[0][-1].plot(steps[1:], scores, marker=".", **style)
    axes[0][-1].set(xlabel="training step", title=result.metric)
    figure.suptitle(
        f"PBT: {len(result.members)} members of {result.optimizer_name}, "
        f"exploit/explore every {result.interval} steps (best member in black)"
    )
    figure.tight_layout()
    return figure
