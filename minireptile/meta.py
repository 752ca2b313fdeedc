"""The meta-learning core: the inner loop, Reptile, FOMAML, exact MAML and the outer update.

Every command runs these functions: few-shot training (batched and ``--sequential``),
evaluation's fine-tuning, sine, the demo, the theory tools, ``gradcheck`` and ``bench``.
A meta-batch of n tasks runs as one batched pass over a leading task axis: ``theta`` of
shape ``(n, P)`` (one copy per task, ``tile``) and mini-batches ``(x, y)`` of shape
``(n, B, ...)``.

    phi = U^k(theta)        inner_steps, adapt      k optimizer steps, one per mini-batch
    Delta_i, one per task   task_update             what task i proposes, in parameter units:
        reptile             phi_k - theta                                  Eq. (5), Alg. 1
        fomaml              phi_k - phi_{k-1}, the last inner update       section 2
        combination w       sum_j w_j (phi_j - phi_{j-1})                  section 6.2
        maml                -alpha g_MAML                                  Eqs. (17)-(21)
    theta <- theta + epsilon mean_i Delta_i        meta_update, outer_step

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

ALGOS = ("reptile", "fomaml", "maml")             # and "combination" (section 6.2)


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
                  reuse=True):
    """Exact MAML meta-gradient through k SGD steps, computed backwards.

        phi_i = lambda phi_{i-1} - alpha L_i'(lambda phi_{i-1}),   phi_0 = theta,  i = 1..k
        g_MAML = d/dtheta L_test(phi_k)
               = lambda^k (I - alpha H_1) (I - alpha H_2) ... (I - alpha H_k) L_test'(phi_k)
        with H_i = L_i''(lambda phi_{i-1})            (lambda = weight decay, 1 = off)

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
    return _maml(model, theta, inner_batches, test_batch, alpha, weight_decay, reuse)[0]


def _maml(model, theta, inner_batches, test_batch, alpha, weight_decay, reuse):
    """(g_MAML, loss of the first mini-batch) -- ``maml_gradient``, keeping the loss to log."""
    hvps, phi, first = [], theta, None
    for step in inner_steps(model, theta, inner_batches, SGD(alpha), weight_decay, reuse):
        hvps.append(step.hvp)                                        # v -> H_i v
        phi, first = step.phi, step.loss if first is None else first  # phi_i
    loss, v = model.loss_and_grad(phi, *test_batch)                  # L_test'(phi_k)
    for hvp in reversed(hvps):
        v = v - alpha * hvp(v)                                       # (I - alpha H_i) v
        v = v * weight_decay if weight_decay != 1 else v             # lambda (...)
    return v, loss if first is None else first


def task_update(algo, model, theta, batches, optimizer, weight_decay=1.0, weights=None,
                reuse=True):
    """Delta, the update each task proposes, and the loss of its first mini-batch.

        reptile      Delta = phi_k - theta                         Eq. (5) / Algorithm 1
        fomaml       Delta = phi_k - phi_{k-1}                     the last inner update
        combination  Delta = sum_j w_j (phi_j - phi_{j-1})         section 6.2, w = weights
        maml         Delta = -alpha g_MAML(batches[:-1], batches[-1])   Eqs. (17)-(21)

    With SGD (and no weight decay) phi_j - phi_{j-1} = -alpha g_j, so FOMAML is -alpha g_k
    (Eq. 38's first-order term), a combination -alpha sum_j w_j g_j, Reptile w = (1, ..., 1)
    and FOMAML w = (0, ..., 0, 1). Exact MAML needs an SGD inner loop.

    theta: (P,) or (n, P); batches: k pairs (x, y) with theta's task axes; optimizer: the
    inner one; reuse: exact MAML's memory for time (``maml_gradient``).
    Returns (Delta with theta's shape, loss with theta's task shape).
    """
    if algo == "maml":
        if not isinstance(optimizer, SGD):
            raise ValueError("exact MAML differentiates through SGD steps; use an SGD inner loop")
        g, loss = _maml(model, theta, batches[:-1], batches[-1], optimizer.lr, weight_decay,
                        reuse)
        return -optimizer.lr * g, loss
    if algo == "combination":
        if weights is None or len(weights) != len(batches):
            raise ValueError(f"a combination needs one weight per mini-batch ({len(batches)})")
    elif algo not in ("reptile", "fomaml"):
        raise ValueError(f"unknown algorithm {algo!r}; expected reptile, fomaml, maml or "
                         f"combination")
    if not batches:
        raise ValueError("the inner loop needs at least one mini-batch")
    delta, first = 0, None
    for j, step in enumerate(inner_steps(model, theta, batches, optimizer, weight_decay)):
        first = step.loss if first is None else first
        if algo == "combination" and weights[j]:
            delta = delta + weights[j] * (step.phi - step.phi_prev)  # w_j (phi_j - phi_{j-1})
    if algo == "reptile":
        delta = step.phi - theta                                     # phi_k - theta
    elif algo == "fomaml":
        delta = step.phi - step.phi_prev                             # phi_k - phi_{k-1}
    return delta, first


