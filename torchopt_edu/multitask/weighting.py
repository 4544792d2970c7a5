"""Loss weighting: turn T task losses into one scalar to back-propagate.

Every weighting is an ``nn.Module`` called as ``total = weighting(losses)`` with ``losses`` a
sequence of T scalar losses (or a mapping ``name -> loss``, read in order), followed by an
ordinary ``total.backward()`` and ``optimizer.step()``. ``weighting.weights`` gives the
current task weights for logging.

Two methods learn parameters of their own (uncertainty weighting's log-variances, GradNorm's
weights). Hand them to the optimizer next to the model's, in one group or in their own::

    optimizer = Adam([{"params": model.parameters()},
                      {"params": weighting.parameters(), "lr": 0.025}])
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
from torch import Tensor, nn

from torchopt_edu.multitask._losses import TaskLosses, check_task_losses


def _first_not_positive(losses: Tensor) -> int | None:
    """The index of the first loss that is not > 0 (NaN included), or ``None``."""
    bad = torch.nonzero(~(losses.detach() > 0)).flatten()
    return int(bad[0]) if bad.numel() else None


class LossWeighting(nn.Module):
    """Base class: validates the losses, then ``combine(losses: Tensor[T]) -> Tensor[]``.

    A subclass defines ``combine`` (its formula) and ``weights``; GradNorm overrides
    ``forward`` instead, because it needs each loss's own graph, not the stacked vector's.
    """

    def __init__(self, num_tasks: int) -> None:
        super().__init__()
        if not isinstance(num_tasks, int) or num_tasks < 2:
            raise ValueError(f"num_tasks must be an int >= 2, got {num_tasks!r}")
        self.num_tasks = num_tasks

    def forward(self, losses: TaskLosses) -> Tensor:
        """The total loss to back-propagate; raises ``ValueError`` on a bad list of losses."""
        _, values = check_task_losses(losses, self.num_tasks)
        return self.combine(torch.stack(values))

    def combine(self, losses: Tensor) -> Tensor:
        """The method's formula on the validated losses ``[T]``."""
        raise NotImplementedError

    @property
    def weights(self) -> Tensor:
        """The task weights the next call will use, detached, ``[T]``."""
        raise NotImplementedError


class FixedWeighting(LossWeighting):
    """Fixed weights: ``L = sum_i w_i L_i``.

    The source document's ``alpha * L_cls + (1 - alpha) * L_reg`` with ``alpha = 0.5`` is
    ``FixedWeighting([0.5, 0.5])``. Simple, and right when the losses have similar scales;
    otherwise the weights need tuning by hand.
    """

    def __init__(self, weights: Sequence[float]) -> None:
        values = torch.as_tensor(list(weights), dtype=torch.float32)
        super().__init__(len(values))
        if not bool(torch.isfinite(values).all()) or bool((values < 0).any()):
            raise ValueError(f"weights must be finite and >= 0, got {list(weights)}")
        if not bool((values > 0).any()):
            raise ValueError(
                f"at least one weight must be > 0 (all 0 trains nothing), got {list(weights)}"
            )
        self.register_buffer("task_weights", values)

    def combine(self, losses: Tensor) -> Tensor:
        """``sum_i w_i L_i`` with the fixed weights."""
        return (self.task_weights.to(losses) * losses).sum()

    @property
    def weights(self) -> Tensor:
        """The weights ``w_i`` (a copy)."""
        return self.task_weights.clone()


