"""Strategies: how the server turns the clients' results of a round into a new global model.

A strategy configures the clients' local training (:meth:`Strategy.configure_fit`) and, after
the round, averages their models (:func:`~torchopt_edu.federated.aggregate.weighted_sum`) and
applies the average to the global model (:meth:`Strategy.apply`):

* :class:`FedAvg` (McMahan et al. 2017): the global model becomes the weighted average.
* :class:`FedProx` (Li et al. 2020): FedAvg whose clients add ``mu/2 ||w - w^t||^2`` to their loss.
* :class:`FedOpt` (Reddi et al. 2021, "Adaptive Federated Optimization", Algorithm 2): treat

      Delta^t = w^t - w_avg^{t+1}        (the pseudo-gradient)

  as the gradient of the global parameters and let a server optimizer step with it. With SGD at
  lr 1 this is FedAvg; :class:`FedAvgM` (server momentum, Hsu et al. 2019), :class:`FedAdagrad`,
  :class:`FedAdam` and :class:`FedYogi` use this package's SGD, Adagrad, Adam and Yogi. The
  server optimizer lives as long as the strategy, so its state (momentum, second moments)
  carries over from round to round. Buffers (BatchNorm statistics) take the plain average.

Every server step is checked before its result becomes the global model: a step that would
make a value NaN or infinite (finite client updates can still overflow a server optimizer)
raises :class:`ServerStepError` and leaves the model and the server optimizer's state
bit-identical; the simulation records such a round as refused.

Strategies that wrap another one (:class:`StrategyWrapper`: update clipping, differential
privacy) change the results and hand them on to the inner strategy's ``aggregate_fit``.

Default server learning rates are those that work for the digits MLP of this package
(``betas = (0.9, 0.99)``, ``tau = 1e-3`` as in Reddi et al.); like the client learning rate,
they are worth tuning per task (Reddi et al. tune both on a grid).

Reddi et al. write the adaptive updates without bias correction and with ``v_{-1} >= tau^2``.
Here the server optimizers are the package's own: FedAdam and FedYogi step with Adam's bias
correction at server step ``t = 1, 2, ...`` (the steps taken; a skipped or refused round takes
none), ``w <- w - lr m_hat / (sqrt(v_hat) + tau)`` with ``m_hat = m / (1 - b1^t)`` and
``v_hat = v / (1 - b2^t)``; ``tau`` is the optimizer's ``eps``; FedAdagrad and FedYogi start
``v`` at ``tau^2``, FedAdam at 0.

Flower's strategies of the same names (``flwr.server.strategy``, read in flwr 1.42) step
otherwise, with ``eta`` our ``lr`` and ``t`` Flower's ``server_round`` (1 in the first round,
counted whether or not a round steps):

* ``FedAdam``: ``w <- w + eta_t m / (sqrt(v) + tau)``, ``eta_t = eta sqrt(1 - b2^(t+1)) /
  (1 - b1^(t+1))``: its correction is one step ahead of Adam's, and ``tau`` is added to the
  uncorrected ``sqrt(v)`` (ours adds ``tau`` to ``sqrt(v_hat)``, i.e.
  ``tau sqrt(1 - b2^t)`` to ``sqrt(v)``). Defaults ``eta = 0.1``, ``tau = 1e-9`` (ours
  ``lr = 0.03``, ``tau = 1e-3``).
* ``FedYogi``: no bias correction, ``w <- w + eta m / (sqrt(v) + tau)``, and ``v`` starts at 0.
  Defaults ``eta = 0.01``, ``tau = 1e-3`` (ours ``lr = 0.03``, the same ``tau``).
* ``FedAdagrad``: the same update, but ``v`` starts at 0. Defaults ``eta = 0.1``,
  ``tau = 1e-9`` (ours ``lr = 0.1``, ``tau = 1e-3``).
* ``FedAvgM``: the same update; Flower's ``server_momentum`` defaults to 0 (ours 0.9).

(``w + eta m`` there is ``w - lr m`` here: Flower's ``m`` averages ``w_avg - w``, ours
``Delta = w - w_avg``.) ``tests/federated/test_fed_strategy.py`` runs Flower's strategies against
these formulas.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from torchopt_edu.federated.aggregate import State, average, first_non_finite, weighted_sum
from torchopt_edu.federated.client import ClientResult, LocalTraining, copy_state
from torchopt_edu.optim import SGD, Adagrad, Adam, Yogi
from torchopt_edu.optim._checks import check_number

ServerOptimizerFactory = Callable[[Iterable[Tensor]], Optimizer]


class ServerStepError(ValueError):
    """A server step refused, nothing changed: its result would not be finite, or the round's
    results are too few for the aggregation rule's guarantee (Krum, the trimmed mean)."""


