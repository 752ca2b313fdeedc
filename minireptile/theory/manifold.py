"""Section 5.2 measured: Reptile moves theta towards every task's solution manifold.

    minimize E_tau[1/2 D(theta, W_tau)^2]                                        Eq. (42)
    grad 1/2 D(theta, W)^2 = theta - P_W(theta)                              Eqs. (43)-(44)

W_tau is the set of minimisers of the task's loss L_tau, and P_W(theta) the closest point of
W to theta. As the paper does, P_W(theta) is approximated by running SGD on L_tau from
theta ("we can partially minimize this loss using gradient descent"), here for many steps:
phi*_tau = U^m_tau(theta), D(theta, W_tau) ~ ||theta - phi*_tau||.

Along a Reptile run (Eq. 5, ``problems.reptile``) and, for comparison, joint training (the
same run with k = 1, SGD on E[L], Eqs. 6-7), every measurement records on a fixed set of
tasks: E[1/2 D^2], E[D], the expected loss E[L_tau(theta)], the loss at the approximate
projections E[L_tau(phi*_tau)] (how close they are to W_tau), and the loss after the k
inner steps E[L_tau(U^k(theta))] (what meta-learning is for).
"""
import numpy as np

from ..backend import to_host
from ..meta import adapt, tile
from ..optim import SGD
from .problems import reptile


def solutions(model, theta, task, steps, lr):
    """phi*_tau ~ P_{W_tau}(theta): ``steps`` full-batch SGD(lr) steps on each task's loss.

    theta: (P,); task: (x (n, B, ...), y (n, B, ...)) of n tasks. Returns (n, P).
    """
    return adapt(model, tile(theta, task[0].shape[0]), [task] * steps, SGD(lr))


def measure(model, theta, fixed, alpha, steps, lr):
    """One measurement at theta (P,) on the fixed tasks (batches, task): a dict of means."""
    batches, task = fixed
    n = task[0].shape[0]
    phi_star = solutions(model, theta, task, steps, lr)
    d = np.linalg.norm(to_host(phi_star - theta), axis=-1)                    # (n,)
    adapted = adapt(model, tile(theta, n), batches, SGD(alpha))
    return {"half_sq_distance": float(np.mean(d ** 2) / 2),                  # Eq. (42)
            "distance": float(np.mean(d)),
            "loss": float(to_host(model.loss(tile(theta, n), *task)).mean()),
            "loss_solution": float(to_host(model.loss(phi_star, *task)).mean()),
            "loss_adapted": float(to_host(model.loss(adapted, *task)).mean())}


def schedule(meta_iters, points):
    """0 and ``points`` iterations spaced about evenly on a log scale up to meta_iters."""
    grid = np.unique(np.geomspace(1, meta_iters, points).round().astype(int))
    return [0] + grid.tolist()


def manifold(problem, theta0, rng, meta_iters, inner_iters, alpha, tasks=20, steps=1000,
             lr=0.02, points=12, meta_batch=10, runs=None):
    """E[1/2 D(theta, W_tau)^2] along Reptile runs from theta0 (P,).

    runs: {label: k} (default: reptile with k = inner_iters, joint training with k = 1),
    each from theta0 with its own copy of the random stream. The ``tasks`` fixed tasks, their
    k mini-batches and the measurements are the same for every run. Returns {"iterations":
    [...], "runs": {label: [measure's dict per iteration]}, "settings": {...}}.
    """
    runs = runs or {"reptile": inner_iters, "joint": 1}
    fixed = problem.draw(rng, tasks, inner_iters)
    at = schedule(meta_iters, points)
    seed = rng.integers(2 ** 63)
    out = {}
    for label, k in runs.items():
        records = [measure(problem.model, theta0, fixed, alpha, steps, lr)]

        def callback(i, theta):
            if i in at:
                records.append(measure(problem.model, theta, fixed, alpha, steps, lr))
        reptile(problem, theta0, np.random.default_rng(seed), meta_iters, k, alpha, meta_batch,
                callback=callback)
        out[label] = records
    return {"iterations": at, "runs": out,
            "settings": {"meta_iters": meta_iters, "inner_iters": inner_iters, "alpha": alpha,
                         "tasks": tasks, "solve_steps": steps, "solve_lr": lr,
                         "meta_batch": meta_batch, "runs": runs}}
