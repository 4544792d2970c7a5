"""Hyper-parameter auto-tuning with Optuna: which optimizer, learning rate and schedule to use.

Replaces the seed's Bayesian optimisation with scikit-optimize (no longer maintained) by a durable
Optuna study: a search space as data, TPE sampling, pruning of bad trials from their intermediate
values, storage in a database file (resume after an interruption, several workers at once);
samplers by name (TPE, Gaussian process, CMA-ES, NSGA-II, random) and their comparison
(:func:`compare_samplers`); population-based training (:func:`population_based_training`).
Plots need matplotlib (``[viz]``); the digits task and the SVC example need scikit-learn
(``[data]``); both are imported only when used. For example::

    from torchopt_edu.tuning import SearchSpace, LogUniform, tune, supervised_task

    result = tune(supervised_task(make_model, train, valid), SearchSpace(["adam", "sgd"]),
                  n_trials=30, storage="runs/tune/study.db")
    optimizer = result.best.build(model.parameters())
"""

try:
    import optuna  # noqa: F401
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError("torchopt_edu.tuning needs Optuna: pip install torchopt-edu[tune]") from error

from torchopt_edu.optim._checks import MAX_SEED
from torchopt_edu.tuning.compare import SamplerComparison, compare_samplers, workload_task
from torchopt_edu.tuning.config import SCHEDULES, OptimizerConfig, Schedule, optimizer_class
from torchopt_edu.tuning.pbt import Member, PBTResult, population_based_training
from torchopt_edu.tuning.plots import (
    param_importances,
    plot_history,
    plot_importance,
    plot_pbt_schedules,
)
from torchopt_edu.tuning.space import (
    DEFAULT_OPTIMIZER_SPACES,
    DEFAULT_SCHEDULE_SPACES,
    Categorical,
    IntUniform,
    LogUniform,
    SearchSpace,
    Uniform,
    default_optimizer_space,
    default_schedule_space,
)
from torchopt_edu.tuning.study import (
    SAMPLERS,
    NoCompletedTrialError,
    ObjectiveMismatchError,
    Report,
    StorageError,
    TrainFn,
    TrialSeededSampler,
    TrialSeededTPESampler,
    TuneResult,
    best_config,
    counted_trials,
    make_pruner,
    make_sampler,
    open_storage,
    tune,
)
from torchopt_edu.tuning.svc_iris import SearchRun, svc_iris_search
from torchopt_edu.tuning.tasks import (
    accuracy,
    digits_mlp,
    evaluate,
    fit,
    init_model,
    load_digits_splits,
    quadratic_task,
    supervised_task,
)

__all__ = [
    "Categorical",
    "DEFAULT_OPTIMIZER_SPACES",
    "DEFAULT_SCHEDULE_SPACES",
    "IntUniform",
    "LogUniform",
    "MAX_SEED",
    "Member",
    "NoCompletedTrialError",
    "ObjectiveMismatchError",
    "OptimizerConfig",
    "PBTResult",
    "Report",
    "SAMPLERS",
    "SCHEDULES",
    "SamplerComparison",
    "Schedule",
    "SearchRun",
    "SearchSpace",
    "StorageError",
    "TrainFn",
    "TrialSeededSampler",
    "TrialSeededTPESampler",
    "TuneResult",
    "Uniform",
    "accuracy",
    "best_config",
    "compare_samplers",
    "counted_trials",
    "default_optimizer_space",
    "default_schedule_space",
    "digits_mlp",
    "evaluate",
    "fit",
    "init_model",
    "load_digits_splits",
    "make_pruner",
    "make_sampler",
    "open_storage",
    "optimizer_class",
    "param_importances",
    "plot_history",
    "plot_importance",
    "plot_pbt_schedules",
    "population_based_training",
    "quadratic_task",
    "supervised_task",
    "svc_iris_search",
    "tune",
    "workload_task",
]
