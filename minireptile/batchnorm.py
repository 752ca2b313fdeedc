"""Batch normalisation with the statistics of the current batch, and its R-operator passes.

Paper section 6.1: both CNNs put batch norm after every convolution, and the paper's code
(``tf.layers.batch_normalization(training=True)``) always normalises with the statistics
of the batch it sees, at meta-training and at evaluation alike; scale and offset are
learned and epsilon is 1e-3. With leading task axes every task has its own statistics.
"""
import numpy as np

from .backend import get_xp
from .layers import sum_rows


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
    initialised to 1 and 0: 2 C in all. scale=False: no gamma (gamma = 1, rgamma = 0),
    only beta, C parameters, as ``tf.contrib.layers.batch_norm``'s default in Finn et al.'s
    MAML code (``scale=False``: "when the next layer is linear ... scaling can be done by
    the next layer").
    """

    def __init__(self, channels, eps=1e-3, scale=True):
        self.channels, self.eps, self.scale = channels, eps, scale
        self.params = ((("gamma", (channels,)),) if scale else ()) + (("beta", (channels,)),)

    def output_shape(self, in_shape):
        if not in_shape or in_shape[-1] != self.channels:
            raise ValueError(f"BatchNorm({self.channels}) got inputs of shape {tuple(in_shape)}")
        return tuple(in_shape)

    def init(self, rng):
        return {"gamma": np.ones(self.channels), "beta": np.zeros(self.channels)}

    def _gamma(self, p, a2):
        """gamma tiled as a row of a2's layout, or 1 without scale."""
        return self._tile(p["gamma"], a2) if self.scale else 1.0

    def _rgamma(self, rp, a2):
        """R{gamma} tiled as a row of a2's layout, or 0 without scale."""
        return self._tile(rp["gamma"], a2) if self.scale else 0.0

    def _grads(self, dgamma, dbeta):
        return {"gamma": dgamma, "beta": dbeta} if self.scale else {"beta": dbeta}

    def _rows(self, p, a):
        """a as (..., M/r, r*C), one image row (r = W values of C channels) per row, or
        r = 1 for features (..., B, C). Per-channel vectors are kept tiled r times,
        (..., 1, r*C), so each broadcast runs along a long contiguous row: 1.6x faster
        than (..., M, C) rows at 84x84x32, where the inner loops would be C = 32 long."""
        lead = p["beta"].ndim - 1
        r = a.shape[-2] if a.ndim - lead > 2 else 1
        return a.reshape(*a.shape[:lead], -1, r * self.channels)

    def _tile(self, v, a2):
        """A per-channel vector v (..., C) as a row of a2's layout: (..., 1, r*C)."""
        return get_xp(v).tile(v[..., None, :], a2.shape[-1] // self.channels)

    def _count(self, a2):
        """M, the number of positions per channel in a2 (..., M/r, r*C)."""
        return a2.shape[-2] * (a2.shape[-1] // self.channels)

    def _mean(self, a2):
        """The per-channel mean of a2 (..., M/r, r*C) over its M positions, tiled (..., 1, r*C)."""
        r = a2.shape[-1] // self.channels
        total = sum_rows(a2).reshape(*a2.shape[:-2], r, self.channels).sum(axis=-2)
        return self._tile(total * (1 / self._count(a2)), a2)

    def _sum(self, mean2, a2):
        """The per-channel sum over a2's positions from its tiled mean:
        (..., 1, r*C) -> (..., C)."""
        return mean2[..., 0, :self.channels] * self._count(a2)

    def forward(self, p, x):
        x2 = self._rows(p, x)                                     # (..., M/r, r*C)
        xc = x2 - self._mean(x2)
        s = 1 / get_xp(x).sqrt(self._mean(xc * xc) + self.eps)   # (..., 1, r*C)
        xhat = xc
        xhat *= s
        y = xhat * self._gamma(p, x2)
        y += self._tile(p["beta"], x2)
        return y.reshape(x.shape), (xhat, s, x.shape)

    def backward(self, p, cache, dy, need_dx=True):
        xhat, s, x_shape = cache
        dy2 = dy.reshape(xhat.shape)                              # (..., M/r, r*C)
        a, b = self._mean(dy2), self._mean(dy2 * xhat)            # (..., 1, r*C)
        dx = None
        if need_dx:                                               # dx = g t, g = gamma s
            g = self._gamma(p, xhat) * s
            dx = dy2 * g
            dx -= xhat * (g * b)
            dx -= g * a
            dx = dx.reshape(x_shape)
        return dx, self._grads(self._sum(b, xhat), self._sum(a, xhat))

    def rforward(self, p, rp, cache, rx):
        xhat, s, x_shape = cache
        rgamma, rbeta = self._rgamma(rp, xhat), self._tile(rp["beta"], xhat)
        if rx is None:                                            # R{y} = rgamma xhat + rbeta
            ry = xhat * rgamma
            ry += rbeta
            return ry.reshape(x_shape), None
        g = self._gamma(p, xhat) * s                              # (..., 1, r*C)
        rx2 = rx.reshape(xhat.shape)                              # (..., M/r, r*C)
        mean_rx, mean_xhat_rx = self._mean(rx2), self._mean(rx2 * xhat)
        ry = rx2 * g                                              # + gamma R{xhat}, expanded
        ry += xhat * (rgamma - g * mean_xhat_rx)
        ry += rbeta - g * mean_rx
        return ry.reshape(x_shape), (rx2, mean_rx, mean_xhat_rx)

    def rbackward(self, p, rp, cache, rcache, dy, rdy, need_dx=True):
        xhat, s, x_shape = cache
        dy2, rdy2 = dy.reshape(xhat.shape), rdy.reshape(xhat.shape)     # (..., M/r, r*C)
        a, b = self._mean(dy2), self._mean(dy2 * xhat)                # (..., 1, r*C)
        ra, rb = self._mean(rdy2), self._mean(rdy2 * xhat)
        gamma = self._gamma(p, xhat)
        g, rg = gamma * s, self._rgamma(rp, xhat) * s
        if rcache is not None:
            rx2, mean_rx, mean_xhat_rx = rcache
            rb += s * (self._mean(dy2 * rx2) - mean_xhat_rx * b - mean_rx * a)
            rg -= gamma * s * s * mean_xhat_rx                    # + gamma R{s}
        rdx = None
        if need_dx:
            # R{dx} = R{g} (dy - a - xhat b) + g (rdy - R{a} - R{xhat} b - xhat R{b}), with
            # R{xhat} = s (rx - mean(rx) - xhat mean(xhat rx)) expanded: per channel,
            #   R{dx} = R{g} dy + g rdy - k_rx rx - k_xhat xhat - k_one
            #   k_rx   = g b s                               (the rx in -g b R{xhat})
            #   k_xhat = R{g} b + g R{b} - k_rx mean(xhat rx)
            #   k_one  = R{g} a + g R{a} - k_rx mean(rx)
            k_xhat, k_one = rg * b + g * rb, rg * a + g * ra
            rdx = dy2 * rg
            rdx += rdy2 * g
            if rcache is not None:                    # rx = 0 (the first layer): no R{xhat}
                k_rx = g * b * s
                k_xhat -= k_rx * mean_xhat_rx
                k_one -= k_rx * mean_rx
                rdx -= rx2 * k_rx
            rdx -= xhat * k_xhat
            rdx -= k_one
            rdx = rdx.reshape(x_shape)
        return rdx, self._grads(self._sum(rb, xhat), self._sum(ra, xhat))
