"""Optimizer step time and memory against torch.optim (``torchopt-edu bench``).

For every algorithm, our default construction (and our flat-buffer mode) runs against every
torch.optim implementation of the same algorithm (for-loop, foreach, fused where torch has
one) on the same shapes. Candidates are interleaved step by step, after warm-up, so machine
noise hits all of them alike; the table reports the median milliseconds per step, the ratio
ours / fastest torch, the spread of the step times (interquartile range / median: a row
whose steps vary by more than :data:`NOISY_SPREAD` is too noisy to read), the
optimizer-state bytes per parameter, and the achieved memory
bandwidth (the bytes an ideal one-pass kernel must move, divided by the time) next to the
bandwidth of an in-place elementwise update (``x.mul_(c)``: read and write one array)
measured in the same run. Our own multi-tensor path (``foreach=True``, the code before the
speed work) runs alongside, so each table also shows before and after.

``python -m torchopt_edu.bench`` and ``torchopt-edu bench`` (:mod:`torchopt_edu.cli.bench`)
print the tables.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import torch
from torch import Tensor
from torch.optim import Optimizer

from torchopt_edu import optim as ours

OptimizerFactory = Callable[..., Optimizer]


@dataclass(frozen=True)
class Baseline:
    """The same algorithm implemented elsewhere: one of torch.optim's paths or a reference package.

    ``requires`` names the package it needs (the reference packages are in the ``dev`` extra
    only); a baseline whose package is not installed is left out of the run.
    """

    name: str
    build: Callable[[list[Tensor]], Optimizer]
    requires: str | None = None

    @property
    def available(self) -> bool:
        """Whether the package this baseline needs is installed."""
        return self.requires is None or importlib.util.find_spec(self.requires) is not None


@dataclass(frozen=True)
class Algorithm:
    """One algorithm: how to build ours and its baselines, and the traffic of an ideal kernel.

    ``arrays_moved`` counts full-size float arrays read or written per step by a kernel that
    touches memory once: parameter, gradient and each state tensor read, parameter and each
    state tensor written (SGD with momentum: p, g, v read + p, v written = 5). ``modes`` are our
    constructions timed (``foreach``: our multi-tensor path, the code before the speed work;
    ``default``; ``flat``: flat buffers). With ``yardstick``, torch's fused Adam runs alongside:
    the bar the frontier optimizers, which torch.optim lacks, are held to. ``matrices``: the
    parameters are square matrices (Muon orthogonalises matrices).
    """

    name: str
    ours: OptimizerFactory
    baselines: tuple[Baseline, ...]
    arrays_moved: int
    twin: type[Optimizer] | None = None
    modes: tuple[str, ...] = ("foreach", "default", "flat")
    yardstick: bool = False
    matrices: bool = False


def _torch_paths(
    cls: type[Optimizer], kwargs: dict, paths: tuple[str, ...] = ("loop", "foreach", "fused")
) -> tuple[Baseline, ...]:
    return tuple(
        Baseline(f"torch {path}", partial(cls, **kwargs, **TORCH_FLAGS[path])) for path in paths
    )


def _reference(name: str, module: str, cls: str, **kwargs: object) -> Baseline:
    """A reference package's optimizer (imported only when built); Schedule-Free's in train mode."""

    def build(params: list[Tensor]) -> Optimizer:
        optimizer = getattr(importlib.import_module(module), cls)(params, **kwargs)
        if hasattr(optimizer, "train"):
            optimizer.train()
        return optimizer

    return Baseline(f"ref {name}", build, requires=module.split(".")[0])


TORCH_FLAGS = {
    "loop": dict(foreach=False),
    "foreach": dict(foreach=True),
    "fused": dict(fused=True),
}

ALGORITHMS: dict[str, Algorithm] = {
    a.name: a
    for a in [
        Algorithm(
            "sgd",
            lambda p, **k: ours.SGD(p, lr=0.01, momentum=0.9, **k),
            _torch_paths(torch.optim.SGD, dict(lr=0.01, momentum=0.9)),
            5,
            twin=torch.optim.SGD,
        ),
        Algorithm(
            "momentum",
            lambda p, **k: ours.Momentum(p, lr=0.01, beta=0.9, **k),
            _torch_paths(torch.optim.SGD, dict(lr=0.01, momentum=0.9, dampening=0.9)),
            5,
        ),
        Algorithm(
            "adagrad",
            lambda p, **k: ours.Adagrad(p, **k),
            _torch_paths(torch.optim.Adagrad, {}),
            5,
            twin=torch.optim.Adagrad,
        ),
        Algorithm(
            "rmsprop",
            lambda p, **k: ours.RMSprop(p, **k),
            _torch_paths(torch.optim.RMSprop, {}, ("loop", "foreach")),
            5,
            twin=torch.optim.RMSprop,
        ),
        Algorithm(
            "adam",
            lambda p, **k: ours.Adam(p, **k),
            _torch_paths(torch.optim.Adam, {}),
            7,
            twin=torch.optim.Adam,
        ),
        Algorithm(
            "adamw",
            lambda p, **k: ours.AdamW(p, **k),
            _torch_paths(torch.optim.AdamW, {}),
            7,
            twin=torch.optim.AdamW,
        ),
        # The frontier: no torch.optim twin (but Muon), so the reference packages of the parity
        # tests are the baselines, and torch's fused Adam the yardstick.
        Algorithm("yogi", lambda p, **k: ours.Yogi(p, **k), (), 7, yardstick=True),
        Algorithm(
            "lion",
            lambda p, **k: ours.Lion(p, **k),
            (
                _reference("lion-pytorch", "lion_pytorch", "Lion"),
                _reference("lion-pytorch foreach", "lion_pytorch.foreach", "Lion"),
            ),
            5,
            yardstick=True,
        ),
        Algorithm(
            "sgdschedulefree",
            lambda p, **k: ours.SGDScheduleFree(p, **k),
            (_reference("schedulefree", "schedulefree", "SGDScheduleFree"),),
            5,
            yardstick=True,
        ),
        Algorithm(
            "adamwschedulefree",
            lambda p, **k: ours.AdamWScheduleFree(p, **k),
            (_reference("schedulefree", "schedulefree", "AdamWScheduleFree"),),
            7,
            yardstick=True,
        ),
        Algorithm(
            "prodigy",
            lambda p, **k: ours.Prodigy(p, **k),
            (_reference("prodigyopt", "prodigyopt", "Prodigy"),),
            10,  # p, g, p0, m, v, s read; p, m, v, s written
            yardstick=True,
            modes=("foreach", "default"),  # Prodigy has no flat mode
        ),
        Algorithm("sgdhd", lambda p, **k: ours.SGDHD(p, **k), (), 5, yardstick=True),
        Algorithm("adamhd", lambda p, **k: ours.AdamHD(p, **k), (), 7, yardstick=True),
        Algorithm(
            "muon",
            lambda p, **k: ours.Muon(p, **k),
            (Baseline("torch loop", torch.optim.Muon),),  # torch's Muon has only a loop
            5,
            twin=torch.optim.Muon,
            modes=("foreach", "default"),
            matrices=True,
        ),
    ]
}

#: (label, number of tensors, elements per tensor)
FULL_SHAPES = [("10M/200", 200, 50_000), ("2M/2000", 2000, 1_000), ("20M/20", 20, 1_000_000)]
QUICK_SHAPES = [("200k/40", 40, 5_000), ("100k/500", 500, 200), ("1M/4", 4, 250_000)]

#: Shapes of the matrix algorithms (Muon): square matrices, smaller because orthogonalising an
#: n x n matrix costs O(n^3) where an elementwise update costs O(n^2).
MATRIX_FULL_SHAPES = [("2M/200", 200, 10_000), ("1M/1000", 1000, 1_024), ("1M/16", 16, 65_536)]
MATRIX_QUICK_SHAPES = [("160k/40", 40, 4_096), ("100k/100", 100, 1_024), ("260k/4", 4, 65_536)]


def shapes_for(algorithm: Algorithm, quick: bool) -> list[tuple[str, int, int]]:
    """The shapes ``algorithm`` is timed on: the full or quick set, matrix sets for Muon."""
    if algorithm.matrices:
        return MATRIX_QUICK_SHAPES if quick else MATRIX_FULL_SHAPES
    return QUICK_SHAPES if quick else FULL_SHAPES


#: A row whose step times spread wider than this (interquartile range / median) is too noisy
#: for its ratio to mean anything: another process took the cores during the run.
NOISY_SPREAD = 0.25


@dataclass
class Row:
    """One benchmark line: one candidate on one shape.

    ``ratio_to_baseline``: time / the fastest baseline's (torch.optim's paths, or the reference
    packages for algorithms torch lacks); NaN without one. ``ratio_to_fused_adam``: time /
    torch's fused Adam's, for the algorithms timed against that yardstick; else NaN.
    """

    algorithm: str
    shape: str
    candidate: str
    ms_per_step: float
    ratio_to_baseline: float
    state_bytes_per_param: float
    gb_per_s: float
    spread: float = math.nan
    ratio_to_fused_adam: float = math.nan

    @property
    def noisy(self) -> bool:
        """Whether the step times spread too widely (or too few steps) to trust the median."""
        return not self.spread <= NOISY_SPREAD


def spread(times: Sequence[float]) -> float:
    """Interquartile range / median of ``times``; NaN with fewer than two times."""
    if len(times) < 2:
        return math.nan
    low, _, high = statistics.quantiles(times, n=4, method="inclusive")
    return (high - low) / statistics.median(times)


def _params(
    n_tensors: int, shape: tuple[int, ...], device: torch.device, seed: int
) -> list[Tensor]:
    generator = torch.Generator().manual_seed(seed)
    params = []
    for _ in range(n_tensors):
        p = torch.randn(shape, generator=generator).to(device).requires_grad_()
        p.grad = torch.randn(shape, generator=generator).to(device) * 1e-3
        params.append(p)
    return params


def _state_bytes(optimizer: Optimizer) -> int:
    """Bytes of full-size state tensors (the scalar ``step`` counters are not counted)."""
    seen: set[int] = set()
    total = 0
    for state in optimizer.state.values():
        for value in state.values():
            if isinstance(value, Tensor) and value.dim() > 0:
                storage = value.untyped_storage()
                if storage.data_ptr() not in seen:  # flat mode: many views, one buffer
                    seen.add(storage.data_ptr())
                    total += storage.nbytes()
    return total


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def update_bandwidth(n_elements: int, device: torch.device, repeats: int) -> float:
    """GB/s of an in-place update ``x.mul_(c)`` (one read and one write per element).

    An optimizer step is a set of in-place updates, so this (rather than ``copy_`` into a
    second array, which also pays for allocating-on-write the target) is its memory ceiling.
    """
    array = torch.randn(n_elements, device=device)
    times = []
    for _ in range(repeats + 2):
        _sync(device)
        started = time.perf_counter()
        array.mul_(1.0001)
        _sync(device)
        times.append(time.perf_counter() - started)
    return 2 * array.nbytes / statistics.median(times[2:]) / 1e9


#: The candidate of the frontier's yardstick, torch's fastest Adam.
YARDSTICK = "torch fused Adam (yardstick)"
ADAM_ARRAYS = 7  # p, g, m, v read; p, m, v written
#: Our constructions by mode: the candidate's name and the constructor flags.
OUR_MODES = {
    "foreach": ("ours foreach", dict(foreach=True)),
    "default": ("ours", {}),
    "flat": ("ours flat", dict(flat=True)),
}


def run_shape(
    algorithm: Algorithm,
    shape: tuple[str, int, int],
    device: torch.device,
    steps: int,
    warmup: int,
    seed: int = 0,
) -> list[Row]:
    """Time all candidates of ``algorithm`` on one shape, interleaved; return their rows.

    Every candidate starts from the same parameters and gradients (drawn with ``seed``). A
    matrix algorithm takes ``shape``'s elements per tensor as square matrices (the nearest
    square at or below it).
    """
    label, n_tensors, size = shape
    tensor_shape = (math.isqrt(size),) * 2 if algorithm.matrices else (size,)
    if algorithm.matrices:
        label = f"{label} ({tensor_shape[0]}x{tensor_shape[1]})"

    def params() -> list[Tensor]:
        return _params(n_tensors, tensor_shape, device, seed)

    candidates: dict[str, Optimizer] = {}
    for baseline in algorithm.baselines:
        if baseline.available and not (
            baseline.name == "torch fused" and device.type not in ("cpu", "cuda")
        ):
            candidates[baseline.name] = baseline.build(params())
    if algorithm.yardstick and device.type in ("cpu", "cuda"):
        candidates[YARDSTICK] = torch.optim.Adam(params(), fused=True)
    for mode in algorithm.modes:
        name, flags = OUR_MODES[mode]
        candidates[name] = algorithm.ours(params(), **flags)
    timings: dict[str, list[float]] = {name: [] for name in candidates}
    for step in range(warmup + steps):
        for name, optimizer in candidates.items():
            _sync(device)
            started = time.perf_counter()
            optimizer.step()
            _sync(device)
            if step >= warmup:
                timings[name].append(time.perf_counter() - started)
    medians = {name: statistics.median(t) for name, t in timings.items()}
    baselines = [medians[b.name] for b in algorithm.baselines if b.name in medians]
    fastest_baseline = min(baselines, default=math.nan)
    yardstick = medians.get(YARDSTICK, math.nan)
    n_params = n_tensors * math.prod(tensor_shape)

    def bytes_moved(candidate: str) -> int:
        return (ADAM_ARRAYS if candidate == YARDSTICK else algorithm.arrays_moved) * n_params * 4

    return [
        Row(
            algorithm=algorithm.name,
            shape=label,
            candidate=name,
            ms_per_step=1e3 * seconds,
            ratio_to_baseline=seconds / fastest_baseline,
            state_bytes_per_param=_state_bytes(candidates[name]) / n_params,
            gb_per_s=bytes_moved(name) / seconds / 1e9,
            spread=spread(timings[name]),
            ratio_to_fused_adam=seconds / yardstick,
        )
        for name, seconds in medians.items()
    ]


def memory_growth(device: torch.device, steps: int) -> dict[str, float]:
    """Resident memory (MB) gained over ``steps`` Adam steps after warm-up; ~0 means no leak."""
    params = _params(50, (2_000,), device, 0)
    optimizer = ours.Adam(params)
    for _ in range(10):
        optimizer.step()
    before = _resident_mb()
    allocated_before = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
    for _ in range(steps):
        optimizer.step()
    allocated_after = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
    return {
        "steps": steps,
        "rss_growth_mb": _resident_mb() - before,
        "cuda_allocated_growth_mb": (allocated_after - allocated_before) / 2**20,
    }


def _resident_mb() -> float:
    with open("/proc/self/statm") as statm:
        resident_pages = int(statm.read().split()[1])
    import resource

    return resident_pages * resource.getpagesize() / 2**20


if __name__ == "__main__":
    from torchopt_edu.cli.bench import main

    raise SystemExit(main())
