"""Meta-training the learned optimizer with antithetic evolution strategies.

The meta-parameters ``phi`` are the :class:`~torchopt_edu.learned.nets.LearnedNet`'s weights,
flattened. A task ``tau`` (a family and a seed from :mod:`~torchopt_edu.learned.tasks`) is
trained for ``T`` steps by the optimizer with weights ``phi``; its meta-loss is the mean log
training loss relative to the start, clipped so that a diverging run costs a bounded amount:

.. math::
    L(\\phi, \\tau) = \\frac{1}{T} \\sum_{t=1}^{T}
        \\min\\!\\big(\\log \\ell_t - \\log \\ell_0,\\ 3\\big) \\quad
        (\\text{a non-finite } \\ell_t \\text{ counts as } 3)

Each meta-step draws ``P`` tasks and directions ``epsilon_j ~ N(0, I)``, trains each task
twice, with ``phi + sigma epsilon_j`` and ``phi - sigma epsilon_j`` (the same model
initialisation and minibatches), and follows the antithetic estimate of the gradient of the
Gaussian-smoothed meta-loss (Salimans et al. 2017, arXiv:1703.03864):

.. math::
    \\hat\\nabla = \\frac{1}{P} \\sum_j
        \\frac{L(\\phi + \\sigma\\epsilon_j, \\tau_j) - L(\\phi - \\sigma\\epsilon_j, \\tau_j)}
             {2\\sigma}\\, \\epsilon_j

with Adam as the meta-optimizer. ES needs no backpropagation through the unrolled training,
so the optimizer that meta-training runs is the one users run (its no-grad, batched step),
and a chaotic meta-loss (the usual trouble of truncated backpropagation through long unrolls)
only makes the estimate noisier, not exploding. Each unroll is a whole short training run (no
truncation), so the estimate is unbiased for the smoothed loss without Persistent ES's
bookkeeping.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch.nn.utils import parameters_to_vector, vector_to_parameters

from torchopt_edu.learned.nets import LearnedNet
from torchopt_edu.learned.optimizer import LearnedOptimizer
from torchopt_edu.learned.tasks import FAMILIES
from torchopt_edu.optim import Adam
from torchopt_edu.optim._checks import check_int, check_number, check_seed

#: A diverging or non-finite step counts as this log-loss ratio.
MAX_LOG_RATIO = 3.0


def unroll(net: LearnedNet, family: str, seed: int, steps: int, lr: float = 1e-3) -> list[float]:
    """Train task ``(family, seed)`` for ``steps`` steps with ``net``; the training losses.

    Returns ``steps + 1`` losses: ``l_0`` (before the first update) to ``l_T``.
    """
    problem = FAMILIES[family](seed)
    optimizer = LearnedOptimizer(problem.model.parameters(), lr=lr, net=net, graph=problem.model)
    losses = []
    for step in range(steps + 1):
        optimizer.zero_grad()
        with torch.enable_grad():
            loss = problem.loss(step)
        losses.append(float(loss.detach()))
        if not math.isfinite(losses[-1]):
            losses += [math.inf] * (steps - step)
            break
        if step < steps:
            with torch.enable_grad():
                loss.backward()
            optimizer.step()
    return losses


def meta_loss(losses: Sequence[float]) -> float:
    """``mean_t min(log l_t - log l_0, 3)`` over ``t >= 1`` (non-finite counts as 3)."""
    start = math.log(max(losses[0], 1e-30))
    ratios = [
        min(math.log(max(loss, 1e-30)) - start, MAX_LOG_RATIO)
        if math.isfinite(loss)
        else MAX_LOG_RATIO
        for loss in losses[1:]
    ]
    return sum(ratios) / len(ratios)


class MetaTrainer:
    """Antithetic ES on ``net`` (updated in place) over the task families ``families``.

    Args:
        net: the weights to meta-train (an untrained :class:`LearnedNet` is Adam).
        families: names from :data:`~torchopt_edu.learned.tasks.FAMILIES`.
        pairs: antithetic pairs (tasks) per meta-step, ``P``.
        unroll: training steps per task, ``T``.
        sigma: perturbation scale, ``> 0``.
        meta_lr: Adam's learning rate on ``phi``.
        lr: the learned optimizer's ``lr`` during meta-training.
        seed: seed of the task and direction draws.

    :meth:`state_dict` holds everything a resumed run needs (weights, Adam's state, the
    generator, the history), as tensors and numbers: it loads with ``weights_only=True``.
    """

    def __init__(
        self,
        net: LearnedNet,
        *,
        families: Sequence[str] = tuple(FAMILIES),
        pairs: int = 8,
        unroll: int = 40,
        sigma: float = 0.01,
        meta_lr: float = 3e-3,
        lr: float = 1e-3,
        seed: int = 0,
    ) -> None:
        if not isinstance(net, LearnedNet):
            raise TypeError(f"net must be a LearnedNet, got {type(net).__name__}")
        unknown = [f for f in families if f not in FAMILIES]
        if unknown or not families:
            raise ValueError(
                f"families must be a non-empty list of {sorted(FAMILIES)}, got {list(families)}"
            )
        self.net = net
        self.families = list(families)
        self.pairs = check_int("pairs", pairs, 1)
        self.unroll = check_int("unroll", unroll, 1)
        self.sigma = check_number("sigma", sigma, 0.0, open_low=True)
        self.lr = check_number("lr", lr, 0.0, open_low=True)
        self.seed = check_seed(seed)
        self.phi = parameters_to_vector(net.parameters()).detach().clone().requires_grad_(True)
        self.meta_optimizer = Adam(
            [self.phi], lr=check_number("meta_lr", meta_lr, 0.0, open_low=True)
        )
        self.generator = torch.Generator().manual_seed(self.seed)
        self.history: list[float] = []

    def _evaluate_at(self, phi: torch.Tensor, family: str, seed: int) -> float:
        vector_to_parameters(phi, self.net.parameters())
        return meta_loss(unroll(self.net, family, seed, self.unroll, self.lr))

    def step(self) -> float:
        """One meta-step; returns the mean meta-loss of its ``2P`` runs (and records it)."""
        phi = self.phi.detach()
        gradient = torch.zeros_like(phi)
        total = 0.0
        with torch.no_grad():
            for _ in range(self.pairs):
                family = self.families[
                    int(torch.randint(len(self.families), (), generator=self.generator))
                ]
                task_seed = int(torch.randint(2**31 - 1, (), generator=self.generator))
                direction = torch.randn(phi.shape, generator=self.generator)
                plus = self._evaluate_at(phi + self.sigma * direction, family, task_seed)
                minus = self._evaluate_at(phi - self.sigma * direction, family, task_seed)
                gradient += (plus - minus) / (2 * self.sigma * self.pairs) * direction
                total += plus + minus
        self.phi.grad = gradient
        self.meta_optimizer.step()
        vector_to_parameters(self.phi.detach(), self.net.parameters())
        self.history.append(total / (2 * self.pairs))
        return self.history[-1]

    def evaluate(self, tasks: Sequence[tuple[str, int]]) -> float:
        """Mean meta-loss of the current weights on fixed ``(family, seed)`` tasks."""
        with torch.no_grad():
            losses = [self._evaluate_at(self.phi.detach(), f, s) for f, s in tasks]
        vector_to_parameters(self.phi.detach(), self.net.parameters())
        return sum(losses) / len(losses)

    def settings(self) -> dict[str, Any]:
        """The meta-training settings (what a weights file records)."""
        return {
            "families": self.families,
            "pairs": self.pairs,
            "unroll": self.unroll,
            "sigma": self.sigma,
            "lr": self.lr,
            "seed": self.seed,
            "meta_lr": float(self.meta_optimizer.param_groups[0]["lr"]),
            "use_graph": self.net.use_graph,
        }

    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs (see the class docstring)."""
        return {
            "settings": self.settings(),
            "phi": self.phi.detach().clone(),
            "meta_optimizer": self.meta_optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "history": list(self.history),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from :meth:`state_dict`; the settings must match this trainer's. Every part
        is checked (loaded into copies) before any changes: ``ValueError`` naming the part."""
        if not isinstance(state, dict) or not {
            "settings",
            "phi",
            "meta_optimizer",
            "generator",
            "history",
        } <= set(state):
            got = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise ValueError(
                "MetaTrainer.load_state_dict expects what state_dict() returns (settings, phi, "
                f"meta_optimizer, generator, history), got {got}"
            )
        if state.get("settings") != self.settings():
            raise ValueError(
                f"the checkpoint was meta-trained with {state.get('settings')}, this run uses "
                f"{self.settings()}"
            )
        if state["phi"].shape != self.phi.shape:
            raise ValueError(
                f"phi has shape {tuple(state['phi'].shape)}, expected {tuple(self.phi.shape)}"
            )
        if not bool(torch.isfinite(state["phi"]).all()):
            raise ValueError("the checkpoint's phi holds NaN or infinite values")
        trial_optimizer = copy.deepcopy(self.meta_optimizer)
        trial_generator = torch.Generator()
        try:
            trial_optimizer.load_state_dict(state["meta_optimizer"])
            trial_generator.set_state(state["generator"])
            history = list(state["history"])
        except (ValueError, TypeError, KeyError, RuntimeError) as error:
            raise ValueError(f"the checkpoint does not fit this trainer: {error}") from None
        with torch.no_grad():
            self.phi.copy_(state["phi"])
        self.meta_optimizer.load_state_dict(state["meta_optimizer"])
        self.generator.set_state(state["generator"])
        self.history = history
        vector_to_parameters(self.phi.detach(), self.net.parameters())
