"""Convolutional layers of the few-shot CNNs (paper section 6.1): Conv2d, MaxPool2d, Flatten,
and MeanPool (the head of Finn et al.'s Omniglot CNN).

The layout is TensorFlow's NHWC, with leading task axes: ``x`` is ``(..., B, H, W, C)``,
a kernel ``(..., 3, 3, C, F)``. The layer contract is the one of ``layers.py`` (forward,
backward, rforward, rbackward; ``rx=None`` is a zero tangent). Batch norm lives in
``batchnorm.py`` and is re-exported here, so ``from minireptile.conv import BatchNorm``.

Convolution is im2col + one batched matrix product per pass:

    cols(x)  (..., B*Ho*Wo, 9*C)     the 3x3 patches, gathered through a strided view of
                                      the padded input (no Python loop over pixels)
    y  = cols(x) w + b                w reshaped to (..., 9*C, F)
    dw = cols(x)^T dy                 dx = col2im(dy w^T)
    ry = cols(x) rw + cols(rx) w + rb
    rdw = cols(x)^T rdy + cols(rx)^T dy
    rdx = col2im(rdy w^T + dy rw^T) = col2im([rdy, dy] [w, rw]^T)

col2im(d w^T) is never built as a (..., N, 9*C) matrix: each kernel offset's product
d w[i, j]^T is added into its strided slice of the padded image (no scatter with repeated
indices), so the same lines run on NumPy and CuPy.
"""
import math

import numpy as np

from .backend import get_xp
from .batchnorm import BatchNorm
from .layers import glorot_uniform, sum_rows, swap

__all__ = ["BatchNorm", "Conv2d", "Flatten", "MaxPool2d", "MeanPool", "conv_geometry"]


