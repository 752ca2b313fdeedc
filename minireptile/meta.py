"""The meta-learning core: the inner loop, each algorithm's update, the outer step.

Every command runs these functions: few-shot training, evaluation's fine-tuning, sine, the
demo, the theory tools, ``gradcheck`` and ``bench``. Each works on one task, theta (P,) and
mini-batches (x (B, ...), y (B, ...)), or on n tasks at once with a leading task axis,
theta (n, P) and (x (n, B, ...), y (n, B, ...)); how a meta-batch's tasks are run and
combined is ``metabatch.py``.

    phi = U^k(theta)          inner_steps, adapt     k optimizer steps, one per mini-batch
    Delta, what a task proposes, in parameter units (``delta_rule`` picks one):
        reptile_delta         phi_k - theta                                Eq. (5), Alg. 1
        fomaml_delta          phi_k - phi_{k-1}, the last inner update     section 2
        combination_delta     sum_j w_j (phi_j - phi_{j-1})                section 6.2
        maml_delta            -alpha g_MAML                                Eqs. (17)-(21)
        imaml_delta           -alpha g_iMAML         Rajeswaran et al. 2019, Algorithm 2
    g_MAML                    maml_gradient     (I - alpha H_1) ... (I - alpha H_k) g_test
    g_iMAML                   imaml_gradient    (I + H / lam)^(-1) g_test(phi), by CG
    theta <- theta + epsilon mean_i Delta_i       outer_step (metabatch.meta_update)

One convention for epsilon, the paper's code's: the outer step adds epsilon times the mean
update, and every update is a step in parameter space. With an SGD inner loop the inner
updates are phi_j - phi_{j-1} = -alpha g_j, so FOMAML's Delta is -alpha g_k, a combination's
is -alpha sum_j w_j g_j (Reptile is w = 1, ..., 1) and MAML's -alpha g_MAML is in the same
units: ``--meta-step`` means the same for all of them. With Adam in the inner loop, FOMAML's
Delta is Adam's last step, exactly what the paper's code takes (``phi_k - last_backup``).
An outer optimizer (``Adam``) instead treats -mean_i Delta_i as a gradient (section 3).

The last mini-batch is FOMAML's tail and MAML's test batch (the paper counts the test loss
as its k-th loss): drawn like the others (shared tail) or disjoint from them (separate tail,
section 6.3); the caller decides by what it puts there.
"""
from functools import partial
from typing import NamedTuple

from .backend import get_xp
from .optim import SGD

ALGOS = ("reptile", "fomaml", "maml", "imaml")    # the named ones; also "combination"


class Step(NamedTuple):
    """One inner step: phi_prev -> phi on one mini-batch, with its loss, gradient and Hessian."""
    phi_prev: object       # phi_{i-1}, before the step (and before weight decay)
    loss: object           # L_i(lambda phi_{i-1}), one value per task
    g: object              # g_i = L_i'(lambda phi_{i-1})
    phi: object            # phi_i
    hvp: object            # v -> H_i v, H_i = L_i''(lambda phi_{i-1}), exact


def tile(theta, n):
    """n copies of theta (P,) -> (n, P), one per task of a meta-batch."""
    xp = get_xp(theta)
    return xp.broadcast_to(theta, (n,) + theta.shape).copy()


def inner_steps(model, theta, batches, optimizer, weight_decay=1.0, reuse=False):
    """The inner loop, one ``Step`` per mini-batch (Algorithm 1's "k steps of SGD or Adam").

        phi_0 = theta,   g_i = L_i'(lambda phi_{i-1}),   phi_i = step(lambda phi_{i-1}, g_i)

    lambda is the paper's ``--weight-decay`` factor (1 = off; its code multiplies the weights
    by it before every inner step). optimizer: ``SGD`` (phi_i = phi_{i-1} - alpha g_i,
    Eq. 10) or ``Adam``, whose state advances with every step.
    Each step's hvp(v) = H_i v: with reuse, from the passes of g_i, kept while the step's hvp
    lives (``model.linearize``: memory one pass's activations, then only the R-passes per
    product); otherwise recomputed at every call (``model.hvp``: memory only lambda phi_{i-1}).
    theta: (P,) or (n, P); batches: k pairs (x, y) with the same task axes as theta.
    """
    phi = theta
    for x, y in batches:
        at = phi * weight_decay if weight_decay != 1 else phi
        if reuse:
            loss, g, hvp = model.linearize(at, x, y)
        else:
            (loss, g), hvp = model.loss_and_grad(at, x, y), partial(model.hvp, at, x, y)
        step = Step(phi, loss, g, optimizer.step(at, g), hvp)
        yield step
        phi = step.phi


