"""Two-dimensional test functions: the landscapes optimizers are pictured on.

Each :class:`Function2D` is a torch function of a point ``xy`` (a tensor whose last dimension
holds ``(x, y)``, so one call evaluates a single point or a whole grid), with a box to draw and
search in, a start point, and its known minimum. Each one isolates one difficulty:

============== ================================ ==============================================
name           difficulty                        minimum
============== ================================ ==============================================
``rosenbrock`` a narrow curved valley            ``f(1, 1) = 0``
``rastrigin``  many local minima                 ``f(0, 0) = 0``
``beale``      flat plateaus and steep walls     ``f(3, 0.5) = 0``
``saddle``     escaping a saddle point           none (unbounded below; bounded only on its box)
``quadratic``  ill-conditioning (condition 50)   ``f(1, 0.5) = 0``
============== ================================ ==============================================

    from torchopt_edu.functions import FUNCTIONS

    rosenbrock = FUNCTIONS["rosenbrock"]
    xy = torch.tensor(rosenbrock.start, requires_grad=True)
    rosenbrock(xy).backward()        # xy.grad is the gradient at the start point
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "FUNCTIONS",
    "Function2D",
    "beale",
    "quadratic",
    "rastrigin",
    "rosenbrock",
    "saddle",
]

Box = tuple[tuple[float, float], tuple[float, float]]
"""``((x_low, x_high), (y_low, y_high))``."""


def rosenbrock(xy: Tensor) -> Tensor:
    """Rosenbrock's banana function (Rosenbrock 1960), ``a = 1``, ``b = 100``.

    .. math:: f(x, y) = (1 - x)^2 + 100\\,(y - x^2)^2

    The minimum ``f(1, 1) = 0`` lies at the bottom of a narrow parabolic valley ``y = x^2``:
    the walls are 100 times steeper than the floor, so a step large enough to move along the
    floor jumps across the valley.
    """
    x, y = xy.unbind(-1)
    return (1 - x) ** 2 + 100 * (y - x**2) ** 2


def rastrigin(xy: Tensor) -> Tensor:
    """Rastrigin's function (Rastrigin 1974) in two dimensions, ``A = 10``.

    .. math:: f(x, y) = 20 + x^2 - 10\\cos(2\\pi x) + y^2 - 10\\cos(2\\pi y)

    A bowl covered with a grid of local minima near every integer point; the global minimum is
    ``f(0, 0) = 0``. Gradient methods stop in the nearest local minimum unless their steps are
    long enough to hop over the ripples.
    """
    x, y = xy.unbind(-1)
    return 20 + x**2 - 10 * torch.cos(2 * math.pi * x) + y**2 - 10 * torch.cos(2 * math.pi * y)


def beale(xy: Tensor) -> Tensor:
    """Beale's function (Beale 1958).

    .. math:: f(x, y) = (1.5 - x + xy)^2 + (2.25 - x + xy^2)^2 + (2.625 - x + xy^3)^2

    The minimum ``f(3, 0.5) = 0`` sits in a long, nearly flat channel; away from it the ``x y^3``
    term makes the walls steep (gradients over ``10^4`` at the corners of the box), so
    gradient sizes span several orders of magnitude.
    """
    x, y = xy.unbind(-1)
    return (1.5 - x + x * y) ** 2 + (2.25 - x + x * y**2) ** 2 + (2.625 - x + x * y**3) ** 2


def saddle(xy: Tensor) -> Tensor:
    """The saddle ``f(x, y) = x^2 - y^2``.

    .. math:: f(x, y) = x^2 - y^2

    The origin is a saddle point: a minimum along ``x``, a maximum along ``y``. The function has
    no minimum (it is unbounded below as ``|y|`` grows); on the box ``[-1.5, 1.5]^2`` its lowest
    value is ``-2.25`` at ``(0, +-1.5)``. Started just off the ``x`` axis, gradient descent first
    slides towards the saddle, where the gradient vanishes, and has to escape along ``y``, where
    the gradient starts out tiny.
    """
    x, y = xy.unbind(-1)
    return x**2 - y**2


QUADRATIC_CONDITION = 50.0
"""Condition number of :func:`quadratic`: ratio of its largest to its smallest curvature."""

QUADRATIC_ANGLE = math.pi / 6
"""Angle between :func:`quadratic`'s flat direction and the ``x`` axis (30 degrees)."""

QUADRATIC_CENTER = (1.0, 0.5)
""":func:`quadratic`'s minimum; away from the origin, so that weight decay, which pulls towards
the origin, does not pull towards the minimum."""


