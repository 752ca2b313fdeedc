"""The JAX reference versions of the benchmarked meta-iterations.

Written the way a JAX user would write them: parameters as a pytree, one pure function
per meta-iteration compiled whole by ``jax.jit`` -- the meta-batch's tasks under
``jax.vmap`` (or unrolled, ``ConvReptile.loop``), the inner steps unrolled for the CNNs
(XLA:CPU is slow at convolutions inside a loop body, see ``adapt``) and under
``lax.scan`` for the sine MLP (where the scan is the faster), the outer update after
them -- ``jax.grad`` for the inner gradients and, for exact MAML, for the meta-gradient
through the k SGD steps. Adam's state (second moments, step counter) is carried as arrays
in and out of the compiled function; theta and the moments are donated, so XLA updates
them in place. Everything is float32 (the parameters' dtype; float64 only for checks).
Batch norm uses the current batch's statistics (epsilon 1e-3), the classification loss
is the summed softmax cross-entropy of the paper's code, 'SAME' padding is TensorFlow's
(the extra row/column last) and images stay NHWC, as in minireptile, so kernels are
HWIO and the head sees features in HWC order.

Parameters are built from minireptile's flat theta (``conv_params`` and ``mlp_params``
read ``model.views``), so a JAX meta-iteration starts from exactly minireptile's weights
and the two can be compared number for number.

This module is imported only by ``bench/case_jax.py`` (and its checks) when ``import jax``
works; JAX is never a dependency of minireptile or its tests. The thread count is fixed
by the caller through ``PJRT_NPROC`` / ``XLA_FLAGS`` before jax is first imported.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

BN_EPS = 1e-3


# -- parameters from minireptile's theta -------------------------------------------------

def conv_params(model, theta, dtype=jnp.float32):
    """{'blocks': [(w, b, gamma, beta)] x 4, 'head': (w, b)} from a CNN's flat theta (P,).

    Leaves come out in minireptile's layout order, so ``flat(params)`` gives theta back.
    (dtype: float64 only for checks, with ``jax_enable_x64``.)
    """
    views = [{k: jnp.asarray(v, dtype) for k, v in d.items()}
             for d in model.views(np.asarray(theta)) if d]
    convs, norms = views[0:-1:2], views[1:-1:2]
    blocks = [(c["w"], c["b"], n["gamma"], n["beta"]) for c, n in zip(convs, norms)]
    return {"blocks": blocks, "head": (views[-1]["w"], views[-1]["b"])}


def mlp_params(model, theta, dtype=jnp.float32):
    """[(w, b)] per Linear layer from the MLP's flat theta (P,)."""
    return [(jnp.asarray(d["w"], dtype), jnp.asarray(d["b"], dtype))
            for d in model.views(np.asarray(theta)) if d]


def flat(params):
    """The pytree's leaves raveled and concatenated: minireptile's theta layout (P,)."""
    return jnp.concatenate([p.ravel() for p in jax.tree_util.tree_leaves(params)])


# -- models ------------------------------------------------------------------------------

def conv_net(params, x, stride, pool):
    """4 x [conv 3x3 'SAME', batch norm, (max-pool 2x2 'SAME'), ReLU] -> linear.

    x: (B, H, W, C); returns logits (B, num_classes).
    """
    for w, b, gamma, beta in params["blocks"]:
        x = lax.conv_general_dilated(x, w, (stride, stride), "SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC")) + b
        mean, var = x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2))
        x = (x - mean) * lax.rsqrt(var + BN_EPS) * gamma + beta
        if pool:
            x = lax.reduce_window(x, -jnp.inf, lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "SAME")
        x = jax.nn.relu(x)
    w, b = params["head"]
    return x.reshape(x.shape[0], -1) @ w + b


def xent(logits, y):
    """Sum over the batch of -log softmax(logits)[y]."""
    logp = jax.nn.log_softmax(logits)
    return -jnp.take_along_axis(logp, y[:, None], axis=1).sum()


def mlp(params, x):
    """Linear layers with ReLU between them. x: (B, D_in) -> (B, D_out)."""
    for w, b in params[:-1]:
        x = jax.nn.relu(x @ w + b)
    w, b = params[-1]
    return x @ w + b


def mse(params, x, y):
    """(1/B) sum_b sum_j (f(x)_bj - y_bj)^2, the sine loss of Eq. (8)."""
    return ((mlp(params, x) - y) ** 2).sum() / x.shape[0]


# -- Adam (beta1 = 0) --------------------------------------------------------------------