def adapt(model, theta, batches, optimizer, weight_decay=1.0):
    """phi = U^k(theta): the weights after the inner loop (training and evaluation alike)."""
    phi = theta
    for step in inner_steps(model, theta, batches, optimizer, weight_decay):
        phi = step.phi
    return phi


def maml_gradient(model, theta, inner_batches, test_batch, alpha, weight_decay=1.0,
                  reuse=True, mask=None):
    """Exact MAML meta-gradient through k SGD steps, computed backwards.

        phi_i = lambda phi_{i-1} - alpha L_i'(lambda phi_{i-1}),   phi_0 = theta,  i = 1..k
        g_MAML = d/dtheta L_test(phi_k)
               = lambda^k (I - alpha H_1) (I - alpha H_2) ... (I - alpha H_k) L_test'(phi_k)
        with H_i = L_i''(lambda phi_{i-1})            (lambda = weight decay, 1 = off)

    mask: the inner loop's ``SGD`` mask M (parameters it holds fixed, Finn et al.'s batch-norm
    offsets): phi_i = lambda phi_{i-1} - alpha M L_i'(.), so each factor is (I - alpha H_i M)
    (the transpose of the step's Jacobian I - alpha M H_i; H_i is symmetric). The held
    parameters still get their meta-gradient, through the loss and through the others' steps.

    Paper: Eqs. (17)-(21) (the paper counts the test loss as its k-th loss). The product
    is applied right to left, v <- lambda (v - alpha H_i v), one exact Hessian-vector product
    per step, at the point where the inner loop took g_i (``Step.hvp``):
        reuse=True   g_i's passes (forward caches, every layer's dL/dy) are kept for the
                     backward sweep, so each H_i v runs only the R-forward and R-backward
                     (``model.linearize``): memory O(k P + k x activations)
        reuse=False  only lambda phi_{i-1} is kept and each H_i v recomputes the forward and
                     backward passes first (``model.hvp``): memory O(k P)
    Both give the same numbers. Measured per inner step, float32, on the benchmark's settings
    (``python bench/run.py --only inner_steps``, peak RSS against k = 1..32): reuse=False
    adds n P x 4 bytes, the O(k P), 2.2 MiB on the Omniglot CNN (n = 5, P = 113221) and 0.41 MiB
    on the sine MLP (n = 25, P = 4353); reuse=True adds 24.8 MiB and 0.85 MiB (the kept passes:
    22.6 MiB on Omniglot; 385 MiB, counted, on the Mini-ImageNet CNN: there a large k wants
    reuse=False).
    On Omniglot at k = 5 reuse=True takes 3/4 of reuse=False's time (an H_i v 0.63).

    theta: (P,) or (n, P); inner_batches: k pairs (x, y); test_batch: (x, y).
    Returns g_MAML with theta's shape.
    """
    return _maml(model, theta, inner_batches, test_batch, alpha, weight_decay, reuse, mask)[0]


def _maml(model, theta, inner_batches, test_batch, alpha, weight_decay, reuse, mask=None):
    """(g_MAML, loss of the first mini-batch) -- ``maml_gradient``, keeping the loss to log."""
    hvps, phi, first = [], theta, None
    sgd = SGD(alpha, mask)
    for step in inner_steps(model, theta, inner_batches, sgd, weight_decay, reuse):
        hvps.append(step.hvp)                                        # v -> H_i v
        phi = step.phi                                               # phi_i
        if first is None:
            first = step.loss
    loss, v = model.loss_and_grad(phi, *test_batch)                  # L_test'(phi_k)
    for hvp in reversed(hvps):
        v = v - alpha * hvp(v if mask is None else mask * v)         # (I - alpha H_i M) v
        v = v * weight_decay if weight_decay != 1 else v             # lambda (...)
    return v, loss if first is None else first


def reptile_delta(model, theta, batches, optimizer, weight_decay=1.0):
    """Delta = phi_k - theta.   Eq. (5) / Algorithm 1.

    With SGD, phi_k - theta = -alpha sum_i g_i (section 6.2's "sum", Eq. 27 to first order).
    Returns (Delta with theta's shape, the loss of the first mini-batch).
    """
    step, first = _last_step(model, theta, batches, optimizer, weight_decay)
    return step.phi - theta, first                                   # phi_k - theta


def fomaml_delta(model, theta, batches, optimizer, weight_decay=1.0):
    """Delta = phi_k - phi_{k-1}, the last inner update.   Section 2, Eq. (26).

    With SGD it is -alpha g_k, FOMAML's meta-gradient step; with Adam it is Adam's last step,
    exactly what the paper's code takes (``phi_k - last_backup``). The last mini-batch is
    the tail: drawn like the others (shared) or held out (separate, section 6.3).
    An SGD mask M holds parameters fixed in the inner loop, not in the meta-update: theirs
    is -alpha g_k too (Finn et al.'s FOMAML, ``stop_grad``, on their batch-norm offsets).
    """
    step, first = _last_step(model, theta, batches, optimizer, weight_decay)
    delta = step.phi - step.phi_prev                                 # phi_k - phi_{k-1}
    if isinstance(optimizer, SGD) and optimizer.mask is not None:
        delta = delta - optimizer.lr * ((1 - optimizer.mask) * step.g)  # -alpha (I - M) g_k
    return delta, first


