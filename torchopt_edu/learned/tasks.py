"""The meta-training distribution: small tasks that train in milliseconds a step.

A task family is a function ``seed -> Problem``: a freshly initialised model and the training
loss at each step (which draws that step's minibatch). The same seed gives the same model,
data and minibatches, so the two halves of an antithetic pair in meta-training see the same
problem and differ only by the optimizer's perturbation.

The families (:data:`FAMILIES`):

- ``mlp``: a random MLP (1 or 2 hidden layers of 8 to 32 units, tanh or ReLU) regressing the
  outputs of a random teacher MLP on Gaussian inputs, minibatches of 32;
- ``quadratic``: a noisy quadratic ``1/2 sum_i h_i (w_i - w*_i)^2`` with curvatures ``h_i``
  log-uniform over three decades and Gaussian gradient noise (Zhang et al. 2019's model of
  minibatch training);
- ``rosenbrock``: Rosenbrock's banana from a random start in ``[-2, 2]^2``;
- ``digits``: an MLP (64 -> 16 to 32 -> 10) on scikit-learn's digits, minibatches of 32.

None of them is a held-out workload of :mod:`~torchopt_edu.learned.evaluate` (a CNN, a GCN, a
character LSTM): those test generalisation to architectures meta-training never saw.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import torch
from torch import Tensor, nn

from torchopt_edu.datasets import load_digits_tensors
from torchopt_edu.functions import rosenbrock


@dataclass
class Problem:
    """A model and ``loss(step)``, its training loss at that step (a scalar tensor)."""

    model: nn.Module
    loss: Callable[[int], Tensor]


def _minibatches(
    inputs: Tensor, targets: Tensor, size: int, seed: int
) -> Callable[[], tuple[Tensor, Tensor]]:
    generator = torch.Generator().manual_seed(seed)

    def draw() -> tuple[Tensor, Tensor]:
        rows = torch.randint(len(inputs), (size,), generator=generator)
        return inputs[rows], targets[rows]

    return draw


def _mlp(widths: list[int], activation: type[nn.Module]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(widths) - 1):
        layers.append(nn.Linear(widths[i], widths[i + 1]))
        if i < len(widths) - 2:
            layers.append(activation())
    return nn.Sequential(*layers)


def mlp_task(seed: int) -> Problem:
    """A random student MLP fitting a random teacher MLP (see the module docstring)."""
    generator = torch.Generator().manual_seed(seed)

    def pick(options: list) -> object:
        return options[int(torch.randint(len(options), (), generator=generator))]

    depth, width = pick([1, 2]), pick([8, 16, 32])
    activation = pick([nn.Tanh, nn.ReLU])
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        teacher = _mlp([8, 32, 2], nn.Tanh)
        model = _mlp([8, *[width] * depth, 2], activation)
        inputs = torch.randn(512, 8)
        with torch.no_grad():
            targets = teacher(inputs) + 0.05 * torch.randn(512, 2)
    draw = _minibatches(inputs, targets, 32, seed)

    def loss(step: int) -> Tensor:
        x, y = draw()
        return nn.functional.mse_loss(model(x), y)

    return Problem(model, loss)


class _Vector(nn.Module):
    """A model that is one parameter vector (for the quadratic and Rosenbrock tasks)."""

    def __init__(self, start: Tensor) -> None:
        super().__init__()
        self.w = nn.Parameter(start.clone())


def quadratic_task(seed: int, dim: int = 20) -> Problem:
    """A noisy quadratic in ``dim`` dimensions (see the module docstring)."""
    generator = torch.Generator().manual_seed(seed)
    curvature = 10.0 ** (3.0 * torch.rand(dim, generator=generator) - 2.0)
    optimum = torch.randn(dim, generator=generator)
    model = _Vector(torch.randn(dim, generator=generator))
    noise = 0.3 * float(torch.rand((), generator=generator))

    def loss(step: int) -> Tensor:
        kick = noise * torch.randn(dim, generator=generator) * curvature.sqrt()
        gap = model.w - optimum
        return 0.5 * (curvature * gap * gap).sum() + (kick * gap).sum()

    return Problem(model, loss)


def rosenbrock_task(seed: int) -> Problem:
    """Rosenbrock's function from a random start in ``[-2, 2]^2``."""
    generator = torch.Generator().manual_seed(seed)
    model = _Vector(4.0 * torch.rand(2, generator=generator) - 2.0)
    return Problem(model, lambda step: rosenbrock(model.w))


@cache
def _digits() -> tuple[Tensor, Tensor]:
    return load_digits_tensors()


def digits_task(seed: int) -> Problem:
    """A small MLP on scikit-learn's digits (see the module docstring)."""
    pixels, labels = _digits()
    width = [16, 32][seed % 2]
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = _mlp([64, width, 10], nn.ReLU)
    draw = _minibatches(pixels, labels, 32, seed)

    def loss(step: int) -> Tensor:
        x, y = draw()
        return nn.functional.cross_entropy(model(x), y)

    return Problem(model, loss)


#: The meta-training task families by name.
FAMILIES: dict[str, Callable[[int], Problem]] = {
    "mlp": mlp_task,
    "quadratic": quadratic_task,
    "rosenbrock": rosenbrock_task,
    "digits": digits_task,
}
