"""The benchmarked workloads: models, data of the paper's shapes, meta-iterations, FLOPs.

Settings are the paper's (section 4 and supervised-reptile's commands for section 6.1):

    sine          MLP 1-64-64-1, p = 10 points, 50-point test grid, SGD alpha 0.02,
                  k = 32 inner steps, meta-batch 25, epsilon 0.1
    omniglot      5-way, train-shots 10, inner-batch 10, inner-iters 5, meta-batch 5,
                  Adam (beta1 = 0) 0.001, epsilon 1
    miniimagenet  5-way, train-shots 15, inner-batch 10, inner-iters 8, meta-batch 5,
                  Adam (beta1 = 0) 0.001, epsilon 1

Exact MAML needs an SGD inner loop (its meta-gradient differentiates through SGD steps),
so on the CNNs it runs with SGD alpha = MAML_ALPHA and the same k and shapes. Every
classification algorithm sees k mini-batches per task, as ``minireptile train`` runs them:
Reptile k inner steps; FOMAML k - 1 inner steps and a disjoint tail batch (separate tail);
exact MAML k - 1 inner steps and the test batch. Sine runs as ``minireptile sine`` does:
k inner steps, then the 50-point grid as FOMAML's tail and MAML's test batch. A
meta-iteration is ``meta.meta_update``, the call the training loops make. Few-shot
evaluation (``eval_workload``, ``evaluation``) is 5-way 1-shot on the Omniglot CNN, 50 Adam
steps per task, as ``minireptile.evaluate`` runs it.

Data are random arrays of the right shapes and dtypes (images in [0, 1), integer labels,
sine points from the section 4 distribution): speed does not depend on the values, and
the benchmark needs no dataset on disk. Every array is made on the host from a seeded
generator and moved to the device once, before timing.
"""
from typing import NamedTuple

import numpy as np

from minireptile.backend import dtype, make_rng, to_device
from minireptile.evaluate import adapt_and_predict, tasks_per_pass
from minireptile.meta import delta_rule, outer_step
from minireptile.metabatch import meta_update
from minireptile.models import miniimagenet_cnn, mlp, omniglot_cnn
from minireptile.optim import SGD, Adam

ALGOS = ("reptile", "fomaml", "maml", "imaml")
MAML_ALPHA = 0.01          # exact MAML's inner SGD step on the CNNs (timing does not depend on it)
EVAL_SHOTS, EVAL_ITERS = 1, 50      # few-shot evaluation: 5-way 1-shot, 50 Adam steps


class Setting(NamedTuple):
    make_model: object     # () -> Sequential
    k: int                 # inner steps (mini-batches per task)
    meta_batch: int        # n, tasks per meta-iteration
    inner_batch: int       # B, examples per inner mini-batch
    test_batch: int        # examples in FOMAML's tail / MAML's test batch
    inner: str             # 'sgd' or 'adam'
    lr: float              # inner step size (alpha)
    epsilon: float         # outer step size
    classes: int           # 0 for regression


SETTINGS = {
    "sine": Setting(lambda: mlp((1, 64, 64, 1)), 32, 25, 10, 50, "sgd", 0.02, 0.1, 0),
    "omniglot": Setting(lambda: omniglot_cnn(5), 5, 5, 10, 10, "adam", 1e-3, 1.0, 5),
    "miniimagenet": Setting(lambda: miniimagenet_cnn(5), 8, 5, 10, 10, "adam", 1e-3, 1.0, 5),
    # Finn et al.'s MAML (--defaults maml: their network, 1 step + the query batch, 32 tasks)
    "omniglot-finn": Setting(lambda: omniglot_cnn(5, network="maml"), 2, 32, 5, 5, "sgd",
                             0.4, 1e-3, 5),
    # Rajeswaran et al.'s iMAML (--defaults imaml: 16 steps + the query batch, 32 tasks)
    "omniglot-imaml": Setting(lambda: omniglot_cnn(5), 17, 32, 5, 5, "sgd", 0.02, 1e-3, 5),
}


class Workload(NamedTuple):
    """A model at theta, with k inner mini-batches and a test batch for n tasks (on device)."""
    name: str
    setting: Setting
    model: object
    theta: object          # (P,) on the device, in the selected dtype
    batches: list          # k pairs (x (n, B, ...), y (n, B, ...))
    test: tuple            # (x (n, B_test, ...), y)
    host_batches: list     # the same k pairs as host arrays (for the PyTorch reference)
    host_test: tuple       # the test batch as host arrays


def _host_data(rng, setting, model):
    """Host arrays: k mini-batches (x (n, B, ...), y) and a test batch for n tasks.

    Classification: random images in [0, 1) and labels. Sine: n tasks (a, b) of section 4,
    each seen through the same p = B points at every step, and tested on the 50-point grid.
    """
    n, b, k = setting.meta_batch, setting.inner_batch, setting.k
    if setting.classes:
        def draw(size):
            x = rng.random((n, size) + model.input_shape, dtype=np.float32)
            return x, rng.integers(0, setting.classes, size=(n, size))
        return [draw(b) for _ in range(k)], draw(setting.test_batch)
    amplitude = rng.uniform(0.1, 5.0, size=(n, 1, 1))
    phase = rng.uniform(0.0, 2 * np.pi, size=(n, 1, 1))
    x = rng.uniform(-5.0, 5.0, size=(n, b, 1))
    grid = np.broadcast_to(np.linspace(-5.0, 5.0, setting.test_batch)[:, None],
                           (n, setting.test_batch, 1))
    return ([(x, amplitude * np.sin(x + phase))] * k,
            (grid, amplitude * np.sin(grid + phase)))