def check_server_result(state: State, what: str) -> None:
    """Raise :class:`ServerStepError` if a floating-point tensor of ``state`` has a NaN/inf.

    ``what`` names the step in the message (``"FedAvgM's server step"``).
    """
    found = first_non_finite(state)
    if found is not None:
        name, bad = found
        raise ServerStepError(
            f"{what} refused: it would make {bad} of {state[name].numel()} values of tensor "
            f"{name!r} NaN or infinite; the global model and the server state are unchanged"
        )


def settings_repr(value: object) -> str:
    """``value``'s repr as a checkpoint records it, without a memory address: a function's or
    class's qualified name; for another object its repr, or its class's qualified name where
    that repr is object's default (``<... object at 0x...>``)."""
    name = getattr(value, "__qualname__", None)
    if isinstance(name, str):
        return name
    if type(value).__repr__ is object.__repr__:
        return type(value).__qualname__
    return repr(value)


class Strategy:
    """Base class: configure the clients, aggregate their results, update the global model.

    Subclasses implement :meth:`apply`; a strategy with another aggregation rule (a robust
    median, say) overrides :meth:`aggregate_fit`, and must then check every result itself
    (:func:`~torchopt_edu.federated.aggregate.check_update`) before it changes the model, and
    set ``aggregates_by_mean = False`` (the distributed backend then gathers the results
    instead of adding partial weighted sums). A strategy with state across rounds (a server
    optimizer, control variates) returns it from :meth:`state_dict` for checkpoints.
    """

    #: whether :meth:`aggregate_fit` is ``apply(model, weighted mean of the results)``
    aggregates_by_mean: ClassVar[bool] = True

    def configure_fit(self, train: LocalTraining) -> LocalTraining:
        """The local training the sampled clients run this round (unchanged by default)."""
        return train

    def configure_client(self, cid: int, train: LocalTraining) -> LocalTraining:
        """Client ``cid``'s local training this round, given :meth:`configure_fit`'s (unchanged
        by default; SCAFFOLD adds the client's control-variate correction)."""
        return train

    def state_dict(self) -> dict[str, Any]:
        """What the strategy carries from round to round (tensors, numbers, ``None``); empty
        for stateless strategies. Loaded by :meth:`load_state_dict`."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any], model: nn.Module) -> None:
        """Restore :meth:`state_dict`'s ``state`` for the global ``model``; ``ValueError`` if
        it does not fit (and then nothing is changed)."""
        if state:
            raise ValueError(
                f"{type(self).__name__} keeps no state, got a state with keys {sorted(state)}"
            )

    def aggregate_fit(self, model: nn.Module, results: Sequence[ClientResult]) -> None:
        """Average the results weighted by sample count and :meth:`apply` the average.

        Every result is checked against ``model`` first; a malformed one raises
        :class:`~torchopt_edu.federated.aggregate.InvalidUpdateError` naming the client, and
        the global model is left untouched.
        """
        if not results:
            raise ValueError(f"{type(self).__name__} needs at least one client result, got none")
        reference = model.state_dict()
        sums, total = weighted_sum(
            [r.state for r in results],
            [r.num_samples for r in results],
            reference,
            [r.client for r in results],
        )
        self.apply(model, average(sums, total, reference))

    def apply(self, model: nn.Module, averaged: Mapping[str, Tensor]) -> None:
        """Make ``model`` the new global model given the clients' weighted average."""
        raise NotImplementedError

    def __repr__(self) -> str:
        """The class and its settings, as a constructor call (``FedProx(mu=0.01)``). A resumed
        run must have the repr its checkpoint was saved with, so a subclass with settings lists
        them, deterministically (no memory address). Here: the class name alone."""
        return f"{type(self).__name__}()"


