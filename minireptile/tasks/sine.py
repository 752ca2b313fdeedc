"""The sine-wave regression tasks of section 4 (Figure 1).

    task tau = (a, b):  f(x) = a sin(x + b),   a ~ U[0.1, 5.0],   b ~ U[0, 2 pi]
    the learner sees p = 10 points x_1..x_p ~ U[-5, 5] and their values f(x_j)
    loss, Eq. (8): integral over [-5, 5] of (f_theta(x) - f(x))^2, computed on 50 equally
    spaced points (as their mean: the MSE of ``losses.py``)

Random numbers come from the run's host generator (``backend.make_rng``), so both
backends see the same tasks; arrays go to the device in the selected dtype. Meta-training
on them is ``train.train_sine``, evaluation ``evaluate.adaptation_losses``.
"""
from typing import NamedTuple

import numpy as np

from ..backend import dtype, to_device

AMPLITUDE = (0.1, 5.0)
PHASE = (0.0, 2 * np.pi)
X_RANGE = (-5.0, 5.0)
POINTS = 10            # p, the points the learner sees
GRID = 50              # points of the loss's grid


class SineTasks(NamedTuple):
    """n sine tasks: parameters on the host, data on the device."""
    amplitude: np.ndarray    # (n,)
    phase: np.ndarray        # (n,)
    train: tuple             # (x, y), each (n, p, 1): the points the learner sees
    test: tuple              # (x, y), each (n, 50, 1): the grid of the loss, Eq. (8)


def sine(amplitude, phase, x):
    """f(x) = a sin(x + b) for n tasks: a, b (n,), x (n, B, 1) -> (n, B, 1)."""
    return amplitude[:, None, None] * np.sin(x + phase[:, None, None])


def grid(n, size=GRID):
    """The loss's equally spaced points of [-5, 5], for n tasks: (n, size, 1)."""
    return np.broadcast_to(np.linspace(*X_RANGE, size)[:, None], (n, size, 1))


def sample(rng, n, points=POINTS):
    """n tasks from the section 4 distribution, drawn with the host generator rng."""
    a, b = rng.uniform(*AMPLITUDE, size=n), rng.uniform(*PHASE, size=n)
    x = rng.uniform(*X_RANGE, size=(n, points, 1))

    def pair(x):
        return to_device(x, dtype()), to_device(sine(a, b, x), dtype())
    return SineTasks(a, b, pair(x), pair(grid(n)))
