"""Gradient aggregation for multi-task learning, as pure functions on per-task gradients.

Every aggregator takes the per-task gradients of the shared parameters stacked as rows,
``grads: Tensor[T, D]`` (row ``i`` is ``g_i = grad L_i`` flattened), and returns one update
direction ``Tensor[D]`` that an optimizer follows like an ordinary gradient. They hold no
state and touch no model, so they can be checked on hand-made vectors and combined freely;
:class:`~torchopt_edu.multitask.optimizer.MultiTaskOptimizer` computes ``grads`` from a
model's losses and writes the result into ``.grad``.

The two simplex problems (MGDA's min-norm point, CAGrad's dual) are solved on the T x T Gram
matrix ``M = G G^T`` in float64, so their cost does not grow with the number of parameters.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import torch
from torch import Tensor

Aggregator = Callable[[Tensor], Tensor]
"""What :class:`MultiTaskOptimizer` accepts: per-task gradients ``[T, D]`` -> direction ``[D]``."""


def _check_grads(grads: Tensor) -> None:
    if not isinstance(grads, Tensor):
        raise TypeError(f"grads must be a Tensor of shape [T, D], got {type(grads).__name__}")
    if grads.dim() != 2 or grads.shape[0] == 0:
        raise ValueError(
            f"grads must have shape [T, D] with T >= 1 tasks, got shape {tuple(grads.shape)}"
        )
    if not grads.is_floating_point():
        raise TypeError(f"grads must be floating point, got dtype {grads.dtype}")
    finite = torch.isfinite(grads).all(dim=1)
    if not bool(finite.all()):
        rows = [int(i) for i in torch.nonzero(~finite).flatten()]
        raise ValueError(f"grads of task(s) {rows} have NaN or infinite entries")


def mean_gradient(grads: Tensor) -> Tensor:
    """The plain average ``g_0 = (1/T) sum_i g_i``: equal loss weights, the baseline."""
    _check_grads(grads)
    return grads.mean(0)


def gradient_cosine(grads: Tensor) -> Tensor:
    """Cosine similarity between every pair of task gradients, ``[T, T]``.

    ``cos_ij = <g_i, g_j> / (||g_i|| ||g_j||)``; a negative entry is a gradient conflict, the
    case PCGrad, MGDA and CAGrad are built for. A zero gradient has cosine 0 with every other.
    """
    _check_grads(grads)
    wide = grads.double()  # float32 norms overflow past 1e19 and lose subnormal gradients
    unit = wide / wide.norm(dim=1, keepdim=True).clamp_min(torch.finfo(torch.float64).tiny)
    return (unit @ unit.T).to(grads.dtype)


def pcgrad(grads: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """PCGrad, "gradient surgery" (Yu et al., 2020, arXiv:2001.06782, Algorithm 1).

    Each task gradient is projected off the normal plane of every gradient it conflicts with,
    taken in random order::

        g_i^PC = g_i
        for j != i in random order:
            if <g_i^PC, g_j> < 0:  g_i^PC <- g_i^PC - <g_i^PC, g_j> / ||g_j||^2 * g_j
        return sum_i g_i^PC

    Gradients that do not conflict pass through unchanged, so without conflict PCGrad is the
    plain sum. The order only matters for three or more tasks; ``generator`` fixes it.
    """
    _check_grads(grads)
    num_tasks = grads.shape[0]
    squared_norms = (grads * grads).sum(1).clamp_min(torch.finfo(grads.dtype).tiny)
    projected = grads.clone()
    for i in range(num_tasks):
        order = torch.randperm(num_tasks, generator=generator).tolist()
        for j in (j for j in order if j != i):
            # min(<g_i^PC, g_j>, 0) projects only on conflict, without a host-device sync.
            conflict = torch.clamp(projected[i] @ grads[j], max=0.0)
            projected[i] -= conflict / squared_norms[j] * grads[j]
    return projected.sum(0)


def _gram(grads: Tensor) -> Tensor:
    """``M = G G^T`` in float64 on the CPU: the simplex solvers only ever need inner products."""
    grads64 = grads.detach().to(torch.float64)
    return (grads64 @ grads64.T).cpu()


def _min_norm_step(gram: Tensor, weights: Tensor, direction: Tensor, max_step: float) -> float:
    """``argmin_{s in [0, max_step]} ||G^T (w + s d)||^2``, the exact line search of MGDA.

    The derivative ``2 (w^T M d + s d^T M d)`` vanishes at ``s = -w^T M d / d^T M d``, which is
    clipped to the interval; a direction with ``d^T M d = 0`` leaves the norm unchanged (s = 0).
    """
    curvature = float(direction @ gram @ direction)
    if curvature <= 0.0:
        return 0.0
    return min(max(-float(weights @ gram @ direction) / curvature, 0.0), max_step)


def _frank_wolfe(
    gradient: Callable[[Tensor], Tensor],
    line_search: Callable[[Tensor, Tensor, float], float],
    num_tasks: int,
    scale: float,
    *,
    max_iter: int,
    tol: float,
) -> Tensor:
    """Minimise a convex ``F`` on the simplex ``{w >= 0, sum w = 1}``: Frank-Wolfe with away steps.

    From ``w = 1/T``, each iteration either moves toward the vertex ``e_t``,
    ``t = argmin_i dF/dw_i`` (direction ``e_t - w``, step up to 1), or away from the worst vertex
    in use, ``a = argmax_{w_i > 0} dF/dw_i`` (direction ``w - e_a``, step up to
    ``w_a / (1 - w_a)``), whichever promises more; ``line_search(w, d, max_step)`` picks the exact
    step. Away steps let weights drop to exactly 0 and make the convergence linear rather than
    O(1/k) (Lacoste-Julien and Jaggi, 2015). It stops when the Frank-Wolfe gap
    ``<grad F(w), w - e_t>``, an upper bound on ``F(w) - min F``, is at most ``tol * scale``.
    """
    weights = torch.full((num_tasks,), 1.0 / num_tasks, dtype=torch.float64)
    vertices = torch.eye(num_tasks, dtype=torch.float64)
    for _ in range(max_iter):
        slope = gradient(weights)
        toward = int(slope.argmin())
        away = int(torch.where(weights > 0, slope, -math.inf).argmax())
        gap_toward = float(slope @ weights - slope[toward])
        gap_away = float(slope[away] - slope @ weights)
        if gap_toward <= tol * scale:
            break
        if gap_toward >= gap_away or weights[away] >= 1.0:
            direction, max_step = vertices[toward] - weights, 1.0
        else:
            away_weight = float(weights[away])
            direction, max_step = weights - vertices[away], away_weight / (1.0 - away_weight)
        weights = (weights + line_search(weights, direction, max_step) * direction).clamp_(min=0)
    return weights / weights.sum()


def min_norm_weights(grads: Tensor, *, max_iter: int = 1000, tol: float = 1e-12) -> Tensor:
    """MGDA's weights: the min-norm point of the task gradients' convex hull.

    Solves ``min_{w >= 0, sum w = 1} ||sum_i w_i g_i||^2`` (Desideri 2012; Sener and Koltun,
    2018, arXiv:1810.04650). For two tasks the answer is closed form,
    ``w_1 = clip(<g_2 - g_1, g_2> / ||g_1 - g_2||^2, 0, 1)``, ``w_2 = 1 - w_1``; for more,
    Wolfe's min-norm-point algorithm (Wolfe, 1976), which is exact after finitely many steps
    even when the gradients are collinear or duplicated (a rank-deficient Gram matrix, where
    Frank-Wolfe crawls). It stops when the Frank-Wolfe gap, an upper bound on the objective's
    distance to its minimum, is at most ``tol * max_i ||g_i||^2``, and warns
    (``RuntimeWarning``) if ``max_iter`` runs out first. Returns float64 weights ``[T]``.
    """
    _check_grads(grads)
    gram = _gram(grads)
    num_tasks = gram.shape[0]
    if num_tasks == 1:
        return torch.ones(1, dtype=torch.float64)
    if num_tasks == 2:
        start, end = torch.eye(2, dtype=torch.float64)
        return start + _min_norm_step(gram, start, end - start, 1.0) * (end - start)
    return _wolfe_min_norm(gram, max_iter=max_iter, tol=tol)


def _affine_min_norm(gram: Tensor, support: list[int]) -> Tensor:
    """``argmin_{sum v = 1} v^T M_SS v`` on the support S: the KKT system, solved least-squares."""
    size = len(support)
    kkt = torch.zeros(size + 1, size + 1, dtype=torch.float64)
    kkt[:size, :size] = gram[support][:, support]
    kkt[:size, size] = kkt[size, :size] = 1.0
    rhs = torch.zeros(size + 1, 1, dtype=torch.float64)
    rhs[size] = 1.0
    solution = torch.linalg.lstsq(kkt, rhs, driver="gelsd").solution[:size, 0]
    return solution / solution.sum()


def _wolfe_min_norm(gram: Tensor, *, max_iter: int, tol: float) -> Tensor:
    """Wolfe's min-norm point in the convex hull of the rows of ``G``, using ``M = G G^T`` only.

    Major step: with ``x = G^T w``, add the vertex ``j = argmin_i <g_i, x>`` unless the gap
    ``2 (<x, x> - <g_j, x>)`` is already small. Minor steps: move ``w`` toward the min-norm
    point ``v`` of the support's affine hull; if ``v`` leaves the simplex, stop at its boundary
    and drop the vertices whose weight reached 0, then try again.
    """
    num_tasks = gram.shape[0]
    scale = float(gram.diagonal().max())
    if scale == 0.0:  # every gradient is zero: every weighting gives d = 0
        return torch.full((num_tasks,), 1.0 / num_tasks, dtype=torch.float64)
    # Unit scale, so the KKT solve's rank cut-off does not depend on the gradients' magnitude.
    gram = gram / scale
    first = int(gram.diagonal().argmin())
    weights = torch.zeros(num_tasks, dtype=torch.float64)
    weights[first] = 1.0
    support = [first]
    converged = False
    for _ in range(max_iter):
        slope = gram @ weights  # <g_i, x>
        toward = int(slope.argmin())
        gap = 2.0 * float(weights @ slope - slope[toward])
        if gap <= tol or toward in support:
            # The best vertex already in use: no progress is possible; rounding-level gap is ok.
            converged = gap <= max(tol, 1e-12)
            break
        support.append(toward)
        for _minor in range(num_tasks + 1):
            affine = _affine_min_norm(gram, support)
            current = weights[support]
            if bool((affine > 0).all()):
                weights = torch.zeros_like(weights)
                weights[support] = affine
                break
            # Walk toward v until the first weight hits 0, and drop that vertex (always, even
            # when rounding leaves it a hair above 0, or the walk would stall there).
            ratios = torch.where(affine <= 0, current / (current - affine), math.inf)
            first_out = int(ratios.argmin())
            mixed = (current + float(ratios[first_out]) * (affine - current)).clamp_(min=0)
            mixed[first_out] = 0.0
            weights = torch.zeros_like(weights)
            weights[support] = mixed
            support = [i for i in support if float(weights[i]) > 0.0]
            weights /= weights.sum()
    if not converged:
        slope = gram @ weights
        gap = 2.0 * float(weights @ slope - slope.min())
        warnings.warn(
            f"min_norm_weights did not converge (max_iter={max_iter}): relative Frank-Wolfe "
            f"gap {gap:.3g} > tol = {tol:.3g}",
            RuntimeWarning,
            stacklevel=3,
        )
    return weights / weights.sum()


def mgda(grads: Tensor) -> Tensor:
    """MGDA: the min-norm convex combination ``d = sum_i w_i g_i`` (Sener and Koltun, 2018).

    ``-d`` decreases every task's loss at once unless ``d = 0`` (a Pareto-stationary point),
    but tasks with large gradients get small weights, so MGDA tends to favour the task that is
    already easiest. Applied to the gradients w.r.t. the shared representation rather than the
    shared parameters (``MultiTaskOptimizer(..., wrt="representation")``) this is MGDA-UB.
    """
    return min_norm_weights(grads).to(grads) @ grads


def _bisect_root(increasing: Callable[[float], float], high: float, iterations: int = 60) -> float:
    """Root in ``[0, high]`` of an increasing function, clipped to the ends when it has none."""
    if increasing(0.0) >= 0.0:
        return 0.0
    if increasing(high) <= 0.0:
        return high
    low = 0.0
    for _ in range(iterations):
        middle = 0.5 * (low + high)
        if increasing(middle) < 0.0:
            low = middle
        else:
            high = middle
    return 0.5 * (low + high)


def cagrad_weights(
    grads: Tensor, c: float = 0.5, *, max_iter: int = 1000, tol: float = 1e-12
) -> Tensor:
    """The dual weights of CAGrad: ``argmin_{w in simplex} <g_w, g_0> + c ||g_0|| ||g_w||``.

    ``g_w = sum_i w_i g_i`` and ``g_0`` is the mean gradient (Liu et al., 2021,
    arXiv:2110.14048, eq. 5). The objective is convex; Frank-Wolfe solves it, its exact line
    search a bisection on the (increasing) derivative along the search direction.
    """
    _check_grads(grads)
    if not (math.isfinite(c) and c >= 0.0):
        raise ValueError(f"c must be a finite number >= 0, got {c}")
    gram = _gram(grads)
    num_tasks = gram.shape[0]
    mean_gram = gram.mean(1)  # <g_i, g_0> for every i
    radius = c * math.sqrt(max(float(gram.mean()), 0.0))  # c ||g_0||
    tiny = torch.finfo(torch.float64).tiny

    def gradient(weights: Tensor) -> Tensor:
        gram_w = gram @ weights
        norm_w = math.sqrt(max(float(weights @ gram_w), tiny))
        return mean_gram + radius * gram_w / norm_w

    def line_search(weights: Tensor, direction: Tensor, max_step: float) -> float:
        # Along w + s d: ||g_w + s g_d||^2 = q0 + 2 s q1 + s^2 q2.
        gram_d = gram @ direction
        q0, q1, q2 = (
            float(weights @ gram @ weights),
            float(weights @ gram_d),
            float(direction @ gram_d),
        )
        linear = float(mean_gram @ direction)

        def derivative(s: float) -> float:
            norm = math.sqrt(max(q0 + s * (2.0 * q1 + s * q2), tiny))
            return linear + radius * (q1 + s * q2) / norm

        return _bisect_root(derivative, max_step)

    scale = float(gram.diagonal().max())
    return _frank_wolfe(gradient, line_search, num_tasks, scale, max_iter=max_iter, tol=tol)


def cagrad(grads: Tensor, c: float = 0.5, *, rescale: bool = True) -> Tensor:
    """CAGrad, conflict-averse gradient descent (Liu et al., 2021, arXiv:2110.14048).

    Finds the direction that most improves the worst task while staying near the average::

        max_d min_i <g_i, d>   subject to   ||d - g_0|| <= c ||g_0||,   g_0 = (1/T) sum_i g_i

    Its solution is ``d = g_0 + c ||g_0|| / ||g_w|| * g_w`` with ``w`` from
    :func:`cagrad_weights`. ``c = 0`` gives the mean gradient; large ``c`` approaches MGDA.
    With ``c >= 1`` the ball contains ``d = 0``: where the tasks are Pareto-stationary (0 in
    their convex hull, MGDA's min-norm point 0), no direction improves every task and ``d = 0``
    is the answer (the dual's ``g_w`` is 0 there and the formula above is undefined).
    ``rescale`` divides by ``1 + c^2`` as the authors' code does, so the step size stays
    comparable to plain averaging across values of ``c``. Computed in float64.
    """
    weights = cagrad_weights(grads, c)
    wide = grads.double()  # float32 norms overflow past 1e19
    if c >= 1.0 and _pareto_stationary(grads):
        return torch.zeros_like(grads[0])
    mean = wide.mean(0)
    combined = weights.to(wide) @ wide
    radius = c * mean.norm()
    direction = mean + radius / combined.norm().clamp_min(torch.finfo(wide.dtype).tiny) * combined
    direction = direction / (1.0 + c**2) if rescale else direction
    return direction.to(grads.dtype)


def _pareto_stationary(grads: Tensor) -> bool:
    """Whether 0 is in the convex hull of the task gradients (MGDA's min-norm point is 0, to
    a relative 1e-8 of the largest gradient)."""
    gram = _gram(grads)
    weights = _wolfe_min_norm(gram, max_iter=1000, tol=1e-12)
    return float(weights @ gram @ weights) <= 1e-16 * float(gram.diagonal().max())
