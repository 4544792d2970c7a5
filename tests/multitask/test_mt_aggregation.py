"""Known answers for the pure aggregation functions: PCGrad, MGDA's min-norm solver, CAGrad."""

import math
import warnings

import pytest
import torch

from torchopt_edu.multitask import (
    cagrad,
    cagrad_weights,
    gradient_cosine,
    mean_gradient,
    mgda,
    min_norm_weights,
    pcgrad,
)


def t(*rows):
    return torch.tensor(rows, dtype=torch.float64)


def test_pcgrad_projects_conflicting_pair_by_hand():
    # <g1, g2> = -1 < 0: g1' = g1 + 1/2 g2 = (0.5, 0.5), g2' = g2 + 1/1 g1 = (0, 1).
    grads = t([1.0, 0.0], [-1.0, 1.0])
    torch.testing.assert_close(pcgrad(grads), t(0.5, 1.5))


def test_pcgrad_projected_parts_are_orthogonal_to_the_other_gradient():
    generator = torch.Generator().manual_seed(0)
    g1, g2 = torch.randn(2, 7, dtype=torch.float64, generator=generator)
    g2 = g2 - 2 * (g1 @ g2 + g1.norm()) / g1.norm() ** 2 * g1  # force a conflict
    assert g1 @ g2 < 0
    g1_pc = g1 - (g1 @ g2) / (g2 @ g2) * g2
    g2_pc = g2 - (g2 @ g1) / (g1 @ g1) * g1
    assert abs(float(g1_pc @ g2)) < 1e-12 and abs(float(g2_pc @ g1)) < 1e-12
    torch.testing.assert_close(pcgrad(torch.stack([g1, g2])), g1_pc + g2_pc)


def test_pcgrad_leaves_non_conflicting_gradients_alone():
    grads = t([1.0, 0.0, 2.0], [1.0, 1.0, 0.0], [0.0, 3.0, 1.0])
    assert (gradient_cosine(grads) >= 0).all()
    torch.testing.assert_close(pcgrad(grads), grads.sum(0))


def test_pcgrad_three_tasks_is_reproducible_with_a_generator():
    grads = t([1.0, 0.0], [-1.0, 1.0], [-0.5, -1.0])
    first = pcgrad(grads, torch.Generator().manual_seed(3))
    again = pcgrad(grads, torch.Generator().manual_seed(3))
    torch.testing.assert_close(first, again)
    assert torch.isfinite(pcgrad(t([1.0, 0.0], [0.0, 0.0]))).all()  # a zero gradient: no 0/0


def closed_form_two_task_weights(g1, g2):
    w1 = min(max(float((g2 - g1) @ g2 / (g1 - g2).norm() ** 2), 0.0), 1.0)
    return t(w1, 1.0 - w1)


@pytest.mark.parametrize("seed", range(5))
def test_min_norm_weights_two_tasks_match_closed_form(seed):
    generator = torch.Generator().manual_seed(seed)
    g1, g2 = torch.randn(2, 5, dtype=torch.float64, generator=generator)
    weights = min_norm_weights(torch.stack([g1, g2]))
    torch.testing.assert_close(weights, closed_form_two_task_weights(g1, g2))


def test_min_norm_weights_hand_examples():
    # g1 = (1, 0), g2 = (0, 2): w1 = 4/5, min-norm point (0.8, 0.4).
    torch.testing.assert_close(min_norm_weights(t([1.0, 0.0], [0.0, 2.0])), t(0.8, 0.2))
    # g2 = 2 g1: the hull's closest point to 0 is g1 itself (weights clipped to the vertex).
    torch.testing.assert_close(min_norm_weights(t([1.0, 0.0], [2.0, 0.0])), t(1.0, 0.0))
    # Orthonormal gradients: the centroid.
    torch.testing.assert_close(min_norm_weights(torch.eye(3, dtype=torch.float64)), t(1, 1, 1) / 3)


def test_frank_wolfe_agrees_with_closed_form_on_duplicated_task():
    g1, g2 = t([2.0, 1.0, 0.0], [-1.0, 1.0, 0.5])
    two = min_norm_weights(torch.stack([g1, g2])) @ torch.stack([g1, g2])
    three = min_norm_weights(torch.stack([g1, g2, g2]))
    torch.testing.assert_close(three @ torch.stack([g1, g2, g2]), two, atol=1e-6, rtol=0)


