"""Learning-rate robustness: which optimizers recover from a badly chosen initial step size.

The frontier optimizers that set their own step size claim to forgive a bad choice. This
measures it on the demo's digits MLP (:mod:`torchopt_edu.demo`: same data, model, batches and
evaluation): every optimizer starts from the same deliberately bad initial step size, trains
for a fixed number of epochs and is scored by test accuracy (Schedule-Free at its averaged
point). What "initial step size" means per optimizer is in :data:`FROM_INITIAL_STEP`:

- SGD (momentum 0.9), Adam, and Schedule-Free SGD and AdamW keep the step size they are given
  (Schedule-Free removes the schedule, not the learning rate);
- Prodigy's step is ``lr * d``: the initial step is its first estimate ``d0``, with ``lr=1``;
- SGDHD and AdamHD start at ``lr`` and learn it online, with hyper-learning rates that suit
  this model (1e-2 and 1e-3; the defaults, 1e-6 and 1e-8, move the rate too slowly to rescue a
  1e-5 start in a few hundred steps).

``torchopt-edu lr-robustness`` (:mod:`torchopt_edu.cli.lr_robustness`) prints the table.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from torch import Tensor, nn
from torch.optim import Optimizer

from torchopt_edu import demo
from torchopt_edu.optim import SGD, SGDHD, Adam, AdamHD, AdamWScheduleFree, Prodigy, SGDScheduleFree
from torchopt_edu.optim._checks import check_int, check_number, check_seed

#: Each optimizer built from parameters and an initial step size.
FROM_INITIAL_STEP: dict[str, Callable[[Iterable[Tensor], float], Optimizer]] = {
    "sgd": lambda params, step: SGD(params, lr=step, momentum=0.9),
    "adam": lambda params, step: Adam(params, lr=step),
    "sgdschedulefree": lambda params, step: SGDScheduleFree(params, lr=step),
    "adamwschedulefree": lambda params, step: AdamWScheduleFree(params, lr=step),
    "prodigy": lambda params, step: Prodigy(params, d0=step),
    "sgdhd": lambda params, step: SGDHD(params, lr=step, hypergrad_lr=1e-2),
    "adamhd": lambda params, step: AdamHD(params, lr=step, hypergrad_lr=1e-3),
}

#: The deliberately bad initial step sizes: far too small and far too large.
BAD_INITIAL_STEPS = (1e-5, 10.0)


@dataclass(frozen=True)
class RobustnessResult:
    """One optimizer from one initial step size on one seed.

    ``final_step`` is the step size the optimizer ended with: ``lr * d`` for Prodigy, the
    learned ``lr`` for the HD optimizers, the unchanged ``lr`` for the others.
    """

    optimizer: str
    initial_step: float
    seed: int
    test_accuracy: float
    final_loss: float
    final_step: float


def final_step(optimizer: Optimizer) -> float:
    """The step size of ``optimizer``'s first param group (see :class:`RobustnessResult`)."""
    group = optimizer.param_groups[0]
    return float(group["lr"]) * float(group.get("d", 1.0))


def lr_robustness(
    initial_steps: Sequence[float] = BAD_INITIAL_STEPS,
    optimizers: Sequence[str] = tuple(FROM_INITIAL_STEP),
    seeds: Sequence[int] = (0,),
    epochs: int = 10,
    batch_size: int = 64,
) -> list[RobustnessResult]:
    """Train the digits MLP with each optimizer from each initial step size and seed.

    Every run of one seed starts from the same weights and sees the same batches. Raises
    ``ValueError`` naming an unknown optimizer or a non-positive step size, epoch count or
    batch size before training anything.
    """
    unknown = [name for name in optimizers if name not in FROM_INITIAL_STEP]
    if unknown:
        raise ValueError(
            f"unknown optimizers {unknown}; choose from {', '.join(FROM_INITIAL_STEP)}"
        )
    for step in initial_steps:
        check_number("initial step size", step, low=0.0, open_low=True)
    for seed in seeds:
        check_seed(seed)
    check_int("epochs", epochs, minimum=1)
    check_int("batch_size", batch_size, minimum=1)
    results = []
    for seed in seeds:
        splits = demo.load_dataset("digits", seed)
        for step in initial_steps:
            results += [_run(name, step, seed, splits, epochs, batch_size) for name in optimizers]
    return results


def _run(
    name: str,
    step: float,
    seed: int,
    splits: tuple[demo.Split, demo.Split],
    epochs: int,
    batch_size: int,
) -> RobustnessResult:
    train_split, test_split = splits
    built: list[Optimizer] = []

    def make(model: nn.Module) -> Optimizer:
        built.append(FROM_INITIAL_STEP[name](model.parameters(), step))
        return built[-1]

    model = demo.make_model(train_split.features.shape[1], 10, seed)
    run = demo.train(name, make, model, train_split, test_split, epochs, batch_size, seed)
    return RobustnessResult(
        name, step, seed, run.test_accuracy, run.losses[-1], final_step(built[0])
    )