class UncertaintyWeighting(LossWeighting):
    """Homoscedastic uncertainty weighting (Kendall, Gal and Cipolla, 2018, arXiv:1705.07115).

    Each task has a learned log-variance ``s_i = log sigma_i^2`` (initialised to 0) and::

        L = sum_i  c_i exp(-s_i) L_i + s_i / 2,   c_i = 1/2 (regression), 1 (classification)

    that is ``L_i / (2 sigma_i^2) + log sigma_i`` for a Gaussian likelihood (their eq. 7) and
    ``L_i / sigma_i^2 + log sigma_i`` for a softmax one (eq. 10). For a fixed loss the optimum
    is ``sigma_i^2 = 2 c_i L_i``: noisy, high-loss tasks are down-weighted, and the ``s_i / 2``
    term stops every weight from collapsing to zero. The ``s_i`` are parameters of this module:
    give ``weighting.parameters()`` to the optimizer.
    """

    def __init__(self, kinds: Sequence[str]) -> None:
        kinds = list(kinds)
        super().__init__(len(kinds))
        unknown = [kind for kind in kinds if kind not in ("classification", "regression")]
        if unknown:
            raise ValueError(f"kinds must be 'classification' or 'regression', got {unknown}")
        self.register_buffer(
            "scale", torch.tensor([1.0 if kind == "classification" else 0.5 for kind in kinds])
        )
        self.log_variance = nn.Parameter(torch.zeros(len(kinds)))

    def combine(self, losses: Tensor) -> Tensor:
        """``sum_i c_i exp(-s_i) L_i + s_i / 2`` with the learned log-variances ``s_i``."""
        precision = torch.exp(-self.log_variance)
        return (self.scale * precision * losses + 0.5 * self.log_variance).sum()

    @property
    def weights(self) -> Tensor:
        """The effective loss weights ``c_i exp(-s_i)``, detached."""
        return (self.scale * torch.exp(-self.log_variance)).detach()


class DynamicWeightAverage(LossWeighting):
    """Dynamic Weight Average (Liu, Johns and Davison, 2019, arXiv:1803.10704, eq. 7).

    Tasks whose loss falls slowly get more weight::

        r_i(t-1) = L_i(t-1) / L_i(t-2)
        w_i(t)   = T exp(r_i(t-1) / temperature) / sum_j exp(r_j(t-1) / temperature)

    where ``L_i(t)`` is task i's mean loss over period ``t``, ``period`` calls long (the paper
    uses one epoch; the default, 1, is per step). During the first two periods ``w_i = 1``.
    """

    def __init__(self, num_tasks: int, temperature: float = 2.0, period: int = 1) -> None:
        super().__init__(num_tasks)
        if not 0 < temperature < math.inf:
            raise ValueError(f"temperature must be finite and > 0, got {temperature}")
        if not isinstance(period, int) or period < 1:
            raise ValueError(f"period must be an int >= 1, got {period!r}")
        self.temperature = temperature
        self.period = period
        self.register_buffer("task_weights", torch.ones(num_tasks))
        self.register_buffer("period_sum", torch.zeros(num_tasks))
        self.register_buffer("previous_means", torch.zeros(2, num_tasks))  # L(t-2), L(t-1)
        self.calls = 0
        self.periods_done = 0

    def combine(self, losses: Tensor) -> Tensor:
        """``sum_i w_i L_i`` with the current period's weights; records the losses, which must
        be positive (``ValueError`` naming the task, nothing recorded): the next weights divide
        by them."""
        task = _first_not_positive(losses)
        if task is not None:
            raise ValueError(
                f"DynamicWeightAverage divides each task's loss by its previous one, so losses "
                f"must be > 0: task {task} has loss {float(losses[task])}"
            )
        total = (self.task_weights.to(losses) * losses).sum()
        self.period_sum += losses.detach().to(self.period_sum)
        self.calls += 1
        if self.calls % self.period == 0:
            self._end_period()
        return total

    def _end_period(self) -> None:
        means = self.period_sum / self.period
        self.previous_means = torch.stack([self.previous_means[1], means])
        self.period_sum.zero_()
        self.periods_done += 1
        if self.periods_done >= 2:
            tiny = torch.finfo(means.dtype).tiny
            ratio = self.previous_means[1] / self.previous_means[0].clamp_min(tiny)
            self.task_weights = self.num_tasks * torch.softmax(ratio / self.temperature, dim=0)

    @property
    def weights(self) -> Tensor:
        """The weights ``w_i`` (a copy)."""
        return self.task_weights.clone()

    def get_extra_state(self) -> dict[str, int]:
        """Counters saved in ``state_dict()`` so a resumed run continues the same periods."""
        return {"calls": self.calls, "periods_done": self.periods_done}

    def set_extra_state(self, state: dict[str, int]) -> None:
        """Restore the counters of :meth:`get_extra_state`."""
        self.calls, self.periods_done = int(state["calls"]), int(state["periods_done"])


