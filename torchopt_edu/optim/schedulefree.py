r"""Schedule-Free SGD and AdamW: no learning-rate schedule, an average instead.

Defazio, Yang, Mehta, Mishchenko, Khaled and Cutkosky, 2024, "The Road Less Scheduled",
https://arxiv.org/abs/2405.15682. Three sequences live side by side:

.. math::
    y_t &= (1-\beta)\, z_t + \beta\, x_t
        &&\text{where the gradient is evaluated (the parameters in train mode)} \\
    z_{t+1} &= z_t - \gamma_t\, u_t
        &&\text{the base optimizer's step, } u_t \text{ from } \nabla f(y_t) \\
    x_{t+1} &= (1-c_{t+1})\, x_t + c_{t+1}\, z_{t+1}
        &&\text{the weighted average (the parameters in eval mode)}

with :math:`\gamma_t = \gamma \min(1, (t+1)/\text{warmup\_steps})` the warmed-up learning
rate, the weights :math:`w_t = (t+1)^r\, \gamma_{\max,t}^{\text{weight\_lr\_power}}`
(:math:`\gamma_{\max,t}` the largest :math:`\gamma_s` so far) and
:math:`c_{t+1} = w_t / \sum_{s \le t} w_s`. Only :math:`y` (in the parameter) and
:math:`z` (``state["z"]``) are stored; :math:`x = (y - (1-\beta) z)/\beta` is recovered when
needed. Expanding :math:`y_{t+1}` in terms of :math:`y_t` gives the in-place update the code
uses:

.. math::
    y_{t+1} = (1-c_{t+1})\, y_t + c_{t+1}\, z_t + \gamma_t\,(\beta(1-c_{t+1}) - 1)\, u_t

**Train and eval modes.** The parameters hold :math:`y` in train mode and :math:`x` in eval
mode. Call ``optimizer.eval()`` before evaluating or saving a model (it moves the parameters
to the average :math:`x`, usually the better model) and ``optimizer.train()`` before training
again (back to :math:`y`). Both are no-ops when already in that mode. Unlike the reference
package, which starts in eval mode and refuses to step until ``train()`` is called, these
optimizers start in train mode, so a plain training loop works unchanged (for a parameter
without state, the two modes are the same point). ``step()`` in eval mode raises
``RuntimeError`` and changes nothing, as the reference does: a gradient taken at :math:`x`
is not the gradient the method needs.

**BatchNorm.** Running statistics were accumulated at the :math:`y` points, not at
:math:`x`. After ``optimizer.eval()``, recompute them at :math:`x` with a few forward passes
in train mode and no gradients, then evaluate::

    optimizer.eval()
    model.train()
    with torch.no_grad():
        for batch, _ in itertools.islice(train_loader, 50):
            model(batch)
    model.eval()
    evaluate(model)
    optimizer.train(); model.train()  # resume training

(``torch.nn.modules.batchnorm._BatchNorm.reset_running_stats()`` first, with ``momentum=None``
for a plain average, if you want the statistics of :math:`x` alone.)

**State and checkpoints.** Per parameter: ``z`` (and ``exp_avg_sq`` for AdamW); per param
group: ``k`` (steps taken), ``lr_max``, ``weight_sum``, ``scheduled_lr`` and ``train_mode``,
named as in the reference package ``schedulefree``, so its state dicts load here and ours
there. Save in eval mode, as the reference recommends, and call ``train()`` after loading.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from torchopt_edu.optim._base import Bucket, EduOptimizer, Hyper, Impl
from torchopt_edu.optim._checks import (
    as_float,
    check_betas,
    check_flag,
    check_int,
    check_lr,
    check_non_negative,
    check_number,
)
from torchopt_edu.optim._compiled import compiled_kernel, scalars_for

__all__ = ["SGDScheduleFree", "AdamWScheduleFree", "SGDScheduleFreeHyper", "AdamWScheduleFreeHyper"]


@dataclass(frozen=True)
class _Average:
    """One step of the warm-up and averaging schedule of a param group (plain numbers)."""

    lr: float  # the warmed-up learning rate gamma_t
    lr_max: float
    weight_sum: float
    ckp1: float  # c_{t+1}, the weight of z_{t+1} in the average x_{t+1}

    @classmethod
    def of(cls, group: dict[str, Any]) -> _Average:
        """The schedule of the step about to be taken (the group's counters are not changed)."""
        k = group["k"]
        warmup = group["warmup_steps"]
        lr = as_float(group["lr"]) * ((k + 1) / warmup if k < warmup else 1.0)
        lr_max = max(lr, group["lr_max"])
        weight = (k + 1) ** group["r"] * lr_max ** group["weight_lr_power"]
        weight_sum = group["weight_sum"] + weight
        ckp1 = weight / weight_sum if weight_sum != 0 else 0.0
        return cls(lr=lr, lr_max=lr_max, weight_sum=weight_sum, ckp1=ckp1)


@dataclass(frozen=True)
class SGDScheduleFreeHyper(Hyper):
    """What one Schedule-Free SGD update reads: ``lr`` is the warmed-up rate of this step."""

    momentum: float
    weight_decay: float
    ckp1: float


@dataclass(frozen=True)
class AdamWScheduleFreeHyper(Hyper):
    """What one Schedule-Free AdamW update reads: ``lr`` is the warmed-up rate of this step."""

    beta1: float
    beta2: float
    eps: float
    weight_decay: float
    ckp1: float
    k: int  # steps taken before this one; the bias correction uses k + 1


class _ScheduleFree(EduOptimizer):
    """The train/eval switch and the averaging schedule both Schedule-Free methods share."""

    fused_on_accelerators = False

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        defaults: dict[str, Any],
        *,
        flat: bool,
    ) -> None:
        counters = dict(k=0, train_mode=True, weight_sum=0.0, lr_max=-1.0, scheduled_lr=0.0)
        defaults = {**defaults, **counters}
        self.check_options(defaults)
        super().__init__(params, defaults, flat=flat)

    @classmethod
    def check_options(cls, options: dict[str, Any]) -> None:
        """The schedule's options and, in a loaded group, its counters: finite, >= 0."""
        check_lr(options["lr"])
        check_non_negative("weight_decay", options["weight_decay"])
        check_int("warmup_steps", options["warmup_steps"], minimum=0)
        check_number("r", options["r"], 0.0)
        check_number("weight_lr_power", options["weight_lr_power"], 0.0)
        check_int("k", options["k"], minimum=0)
        check_flag("train_mode", options["train_mode"])
        check_number("weight_sum", options["weight_sum"], 0.0)
        check_number("lr_max", options["lr_max"], -1.0)
        check_number("scheduled_lr", options["scheduled_lr"], 0.0)

    def _beta(self, group: dict[str, Any]) -> float:
        """The interpolation weight beta between z and x (momentum or betas[0])."""
        raise NotImplementedError

    def _init_state(self, param: Tensor, state: dict[str, Any], group: dict[str, Any]) -> None:
        state["z"] = torch.clone(param, memory_format=torch.preserve_format).detach()

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a param group in the optimizer's current mode, with its own schedule counters."""
        if isinstance(param_group, dict) and self.param_groups:
            param_group = {"train_mode": self.param_groups[0]["train_mode"], **param_group}
        super().add_param_group(param_group)

    @torch.no_grad()
    def eval(self) -> None:
        """Move the parameters to the average ``x`` (for evaluation and checkpoints)."""
        for group in self.param_groups:
            if group["train_mode"]:
                beta = self._beta(group)
                for p in group["params"]:
                    if "z" in self.state.get(p, {}):
                        p.lerp_(self.state[p]["z"], 1 - 1 / beta)  # x = (y - (1-beta) z)/beta
                group["train_mode"] = False

    @torch.no_grad()
    def train(self) -> None:
        """Move the parameters to ``y``, where training evaluates the gradient."""
        for group in self.param_groups:
            if not group["train_mode"]:
                beta = self._beta(group)
                for p in group["params"]:
                    if "z" in self.state.get(p, {}):
                        p.lerp_(self.state[p]["z"], 1 - beta)  # y = (1-beta) z + beta x
                group["train_mode"] = True

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """One step at ``y``; raises ``RuntimeError`` (changing nothing) in eval mode."""
        in_eval = [i for i, group in enumerate(self.param_groups) if not group["train_mode"]]
        if in_eval:
            raise RuntimeError(
                f"{type(self).__name__}.step() was called in eval mode (param groups {in_eval}): "
                "the parameters hold the average x, not the point y where gradients belong. "
                "Call optimizer.train() before training and optimizer.eval() before evaluating."
            )
        loss = super().step(closure)
        for group in self.param_groups:  # every group's clock advances, as in the reference
            average = _Average.of(group)
            group["k"] += 1
            group["scheduled_lr"] = average.lr
            group["lr_max"] = average.lr_max
            group["weight_sum"] = average.weight_sum
        return loss