def sum_tasks(arrays):
    """([a.sum(axis=0) for a in arrays], n): sums over the task axis, in task order.

    The default ``reduce``: the meta-batch's n tasks are all in this process. Split over
    processes, ``distributed.py`` gives a reduce with the same contract that sums over every
    process's tasks (in task order, with the same additions as here, when deterministic).
    """
    return [a.sum(axis=0) for a in arrays], len(arrays[0])


def _reduced_updates(algo, model, theta, batches, optimizer, weight_decay, weights, sequential,
                     reduce, reuse):
    """(Delta_i of the tasks here (n_here, P), sum_i Delta_i, sum_i loss_i, n): the sums over
    all n tasks, from one ``reduce`` call that also carries what merges the inner optimizer's
    per-task states (Adam's moments, ``Adam.merge_tasks``), so that the tasks' processes
    exchange everything the outer update needs at once."""
    n, xp = batches[0][0].shape[0], get_xp(theta)
    if sequential:
        runs = [task_update(algo, model, theta, [(x[i], y[i]) for x, y in batches], optimizer,
                            weight_decay, weights, reuse) for i in range(n)]
        delta, loss, terms = xp.stack([r[0] for r in runs]), xp.stack([r[1] for r in runs]), []
    else:
        start = optimizer.snapshot()
        delta, loss = task_update(algo, model, xp.broadcast_to(theta, (n,) + theta.shape),
                                  batches, optimizer, weight_decay, weights, reuse)
        terms = optimizer.task_terms(start)                   # Adam: s_i - beta^k s_0
    (delta_sum, loss_sum, *term_sums), total = (reduce or sum_tasks)([delta, loss, *terms])
    if not sequential:
        optimizer.merge_sums(start, term_sums, total)
    return delta, delta_sum, loss_sum, total


def task_updates(algo, model, theta, batches, optimizer, weight_decay=1.0, weights=None,
                 sequential=False, reduce=None, reuse=True):
    """Delta_i for the n tasks of a meta-batch (n, P), and the mean first-batch loss.

    Batched (default): the n tasks in one pass over the task axis. A stateful inner optimizer
    (Adam) gives every task a copy of its state, and the n copies are merged after
    (``Adam.merge_tasks``: exact with SGD, the documented approximation with Adam).
    sequential=True: the tasks one after another through the one optimizer state, exactly
    as the paper's code feeds them.

    theta: (P,); batches: k pairs (x (n, B, ...), y (n, B, ...)). reduce: see ``meta_update``
    (the loss and the merge then cover every process's tasks; Delta is this process's).
    reuse: exact MAML's memory for time (``maml_gradient``).
    """
    delta, _, loss_sum, n = _reduced_updates(algo, model, theta, batches, optimizer,
                                             weight_decay, weights, sequential, reduce, reuse)
    return delta, loss_sum / n


def outer_step(theta, delta, epsilon, outer=None):
    """theta <- theta + epsilon Delta, or an outer optimizer's step on the gradient -Delta.

    With Reptile's Delta = mean_i (phi_i - theta) this is Eq. (5). An ``Adam`` (its lr set
    to epsilon, so the schedule still applies) treats -Delta as a gradient (section 3).
    """
    if outer is None:
        return theta + epsilon * delta
    outer.lr = epsilon
    return outer.step(theta, -delta)


def meta_update(algo, model, theta, batches, optimizer, epsilon, outer=None, weight_decay=1.0,
                weights=None, sequential=False, reduce=None, reuse=True):
    """One meta-iteration on a meta-batch: theta <- theta + epsilon mean_i Delta_i.

    The n tasks' updates come from ``task_updates`` (see ``task_update`` for each
    algorithm's Delta); their mean is applied by ``outer_step``.
    theta: (P,); batches: k pairs (x (n, B, ...), y (n, B, ...)), the last one FOMAML's tail
    and MAML's test batch. Returns (new theta, mean loss of the first mini-batch).

    reduce: how sums over the meta-batch's tasks are taken, ``sum_tasks`` by default. When the
    tasks are split over processes (batched Reptile as SimuParallelSGD: each process adapts
    to its own tasks), a function with sum_tasks' contract over all of them
    (``distributed.py``); it is called once per meta-iteration, on [Delta_i, loss_i, and
    Adam's per-task moments], so one collective carries everything the outer update needs.
    reuse: exact MAML keeps each inner step's passes for its Hessian-vector product (faster,
    memory O(k x activations)) or recomputes them (memory O(k P)); see ``maml_gradient``.
    """
    _, delta_sum, loss_sum, n = _reduced_updates(algo, model, theta, batches, optimizer,
                                                 weight_decay, weights, sequential, reduce,
                                                 reuse)
    return outer_step(theta, delta_sum / n, epsilon, outer), loss_sum / n


def linear_schedule(start, final, iteration, total):
    """epsilon annealed linearly from start (iteration 0) to final (iteration total).

    The paper's code: ``meta_step_size * (1 - i/total) + meta_step_size_final * i/total``.
    """
    frac = iteration / total
    return (1 - frac) * start + frac * final