class GradNorm(LossWeighting):
    """GradNorm (Chen, Badrinarayanan, Lee and Rabinovich, 2018, arXiv:1711.02257).

    Learns weights ``w_i`` so that every task trains at a similar rate. With ``W`` the last
    shared layer's parameters::

        G_i = ||grad_W w_i L_i|| = w_i ||grad_W L_i||     (gradient norm of each weighted task)
        r_i = (L_i / L_i(0)) / mean_j (L_j / L_j(0))     (relative inverse training rate)
        L_grad = sum_i | G_i - mean_j(G_j) * r_i^alpha |  (target held constant)

    The call returns ``sum_i w_i L_i + L_grad`` with ``w`` detached in the first term, so one
    ``backward()`` gives the network the gradient of the weighted loss and gives ``w`` only the
    gradient of ``L_grad``, as the paper prescribes. Because ``G_i`` is linear in ``w_i``, the
    norms ``||grad_W L_i||`` need one first-order backward per task through the heads and the
    last shared layer only, and no double backward. Before each call the weights are
    renormalised to ``sum_i w_i = T`` (and kept positive). ``alpha`` sets how strongly slow tasks
    are pushed (1.5 in the paper's NYUv2 runs). Give ``weighting.parameters()`` to the optimizer.
    """

    def __init__(
        self, num_tasks: int, shared_parameters: Iterable[Tensor], alpha: float = 1.5
    ) -> None:
        super().__init__(num_tasks)
        self.shared = list(shared_parameters)
        usable = all(isinstance(p, Tensor) and p.requires_grad for p in self.shared)
        if not (self.shared and usable):
            raise ValueError("shared_parameters must be a non-empty list of tensors requiring grad")
        if not 0 <= alpha < math.inf:
            raise ValueError(f"alpha must be finite and >= 0, got {alpha}")
        self.alpha = alpha
        self.task_weights = nn.Parameter(torch.ones(num_tasks))
        self.register_buffer("initial_losses", torch.zeros(num_tasks))
        self.started = False

    def _gradient_norms(self, labels: list[str], losses: list[Tensor]) -> Tensor:
        norms = []
        for label, loss in zip(labels, losses, strict=True):
            # Each loss on its own (not an entry of a stack), so the pass only visits its head.
            grads = torch.autograd.grad(loss, self.shared, retain_graph=True, allow_unused=True)
            if all(grad is None for grad in grads):
                raise ValueError(f"loss of task {label} does not depend on the shared parameters")
            norms.append(torch.cat([g.reshape(-1) for g in grads if g is not None]).norm())
        return torch.stack(norms).detach()

    def forward(self, losses: TaskLosses) -> Tensor:
        """``sum_i w_i L_i`` (w detached) plus the balancing loss ``L_grad`` (w only)."""
        labels, values = check_task_losses(losses, self.num_tasks)
        losses = torch.stack(values)
        task = None if self.started else _first_not_positive(losses)
        if task is not None:
            raise ValueError(
                f"GradNorm divides each loss by its first value L_i(0), so the first losses "
                f"must be > 0: task {labels[task]} has {float(losses[task])}"
            )
        gradient_norms = self._gradient_norms(labels, values)  # may raise: nothing changed yet
        if not self.started:
            self.initial_losses = losses.detach().to(self.initial_losses).clone()
            self.started = True
        with torch.no_grad():
            # The paper renormalises after every update; doing it before use is the same.
            self.task_weights.clamp_(min=torch.finfo(self.task_weights.dtype).eps)
            self.task_weights.mul_(self.num_tasks / self.task_weights.sum())
        weights = self.task_weights.to(losses)
        weighted_norms = weights * gradient_norms
        loss_ratio = losses.detach() / self.initial_losses.to(losses).clamp_min(
            torch.finfo(losses.dtype).tiny
        )
        inverse_rate = loss_ratio / loss_ratio.mean()
        target = (weighted_norms.mean() * inverse_rate**self.alpha).detach()
        balance = (weighted_norms - target).abs().sum()
        return (weights.detach() * losses).sum() + balance

    def get_extra_state(self) -> dict[str, bool]:
        """Whether ``L_i(0)`` has been recorded, saved in ``state_dict()``."""
        return {"started": self.started}

    def set_extra_state(self, state: dict[str, bool]) -> None:
        """Restore the flag of :meth:`get_extra_state`."""
        self.started = bool(state["started"])

    @property
    def weights(self) -> Tensor:
        """The weights renormalised to sum to the number of tasks, detached."""
        weights = self.task_weights.detach().clamp(min=torch.finfo(self.task_weights.dtype).eps)
        return weights * self.num_tasks / weights.sum()