def workload(name, k=None, meta_batch=None, seed=0):
    """The case's model, theta and data on the selected device; k and n may be overridden."""
    setting = SETTINGS[name]
    setting = setting._replace(k=k or setting.k, meta_batch=meta_batch or setting.meta_batch)
    rng, model = make_rng(seed), setting.make_model()
    theta = to_device(model.init(rng), dtype())

    def dev(pair):
        x, y = pair
        return to_device(x, dtype()), to_device(y, None if setting.classes else dtype())

    host, test = _host_data(rng, setting, model)
    return Workload(name, setting, model, theta, [dev(p) for p in host], dev(test), host,
                    test)


def inner_optimizer(setting, algo):
    """The paper's inner optimizer for the setting (SGD for exact MAML and iMAML, always)."""
    if algo in ("maml", "imaml"):
        return SGD(setting.lr if setting.inner == "sgd" else MAML_ALPHA)
    return SGD(setting.lr) if setting.inner == "sgd" else Adam(setting.lr, beta1=0.0)


def meta_iteration(w, algo, batched=True, reuse=True):
    """A function running one meta-iteration of algo on workload w; returns the new theta.

    batched: ``metabatch.meta_update`` on the n tasks as one pass over a leading task axis
    (what ``minireptile train`` runs); otherwise a Python loop of the Delta rule over the
    tasks, each with theta (P,) and inputs (B, ...). Every call starts from the same theta
    (so repeated timings see the same numbers); Adam's state carries on across calls, as it
    does during training. reuse: exact MAML's Hessian-vector products from the inner loop's
    kept passes, or recomputed (``meta.maml_gradient``).
    """
    optimizer = inner_optimizer(w.setting, algo)
    eps, n = w.setting.epsilon, w.setting.meta_batch
    inner = w.batches if not w.setting.classes else w.batches[:-1]
    batches = w.batches if algo == "reptile" else inner + [w.test]

    rule = delta_rule(algo, reuse=reuse)

    def batched_step():
        return meta_update(rule, w.model, w.theta, batches, optimizer, eps)[0]

    def loop_step():
        delta = sum(rule(w.model, w.theta, [(x[t], y[t]) for x, y in batches], optimizer)[0]
                    for t in range(n))
        return outer_step(w.theta, delta / n, eps)

    return batched_step if batched else loop_step


# -- few-shot evaluation -----------------------------------------------------------------

def eval_workload(tasks=0):
    """The Omniglot workload and T few-shot tasks, 5-way EVAL_SHOTS-shot (random images).

    Returns (w, x (T, N*K, 28, 28, 1), y (T, N*K), xq (T, N, 28, 28, 1)), host arrays; T is
    `tasks`, or what one ``evaluate`` pass holds (``tasks_per_pass``) for 0.
    """
    w = workload("omniglot")
    n, k = w.setting.classes, EVAL_SHOTS
    t = tasks or tasks_per_pass(w.model, n * k + 1)
    rng = np.random.default_rng(1)
    x = rng.random((t, n * k) + w.model.input_shape, dtype=np.float32)
    xq = rng.random((t, n) + w.model.input_shape, dtype=np.float32)
    return w, x, np.tile(np.arange(n).repeat(k), (t, 1)), xq


def evaluation(w, x, y, xq):
    """One ``evaluate`` pass on the T tasks, less the sampling: ``adapt_and_predict``
    (EVAL_ITERS Adam steps, each on the N*K training images, from a fresh inner Adam, then
    the non-transductive predictions). Returns a function of no arguments."""
    xs, ys, xqd = to_device(x, dtype()), to_device(y), to_device(xq, dtype())

    def run():
        optimizer = inner_optimizer(w.setting, "reptile")      # a fresh Adam every pass
        return adapt_and_predict(w.model, w.theta, optimizer, [(xs, ys)] * EVAL_ITERS, xs,
                                 xqd, transductive=False)
    return run


# -- analytic FLOP counts ----------------------------------------------------------------

def gemm_shapes(model, batch):
    """The matrix products of one forward pass on one task: [(name, M, K, N)].

    Conv2d as im2col: M = B Ho Wo output pixels, K = k k C_in, N = C_out; Linear: M = B.
    """
    shapes, shape = [], model.input_shape
    for i, layer in enumerate(model.layers):
        out = layer.output_shape(shape)
        kind = type(layer).__name__
        if kind == "Conv2d":
            shapes.append((f"{i}.conv", batch * out[0] * out[1],
                           layer.kernel * layer.kernel * layer.c_in, layer.c_out))
        elif kind == "Linear":
            shapes.append((f"{i}.linear", batch, layer.d_in, layer.d_out))
        shape = out
    return shapes


def gradient_flops(model, batch):
    """FLOPs of the matrix products of one gradient (forward + backward) on one task.

        forward  y = x w          2 M K N
        backward dw = x^T dy      2 M K N
                 dx = dy w^T      2 M K N   (not for the first layer: its input is data)

    Element-wise work (bias, batch norm, ReLU, pooling, im2col copies, the optimizer) is
    not counted: it is O(M N) against the O(M K N) of the products.
    """
    total = 0
    for j, (_, m, k, n) in enumerate(gemm_shapes(model, batch)):
        total += 2 * m * k * n * (2 if j == 0 else 3)
    return total


def meta_iteration_flops(w, algo):
    """FLOPs of one meta-iteration of a first-order algorithm: n tasks x k gradients."""
    if algo == "maml":
        raise ValueError("the FLOP count covers the first-order algorithms only")
    s = w.setting
    return s.meta_batch * s.k * gradient_flops(w.model, s.inner_batch)
