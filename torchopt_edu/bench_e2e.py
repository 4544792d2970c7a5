"""``python -m torchopt_edu.bench_e2e``: whole training steps, where users feel the optimizer.

The step-time tables of :mod:`torchopt_edu.bench` time ``optimizer.step()`` alone. In training
the step is a small part of an iteration (zero_grad, forward, backward, step), so this
benchmark times the whole iteration on two small models with synthetic inputs:

* ``transformer``: a 4-layer pre-norm transformer encoder (d_model 256, 4 heads, feed-forward
  1024) over 128 token ids, 3.2M parameters, predicting the next token;
* ``cnn``: a ResNet-like network (three stages of two basic blocks, 32/64/128 channels, batch
  norm) on 32x32 RGB images, 0.7M parameters, 10 classes.

Contenders, each with its own copy of the model (identical initial weights) and AdamW at its
defaults: torch.optim.AdamW with ``foreach=True`` and with ``fused=True`` (the faster one is the
reference), our :class:`~torchopt_edu.optim.AdamW` at its default, and ours with ``flat=True``
used as documented (``zero_grad(set_to_none=False)``, gradients accumulate into the flat
buffer). Contenders take turns one iteration at a time after warm-up, starting from a
different contender each round, so machine noise hits all alike. Each iteration is timed in
parts: ``zero_grad``, forward plus backward, and ``step``; the table reports medians and the
ratio to torch's fastest, at one thread and at torch's default thread count.

When flat mode loses: used as documented, it makes autograd add every new gradient into the
zeroed buffer in place (a memset and a read-read-write pass) and then free the fresh gradient,
where torch keeps the fresh gradient tensor as ``.grad``. The passes themselves, timed apart
from the model (:func:`flat_gradient_cost`), are 1.6 to 1.9 ms per iteration for the
transformer's 3.2M parameters at one thread (about 1% of its forward plus backward) and 0.2 to
0.3 ms for the ResNet's 0.7M. On a quiet machine flat mode's forward plus backward on the
transformer is nevertheless about 5% slower; the rest is glibc's allocator: the freed
megabyte-sized gradients are handed back to the operating system and page-faulted in again at
the next allocation. With ``MALLOC_MMAP_THRESHOLD_`` and ``MALLOC_TRIM_THRESHOLD_`` set to 1
GiB (nothing handed back) the slowdown fell to about 1%. It is not the buffer views' alignment:
every parameter of both models starts on a 64-byte boundary. The flat step saves less than that
on these models (tens of large tensors), so flat mode loses end to end here; it wins where the
step has thousands of small tensors (see :mod:`torchopt_edu.bench`).
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.optim import Optimizer

from torchopt_edu import optim as ours

# ---------------------------------------------------------------------------------------
# the models


class TinyTransformer(nn.Module):
    """Token and position embeddings, pre-norm encoder layers, a final norm and a linear head.

    Input: token ids of shape (batch, seq_len); output: logits (batch, seq_len, vocab).
    """

    def __init__(
        self,
        vocab: int = 128,
        seq_len: int = 64,
        d_model: int = 256,
        heads: int = 4,
        ff: int = 1024,
        layers: int = 4,
    ) -> None:
        super().__init__()
        self.tokens = nn.Embedding(vocab, d_model)
        self.positions = nn.Parameter(torch.randn(seq_len, d_model) * 0.02)
        layer = nn.TransformerEncoderLayer(
            d_model, heads, ff, dropout=0.0, batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab)

    def forward(self, ids: Tensor) -> Tensor:
        """Logits for every position (no causal mask: a timing workload, not a language model)."""
        hidden = self.tokens(ids) + self.positions[: ids.shape[1]]
        return self.head(self.norm(self.encoder(hidden)))


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 conv + batch norm, identity or 1x1 projection shortcut."""

    def __init__(self, channels_in: int, channels_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels_in, channels_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels_out)
        self.conv2 = nn.Conv2d(channels_out, channels_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or channels_in != channels_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(channels_in, channels_out, 1, stride, bias=False),
                nn.BatchNorm2d(channels_out),
            )

    def forward(self, x: Tensor) -> Tensor:
        """relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))."""
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class SmallResNet(nn.Module):
    """A 3x3 stem, three stages of two basic blocks (32, 64, 128 channels), pooling, a head."""

    def __init__(self, classes: int = 10, widths: Sequence[int] = (32, 64, 128)) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU()
        )
        blocks: list[nn.Module] = []
        channels = widths[0]
        for stage, width in enumerate(widths):
            blocks.append(BasicBlock(channels, width, 1 if stage == 0 else 2))
            blocks.append(BasicBlock(width, width, 1))
            channels = width
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(channels, classes)

    def forward(self, images: Tensor) -> Tensor:
        """Class logits for images of shape (batch, 3, height, width)."""
        return self.head(self.blocks(self.stem(images)).mean(dim=(2, 3)))