def adam_step(params, grads, v, t, lr, beta2=0.999, eps=1e-8):
    """Adam with beta1 = 0 (m = g) and TensorFlow's bias correction; t counts steps.

        v <- beta2 v + (1 - beta2) g^2,  t <- t + 1,
        theta <- theta - lr sqrt(1 - beta2^t) g / (sqrt(v) + eps)
    """
    t = t + 1
    v = jax.tree_util.tree_map(lambda v, g: beta2 * v + (1 - beta2) * g * g, v, grads)
    lr_t = lr * jnp.sqrt(-jnp.expm1(t * math.log(beta2)))  # 1 - beta2^t, no float32 cancellation
    params = jax.tree_util.tree_map(lambda p, g, v: p - lr_t * g / (jnp.sqrt(v) + eps),
                                    params, grads, v)
    return params, v, t


def adapt(loss, theta, v, t, x, y, lr):
    """k Adam steps on one task, one per mini-batch x (k, B, ...), y (k, B).

    A Python loop, unrolled under jit, not ``lax.scan``: XLA:CPU runs convolutions inside
    a loop body many times slower (jax-ml/jax#12868); here 5 Omniglot steps took 138 ms
    as a scan and 14 ms unrolled.
    """
    phi = theta
    for i in range(x.shape[0]):
        phi, v, t = adam_step(phi, jax.grad(loss)(phi, x[i], y[i]), v, t, lr)
    return phi, v, t


# -- meta-iterations ---------------------------------------------------------------------

class ConvReptile:
    """Reptile meta-iterations of the Omniglot or Mini-ImageNet CNN, each one jitted call.

        phi_i = Adam^k(theta) on task i,   theta <- theta + epsilon mean_i(phi_i - theta)

    Two forms, as in the PyTorch reference: ``vmap`` (the meta-batch under jax.vmap, each
    task with its own copy of the second moments, shape (n, ...), as minireptile's batched
    pass does) and ``loop`` (the n tasks unrolled in the jitted function, one Adam state fed
    through them one after another, as the paper's code does; each task's convolutions then
    stay ungrouped, where vmap turns them into grouped convolutions).
    x (n, k, B, H, W, C), y (n, k, B): the minireptile case's host batches, put on the
    device once.
    """

    def __init__(self, params, x, y, stride, pool, inner_lr, meta_step):
        n, dtype = x.shape[0], jax.tree_util.tree_leaves(params)[0].dtype
        self.x = jnp.asarray(x, dtype)
        self.y = jnp.asarray(y, jnp.int32)
        tree_map = jax.tree_util.tree_map

        def loss(params, x, y):
            return xent(conv_net(params, x, stride, pool), y)

        def outer(theta, phis):                     # phis: leaves with a task axis first
            return tree_map(lambda th, ph: th + meta_step * (ph.mean(0) - th), theta, phis)

        def vmap_step(theta, v, t, x, y):
            def task(v, x, y):
                return adapt(loss, theta, v, t, x, y, inner_lr)
            phis, v, ts = jax.vmap(task)(v, x, y)
            return outer(theta, phis), v, ts[0]

        def loop_step(theta, v, t, x, y):
            phis = []
            for i in range(n):
                phi, v, t = adapt(loss, theta, v, t, x[i], y[i], inner_lr)
                phis.append(phi)
            return outer(theta, tree_map(lambda *a: jnp.stack(a), *phis)), v, t

        def zeros(lead):
            return tree_map(lambda p: jnp.zeros(lead + p.shape, p.dtype), params)

        self.theta = {form: tree_map(jnp.array, params) for form in ("vmap", "loop")}
        self.states = {"vmap": (zeros((n,)), jnp.zeros((), jnp.int32)),
                       "loop": (zeros(()), jnp.zeros((), jnp.int32))}
        self._steps = {"vmap": jax.jit(vmap_step, donate_argnums=(0, 1)),
                       "loop": jax.jit(loop_step, donate_argnums=(0, 1))}

    def _step(self, form):
        theta, v, t = self._steps[form](self.theta[form], *self.states[form], self.x,
                                        self.y)
        self.theta[form], self.states[form] = theta, (v, t)
        jax.block_until_ready(theta)

    def vmap(self):
        """One meta-iteration, the meta-batch under jax.vmap."""
        self._step("vmap")

    def loop(self):
        """One meta-iteration, the tasks one after another inside the jitted function."""
        self._step("loop")


