"""The task distributions section 5 is measured on, and a Reptile run over them.

Section 5.1 sees a task as a sequence of losses L_1, L_2, ..., L_k on mini-batches drawn
independently from it. A ``Problem`` draws exactly that:

    draw(rng, n, k) -> (batches, task)
        batches  k mini-batches (x (n, B, ...), y (n, B, ...)) of n tasks, independent given
                 the task (the expectations E_{tau,1,2} of Eqs. 28-32)
        task     (x, y) of each task's own loss (n, ...): the sine grid of Eq. (8), or the
                 Omniglot task's whole training set (its N*K images)

sine: tau = (a, b) of section 4; a mini-batch is p = 10 fresh points x ~ U[-5, 5].
omniglot: an N-way task of K images per class (section 6.1); a mini-batch is B of its N*K
images drawn without repeats, independently of the other mini-batches (``replacement``).
"""
from typing import Callable, NamedTuple

import numpy as np

from ..backend import dtype, to_device
from ..data import inner_batches, sample_tasks
from ..meta import linear_schedule, reptile_delta
from ..metabatch import meta_update
from ..models import mlp, omniglot_cnn
from ..optim import SGD
from .. import sine


class Problem(NamedTuple):
    """A task distribution, its model, and the inner SGD step size alpha used by default."""
    name: str
    model: object
    draw: Callable          # draw(rng, n, k) -> (batches, task), see the module docstring
    alpha: float


def sine_problem(points=10, alpha=0.02):
    """Section 4's sine tasks and 1-64-64-1 tanh MLP; alpha = 0.02, the sine command's."""
    model = mlp((1, 64, 64, 1), "tanh")

    def draw(rng, n, k):
        tasks = sine.sample(rng, n, points=k * points)      # k * p i.i.d. points per task
        x, y = tasks.train                                  # (n, k p, 1)
        cut = [slice(i * points, (i + 1) * points) for i in range(k)]
        return [(x[:, s], y[:, s]) for s in cut], tasks.test
    return Problem("sine", model, draw, alpha)


def omniglot_problem(ds, classes=5, shots=10, batch=10, alpha=1e-3):
    """N-way Omniglot tasks of ``shots`` training images per class, the paper's CNN.

    ds: a loaded Omniglot ``Dataset``; the training classes with their rotations, as in
    meta-training. The loss is the sum over a mini-batch's images (section 6.1), so the SGD
    step is small: with alpha = 1e-3, five steps on 10-image mini-batches lower the task loss
    both from a random and from a meta-trained theta (docs/theory.md, section 2).
    """
    model = omniglot_cnn(classes)

    def draw(rng, n, k):
        x, y, _, _ = sample_tasks(ds, "train", rng, n, classes, shots)   # (n, N K, ...)
        idx = inner_batches(x.shape[1], rng, batch, k, replacement=True, num_tasks=n)
        rows = np.arange(n)[:, None]
        batches = [(to_device(x[rows, idx[:, i]], dtype()), to_device(y[rows, idx[:, i]]))
                   for i in range(k)]
        return batches, (to_device(x, dtype()), to_device(y))
    return Problem("omniglot", model, draw, alpha)


def reptile(problem, theta, rng, meta_iters, inner_iters, alpha, meta_batch=10,
            meta_step=1.0, meta_step_final=0.0, callback=None):
    """Reptile with an SGD(alpha) inner loop on the problem's mini-batches.

        theta <- theta + epsilon mean_i (phi_i - theta),  phi_i = U^k(theta) on task i

    Paper: Eq. (5); epsilon annealed linearly from meta_step to meta_step_final (section 4's
    sine run uses 1 -> 0). inner_iters = 1 is SGD on the expected loss (Eqs. 6-7), the
    joint-training baseline. callback(iteration, theta) runs after every outer step.
    theta: (P,). Returns theta.
    """
    for i in range(meta_iters):
        batches, _ = problem.draw(rng, meta_batch, inner_iters)
        epsilon = linear_schedule(meta_step, meta_step_final, i, meta_iters)
        theta, _ = meta_update(reptile_delta, problem.model, theta, batches, SGD(alpha),
                               epsilon)
        if callback is not None:
            callback(i + 1, theta)
    return theta
