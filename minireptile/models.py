"""Models over one flat parameter vector theta.

A ``Sequential`` model is a list of layers and a loss. Its parameters live in one
contiguous vector ``theta`` of length P, laid out layer by layer (``layout``: name ->
(offset, shape), e.g. ``"0.w"`` for the first layer's weights); every layer reads its
weights as views of that vector. With leading task axes, ``theta`` is ``(T, P)`` and
inputs ``(T, B, ...)``: T independent tasks run in one batched pass, and every result
(loss, gradient, Hessian-vector product) keeps the task axes.

    loss_and_grad(theta, x, y) -> L, dL/dtheta                forward, then backward
    hvp(theta, x, y, v)        -> H v                         exact, by the R-operator:
                                  forward, backward, then R-forward along v and
                                  R-backward (Pearlmutter 1994)
    linearize(theta, x, y)     -> L, dL/dtheta, v -> H v      the gradient's passes kept,
                                  so each H v there runs the two R-passes only

An R-pass needs what the gradient's passes computed at theta: the forward caches and, at
every layer, the backward pass's dL/dy. ``linearize`` keeps them (memory: one pass's
activations, for as long as the returned function lives); ``hvp`` recomputes them.
"""
from typing import NamedTuple

import numpy as np

from .backend import get_xp
from .conv import BatchNorm, Conv2d, Flatten, MaxPool2d, MeanPool
from .errors import UserError
from .layers import Linear, ReLU, Tanh
from .losses import MSE, SoftmaxCrossEntropy


class ShapeError(UserError, ValueError):
    """An array passed to a model has the wrong shape; the message says what was expected."""


class Passes(NamedTuple):
    """What a gradient's forward and backward passes computed at theta, for the R-passes."""
    p: list                # per layer, name -> view of theta
    caches: list           # per layer, its forward cache
    dys: list              # per layer, dL/dy at its output (the backward pass's)
    lcache: object         # the loss's forward cache