def has_modes(optimizer: Optimizer) -> bool:
    """Whether ``optimizer`` has ``train()`` and ``eval()`` modes (Schedule-Free's)."""
    return callable(getattr(optimizer, "eval", None)) and callable(
        getattr(optimizer, "train", None)
    )


@contextmanager
def evaluation_point(optimizer: Optimizer) -> Iterator[None]:
    """Within the block, the parameters hold the point to evaluate; afterwards, training resumes.

    For a Schedule-Free optimizer (any optimizer with ``train()`` and ``eval()`` modes) that
    is the average ``x`` (``optimizer.eval()`` on entry, ``optimizer.train()`` on exit, also
    when the block raises); for any other optimizer the parameters already are that point and
    nothing happens. Training loops that take any optimizer evaluate with::

        with evaluation_point(optimizer):
            accuracy = evaluate(model)
    """
    modes = has_modes(optimizer)
    if modes:
        optimizer.eval()
    try:
        yield
    finally:
        if modes:
            optimizer.train()


class SGDScheduleFree(_ScheduleFree):
    r"""Schedule-Free SGD (Defazio et al., 2024, https://arxiv.org/abs/2405.15682).

    The module docstring gives the three sequences; here the base step is SGD with an L2
    penalty taken at :math:`y`:

    .. math::
        u_t &= \nabla f(y_t) + \lambda y_t \\
        y_{t+1} &= (1-c_{t+1})\, y_t + c_{t+1} z_t + \gamma_t(\beta(1-c_{t+1}) - 1)\, u_t \\
        z_{t+1} &= z_t - \gamma_t u_t

    with :math:`\beta` = ``momentum``. State: ``z``; group counters ``k``, ``lr_max``,
    ``weight_sum``, ``scheduled_lr``, ``train_mode`` (see the module docstring for
    ``train()``/``eval()``, warm-up and BatchNorm).

    Defaults (as the reference ``schedulefree.SGDScheduleFree``): ``lr=1.0, momentum=0.9,
    weight_decay=0, warmup_steps=0, r=0, weight_lr_power=2``. ``momentum`` must lie in
    (0, 1). ``flat=True`` keeps parameters, gradients and ``z`` in one buffer per device and
    dtype (one kernel per line for thousands of small tensors).

    When to use it: where you would use SGD with momentum and a tuned schedule (vision
    models); it needs no stopping time and typically matches cosine decay. Learning rates are
    larger than for plain SGD (1.0 to 10 are usual with warm-up).

    Implementations: the per-tensor loop below, and a multi-tensor ``torch._foreach_*`` path
    with the same lines (the default). No torch fused kernel computes this update;
    ``compiled=True`` generates one with ``torch.compile`` (:func:`sgd_schedulefree_kernel`,
    built with the optimizer, a C++ compiler needed): one pass reading :math:`y, g, z` and
    writing :math:`y, z`. Use it with ``flat=True`` (one call per step; without it, one call
    of about 40 us per tensor).
    """

    hyper = SGDScheduleFreeHyper

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float | Tensor = 1.0,
        momentum: float = 0.9,
        weight_decay: float = 0,
        warmup_steps: int = 0,
        r: float = 0.0,
        weight_lr_power: float = 2.0,
        *,
        foreach: bool | None = None,
        fused: bool | None = None,
        compiled: bool = False,
        flat: bool = False,
    ) -> None:
        defaults = dict(
            lr=lr,
            momentum=momentum,
            weight_decay=weight_decay,
            warmup_steps=warmup_steps,
            r=r,
            weight_lr_power=weight_lr_power,
            foreach=foreach,
            fused=fused,
            compiled=compiled,
        )
        super().__init__(params, defaults, flat=flat)

    @classmethod
    def check_options(cls, options: dict[str, Any]) -> None:
        """The momentum in (0, 1), then the schedule's rules."""
        check_number("momentum", options["momentum"], 0.0, 1.0, open_low=True, open_high=True)
        super().check_options(options)

    def _beta(self, group: dict[str, Any]) -> float:
        return group["momentum"]

    def _hyper(self, group: dict[str, Any]) -> SGDScheduleFreeHyper:
        average = _Average.of(group)
        return SGDScheduleFreeHyper(
            lr=average.lr,
            momentum=group["momentum"],
            weight_decay=group["weight_decay"],
            ckp1=average.ckp1,
        )


