"""Case ``hvp``: one Hessian-vector product against one gradient, per model.

For each model of HVP_MODELS, at the meta-batch's shapes (n tasks, B examples each) and
for one task alone, three functions are timed in interleaved rounds: ``model.grad``,
``model.hvp`` (with a random vector v) and ``model.loss_grad_hvp``. The ratio hvp / grad is
what exact MAML's meta-gradient costs over a first-order one, per inner step.
"""
import numpy as np

from bench import cases
from bench.common import HVP_MODELS, measure
from minireptile import backend
from minireptile.meta import tile


def run(rep, mode, args):
    """Rows and ratios of every model of HVP_MODELS[mode], n tasks and one task."""
    for name in HVP_MODELS[mode]:
        w = cases.workload(name)
        n, (x, y) = w.setting.meta_batch, w.batches[0]
        thetas = tile(w.theta, n)
        v = backend.to_device(np.random.default_rng(1).standard_normal(thetas.shape),
                              thetas.dtype)
        grad_and_hvp(rep, mode, w, (thetas, x, y, v), f"n={n}", "")
        grad_and_hvp(rep, mode, w, (w.theta, x[0], y[0], v[0]), "one task", " (one task)")


def grad_and_hvp(rep, mode, w, arrays, label, suffix):
    """The three functions on arrays (theta, x, y, v); rows and the ratio hvp / grad."""
    th, xx, yy, vv = arrays
    fns = {"grad": lambda: w.model.grad(th, xx, yy),
           "hvp": lambda: w.model.hvp(th, xx, yy, vv),
           "loss_grad_hvp": lambda: w.model.loss_grad_hvp(th, xx, yy, vv)}
    ts = measure(fns, mode)
    for f in fns:
        rep.row("hvp", f"{w.name} {f} {label} B={w.setting.inner_batch}", ts[f])
    rep.ratio(f"{w.name}: hvp / grad{suffix}", ts["hvp"], ts["grad"])
