"""The seed's SVC-on-iris search, Optuna TPE beside random search at the same budget."""

import pytest
from sklearn.datasets import load_iris
from sklearn.model_selection import StratifiedKFold, cross_val_score, train_test_split
from sklearn.svm import SVC

from torchopt_edu.tuning.svc_iris import SVC_SPACE, svc_iris_search


@pytest.mark.parametrize("method", ["optuna", "random"])
def test_search_scores_are_real_cross_validation_scores(method):
    run = svc_iris_search(method, n_trials=8, seed=3)
    assert run.method == method and len(run.scores) == len(run.params) == 8
    for params in run.params:
        for name, spec in SVC_SPACE.items():
            assert spec.low <= params[name] <= spec.high
    assert run.best_score == max(run.scores) == run.best_so_far()[-1]
    assert run.best_so_far() == sorted(run.best_so_far())
    data = load_iris()
    x_train, x_test, y_train, y_test = train_test_split(
        data.data, data.target, test_size=0.3, random_state=42
    )
    rescored = cross_val_score(SVC(**run.best_params), x_train, y_train, cv=StratifiedKFold(5))
    assert rescored.mean() == pytest.approx(run.best_score)
    model = SVC(**run.best_params).fit(x_train, y_train)
    assert run.test_accuracy == pytest.approx(model.score(x_test, y_test))


def test_same_seed_same_search_and_bad_input_raises():
    assert svc_iris_search("optuna", n_trials=4, seed=1) == svc_iris_search("optuna", 4, 1)
    with pytest.raises(ValueError, match=r"method must be 'optuna' or 'random', got 'grid'"):
        svc_iris_search("grid")
    with pytest.raises(ValueError, match=r"n_trials must be a positive integer, got 0"):
        svc_iris_search("random", n_trials=0)