class Sequential:
    """Layers applied in order, then a loss; parameters in one flat vector.

    layers: the layers; loss: an object of ``losses``; input_shape: the shape of one
    example (e.g. ``(1,)`` for the sine MLP, ``(28, 28, 1)`` for Omniglot).
    """

    def __init__(self, layers, loss, input_shape, name="model"):
        self.layers, self.loss_fn, self.name = list(layers), loss, name
        self.input_shape = tuple(input_shape)
        self.layout, self.shapes, offset, shape = {}, [self.input_shape], 0, self.input_shape
        self._slices = []          # (layer, name, offset, size, shape): views without np.prod
        for i, layer in enumerate(self.layers):
            for pname, pshape in layer.params:
                self.layout[f"{i}.{pname}"] = (offset, tuple(pshape))
                size = int(np.prod(pshape))
                self._slices.append((i, pname, offset, size, tuple(pshape)))
                offset += size
            shape = layer.output_shape(shape)
            self.shapes.append(shape)
        self.num_params = offset
        self.output_shape = shape

    def activation_values(self):
        """Values one example's activations take through the layers (a memory estimate)."""
        return int(sum(np.prod(shape) for shape in self.shapes))

    # -- parameters ------------------------------------------------------------------
    def init(self, rng):
        """A float64 host vector theta of length P, each layer initialised as TensorFlow does."""
        parts = []
        for layer in self.layers:
            values = layer.init(rng)
            parts += [np.asarray(values[name], np.float64).ravel() for name, _ in layer.params]
        return np.concatenate(parts) if parts else np.zeros(0)

    def views(self, theta):
        """Per layer, a dict name -> view of theta with shape (..., *param_shape)."""
        lead, out = theta.shape[:-1], [{} for _ in self.layers]
        for i, pname, off, size, shape in self._slices:
            out[i][pname] = theta[..., off:off + size].reshape(lead + shape)
        return out

    def inner_mask(self, held):
        """(P,) float64 ones with 0 at every parameter named in held (``"beta"``: the batch-norm
        offsets): the inner loop's ``SGD`` mask, holding those for the outer loop alone."""
        mask = np.ones(self.num_params)
        for _, pname, off, size, _ in self._slices:
            if pname in held:
                mask[off:off + size] = 0
        return mask

    def _flatten(self, grads, lead):
        parts = [grads[i][pname].reshape(lead + (-1,)) for i, pname, *_ in self._slices]
        return get_xp(parts[0]).concatenate(parts, axis=-1)

    def _check(self, theta, x, y=None, v=None):
        if theta.ndim < 1 or theta.shape[-1] != self.num_params:
            raise ShapeError(f"{self.name}: theta has shape {tuple(theta.shape)}; expected "
                             f"(..., {self.num_params}) with {self.num_params} parameters")
        lead = theta.shape[:-1]
        want = lead + ("B",) + self.input_shape
        if x.ndim != len(want) or x.shape[:len(lead)] != lead or \
                x.shape[len(lead) + 1:] != self.input_shape:
            raise ShapeError(f"{self.name}: x has shape {tuple(x.shape)}; expected "
                             f"{tuple(want)} for theta of shape {tuple(theta.shape)}")
        if y is not None and y.shape[:x.ndim - len(self.input_shape)] != \
                x.shape[:x.ndim - len(self.input_shape)]:
            raise ShapeError(f"{self.name}: y has shape {tuple(y.shape)}; expected leading "
                             f"shape {tuple(x.shape[:len(lead) + 1])} to match x")
        if v is not None and v.shape != theta.shape:
            raise ShapeError(f"{self.name}: v has shape {tuple(v.shape)}; expected "
                             f"{tuple(theta.shape)}, the shape of theta")
        return lead

    # -- passes ----------------------------------------------------------------------
    def _forward(self, p, x):
        caches = []
        for layer, pl in zip(self.layers, p):
            x, cache = layer.forward(pl, x)
            caches.append(cache)
        return x, caches

    def predict(self, theta, x):
        """The model's output (logits or regression values), shape (..., B, *output_shape)."""
        self._check(theta, x)
        return self._forward(self.views(theta), x)[0]

    def loss(self, theta, x, y):
        """The loss, one value per task: shape theta.shape[:-1]."""
        self._check(theta, x, y)
        return self.loss_fn.forward(self._forward(self.views(theta), x)[0], y)[0]

    def loss_and_grad(self, theta, x, y):
        """(L, dL/dtheta): shapes theta.shape[:-1] and theta.shape."""
        self._check(theta, x, y)
        return self._gradient(theta, x, y, keep=False)[:2]

    def _gradient(self, theta, x, y, keep):
        """(L, g, passes): forward, then backward; passes (``Passes``) only when keep, else
        None, and each dy is then dropped as soon as the layer below has used it."""
        p = self.views(theta)
        z, caches = self._forward(p, x)
        loss, lcache = self.loss_fn.forward(z, y)
        dy, n = self.loss_fn.backward(lcache), len(self.layers)
        grads, dys = [None] * n, [None] * n
        for i in reversed(range(n)):
            if keep:
                dys[i] = dy                                       # dL/dy at layer i's output
            dy, grads[i] = self.layers[i].backward(p[i], caches[i], dy, need_dx=i > 0)
        g = self._flatten(grads, theta.shape[:-1])
        return loss, g, Passes(p, caches, dys, lcache) if keep else None

    def _rpasses(self, passes, v):
        """H v from the gradient's passes at theta: R-forward along v, then R-backward.

            R{z} = J v                   (R-forward, layer by layer)
            R{dz} = (d^2L/dz^2) R{z}      (loss.rbackward)
            H v = R{dL/dtheta}            (R-backward, with the backward pass's dy per layer)
        """
        p, caches, dys, lcache = passes
        rp = self.views(v)
        rz, rcaches = None, []
        for layer, pl, rpl, cache in zip(self.layers, p, rp, caches):
            rz, rcache = layer.rforward(pl, rpl, cache, rz)
            rcaches.append(rcache)
        rdy, rgrads = self.loss_fn.rbackward(lcache, rz), [None] * len(self.layers)
        for i in reversed(range(len(self.layers))):
            rdy, rgrads[i] = self.layers[i].rbackward(p[i], rp[i], caches[i], rcaches[i],
                                                      dys[i], rdy, need_dx=i > 0)
        return self._flatten(rgrads, v.shape[:-1])

    def grad(self, theta, x, y):
        """dL/dtheta, shape theta.shape."""
        return self.loss_and_grad(theta, x, y)[1]

    def loss_grad_hvp(self, theta, x, y, v):
        """(L, g, H v) in one call: the gradient's passes, then the R-passes along v."""
        self._check(theta, x, y, v)
        loss, g, passes = self._gradient(theta, x, y, keep=True)
        return loss, g, self._rpasses(passes, v)

    def hvp(self, theta, x, y, v):
        """H v, the exact Hessian of the loss at theta times v (shape theta.shape)."""
        return self.loss_grad_hvp(theta, x, y, v)[2]

    def linearize(self, theta, x, y):
        """(L, g, hvp): the loss and gradient at theta, and hvp(v) = H v at theta, exact.

        The gradient's passes are kept (``Passes``: the forward caches and every layer's dy,
        about one pass's activations, as long as hvp lives), so each hvp(v) runs only the
        R-forward and the R-backward: the forward and backward passes that ``hvp`` would
        recompute are saved. Exact MAML calls it once per inner step (``meta.inner_steps``).
        Results equal ``loss_and_grad`` and ``hvp``'s to the last bit.
        """
        self._check(theta, x, y)
        loss, g, passes = self._gradient(theta, x, y, keep=True)

        def hvp(v):
            self._check(theta, x, y, v)
            return self._rpasses(passes, v)
        return loss, g, hvp