def combination_delta(model, theta, batches, optimizer, weights, weight_decay=1.0):
    """Delta = sum_j w_j (phi_j - phi_{j-1}).   Section 6.2, Figure 3.

    With SGD, -alpha sum_j w_j g_j: Reptile is w = (1, ..., 1), FOMAML w = (0, ..., 0, 1).
    weights: k numbers, one per mini-batch.
    """
    if weights is None or len(weights) != len(batches):
        raise ValueError(f"a combination needs one weight per mini-batch ({len(batches)})")
    delta, first = 0, None
    for w, step in zip(weights, inner_steps(model, theta, batches, optimizer, weight_decay)):
        if first is None:
            first = step.loss
        if w:
            delta = delta + w * (step.phi - step.phi_prev)           # w_j (phi_j - phi_{j-1})
    return delta, first


def maml_delta(model, theta, batches, optimizer, weight_decay=1.0, reuse=True):
    """Delta = -alpha g_MAML(batches[:-1]; test batch batches[-1]).   Eqs. (17)-(21).

    In parameter units like the others (``--meta-step`` means the same for all); the inner
    loop must be SGD, the steps g_MAML differentiates through. reuse: ``maml_gradient``.
    """
    if not isinstance(optimizer, SGD):
        raise ValueError("exact MAML differentiates through SGD steps; use an SGD inner loop")
    g, loss = _maml(model, theta, batches[:-1], batches[-1], optimizer.lr, weight_decay, reuse,
                    optimizer.mask)
    return -optimizer.lr * g, loss


def imaml_gradient(model, theta, train_batch, test_batch, alpha, steps, lam, cg_steps,
                   damping=0.0, lam_damping=0.0, pullback=False):
    """Implicit MAML's meta-gradient (Rajeswaran, Finn, Kakade, Levine 2019, iMAML-GD).

        phi ~ Alg*(theta) = argmin_phi L_train(phi) + (lam / 2) ||phi - theta||^2
              (their proximally regularised inner problem), by `steps` steps of gradient
              descent on it from phi_0 = theta (iMAML-GD):
              phi_i = phi_{i-1} - alpha (L_train'(phi_{i-1}) + lam (phi_{i-1} - theta))
        g_iMAML = (I + H / lam)^(-1) L_test'(phi),  H = L_train''(phi)
              (their Lemma 1, the implicit Jacobian dAlg*/dtheta = (I + H / lam)^(-1)), by
              `cg_steps` iterations of conjugate gradient on the exact H v (their Algorithm
              2): memory one pass's activations, whatever `steps` is

    damping, lam_damping: the system the authors' code solves, ((1 + damping) I +
    H / (lam + lam_damping)) g = L_test'(phi) (implicit_maml/learner_model.py,
    ``matrix_evaluator``: regu_coef, lam_damping); 0, 0 is the paper's.
    pullback: the inner loop of the authors' code (examples/omniglot_implicit_maml.py:
    ``learn_task`` then one step on ``regularization_loss(w_0, lam)``): `steps` steps of
    gradient descent on L_train alone, then one step on the proximal term alone,
    phi <- phi - alpha lam (phi - theta).
    theta: (P,) or (n, P); train_batch, test_batch: (x, y). Returns (g_iMAML, the CG
    residual ||b - A g|| per task, the loss of the training batch at theta).
    """
    phi, first = theta, None
    for _ in range(steps):                             # phi_i, gradient descent on Eq. (4)
        loss, g = model.loss_and_grad(phi, *train_batch)
        first = loss if first is None else first
        phi = phi - alpha * (g if pullback else g + lam * (phi - theta))
    if pullback:                                       # the authors': the proximal term last
        phi = phi - alpha * lam * (phi - theta)
    _, v = model.loss_and_grad(phi, *test_batch)                      # L_test'(phi)
    loss, _, hvp = model.linearize(phi, *train_batch)                 # v -> H v at phi
    first = loss if first is None else first
    scale = 1 / (lam + lam_damping)
    g, residual = conjugate_gradient(lambda u: (1 + damping) * u + scale * hvp(u), v, cg_steps)
    return g, residual, first