class AdamWScheduleFree(_ScheduleFree):
    r"""Schedule-Free AdamW (Defazio et al., 2024, https://arxiv.org/abs/2405.15682).

    The module docstring gives the three sequences; here the base step is Adam's normalised
    gradient (no first moment: the averaging plays its part) plus weight decay taken at
    :math:`y`:

    .. math::
        v_t &= \beta_2 v_{t-1} + (1-\beta_2)\, g_t^2, \qquad g_t = \nabla f(y_t) \\
        u_t &= \frac{g_t}{\sqrt{v_t / (1-\beta_2^{t})} + \epsilon} + \lambda y_t \\
        y_{t+1} &= (1-c_{t+1})\, y_t + c_{t+1} z_t + \gamma_t(\beta_1(1-c_{t+1}) - 1)\, u_t \\
        z_{t+1} &= z_t - \gamma_t u_t

    with :math:`t` = ``k + 1`` the group's step. State: ``z``, ``exp_avg_sq`` (v); group
    counters ``k``, ``lr_max``, ``weight_sum``, ``scheduled_lr``, ``train_mode`` (see the
    module docstring for ``train()``/``eval()``, warm-up and BatchNorm).

    Defaults (as the reference ``schedulefree.AdamWScheduleFree``): ``lr=0.0025,
    betas=(0.9, 0.999), eps=1e-8, weight_decay=0, warmup_steps=0, r=0, weight_lr_power=2``.
    ``betas[0]`` must be > 0 (x is recovered from y and z by dividing by it). ``flat=True``
    keeps parameters, gradients, ``z`` and ``v`` in one buffer per device and dtype.

    When to use it: in place of AdamW plus a warm-up/cosine schedule, especially when the
    training length is not known in advance; use a warm-up (``warmup_steps``) as you would
    with AdamW, and evaluate in eval mode.

    Implementations: the per-tensor loop below; the multi-tensor ``torch._foreach_*`` path;
    and on CPU (the default there) torch's fused Adam kernel. With :math:`x_t` in the
    parameter the update becomes one Adam step of :math:`z` and two interpolations:

    .. math::
        y \leftarrow x_t = \text{lerp}(y_t, z_t, 1 - 1/\beta_1), \quad
        z_{t+1} = z_t - \gamma_t u_t \ \text{(fused Adam, } \beta_1 = 0\text{)}, \quad
        y_{t+1} = \text{lerp}(x_t, z_{t+1}, 1 - \beta_1 (1 - c_{t+1}))

    (Adam's first moment with :math:`\beta_1 = 0` is the gradient itself, so the gradient
    buffer serves as it, as in :class:`~torchopt_edu.optim.rmsprop.RMSprop`; the decay
    :math:`\lambda y_t = \lambda((1-\beta_1) z_t + \beta_1 x_t)` is the kernel's decoupled
    decay of :math:`z` plus one multi-tensor add). Three passes instead of ten, run over one
    cache-sized slice of the tensors at a time (:meth:`~torchopt_edu.optim._base.Bucket.chunks`).
    ``compiled=True`` runs the equations above as one kernel generated by ``torch.compile``
    (:func:`adamw_schedulefree_kernel`, built with the optimizer, a C++ compiler needed),
    one pass that reads :math:`y, g, z, v` once and writes :math:`y, z, v`, as many streams
    of memory as fused Adam. Use it with ``flat=True`` (one call per step; without it, one
    call of about 40 us per tensor).
    """

    hyper = AdamWScheduleFreeHyper

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float | Tensor = 0.0025,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        warmup_steps: int = 0,
        r: float = 0.0,
        weight_lr_power: float = 2.0,
        *,
        foreach: bool | None = None,
        fused: bool | None = None,
        compiled: bool = False,
        flat: bool = False,
    ) -> None:
        defaults = dict(
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            warmup_steps=warmup_steps,
            r=r,
            weight_lr_power=weight_lr_power,
            foreach=foreach,
            fused=fused,
            compiled=compiled,
        )
        super().__init__(params, defaults, flat=flat)

    @classmethod
    def check_options(cls, options: dict[str, Any]) -> None:
        """betas with betas[0] > 0 and eps >= 0, then the schedule's rules."""
        betas = options["betas"]
        check_betas(betas)
        if not as_float(betas[0]) > 0:
            raise ValueError(
                f"Invalid beta parameter at index 0: betas[0]={betas[0]} (AdamWScheduleFree "
                "needs betas[0] in (0, 1): x is recovered from y and z by dividing by it)"
            )
        check_non_negative("eps", options["eps"])
        super().check_options(options)

    def _beta(self, group: dict[str, Any]) -> float:
        return as_float(group["betas"][0])

    def _init_state(self, param: Tensor, state: dict[str, Any], group: dict[str, Any]) -> None:
        super()._init_state(param, state, group)
        state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)

    def _hyper(self, group: dict[str, Any]) -> AdamWScheduleFreeHyper:
        beta1, beta2 = (as_float(beta) for beta in group["betas"])
        if not 0 < beta1 < 1:
            raise ValueError(f"AdamWScheduleFree needs betas[0] in (0, 1), got {beta1}")
        average = _Average.of(group)
        return AdamWScheduleFreeHyper(
            lr=average.lr,
            beta1=beta1,
            beta2=beta2,
            eps=group["eps"],
            weight_decay=group["weight_decay"],
            ckp1=average.ckp1,
            k=group["k"],
        )

    def _fuse_blocker(self, group: dict[str, Any]) -> str | None:
        return None

    def _choose_impl(self, group: dict[str, Any], bucket: Bucket) -> Impl:
        impl = super()._choose_impl(group, bucket)
        if impl == "fused" and bucket.device.type != "cpu":
            # The gradient-as-first-moment aliasing is verified on the CPU kernel only.
            if group.get("fused"):
                raise RuntimeError("AdamWScheduleFree: fused=True is only available on CPU")
            return "foreach"
        return impl


