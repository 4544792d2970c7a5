"""PBT on Ray Tune's PopulationBasedTraining scheduler with this package's members (optional)."""

import math

import pytest

pytest.importorskip(
    "ray.tune", reason="the Ray Tune adapter needs pip install 'ray[tune]'", exc_type=ImportError
)

from torchopt_edu.tuning import LogUniform, Uniform  # noqa: E402
from torchopt_edu.tuning.ray_pbt import ray_population_based_training  # noqa: E402


def test_ray_pbt_trains_the_population_and_exploits_through_checkpoints(tmp_path):
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        space = {"lr": LogUniform(1e-3, 1e-1), "momentum": Uniform(0.0, 0.9)}
        results = ray_population_based_training(
            "diabetes", "sgd", space, population=3, interval=5, rounds=3, storage_path=tmp_path
        )
    finally:
        ray.shutdown()
    assert len(results) == 3 and not results.errors
    for result in results:
        assert result.metrics["training_iteration"] == 3
        assert result.metrics["steps"] == 15  # carried on through every restore
        assert math.isfinite(result.metrics["score"])
        assert 1e-3 <= result.config["lr"] <= 1e-1 * 1.2  # Ray's perturbation does not clip
    best = results.get_best_result("score", "max")
    assert best.metrics["score"] == max(r.metrics["score"] for r in results)
