"""Hessian spectra through exact Hessian-vector products: ``eigsh`` on a ``LinearOperator``.

The second-order terms of section 5.1 are the Hessians Hbar_i = L_i''(theta) (Eq. 12), and
MAML's meta-gradient multiplies the test gradient by the Jacobian of the inner loop

    J = U'(theta) = (I - alpha H_1) (I - alpha H_2) ... (I - alpha H_k),
        H_i = L_i''(phi_{i-1})                                              Eqs. (19)-(21)

so g_MAML = J g_FOMAML with a shared test loss: the singular values of J say how much the
second-order terms can change the update. No P x P matrix is ever formed: a matrix-vector
product is one ``model.hvp`` (J: k of them), and ARPACK (``scipy.sparse.linalg.eigsh``)
finds the extreme eigenvalues of H, and of J^T J (J's squared singular values), from a
few hundred products. Each operator keeps the passes of its gradients (``model.linearize``,
``inner_steps(reuse=True)``), so a product runs only the R-forward and R-backward passes.
"""
import numpy as np
from scipy.sparse.linalg import LinearOperator, eigsh

from ..backend import get_xp, to_host
from ..meta import adapt, inner_steps, maml_gradient
from ..optim import SGD


def _like(v, theta):
    """ARPACK's host float64 vector v on theta's device, in theta's dtype."""
    return get_xp(theta).asarray(np.asarray(v).ravel(), dtype=theta.dtype)


def hessian_operator(model, theta, x, y):
    """H = L''(theta) of one task's loss as a P x P ``LinearOperator``: v -> H v.

    theta: (P,) on the device; x, y: one task's data (B, ...). Vectors cross to the host
    (ARPACK runs there) as float64 and back in theta's dtype.
    """
    p = theta.shape[-1]
    hvp = model.linearize(theta, x, y)[2]

    def hv(v):
        return to_host(hvp(_like(v, theta))).astype(np.float64)
    return LinearOperator((p, p), matvec=hv, rmatvec=hv, dtype=np.float64)


def jacobian_operator(model, theta, batches, alpha):
    """J = (I - alpha H_1) ... (I - alpha H_k), the inner loop's Jacobian, as an operator.

        J v:   v <- v - alpha H_i v  for i = k, ..., 1      (the product maml_gradient
        J^T v: v <- v - alpha H_i v  for i = 1, ..., k       applies to the test gradient)

    H_i = L_i''(phi_{i-1}) at the points of ``meta.inner_steps`` with SGD(alpha).
    theta: (P,); batches: k mini-batches (x (B, ...), y (B, ...)) of one task.
    """
    p = theta.shape[-1]
    hvps = [step.hvp for step in inner_steps(model, theta, batches, SGD(alpha), reuse=True)]

    def product(order):
        def apply(v):
            v = _like(v, theta)
            for hvp in order:
                v = v - alpha * hvp(v)                                   # (I - alpha H_i) v
            return to_host(v).astype(np.float64)
        return apply
    return LinearOperator((p, p), matvec=product(hvps[::-1]), rmatvec=product(hvps),
                          dtype=np.float64)


def extreme_eigenvalues(op, m, rng, tol=1e-4, which="BE"):
    """Extreme eigenvalues of a symmetric operator by ARPACK's Lanczos (``eigsh``).

    which="BE": the m smallest and m largest; "LA": the m largest only (bottom is then empty).
    tol: ARPACK's relative accuracy of each eigenvalue. rng seeds its start vector, so runs
    repeat. Returns (bottom ascending, top descending, number of operator products).
    """
    calls = [0]

    def counted(v):
        calls[0] += 1
        return op.matvec(v)
    values = np.sort(eigsh(LinearOperator(op.shape, matvec=counted, dtype=op.dtype),
                           k=2 * m if which == "BE" else m, which=which, tol=tol,
                           v0=rng.standard_normal(op.shape[0]), return_eigenvectors=False))
    return (values[:m] if which == "BE" else values[:0]), values[::-1][:m], calls[0]


def singular_values(op, m, rng, tol=1e-4):
    """The m smallest and m largest singular values of op: eigsh on G = op^T op.

    The largest eigenvalues s_max^2 of G come first; the smallest are then the largest of
    s_max^2 I - G, so both ends are found to the same absolute accuracy tol * s_max^2
    (Lanczos on G itself would need relative accuracy near zero, thousands of products).
    """
    def gram(v):
        return op.rmatvec(op.matvec(v))
    _, top, calls = extreme_eigenvalues(LinearOperator(op.shape, matvec=gram,
                                                       dtype=np.float64), m, rng, tol, "LA")
    shift = top[0]                                                   # s_max^2

    def shifted(v):
        return shift * v - gram(v)
    _, low, more = extreme_eigenvalues(LinearOperator(op.shape, matvec=shifted,
                                                      dtype=np.float64), m, rng, tol, "LA")
    return np.sqrt(np.maximum(shift - low, 0)), np.sqrt(top), calls + more


def task_spectrum(model, theta, batches, task, alpha, rng, m=3, tol=1e-4):
    """One task's measurements at theta (P,): batches, k mini-batches; task, its loss data.

    H(theta) and H(phi_k) of the task loss, phi_k = U^k(theta) by SGD(alpha) on the k
    mini-batches; the singular values of J over those k steps; and how much J changes the
    meta-gradient, ||g_MAML - g_FOMAML|| / ||g_FOMAML|| with the task loss as test loss.
    """
    phi = adapt(model, theta, batches, SGD(alpha))
    out = {}
    for name, point in (("theta", theta), ("phi_k", phi)):
        bottom, top, calls = extreme_eigenvalues(hessian_operator(model, point, *task), m, rng,
                                                 tol)
        out[name] = {"bottom": bottom.tolist(), "top": top.tolist(), "products": calls,
                     "loss": float(model.loss(point, *task))}
    bottom, top, calls = singular_values(jacobian_operator(model, theta, batches, alpha), m,
                                         rng, tol)
    g_fo = model.grad(phi, *task)
    g_maml = maml_gradient(model, theta, batches, task, alpha)
    out["jacobian"] = {"bottom": bottom.tolist(), "top": top.tolist(), "products": calls,
                       "change": float(np.linalg.norm(to_host(g_maml - g_fo))
                                   / np.linalg.norm(to_host(g_fo)))}
    return out


def spectrum(problem, thetas, rng, tasks, k, alpha, m=3, tol=1e-4):
    """``task_spectrum`` on the same ``tasks`` tasks at every theta of {name: theta (P,)}.

    Returns {"points": {name: [one dict per task]}, "k", "alpha", "m", "tol"}.
    """
    draws = [problem.draw(rng, 1, k) for _ in range(tasks)]
    points = {}
    for name, theta in thetas.items():
        points[name] = []
        for batches, task in draws:
            one = [(x[0], y[0]) for x, y in batches]
            points[name].append(task_spectrum(problem.model, theta, one,
                                              (task[0][0], task[1][0]), alpha, rng, m, tol))
    return {"points": points, "k": k, "alpha": alpha, "m": m, "tol": tol}
