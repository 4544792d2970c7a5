"""SCAFFOLD: control variates that correct the clients' drift on heterogeneous data.

Karimireddy et al. 2020, "SCAFFOLD: Stochastic Controlled Averaging for Federated Learning"
(ICML), Algorithm 1 with option II. The server keeps a control variate ``c`` and one ``c_k``
per client (all zero at first); ``x`` is the global model, ``eta`` the clients' learning rate,
``eta_g`` the server's. Client ``k`` of the sampled set ``S`` runs ``K`` local steps

    y <- y - eta (g_k(y) - c_k + c)

(:class:`~torchopt_edu.federated.client.LocalTraining`'s ``gradient_correction = c - c_k``),
then

    c_k+ = c_k - c + (x - y_k) / (K eta)          (option II)

and the server, with ``N`` clients in all,

    x <- x + eta_g / |S| sum_{k in S} (y_k - x)
    c <- c + 1 / N sum_{k in S} (c_k+ - c_k)

``K eta`` is the client's ``lr_sum`` metric (the sum of its learning rate over its steps, so a
schedule works too); option II assumes plain SGD on the clients. Buffers (BatchNorm
statistics) take the sample-weighted mean. Flower has no built-in SCAFFOLD.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from torchopt_edu.federated.aggregate import average, check_update, weighted_sum
from torchopt_edu.federated.client import ClientResult, LocalTraining
from torchopt_edu.federated.strategy import Strategy, check_server_result
from torchopt_edu.optim._checks import check_int, check_number

Controls = dict[str, Tensor]


class Scaffold(Strategy):
    """SCAFFOLD with server learning rate ``lr`` (``eta_g``, default 1) over ``num_clients``
    clients (``N``). The control variates are the strategy's state (:meth:`state_dict`)."""

    aggregates_by_mean: ClassVar[bool] = False

    def __init__(self, num_clients: int, lr: float = 1.0) -> None:
        self.num_clients = check_int("num_clients", num_clients, 1)
        self.lr = check_number("lr", lr, 0.0, open_low=True)
        self.control: Controls | None = None  # c, per trainable parameter name
        self.client_controls: dict[int, Controls] = {}  # c_k of the clients seen so far

    def configure_client(self, cid: int, train: LocalTraining) -> LocalTraining:
        """``train`` with ``gradient_correction = c - c_k`` (unchanged while ``c = c_k = 0``)."""
        if self.control is None:
            return train
        own = self.client_controls.get(cid)
        correction = tuple(c if own is None else c - own[name] for name, c in self.control.items())
        return dataclasses.replace(train, gradient_correction=correction)

    def aggregate_fit(self, model: nn.Module, results: Sequence[ClientResult]) -> None:
        """The server update of ``x`` and ``c`` from the sampled clients' models ``y_k``."""
        if not results:
            raise ValueError("Scaffold needs at least one result, got none")
        reference = model.state_dict()
        for result in results:
            check_update(result.state, reference, result.client)
        for result in results:
            if result.client >= self.num_clients or result.client < 0:
                raise ValueError(
                    f"client {result.client}: id outside 0..{self.num_clients - 1} "
                    "(Scaffold's num_clients)"
                )
        trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
        control = self.control or {name: torch.zeros_like(p) for name, p in trainable.items()}
        step = {name: torch.zeros_like(p, dtype=torch.float64) for name, p in trainable.items()}
        control_step = {name: torch.zeros_like(p) for name, p in trainable.items()}
        new_controls = {}
        for result in results:
            own = self.client_controls.get(result.client)
            lr_sum = float(result.metrics["lr_sum"])
            if not lr_sum > 0:
                raise ValueError(f"client {result.client}: lr_sum must be > 0, got {lr_sum}")
            updated = {}
            for name, x in trainable.items():
                y = result.state[name]
                c_k = torch.zeros_like(x) if own is None else own[name]
                updated[name] = c_k - control[name] + (x.detach() - y) / lr_sum  # option II
                control_step[name] += updated[name] - c_k
                step[name] += y.double() - x.detach().double()
            new_controls[result.client] = updated
        count = len(results)
        new_params = {
            name: (x.detach().double() + self.lr * step[name] / count).to(x.dtype)
            for name, x in trainable.items()
        }
        new_control = {
            name: control[name] + control_step[name] / self.num_clients for name in trainable
        }
        check_server_result(new_params, "Scaffold's server step")
        check_server_result(new_control, "Scaffold's control-variate update")
        sums, total = weighted_sum(
            [r.state for r in results], [r.num_samples for r in results], reference
        )
        averaged = average(sums, total, reference)
        with torch.no_grad():
            for name, tensor in reference.items():
                tensor.copy_(new_params[name] if name in new_params else averaged[name])
        self.control = new_control
        self.client_controls.update(new_controls)

    def state_dict(self) -> dict[str, Any]:
        """``{"control": c or None, "clients": {k: c_k}}``."""
        return {"control": self.control, "clients": self.client_controls}

    def load_state_dict(self, state: Mapping[str, Any], model: nn.Module) -> None:
        """Restore ``c`` and the ``c_k``, checked against ``model``'s trainable parameters."""
        if set(state) != {"control", "clients"}:
            raise ValueError(
                f"Scaffold state needs the keys 'control', 'clients', got {sorted(state)}"
            )
        shapes = {name: p.shape for name, p in model.named_parameters() if p.requires_grad}
        controls = [state["control"]] if state["control"] is not None else []
        controls += list(state["clients"].values())
        for controls_ in controls:
            got = {name: tuple(t.shape) for name, t in controls_.items()}
            if got != {name: tuple(shape) for name, shape in shapes.items()}:
                raise ValueError(f"Scaffold control variates {got} do not fit the model {shapes}")
        self.control = None if state["control"] is None else dict(state["control"])
        self.client_controls = {int(k): dict(v) for k, v in state["clients"].items()}

    def __repr__(self) -> str:
        return f"Scaffold(num_clients={self.num_clients}, lr={self.lr})"
