"""The meta-learning algorithms: Reptile, first-order MAML and exact MAML.

Every function works on any model with the ``Sequential`` API and runs a meta-batch of
n tasks as one batched pass over a leading task axis: ``theta`` of shape ``(n, P)`` (one
copy per task, see ``tile``) and mini-batches ``(x, y)`` of shape ``(n, B, ...)``.

    phi = U^k(theta)            inner_loop          k steps of SGD or Adam (Algorithm 1)
    Reptile                     reptile_update      theta + epsilon mean_i (phi_i - theta), Eq. (5)
    FOMAML                      fomaml_gradient     g_k, the last inner gradient (section 2)
    MAML                        maml_gradient       (I - alpha H_1)...(I - alpha H_k) g_test,
                                                    Eqs. (17)-(21)
    inner-gradient combinations combination_gradient  sum_i w_i g_i (section 6.2)

Which batch is last decides FOMAML's tail (section 6.3): with ``batches`` drawn like the
others (shared tail) or a disjoint final batch (separate tail, the MAML-like choice).

``meta_gradient`` puts them behind one interface whose result an outer optimizer
consumes: ``outer_step(theta, g, epsilon)`` is plain SGD, ``theta - epsilon g``, which for
Reptile's ``g = theta - mean_i phi_i`` is exactly Eq. (5); pass an ``Adam`` to use
``g`` as a gradient for an adaptive outer step instead (section 3).
"""
from .backend import get_xp
from .optim import SGD

ALGOS = ("reptile", "fomaml", "maml")


def tile(theta, n):
    """n copies of theta (P,) -> (n, P), one per task of a meta-batch."""
    xp = get_xp(theta)
    return xp.broadcast_to(theta, (n,) + theta.shape).copy()


def inner_loop(model, theta, batches, optimizer, keep_grads=False):
    """phi = U^k(theta): one optimizer step per mini-batch (Algorithm 1's inner loop).

        g_i = L_i'(phi_{i-1}),   phi_i = step(phi_{i-1}, g_i),   phi_0 = theta

    theta: (P,) or (n, P); batches: k pairs (x, y) with the same task axes as theta;
    optimizer: ``SGD`` (phi_i = phi_{i-1} - alpha g_i, Eq. 10) or ``Adam``.
    Returns phi, or (phi, [g_1, ..., g_k]) with keep_grads.
    """
    phi, grads = theta, []
    for x, y in batches:
        g = model.grad(phi, x, y)
        phi = optimizer.step(phi, g)
        if keep_grads:
            grads.append(g)
    return (phi, grads) if keep_grads else phi


def reptile_update(theta, phis, epsilon):
    """Batched Reptile outer update.

        theta <- theta + epsilon * (1/n) * sum_i (phi_i - theta)

    Paper: Eq. (5) (Algorithm 1 is the serial case n = 1).

    theta: (P,) initialisation; phis: (n, P) weights after k inner steps on each task.
    """
    return theta + epsilon * (phis.mean(axis=0) - theta)


def linear_schedule(start, final, iteration, total):
    """epsilon annealed linearly from start (iteration 0) to final (iteration total).

    The paper's code: ``meta_step_size * (1 - i/total) + meta_step_size_final * i/total``.
    """
    frac = iteration / total
    return (1 - frac) * start + frac * final


def fomaml_gradient(model, theta, batches, optimizer):
    """First-order MAML: g_FOMAML = g_k = L_k'(phi_{k-1}) (section 2; Eq. 38 with SGD).

    Runs the inner loop on ``batches[:-1]`` and returns the gradient of the last batch's
    loss at the result, so k batches cost k gradients. Shared tail: the last batch is
    drawn like the others (``[train] * k``); separate tail: it is disjoint from them
    (``[train] * (k - 1) + [test]``, MAML's first-order approximation).

    theta: (P,) or (n, P); returns g_k with theta's shape (one gradient per task).
    """
    phi = inner_loop(model, theta, batches[:-1], optimizer)
    x, y = batches[-1]
    return model.grad(phi, x, y)


