"""The seed's auto-tuning example redone: an SVC's C and gamma on iris, TPE vs random search.

The seed ran scikit-optimize's ``BayesSearchCV(SVC(), {"C": (1e-6, 1e6, "log-uniform"),
"gamma": (1e-6, 1e1, "log-uniform")}, n_iter=50, random_state=42)`` on a 70/30 split of iris and
printed the cross-validated score only. Here both searches see the same space, the same budget and
the same 5-fold stratified cross-validation of the same training split, and the chosen model is
also scored on the 30 % it never saw (the seed split off a test set but never used it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import optuna

from torchopt_edu.tuning.space import LogUniform
from torchopt_edu.tuning.study import TrialSeededTPESampler

SVC_SPACE = {"C": LogUniform(1e-6, 1e6), "gamma": LogUniform(1e-6, 1e1)}
"""The seed's search space: both parameters log-uniform."""


@dataclass(frozen=True)
class SearchRun:
    """One search: the cross-validated accuracy of every candidate, in order, and the winner.

    Attributes:
        method: ``"optuna"`` (TPE) or ``"random"`` (scikit-learn's ``RandomizedSearchCV``).
        scores: mean 5-fold accuracy of each candidate, in the order tried.
        params: each candidate's ``{"C": ..., "gamma": ...}``.
        best_params: the first candidate with the highest score.
        best_score: its score.
        test_accuracy: the winner refitted on the training split, scored on the test split.
    """

    method: str
    scores: tuple[float, ...]
    params: tuple[dict[str, float], ...]
    best_params: dict[str, float]
    best_score: float
    test_accuracy: float

    def best_so_far(self) -> list[float]:
        """``max(scores[:k + 1])`` for every ``k``: the search's progress curve."""
        curve, best = [], float("-inf")
        for score in self.scores:
            best = max(best, score)
            curve.append(best)
        return curve


def _sklearn() -> None:
    try:
        import sklearn  # noqa: F401
    except ImportError as error:
        raise ImportError(
            "the SVC example needs scikit-learn: pip install torchopt-edu[data]"
        ) from error


def svc_iris_search(
    method: Literal["optuna", "random"], n_trials: int = 50, seed: int = 42
) -> SearchRun:
    """Tune an RBF SVC's C and gamma on iris with ``n_trials`` candidates of ``method``.

    Data: the seed's ``train_test_split(test_size=0.3, random_state=42)``. Score: mean accuracy
    over ``StratifiedKFold(5)`` of the training split, what ``RandomizedSearchCV(cv=5)`` uses.
    ``seed`` seeds the sampler (TPE) or the random draws.
    """
    _sklearn()
    from scipy.stats import loguniform
    from sklearn.datasets import load_iris
    from sklearn.model_selection import (
        RandomizedSearchCV,
        StratifiedKFold,
        cross_val_score,
        train_test_split,
    )
    from sklearn.svm import SVC

    if method not in ("optuna", "random"):
        raise ValueError(f"method must be 'optuna' or 'random', got {method!r}")
    if isinstance(n_trials, bool) or not isinstance(n_trials, int) or n_trials < 1:
        raise ValueError(f"n_trials must be a positive integer, got {n_trials!r}")
    data = load_iris()
    x_train, x_test, y_train, y_test = train_test_split(
        data.data, data.target, test_size=0.3, random_state=42
    )
    folds = StratifiedKFold(5)
    if method == "optuna":

        def objective(trial: optuna.Trial) -> float:
            params = {name: spec.suggest(trial, name) for name, spec in SVC_SPACE.items()}
            return cross_val_score(SVC(**params), x_train, y_train, cv=folds).mean()

        study = optuna.create_study(direction="maximize", sampler=TrialSeededTPESampler(seed))
        study.optimize(objective, n_trials=n_trials)
        scores = tuple(trial.value for trial in study.trials)
        params = tuple(trial.params for trial in study.trials)
    else:
        distributions = {name: loguniform(spec.low, spec.high) for name, spec in SVC_SPACE.items()}
        search = RandomizedSearchCV(
            SVC(), distributions, n_iter=n_trials, cv=folds, random_state=seed, refit=False
        )
        search.fit(x_train, y_train)
        scores = tuple(float(score) for score in search.cv_results_["mean_test_score"])
        params = tuple(
            {name: float(value) for name, value in candidate.items()}
            for candidate in search.cv_results_["params"]
        )
    best = max(range(len(scores)), key=scores.__getitem__)
    model = SVC(**params[best]).fit(x_train, y_train)
    return SearchRun(
        method=method,
        scores=scores,
        params=params,
        best_params=params[best],
        best_score=scores[best],
        test_accuracy=float(model.score(x_test, y_test)),
    )
