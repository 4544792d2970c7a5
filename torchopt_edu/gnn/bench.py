"""Epoch time of GCN training with our Adam against torch.optim.Adam on a large graph.

``python -m torchopt_edu.gnn.bench`` trains the same GCN (same initial parameters) on
a random graph of 100k nodes and 1M edges with three optimizers:

- ``torchopt_edu.optim.Adam(params, lr)``, default construction;
- ``torch.optim.Adam(params, lr)``, default construction;
- ``torch.optim.Adam(params, lr, fused=True)``, torch's fastest implementation.

Rounds are interleaved (each round runs one epoch of every optimizer, in a rotated
order) so that drifts in machine load hit all three alike; the first ``warmup`` rounds
are discarded and the median epoch time of the rest is reported, with the ratios
``ours / torch``. In GCN training the optimizer step is a small part of an epoch
(message passing over E edges dominates), so a ratio near 1 is expected; above 1.05
would mean our step adds measurable overhead. ``--quick`` runs a small graph (smoke test);
the command line is :mod:`torchopt_edu.cli.gnn_bench`.
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Sequence

import torch

from torchopt_edu.gnn.data import random_regression_graph, seeded, to_device
from torchopt_edu.gnn.model import GCN, count_parameters
from torchopt_edu.gnn.train import OptimizerFactory, train_step
from torchopt_edu.optim import Adam

OURS = "torchopt_edu Adam"
TORCH_DEFAULT = "torch Adam"
TORCH_FUSED = "torch Adam fused"
FULL_SIZE = {"num_nodes": 100_000, "num_edges": 1_000_000}
QUICK_SIZE = {"num_nodes": 2_000, "num_edges": 20_000}


def optimizer_variants(lr: float) -> dict[str, OptimizerFactory]:
    """The three optimizers under comparison, as factories ``params -> Optimizer``."""
    return {
        OURS: lambda params: Adam(params, lr=lr),
        TORCH_DEFAULT: lambda params: torch.optim.Adam(params, lr=lr),
        TORCH_FUSED: lambda params: torch.optim.Adam(params, lr=lr, fused=True),
    }


def benchmark_epoch(
    num_nodes: int = FULL_SIZE["num_nodes"],
    num_edges: int = FULL_SIZE["num_edges"],
    num_features: int = 32,
    hidden_channels: Sequence[int] = (64,),
    *,
    repeats: int = 7,
    warmup: int = 2,
    lr: float = 0.01,
    device: str | torch.device = "auto",
    seed: int = 0,
) -> dict[str, object]:
    """Median time of one full-batch training epoch with each optimizer of
    :func:`optimizer_variants`.

    The task is the source document's (regress a target of ones) on
    ``random_regression_graph(num_nodes, num_edges, num_features)``, with
    ``GCN(num_features, hidden_channels, 1, cached=True)``: caching the normalised
    adjacency is exact here because every epoch sees the same graph.

    Returns:
        ``{"device", "num_nodes", "num_edges", "num_parameters", "repeats", "warmup",
        "epoch_seconds": {name: median}, "final_loss": {name: loss of the last epoch},
        "ratio_vs_torch_default", "ratio_vs_torch_fused"}`` where a ratio is
        ``median(ours) / median(torch)``.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0, got {repeats} and {warmup}")
    data = random_regression_graph(num_nodes, num_edges, num_features, seed=seed)
    with seeded(seed):
        model = GCN(num_features, hidden_channels, 1, cached=True)
    model, data = to_device(model, data, device)
    runs = {}
    for name, make_optimizer in optimizer_variants(lr).items():
        run_model = copy.deepcopy(model)
        runs[name] = (run_model, make_optimizer(run_model.parameters()))
    names = list(runs)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    final_loss: dict[str, float] = {}
    for round_ in range(warmup + repeats):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            run_model, optimizer = runs[name]
            _synchronize(data.x.device)
            start = time.perf_counter()
            # train_step ends with loss.item(), which waits for the device.
            final_loss[name] = train_step(run_model, data, optimizer, "regression")
            if round_ >= warmup:
                seconds[name].append(time.perf_counter() - start)
    median = {name: statistics.median(times) for name, times in seconds.items()}
    return {
        "device": str(data.x.device),
        "num_nodes": num_nodes,
        "num_edges": num_edges,
        "num_parameters": count_parameters(model),
        "repeats": repeats,
        "warmup": warmup,
        "epoch_seconds": median,
        "final_loss": final_loss,
        "ratio_vs_torch_default": median[OURS] / median[TORCH_DEFAULT],
        "ratio_vs_torch_fused": median[OURS] / median[TORCH_FUSED],
    }


def _synchronize(device: torch.device) -> None:
    """Wait for queued kernels, so that a timer measures only the epoch that follows."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def format_results(results: dict[str, object]) -> str:
    """The results of :func:`benchmark_epoch` as a small table."""
    epoch_seconds = results["epoch_seconds"]
    lines = [
        f"GCN epoch, {results['num_nodes']:,} nodes, {results['num_edges']:,} edges, "
        f"{results['num_parameters']:,} parameters, device {results['device']}, "
        f"median of {results['repeats']} interleaved epochs after {results['warmup']} warm-up",
        f"{'optimizer':<18} {'epoch ms':>10} {'last loss':>12}",
    ]
    lines += [
        f"{name:<18} {1e3 * value:>10.1f} {results['final_loss'][name]:>12.6f}"
        for name, value in epoch_seconds.items()
    ]
    lines.append(f"ratio ours / torch default: {results['ratio_vs_torch_default']:.3f}")
    lines.append(f"ratio ours / torch fused:   {results['ratio_vs_torch_fused']:.3f}")
    return "\n".join(lines)


if __name__ == "__main__":
    from torchopt_edu.cli.gnn_bench import main

    raise SystemExit(main())