def maml_gradient(model, theta, inner_batches, test_batch, alpha, first_order=False):
    """Exact MAML meta-gradient through k SGD steps, computed backwards.

        phi_0 = theta,  phi_i = phi_{i-1} - alpha L_i'(phi_{i-1}),       i = 1..k
        g_MAML = d/dtheta L_test(phi_k)
               = (I - alpha H_1) (I - alpha H_2) ... (I - alpha H_k) L_test'(phi_k)
        with H_i = L_i''(phi_{i-1})

    Paper: Eqs. (17)-(21) (the paper counts the test loss as its k-th loss). The product
    is applied right to left, v <- v - alpha H_i v, one exact Hessian-vector product per
    step; only phi_0..phi_{k-1} are kept (memory O(k P), no activations across steps).
    first_order=True drops the H_i terms (MAML's own first-order option): g = L_test'(phi_k).

    theta: (P,) or (n, P); inner_batches: k pairs (x, y); test_batch: (x, y).
    Returns g_MAML with theta's shape.
    """
    phis, phi = [], theta
    for x, y in inner_batches:
        phis.append(phi)                                        # phi_{i-1}
        phi = phi - alpha * model.grad(phi, x, y)               # phi_i
    v = model.grad(phi, *test_batch)                            # L_test'(phi_k)
    if first_order:
        return v
    for phi, (x, y) in zip(reversed(phis), reversed(inner_batches)):
        v = v - alpha * model.hvp(phi, x, y, v)                 # (I - alpha H_i) v
    return v


def combination_gradient(grads, weights):
    """A first-order meta-gradient sum_i w_i g_i of the inner gradients (section 6.2).

    Reptile with SGD is weights (1, ..., 1) (times alpha, Eq. 40); FOMAML is (0, ..., 0, 1).
    grads: k arrays of equal shape (from ``inner_loop(..., keep_grads=True)``); weights: k numbers.
    """
    if len(grads) != len(weights):
        raise ValueError(f"{len(weights)} weights for {len(grads)} inner gradients")
    return sum(w * g for w, g in zip(weights, grads))


def meta_gradient(algo, model, theta, batches, test_batch, optimizer):
    """The meta-gradient g of one meta-batch, averaged over its n tasks; theta <- theta - eps g.

        reptile: theta - mean_i phi_i,  phi_i = U^k(theta) on batches        Eq. (5)
        fomaml:  mean_i L_test'(phi_i)                                        section 2
        maml:    mean_i (I - alpha H_1)...(I - alpha H_k) L_test'(phi_i)       Eqs. (17)-(21)

    theta: (P,); batches: k pairs (x, y) of shape (n, B, ...); test_batch: (x, y) with
    the same n (unused by Reptile); optimizer: the inner one (``SGD`` for exact MAML).
    FOMAML's tail is test_batch: a disjoint batch (separate tail) or one of ``batches``
    again (shared tail). A stateful inner optimizer (Adam) keeps its (n, P) state across
    calls; merging or resetting it is the caller's choice (``Adam.merge_tasks``).
    """
    thetas = tile(theta, len(batches[0][0]) if batches else len(test_batch[0]))
    if algo == "reptile":
        return theta - inner_loop(model, thetas, batches, optimizer).mean(axis=0)
    if algo == "fomaml":
        g = fomaml_gradient(model, thetas, list(batches) + [test_batch], optimizer)
        return g.mean(axis=0)
    if algo == "maml":
        if not isinstance(optimizer, SGD):
            raise ValueError("exact MAML differentiates through SGD steps; use an SGD inner loop")
        return maml_gradient(model, thetas, batches, test_batch, optimizer.lr).mean(axis=0)
    raise ValueError(f"unknown algorithm {algo!r}; expected one of {', '.join(ALGOS)}")


def outer_step(theta, g, epsilon, optimizer=None):
    """The outer update from a meta-gradient: theta - epsilon g, or an outer optimizer's step.

    With Reptile's g = theta - mean_i phi_i this is Eq. (5); with an ``Adam`` (its lr set
    to epsilon, so the schedule still applies) g is treated as a gradient (section 3).
    """
    if optimizer is None:
        return theta - epsilon * g
    optimizer.lr = epsilon
    return optimizer.step(theta, g)
