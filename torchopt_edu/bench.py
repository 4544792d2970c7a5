"""``python -m torchopt_edu.bench``: optimizer step time and memory against torch.optim.

For every algorithm, our default construction (and our flat-buffer mode) runs against every
torch.optim implementation of the same algorithm (for-loop, foreach, fused where torch has
one) on the same shapes. Candidates are interleaved step by step, after warm-up, so machine
noise hits all of them alike; the table reports the median milliseconds per step, the ratio
ours / fastest torch, the optimizer-state bytes per parameter, and the achieved memory
bandwidth (the bytes an ideal one-pass kernel must move, divided by the time) next to the
bandwidth of an in-place elementwise update (``x.mul_(c)``: read and write one array)
measured in the same run. Our own multi-tensor path (``foreach=True``, the code before the
speed work) runs alongside, so each table also shows before and after.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

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
        Algorithm("sgd", lambda p, **k: ours.SGD(p, lr=0.01, momentum=0.9, **k),
                  torch.optim.SGD, dict(lr=0.01, momentum=0.9), ("loop", "foreach", "fused"), 5),
        Algorithm("momentum", lambda p, **k: ours.Momentum(p, lr=0.01, beta=0.9, **k),
                  torch.optim.SGD, dict(lr=0.01, momentum=0.9, dampening=0.9),
                  ("loop", "foreach", "fused"), 5),
        Algorithm("adagrad", lambda p, **k: ours.Adagrad(p, **k), torch.optim.Adagrad, {},
                  ("loop", "foreach", "fused"), 5),
        Algorithm("rmsprop", lambda p, **k: ours.RMSprop(p, **k), torch.optim.RMSprop, {},
                  ("loop", "foreach"), 5),
        Algorithm("adam", lambda p, **k: ours.Adam(p, **k), torch.optim.Adam, {},
                  ("loop", "foreach", "fused"), 7),
        Algorithm("adamw", lambda p, **k: ours.AdamW(p, **k), torch.optim.AdamW, {},
                  ("loop", "foreach", "fused"), 7),
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
) -> list[Row]:
    """Time all candidates of ``algorithm`` on one shape, interleaved; return their rows."""
    label, n_tensors, size = shape
    candidates: dict[str, Optimizer] = {}
    for impl in algorithm.torch_impls:
        if impl == "fused" and device.type not in ("cpu", "cuda"):
            continue
        candidates[f"torch {impl}"] = algorithm.torch_cls(
            _params(n_tensors, size, device, 0), **algorithm.torch_kwargs, **TORCH_FLAGS[impl]
        )
    candidates["ours foreach"] = algorithm.ours(_params(n_tensors, size, device, 0), foreach=True)
    candidates["ours"] = algorithm.ours(_params(n_tensors, size, device, 0))
    candidates["ours flat"] = algorithm.ours(_params(n_tensors, size, device, 0), flat=True)
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


def format_table(rows: list[Row], update_gb_per_s: float) -> str:
    """The benchmark as a Markdown table (ready to paste into a README or an issue)."""
    lines = [
        f"in-place update bandwidth in this run: {update_gb_per_s:.1f} GB/s "
        "(achieved = ideal one-pass bytes / time)",
        "",
        "| algorithm | shape | candidate | ms/step | ours / fastest torch | state B/param "
        "| achieved GB/s |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        ratio = f"**{r.ratio_to_fastest_torch:.2f}**" if r.candidate.startswith("ours") else (
            f"{r.ratio_to_fastest_torch:.2f}")
        lines.append(
            f"| {r.algorithm} | {r.shape} | {r.candidate} | {r.ms_per_step:.2f} | {ratio} "
            f"| {r.state_bytes_per_param:.1f} | {r.gb_per_s:.1f} |"
        )
    return "\n".join(lines)


def format_summary(rows: list[Row]) -> str:
    """One line per algorithm and shape: the fastest torch.optim path against ours."""
    lines = [
        "| algorithm | shape | fastest torch.optim | ms | ours foreach (before) ms "
        "| ours (default) ms | ratio | ours flat ms | ratio |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for algorithm, shape in dict.fromkeys((r.algorithm, r.shape) for r in rows):
        same = [r for r in rows if r.algorithm == algorithm and r.shape == shape]
        best = min((r for r in same if r.candidate.startswith("torch")),
                   key=lambda r: r.ms_per_step)
        before = next(r for r in same if r.candidate == "ours foreach")
        ours_row = next(r for r in same if r.candidate == "ours")
        flat_row = next(r for r in same if r.candidate == "ours flat")
        lines.append(
            f"| {algorithm} | {shape} | {best.candidate.removeprefix('torch ')} "
            f"| {best.ms_per_step:.2f} | {before.ms_per_step:.2f} | {ours_row.ms_per_step:.2f} "
            f"| **{ours_row.ratio_to_fastest_torch:.2f}** | {flat_row.ms_per_step:.2f} "
            f"| **{flat_row.ratio_to_fastest_torch:.2f}** |"
        )
    return "\n".join(lines)


def plot(rows: list[Row], path: Path) -> None:
    """Bar chart of ours / fastest torch per algorithm and shape (default and flat mode)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shapes = list(dict.fromkeys(r.shape for r in rows))
    algorithms = list(dict.fromkeys(r.algorithm for r in rows))
    figure, axes = plt.subplots(1, len(shapes), figsize=(4 * len(shapes), 3.5), dpi=80,
                                sharey=True)
    for axis, shape in zip(axes if len(shapes) > 1 else [axes], shapes, strict=True):
        for offset, candidate in ((-0.27, "ours foreach"), (0.0, "ours"), (0.27, "ours flat")):
            values = [next(r.ratio_to_fastest_torch for r in rows if r.shape == shape and
                           r.algorithm == a and r.candidate == candidate) for a in algorithms]
            axis.bar([i + offset for i in range(len(algorithms))], values, width=0.27,
                     label=candidate)
        axis.axhline(1.0, color="black", linewidth=1)
        axis.set_xticks(range(len(algorithms)), algorithms, rotation=45)
        axis.set_title(f"{shape} (params/tensors)")
    axes_list = axes if len(shapes) > 1 else [axes]
    axes_list[0].set_ylabel("step time / fastest torch.optim")
    axes_list[0].legend()
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def build_parser() -> argparse.ArgumentParser:
    """The ``torchopt-edu bench`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="torchopt-edu bench",
        description="Step time, state memory and bandwidth of our optimizers vs torch.optim.",
    )
    parser.add_argument("--quick", action="store_true", help="small shapes, few steps (CI smoke)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--algorithms", nargs="+", choices=list(ALGORITHMS),
                        default=list(ALGORITHMS))
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 20; quick 5)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--memory-steps", type=int, default=None,
                        help="steps of the memory-growth check (default 1000; quick 50)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--plot", type=Path, default=None, help="save a bar chart here (PNG)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print the table; return 0."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        device = torch.device(args.device)
    except RuntimeError:
        parser.error(f"argument --device: unknown device {args.device!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("argument --device: CUDA is not available on this machine")
    steps = args.steps if args.steps is not None else (5 if args.quick else 20)
    memory_steps = args.memory_steps if args.memory_steps is not None else (
        50 if args.quick else 1000)
    if steps < 1 or args.warmup < 0 or memory_steps < 1:
        parser.error("arguments --steps and --memory-steps must be >= 1, --warmup >= 0")
    shapes = QUICK_SHAPES if args.quick else FULL_SHAPES
    update_gb_per_s = update_bandwidth(shapes[-1][1] * shapes[-1][2], device, repeats=steps)
    rows: list[Row] = []
    for name in args.algorithms:
        for shape in shapes:
            rows.extend(run_shape(ALGORITHMS[name], shape, device, steps, args.warmup))
            print(f"  done: {name} {shape[0]}", flush=True)
    memory = memory_growth(device, memory_steps)
    print(f"\n{torch.__version__} on {device} ({torch.get_num_threads()} threads), "
          f"median of {steps} interleaved steps after {args.warmup} warm-up\n")
    print(format_table(rows, update_gb_per_s))
    print("\nsummary (ratio = ours / fastest torch.optim, measured in the same run):\n")
    print(format_summary(rows))
    growth = f"RSS {memory['rss_growth_mb']:+.1f} MB"
    if device.type == "cuda":
        growth += f", CUDA {memory['cuda_allocated_growth_mb']:+.1f} MB"
    print(f"\nmemory growth over {memory['steps']} Adam steps: {growth}")
    if args.json is not None:
        args.json.write_text(json.dumps({
            "torch": torch.__version__, "device": str(device), "steps": steps,
            "update_gb_per_s": update_gb_per_s, "rows": [asdict(r) for r in rows],
            "memory": memory,
        }, indent=2))
    if args.plot is not None:
        plot(rows, args.plot)
        print(f"bar chart saved to {args.plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