ACTIVATIONS = {"relu": ReLU, "tanh": Tanh}


def mlp(sizes, activation="relu", loss="mse"):
    """A multi-layer perceptron, e.g. the paper's sine model ``mlp((1, 64, 64, 1))``.

    sizes: (input, hidden..., output); activation: 'relu' or 'tanh' between layers;
    loss: 'mse' (regression, Eq. 8) or 'xent' (summed softmax cross-entropy).
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; expected relu or tanh")
    layers = []
    for i, (d_in, d_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(Linear(d_in, d_out))
        if i < len(sizes) - 2:
            layers.append(ACTIVATIONS[activation]())
    losses = {"mse": MSE, "xent": SoftmaxCrossEntropy}
    return Sequential(layers, losses[loss](), (sizes[0],),
                      name="mlp(" + "-".join(map(str, sizes)) + ")")


def _cnn(blocks, num_classes, input_shape, name, head=None):
    """Convolutional blocks, then a dense head sized from the blocks' output: after Flatten
    (the paper's), or the given (pooling layer, Linear init)."""
    layers, shape = [layer for block in blocks for layer in block], tuple(input_shape)
    for layer in layers:
        shape = layer.output_shape(shape)
    pool, init = head or (Flatten(), "glorot")
    layers += [pool, Linear(pool.output_shape(shape)[0], num_classes, init)]
    return Sequential(layers, SoftmaxCrossEntropy(), input_shape, name=name)


NETWORKS = ("reptile", "maml")        # whose code's Omniglot CNN: the paper's, or Finn et al.'s


def omniglot_cnn(num_classes, input_shape=(28, 28, 1), filters=64, network="reptile"):
    """The paper's Omniglot model (section 6.1, from MAML's): 4 x [conv 3x3 stride 2 'same',
    batch norm, ReLU] -> dense, with the summed softmax cross-entropy.

    Spatial sizes 28 -> 14 -> 7 -> 4 -> 2, so the head sees 2*2*64 = 256 features.
    Parameters, as in the TensorFlow model (kernels, biases, batch-norm scale and offset,
    dense): 640 + 3 * 36928 (convs) + 4 * 128 (batch norm) + 257 N (dense) = 111936 + 257 N,
    113221 for N = 5 classes, 117076 for N = 20.

    network='maml': the same blocks as Finn et al.'s code builds them (cbfinn/maml,
    ``maml.py`` construct_conv_weights and forward_conv, ``utils.py`` normalize): batch norm
    with an offset but no scale (``tf.contrib.layers.batch_norm``'s default), the mean over
    the 2x2 positions (``MeanPool``), and a dense head of 64 N weights drawn from N(0, 1):
    640 + 3 * 36928 + 4 * 64 + 65 N = 111680 + 65 N, 112005 for N = 5.
    Their batch-norm offsets are variables outside the inner loop's weights, meta-learned
    only: ``--bn-offsets-outer`` (``inner_mask(("beta",))``) holds them so.
    ``input_shape`` and ``filters`` may be reduced for gradient checks.
    """
    if network not in NETWORKS:
        raise ValueError(f"unknown network {network!r}; expected reptile or maml")
    finn = network == "maml"
    c, blocks = input_shape[-1], []
    for _ in range(4):
        blocks.append([Conv2d(c, filters, stride=2, padding="same"),
                       BatchNorm(filters, scale=not finn), ReLU()])
        c = filters
    suffix = ", maml" if finn else ""
    return _cnn(blocks, num_classes, input_shape, f"omniglot_cnn({num_classes}{suffix})",
                (MeanPool(), "normal") if finn else None)


def miniimagenet_cnn(num_classes, input_shape=(84, 84, 3), filters=32):
    """The paper's Mini-ImageNet model (section 6.1): 4 x [conv 3x3 'same', batch norm,
    max-pool 2x2 'same', ReLU] -> dense, with the summed softmax cross-entropy.

    Spatial sizes 84 -> 42 -> 21 -> 11 -> 6, so the head sees 6*6*32 = 1152 features.
    Parameters, as in the TensorFlow model: 896 + 3 * 9248 (convs) + 4 * 64 (batch norm)
    + 1153 N (dense) = 28896 + 1153 N, 34661 for N = 5 classes.
    ``input_shape`` and ``filters`` may be reduced for gradient checks.
    """
    c, blocks = input_shape[-1], []
    for _ in range(4):
        blocks.append([Conv2d(c, filters, padding="same"), BatchNorm(filters), MaxPool2d(),
                       ReLU()])
        c = filters
    return _cnn(blocks, num_classes, input_shape, f"miniimagenet_cnn({num_classes})")
