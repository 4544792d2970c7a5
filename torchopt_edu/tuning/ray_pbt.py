"""Population-based training on Ray Tune: the same members, spread over several machines.

:func:`~torchopt_edu.tuning.pbt.population_based_training` runs its population in processes of
one machine. For a population larger than one machine, Ray Tune's ``PopulationBasedTraining``
scheduler does the exploit and explore steps across a Ray cluster; this module gives it a
trainable built on the same :func:`~torchopt_edu.tuning.pbt.train_member`: each Ray iteration
trains ``interval`` steps and reports the workload's validation ``score`` with a checkpoint of
the weights *and* the optimizer's ``state_dict``. When Ray's scheduler makes a member exploit
another, it restarts the member from the other's checkpoint with perturbed hyper-parameters,
which :func:`train_member` writes into the restored optimizer's ``param_groups``.

Needs ``pip install "ray[tune]"`` (not in any extra: Ray is large). On a cluster, start Ray
(``ray start --head`` / ``ray start --address=...``), call ``ray.init(address="auto")``, and give
``storage_path`` a folder every node reaches (shared file system or cloud storage URI).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from torchopt_edu.optim._checks import check_int, check_seed
from torchopt_edu.tuning.pbt import PERTURB_FACTORS, _flat_specs, _torch_seed, train_member
from torchopt_edu.tuning.space import Categorical, IntUniform, LogUniform, SearchSpace, Spec

if TYPE_CHECKING:
    from ray.tune import ResultGrid

    from torchopt_edu.benchmark import Workload

MEMBER_FILE = "member.pt"
"""File of a Ray checkpoint holding the member's weights, optimizer state and step count."""


def _ray_domain(spec: Spec) -> Any:
    from ray import tune

    if isinstance(spec, LogUniform):
        return tune.loguniform(spec.low, spec.high)
    if isinstance(spec, IntUniform):
        return (
            tune.lograndint(spec.low, spec.high + 1)
            if spec.log
            else tune.randint(spec.low, spec.high + 1)
        )
    if isinstance(spec, Categorical):
        return tune.choice(list(spec.choices))
    return tune.uniform(spec.low, spec.high)


def _hyperparameters(space: Mapping[str, Spec], config: Mapping[str, Any]) -> dict[str, Any]:
    """The optimizer's keyword arguments from Ray's flat ``config`` (``"betas[0]"`` ...)."""
    arguments: dict[str, Any] = {}
    for name, spec in space.items():
        if isinstance(spec, tuple):
            arguments[name] = tuple(config.get(f"{name}[{i}]", item) for i, item in enumerate(spec))
        else:
            arguments[name] = config.get(name, spec)
    return arguments


def ray_trainable(
    workload: str | Workload,
    optimizer_name: str,
    space: Mapping[str, Spec],
    *,
    interval: int,
    seed: int = 0,
) -> Callable[[dict[str, Any]], None]:
    """A Ray Tune function trainable: ``interval`` steps per iteration, then ``tune.report``.

    Each iteration resumes from Ray's checkpoint (if any), trains with ``config``'s
    hyper-parameters (written into the optimizer's ``param_groups``), and reports ``{"score",
    "steps"}`` with a new checkpoint. Batches are seeded by ``(seed, steps done)``.
    """
    check_int("interval", interval, 1)
    seed = check_seed(seed)

    def trainable(config: dict[str, Any]) -> None:
        from ray import tune

        hyperparameters = _hyperparameters(space, config)
        model_state = optimizer_state = None
        steps = 0
        checkpoint = tune.get_checkpoint()
        if checkpoint is not None:
            with checkpoint.as_directory() as folder:
                state = torch.load(Path(folder) / MEMBER_FILE, weights_only=True)
            model_state, optimizer_state, steps = state["model"], state["optimizer"], state["steps"]
        while True:
            model_state, optimizer_state, score = train_member(
                workload,
                optimizer_name,
                hyperparameters,
                model_state,
                optimizer_state,
                interval,
                init_seed=seed,
                batch_seed=_torch_seed(seed, steps, 5),
            )
            steps += interval
            with tempfile.TemporaryDirectory() as folder:
                member = {"model": model_state, "optimizer": optimizer_state, "steps": steps}
                torch.save(member, Path(folder) / MEMBER_FILE)
                tune.report(
                    {"score": score, "steps": steps},
                    checkpoint=tune.Checkpoint.from_directory(folder),
                )

    return trainable


def ray_population_based_training(
    workload: str | Workload,
    optimizer_name: str = "adam",
    space: Mapping[str, Spec] | None = None,
    *,
    population: int = 8,
    interval: int = 50,
    rounds: int = 12,
    quantile: float = 0.25,
    resample_probability: float = 0.25,
    seed: int = 0,
    storage_path: str | os.PathLike[str] | None = None,
) -> ResultGrid:
    """Run the PBT of :func:`~torchopt_edu.tuning.pbt.population_based_training` on Ray Tune.

    Ray's ``PopulationBasedTraining`` scheduler (perturbation every iteration, factors 0.8 and
    1.2, ``quantile`` and ``resample_probability`` as here) over ``population`` samples of
    ``space`` (default: the optimizer's default space), ``rounds`` iterations of ``interval``
    steps each. Returns Ray's ``ResultGrid`` (``result_grid.get_best_result("score", mode)``).
    Call ``ray.init(...)`` first to use a cluster; otherwise Ray starts a local one.
    """
    from ray import tune
    from ray.tune.schedulers import PopulationBasedTraining

    from torchopt_edu.benchmark import get_workload

    problem = get_workload(workload)
    check_int("population", population, 2)
    check_int("rounds", rounds, 1)
    specs = SearchSpace({optimizer_name: space}).optimizers[optimizer_name]
    flat = _flat_specs(specs)
    if not flat:
        raise ValueError(f"the space of {optimizer_name!r} searches no hyper-parameter: {specs}")
    domains = {name: _ray_domain(spec) for name, spec in flat.items()}
    mode = "max" if problem.higher_is_better else "min"
    scheduler = PopulationBasedTraining(
        time_attr="training_iteration",
        perturbation_interval=1,
        hyperparam_mutations=domains,
        quantile_fraction=quantile,
        resample_probability=resample_probability,
        perturbation_factors=(max(PERTURB_FACTORS), min(PERTURB_FACTORS)),
    )
    tuner = tune.Tuner(
        ray_trainable(
            problem if not isinstance(workload, str) else problem.name,
            optimizer_name,
            specs,
            interval=interval,
            seed=seed,
        ),
        param_space=domains,
        tune_config=tune.TuneConfig(
            scheduler=scheduler, metric="score", mode=mode, num_samples=population
        ),
        run_config=tune.RunConfig(
            stop={"training_iteration": rounds},
            storage_path=None if storage_path is None else os.fspath(storage_path),
            verbose=0,
        ),
    )
    return tuner.fit()
