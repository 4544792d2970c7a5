"""Step time of :class:`LearnedOptimizer` against torch's fused Adam, interleaved.

``python -m torchopt_edu.learned.bench`` (the command line is in
:mod:`torchopt_edu.cli.learn_optimizer`) times one ``step()`` of

- ``torch.optim.Adam(params, fused=True)``, torch's fastest Adam (the yardstick);
- ``LearnedOptimizer(params)`` with the graph stage, and without it (``use_graph=False``);
- ``LearnedOptimizer(params, compiled=True)``, the graph stage with the update compiled into
  one loop per tensor (compiled in the first warm-up round),

on the same parameters and gradients, at 10M parameters in 200 tensors and at 1M in 100.
Steps are interleaved (each round steps every candidate once) after warm-up, so that drifts in
the machine's load hit all alike, and the median is reported with its ratio to fused Adam.
VeLO-style learned optimizers cost about 10x Adam; the target here is at most 10x.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence

import torch
from torch import Tensor
from torch.optim import Optimizer

from torchopt_edu.learned.nets import LearnedNet
from torchopt_edu.learned.optimizer import LearnedOptimizer

#: (label, tensors, elements per tensor).
SHAPES = (("10M/200", 200, 50_000), ("1M/100", 100, 10_000))
QUICK_SHAPES = (("100k/20", 20, 5_000),)
YARDSTICK = "torch Adam fused"


def _params(tensors: int, size: int, device: torch.device, seed: int) -> list[Tensor]:
    generator = torch.Generator().manual_seed(seed)
    params = []
    for _ in range(tensors):
        p = torch.randn(size, generator=generator).to(device).requires_grad_()
        p.grad = 1e-3 * torch.randn(size, generator=generator).to(device)
        params.append(p)
    return params


def candidates(hidden: int = 8) -> dict[str, Callable[[list[Tensor]], Optimizer]]:
    """The optimizers compared, as factories ``params -> optimizer``."""
    net = LearnedNet(hidden=hidden)
    return {
        YARDSTICK: lambda params: torch.optim.Adam(params, fused=True),
        "learned (graph)": lambda params: LearnedOptimizer(params, net=net),
        "learned (no graph)": lambda params: LearnedOptimizer(params, net=net, use_graph=False),
        "learned (graph, compiled)": lambda params: LearnedOptimizer(
            params, net=net, compiled=True
        ),
    }


def step_time_table(
    shapes: Sequence[tuple[str, int, int]] = SHAPES,
    *,
    steps: int = 10,
    warmup: int = 2,
    hidden: int = 8,
    device: str | torch.device = "cpu",
    seed: int = 0,
) -> list[dict[str, object]]:
    """One row per shape and candidate: median ms per step and the ratio to fused Adam."""
    device = torch.device(device)
    rows = []
    for label, tensors, size in shapes:
        optimizers = {
            name: make(_params(tensors, size, device, seed))
            for name, make in candidates(hidden).items()
        }
        times: dict[str, list[float]] = {name: [] for name in optimizers}
        for round_ in range(warmup + steps):
            for name, optimizer in optimizers.items():
                _sync(device)
                started = time.perf_counter()
                optimizer.step()
                _sync(device)
                if round_ >= warmup:
                    times[name].append(time.perf_counter() - started)
        medians = {name: statistics.median(t) for name, t in times.items()}
        rows += [
            {
                "shape": label,
                "optimizer": name,
                "ms_per_step": 1e3 * seconds,
                "ratio_to_fused_adam": seconds / medians[YARDSTICK],
                "device": str(device),
                "threads": torch.get_num_threads(),
            }
            for name, seconds in medians.items()
        ]
    return rows


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def format_table(rows: Sequence[dict[str, object]]) -> str:
    """The rows of :func:`step_time_table` as a Markdown table."""
    lines = ["| shape | optimizer | ms/step | x fused Adam |", "|---|---|---:|---:|"]
    lines += [
        f"| {r['shape']} | {r['optimizer']} | {r['ms_per_step']:.2f} | "
        f"{r['ratio_to_fused_adam']:.2f} |"
        for r in rows
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    from torchopt_edu.cli.learn_optimizer import bench_main

    raise SystemExit(bench_main())
