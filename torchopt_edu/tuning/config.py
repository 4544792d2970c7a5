"""An optimizer configuration found by a search, and the names it is built from.

:class:`OptimizerConfig` is what a trial tries and what :func:`~torchopt_edu.tuning.tune` returns:
an optimizer name, its keyword arguments, and an optional learning-rate schedule. It is plain data
(it round-trips through JSON, which is how trials store it) and builds real objects:
``config.build(model.parameters())`` and ``config.build_scheduler(optimizer, total_steps)``.

Optimizer names: ours by their key in ``torchopt_edu.optim.OPTIMIZERS`` (``"adam"``), torch's by
their full name (``"torch.optim.Adam"``).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor
from torch.optim import Optimizer
from torch.optim.lr_scheduler import CosineAnnealingLR, ExponentialLR, LRScheduler, StepLR

from torchopt_edu import lr_scheduler
from torchopt_edu.optim import resolve_optimizer

CONSTANT_SCHEDULE = "constant"
"""The schedule name meaning "no schedule": the learning rate stays where the optimizer set it."""


LR_FACTOR = "lr_factor"
"""Hyper-parameter of schedules with an ``lr_argument``: that argument is ``lr_factor * lr``."""


@dataclass(frozen=True)
class Schedule:
    """A learning-rate schedule a search can choose, and how a run fills in its arguments.

    A search cannot know a run's length or learning rate in advance, so arguments measured in
    them are filled in when the scheduler is built rather than searched:

    Attributes:
        scheduler: the ``LRScheduler`` subclass; built as ``scheduler(optimizer, **arguments)``.
        total_steps_argument: receives the run's number of scheduler steps (cosine's ``T_max``).
        lr_argument: receives ``lr_factor * lr``, ``lr`` being the optimizer's (first group's)
            learning rate and ``lr_factor`` a hyper-parameter of the schedule (default 1): the
            peak of one-cycle is the tuned learning rate, the top of a cycle a multiple of it.
        needs_metric: ``step(metric)`` takes the validation value (reduce-on-plateau).
        fraction_arguments: hyper-parameter -> argument: a fraction ``f`` in ``[0, 1)`` of the
            run that fills the argument as ``floor(f * total_steps)`` steps, so the searched
            warm-up fits runs of any length (``{"warmup_fraction": "warmup_steps"}``).
    """

    scheduler: type[LRScheduler]
    total_steps_argument: str | None = None
    lr_argument: str | None = None
    needs_metric: bool = False
    fraction_arguments: Mapping[str, str] = field(default_factory=dict)


SCHEDULES: dict[str, Schedule] = {
    # torch.optim.lr_scheduler
    "step": Schedule(StepLR),  # lr * gamma^(t // step_size)
    "exponential": Schedule(ExponentialLR),  # lr * gamma^t
    "cosine": Schedule(CosineAnnealingLR, total_steps_argument="T_max"),
    # torchopt_edu.lr_scheduler
    "step_decay": Schedule(lr_scheduler.StepDecay),
    "exponential_decay": Schedule(lr_scheduler.ExponentialDecay),
    "warmup_cosine": Schedule(
        lr_scheduler.WarmupCosine,
        total_steps_argument="total_steps",
        fraction_arguments={"warmup_fraction": "warmup_steps"},
    ),
    "one_cycle": Schedule(
        lr_scheduler.OneCycleLR, total_steps_argument="total_steps", lr_argument="max_lr"
    ),
    "cyclic": Schedule(lr_scheduler.CyclicLR, lr_argument="max_lr"),
    "plateau": Schedule(lr_scheduler.ReduceLROnPlateau, needs_metric=True),
}
"""Schedules by name; ``"constant"`` (no schedule) is always available besides these."""


def optimizer_class(name: str) -> type[Optimizer]:
    """The optimizer class called ``name``: ours by key, torch's as ``"torch.optim.<Name>"``.

    The package's one resolver, :func:`torchopt_edu.optim.resolve_optimizer` (any case).

    Raises:
        ValueError: ``name`` is neither, naming it and listing the valid names.
    """
    return resolve_optimizer(name)


def schedule_entry(name: str) -> Schedule | None:
    """The :class:`Schedule` called ``name``, or ``None`` for ``"constant"``.

    Raises:
        ValueError: unknown ``name``, naming it and listing the valid names.
    """
    if name == CONSTANT_SCHEDULE:
        return None
    if name not in SCHEDULES:
        raise ValueError(
            f"unknown schedule {name!r}: use one of {[CONSTANT_SCHEDULE, *sorted(SCHEDULES)]}"
        )
    return SCHEDULES[name]


def check_arguments(
    cls: type,
    arguments: Iterable[str],
    *,
    owner: str,
    reserved: Iterable[str | None] = (),
    extra: Iterable[str] = (),
) -> None:
    """Check that ``cls(first, **{a: ... for a in arguments})`` would accept every argument name.

    ``reserved`` names (a run-length argument, say) are filled in when the object is built and may
    not appear in ``arguments``, nor may the first argument (the parameters or the optimizer).
    ``extra`` names are accepted although ``cls`` does not take them (``lr_factor``).

    Raises:
        ValueError: naming the first argument ``cls`` does not take, and those it does.
    """
    signature = inspect.signature(cls.__init__)
    keywords = [
        parameter.name
        for parameter in list(signature.parameters.values())[1:]  # skip self
        if parameter.kind in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY)
    ]
    reserved = {name for name in reserved if name is not None} | set(keywords[:1])
    takes = [name for name in keywords if name not in reserved] + list(extra)
    for argument in arguments:
        if argument in reserved:
            raise ValueError(
                f"{owner}: {argument!r} is filled in when the object is built, "
                f"not a hyper-parameter to search"
            )
        if argument not in takes:
            raise ValueError(
                f"{owner}: {argument!r} is not a hyper-parameter of "
                f"{cls.__module__}.{cls.__qualname__}; it takes {takes}"
            )


def check_schedule_arguments(name: str, arguments: Iterable[str]) -> None:
    """:func:`check_arguments` for schedule ``name`` (``"constant"`` takes none).

    Raises:
        ValueError: unknown schedule, or an argument it does not take or that is filled in.
    """
    schedule = schedule_entry(name)
    arguments = list(arguments)
    if schedule is None:
        if arguments:
            raise ValueError(f"schedule {name!r} takes no hyper-parameters, got {arguments}")
        return
    check_arguments(
        schedule.scheduler,
        arguments,
        owner=f"schedule {name!r}",
        reserved=(schedule.total_steps_argument, schedule.lr_argument),
        extra=((LR_FACTOR,) if schedule.lr_argument is not None else ())
        + tuple(schedule.fraction_arguments),
    )
    for fraction, argument in schedule.fraction_arguments.items():
        if fraction in arguments and argument in arguments:
            raise ValueError(
                f"schedule {name!r}: give {fraction!r} or {argument!r}, not both "
                f"({fraction!r} fills {argument!r} from the run's length)"
            )


def _from_json(value: Any) -> Any:
    # JSON has no tuples: tuple arguments such as Adam's betas come back as lists.
    return tuple(_from_json(item) for item in value) if isinstance(value, list) else value


@dataclass(frozen=True)
class OptimizerConfig:
    """An optimizer, its hyper-parameters, and a learning-rate schedule: one point of a search.

    Attributes:
        optimizer_name: ``"adam"`` (ours) or ``"torch.optim.Adam"`` (torch's).
        hyperparameters: the optimizer's keyword arguments (``{"lr": 0.01, "betas": (0.9, 0.99)}``).
        schedule_name: ``"constant"`` or a key of :data:`SCHEDULES`.
        schedule_hyperparameters: keyword arguments of the scheduler, without the run length.
    """

    optimizer_name: str
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    schedule_name: str = CONSTANT_SCHEDULE
    schedule_hyperparameters: dict[str, Any] = field(default_factory=dict)

    @property
    def optimizer_class(self) -> type[Optimizer]:
        """The optimizer class :meth:`build` instantiates."""
        return optimizer_class(self.optimizer_name)

    def build(self, params: Iterable[Tensor] | Iterable[dict[str, Any]]) -> Optimizer:
        """``optimizer_class(params, **hyperparameters)``: a fresh optimizer for ``params``."""
        return self.optimizer_class(params, **self.hyperparameters)

    @property
    def schedule(self) -> Schedule | None:
        """The chosen :class:`Schedule`, or ``None`` for the constant schedule."""
        return schedule_entry(self.schedule_name)

    def build_scheduler(self, optimizer: Optimizer, total_steps: int) -> LRScheduler | None:
        """The schedule attached to ``optimizer``, or ``None`` for the constant schedule.

        Call ``scheduler.step()`` ``total_steps`` times, or ``scheduler.step(metric)`` when
        ``self.schedule.needs_metric``.

        Args:
            optimizer: the optimizer from :meth:`build`.
            total_steps: how many times the training loop will step the scheduler; it fills the
                schedule's run-length argument (cosine's ``T_max``).
        """
        schedule = self.schedule
        if schedule is None:
            return None
        if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
            raise ValueError(f"total_steps must be a positive integer, got {total_steps!r}")
        arguments = dict(self.schedule_hyperparameters)
        if schedule.total_steps_argument is not None:
            arguments[schedule.total_steps_argument] = total_steps
        if schedule.lr_argument is not None:
            lr = float(optimizer.param_groups[0]["lr"])
            arguments[schedule.lr_argument] = arguments.pop(LR_FACTOR, 1.0) * lr
        for fraction_name, argument in schedule.fraction_arguments.items():
            if fraction_name in arguments:
                fraction = arguments.pop(fraction_name)
                if (
                    isinstance(fraction, bool)
                    or not isinstance(fraction, (int, float))
                    or not (0 <= fraction < 1)
                ):
                    raise ValueError(f"{fraction_name} must lie in [0, 1), got {fraction!r}")
                arguments[argument] = math.floor(fraction * total_steps)
        return schedule.scheduler(optimizer, **arguments)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-compatible dict; :meth:`from_dict` inverts it."""
        return {
            "optimizer_name": self.optimizer_name,
            "hyperparameters": dict(self.hyperparameters),
            "schedule_name": self.schedule_name,
            "schedule_hyperparameters": dict(self.schedule_hyperparameters),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> OptimizerConfig:
        """Rebuild a config from :meth:`to_dict`'s output (also after a JSON round trip)."""
        return cls(
            optimizer_name=data["optimizer_name"],
            hyperparameters={k: _from_json(v) for k, v in data["hyperparameters"].items()},
            schedule_name=data["schedule_name"],
            schedule_hyperparameters={
                k: _from_json(v) for k, v in data["schedule_hyperparameters"].items()
            },
        )
