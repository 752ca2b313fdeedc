"""Batch normalisation with the statistics of the current batch, and its R-operator passes.

Paper section 6.1: both CNNs put batch norm after every convolution, and the paper's code
(``tf.layers.batch_normalization(training=True)``) always normalises with the statistics
of the batch it sees, at meta-training and at evaluation alike; scale and offset are
learned and epsilon is 1e-3. With leading task axes every task has its own statistics.
"""
import numpy as np

from .backend import get_xp


def sum_rows(a):
    """sum over axis -2: (..., M, C) -> (..., 1, C).

    A product with a row of ones runs in BLAS: several times faster than
    ``a.sum(axis=-2)``, whose inner loop is only C long.
    """
    return get_xp(a).ones((1, a.shape[-2]), a.dtype) @ a


class BatchNorm:
    """y = gamma xhat + beta, xhat = (x - mean(x)) / sqrt(var(x) + eps), per channel.

    Means run over every axis but the task axes and the channel axis: (B, H, W) for
    images (..., B, H, W, C), B for features (..., B, C). Per channel, with M values:

        xc = x - mean(x),  s = (mean(xc^2) + eps)^(-1/2),  xhat = xc s
        backward:  dbeta = sum(dy),  dgamma = sum(dy xhat)
                   dx = gamma s t,   t = dy - mean(dy) - xhat mean(dy xhat)

    R-forward (the tangent along rx, rgamma, rbeta; mean(xc) = 0 removes the R{mean} term
    from R{var}):

        R{mean} = mean(rx)
        R{var}  = 2 mean(xc (rx - R{mean})) = 2 mean(xc rx)
        R{s}    = -s^3 R{var} / 2 = -s^2 mean(xhat rx)
        R{xhat} = s (rx - R{mean}) + xc R{s} = s (rx - mean(rx) - xhat mean(xhat rx))
        R{y}    = rgamma xhat + gamma R{xhat} + rbeta

    R-backward, the product rule on dx = g (dy - a - xhat b) with g = gamma s,
    a = mean(dy), b = mean(dy xhat):

        R{g} = rgamma s + gamma R{s},  R{a} = mean(rdy),  R{b} = mean(rdy xhat + dy R{xhat})
        R{dx} = R{g} (dy - a - xhat b) + g (rdy - R{a} - R{xhat} b - xhat R{b})
        R{dgamma} = M R{b},  R{dbeta} = M R{a}

    R{xhat} is never stored: substituting its formula turns each product with it into
    products with rx and xhat and per-channel constants, which saves passes over the
    (M, C) arrays; e.g. mean(dy R{xhat}) = s (mean(dy rx) - mean(xhat rx) b - mean(rx) a).
    With rx = None (a zero tangent) R{xhat} = R{s} = 0. Parameters ``gamma, beta (C,)``,
    initialised to 1 and 0: 2 C in all.
    """

    def __init__(self, channels, eps=1e-3):
        self.channels, self.eps = channels, eps
        self.params = (("gamma", (channels,)), ("beta", (channels,)))

    def output_shape(self, in_shape):
        if not in_shape or in_shape[-1] != self.channels:
            raise ValueError(f"BatchNorm({self.channels}) got inputs of shape {tuple(in_shape)}")
        return tuple(in_shape)

    def init(self, rng):
        return {"gamma": np.ones(self.channels), "beta": np.zeros(self.channels)}

    def _rows(self, p, a):
        """a as (..., M, C): one row per position of one task."""
        return a.reshape(*p["gamma"].shape[:-1], -1, self.channels)

    def forward(self, p, x):
        x2 = self._rows(p, x)                                     # (..., M, C)
        inv_m = 1 / x2.shape[-2]
        xc = x2 - sum_rows(x2) * inv_m
        s = 1 / get_xp(x).sqrt(sum_rows(xc * xc) * inv_m + self.eps)   # (..., 1, C)
        xhat = xc
        xhat *= s
        y = xhat * p["gamma"][..., None, :]
        y += p["beta"][..., None, :]
        return y.reshape(x.shape), (xhat, s, x.shape)

    def backward(self, p, cache, dy, need_dx=True):
        xhat, s, x_shape = cache
        dy2 = dy.reshape(xhat.shape)                              # (..., M, C)
        dbeta, dgamma = sum_rows(dy2), sum_rows(dy2 * xhat)     # (..., 1, C)
        dx = None
        if need_dx:                                               # dx = g t, g = gamma s
            g = p["gamma"][..., None, :] * s
            gm = g * (1 / xhat.shape[-2])
            dx = dy2 * g
            dx -= xhat * (gm * dgamma)
            dx -= gm * dbeta
            dx = dx.reshape(x_shape)
        return dx, {"gamma": dgamma[..., 0, :], "beta": dbeta[..., 0, :]}

    def rforward(self, p, rp, cache, rx):
        xhat, s, x_shape = cache
        rgamma, rbeta = rp["gamma"][..., None, :], rp["beta"][..., None, :]
        if rx is None:                                            # R{y} = rgamma xhat + rbeta
            ry = xhat * rgamma
            ry += rbeta
            return ry.reshape(x_shape), None
        g = p["gamma"][..., None, :] * s                          # (..., 1, C)
        rx2 = rx.reshape(xhat.shape)                              # (..., M, C)
        inv_m = 1 / xhat.shape[-2]
        mean_rx, mean_xhat_rx = sum_rows(rx2) * inv_m, sum_rows(rx2 * xhat) * inv_m
        ry = rx2 * g                                              # + gamma R{xhat}, expanded
        ry += xhat * (rgamma - g * mean_xhat_rx)
        ry += rbeta - g * mean_rx
        return ry.reshape(x_shape), (rx2, mean_rx, mean_xhat_rx)

    def rbackward(self, p, rp, cache, rcache, dy, rdy, need_dx=True):
        xhat, s, x_shape = cache
        dy2, rdy2 = dy.reshape(xhat.shape), rdy.reshape(xhat.shape)     # (..., M, C)
        inv_m = 1 / xhat.shape[-2]
        a, b = sum_rows(dy2) * inv_m, sum_rows(dy2 * xhat) * inv_m    # (..., 1, C)
        ra, rb = sum_rows(rdy2) * inv_m, sum_rows(rdy2 * xhat) * inv_m
        gamma = p["gamma"][..., None, :]
        g, rg = gamma * s, rp["gamma"][..., None, :] * s
        if rcache is not None:
            rx2, mean_rx, mean_xhat_rx = rcache
            rb += s * (sum_rows(dy2 * rx2) * inv_m - mean_xhat_rx * b - mean_rx * a)
            rg -= gamma * s * s * mean_xhat_rx                    # + gamma R{s}
        rdx = None
        if need_dx:        # R{dx} = R{g} dy + g rdy - xhat c1 - rx c2 - c0, R{xhat} expanded
            c1, c0 = rg * b + g * rb, rg * a + g * ra
            rdx = dy2 * rg
            rdx += rdy2 * g
            if rcache is not None:
                c2 = g * b * s
                c1 -= c2 * mean_xhat_rx
                c0 -= c2 * mean_rx
                rdx -= rx2 * c2
            rdx -= xhat * c1
            rdx -= c0
            rdx = rdx.reshape(x_shape)
        m = xhat.shape[-2]
        return rdx, {"gamma": rb[..., 0, :] * m, "beta": ra[..., 0, :] * m}