@pytest.mark.parametrize("seed", range(4))
def test_min_norm_weights_satisfy_optimality_conditions(seed):
    generator = torch.Generator().manual_seed(seed)
    grads = torch.randn(4, 3, dtype=torch.float64, generator=generator)
    weights = min_norm_weights(grads)
    assert weights.min() >= 0 and math.isclose(float(weights.sum()), 1.0)
    gram = grads @ grads.T
    value = weights @ gram @ weights
    # KKT on the simplex: <g_i, d> >= ||d||^2 for every i, with equality where w_i > 0.
    slopes = gram @ weights
    assert (slopes >= value - 1e-6).all()
    assert torch.allclose(
        slopes[weights > 1e-4], value.expand(int((weights > 1e-4).sum())), atol=1e-5
    )


def collinear_case():
    """Seed 18 of the reviewer's sweep: T=7 gradients in D=5 with g_1 = 2 g_0 (rank 5 Gram)."""
    generator = torch.Generator().manual_seed(18)
    num_tasks = int(torch.randint(3, 9, (1,), generator=generator))
    dim = int(torch.randint(2, 12, (1,), generator=generator))
    grads = torch.randn(num_tasks, dim, dtype=torch.float64, generator=generator)
    grads[1] = 2 * grads[0]
    assert (num_tasks, dim) == (7, 5)
    return grads


def test_min_norm_weights_reach_the_minimum_on_collinear_gradients():
    grads = collinear_case()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # converged: no warning
        weights = min_norm_weights(grads)
    direction = weights @ grads
    value = float(direction @ direction)
    # d is the min-norm point of the hull iff <g_i, d> >= ||d||^2 for every i (solver-free).
    assert float((grads @ direction).min()) >= value * (1 - 1e-9)
    scipy_optimize = pytest.importorskip("scipy.optimize")
    gram = (grads @ grads.T).numpy()
    reference = scipy_optimize.minimize(
        lambda w: w @ gram @ w,
        [1 / 7] * 7,
        jac=lambda w: 2 * gram @ w,
        method="SLSQP",
        bounds=[(0, 1)] * 7,
        constraints={"type": "eq", "fun": lambda w: w.sum() - 1},
        options={"ftol": 1e-15, "maxiter": 1000},
    )
    assert value <= reference.fun * (1 + 1e-6)


def test_min_norm_weights_warn_when_max_iter_runs_out():
    with pytest.warns(RuntimeWarning, match="did not converge \\(max_iter=1\\)"):
        weights = min_norm_weights(collinear_case(), max_iter=1)
    assert weights.min() >= 0 and math.isclose(float(weights.sum()), 1.0)


def test_mgda_direction_does_not_increase_any_task():
    grads = t([1.0, 0.2], [-0.8, 0.6], [0.1, -0.1])
    direction = mgda(grads)
    assert (grads @ direction >= direction @ direction - 1e-9).all()


