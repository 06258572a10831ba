"""One-dimensional searches for the scalar hyper-parameters fitted after training.

A log grid finds the cell of the optimum, golden-section search refines it inside the cell:
used for Laplace's prior precision (the evidence) and post-hoc temperature scaling (the
validation NLL), whose objectives are smooth and unimodal near their optimum but cheap enough
that a coarse grid guards against a poor start.

Example:
    >>> x, index = grid_golden_max(lambda g: -(g - 0.3) ** 2, np.linspace(-1.0, 1.0, 11))
    >>> round(float(x), 4), index
    (0.3, 6)

References:
    Kiefer, "Sequential minimax search for a maximum", Proc. AMS 1953 (golden section).
"""
import math

import numpy as np

__all__ = ["golden_max", "grid_golden_max"]


def golden_max(f, lo, hi, iters=40):
    """Maximiser of a unimodal ``f`` on ``[lo, hi]`` by golden-section search."""
    ratio = (math.sqrt(5.0) - 1.0) / 2.0
    a, b = lo, hi
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = f(c), f(d)
    for _ in range(iters):
        if fc >= fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = f(d)
    return (a + b) / 2.0


def grid_golden_max(f, grid, iters=40):
    """``(x, index)``: the best grid point's index, and the maximiser refined by golden section
    between that point's neighbours (clamped to the grid at its ends).

    A caller that must know whether the optimum lies beyond the grid checks
    ``index in (0, len(grid) - 1)``.
    """
    grid = np.asarray(grid, np.float64)
    i = int(np.argmax([f(g) for g in grid]))
    lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
    return golden_max(f, lo, hi, iters), i