@dataclass(frozen=True)
class Workload:
    """A model, a synthetic batch and its loss: one training iteration's forward pass."""

    name: str
    build: Callable[[], nn.Module]
    batch: Callable[[torch.Generator, bool], tuple[Tensor, Tensor]]
    loss: Callable[[nn.Module, Tensor, Tensor], Tensor]


def _token_batch(generator: torch.Generator, quick: bool) -> tuple[Tensor, Tensor]:
    batch, seq_len = (2, 16) if quick else (8, 64)
    ids = torch.randint(0, 128, (batch, seq_len + 1), generator=generator)
    return ids[:, :-1], ids[:, 1:]


def _next_token_loss(model: nn.Module, ids: Tensor, targets: Tensor) -> Tensor:
    return F.cross_entropy(model(ids).flatten(0, 1), targets.flatten())


def _image_batch(generator: torch.Generator, quick: bool) -> tuple[Tensor, Tensor]:
    batch, side = (2, 16) if quick else (16, 32)
    return (
        torch.randn(batch, 3, side, side, generator=generator),
        torch.randint(0, 10, (batch,), generator=generator),
    )


def _class_loss(model: nn.Module, images: Tensor, labels: Tensor) -> Tensor:
    return F.cross_entropy(model(images), labels)


WORKLOADS: dict[str, Workload] = {
    w.name: w
    for w in [
        Workload("transformer", TinyTransformer, _token_batch, _next_token_loss),
        Workload("cnn", SmallResNet, _image_batch, _class_loss),
    ]
}

# ---------------------------------------------------------------------------------------
# the contenders and the timing loop

#: name -> (optimizer factory, zero_grad's set_to_none)
CONTENDERS: dict[str, tuple[Callable[[list[nn.Parameter]], Optimizer], bool]] = {
    "torch foreach": (lambda p: torch.optim.AdamW(p, foreach=True), True),
    "torch fused": (lambda p: torch.optim.AdamW(p, fused=True), True),
    "ours": (lambda p: ours.AdamW(p), True),
    "ours flat": (lambda p: ours.AdamW(p, flat=True), False),
}


@dataclass
class _Contender:
    model: nn.Module
    optimizer: Optimizer
    set_to_none: bool
    loss: float = float("nan")

    def iteration(self, workload: Workload, inputs: Tensor, targets: Tensor) -> list[float]:
        """One training iteration; return the seconds of zero_grad, forward+backward, step."""
        started = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=self.set_to_none)
        zeroed = time.perf_counter()
        loss = workload.loss(self.model, inputs, targets)
        loss.backward()
        backward_done = time.perf_counter()
        self.optimizer.step()
        finished = time.perf_counter()
        self.loss = loss.item()
        return [zeroed - started, backward_done - zeroed, finished - backward_done]


def _quartiles(values: list[float]) -> tuple[float, float]:
    if len(values) < 2:
        return values[0], values[0]
    q1, _, q3 = statistics.quantiles(values, n=4)
    return q1, q3


def run_workload(
    workload: Workload, threads: int, steps: int, warmup: int, quick: bool
) -> list[dict[str, Any]]:
    """Time every contender on ``workload`` with ``threads`` intra-op threads; one row each."""
    torch.manual_seed(0)
    reference = workload.build()
    generator = torch.Generator().manual_seed(1)
    contenders: dict[str, _Contender] = {}
    for name, (factory, set_to_none) in CONTENDERS.items():
        model = copy.deepcopy(reference)
        contenders[name] = _Contender(model, factory(list(model.parameters())), set_to_none)
    names = list(contenders)
    parts: dict[str, list[list[float]]] = {name: [] for name in names}
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for round_index in range(warmup + steps):
            inputs, targets = workload.batch(generator, quick)
            start = round_index % len(names)  # rotate who goes first
            for name in names[start:] + names[:start]:
                seconds = contenders[name].iteration(workload, inputs, targets)
                if round_index >= warmup:
                    parts[name].append(seconds)
    finally:
        torch.set_num_threads(previous)
    totals = {name: [sum(p) for p in parts[name]] for name in names}
    torch_names = [name for name in names if name.startswith("torch")]
    fastest = min(torch_names, key=lambda name: statistics.median(totals[name]))
    n_params = sum(p.numel() for p in reference.parameters())
    rows = []
    for name in names:
        zero, forward_backward, step = ([p[k] for p in parts[name]] for k in range(3))
        per_round_ratio = [t / f for t, f in zip(totals[name], totals[fastest], strict=True)]
        q1, q3 = _quartiles(per_round_ratio)
        total = statistics.median(totals[name])
        rows.append(
            {
                "model": workload.name,
                "params": n_params,
                "threads": threads,
                "candidate": name,
                "fastest_torch": fastest,
                "iteration_ms": 1e3 * total,
                "ratio": total / statistics.median(totals[fastest]),
                "ratio_q1": q1,
                "ratio_q3": q3,
                "forward_backward_ms": 1e3 * statistics.median(forward_backward),
                "forward_backward_ratio": statistics.median(forward_backward)
                / statistics.median([p[1] for p in parts[fastest]]),
                "step_ms": 1e3 * statistics.median(step),
                "zero_grad_ms": 1e3 * statistics.median(zero),
                "step_share": statistics.median(step) / total,
                "final_loss": contenders[name].loss,
                "steps": steps,
            }
        )
    return rows