class FedAvg(Strategy):
    """Federated averaging: ``w^{t+1} = sum_k n_k w_k^{t+1} / sum_k n_k``.

    Reference: McMahan et al. 2017, "Communication-Efficient Learning of Deep Networks from
    Decentralized Data", Algorithm 1.
    """

    def apply(self, model: nn.Module, averaged: Mapping[str, Tensor]) -> None:
        """Load the average into ``model`` (refused if a value is not finite: a float64 mean
        can overflow the model's dtype).

        ``averaged`` has ``model``'s state-dict keys, shapes and dtypes, as
        :func:`~torchopt_edu.federated.aggregate.average` returns them from checked updates;
        so it is copied in without ``load_state_dict``'s per-module bookkeeping.
        """
        check_server_result(averaged, f"{type(self).__name__}'s server step")
        copy_state(model, averaged)


class FedProx(FedAvg):
    """FedAvg whose clients minimise ``F_k(w) + mu/2 * ||w - w^t||^2`` (``w^t``: global model).

    The proximal term limits how far a client drifts from the global model on non-IID data;
    ``mu = 0`` is FedAvg. Reference: Li et al. 2020, "Federated Optimization in Heterogeneous
    Networks" (MLSys), Eq. 2.
    """

    def __init__(self, mu: float = 0.01) -> None:
        self.mu = check_number("mu", mu, 0.0)  # finite: the interval [0, inf) is open at inf

    def configure_fit(self, train: LocalTraining) -> LocalTraining:
        """The given local training with ``proximal_mu = mu``."""
        return dataclasses.replace(train, proximal_mu=self.mu)

    def __repr__(self) -> str:
        return f"FedProx(mu={self.mu})"


