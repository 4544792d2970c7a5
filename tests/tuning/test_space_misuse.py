"""Search spaces and study storages a careless user gives: refused up front, naming the mistake
(they were accepted, then every trial failed, or two entries tuned one optimizer)."""

from __future__ import annotations

import pytest

from torchopt_edu.tuning import SearchSpace
from torchopt_edu.tuning.space import Categorical, IntUniform, Uniform


@pytest.mark.parametrize(
    "names", [["ADAM", "adam"], ["torch.optim.Adam", "torch.optim.adam"], ["Adam", "adam"]]
)
def test_one_optimizer_under_two_spellings_is_refused(names):
    with pytest.raises(ValueError, match="are the same optimizer .* list it once"):
        SearchSpace(names)


def test_ours_and_torchs_adam_are_two_optimizers():
    assert list(SearchSpace(["adam", "torch.optim.Adam"]).optimizers) == [
        "adam",
        "torch.optim.Adam",
    ]


@pytest.mark.parametrize(
    ("optimizers", "words"),
    [
        ({"adam": ["lr"]}, r"optimizers\['adam'\] must be a dict .* got list"),
        ({"adam": 5}, r"optimizers\['adam'\] must be a dict .* got int 5"),
        (123, "optimizers must be a name, a list of names or a dict"),
    ],
)
def test_a_space_of_the_wrong_shape_is_named(optimizers, words):
    with pytest.raises(TypeError, match=words):
        SearchSpace(optimizers)


def test_distributions_refuse_what_optuna_would_fail_on_in_every_trial():
    with pytest.raises(ValueError, match="finite width high - low"):
        Uniform(-1e308, 1e308)
    with pytest.raises(TypeError, match="log must be True or False, got 'yes'"):
        IntUniform(1, 3, log="yes")
    with pytest.raises(ValueError, match="the string 'abc'"):
        Categorical("abc")
    assert Categorical(("abc",)).choices == ("abc",)


def test_a_folder_as_the_study_database_is_named_as_such(tmp_path):
    from torchopt_edu.tuning import StorageError, open_storage

    for storage in (str(tmp_path), f"sqlite:///{tmp_path}"):
        with pytest.raises(StorageError, match=f"study database {tmp_path} is a folder"):
            open_storage(storage)
    assert list(tmp_path.iterdir()) == []


def test_ctrl_c_in_a_trial_pauses_the_study_without_optunas_traceback(caplog):
    """Ctrl+C is how a study is paused; Optuna logged it as a failed trial with a traceback."""
    import optuna

    from torchopt_edu.tuning import tune

    calls = []

    def train(config, report):
        calls.append(config)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return 1.0

    storage = optuna.storages.InMemoryStorage()
    optuna.logging.enable_propagation()  # Optuna's records reach caplog
    try:
        with pytest.raises(KeyboardInterrupt):
            tune(train, SearchSpace(["adam"]), n_trials=5, storage=storage, progress_bar=False)
    finally:
        optuna.logging.disable_propagation()
    assert not [r for r in caplog.records if "KeyboardInterrupt" in r.getMessage()]
    assert len(calls) == 2
