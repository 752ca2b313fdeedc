"""Checks of the meta-gradients that ``meta.py`` computes, on real models, in float64.

    exact MAML   u.g_MAML, g_MAML = d/dtheta L_test(U^k(theta)), vs central differences of
                 the unrolled loss theta -> L_test(U^k(theta)) along random directions u,
                 k = 1..3 (Eqs. 17-21); and k = 2 with an inner mask M holding half the
                 parameters, the factors (I - alpha H_i M)
    FOMAML       Delta = phi_k - phi_{k-1} = -alpha L_k'(phi_{k-1})   (its definition)
    Reptile      Delta = phi_k - theta = -alpha sum_i L_i'(phi_{i-1})  (its definition, Eq. 40)
    Taylor       Eqs. (25)-(27): the second-order expansions of MAML, FOMAML and Reptile for
                 k = 2 are off by O(alpha^2), so halving alpha divides the error by about 4

The inner loops here are SGD with step alpha. theta and the mini-batches are re-drawn until
every inner step's ReLU inputs and pooling windows stay 1e-4 away from a kink.
"""
import numpy as np

from ..meta import adapt, delta_rule, fomaml_delta, maml_gradient, reptile_delta
from ..optim import SGD
from .core import Row, central, compare, scalar, unit
from .passes import kink_margin

TAYLOR_ALPHA = 1e-4      # small enough for the CNNs' third derivatives (batch norm)
DIRECTIONS = 6


def _draw(model, sample, rng, xp, k, alpha, min_margin=1e-4, tries=200):
    """theta (P,) and k + 1 mini-batches whose whole inner loop stays off kinks."""
    for _ in range(tries):
        theta = xp.asarray(model.init(rng) + 0.05 * rng.standard_normal(model.num_params))
        batches = [tuple(xp.asarray(a) for a in sample(rng, ())) for _ in range(k + 1)]
        phi, ok = theta, True
        for x, y in batches:
            ok = ok and kink_margin(model, phi, x) > min_margin
            phi = phi - alpha * model.grad(phi, x, y)
        if ok:
            return theta, batches
    raise RuntimeError(f"{model.name}: no draw kept the inner loop {min_margin} from a kink")


def check_meta(name, model, sample, rng, xp=np, k_max=3, alpha=0.05):
    """Rows for exact MAML (k = 1..k_max), FOMAML, Reptile and the Taylor expansion."""
    theta, batches = _draw(model, sample, rng, xp, k_max, alpha)
    rows = []
    for k in range(1, k_max + 1):
        inner, test = batches[:k], batches[k]

        def meta_loss(th):                                  # L_test(U^k(theta))
            return scalar(model.loss(adapt(model, th, inner, SGD(alpha)), *test))

        g = maml_gradient(model, theta, inner, test, alpha)
        dirs = [xp.asarray(unit(rng, theta.shape)) for _ in range(DIRECTIONS)]
        rows.append(compare(name, f"maml k={k} ({DIRECTIONS} directions)",
                            np.array([scalar(g * u) for u in dirs]),
                            np.array([central(lambda s, u=u: meta_loss(theta + s * u))
                                      for u in dirs])))
    rows.append(held_row(name, model, theta, batches[:2], batches[2], alpha, rng, xp))
    grads, phi = [], theta
    for x, y in batches:                                    # the inner loop, written out
        grads.append(model.grad(phi, x, y))
        phi = phi - alpha * grads[-1]
    rows.append(compare(name, "fomaml = -alpha g_k", fomaml_delta(
        model, theta, batches, SGD(alpha))[0], -alpha * grads[-1]))
    rows.append(compare(name, "reptile = -alpha sum g_i", reptile_delta(
        model, theta, batches, SGD(alpha))[0], -alpha * sum(grads)))
    return rows + taylor_rows(name, model, theta, batches[:2])


def held_row(name, model, theta, inner, test, alpha, rng, xp):
    """Exact MAML with an inner-loop mask M holding a random half of the parameters
    (``--bn-offsets-outer`` holds the batch-norm offsets): u.g_MAML, with its factors
    (I - alpha H_i M), against central differences of L_test through the masked SGD steps."""
    mask = xp.asarray((rng.random(theta.shape) < 0.5).astype(np.float64))

    def meta_loss(th):
        return scalar(model.loss(adapt(model, th, inner, SGD(alpha, mask)), *test))

    g = maml_gradient(model, theta, inner, test, alpha, mask=mask)
    dirs = [xp.asarray(unit(rng, theta.shape)) for _ in range(DIRECTIONS)]
    return compare(name, f"maml k={len(inner)}, half held (mask M; {DIRECTIONS} directions)",
                   np.array([scalar(g * u) for u in dirs]),
                   np.array([central(lambda s, u=u: meta_loss(theta + s * u)) for u in dirs]))


def taylor_rows(name, model, theta, batches, alpha=TAYLOR_ALPHA):
    """Eqs. (25)-(27) for k = 2: error of the expansion at alpha over its error at alpha / 2.

        MAML     g2 - alpha H2 g1 - alpha H1 g2        (Eq. 25)
        FOMAML   g2 - alpha H2 g1                      (Eq. 26)
        Reptile  g1 + g2 - alpha H2 g1                 (Eq. 27)
    with g_i, H_i the gradient and Hessian of L_i at theta. A row passes when the ratio is
    within 10% of 4; its 'max rel err' column is |ratio / 4 - 1|.
    """
    (b1, b2) = batches
    g1, g2 = model.grad(theta, *b1), model.grad(theta, *b2)
    h2g1, h1g2 = model.hvp(theta, *b2, g1), model.hvp(theta, *b1, g2)

    def errors(a):
        exact = {algo: -delta_rule(algo)(model, theta, [b1, b2], SGD(a))[0] / a
                 for algo in ("maml", "fomaml", "reptile")}
        taylor = {"maml": g2 - a * h2g1 - a * h1g2, "fomaml": g2 - a * h2g1,
                  "reptile": g1 + g2 - a * h2g1}
        return {algo: float(np.linalg.norm(exact[algo] - taylor[algo])) for algo in exact}

    coarse, fine = errors(alpha), errors(alpha / 2)
    rows = []
    for algo, eq in (("maml", 25), ("fomaml", 26), ("reptile", 27)):
        ratio = coarse[algo] / fine[algo]
        off = abs(ratio / 4 - 1)
        rows.append(Row(name, f"Taylor Eq. {eq} ({algo}): error ratio {ratio:.3f}",
                        coarse[algo], off, bool(off < 0.1)))
    return rows