def conv_geometry(size, kernel, stride, padding):
    """(out, before, after) along one spatial axis, with TensorFlow's padding rules.

        'same':  out = ceil(size / stride), total = max((out - 1) stride + kernel - size, 0),
                 before = total // 2, after = total - before   (the extra one at the end)
        'valid': out = (size - kernel) // stride + 1, no padding

    For Omniglot (stride 2, 'same') this gives 28 -> 14 -> 7 -> 4 -> 2.
    """
    if padding == "same":
        out = -(-size // stride)
        total = max((out - 1) * stride + kernel - size, 0)
        return out, total // 2, total - total // 2
    if padding == "valid":
        if size < kernel:
            raise ValueError(f"'valid' {kernel}x{kernel} window does not fit a size of {size}")
        return (size - kernel) // stride + 1, 0, 0
    raise ValueError(f"unknown padding {padding!r}; expected 'same' or 'valid'")


def _check_image_shape(name, in_shape, channels=None):
    if len(in_shape) != 3 or (channels is not None and in_shape[-1] != channels):
        want = "(H, W, C)" if channels is None else f"(H, W, {channels})"
        raise ValueError(f"{name} got inputs of shape {tuple(in_shape)}; expected {want}")


class Conv2d:
    """2-D convolution (TensorFlow's cross-correlation), y = conv(x, w) + b.

    Paper section 6.1: both CNNs use 3x3 kernels; Omniglot's have stride 2 with 'same'
    padding, Mini-ImageNet's stride 1. Parameters ``w (k, k, c_in, c_out)`` (HWIO, as
    TensorFlow stores them) and ``b (c_out,)``: ``k*k*c_in*c_out + c_out`` in all.
    x (..., B, H, W, c_in) -> y (..., B, Ho, Wo, c_out).
    """

    def __init__(self, c_in, c_out, stride=1, padding="same", kernel=3):
        if padding not in ("same", "valid"):
            raise ValueError(f"unknown padding {padding!r}; expected 'same' or 'valid'")
        self.c_in, self.c_out, self.stride, self.padding, self.kernel = \
            c_in, c_out, stride, padding, kernel
        self.params = (("w", (kernel, kernel, c_in, c_out)), ("b", (c_out,)))

    def _geometry(self, h, w):
        return (conv_geometry(h, self.kernel, self.stride, self.padding),
                conv_geometry(w, self.kernel, self.stride, self.padding))

    def output_shape(self, in_shape):
        _check_image_shape(f"Conv2d({self.c_in}, {self.c_out})", in_shape, self.c_in)
        (ho, _, _), (wo, _, _) = self._geometry(*in_shape[:2])
        return (ho, wo, self.c_out)

    def init(self, rng):
        """Glorot-uniform kernel (fans k*k*c_in and k*k*c_out, as TensorFlow), zero bias."""
        k2 = self.kernel * self.kernel
        return {"w": glorot_uniform(rng, self.params[0][1], k2 * self.c_in, k2 * self.c_out),
                "b": np.zeros(self.c_out)}

    def _im2col(self, x):
        """cols(x) (..., B*Ho*Wo, k*k*C): pad once, view the patches, one copy."""
        xp = get_xp(x)
        *lead, n, h, w, c = x.shape
        k, s = self.kernel, self.stride
        (ho, top, bottom), (wo, left, right) = self._geometry(h, w)
        if top or bottom or left or right:
            xpad = xp.zeros((*lead, n, h + top + bottom, w + left + right, c), x.dtype)
            xpad[..., top:top + h, left:left + w, :] = x
        else:
            xpad = x
        st = xpad.strides
        patches = xp.lib.stride_tricks.as_strided(               # (..., B, Ho, Wo, k, k, C)
            xpad, shape=(*lead, n, ho, wo, k, k, c),
            strides=(*st[:-3], st[-3] * s, st[-2] * s, st[-3], st[-2], st[-1]))
        return patches.reshape(*lead, n * ho * wo, k * k * c)

    def _col2im_product(self, d2, w, x_shape):
        """col2im(d2 w^T), the adjoint of _im2col applied to a product, one kernel offset
        at a time:

            dx_pad[..., offset (i, j) window, :] += d2 w[i, j]^T    (..., N, F) @ (F, C)

        This never builds the (..., N, k*k*C) column gradient; on the CPU it is about 1.8 times
        as fast for the Mini-ImageNet layers (10 images of 42x42x32: 4 ms against 7 ms) and as
        fast for Omniglot's. w (..., k, k, C, F) -> dx (..., B, H, W, C).
        """
        xp = get_xp(d2)
        *lead, n, h, width, c = x_shape
        k, s = self.kernel, self.stride
        (ho, top, bottom), (wo, left, right) = self._geometry(h, width)
        dxpad = xp.zeros((*lead, n, h + top + bottom, width + left + right, c), d2.dtype)
        wt = swap(w)                                              # (..., k, k, F, C)
        for i in range(k):
            for j in range(k):
                dxpad[..., i:i + s * (ho - 1) + 1:s, j:j + s * (wo - 1) + 1:s, :] += \
                    (d2 @ wt[..., i, j, :, :]).reshape(*lead, n, ho, wo, c)
        return dxpad[..., top:top + h, left:left + width, :]

    def _matrix(self, w):
        return w.reshape(*w.shape[:-4], -1, self.c_out)           # (..., k*k*C, F)

    def _image(self, y2, x_shape):
        *lead, n, h, w, _ = x_shape
        (ho, _, _), (wo, _, _) = self._geometry(h, w)
        return y2.reshape(*lead, n, ho, wo, self.c_out)

    def forward(self, p, x):
        cols = self._im2col(x)                                    # (..., N, 9C)
        y = cols @ self._matrix(p["w"])                           # (..., N, F)
        y += p["b"][..., None, :]
        return self._image(y, x.shape), (cols, x.shape)

    def backward(self, p, cache, dy, need_dx=True):
        cols, x_shape = cache
        dy2 = dy.reshape(cols.shape[:-1] + (self.c_out,))         # (..., N, F)
        dw = (swap(cols) @ dy2).reshape(p["w"].shape)
        dx = self._col2im_product(dy2, p["w"], x_shape) if need_dx else None
        return dx, {"w": dw, "b": sum_rows(dy2)[..., 0, :]}

    def rforward(self, p, rp, cache, rx):
        cols, x_shape = cache
        ry = cols @ self._matrix(rp["w"])                         # R{y} = cols(x) rw + rb
        ry += rp["b"][..., None, :]
        rcols = None
        if rx is not None:                                        #      + cols(rx) w
            rcols = self._im2col(rx)
            ry += rcols @ self._matrix(p["w"])
        return self._image(ry, x_shape), rcols

    def rbackward(self, p, rp, cache, rcols, dy, rdy, need_dx=True):
        cols, x_shape = cache
        dy2 = dy.reshape(cols.shape[:-1] + (self.c_out,))         # (..., N, F)
        rdy2 = rdy.reshape(dy2.shape)
        rdw = swap(cols) @ rdy2                                   # R{cols^T dy}
        if rcols is not None:
            rdw += swap(rcols) @ dy2
        rdx = None
        if need_dx:                  # R{col2im(dy w^T)} = col2im([rdy, dy] [w, rw]^T)
            xp = get_xp(dy)
            rdx = self._col2im_product(xp.concatenate([rdy2, dy2], axis=-1),
                                       xp.concatenate([p["w"], rp["w"]], axis=-1), x_shape)
        return rdx, {"w": rdw.reshape(p["w"].shape), "b": sum_rows(rdy2)[..., 0, :]}


class MaxPool2d:
    """2x2 max-pooling, stride 2, 'same' padding (paper section 6.1, Mini-ImageNet CNN).

    Odd sizes are padded at the bottom/right (TensorFlow) with -inf, which never wins, so
    84 -> 42 -> 21 -> 11 -> 6. The forward pass keeps a boolean mask with one True per
    window, at its maximum; all four passes multiply by it (y = sum(mask x), dx = mask dy,
    ry = sum(mask rx), rdx = mask rdy). Ties, which do not occur for continuous inputs, go
    to the first maximum in row-major order, as in TensorFlow's MaxPoolGrad.
    x (..., B, H, W, C) -> y (..., B, ceil(H/2), ceil(W/2), C).
    """

    params = ()

    def output_shape(self, in_shape):
        _check_image_shape("MaxPool2d", in_shape)
        h, w, c = in_shape
        return (-(-h // 2), -(-w // 2), c)

    def init(self, rng):
        return {}

    @staticmethod
    def _windows(x, fill):
        """x padded to even sizes with ``fill``, as (..., B, Ho, 2, Wo, 2, C)."""
        *lead, n, h, w, c = x.shape
        ho, wo = -(-h // 2), -(-w // 2)
        if (h % 2, w % 2) != (0, 0):
            xp = get_xp(x)
            xpad = xp.full((*lead, n, 2 * ho, 2 * wo, c), fill, x.dtype)
            xpad[..., :h, :w, :] = x
            x = xpad
        return x.reshape(*lead, n, ho, 2, wo, 2, c)

    @staticmethod
    def _quarters(xr):
        """The window positions (0,0), (0,1), (1,0), (1,1) as strided (..., B, Ho, Wo, C) views."""
        return xr[..., 0, :, 0, :], xr[..., 0, :, 1, :], xr[..., 1, :, 0, :], xr[..., 1, :, 1, :]

    @staticmethod
    def _unwindows(dxr, x_shape):
        *lead, n, ho, _, wo, _, c = dxr.shape
        return dxr.reshape(*lead, n, 2 * ho, 2 * wo, c)[..., :x_shape[-3], :x_shape[-2], :]

    def forward(self, p, x):
        """y = max(max(x00, x01), max(x10, x11)) over the four strided quarter-views; the mask
        follows the same comparisons (>=, so a tie goes to the first of the pair)."""
        xp = get_xp(x)
        xr = self._windows(x, -math.inf)                          # (..., B, Ho, 2, Wo, 2, C)
        x00, x01, x10, x11 = self._quarters(xr)
        top, bottom = xp.maximum(x00, x01), xp.maximum(x10, x11)  # (..., B, Ho, Wo, C)
        y = xp.maximum(top, bottom)
        in_top, left_in_top, left_in_bottom = top >= bottom, x00 >= x01, x10 >= x11
        mask = xp.empty(xr.shape, bool)
        m00, m01, m10, m11 = self._quarters(mask)
        m00[...] = in_top & left_in_top
        m01[...] = in_top & ~left_in_top
        m10[...] = ~in_top & left_in_bottom
        m11[...] = ~(in_top | left_in_bottom)
        return y, (mask, x.shape)

    def backward(self, p, cache, dy, need_dx=True):
        mask, x_shape = cache
        return self._unwindows(mask * dy[..., None, :, None, :], x_shape), {}

    def rforward(self, p, rp, cache, rx):
        if rx is None:
            return None, None
        mask, _ = cache
        r00, r01, r10, r11 = self._quarters(mask * self._windows(rx, 0))
        return r00 + r01 + r10 + r11, None                        # the quarters' sum: no reduce

    def rbackward(self, p, rp, cache, rcache, dy, rdy, need_dx=True):
        return self.backward(p, cache, rdy)


class Flatten:
    """(..., B, H, W, C) -> (..., B, H*W*C), in TensorFlow's HWC order (the dense head)."""

    params = ()

    def output_shape(self, in_shape):
        return (math.prod(in_shape),)

    def init(self, rng):
        return {}

    @staticmethod
    def _flat(x, x_shape):
        return x.reshape(*x_shape[:-3], -1)

    def forward(self, p, x):
        return self._flat(x, x.shape), x.shape

    def backward(self, p, x_shape, dy, need_dx=True):
        return dy.reshape(x_shape), {}

    def rforward(self, p, rp, x_shape, rx):
        return (None if rx is None else self._flat(rx, x_shape)), None

    def rbackward(self, p, rp, x_shape, rcache, dy, rdy, need_dx=True):
        return rdy.reshape(x_shape), {}


class MeanPool:
    """The mean over the spatial positions: (..., B, H, W, C) -> (..., B, C).

    Finn et al.'s Omniglot CNN (cbfinn/maml, ``maml.py`` forward_conv: ``tf.reduce_mean(hidden4,
    [1, 2])``) averages the 2x2 positions of its last block before the dense head, where the
    paper's code flattens them. The map is linear and has no weights, so all four passes are
    one of two lines:  y = mean(x),  dx = dy / (H W) at every position,  R{y} = mean(rx),
    R{dx} = rdy / (H W).
    """

    params = ()

    def output_shape(self, in_shape):
        _check_image_shape("MeanPool", in_shape)
        return (in_shape[-1],)

    def init(self, rng):
        return {}

    @staticmethod
    def _spread(dy, x_shape):
        """dy (..., B, C) spread over the H W positions, each getting dy / (H W)."""
        h, w = x_shape[-3:-1]
        return get_xp(dy).broadcast_to((dy * (1 / (h * w)))[..., None, None, :], x_shape).copy()

    def forward(self, p, x):
        return x.mean(axis=(-3, -2)), x.shape

    def backward(self, p, x_shape, dy, need_dx=True):
        return self._spread(dy, x_shape), {}

    def rforward(self, p, rp, x_shape, rx):
        return (None if rx is None else rx.mean(axis=(-3, -2))), None

    def rbackward(self, p, rp, x_shape, rcache, dy, rdy, need_dx=True):
        return self._spread(rdy, x_shape), {}
