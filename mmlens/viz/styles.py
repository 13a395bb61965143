"""Line styles for curves that may coincide.

Each curve of a figure gets its own colour, dash pattern and hollow marker, and markers and lines
get thinner from one curve to the next, later curves drawn on top: two curves with equal values
still show both markers (a smaller shape inside a larger one) and both lines (a thin dashed line
inside a wider one), so no curve hides under another.
"""

from __future__ import annotations

from typing import Any

DASHES: tuple[Any, ...] = ("-", (0, (5, 2)), (0, (1, 1.5)), (0, (6, 2, 1, 2)), (0, (3, 1, 1, 1, 1, 1)), (0, (8, 3)))
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def line_style(i: int, n: int = 1) -> dict[str, Any]:
    """Keyword arguments of ``Axes.plot`` for curve ``i`` of ``n``: colour ``C{i}``, a dash
    pattern, a hollow marker, a marker size and line width that decrease with ``i`` and a z-order
    that draws later (thinner) curves on top."""
    return {
        "color": f"C{i % 10}",
        "ls": DASHES[i % len(DASHES)],
        "marker": MARKERS[i % len(MARKERS)],
        "mfc": "none",
        "ms": 3.5 + min(1.0, 6.0 / n) * (n - 1 - i) if n > 1 else 4.0,
        "mew": 1.1,
        "lw": 1.0 + 1.8 * (n - 1 - i) / (n - 1) if n > 1 else 1.3,
        "zorder": 2 + i,
    }
