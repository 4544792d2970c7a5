"""Robust aggregation: strategies that a minority of malicious clients cannot steer.

Each rule replaces the weighted mean by a statistic of the ``n`` client models ``w_1..w_n``
(computed per state-dict entry in float64, unweighted as in Flower), and the result goes through
a server step (``server``, default :class:`~torchopt_edu.federated.strategy.FedAvg`: load it):

* :class:`FedMedian`: the coordinate-wise median ``w_j = median_k w_{k,j}`` (Yin et al. 2018,
  "Byzantine-Robust Distributed Learning: Towards Optimal Statistical Rates"); the mean of the
  two middle values for even ``n``, as ``np.median``.
* :class:`FedTrimmedAvg`: per coordinate, sort the ``n`` values, drop the ``floor(beta n)``
  smallest and largest, average the rest (``scipy.stats.trim_mean``'s ``proportiontocut``).
* :class:`Krum`: score each model by the sum of squared distances to its ``n - f - 2`` nearest
  others (``f`` = ``num_malicious_clients``) and take the model of lowest score (Blanchard
  et al. 2017, "Machine Learning with Adversaries: Byzantine Tolerant Gradient Descent");
  Multi-Krum (``num_clients_to_keep = m > 0``) averages the ``m`` best, weighted by sample
  count.
* :class:`ClipUpdates` wraps any strategy: each update ``u_k = w_k - w^t`` is scaled to norm at
  most ``max_norm``, ``u_k <- u_k min(1, max_norm / ||u_k||)``, before the inner strategy sees it.

Same meaning of ``beta``, ``num_malicious_clients`` and ``num_clients_to_keep`` as Flower's
``FedTrimmedAvg`` and ``Krum``, and the same global model (tested against
``flwr.server.strategy.aggregate``). Integer buffers get the statistic rounded to the nearest
integer, as in :func:`~torchopt_edu.federated.aggregate.average`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from torchopt_edu.federated.aggregate import State, average, check_update, weighted_sum
from torchopt_edu.federated.client import ClientResult, LocalTraining
from torchopt_edu.federated.strategy import FedAvg, ServerStepError, Strategy, StrategyWrapper
from torchopt_edu.optim._checks import check_int, check_number


def _stacked(states: Sequence[State], name: str) -> Tensor:
    """The ``n`` values of entry ``name`` as one float64 tensor of shape ``(n, *shape)``."""
    return torch.stack([state[name].to(torch.float64) for state in states])


def _cast_like(values: Mapping[str, Tensor], reference: State) -> dict[str, Tensor]:
    cast = {}
    for name, ref in reference.items():
        value = values[name]
        if not ref.is_floating_point():
            value = torch.round(value)
        cast[name] = value.to(ref.dtype)
    return cast


def coordinate_median(states: Sequence[State]) -> dict[str, Tensor]:
    """The coordinate-wise median of ``states`` (mean of the middle two for an even count)."""
    if not states:
        raise ValueError("the median needs at least one state, got none")
    medians = {}
    for name in states[0]:
        ordered = _stacked(states, name).sort(dim=0).values
        n = len(states)
        medians[name] = (ordered[(n - 1) // 2] + ordered[n // 2]) / 2
    return _cast_like(medians, states[0])


def trimmed_mean(states: Sequence[State], beta: float) -> dict[str, Tensor]:
    """Per coordinate, the mean of ``states`` without the ``floor(beta n)`` smallest and
    largest values; ``beta`` in ``[0, 0.5)``."""
    beta = check_number("beta", beta, 0.0, 0.5, open_high=True)
    if not states:
        raise ValueError("the trimmed mean needs at least one state, got none")
    cut = int(beta * len(states))
    means = {
        name: _stacked(states, name).sort(dim=0).values[cut : len(states) - cut].mean(dim=0)
        for name in states[0]
    }
    return _cast_like(means, states[0])


def krum_scores(states: Sequence[State], num_malicious: int) -> Tensor:
    """Krum's score of each state: the sum of its squared distances to its
    ``max(1, n - f - 2)`` nearest other states (float64, shape ``(n,)``)."""
    flat = torch.stack(
        [torch.cat([t.to(torch.float64).flatten() for t in state.values()]) for state in states]
    )
    distances = torch.stack([((flat - row) ** 2).sum(dim=1) for row in flat])
    closest = max(1, len(states) - num_malicious - 2)
    # position 0 of each sorted row is the state itself (distance 0)
    return distances.sort(dim=1).values[:, 1 : closest + 1].sum(dim=1)


class RobustStrategy(Strategy):
    """Base of the robust rules: check every result, :meth:`combine` them, let ``server``
    step to the combination (``server.apply``; default FedAvg: load it)."""

    aggregates_by_mean: ClassVar[bool] = False

    def __init__(self, server: Strategy | None = None) -> None:
        if server is not None and not isinstance(server, Strategy):
            raise TypeError(f"server must be a Strategy, got {server!r}")
        if server is not None and not server.aggregates_by_mean:
            raise ValueError(
                f"server={server!r} cannot take a robust combination: it changes or needs the "
                "clients' own results, which the robust rule has already combined (a clipping or "
                "DP wrapper would be skipped, SCAFFOLD has no client ids). Use FedAvg or a FedOpt "
                f"strategy as the server, and wrap the robust rule instead, e.g. "
                f"ClipUpdates({type(self).__name__}(), max_norm) or DPFedAvg({type(self).__name__}"
                "(), ...)"
            )
        self.server = FedAvg() if server is None else server

    def combine(self, results: Sequence[ClientResult], reference: State) -> dict[str, Tensor]:
        """The robust combination of the results' states (cast to ``reference``'s dtypes)."""
        raise NotImplementedError

    def aggregate_fit(self, model: nn.Module, results: Sequence[ClientResult]) -> None:
        """Check every result (naming a malformed one's client), combine, step."""
        if not results:
            raise ValueError(f"{type(self).__name__} needs at least one result, got none")
        reference = model.state_dict()
        for result in results:
            check_update(result.state, reference, result.client)
        self.server.apply(model, self.combine(results, reference))

    def configure_fit(self, train: LocalTraining) -> LocalTraining:
        """The server strategy's local training (FedProx's proximal term, say)."""
        return self.server.configure_fit(train)

    def configure_client(self, cid: int, train: LocalTraining) -> LocalTraining:
        """The server strategy's per-client training."""
        return self.server.configure_client(cid, train)

    def state_dict(self) -> dict[str, Any]:
        """``{"server": the server strategy's state}``."""
        return {"server": self.server.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any], model: nn.Module) -> None:
        """Restore the server strategy's state."""
        if set(state) != {"server"}:
            raise ValueError(
                f"{type(self).__name__} state needs the key 'server', got {sorted(state)}"
            )
        self.server.load_state_dict(state["server"], model)

    def _server_repr(self) -> str:
        return "" if type(self.server) is FedAvg else f", server={self.server!r}"

    def __repr__(self) -> str:
        """``Rule()``, or ``Rule(server=...)`` with a server step other than FedAvg."""
        return f"{type(self).__name__}({self._server_repr().removeprefix(', ')})"