class FedOpt(Strategy):
    """A server optimizer steps on the pseudo-gradient ``Delta = w^t - w_avg``.

    Args:
        server_optimizer: ``params -> Optimizer``, e.g. ``functools.partial(Adam, lr=1e-2)``;
            any ``torch.optim.Optimizer`` works. It is built on the global model's trainable
            parameters at the first round and kept, state included, for all later rounds.
            Use ``functools.partial`` or a top-level function if the strategy must be pickled
            (the distributed backend does). The repr, and with it a checkpoint's record of the
            run, lists a ``functools.partial``'s arguments; any other factory is identified by
            its qualified name only (a resumed run cannot tell two ``<lambda>`` apart).

    Each round: ``p.grad = p - averaged[name]`` for every trainable parameter, one
    ``optimizer.step()``, grads cleared; every other state-dict entry is set to the average.
    A step whose result is not finite, or that raises inside the optimizer, is undone
    (parameters and optimizer state restored to the bit) and raises :class:`ServerStepError`.

    Reference: Reddi et al. 2021, "Adaptive Federated Optimization" (ICLR), Algorithm 2.
    """

    def __init__(self, server_optimizer: ServerOptimizerFactory) -> None:
        if not callable(server_optimizer):
            raise TypeError(f"server_optimizer must be callable, got {server_optimizer!r}")
        # build it once on a placeholder so bad hyper-parameters fail here, not in round 1
        server_optimizer([nn.Parameter(torch.zeros(1))])
        self.server_optimizer = server_optimizer
        self.optimizer: Optimizer | None = None

    def apply(self, model: nn.Module, averaged: Mapping[str, Tensor]) -> None:
        """One server-optimizer step on the pseudo-gradient; buffers take the average."""
        trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
        created = self.optimizer is None
        if created:
            self.optimizer = self.server_optimizer([p for _, p in trainable])
        bound = {id(p) for group in self.optimizer.param_groups for p in group["params"]}
        if bound != {id(p) for _, p in trainable}:
            raise ValueError(
                f"{type(self).__name__}'s server optimizer holds the parameters of the model of "
                "its first round; use a new strategy for another model"
            )
        check_server_result(averaged, f"{type(self).__name__}'s average")
        before = [p.detach().clone() for _, p in trainable]
        optimizer_before = copy.deepcopy(self.optimizer.state_dict())
        with torch.no_grad():
            for name, p in trainable:
                p.grad = p - averaged[name]  # pseudo-gradient Delta
        try:
            try:
                self.optimizer.step()
            except Exception as error:  # an overflow inside the optimizer, say
                raise ServerStepError(
                    f"{type(self).__name__}'s server step failed ({type(error).__name__}: "
                    f"{error}); the global model and the server state are unchanged"
                ) from error
            finally:
                self.optimizer.zero_grad(set_to_none=True)
            check_server_result(dict(trainable), f"{type(self).__name__}'s server step")
        except ServerStepError:
            with torch.no_grad():
                for (_, p), saved in zip(trainable, before, strict=True):
                    p.copy_(saved)
            if created:
                self.optimizer = None
            else:
                self.optimizer.load_state_dict(optimizer_before)
            raise
        parameter_names = {name for name, _ in model.named_parameters(remove_duplicate=False)}
        with torch.no_grad():
            for name, tensor in model.state_dict().items():
                if name not in parameter_names:
                    tensor.copy_(averaged[name])

    def state_dict(self) -> dict[str, Any]:
        """``{"optimizer": the server optimizer's state_dict()}`` (``None`` before round 1)."""
        return {"optimizer": None if self.optimizer is None else self.optimizer.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any], model: nn.Module) -> None:
        """Restore the server optimizer (built on ``model``'s trainable parameters)."""
        if set(state) != {"optimizer"}:
            raise ValueError(
                f"{type(self).__name__} state needs key 'optimizer', got {sorted(state)}"
            )
        if state["optimizer"] is None:
            self.optimizer = None
            return
        optimizer = self.server_optimizer([p for p in model.parameters() if p.requires_grad])
        optimizer.load_state_dict(state["optimizer"])  # raises before changing anything
        self.optimizer = optimizer

    def __repr__(self) -> str:
        """``FedOpt(Adam(lr=0.01))`` for a ``functools.partial``, else ``FedOpt(factory name)``."""
        factory = self.server_optimizer
        if not isinstance(factory, functools.partial):
            return f"{type(self).__name__}({settings_repr(factory)})"
        options = [repr(value) for value in factory.args]
        options += [f"{key}={value!r}" for key, value in factory.keywords.items()]
        return f"{type(self).__name__}({settings_repr(factory.func)}({', '.join(options)}))"


class FedAvgM(FedOpt):
    """FedAvg with server momentum: ``v = beta v + Delta``, ``w = w - lr v`` (SGD with momentum).

    Reference: Hsu, Qi and Brown 2019, "Measuring the Effects of Non-Identical Data
    Distribution for Federated Visual Classification", Sec. 4. ``momentum = 0, lr = 1`` is FedAvg.
    """

    def __init__(self, lr: float = 1.0, momentum: float = 0.9) -> None:
        super().__init__(functools.partial(SGD, lr=lr, momentum=momentum))


class FedAdagrad(FedOpt):
    """Server Adagrad: ``v = v + Delta^2``, ``w = w - lr Delta / (sqrt(v) + tau)``, ``v_0 = tau^2``.

    This is plain Adagrad on the pseudo-gradient, without momentum. Reddi et al.'s Algorithm 2
    also keeps ``m = b1 m + (1-b1) Delta`` and steps with ``m`` in place of ``Delta``; that
    form equals this one for ``b1 = 0``. For server momentum, use :class:`FedAdam` or
    ``FedOpt`` with an optimizer that has it. Flower's ``FedAdagrad`` starts ``v`` at 0 (see
    the module docstring).

    Reference: Reddi et al. 2021, "Adaptive Federated Optimization", Algorithm 2.
    """

    def __init__(self, lr: float = 0.1, tau: float = 1e-3) -> None:
        tau = check_number("tau", tau, 0.0)  # named as the user wrote it, not Adagrad's eps
        super().__init__(
            functools.partial(Adagrad, lr=lr, eps=tau, initial_accumulator_value=tau**2)
        )