# ---------------------------------------------------------------------------------------
# implementations: the reference loops, the fast paths, the generated kernels


def sgd_schedulefree_loop(b: Bucket, h: SGDScheduleFreeHyper) -> None:
    """Per tensor, line for line the equations of :class:`SGDScheduleFree`."""
    for y, grad, z in zip(b.params, b.grads, b.state("z"), strict=True):
        u = grad.add(y, alpha=h.weight_decay) if h.weight_decay != 0 else grad  # at y
        y.lerp_(z, h.ckp1)  # y = (1-c) y + c z
        y.add_(u, alpha=h.lr * (h.momentum * (1 - h.ckp1) - 1))
        z.sub_(u, alpha=h.lr)  # z = z - lr u


def sgd_schedulefree_foreach(b: Bucket, h: SGDScheduleFreeHyper) -> None:
    """The same update as :func:`sgd_schedulefree_loop` with one multi-tensor kernel per line."""
    for part in b.chunks():  # the passes over one cache-sized slice at a time
        zs, u = part.state("z"), part.grads
        if h.weight_decay != 0:
            u = torch._foreach_add(part.grads, part.params, alpha=h.weight_decay)
        torch._foreach_lerp_(part.params, zs, h.ckp1)
        torch._foreach_add_(part.params, u, alpha=h.lr * (h.momentum * (1 - h.ckp1) - 1))
        torch._foreach_sub_(zs, u, alpha=h.lr)