def run(
    quick: bool = False,
    threads: Sequence[int] | None = None,
    models: Sequence[str] = tuple(WORKLOADS),
    steps: int | None = None,
    warmup: int | None = None,
) -> list[dict[str, Any]]:
    """Run the benchmark; return one row per model, thread count and contender.

    ``threads`` defaults to one thread and torch's current thread count. ``quick`` shrinks the
    batches and the number of iterations to a smoke test of a few seconds.
    """
    if threads is None:
        threads = sorted({1, torch.get_num_threads()})
    steps = steps if steps is not None else (3 if quick else 30)
    warmup = warmup if warmup is not None else (1 if quick else 5)
    rows = []
    for name in models:
        for count in threads:
            rows.extend(run_workload(WORKLOADS[name], count, steps, warmup, quick))
    return rows


def flat_gradient_cost(workload: Workload, threads: int, repeats: int) -> dict[str, Any]:
    """Milliseconds of the gradient work flat mode adds to every iteration (best of ``repeats``).

    With ``zero_grad(set_to_none=False)`` the gradient buffer is zeroed (one memset), and
    autograd then adds each new gradient into its view of the buffer in place (read two
    arrays, write one). torch.optim and our default mode pay neither: after
    ``zero_grad()`` autograd keeps the freshly computed gradient tensor as ``.grad``. Both
    costs are measured here on the model's parameter shapes, outside the model, where they
    are short enough for a best-of-N timing to be stable on a busy machine.
    """
    torch.manual_seed(0)
    shapes = [p.shape for p in workload.build().parameters()]
    new_grads = [torch.randn(shape) for shape in shapes]
    buffer = torch.zeros(sum(g.numel() for g in new_grads))
    views = [
        v.view(shape)
        for v, shape in zip(buffer.split([g.numel() for g in new_grads]), shapes, strict=True)
    ]

    def accumulate() -> None:
        for view, grad in zip(views, new_grads, strict=True):
            view += grad

    def best_ms(work: Callable[[], object]) -> float:
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            work()
            times.append(time.perf_counter() - started)
        return 1e3 * min(times)

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        zero_ms, accumulate_ms = best_ms(buffer.zero_), best_ms(accumulate)
    finally:
        torch.set_num_threads(previous)
    return {
        "model": workload.name,
        "threads": threads,
        "tensors": len(shapes),
        "zero_ms": zero_ms,
        "accumulate_ms": accumulate_ms,
    }


def format_flat_cost(costs: list[dict[str, Any]], rows: list[dict[str, Any]]) -> str:
    """Flat mode's extra gradient work next to what its step saves (Markdown)."""
    lines = [
        "| model | threads | tensors | zero buffer ms | in-place accumulate ms "
        "| step saved ms (ours - ours flat) | net extra ms (+ = flat slower) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for c in costs:
        same = {
            r["candidate"]: r
            for r in rows
            if r["model"] == c["model"] and r["threads"] == c["threads"]
        }
        saved = same["ours"]["step_ms"] - same["ours flat"]["step_ms"]
        extra = c["zero_ms"] + c["accumulate_ms"]
        lines.append(
            f"| {c['model']} | {c['threads']} | {c['tensors']} | {c['zero_ms']:.2f} "
            f"| {c['accumulate_ms']:.2f} | {saved:.2f} | {extra - saved:+.2f} |"
        )
    return "\n".join(lines)


def format_table(rows: list[dict[str, Any]]) -> str:
    """The rows as a Markdown table; ratios are to torch's fastest AdamW in the same run."""
    lines = [
        "| model | threads | contender | iteration ms | ratio | ratio IQR | fwd+bwd ms "
        "| fwd+bwd ratio | step ms | step share |",
        "|---|---:|---|---:|---:|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        model = f"{r['model']} ({r['params'] / 1e6:.1f}M)"
        lines.append(
            f"| {model} | {r['threads']} | {r['candidate']} | {r['iteration_ms']:.1f} "
            f"| **{r['ratio']:.3f}** | {r['ratio_q1']:.3f}-{r['ratio_q3']:.3f} "
            f"| {r['forward_backward_ms']:.1f} | {r['forward_backward_ratio']:.3f} "
            f"| {r['step_ms']:.2f} | {100 * r['step_share']:.1f}% |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    from torchopt_edu.cli.bench_e2e import main

    raise SystemExit(main())