def conjugate_gradient(apply, b, steps):
    """x ~ A^(-1) b by `steps` iterations of conjugate gradient from x = 0, with A symmetric
    positive definite given as apply(v) = A v; every task of b's leading axes on its own.

        r = b - A x,  p = r;  each step:  a = r.r / p.Ap,  x += a p,  r -= a Ap,
                                          p = r + (r.r / r_old.r_old) p
    Returns (x, the residual norm ||b - A x|| per task). A task whose residual is 0 stops.
    """
    xp = get_xp(b)
    x, r = xp.zeros_like(b), b
    p, rr = r, (r * r).sum(axis=-1, keepdims=True)
    for _ in range(steps):
        ap = apply(p)
        pap = (p * ap).sum(axis=-1, keepdims=True)
        a = xp.where(pap > 0, rr / xp.where(pap > 0, pap, 1), 0)
        x, r = x + a * p, r - a * ap
        rr_new = (r * r).sum(axis=-1, keepdims=True)
        p = r + xp.where(rr > 0, rr_new / xp.where(rr > 0, rr, 1), 0) * p
        rr = rr_new
    return x, xp.sqrt(rr[..., 0])


def imaml_delta(model, theta, batches, optimizer, lam, cg_steps, damping=0.0, lam_damping=0.0,
                pullback=False):
    """Delta = -alpha g_iMAML: k - 1 steps of gradient descent on batches[0] (the support set,
    full batch) -- on the proximal problem, or with pullback on L_train and then one step on
    the proximal term (the authors' code) -- and the test batch batches[-1].   See
    ``imaml_gradient``. In parameter units like MAML's; the inner loop must be SGD."""
    if not isinstance(optimizer, SGD):
        raise ValueError("iMAML-GD solves its inner problem by gradient descent; use SGD")
    alpha = optimizer.lr
    g, _, loss = imaml_gradient(model, theta, batches[0], batches[-1], alpha,
                                len(batches) - 1, lam, cg_steps, damping, lam_damping, pullback)
    return -alpha * g, loss


def _last_step(model, theta, batches, optimizer, weight_decay):
    """(the inner loop's last ``Step``, the loss of its first mini-batch)."""
    if not batches:
        raise ValueError("the inner loop needs at least one mini-batch")
    first = step = None
    for step in inner_steps(model, theta, batches, optimizer, weight_decay):
        if first is None:
            first = step.loss
    return step, first


DELTAS = {"reptile": reptile_delta, "fomaml": fomaml_delta, "combination": combination_delta,
          "maml": maml_delta, "imaml": imaml_delta}


def imaml_options(lam, cg_steps, inner="proximal", damping=0.0, lam_damping=0.0):
    """iMAML's options for ``delta_rule`` from the commands' flags: --imaml-lambda,
    --cg-steps, --imaml-inner (proximal: the paper's iMAML-GD; authors: their code's free
    steps and one pull-back), --cg-damping and --cg-lambda-damping (``imaml_gradient``)."""
    return {"lam": lam, "cg_steps": cg_steps, "pullback": inner == "authors",
            "damping": damping, "lam_damping": lam_damping}


def delta_rule(algo, weight_decay=1.0, weights=None, reuse=True, imaml=None):
    """The algorithm's Delta as one function (model, theta, batches, optimizer) ->
    (Delta, loss of the first mini-batch), its options bound: weight decay (all but iMAML),
    the weights w_j of a combination, exact MAML's memory for time (``maml_gradient``), and
    iMAML's dict of lam, cg_steps, damping, lam_damping (``imaml_gradient``)."""
    if algo not in DELTAS:
        raise ValueError(f"unknown algorithm {algo!r}; expected one of {', '.join(DELTAS)}")
    if algo == "imaml":
        if weight_decay != 1:
            raise ValueError("iMAML's proximal term replaces weight decay; use 1")
        return partial(imaml_delta, **{"lam": 1.0, "cg_steps": 5, **(imaml or {})})
    options = {"weight_decay": weight_decay}
    if algo == "combination":
        options["weights"] = weights
    if algo == "maml":
        options["reuse"] = reuse
    return partial(DELTAS[algo], **options)


def outer_step(theta, delta, epsilon, outer=None):
    """theta <- theta + epsilon Delta, or an outer optimizer's step on the gradient -Delta.

    With Reptile's Delta = mean_i (phi_i - theta) this is Eq. (5). An ``Adam`` (its lr set
    to epsilon, so the schedule still applies) treats -Delta as a gradient (section 3).
    """
    if outer is None:
        return theta + epsilon * delta
    outer.lr = epsilon
    return outer.step(theta, -delta)


def linear_schedule(start, final, iteration, total):
    """epsilon annealed linearly from start (iteration 0) to final (iteration total).

    The paper's code: ``meta_step_size * (1 - i/total) + meta_step_size_final * i/total``.
    """
    frac = iteration / total
    return (1 - frac) * start + frac * final
