"""Simulated faults: clients that drop out, stragglers cut by a deadline, too few replies.

Every fault is drawn from ``(seed, round, client)`` alone, so a round's faults do not depend
on the order (or the process) in which clients train, and a resumed run sees the same ones.

* Dropout: each sampled client fails to reply with probability ``dropout``.
* Stragglers: client ``k`` has a fixed slowness ``s_k ~ LogNormal(0, slowness_sigma)`` (drawn
  once); its local training takes ``s_k * K_k`` time units, where ``K_k = E * ceil(n_k / B)``
  is its number of local steps (one unit: a step of a client of slowness 1). A client whose
  time exceeds ``deadline`` units is cut: the server does not wait for it, so it does not
  train (the simulation spends nothing on it).
* ``min_replies``: a round in which fewer updates arrive (after dropout, the deadline, failed
  clients and rejected updates) is skipped: the global model is left as it was and the round
  is recorded with the reason.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from torchopt_edu.optim._checks import check_int, check_number


@dataclass(frozen=True)
class Faults:
    """Client dropout, a deadline for stragglers and a minimum number of replies per round.

    Attributes:
        dropout: probability in ``[0, 1)`` that a sampled client does not reply.
        deadline: time units the server waits (see the module docstring); ``None``: forever.
        slowness_sigma: spread ``sigma >= 0`` of the clients' log-normal slowness.
        min_replies: fewer accepted updates than this (>= 1) and the round is skipped.
    """

    dropout: float = 0.0
    deadline: float | None = None
    slowness_sigma: float = 0.5
    min_replies: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "dropout", check_number("dropout", self.dropout, 0.0, 1.0, open_high=True)
        )
        if self.deadline is not None:
            deadline = check_number("deadline", self.deadline, 0.0, open_low=True)
            object.__setattr__(self, "deadline", deadline)
        object.__setattr__(
            self, "slowness_sigma", check_number("slowness_sigma", self.slowness_sigma, 0.0)
        )
        object.__setattr__(self, "min_replies", check_int("min_replies", self.min_replies, 1))

    def slowness(self, num_clients: int, seed: int) -> np.ndarray:
        """Each client's fixed slowness ``s_k`` for ``seed``."""
        rng = np.random.default_rng([seed, 0x510])
        return rng.lognormal(0.0, self.slowness_sigma, num_clients)

    def split(
        self,
        sampled: Sequence[int],
        steps: Sequence[int],
        slowness: np.ndarray,
        seed: int,
        round_: int,
    ) -> tuple[list[int], list[int], list[int]]:
        """``(replying, dropped, late)`` among the ``sampled`` clients of round ``round_``,
        given each one's number of local ``steps``."""
        coins = np.random.default_rng([seed, round_, 0xD20]).random(len(sampled))
        replying, dropped, late = [], [], []
        for cid, coin, count in zip(sampled, coins, steps, strict=True):
            if coin < self.dropout:
                dropped.append(cid)
            elif self.deadline is not None and slowness[cid] * count > self.deadline:
                late.append(cid)
            else:
                replying.append(cid)
        return replying, dropped, late


def local_steps(num_samples: int, epochs: int, batch_size: int) -> int:
    """``K = E * ceil(n / B)``: a client's local steps in a round."""
    return epochs * math.ceil(num_samples / batch_size)