def adamw_schedulefree_loop(b: Bucket, h: AdamWScheduleFreeHyper) -> None:
    """Per tensor, line for line the equations of :class:`AdamWScheduleFree`."""
    bias_correction2 = 1 - h.beta2 ** (h.k + 1)
    for y, grad, z, v in zip(b.params, b.grads, b.state("z"), b.state("exp_avg_sq"), strict=True):
        v.mul_(h.beta2).addcmul_(grad, grad, value=1 - h.beta2)  # v = b2 v + (1-b2) g^2
        denom = v.div(bias_correction2).sqrt_().add_(h.eps)
        u = grad.div(denom)
        if h.weight_decay != 0:
            u.add_(y, alpha=h.weight_decay)  # decay taken at y
        y.lerp_(z, h.ckp1)  # y = (1-c) y + c z
        y.add_(u, alpha=h.lr * (h.beta1 * (1 - h.ckp1) - 1))
        z.sub_(u, alpha=h.lr)  # z = z - lr u


def adamw_schedulefree_foreach(b: Bucket, h: AdamWScheduleFreeHyper) -> None:
    """The same update as :func:`adamw_schedulefree_loop` with one multi-tensor kernel per line."""
    zs, vs = b.state("z"), b.state("exp_avg_sq")
    torch._foreach_mul_(vs, h.beta2)
    torch._foreach_addcmul_(vs, b.grads, b.grads, value=1 - h.beta2)
    denom = torch._foreach_div(vs, 1 - h.beta2 ** (h.k + 1))
    torch._foreach_sqrt_(denom)
    torch._foreach_add_(denom, h.eps)
    u = torch._foreach_div(b.grads, denom)
    del denom
    if h.weight_decay != 0:
        torch._foreach_add_(u, b.params, alpha=h.weight_decay)
    torch._foreach_lerp_(b.params, zs, h.ckp1)
    torch._foreach_add_(b.params, u, alpha=h.lr * (h.beta1 * (1 - h.ckp1) - 1))
    torch._foreach_sub_(zs, u, alpha=h.lr)


