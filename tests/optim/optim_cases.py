"""Shared configuration matrix for the optimizer contract tests."""

from __future__ import annotations

from typing import Any

import torch
from torch.optim import Optimizer

from torchopt_edu import optim as ours

# (our class, torch.optim class, keyword arguments): every option and their combinations.
CASES: list[tuple[type[Optimizer], type[Optimizer], dict[str, Any]]] = [
    (ours.SGD, torch.optim.SGD, dict(lr=0.1)),
    (ours.SGD, torch.optim.SGD, dict(lr=0.05, weight_decay=0.1)),
    (ours.SGD, torch.optim.SGD, dict(lr=0.05, momentum=0.9)),
    (ours.SGD, torch.optim.SGD, dict(lr=0.05, momentum=0.9, dampening=0.3, weight_decay=0.01)),
    (ours.SGD, torch.optim.SGD, dict(lr=0.05, momentum=0.8, nesterov=True, maximize=True)),
    (ours.SGD, torch.optim.SGD, dict(lr=0.05, momentum=0.9, weight_decay=0.1, maximize=True)),
    (ours.Adagrad, torch.optim.Adagrad, dict()),
    (ours.Adagrad, torch.optim.Adagrad, dict(lr=0.1, lr_decay=0.01)),
    (ours.Adagrad, torch.optim.Adagrad, dict(lr=0.1, initial_accumulator_value=0.5, eps=1e-6)),
    (
        ours.Adagrad,
        torch.optim.Adagrad,
        dict(lr=0.1, weight_decay=0.1, maximize=True, lr_decay=0.1),
    ),
    (ours.RMSprop, torch.optim.RMSprop, dict()),
    (ours.RMSprop, torch.optim.RMSprop, dict(lr=0.001, alpha=0.9, eps=1e-6)),
    (ours.RMSprop, torch.optim.RMSprop, dict(centered=True)),
    (ours.RMSprop, torch.optim.RMSprop, dict(momentum=0.9, weight_decay=0.1)),
    (ours.RMSprop, torch.optim.RMSprop, dict(centered=True, momentum=0.5, maximize=True)),
    (ours.RMSprop, torch.optim.RMSprop, dict(weight_decay=0.01, maximize=True)),
    (ours.RMSprop, torch.optim.RMSprop, dict(momentum=0.9)),
    (ours.RMSprop, torch.optim.RMSprop, dict(lr=0.01, alpha=1.0, eps=1.0)),
    (ours.Adam, torch.optim.Adam, dict()),
    (ours.Adam, torch.optim.Adam, dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6)),
    (ours.Adam, torch.optim.Adam, dict(lr=0.01, weight_decay=0.1)),
    (ours.Adam, torch.optim.Adam, dict(lr=0.01, amsgrad=True, maximize=True)),
    (ours.Adam, torch.optim.Adam, dict(lr=0.01, amsgrad=True, weight_decay=0.1, maximize=True)),
    (ours.Adam, torch.optim.Adam, dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True)),
    (ours.AdamW, torch.optim.AdamW, dict()),
    (ours.AdamW, torch.optim.AdamW, dict(lr=0.01, weight_decay=0.1, amsgrad=True)),
    (ours.AdamW, torch.optim.AdamW, dict(lr=0.01, betas=(0.5, 0.9), maximize=True)),
]

# Our implementation switches: the reference loop, multi-tensor, default (fastest), flat buffers.
IMPLS: dict[str, dict[str, Any]] = {
    "loop": dict(foreach=False),
    "foreach": dict(foreach=True),
    "default": dict(),
    "flat": dict(flat=True),
}

# The generated kernels of the algorithms torch has no fused kernel for, per tensor and flat.
COMPILED_IMPLS: dict[str, dict[str, Any]] = {
    "compiled": dict(compiled=True),
    "compiled-flat": dict(compiled=True, flat=True),
}

SHAPES = [(4, 3), (5,), (2, 3, 2), ()]


def case_id(case: tuple[type[Optimizer], type[Optimizer], dict[str, Any]]) -> str:
    """A readable pytest id: class name and its non-default options."""
    cls, _, kwargs = case
    options = ",".join(f"{k}={v}" for k, v in kwargs.items())
    return f"{cls.__name__}({options})"


def make_params(dtype: torch.dtype, seed: int = 0, device: str = "cpu") -> list[torch.Tensor]:
    """Leaf tensors of several shapes (including a scalar), reproducible from ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    return [
        torch.randn(shape, generator=generator, dtype=dtype).to(device).requires_grad_()
        for shape in SHAPES
    ]


def clone_params(params: list[torch.Tensor]) -> list[torch.Tensor]:
    """Independent copies of ``params`` with the same values."""
    return [p.detach().clone().requires_grad_() for p in params]


def set_grads(param_lists: list[list[torch.Tensor]], step: int) -> None:
    """Give every list the same gradients, a deterministic function of the values and ``step``.

    The gradient depends on the parameters (a quadratic bowl plus noise), so differences
    between optimizers compound over steps instead of averaging out.
    """
    reference = param_lists[0]
    generator = torch.Generator().manual_seed(1000 + step)
    grads = [
        2 * p.detach() + torch.randn(p.shape, generator=generator, dtype=p.dtype).to(p.device)
        for p in reference
    ]
    for params in param_lists:
        for p, g in zip(params, grads, strict=True):
            p.grad = g.clone()


def assert_close_lists(
    actual: list[torch.Tensor], expected: list[torch.Tensor], dtype: torch.dtype
) -> None:
    """Values agree to ~1e-10 in float64 and ~1e-5 in float32 (relative)."""
    rtol, atol = (1e-10, 1e-12) if dtype == torch.float64 else (1e-5, 1e-6)
    for a, e in zip(actual, expected, strict=True):
        torch.testing.assert_close(a.detach(), e.detach(), rtol=rtol, atol=atol)


def stepped(cls: type[Optimizer], params: list[torch.Tensor], steps: int = 3, **kwargs: Any):
    """``cls(params, **kwargs)`` after ``steps`` steps on the gradients ``0.1 (t + 1) + p``."""
    optimizer = cls(params, **kwargs)
    for step in range(steps):
        for p in params:
            p.grad = torch.full_like(p, 0.1 * (step + 1)) + p.detach()
        optimizer.step()
    return optimizer