class FedMedian(RobustStrategy):
    """The coordinate-wise median of the client models (Flower's ``FedMedian``)."""

    def combine(self, results: Sequence[ClientResult], reference: State) -> dict[str, Tensor]:
        """:func:`coordinate_median` of the states."""
        return coordinate_median([r.state for r in results])


class FedTrimmedAvg(RobustStrategy):
    """The coordinate-wise ``beta``-trimmed mean (Flower's ``FedTrimmedAvg``, same ``beta``)."""

    def __init__(self, beta: float = 0.2, server: Strategy | None = None) -> None:
        super().__init__(server)
        self.beta = check_number("beta", beta, 0.0, 0.5, open_high=True)

    def combine(self, results: Sequence[ClientResult], reference: State) -> dict[str, Tensor]:
        """:func:`trimmed_mean` of the states; :class:`ServerStepError` (the round is refused)
        if ``beta > 0`` trims nothing from this few results (the plain mean, which one attacker
        moves at will)."""
        if self.beta > 0 and int(self.beta * len(results)) == 0:
            raise ServerStepError(
                f"FedTrimmedAvg(beta={self.beta}) trims floor({self.beta} x {len(results)}) = 0 "
                f"of {len(results)} results at each end: that is the plain mean; it needs at "
                f"least {math.ceil(1 / self.beta)} results per round"
            )
        return trimmed_mean([r.state for r in results], self.beta)

    def __repr__(self) -> str:
        return f"FedTrimmedAvg(beta={self.beta}{self._server_repr()})"


