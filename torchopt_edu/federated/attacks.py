"""Simulated attacks: a chosen fraction of the clients is malicious.

The attackers are ``round(fraction * K)`` clients drawn once from ``seed`` (the same in every
round, as a compromised device stays compromised). Model-poisoning attacks replace an
attacker's honest update ``u = w_k - w^t`` (its trained model minus the global model) before it
is sent; data poisoning changes what it trains on:

* ``"sign_flip"``: ``u -> -scale * u`` (default ``scale = 4``: with 20% attackers the plain
  mean of the updates is then ``0.8 u - 0.8 u = 0``, and FedAvg stands still);
* ``"scaling"``: ``u -> scale * u`` (a boosted update; default ``scale = 20``);
* ``"gaussian"``: ``u -> N(0, scale^2)`` per coordinate, the honest update discarded
  (default ``scale = 1``);
* ``"label_flip"``: the attacker trains on labels ``y -> C - 1 - y`` (``C = num_classes``).

Reference for the threat model and the robust aggregators it is meant to test: Blanchard et
al. 2017, "Machine Learning with Adversaries: Byzantine Tolerant Gradient Descent" (NeurIPS).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from torchopt_edu.federated.client import Client
from torchopt_edu.optim._checks import check_int, check_number

ATTACKS = ("sign_flip", "scaling", "gaussian", "label_flip")
DEFAULT_SCALE = {"sign_flip": 4.0, "scaling": 20.0, "gaussian": 1.0, "label_flip": math.nan}


@dataclass(frozen=True)
class Attack:
    """``kind`` (one of :data:`ATTACKS`) from a ``fraction`` of the clients.

    Attributes:
        kind: ``"sign_flip"``, ``"scaling"``, ``"gaussian"`` or ``"label_flip"``.
        fraction: the share of malicious clients, in ``[0, 1]``.
        scale: the attack's strength (see the module docstring); ``None`` for its default.
        num_classes: ``C`` for label flipping.
    """

    kind: str
    fraction: float = 0.2
    scale: float | None = None
    num_classes: int = 10

    def __post_init__(self) -> None:
        if self.kind not in ATTACKS:
            raise ValueError(f"kind must be one of {ATTACKS}, got {self.kind!r}")
        object.__setattr__(self, "fraction", check_number("fraction", self.fraction, 0.0, 1.0))
        scale = DEFAULT_SCALE[self.kind] if self.scale is None else self.scale
        if self.kind != "label_flip":
            scale = check_number("scale", scale, 0.0, open_low=True)
        object.__setattr__(self, "scale", scale)
        object.__setattr__(self, "num_classes", check_int("num_classes", self.num_classes, 2))

    def attackers(self, num_clients: int, seed: int) -> frozenset[int]:
        """The ids of the ``round(fraction * num_clients)`` malicious clients for ``seed``."""
        count = round(self.fraction * num_clients)
        chosen = np.random.default_rng([seed, 0xA77AC]).choice(num_clients, count, replace=False)
        return frozenset(int(k) for k in chosen)

    def poison_client(self, client: Client) -> Client:
        """The client an attacker trains as: labels flipped for ``"label_flip"``, else itself."""
        if self.kind != "label_flip":
            return client
        labels = client.labels
        if bool((labels < 0).any() | (labels >= self.num_classes).any()):
            raise ValueError(
                f"client {client.cid}: labels must lie in [0, {self.num_classes}) to be flipped"
            )
        return Client(client.cid, client.features, self.num_classes - 1 - labels)

    def poison_update(
        self, update: Mapping[str, Tensor], generator: torch.Generator
    ) -> dict[str, Tensor]:
        """The update the attacker sends instead of its honest ``update`` (floating-point
        tensors only; others pass unchanged). ``generator`` draws the Gaussian noise."""
        scale = float(self.scale)  # type: ignore[arg-type]
        poisoned = {}
        for name, u in update.items():
            if not u.is_floating_point() or self.kind == "label_flip":
                poisoned[name] = u
            elif self.kind == "sign_flip":
                poisoned[name] = -scale * u
            elif self.kind == "scaling":
                poisoned[name] = scale * u
            else:  # gaussian
                noise = torch.randn(u.shape, generator=generator, dtype=u.dtype, device="cpu")
                poisoned[name] = scale * noise.to(u.device)
        return poisoned