def adamw_schedulefree_fused(b: Bucket, h: AdamWScheduleFreeHyper) -> None:
    """The update as ``y -> x``, one fused Adam step of ``z``, ``x -> y`` (class docstring)."""
    # Adam with beta1 = 0 writes m = g into the gradient buffer, which already holds g; its
    # step k + 1 gives the bias correction 1 - beta2^(k+1) (and 1 - 0^(k+1) = 1).
    step = torch.full((), h.k + 1, dtype=torch.float32, device=b.device)
    kernel = torch._fused_adamw_ if h.weight_decay != 0 else torch._fused_adam_
    for part in b.chunks():  # the three passes over one cache-sized slice at a time
        zs = part.state("z")
        torch._foreach_lerp_(part.params, zs, 1 - 1 / h.beta1)  # y_t -> x_t
        kernel(
            zs,
            part.grads,
            part.grads,
            part.state("exp_avg_sq"),
            [],
            [step] * len(zs),
            lr=h.lr,
            beta1=0.0,
            beta2=h.beta2,
            weight_decay=h.weight_decay * (1 - h.beta1),  # the z part of lambda * y_t
            eps=h.eps,
            amsgrad=False,
            maximize=False,
        )
        if h.weight_decay != 0:  # the x part, with x_t in the parameters
            torch._foreach_add_(zs, part.params, alpha=-h.lr * h.weight_decay * h.beta1)
        torch._foreach_lerp_(part.params, zs, 1 - h.beta1 * (1 - h.ckp1))  # x_t -> y_{t+1}


