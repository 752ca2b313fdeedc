"""Layers over flat parameters, with their four passes.

Every layer has the same contract (cs231n's ``forward -> (out, cache)``, extended by
Pearlmutter's R-operator for Hessian-vector products):

    forward(p, x)                           -> y, cache        y = f(x; w)
    backward(p, cache, dy, need_dx)         -> dx, dw          vector-Jacobian product
    rforward(p, rp, cache, rx)              -> ry, rcache      R{y} = J_x rx + J_w rw
    rbackward(p, rp, cache, rcache, dy, rdy, need_dx)
                                            -> rdx, rdw        R{dx}, R{dw}

``p`` maps a parameter's name to its array (a view of ``theta``), ``rp`` to the same
slice of the direction ``v``; ``dw``/``rdw`` are dicts with the same names. ``rx=None``
means a zero tangent (the input of the first layer does not depend on theta), and
``need_dx=False`` skips the input gradient of the first layer.

Leading task axes: ``x`` is ``(..., B, features...)`` and every parameter ``(..., shape)``,
where ``...`` is the same task shape (empty for one task). Batched matrix products
(``x @ w`` with ``w`` of shape ``(..., D, M)``) run T tasks in one call.

The layers of the convolutional models live in ``conv.py``; this module holds the MLP's.
"""
import numpy as np

from .backend import get_xp


def swap(a):
    """Transpose of the last two axes (works for any number of leading task axes)."""
    return a.swapaxes(-1, -2)


def sum_rows(a):
    """sum over axis -2: (..., M, C) -> (..., 1, C).

    A product with a row of ones runs in BLAS: several times faster than
    ``a.sum(axis=-2)``, whose inner loop is only C long (bias gradients, batch norm's means).
    """
    return get_xp(a).ones((1, a.shape[-2]), a.dtype) @ a


def glorot_uniform(rng, shape, fan_in, fan_out):
    """TensorFlow's default kernel initialiser, U[-l, l] with l = sqrt(6 / (fan_in + fan_out))."""
    limit = np.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, size=shape)


class Linear:
    """y = x w + b.  x (..., B, D), w (..., D, M), b (..., M).

    init: 'glorot' (TensorFlow's default) or 'normal', w ~ N(0, 1) (the dense head of Finn
    et al.'s Omniglot CNN: ``tf.random_normal``); b starts at 0 either way.
    """

    def __init__(self, d_in, d_out, init="glorot"):
        if init not in ("glorot", "normal"):
            raise ValueError(f"unknown init {init!r}; expected glorot or normal")
        self.d_in, self.d_out, self.init_kind = d_in, d_out, init
        self.params = (("w", (d_in, d_out)), ("b", (d_out,)))

    def output_shape(self, in_shape):
        if tuple(in_shape) != (self.d_in,):
            raise ValueError(f"Linear({self.d_in}, {self.d_out}) got inputs of shape {in_shape}")
        return (self.d_out,)

    def init(self, rng):
        shape = (self.d_in, self.d_out)
        w = (rng.standard_normal(shape) if self.init_kind == "normal"
             else glorot_uniform(rng, shape, self.d_in, self.d_out))
        return {"w": w, "b": np.zeros(self.d_out)}

    def forward(self, p, x):
        y = x @ p["w"]
        y += p["b"][..., None, :]
        return y, x

    def backward(self, p, x, dy, need_dx=True):
        dx = dy @ swap(p["w"]) if need_dx else None
        return dx, {"w": swap(x) @ dy, "b": sum_rows(dy)[..., 0, :]}

    def rforward(self, p, rp, x, rx):
        ry = x @ rp["w"]                                        # R{y} = x rw + rb (+ rx w)
        ry += rp["b"][..., None, :]
        if rx is not None:
            ry += rx @ p["w"]
        return ry, rx

    def rbackward(self, p, rp, x, rx, dy, rdy, need_dx=True):
        rdx = None
        if need_dx:                                             # R{dy w^T}
            rdx = rdy @ swap(p["w"])
            rdx += dy @ swap(rp["w"])
        rdw = swap(x) @ rdy                                     # R{x^T dy}
        if rx is not None:
            rdw += swap(rx) @ dy
        return rdx, {"w": rdw, "b": sum_rows(rdy)[..., 0, :]}


class Elementwise:
    """A layer without weights that keeps the shape of its input (an activation)."""

    params = ()

    def output_shape(self, in_shape):
        return tuple(in_shape)

    def init(self, rng):
        return {}


class ReLU(Elementwise):
    """y = max(x, 0); all four passes multiply by the forward mask 1[x > 0]."""

    def forward(self, p, x):
        mask = x > 0
        return x * mask, mask

    def backward(self, p, mask, dy, need_dx=True):
        return dy * mask, {}

    def rforward(self, p, rp, mask, rx):
        return (None if rx is None else rx * mask), None

    def rbackward(self, p, rp, mask, rcache, dy, rdy, need_dx=True):
        return rdy * mask, {}


class Tanh(Elementwise):
    """y = tanh(x); dx = dy (1 - y^2); R{dx} = rdy (1 - y^2) - 2 dy y R{y}."""

    def forward(self, p, x):
        y = get_xp(x).tanh(x)
        return y, y

    def backward(self, p, y, dy, need_dx=True):
        return dy * (1 - y * y), {}

    def rforward(self, p, rp, y, rx):
        if rx is None:
            return None, None
        ry = rx * (1 - y * y)
        return ry, ry

    def rbackward(self, p, rp, y, ry, dy, rdy, need_dx=True):
        rdx = rdy * (1 - y * y)
        if ry is not None:
            rdx = rdx - 2 * dy * y * ry
        return rdx, {}
