"""Differential privacy for federated averaging: DP-FedAvg with Opacus's RDP accountant.

DP-FedAvg (McMahan, Ramage, Talwar and Zhang 2018, "Learning Differentially Private Recurrent
Language Models", Algorithm 1 with uniform client weights) protects each *client's* whole
contribution. In a round with the ``m`` sampled clients' updates ``u_k = w_k - w^t`` (every
floating-point state-dict entry, flattened into one vector)::

    u_k' = u_k * min(1, S / ||u_k||_2)            clip to norm S = clip_norm
    u    = (sum_k u_k' + N(0, (z S)^2 I)) / m     Gaussian noise, z = noise_multiplier

and the inner strategy takes ``w^t + u`` as the round's average: FedAvg loads it, FedAdam and
the other server optimizers step on the pseudo-gradient ``-u``. One client changes the clipped
sum by at most ``S``, so each round is the Gaussian mechanism with noise multiplier ``z``;
sampling a fraction ``q`` of the clients per round amplifies it. The privacy spent after ``T``
rounds, ``epsilon`` at a given ``delta``, is what Opacus's Rényi-DP accountant
(``opacus.accountants.RDPAccountant``, Mironov 2017; Mironov, Talwar and Zhang 2019 for the
subsampled Gaussian) reports for ``T`` steps with ``(z, q)``; the accounting is Opacus's, not
re-derived here.

What the number assumes: the accountant analyses Poisson sampling (each client joins a round
independently with probability ``q``) under add/remove-one-client adjacency.
:class:`~torchopt_edu.federated.simulation.Simulation` draws exactly ``m = round(q K)`` of the
``K`` clients without replacement, the usual stand-in for Poisson sampling in DP-FedAvg
experiments; pass ``sample_rate = m / K``. The noise is drawn from a generator seeded by
``(seed, round)``, so runs repeat exactly; a deployment would draw it from a secure source.

Needs Opacus (``pip install "torchopt-edu[fed]"``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from torchopt_edu.federated.aggregate import check_update
from torchopt_edu.federated.client import ClientResult
from torchopt_edu.federated.robust import ClipUpdates
from torchopt_edu.federated.scaffold import Scaffold
from torchopt_edu.federated.strategy import (
    FedAvg,
    Strategy,
    check_server_result,
    nested_strategies,
)
from torchopt_edu.optim._checks import check_int, check_number, check_seed


def _rdp_accountant() -> Any:
    try:
        from opacus.accountants import RDPAccountant
    except ImportError as error:
        raise ImportError(
            'DPFedAvg reports its privacy budget with Opacus: pip install "torchopt-edu[fed]"'
        ) from error
    return RDPAccountant()


@functools.cache
def _one_step_rdp(
    noise_multiplier: float, sample_rate: float, orders: tuple[float, ...]
) -> np.ndarray:
    """Opacus's RDP of one step of the subsampled Gaussian mechanism at the Rényi ``orders``."""
    from opacus.accountants.analysis.rdp import compute_rdp

    return compute_rdp(q=sample_rate, noise_multiplier=noise_multiplier, steps=1, orders=orders)


