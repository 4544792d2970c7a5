"""Search spaces as data: distributions, default spaces per optimizer and schedule, validation.

A search space maps each optimizer name to a dict ``hyper-parameter -> spec`` and each schedule
name to the same kind of dict. A spec is one of

- a distribution: :class:`LogUniform`, :class:`Uniform`, :class:`IntUniform`, :class:`Categorical`;
- a tuple of specs, for tuple-valued arguments such as Adam's ``betas``;
- a constant (number, str, bool or None), passed through unchanged.

Everything is checked when the :class:`SearchSpace` is built, before any trial runs: bad bounds,
unknown optimizer or schedule names, and arguments the class does not take raise ``ValueError``
naming the culprit.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias

from torchopt_edu.optim import OPTIMIZERS
from torchopt_edu.optim._checks import check_flag, is_integer, is_real
from torchopt_edu.tuning.config import (
    CONSTANT_SCHEDULE,
    LR_FACTOR,
    OptimizerConfig,
    check_arguments,
    check_schedule_arguments,
    optimizer_class,
    schedule_entry,
)

if TYPE_CHECKING:
    import optuna


def _check_range(distribution: Distribution, *, integer: bool = False) -> None:
    """Check ``low < high``, both finite numbers (integers if ``integer``), and store them as
    plain Python numbers, so that NumPy scalars never reach the fingerprint or Optuna."""
    kind = type(distribution).__name__
    for bound in ("low", "high"):
        value = getattr(distribution, bound)
        if integer and not is_integer(value):
            raise ValueError(f"{kind} needs an integer {bound}, got {bound}={value!r}")
        if not (is_real(value) and math.isfinite(value)):
            raise ValueError(f"{kind} needs a finite number for {bound}, got {bound}={value!r}")
        if type(value) not in (int, float):  # a NumPy scalar: keep its kind, drop its type
            object.__setattr__(distribution, bound, int(value) if integer else float(value))
    low, high = distribution.low, distribution.high
    if low >= high:
        raise ValueError(f"{kind} needs low < high, got low={low!r}, high={high!r}")
    if not math.isfinite(float(high) - float(low)):  # Optuna draws low + u (high - low)
        raise ValueError(f"{kind} needs a finite width high - low, got low={low!r}, high={high!r}")


@dataclass(frozen=True)
class LogUniform:
    """Log-uniform on ``[low, high]``: ``log x ~ U(log low, log high)``, density ∝ ``1 / x``.

    Each decade gets the same share of trials, the right prior for scale parameters (learning
    rate, weight decay, an SVC's C and gamma). Requires ``0 < low < high``.
    """

    low: float
    high: float

    def __post_init__(self) -> None:
        _check_range(self)
        if self.low <= 0:
            raise ValueError(f"LogUniform needs 0 < low (log scale), got low={self.low!r}")

    def suggest(self, trial: optuna.Trial, name: str) -> float:
        """Draw ``name`` from this distribution in ``trial``."""
        return trial.suggest_float(name, self.low, self.high, log=True)


@dataclass(frozen=True)
class Uniform:
    """Uniform on ``[low, high]``, density ``1 / (high - low)``; for bounded rates like momentum."""

    low: float
    high: float

    def __post_init__(self) -> None:
        _check_range(self)

    def suggest(self, trial: optuna.Trial, name: str) -> float:
        """Draw ``name`` from this distribution in ``trial``."""
        return trial.suggest_float(name, self.low, self.high)


@dataclass(frozen=True)
class IntUniform:
    """Integers in ``[low, high]``: uniform, or log-uniform with ``log=True`` (needs 1 <= low)."""

    low: int
    high: int
    log: bool = False

    def __post_init__(self) -> None:
        _check_range(self, integer=True)
        object.__setattr__(self, "log", check_flag("log", self.log))
        if self.log and self.low < 1:
            raise ValueError(f"IntUniform(log=True) needs 1 <= low, got low={self.low!r}")

    def suggest(self, trial: optuna.Trial, name: str) -> int:
        """Draw ``name`` from this distribution in ``trial``."""
        return trial.suggest_int(name, self.low, self.high, log=self.log)


@dataclass(frozen=True)
class Categorical:
    """One of a finite tuple of choices (None, bool, int, float or str, as Optuna stores them)."""

    choices: tuple[Any, ...]

    def __post_init__(self) -> None:
        if isinstance(self.choices, str):  # tuple("abc") would be three choices
            raise ValueError(
                f"Categorical needs a sequence of choices, got the string {self.choices!r}; "
                f"for one choice write Categorical(({self.choices!r},))"
            )
        object.__setattr__(self, "choices", tuple(self.choices))
        if not self.choices:
            raise ValueError("Categorical needs at least one choice, got choices=()")
        for choice in self.choices:
            if choice is not None and not isinstance(choice, (bool, int, float, str)):
                raise ValueError(
                    f"Categorical choices must be None, bool, int, float or str, got {choice!r}"
                )
        if len(set(self.choices)) != len(self.choices):
            raise ValueError(f"Categorical choices must be distinct, got {self.choices!r}")

    def suggest(self, trial: optuna.Trial, name: str) -> Any:
        """Draw ``name`` from this distribution in ``trial``."""
        return trial.suggest_categorical(name, self.choices)


Distribution: TypeAlias = LogUniform | Uniform | IntUniform | Categorical
Spec: TypeAlias = Distribution | tuple[Any, ...] | float | int | str | bool | None
SpaceDict: TypeAlias = Mapping[str, Spec]

_WEIGHT_DECAY = LogUniform(1e-6, 1e-2)
_BETAS = (Uniform(0.8, 0.95), Uniform(0.95, 0.9999))

DEFAULT_OPTIMIZER_SPACES: dict[str, dict[str, Spec]] = {
    # Plain and heavy-ball methods take steps proportional to the gradient: larger learning rates.
    "sgd": {
        "lr": LogUniform(1e-3, 1.0),
        "momentum": Uniform(0.0, 0.99),
        "weight_decay": _WEIGHT_DECAY,
    },
    "momentum": {
        "lr": LogUniform(1e-3, 1.0),
        "beta": Uniform(0.5, 0.99),
        "weight_decay": _WEIGHT_DECAY,
    },
    "adagrad": {"lr": LogUniform(1e-3, 1.0), "weight_decay": _WEIGHT_DECAY},
    # Adaptive methods normalise the step to about lr per coordinate: smaller learning rates.
    "rmsprop": {
        "lr": LogUniform(1e-4, 1e-1),
        "alpha": Uniform(0.9, 0.999),
        "momentum": Uniform(0.0, 0.9),
        "weight_decay": _WEIGHT_DECAY,
    },
    "adam": {"lr": LogUniform(1e-4, 1e-1), "betas": _BETAS, "weight_decay": _WEIGHT_DECAY},
    # Decoupled weight decay is multiplied by lr, so it lives on a larger scale.
    "adamw": {
        "lr": LogUniform(1e-4, 1e-1),
        "betas": _BETAS,
        "weight_decay": LogUniform(1e-4, 1e-1),
    },
    "yogi": {"lr": LogUniform(1e-4, 1e-1), "betas": _BETAS, "weight_decay": _WEIGHT_DECAY},
    # Lion's sign update has size lr per coordinate: 3-10x smaller rates than Adam's.
    "lion": {
        "lr": LogUniform(1e-5, 1e-2),
        "betas": (Uniform(0.8, 0.95), Uniform(0.95, 0.999)),
        "weight_decay": LogUniform(1e-4, 1.0),
    },
    # Schedule-Free replaces the schedule; its rates sit a little above the plain method's.
    "sgdschedulefree": {
        "lr": LogUniform(1e-3, 10.0),
        "momentum": Uniform(0.5, 0.99),
        "weight_decay": _WEIGHT_DECAY,
    },
    "adamwschedulefree": {
        "lr": LogUniform(1e-4, 1e-1),
        "betas": _BETAS,
        "weight_decay": LogUniform(1e-4, 1e-1),
    },
    # Prodigy estimates the step size itself: lr is a multiplier around 1.
    "prodigy": {"lr": LogUniform(0.1, 10.0), "weight_decay": _WEIGHT_DECAY},
    # The hypergradient methods learn lr; the search sets where it starts and how fast it moves.
    "sgdhd": {
        "lr": LogUniform(1e-3, 1.0),
        "hypergrad_lr": LogUniform(1e-7, 1e-3),
        "weight_decay": _WEIGHT_DECAY,
    },
    "adamhd": {
        "lr": LogUniform(1e-4, 1e-1),
        "hypergrad_lr": LogUniform(1e-9, 1e-5),
        "weight_decay": _WEIGHT_DECAY,
    },
    "muon": {
        "lr": LogUniform(1e-4, 1e-1),
        "momentum": Uniform(0.8, 0.99),
        "weight_decay": LogUniform(1e-4, 1e-1),
    },
}
"""Default hyper-parameter space of each of our optimizers (``torchopt_edu.optim.OPTIMIZERS``)."""

DEFAULT_SCHEDULE_SPACES: dict[str, dict[str, Spec]] = {
    # Steps count scheduler steps: epochs in the standard loop, which runs about 5-30 of them.
    CONSTANT_SCHEDULE: {},
    "step": {"step_size": IntUniform(1, 10), "gamma": Uniform(0.1, 0.9)},
    "exponential": {"gamma": Uniform(0.8, 0.999)},
    "cosine": {},
    "step_decay": {"step_size": IntUniform(1, 10), "gamma": Uniform(0.5, 0.99)},
    "exponential_decay": {"gamma": Uniform(0.8, 0.999)},
    # A fraction of the run, not a step count: any warm-up count fails runs shorter than it.
    "warmup_cosine": {"warmup_fraction": Uniform(0.0, 0.3)},
    # Cycling momentum needs one: keep it fixed so every optimizer can take these schedules.
    "one_cycle": {"pct_start": Uniform(0.1, 0.5), "cycle_momentum": False},
    "cyclic": {"base_lr": None, LR_FACTOR: LogUniform(2.0, 10.0), "step_size_up": IntUniform(1, 5)},
    "plateau": {"factor": Uniform(0.1, 0.9), "patience": IntUniform(0, 3)},
}
"""Default space of each schedule; run length and learning rate are filled in by the config."""


def default_optimizer_space(name: str) -> dict[str, Spec]:
    """The default space of optimizer ``name``.

    Our optimizers use :data:`DEFAULT_OPTIMIZER_SPACES`; ``"torch.optim.<Name>"`` uses the entry of
    ``<name>`` lower-cased when there is one (``torch.optim.Adam`` -> ``"adam"``), otherwise a
    log-uniform learning rate in ``[1e-4, 1]``.
    """
    optimizer_class(name)  # raises ValueError for unknown names
    short = name.removeprefix("torch.optim.").lower()
    return dict(DEFAULT_OPTIMIZER_SPACES.get(short, {"lr": LogUniform(1e-4, 1.0)}))


def default_schedule_space(name: str) -> dict[str, Spec]:
    """The default space of schedule ``name`` (empty for the constant schedule)."""
    schedule_entry(name)  # raises ValueError for unknown names
    return dict(DEFAULT_SCHEDULE_SPACES.get(name, {}))


def _check_spec(owner: str, name: str, spec: Spec) -> None:
    if isinstance(spec, (LogUniform, Uniform, IntUniform, Categorical)):
        return  # checked by its own __post_init__
    if isinstance(spec, tuple):
        for item in spec:
            _check_spec(owner, name, item)
        return
    if spec is not None and not isinstance(spec, (bool, int, float, str)):
        raise TypeError(
            f"{owner}: hyper-parameter {name!r} must be a distribution (LogUniform, Uniform, "
            f"IntUniform, Categorical), a tuple of specs, or a constant, got {spec!r}"
        )


def _suggest(trial: optuna.Trial, name: str, spec: Spec) -> Any:
    if isinstance(spec, (LogUniform, Uniform, IntUniform, Categorical)):
        return spec.suggest(trial, name)
    if isinstance(spec, tuple):
        return tuple(_suggest(trial, f"{name}[{i}]", item) for i, item in enumerate(spec))
    return spec


def _spec_to_json(spec: Spec) -> Any:
    # Tagged, so that a constant never reads like a distribution and 1 never like 1.0 or True.
    if isinstance(spec, (LogUniform, Uniform)):
        return {type(spec).__name__: [spec.low, spec.high]}
    if isinstance(spec, IntUniform):
        return {"IntUniform": [spec.low, spec.high, spec.log]}
    if isinstance(spec, Categorical):
        return {"Categorical": [_spec_to_json(choice) for choice in spec.choices]}
    if isinstance(spec, tuple):
        return {"tuple": [_spec_to_json(item) for item in spec]}
    return {"constant": [type(spec).__name__, spec]}


def _as_mapping(
    choices: Sequence[str] | Mapping[str, SpaceDict | None] | str, what: str
) -> dict[str, SpaceDict | None]:
    if isinstance(choices, str):
        choices = (choices,)
    if isinstance(choices, Mapping):
        for name, space in choices.items():
            if space is not None and not isinstance(space, Mapping):
                raise TypeError(
                    f"{what}[{name!r}] must be a dict of hyper-parameter specs or None (the "
                    f"default space), got {type(space).__name__} {space!r}"
                )
        return dict(choices)
    if not isinstance(choices, Iterable):
        raise TypeError(
            f"{what} must be a name, a list of names or a dict name -> space, got "
            f"{type(choices).__name__} {choices!r}"
        )
    names = list(choices)
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"{what} listed more than once: {duplicates}")
    return dict.fromkeys(names)


class SearchSpace:
    """Which optimizers and schedules to try, and the space of each one's hyper-parameters.

    Args:
        optimizers: names (``"adam"`` for ours, ``"torch.optim.Adam"`` for torch's), or a mapping
            ``name -> {hyper-parameter: spec}``; ``None`` as a value, or a bare name, takes the
            default space (:func:`default_optimizer_space`). A given dict replaces the default:
            arguments it leaves out keep the optimizer's own defaults. ``None`` (the default)
            means all of ``torchopt_edu.optim.OPTIMIZERS`` with their default spaces.
        schedules: same for learning-rate schedules: ``"constant"`` (no schedule), ``"step"``
            (``StepLR``), ``"exponential"`` (``ExponentialLR``), ``"cosine"``
            (``CosineAnnealingLR`` over the whole run), and ours from
            :mod:`torchopt_edu.lr_scheduler`: ``"step_decay"``, ``"exponential_decay"``,
            ``"warmup_cosine"``, ``"one_cycle"``, ``"cyclic"``, ``"plateau"`` (see
            :data:`~torchopt_edu.tuning.config.SCHEDULES`).

    Trial parameters are named ``optimizer``, ``<optimizer>.<argument>`` (``adam.lr``,
    ``adam.betas[1]``), ``schedule`` and ``<schedule>.<argument>``, so every optimizer keeps its
    own scale and the parameter-importance plot reads directly.

    Raises:
        ValueError: no optimizer or schedule, an unknown name, an argument the class does not
            take, or one the schedule's run length fills in.
        TypeError: a spec that is neither a distribution, a tuple nor a constant.
    """

    def __init__(
        self,
        optimizers: Sequence[str] | Mapping[str, SpaceDict | None] | None = None,
        schedules: Sequence[str] | Mapping[str, SpaceDict | None] = (CONSTANT_SCHEDULE,),
    ) -> None:
        if optimizers is None:
            optimizers = tuple(OPTIMIZERS)
        self.optimizers: dict[str, dict[str, Spec]] = {}
        named: dict[type, str] = {}  # one spelling per optimizer class
        for name, space in _as_mapping(optimizers, "optimizers").items():
            cls = optimizer_class(name)
            if cls in named:
                raise ValueError(
                    f"optimizers {named[cls]!r} and {name!r} are the same optimizer "
                    f"({cls.__module__}.{cls.__name__}); list it once"
                )
            named[cls] = name
            space = default_optimizer_space(name) if space is None else dict(space)
            check_arguments(cls, space, owner=f"optimizer {name!r}")
            for argument, spec in space.items():
                _check_spec(f"optimizer {name!r}", argument, spec)
            self.optimizers[name] = space
        self.schedules: dict[str, dict[str, Spec]] = {}
        for name, space in _as_mapping(schedules, "schedules").items():
            space = default_schedule_space(name) if space is None else dict(space)
            check_schedule_arguments(name, space)
            for argument, spec in space.items():
                _check_spec(f"schedule {name!r}", argument, spec)
            self.schedules[name] = space
        if not self.optimizers:
            raise ValueError("SearchSpace needs at least one optimizer, got none")
        if not self.schedules:
            raise ValueError("SearchSpace needs at least one schedule ('constant' for none)")

    def suggest(self, trial: optuna.Trial) -> OptimizerConfig:
        """Sample a configuration in ``trial``: optimizer and schedule, each with its arguments."""
        optimizer_name = self._choose(trial, "optimizer", self.optimizers)
        schedule_name = self._choose(trial, "schedule", self.schedules)
        return OptimizerConfig(
            optimizer_name=optimizer_name,
            hyperparameters={
                argument: _suggest(trial, f"{optimizer_name}.{argument}", spec)
                for argument, spec in self.optimizers[optimizer_name].items()
            },
            schedule_name=schedule_name,
            schedule_hyperparameters={
                argument: _suggest(trial, f"{schedule_name}.{argument}", spec)
                for argument, spec in self.schedules[schedule_name].items()
            },
        )

    @staticmethod
    def _choose(trial: optuna.Trial, what: str, options: Mapping[str, Any]) -> str:
        # A single option is not a parameter: it would only add a constant column to the study.
        names = list(options)
        return names[0] if len(names) == 1 else trial.suggest_categorical(what, names)

    def fingerprint(self) -> str:
        """The space as canonical JSON: equal for equal spaces, different if any spec differs.

        :func:`~torchopt_edu.tuning.tune` stores it in the study (``user_attrs["search_space"]``)
        and refuses to resume the study with a different space: Optuna cannot sample a trial
        whose parameter ranges changed, and the stored best would belong to another search.
        """
        # Names as a list: their order is the order of Optuna's "optimizer"/"schedule" choices.
        description = {
            kind: [
                [name, {argument: _spec_to_json(spec) for argument, spec in space.items()}]
                for name, space in spaces.items()
            ]
            for kind, spaces in (("optimizers", self.optimizers), ("schedules", self.schedules))
        }
        return json.dumps(description, sort_keys=True, separators=(",", ":"))

    def __repr__(self) -> str:
        return f"SearchSpace(optimizers={self.optimizers!r}, schedules={self.schedules!r})"
