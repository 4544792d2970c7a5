"""The honest claims of the held-out evaluation, on a bounded budget (shipped weights).

Measured with ``torchopt-edu learn-optimizer --evaluate`` (5 seeds, full budgets; README): the
graph-stage optimizer reaches the SBM GCN's target in a handful of steps where Adam at the same
default ``lr`` needs over a hundred, but on the digits CNN it drops fast for about 100 steps (twice
meta-training's 50-step unrolls) and then its loss climbs back, ending far above Adam's.
"""

from __future__ import annotations

import statistics

import pytest

pytest.importorskip("sklearn", reason="the digits CNN needs scikit-learn's digits")

from torchopt_edu.learned import evaluate  # noqa: E402


@pytest.fixture(scope="module")
def factories():
    return evaluate.candidates()


def test_graph_stage_reaches_the_gcn_target_where_default_adam_does_not(factories):
    for seed in (0, 1):
        runs = {
            name: evaluate.train("sbm_gcn", name, factories[name], 1e-3, seed, steps=60)
            for name in ("adam", "learned", "learned, coordinate-only")
        }
        assert runs["learned"].steps_to_target is not None and runs["learned"].steps_to_target <= 20
        assert runs["adam"].steps_to_target is None  # measured: 126 steps (median, 2 of 5 seeds)
        coordinate = runs["learned, coordinate-only"].steps_to_target
        assert coordinate is None or coordinate > runs["learned"].steps_to_target  # the ablation


def test_on_the_cnn_it_leads_early_then_loses_to_adam_beyond_its_horizon(factories):
    adam = evaluate.train("digits_cnn", "adam", factories["adam"], 1e-3, seed=0)
    learned = evaluate.train("digits_cnn", "learned", factories["learned"], 1e-3, seed=0)
    assert not learned.diverged  # no blow-up: the loss creeps back up

    def window(run, start):
        return statistics.fmean(run.losses[start : start + 50])

    assert window(learned, 50) < 0.5 * window(adam, 50)  # measured 0.51 vs 2.13
    assert learned.final_loss > 3 * adam.final_loss  # measured 1.37 vs 0.21
    assert learned.final_metric < adam.final_metric  # validation accuracy 0.79 vs 0.93