class DPFedAvg(ClipUpdates):
    """DP-FedAvg: clip each client's update to ``clip_norm``, add Gaussian noise to their sum.

    Args:
        strategy: the server step that takes the noisy average (default :class:`FedAvg`; any
            FedOpt strategy steps on it with its server optimizer).
        clip_norm: ``S``, the largest L2 norm of one client's update.
        noise_multiplier: ``z``; the noise on the sum has standard deviation ``z S`` per
            coordinate. ``0`` clips without noise (no privacy: ``epsilon`` is infinite).
        sample_rate: ``q``, the fraction of clients sampled per round (the simulation's
            ``m / K``), the accountant's amplification by sampling.
        delta: the ``delta`` at which :meth:`epsilon` and the round metrics report epsilon.
        seed: seeds the noise (with the round number).

    :meth:`aggregate_fit` returns the round's metrics (``epsilon``, ``delta``, ``clipped``: how
    many updates were longer than ``S``), which ``Simulation`` adds to the round's record.
    ``state_dict()`` holds the inner strategy's state, the round count and the accountant's
    history, so a resumed run continues the noise and the budget exactly.
    """

    def __init__(
        self,
        strategy: Strategy | None = None,
        *,
        clip_norm: float,
        noise_multiplier: float,
        sample_rate: float,
        delta: float = 1e-5,
        seed: int = 0,
    ) -> None:
        clip_norm = check_number("clip_norm", clip_norm, 0.0, open_low=True)
        super().__init__(FedAvg() if strategy is None else strategy, clip_norm)
        if any(isinstance(inner, Scaffold) for inner in nested_strategies(self.strategy)):
            raise ValueError(
                "DPFedAvg hands its strategy one noisy average, not the clients' results; "
                f"SCAFFOLD needs each client's own result for its control variates: {strategy!r}"
            )
        self.noise_multiplier = check_number("noise_multiplier", noise_multiplier, 0.0)
        self.sample_rate = check_number("sample_rate", sample_rate, 0.0, 1.0, open_low=True)
        self.delta = check_number("delta", delta, 0.0, 1.0, open_low=True, open_high=True)
        self.seed = check_seed(seed)
        self.rounds = 0
        self.accountant = _rdp_accountant()

    @property
    def clip_norm(self) -> float:
        """``S`` (the wrapped :class:`ClipUpdates`' ``max_norm``)."""
        return self.max_norm

    def noise_std(self, clients: int) -> float:
        """Standard deviation of the noise on the *average* of ``clients`` updates: ``z S / m``."""
        return self.noise_multiplier * self.clip_norm / clients

    def epsilon(self, delta: float | None = None) -> float:
        """Privacy spent so far: epsilon at ``delta`` (default: the strategy's) from Opacus's RDP
        accountant; 0 before the first round, ``inf`` without noise."""
        if delta is None:
            delta = self.delta
        delta = check_number("delta", delta, 0.0, 1.0, open_low=True, open_high=True)
        if self.rounds == 0:
            return 0.0
        if self.noise_multiplier == 0:
            return math.inf
        # RDPAccountant.get_epsilon's sum of compute_rdp(q, z, steps) = steps * rdp(q, z, 1),
        # with the one-step RDP cached: the same floats, without 0.2 s of series per round
        from opacus.accountants.analysis.rdp import get_privacy_spent

        orders = tuple(self.accountant.DEFAULT_ALPHAS)
        rdp = sum(_one_step_rdp(z, q, orders) * n for z, q, n in self.accountant.history)
        return float(get_privacy_spent(orders=list(orders), rdp=rdp, delta=delta)[0])

    def aggregate_fit(self, model: nn.Module, results: Sequence[ClientResult]) -> dict[str, Any]:
        """Clip, sum, add noise, average; hand ``w^t + u`` to the inner strategy.

        Every result is checked first (a malformed one raises ``InvalidUpdateError`` and
        nothing changes: model, noise stream and budget). Clients are equally weighted: a
        weight by sample count would let one client's update count more than ``S``.
        """
        if not results:
            raise ValueError("DPFedAvg needs at least one client result, got none")
        reference = model.state_dict()
        for result in results:
            check_update(result.state, reference, result.client)
        names = [name for name, tensor in reference.items() if tensor.is_floating_point()]
        total = {name: torch.zeros(reference[name].shape, dtype=torch.float64) for name in names}
        clipped = 0
        for result in results:
            bounded = self.clip(result, reference)
            clipped += bounded is not result
            for name in names:
                total[name] += (bounded.state[name].double() - reference[name].double()).cpu()
        generator = torch.Generator().manual_seed(
            int(np.random.SeedSequence([self.seed, self.rounds]).generate_state(1)[0])
        )
        state = dict(reference)
        for name in names:
            noise = torch.randn(total[name].shape, dtype=torch.float64, generator=generator)
            mean = (total[name] + self.noise_multiplier * self.clip_norm * noise) / len(results)
            state[name] = (reference[name].double() + mean.to(reference[name].device)).to(
                reference[name].dtype
            )
        check_server_result(state, "DPFedAvg's noisy average")  # noise past the dtype's range
        self.strategy.aggregate_fit(model, [ClientResult(-1, state, 1, {})])
        # counted only once the inner step went through: a refused step spends no budget
        self.rounds += 1
        if self.noise_multiplier > 0:
            self.accountant.step(
                noise_multiplier=self.noise_multiplier, sample_rate=self.sample_rate
            )
        return {"epsilon": self.epsilon(), "delta": self.delta, "clipped": clipped}

    def state_dict(self) -> dict[str, Any]:
        """The inner strategy's state, the rounds done and the accountant's history."""
        history = [[float(z), float(q), int(steps)] for z, q, steps in self.accountant.history]
        return {
            "strategy": self.strategy.state_dict(),
            "rounds": self.rounds,
            "accountant": history,
        }

    def load_state_dict(self, state: Mapping[str, Any], model: nn.Module) -> None:
        """Restore :meth:`state_dict`'s state; ``ValueError`` (nothing changed) if it is not one."""
        if set(state) != {"strategy", "rounds", "accountant"}:
            raise ValueError(
                "DPFedAvg state needs keys ['accountant', 'rounds', 'strategy'], got "
                f"{sorted(state)}"
            )
        rounds = check_int("rounds", state["rounds"], 0)
        history = [
            (float(z), float(q), check_int("steps", steps, 1))
            for z, q, steps in state["accountant"]
        ]
        self.strategy.load_state_dict(state["strategy"], model)
        self.rounds = rounds
        self.accountant.history = history

    def __repr__(self) -> str:
        return (
            f"DPFedAvg({self.strategy!r}, clip_norm={self.clip_norm}, "
            f"noise_multiplier={self.noise_multiplier}, sample_rate={self.sample_rate}, "
            f"delta={self.delta}, seed={self.seed})"
        )