def test_cagrad_with_c_zero_is_the_mean_gradient():
    grads = torch.randn(3, 11, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(cagrad(grads, c=0.0), mean_gradient(grads), rtol=0, atol=0)


@pytest.mark.parametrize("c", [0.25, 0.5, 1.0])
def test_cagrad_orthogonal_gradients_closed_form(c):
    # By symmetry w = (1/2, 1/2), g_w = g_0, so d = (1 + c) g_0, then divided by 1 + c^2.
    grads = t([1.0, 0.0], [0.0, 1.0])
    expected = (1 + c) / (1 + c**2) * grads.mean(0)
    torch.testing.assert_close(cagrad(grads, c=c), expected)
    torch.testing.assert_close(cagrad_weights(grads, c), t(0.5, 0.5))


@pytest.mark.parametrize("seed", range(3))
def test_cagrad_solves_its_primal_problem(seed):
    # max_d min_i <g_i, d>  s.t.  ||d - g0|| <= c ||g0||, checked against a dense grid in 2-D.
    generator = torch.Generator().manual_seed(seed)
    grads = torch.randn(2, 2, dtype=torch.float64, generator=generator)
    c = 0.6
    d = cagrad(grads, c=c, rescale=False)
    g0 = grads.mean(0)
    radius = c * g0.norm()
    assert (d - g0).norm() <= radius + 1e-9
    angle = torch.linspace(0, 2 * math.pi, 721, dtype=torch.float64)
    scale = torch.linspace(0, 1, 201, dtype=torch.float64)
    ring = torch.stack([angle.cos(), angle.sin()], -1)
    candidates = g0 + radius * (scale[:, None, None] * ring[None]).reshape(-1, 2)
    best_on_grid = (candidates @ grads.T).min(1).values.max()
    assert float((grads @ d).min()) >= float(best_on_grid) - 1e-4


def test_cagrad_with_large_c_points_like_mgda():
    grads = t([1.0, 0.3, 0.0], [-0.7, 0.5, 0.2])
    direction, min_norm = cagrad(grads, c=200.0), mgda(grads)
    cosine = direction @ min_norm / (direction.norm() * min_norm.norm())
    assert cosine > 0.9999


def test_gradient_cosine_values():
    cosine = gradient_cosine(t([1.0, 0.0], [-1.0, 1.0], [0.0, 0.0]))
    torch.testing.assert_close(cosine[0, 1], torch.tensor(-1 / math.sqrt(2), dtype=torch.float64))
    assert cosine[2].abs().max() == 0


def test_aggregators_reject_bad_gradients():
    with pytest.raises(ValueError, match=r"shape \[T, D\].*got shape \(3,\)"):
        pcgrad(torch.ones(3))
    with pytest.raises(TypeError, match="floating point"):
        mgda(torch.ones(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="c must be a finite number >= 0, got -0.1"):
        cagrad(torch.ones(2, 3), c=-0.1)
    with pytest.raises(TypeError, match="got list"):
        mean_gradient([[1.0, 2.0]])


# --- an independent reference: SciPy's SLSQP on the same simplex problems ---------------------


def _slsqp_on_simplex(objective, gradient, num_tasks):
    """``argmin`` of a smooth convex function on the simplex, by SciPy's SLSQP (a generic QP/NLP
    solver, sharing no code with ours), started from the centre."""
    from scipy.optimize import minimize

    result = minimize(
        objective,
        torch.full((num_tasks,), 1.0 / num_tasks, dtype=torch.float64).numpy(),
        jac=gradient,
        bounds=[(0.0, 1.0)] * num_tasks,
        constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1.0, "jac": lambda w: w * 0 + 1}],
        method="SLSQP",
        options={"ftol": 1e-16, "maxiter": 2000},
    )
    assert result.success, result.message
    return torch.from_numpy(result.x)


def _reference_min_norm(grads):
    gram = (grads @ grads.T).numpy()
    gram = gram / gram.diagonal().max()  # the same minimiser at unit scale
    return _slsqp_on_simplex(lambda w: w @ gram @ w, lambda w: 2 * gram @ w, len(gram))


def _reference_cagrad(grads, c):
    gram = (grads @ grads.T).numpy()
    gram = gram / gram.diagonal().max()
    mean_gram, radius = gram.mean(1), c * math.sqrt(gram.mean())

    def objective(w):  # <g_w, g_0> + c ||g_0|| ||g_w||
        return w @ mean_gram + radius * math.sqrt(w @ gram @ w)

    def gradient(w):
        return mean_gram + radius * gram @ w / math.sqrt(w @ gram @ w)

    return _slsqp_on_simplex(objective, gradient, len(gram))


def _conflicting_gradients(num_tasks, seed, dim=20):
    """Random task gradients with a shared component and conflicts: interior and boundary
    solutions both occur."""
    generator = torch.Generator().manual_seed(seed)
    grads = torch.randn(num_tasks, dim, dtype=torch.float64, generator=generator)
    return grads + 0.5 * torch.randn(dim, dtype=torch.float64, generator=generator)


@pytest.mark.parametrize("scale", [1.0, 1e-9, 1e6])
@pytest.mark.parametrize("num_tasks", [2, 3, 5, 8])
@pytest.mark.parametrize("seed", [0, 1])
def test_min_norm_weights_and_mgda_match_an_independent_solver(num_tasks, seed, scale):
    grads = _conflicting_gradients(num_tasks, seed)
    expected = _reference_min_norm(grads)
    weights = min_norm_weights(grads * scale)
    torch.testing.assert_close(weights, expected, atol=1e-6, rtol=0)
    assert float(weights.sum()) == pytest.approx(1.0, abs=1e-12) and bool((weights >= 0).all())
    # The direction itself, relative to the gradients' scale.
    torch.testing.assert_close(mgda(grads * scale) / scale, expected @ grads, atol=1e-6, rtol=0)