@compiled_kernel
def sgd_schedulefree_kernel(y: Tensor, grad: Tensor, z: Tensor, scalars: Tensor) -> None:
    """The equations of :class:`SGDScheduleFree` for one flat tensor, compiled into one pass."""
    lr, momentum, weight_decay, ckp1 = scalars.unbind()
    u = grad + weight_decay * y  # at y
    y.lerp_(z, ckp1).add_(lr * (momentum * (1 - ckp1) - 1) * u)
    z.sub_(lr * u)


def sgd_schedulefree_compiled(b: Bucket, h: SGDScheduleFreeHyper) -> None:
    """:func:`sgd_schedulefree_kernel` over each (contiguous) tensor of the bucket, viewed flat."""
    scalars = scalars_for(b.params[0], [h.lr, h.momentum, h.weight_decay, h.ckp1])
    for y, grad, z in zip(b.params, b.grads, b.state("z"), strict=True):
        sgd_schedulefree_kernel(y.view(-1), grad.view(-1), z.view(-1), scalars)


@compiled_kernel
def adamw_schedulefree_kernel(
    y: Tensor, grad: Tensor, z: Tensor, v: Tensor, scalars: Tensor
) -> None:
    """The equations of :class:`AdamWScheduleFree` for one flat tensor, compiled into one pass."""
    lr, beta1, beta2, eps, weight_decay, ckp1, bias_correction2 = scalars.unbind()
    v.mul_(beta2).add_((1 - beta2) * grad * grad)
    u = grad / ((v / bias_correction2).sqrt() + eps) + weight_decay * y  # decay at y
    y.lerp_(z, ckp1).add_(lr * (beta1 * (1 - ckp1) - 1) * u)
    z.sub_(lr * u)


def adamw_schedulefree_compiled(b: Bucket, h: AdamWScheduleFreeHyper) -> None:
    """:func:`adamw_schedulefree_kernel` over each (contiguous) tensor, viewed flat."""
    bias_correction2 = 1 - h.beta2 ** (h.k + 1)
    scalars = scalars_for(
        b.params[0], [h.lr, h.beta1, h.beta2, h.eps, h.weight_decay, h.ckp1, bias_correction2]
    )
    for y, grad, z, v in zip(b.params, b.grads, b.state("z"), b.state("exp_avg_sq"), strict=True):
        adamw_schedulefree_kernel(y.view(-1), grad.view(-1), z.view(-1), v.view(-1), scalars)


SGDScheduleFree.paths = {
    "loop": sgd_schedulefree_loop,
    "foreach": sgd_schedulefree_foreach,
    "compiled": sgd_schedulefree_compiled,
}
SGDScheduleFree.compiled_kernels = (sgd_schedulefree_kernel,)
AdamWScheduleFree.paths = {
    "loop": adamw_schedulefree_loop,
    "foreach": adamw_schedulefree_foreach,
    "fused": adamw_schedulefree_fused,
    "compiled": adamw_schedulefree_compiled,
}
AdamWScheduleFree.compiled_kernels = (adamw_schedulefree_kernel,)
