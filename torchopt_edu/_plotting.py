"""Line styles that keep overlapping curves visible, and notes on curves that coincide.

A drop-in optimizer draws exactly the curve of its torch.optim twin (``adam`` and
``torch.optim.Adam``), and a later line hides an earlier one. Each curve gets its own line
style and marker, and the legend says which curves are identical.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

LINE_STYLES = ("-", "--", ":", "-.")
MARKERS = ("o", "s", "^", "v", "D", "x", "+", "*")


def line_style(index: int, points: int) -> dict[str, Any]:
    """Matplotlib keywords of the ``index``-th curve of ``points`` points: a line style and a
    marker, markers staggered so that two identical curves show both."""
    every = max(1, points // 8)
    return {
        "linestyle": LINE_STYLES[index % len(LINE_STYLES)],
        "marker": MARKERS[index % len(MARKERS)],
        "markevery": (index % every, every),
        "markersize": 4,
    }


def _same(a: Sequence[float], b: Sequence[float], rtol: float) -> bool:
    return len(a) == len(b) and all(
        math.isclose(x, y, rel_tol=rtol, abs_tol=0.0) or (math.isnan(x) and math.isnan(y))
        for x, y in zip(a, b, strict=True)
    )


def identical_to(curves: Mapping[str, Sequence[float]], rtol: float = 1e-6) -> dict[str, str]:
    """For each curve equal (to ``rtol``, point by point) to an earlier one, that one's name."""
    twins: dict[str, str] = {}
    names = list(curves)
    for position, name in enumerate(names):
        for earlier in names[:position]:
            if earlier not in twins and _same(curves[name], curves[earlier], rtol):
                twins[name] = earlier
                break
    return twins


def legend_labels(curves: Mapping[str, Sequence[float]], rtol: float = 1e-6) -> dict[str, str]:
    """Each curve's legend label: its name, with ``(identical to X)`` where it repeats ``X``."""
    twins = identical_to(curves, rtol)
    return {
        name: f"{name} (identical to {twins[name]})" if name in twins else name for name in curves
    }