@pytest.mark.parametrize("scale", [1.0, 1e-9])
@pytest.mark.parametrize("num_tasks", [3, 5, 8])
@pytest.mark.parametrize("c", [0.2, 0.5, 2.0])
def test_cagrad_weights_and_direction_match_an_independent_solver(num_tasks, c, scale):
    grads = _conflicting_gradients(num_tasks, seed=num_tasks)
    expected = _reference_cagrad(grads, c)
    weights = cagrad_weights(grads * scale, c)
    torch.testing.assert_close(weights, expected, atol=1e-5, rtol=0)
    mean = grads.mean(0)
    combined = expected @ grads
    direction = (mean + c * mean.norm() / combined.norm() * combined) / (1 + c**2)
    torch.testing.assert_close(cagrad(grads * scale, c) / scale, direction, atol=1e-5, rtol=1e-5)
    unscaled = mean + c * mean.norm() / combined.norm() * combined
    torch.testing.assert_close(
        cagrad(grads * scale, c, rescale=False) / scale, unscaled, atol=1e-5, rtol=1e-5
    )


def test_float32_gradients_near_1e_minus_9_give_the_float64_answer():
    grads = _conflicting_gradients(5, seed=3)
    small = (grads * 1e-9).to(torch.float32)
    torch.testing.assert_close(
        min_norm_weights(small), _reference_min_norm(small.double()), atol=1e-5, rtol=0
    )
    torch.testing.assert_close(
        cagrad_weights(small, 0.5), _reference_cagrad(small.double(), 0.5), atol=1e-4, rtol=0
    )
    assert mgda(small).dtype == torch.float32 and cagrad(small).dtype == torch.float32


@pytest.mark.parametrize("scale", [1.0, 1e-9])
def test_two_identical_gradients_are_their_own_min_norm_point(scale):
    g = scale * t([3.0, -4.0, 1.0])[0]
    grads = torch.stack([g, g])  # ||g_1 - g_2||^2 = 0: the line search has no curvature
    weights = min_norm_weights(grads)
    assert float(weights.sum()) == 1.0 and bool((weights >= 0).all())
    torch.testing.assert_close(mgda(grads), g, rtol=1e-15, atol=0)


def test_cagrad_default_c_is_one_half():
    grads = _conflicting_gradients(4, seed=7)
    torch.testing.assert_close(
        cagrad_weights(grads), _reference_cagrad(grads, 0.5), atol=1e-5, rtol=0
    )
    assert torch.equal(cagrad_weights(grads), cagrad_weights(grads, 0.5))
    assert torch.equal(cagrad(grads), cagrad(grads, 0.5, rescale=True))


def test_min_norm_edge_cases_one_task_zero_gradients_and_the_far_vertex():
    one = min_norm_weights(t([3.0, -1.0]))
    assert one.dtype == torch.float64 and torch.equal(one, t(1.0))
    torch.testing.assert_close(mgda(t([3.0, -1.0])), t(3.0, -1.0))
    zeros = min_norm_weights(torch.zeros(4, 3, dtype=torch.float64))
    assert zeros.dtype == torch.float64 and torch.equal(zeros, torch.full((4,), 0.25).double())
    # g1 = 2 g2: the closest point is the far vertex g2; the step along e2 - e1 is clipped at 1.
    assert torch.equal(min_norm_weights(t([2.0, 0.0], [1.0, 0.0])), t(0.0, 1.0))
    assert mean_gradient(torch.zeros(2, 0)).shape == (0,)  # no shared parameters: no direction


@pytest.mark.parametrize(("num_tasks", "dim"), [(6, 2), (8, 2), (8, 3), (7, 4)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_min_norm_point_of_many_tasks_in_few_dimensions(num_tasks, dim, seed):
    """More tasks than dimensions: Wolfe's method must drop vertices from its support."""
    grads = _conflicting_gradients(num_tasks, seed, dim=dim)
    expected = _reference_min_norm(grads) @ grads  # the point is unique; its weights need not be
    weights = min_norm_weights(grads)
    assert float(weights.sum()) == pytest.approx(1.0, abs=1e-12) and bool((weights >= 0).all())
    torch.testing.assert_close(weights @ grads, expected, atol=1e-6, rtol=0)


def test_the_non_convergence_warning_points_at_the_callers_line():
    with pytest.warns(RuntimeWarning) as record:
        min_norm_weights(_conflicting_gradients(8, seed=0, dim=3), max_iter=1)
    assert record[0].filename == __file__  # stacklevel: the line that called min_norm_weights


def test_the_non_convergence_warning_reports_the_gap():
    grads = _conflicting_gradients(8, seed=0, dim=3)
    with pytest.warns(RuntimeWarning) as record:
        weights = min_norm_weights(grads, max_iter=1)
    gram = grads @ grads.T
    gram = gram / gram.diagonal().max()
    slope = gram @ weights
    gap = 2.0 * float(weights @ slope - slope.min())
    assert f"relative Frank-Wolfe gap {gap:.3g} > tol = 1e-12" in str(record[0].message)