class ConvEvaluate:
    """Few-shot evaluation (section 6.1) in JAX: a jitted Adam step and a jitted prediction,
    the tasks one after another.

    Per task: ``iters`` Adam (beta1 = 0) steps from theta on its N*K training images
    (each step the whole set, as the paper's --eval-batch N*K does), from a fresh Adam
    state; then each of the N query images is classified in a batch with the N*K training
    images (non-transductive, as ``minireptile.evaluate`` does by default).
    x (T, N*K, H, W, C), y (T, N*K), xq (T, N, H, W, C); ``step`` returns the predictions
    (T, N).

    Not one function for all T tasks: under jax.vmap the tasks' convolutions become grouped
    ones, slow on XLA:CPU, and the 50 steps unrolled took 70 s to compile (5 tasks: 2.5 s
    a call, against 0.76 s for this form); in a ``lax.scan`` the convolutions are slow
    again (see ``adapt``). Calls are dispatched asynchronously: Python's loop overlaps the
    work.
    """

    def __init__(self, params, x, y, xq, stride, pool, lr, iters):
        self.theta, dtype = params, jax.tree_util.tree_leaves(params)[0].dtype
        self.x, self.xq = jnp.asarray(x, dtype), jnp.asarray(xq, dtype)
        self.y = jnp.asarray(y, jnp.int32)
        self.iters = iters

        def loss(params, x, y):
            return xent(conv_net(params, x, stride, pool), y)

        def step(phi, v, t, x, y):
            return adam_step(phi, jax.grad(loss)(phi, x, y), v, t, lr)

        def predict(phi, x, xq):                   # each query in a batch with the shots
            def query(q):
                return conv_net(phi, jnp.concatenate([x, q[None]]), stride, pool)[-1]
            return jax.vmap(query)(xq).argmax(axis=-1)

        self._step, self._predict = jax.jit(step, donate_argnums=(0, 1)), jax.jit(predict)

    def step(self):
        """Evaluate the T tasks; returns the predicted classes (T, N)."""
        preds = []
        for x, y, xq in zip(self.x, self.y, self.xq):
            phi = jax.tree_util.tree_map(jnp.array, self.theta)
            v, t = jax.tree_util.tree_map(jnp.zeros_like, phi), jnp.zeros((), jnp.int32)
            for _ in range(self.iters):
                phi, v, t = self._step(phi, v, t, x, y)
            preds.append(self._predict(phi, x, xq))
        return jnp.stack(preds).block_until_ready()


class SineMAML:
    """Exact MAML on the sine MLP 1-64-64-1, the meta-batch under vmap, one jitted function.

        phi_i = SGD^k(theta) on task i's p points,   g = grad_theta mean_i L_test,i(phi_i)
        theta <- theta + epsilon * (-alpha g)

    (minireptile's convention for MAML's Delta = -alpha g_MAML, Eqs. (17)-(21); the
    PyTorch reference steps by -epsilon g: the same work.) jax.grad differentiates through
    the ``lax.scan`` of the k SGD steps (here a scan ran 21 ms, unrolled by 4 19 ms and
    fully unrolled 260 ms, after a 20 s compile).
    x_train (n, p, 1), y_train (n, p, 1), x_test (n, 50, 1), y_test (n, 50, 1).
    """

    def __init__(self, params, x_train, y_train, x_test, y_test, k, alpha, meta_step):
        self.theta, dtype = params, jax.tree_util.tree_leaves(params)[0].dtype
        self.data = [jnp.asarray(a, dtype) for a in (x_train, y_train, x_test, y_test)]

        def adapted_loss(theta, xs, ys, xt, yt):
            def sgd(phi, _):
                g = jax.grad(mse)(phi, xs, ys)
                return jax.tree_util.tree_map(lambda p, g: p - alpha * g, phi, g), None
            phi, _ = lax.scan(sgd, theta, None, length=k)
            return mse(phi, xt, yt)

        def meta_loss(theta, *data):
            return jax.vmap(adapted_loss, in_axes=(None, 0, 0, 0, 0))(theta, *data).mean()

        def meta_step_fn(theta, data):
            g = jax.grad(meta_loss)(theta, *data)
            return jax.tree_util.tree_map(lambda p, g: p - meta_step * alpha * g, theta, g)

        self.meta_gradient = jax.jit(jax.grad(meta_loss))
        self._step = jax.jit(meta_step_fn, donate_argnums=0)

    def step(self):
        self.theta = self._step(self.theta, self.data)
        jax.block_until_ready(self.theta)
