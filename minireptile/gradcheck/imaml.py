"""Checks of iMAML's implicit meta-gradient (``meta.imaml_gradient``), in float64.

    g_iMAML = (I + H / lam)^(-1) L_test'(phi*),  phi* = argmin L_train + (lam/2)||phi - theta||^2

    converged      the gradient descent of iMAML-GD reaches phi*: ||F'(phi)|| of the proximal
                   objective F is at rounding level
    direct solve   conjugate gradient (P iterations) against numpy.linalg.solve with the full
                   Hessian H at phi*, built column by column from the exact H v
    differences    u.g_iMAML against central differences of theta -> L_test(phi*(theta)),
                   phi* solved again at theta +/- h u
    CG residual    the residual ||b - A g|| that CG reports after 5 iterations (the default
                   --cg-steps) equals the one recomputed from its answer

lam and the step are chosen from the spectrum of H at theta, so that the proximal problem is
strongly convex (lam above twice the most negative eigenvalue) and gradient descent on it
contracts (alpha = 1 / (largest eigenvalue + lam)).
"""
import numpy as np

from ..backend import to_host
from ..meta import conjugate_gradient, imaml_gradient
from .core import Row, central, compare, scalar, unit
from .passes import kink_margin

STEPS = 400              # gradient steps on the proximal problem: rate at most 1 - 1/3 each
DIRECTIONS = 4


def hessian(model, theta, x, y, xp):
    """The full Hessian of the loss at theta (P, P), one exact H e_i per column."""
    eye = xp.eye(model.num_params)
    return np.stack([to_host(model.hvp(theta, x, y, eye[i])) for i in range(len(eye))])


def check_imaml(name, model, sample, rng, xp=np, tries=100):
    """The four rows of the module docstring for one model."""
    for _ in range(tries):
        theta = xp.asarray(model.init(rng) + 0.05 * rng.standard_normal(model.num_params))
        train, test = (tuple(xp.asarray(a) for a in sample(rng, ())) for _ in range(2))
        eig = np.linalg.eigvalsh(hessian(model, theta, *train, xp))
        lam = 2 * max(1.0, -eig[0])
        alpha = 1 / (eig[-1] + lam)
        g = imaml_gradient(model, theta, train, test, alpha, STEPS, lam,
                           cg_steps=2 * model.num_params)[0]
        phi = theta                                      # phi*, by the same descent

        for _ in range(STEPS):
            phi = phi - alpha * (model.grad(phi, *train) + lam * (phi - theta))
        if kink_margin(model, phi, train[0]) > 1e-4 and kink_margin(model, phi, test[0]) > 1e-4:
            break
    else:
        raise RuntimeError(f"{name}: no draw kept phi* 1e-4 from a kink")
    residual = float(np.linalg.norm(to_host(model.grad(phi, *train) + lam * (phi - theta))))
    rows = [Row(name, f"imaml: gradient descent reaches phi* (||F'(phi)|| {residual:.1e})",
                residual, residual, residual < 1e-8)]
    h, v = hessian(model, phi, *train, xp), to_host(model.grad(phi, *test))
    direct = np.linalg.solve(np.eye(len(h)) + h / lam, v)
    rows.append(compare(name, f"imaml: CG = direct solve (lam {lam:.3g})", g, direct))

    def meta_loss(th):                                   # L_test(phi*(theta))
        phi = th
        for _ in range(STEPS):
            phi = phi - alpha * (model.grad(phi, *train) + lam * (phi - th))
        return scalar(model.loss(phi, *test))
    dirs = [xp.asarray(unit(rng, theta.shape)) for _ in range(DIRECTIONS)]
    rows.append(compare(name, f"imaml: u.g vs differences of L_test(phi*) ({DIRECTIONS} "
                              f"directions)", np.array([scalar(g * u) for u in dirs]),
                        np.array([central(lambda s, u=u: meta_loss(theta + s * u))
                                  for u in dirs])))
    x5, reported = conjugate_gradient(lambda u: u + model.hvp(phi, *train, u) / lam,
                                      xp.asarray(v), 5)
    recomputed = np.linalg.norm(v - to_host(x5) - h @ to_host(x5) / lam)
    rows.append(compare(name, f"imaml: 5 CG steps' residual ({float(reported):.2e}, of "
                              f"{np.linalg.norm(v):.2e})", float(reported), recomputed))
    return rows