class FedAdam(FedOpt):
    """Server Adam on the pseudo-gradient (with Adam's bias correction, ``eps = tau``).

    ``m = b1 m + (1-b1) Delta``, ``v = b2 v + (1-b2) Delta^2``,
    ``w = w - lr * m_hat / (sqrt(v_hat) + tau)``, ``m_hat = m / (1 - b1^t)``,
    ``v_hat = v / (1 - b2^t)`` at server step ``t``. Flower's ``FedAdam`` corrects with
    ``t + 1`` and adds ``tau`` to ``sqrt(v)`` (see the module docstring).
    Reference: Reddi et al. 2021, Algorithm 2.
    """

    def __init__(
        self, lr: float = 0.03, betas: tuple[float, float] = (0.9, 0.99), tau: float = 1e-3
    ) -> None:
        tau = check_number("tau", tau, 0.0)
        super().__init__(functools.partial(Adam, lr=lr, betas=betas, eps=tau))


class FedYogi(FedOpt):
    """Server Yogi: ``v = v - (1-b2) sign(v - Delta^2) Delta^2``, ``v_0 = tau^2``, otherwise as
    :class:`FedAdam` (bias correction included). Flower's ``FedYogi`` has no bias correction
    and starts ``v`` at 0 (see the module docstring).

    Reference: Reddi et al. 2021, Algorithm 2; Yogi: Zaheer et al. 2018.
    """

    def __init__(
        self, lr: float = 0.03, betas: tuple[float, float] = (0.9, 0.99), tau: float = 1e-3
    ) -> None:
        tau = check_number("tau", tau, 0.0)
        super().__init__(
            functools.partial(Yogi, lr=lr, betas=betas, eps=tau, initial_accumulator_value=tau**2)
        )


class StrategyWrapper(Strategy):
    """A strategy that changes the clients' results and hands them to another ``strategy``.

    Subclasses override :meth:`aggregate_fit` (and call ``self.strategy.aggregate_fit``); the
    rest (local training, server step, state) is the inner strategy's. The state dict nests
    the inner one's under ``"strategy"``.
    """

    aggregates_by_mean: ClassVar[bool] = False

    def __init__(self, strategy: Strategy) -> None:
        if not isinstance(strategy, Strategy):
            raise TypeError(f"strategy must be a Strategy, got {strategy!r}")
        self.strategy = strategy

    def configure_fit(self, train: LocalTraining) -> LocalTraining:
        """The inner strategy's local training."""
        return self.strategy.configure_fit(train)

    def configure_client(self, cid: int, train: LocalTraining) -> LocalTraining:
        """The inner strategy's per-client training."""
        return self.strategy.configure_client(cid, train)

    def aggregate_fit(self, model: nn.Module, results: Sequence[ClientResult]) -> None:
        """The inner strategy's aggregation of ``results`` (override to change them first)."""
        self.strategy.aggregate_fit(model, results)

    def apply(self, model: nn.Module, averaged: Mapping[str, Tensor]) -> None:
        """The inner strategy's server step."""
        self.strategy.apply(model, averaged)

    def state_dict(self) -> dict[str, Any]:
        """``{"strategy": the inner strategy's state}``."""
        return {"strategy": self.strategy.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any], model: nn.Module) -> None:
        """Restore the inner strategy's state."""
        if set(state) != {"strategy"}:
            raise ValueError(
                f"{type(self).__name__} state needs key 'strategy', got {sorted(state)}"
            )
        self.strategy.load_state_dict(state["strategy"], model)

    def __repr__(self) -> str:
        """``Wrapper(inner strategy's repr)``; a wrapper with settings adds them."""
        return f"{type(self).__name__}({self.strategy!r})"


def nested_strategies(strategy: Strategy) -> Iterator[Strategy]:
    """``strategy`` and every strategy inside it (a wrapper's ``strategy``, a robust rule's
    ``server``), outermost first."""
    while isinstance(strategy, Strategy):
        yield strategy
        strategy = getattr(strategy, "strategy", None) or getattr(strategy, "server", None)


STRATEGIES: dict[str, Callable[..., Strategy]] = {
    "fedavg": FedAvg,
    "fedprox": FedProx,
    "fedavgm": FedAvgM,
    "fedadagrad": FedAdagrad,
    "fedadam": FedAdam,
    "fedyogi": FedYogi,
}
