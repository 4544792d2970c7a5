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

import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.optim import Optimizer

from torchopt_edu import optim as ours

OptimizerFactory = Callable[..., Optimizer]


@dataclass(frozen=True)
class Algorithm:
    """One algorithm: how to build ours and torch's, and the traffic of an ideal kernel.

    ``arrays_moved`` counts full-size float arrays read or written per step by a kernel that
    touches memory once: parameter, gradient and each state tensor read, parameter and each
    state tensor written (SGD with momentum: p, g, v read + p, v written = 5).
    """

    name: str
    ours: OptimizerFactory
    torch_cls: type[Optimizer]
    torch_kwargs: dict
    torch_impls: tuple[str, ...]
    arrays_moved: int


ALGORITHMS: dict[str, Algorithm] = {
    a.name: a
    for a in [
        Algorithm(
            "sgd",
            lambda p, **k: ours.SGD(p, lr=0.01, momentum=0.9, **k),
            torch.optim.SGD,
            dict(lr=0.01, momentum=0.9),
            ("loop", "foreach", "fused"),
            5,
        ),
        Algorithm(
            "momentum",
            lambda p, **k: ours.Momentum(p, lr=0.01, beta=0.9, **k),
            torch.optim.SGD,
            dict(lr=0.01, momentum=0.9, dampening=0.9),
            ("loop", "foreach", "fused"),
            5,
        ),
        Algorithm(
            "adagrad",
            lambda p, **k: ours.Adagrad(p, **k),
            torch.optim.Adagrad,
            {},
            ("loop", "foreach", "fused"),
            5,
        ),
        Algorithm(
            "rmsprop",
            lambda p, **k: ours.RMSprop(p, **k),
            torch.optim.RMSprop,
            {},
            ("loop", "foreach"),
            5,
        ),
        Algorithm(
            "adam",
            lambda p, **k: ours.Adam(p, **k),
            torch.optim.Adam,
            {},
            ("loop", "foreach", "fused"),
            7,
        ),
        Algorithm(
            "adamw",
            lambda p, **k: ours.AdamW(p, **k),
            torch.optim.AdamW,
            {},
            ("loop", "foreach", "fused"),
            7,
        ),
    ]
}

TORCH_FLAGS = {
    "loop": dict(foreach=False),
    "foreach": dict(foreach=True),
    "fused": dict(fused=True),
}

#: (label, number of tensors, elements per tensor)
FULL_SHAPES = [("10M/200", 200, 50_000), ("2M/2000", 2000, 1_000), ("20M/20", 20, 1_000_000)]
QUICK_SHAPES = [("200k/40", 40, 5_000), ("100k/500", 500, 200), ("1M/4", 4, 250_000)]

#: A row whose step times spread wider than this (interquartile range / median) is too noisy
#: for its ratio to mean anything: another process took the cores during the run.
NOISY_SPREAD = 0.25


@dataclass
class Row:
    """One benchmark line: one candidate on one shape."""

    algorithm: str
    shape: str
    candidate: str
    ms_per_step: float
    ratio_to_fastest_torch: float
    state_bytes_per_param: float
    gb_per_s: float
    spread: float = math.nan

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


def _params(n_tensors: int, size: int, device: torch.device, seed: int) -> list[Tensor]:
    generator = torch.Generator().manual_seed(seed)
    params = []
    for _ in range(n_tensors):
        p = torch.randn(size, generator=generator).to(device).requires_grad_()
        p.grad = torch.randn(size, generator=generator).to(device) * 1e-3
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


def run_shape(
    algorithm: Algorithm,
    shape: tuple[str, int, int],
    device: torch.device,
    steps: int,
    warmup: int,
    seed: int = 0,
) -> list[Row]:
    """Time all candidates of ``algorithm`` on one shape, interleaved; return their rows.

    Every candidate starts from the same parameters and gradients (drawn with ``seed``).
    """
    label, n_tensors, size = shape
    candidates: dict[str, Optimizer] = {}
    for impl in algorithm.torch_impls:
        if impl == "fused" and device.type not in ("cpu", "cuda"):
            continue
        candidates[f"torch {impl}"] = algorithm.torch_cls(
            _params(n_tensors, size, device, seed), **algorithm.torch_kwargs, **TORCH_FLAGS[impl]
        )
    candidates["ours foreach"] = algorithm.ours(
        _params(n_tensors, size, device, seed), foreach=True
    )
    candidates["ours"] = algorithm.ours(_params(n_tensors, size, device, seed))
    candidates["ours flat"] = algorithm.ours(_params(n_tensors, size, device, seed), flat=True)
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
    fastest_torch = min(t for name, t in medians.items() if name.startswith("torch"))
    n_params = n_tensors * size
    bytes_moved = algorithm.arrays_moved * n_params * 4
    return [
        Row(
            algorithm=algorithm.name,
            shape=label,
            candidate=name,
            ms_per_step=1e3 * seconds,
            ratio_to_fastest_torch=seconds / fastest_torch,
            state_bytes_per_param=_state_bytes(candidates[name]) / n_params,
            gb_per_s=bytes_moved / seconds / 1e9,
            spread=spread(timings[name]),
        )
        for name, seconds in medians.items()
    ]


def memory_growth(device: torch.device, steps: int) -> dict[str, float]:
    """Resident memory (MB) gained over ``steps`` Adam steps after warm-up; ~0 means no leak."""
    params = _params(50, 2_000, device, 0)
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