def quadratic(xy: Tensor) -> Tensor:
    """An ill-conditioned quadratic bowl whose axes are turned away from the coordinate axes.

    .. math::

        u = (x - c_x) \\cos\\theta + (y - c_y) \\sin\\theta, \\quad
        v = -(x - c_x) \\sin\\theta + (y - c_y) \\cos\\theta, \\quad
        f(x, y) = \\tfrac12 (u^2 + \\kappa v^2)

    with ``kappa = 50`` (:data:`QUADRATIC_CONDITION`), ``theta = 30`` degrees
    (:data:`QUADRATIC_ANGLE`) and ``c = (1, 0.5)`` (:data:`QUADRATIC_CENTER`). The minimum is
    ``f(1, 0.5) = 0``. Gradient descent is stable only
    for ``lr < 2 / kappa`` and then shrinks the flat direction by ``1 - lr`` per step at best.
    The rotation matters: a per-coordinate (diagonal) rescaling, as in Adagrad, RMSprop or Adam,
    cannot undo the ill-conditioning of a bowl that is not aligned with the axes.
    """
    x, y = xy.unbind(-1)
    x, y = x - QUADRATIC_CENTER[0], y - QUADRATIC_CENTER[1]
    cos, sin = math.cos(QUADRATIC_ANGLE), math.sin(QUADRATIC_ANGLE)
    u = cos * x + sin * y
    v = -sin * x + cos * y
    return 0.5 * (u**2 + QUADRATIC_CONDITION * v**2)


@dataclass(frozen=True)
class Function2D:
    """A 2-D test function with the box it is drawn and searched in, a start and its minimum.

    Attributes:
        name: short key (``"rosenbrock"``).
        title: name for plots (``"Rosenbrock"``).
        fn: ``fn(xy) -> f``: ``xy`` has shape ``(..., 2)``, the result shape ``(...)``.
        box: ``((x_low, x_high), (y_low, y_high))``.
        start: the start point ``(x, y)``, inside the box.
        minimum: location of the global minimum, or ``None`` (the saddle has none).
        minimum_value: the value there, or ``None``.
        difficulty: what the function tests, in a few words.
    """

    name: str
    title: str
    fn: Callable[[Tensor], Tensor]
    box: Box
    start: tuple[float, float]
    minimum: tuple[float, float] | None
    minimum_value: float | None
    difficulty: str

    def __post_init__(self) -> None:
        (x_low, x_high), (y_low, y_high) = self.box
        if not (x_low < x_high and y_low < y_high):
            raise ValueError(f"{self.name}: box needs low < high on each axis, got {self.box}")
        for what, point in (("start", self.start), ("minimum", self.minimum)):
            if point is not None and not (
                x_low <= point[0] <= x_high and y_low <= point[1] <= y_high
            ):
                raise ValueError(f"{self.name}: {what} {point} lies outside the box {self.box}")
        if (self.minimum is None) != (self.minimum_value is None):
            raise ValueError(f"{self.name}: give both minimum and minimum_value, or neither")

    def __call__(self, xy: Tensor) -> Tensor:
        """``f(xy)`` for ``xy`` of shape ``(..., 2)``."""
        if xy.shape[-1:] != (2,):
            raise ValueError(
                f"{self.name} takes points of shape (..., 2), got shape {tuple(xy.shape)}"
            )
        return self.fn(xy)


FUNCTIONS: dict[str, Function2D] = {
    function.name: function
    for function in (
        Function2D(
            name="rosenbrock",
            title="Rosenbrock",
            fn=rosenbrock,
            box=((-2.0, 2.0), (-1.0, 3.0)),
            start=(-1.2, 1.0),  # Rosenbrock's own start
            minimum=(1.0, 1.0),
            minimum_value=0.0,
            difficulty="narrow curved valley",
        ),
        Function2D(
            name="rastrigin",
            title="Rastrigin",
            fn=rastrigin,
            box=((-5.12, 5.12), (-5.12, 5.12)),
            start=(-3.6, 4.4),
            minimum=(0.0, 0.0),
            minimum_value=0.0,
            difficulty="many local minima",
        ),
        Function2D(
            name="beale",
            title="Beale",
            fn=beale,
            box=((-4.5, 4.5), (-4.5, 4.5)),
            start=(-1.0, 2.0),
            minimum=(3.0, 0.5),
            minimum_value=0.0,
            difficulty="flat regions and steep walls",
        ),
        Function2D(
            name="saddle",
            title="Saddle",
            fn=saddle,
            box=((-1.5, 1.5), (-1.5, 1.5)),
            start=(1.2, 1e-3),  # just off the x axis, from which there is no escape
            minimum=None,
            minimum_value=None,
            difficulty="escaping a saddle point",
        ),
        Function2D(
            name="quadratic",
            title="Rotated quadratic",
            fn=quadratic,
            box=((-2.0, 2.0), (-2.0, 2.0)),
            start=(-1.5, -0.5),
            minimum=QUADRATIC_CENTER,
            minimum_value=0.0,
            difficulty="ill-conditioning, condition 50",
        ),
    )
}
"""Every test function by name, in the order the gallery shows them."""