class Krum(RobustStrategy):
    """Krum and Multi-Krum (Flower's ``Krum``, same ``num_malicious_clients`` ``f`` and
    ``num_clients_to_keep`` ``m``).

    ``m = 0``: the model of lowest :func:`krum_scores`; ``m > 0``: the sample-weighted mean of
    the ``m`` models of lowest score (Blanchard et al. 2017, Sec. 4 and 5).
    """

    def __init__(
        self,
        num_malicious_clients: int = 0,
        num_clients_to_keep: int = 0,
        server: Strategy | None = None,
    ) -> None:
        super().__init__(server)
        self.num_malicious_clients = check_int("num_malicious_clients", num_malicious_clients, 0)
        self.num_clients_to_keep = check_int("num_clients_to_keep", num_clients_to_keep, 0)

    def select(self, results: Sequence[ClientResult]) -> list[int]:
        """Positions of the chosen results (one for Krum, ``m`` for Multi-Krum);
        :class:`ServerStepError` (the round is refused) unless there are more than ``2 f + 2``
        results, the bound under which Krum tolerates ``f`` attackers (with fewer it can pick an
        attacker's model)."""
        f = self.num_malicious_clients
        if f > 0 and len(results) <= 2 * f + 2:
            raise ServerStepError(
                f"Krum with num_malicious_clients={f} needs more than {2 * f + 2} results to "
                f"tolerate them, got {len(results)}"
            )
        scores = krum_scores([r.state for r in results], self.num_malicious_clients)
        if self.num_clients_to_keep > len(results):
            raise ValueError(
                f"num_clients_to_keep={self.num_clients_to_keep} but only {len(results)} results"
            )
        if self.num_clients_to_keep == 0:
            return [int(scores.argmin())]
        return scores.argsort(stable=True)[: self.num_clients_to_keep].tolist()

    def combine(self, results: Sequence[ClientResult], reference: State) -> dict[str, Tensor]:
        """The chosen model (Krum) or the weighted mean of the chosen (Multi-Krum)."""
        chosen = [results[i] for i in self.select(results)]
        if self.num_clients_to_keep == 0:
            return {name: tensor.clone() for name, tensor in chosen[0].state.items()}
        sums, total = weighted_sum(
            [r.state for r in chosen], [r.num_samples for r in chosen], reference
        )
        return average(sums, total, reference)

    def __repr__(self) -> str:
        return (
            f"Krum(num_malicious_clients={self.num_malicious_clients}, "
            f"num_clients_to_keep={self.num_clients_to_keep}{self._server_repr()})"
        )


class ClipUpdates(StrategyWrapper):
    """Scale each update ``u_k = w_k - w^t`` to norm at most ``max_norm``, then hand the results
    to ``strategy`` (any strategy, robust or not).

    ``u_k <- u_k * min(1, max_norm / ||u_k||_2)``, the norm over all floating-point entries
    of the state dict. Bounds what one client can move the global model by (a scaling
    attack's boosted update), and the sensitivity that differential privacy needs.
    """

    def __init__(self, strategy: Strategy, max_norm: float) -> None:
        super().__init__(strategy)
        self.max_norm = check_number("max_norm", max_norm, 0.0, open_low=True)

    def aggregate_fit(self, model: nn.Module, results: Sequence[ClientResult]) -> None:
        """Clip every (checked) update, then the inner strategy's aggregation."""
        reference = model.state_dict()
        clipped = []
        for result in results:
            check_update(result.state, reference, result.client)
            clipped.append(self.clip(result, reference))
        self.strategy.aggregate_fit(model, clipped)

    def clip(self, result: ClientResult, reference: State) -> ClientResult:
        """``result`` with its update clipped to ``max_norm`` (unchanged if already within)."""
        names = [name for name, tensor in reference.items() if tensor.is_floating_point()]
        updates = {name: result.state[name].double() - reference[name].double() for name in names}
        norm = math.sqrt(sum(float(u.square().sum()) for u in updates.values()))
        if norm <= self.max_norm:
            return result
        factor = self.max_norm / norm
        state = dict(result.state)
        for name, u in updates.items():
            state[name] = (reference[name].double() + factor * u).to(reference[name].dtype)
        return ClientResult(result.client, state, result.num_samples, dict(result.metrics))

    def __repr__(self) -> str:
        return f"ClipUpdates({self.strategy!r}, max_norm={self.max_norm})"
