"""What every check shares: the comparison rule, central differences, inputs off kinks.

Relative error is max|a - b| / max(max|a|, max|b|, tiny), taken per output array; a check
passes below 1e-6. Inputs stay off kinks, where the function has no derivative and
differences would disagree with any formula: layer inputs |x| > 0.1 for ReLU and a
shuffled arange (no ties) for pooling.
"""
from collections import namedtuple

import numpy as np

from ..backend import to_host

H, TOL, TINY = 1e-5, 1e-6, 1e-300
MAX_COORDS = 800          # above this many parameters, check gradients along random directions

Row = namedtuple("Row", "component check max_abs max_rel passed")
Case = namedtuple("Case", "name kind run")   # kind: layer|loss|model|meta; run(rng, xp) -> Rows


def compare(component, check, analytic, numeric, tol=TOL):
    """A Row comparing arrays (or equal-length lists of arrays) output by output.

    rel = max|a - b| / max(max|a|, max|b|, tiny) for each pair; the row keeps the largest
    absolute and relative errors. ``None`` in ``analytic`` stands for zeros (a pass that
    returns no tangent because it is zero).
    """
    if not isinstance(analytic, (list, tuple)):
        analytic, numeric = [analytic], [numeric]
    if len(analytic) != len(numeric):
        raise ValueError(f"{component} {check}: {len(analytic)} outputs vs {len(numeric)}")
    max_abs = max_rel = 0.0
    for a, b in zip(analytic, numeric):
        b = np.asarray(to_host(b), np.float64)
        a = np.zeros_like(b) if a is None else np.asarray(to_host(a), np.float64)
        if a.shape != b.shape:
            raise ValueError(f"{component} {check}: shape {a.shape} vs expected {b.shape}")
        if a.size == 0:
            continue
        err = float(np.max(np.abs(a - b)))
        scale = max(float(np.max(np.abs(a))), float(np.max(np.abs(b))), TINY)
        max_abs, max_rel = max(max_abs, err), max(max_rel, err / scale)
    return Row(component, check, max_abs, max_rel, bool(max_rel < tol))


def coord_grad(f, a, h=H):
    """Numeric gradient of the scalar function f at the array a, coordinate by coordinate.

        g_i = (f(a + h e_i) - f(a - h e_i)) / 2h        (returned on the host, a's shape)
    """
    host = to_host(a).ravel()
    work = a.copy()
    flat = work.reshape(-1)                                   # a view of work
    g = np.empty(host.size)
    for i in range(host.size):
        flat[i] = host[i] + h
        fp = f(work)
        flat[i] = host[i] - h
        fm = f(work)
        flat[i] = host[i]
        g[i] = (fp - fm) / (2 * h)
    return g.reshape(a.shape)


def central(f, h=H):
    """(f(+h) - f(-h)) / 2h for f(step) returning an array, or a list of arrays."""
    plus, minus = f(h), f(-h)
    if isinstance(plus, (list, tuple)):
        return [(p - m) / (2 * h) for p, m in zip(plus, minus)]
    return (plus - minus) / (2 * h)


def scalar(a):
    """The sum of a (device) array as a Python float."""
    return float(to_host(a.sum()))


# -- inputs -------------------------------------------------------------------------
def away_from_zero(rng, shape):
    """Values with |x| in [0.2, 1.5] and random signs: no ReLU kink within reach of h."""
    return rng.uniform(0.2, 1.5, shape) * rng.choice([-1.0, 1.0], shape)


def distinct(rng, shape):
    """A shuffled arange scaled to [-1, 1]: no ties inside any pooling window."""
    n = int(np.prod(shape))
    return (rng.permutation(n).reshape(shape) + 0.5) * (2.0 / n) - 1.0


def params(layer, rng, lead):
    """Host parameters (lead + shape) for a layer: its initialisation plus noise."""
    init = layer.init(rng)
    return {name: np.broadcast_to(np.asarray(init[name], np.float64), lead + tuple(shape))
            + 0.3 * rng.standard_normal(lead + tuple(shape)) for name, shape in layer.params}


def component_name(name, lead):
    """A table label: the component's name and, if any, its task axes."""
    return f"{name} T={lead}" if lead else name


def shift(p, rp, s):
    return {k: p[k] + s * rp[k] for k in p}


def unit(rng, shape):
    """A random direction of norm 1 (host)."""
    v = rng.standard_normal(shape)
    return v / np.linalg.norm(v)
