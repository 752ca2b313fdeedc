"""Section 5.1 measured: AvgGrad, AvgGradInner, and the meta-gradients written in them.

    AvgGrad      = E_{tau,1}[gbar_1]                       gbar_i = L_i'(theta)   Eq. (28)
    AvgGradInner = E_{tau,1,2}[Hbar_2 gbar_1]              Hbar_i = L_i''(theta)  Eq. (29)
                 = 1/2 E d/dtheta (gbar_1 . gbar_2)                               Eq. (32)

    E[g_MAML]    = AvgGrad - 2 (k-1) alpha AvgGradInner + O(alpha^2)     Eqs. (33), (37)
    E[g_FOMAML]  = AvgGrad -   (k-1) alpha AvgGradInner + O(alpha^2)     Eqs. (34), (39)
    E[g_Reptile] = k AvgGrad - k (k-1)/2 alpha AvgGradInner + O(alpha^2) Eqs. (35), (41)

with k mini-batch losses, an SGD(alpha) inner loop, and the paper's meta-gradients:
g_Reptile = (theta - phi_k) / alpha (Eq. 40), g_FOMAML = g_k (Eq. 38) and g_MAML through
k - 1 inner steps with L_k as the test loss (Eqs. 17-21) -- -Delta / alpha of
``meta.delta_rule``.

Every sample is one task with K = max(ks) independent mini-batches, and every quantity is
computed on the same samples (common random numbers): AvgGrad from all K gradients,
AvgGradInner from all K (K - 1) ordered pairs, each meta-gradient from the first k
mini-batches. The samples fall into G groups; the standard errors are the groups' (means)
and the delete-one-group jackknife's (the fitted coefficients).
"""
import numpy as np

from ..backend import to_host
from ..meta import inner_steps, maml_gradient, tile
from ..optim import SGD

ALGOS = ("maml", "fomaml", "reptile")


def predicted(algo, k, alpha):
    """(c1, c2) with E[g_algo] = c1 AvgGrad + c2 AvgGradInner + O(alpha^2), Eqs. (33)-(41)."""
    return {"maml": (1.0, -2 * (k - 1) * alpha),
            "fomaml": (1.0, -(k - 1) * alpha),
            "reptile": (float(k), -k * (k - 1) / 2 * alpha)}[algo]


def sample_terms(model, theta, batches, alphas, ks, control=True):
    """Per task of one draw: the AvgGrad and AvgGradInner terms and every meta-gradient.

        AvgGrad      <- 1/K sum_i gbar_i
        AvgGradInner <- 1/(K (K-1)) sum_{i != j} Hbar_i gbar_j
                      = 1/(K (K-1)) sum_i Hbar_i (s - gbar_i),   s = sum_j gbar_j

    (unbiased, Eqs. 28-29: mini-batches i != j are independent). Then, for every alpha, one
    inner run ``meta.inner_steps`` gives phi_k and g_k for every k (the runs for k are each
    other's prefixes): g_Reptile(k) = (theta - phi_k) / alpha, g_FOMAML(k) = g_k, and
    ``meta.maml_gradient`` g_MAML(k) on mini-batches 1..k-1 with mini-batch k as test.

    control=True subtracts from each meta-gradient a control variate of mean exactly zero:
    its zeroth-order term minus that term's expectation, gbar_k - AvgGrad (FOMAML, MAML) and
    sum_{i<=k} gbar_i - k AvgGrad (Reptile), both from this task's K gradients at theta.
    The mean is unchanged (the mini-batches are exchangeable; no Taylor expansion is used)
    but the mini-batch noise of order alpha^0 is gone, so the AvgGradInner term, of order
    alpha, stands out from the noise even at small alpha.

    theta: (P,); batches: K = max(ks) mini-batches (x (n, B, ...), y (n, B, ...)).
    Returns {"AvgGrad": (n, P), "AvgGradInner": (n, P), (algo, k, alpha): (n, P)}.
    """
    K, n = len(batches), batches[0][0].shape[0]
    theta_n = tile(theta, n)
    g = [model.grad(theta_n, x, y) for x, y in batches]                       # gbar_i
    s = sum(g)
    inner = sum(model.hvp(theta_n, x, y, s - gi) for (x, y), gi in zip(batches, g))
    terms = {"AvgGrad": s / K, "AvgGradInner": inner / (K * (K - 1))}
    avg = terms["AvgGrad"]
    for alpha in alphas:
        steps = list(inner_steps(model, theta_n, batches[:max(ks)], SGD(alpha)))
        for k in ks:
            last, first_k = (g[k - 1] - avg, sum(g[:k]) - k * avg) if control else (0, 0)
            terms["reptile", k, alpha] = ((theta_n - steps[k - 1].phi) / alpha    # Eq. (40)
                                          - first_k)
            terms["fomaml", k, alpha] = steps[k - 1].g - last                   # Eq. (38)
            terms["maml", k, alpha] = maml_gradient(model, theta_n, batches[:k - 1],
                                                    batches[k - 1], alpha) - last  # Eq. (21)
    return terms


def estimate(model, theta, draw, rng, alphas, ks, tasks, groups, chunk):
    """Group means of ``sample_terms`` over ``tasks`` sampled tasks.

    draw(rng, n, K) -> (batches, task) (``problems.Problem.draw``); tasks are split into
    ``groups`` equal groups, each drawn in chunks of at most ``chunk`` tasks at a time.
    Returns {name: (G, P) host float64 array}: each group's mean of every term.
    """
    if tasks < 2 * groups or groups < 2:
        raise ValueError(f"need at least 2 groups of 2 tasks, got {tasks} tasks in {groups}")
    if min(ks) < 2:
        raise ValueError("AvgGradInner needs pairs of mini-batches: k >= 2")
    per, means = tasks // groups, {}
    for gi in range(groups):
        sums, done = {}, 0
        while done < per:
            n = min(chunk, per - done)
            batches, _ = draw(rng, n, max(ks))
            for name, value in sample_terms(model, theta, batches, alphas, ks).items():
                sums[name] = sums.get(name, 0) + to_host(value).astype(np.float64).sum(axis=0)
            done += n
        for name, total in sums.items():
            means.setdefault(name, np.zeros((groups, total.size)))[gi] = total / per
    return means


def fit(y, a, b):
    """(c1, c2, relative residual) of the least-squares fit y ~ c1 a + c2 b; y, a, b: (P,)."""
    x = np.stack([a, b], axis=1)                                              # (P, 2)
    c = np.linalg.lstsq(x, y, rcond=None)[0]
    return np.array([c[0], c[1], np.linalg.norm(y - x @ c) / np.linalg.norm(y)])


def jackknife(stat, groups):
    """Delete-one-group jackknife: (stat of all, its standard error). groups: list of (G, P)."""
    g = groups[0].shape[0]
    full = np.asarray(stat(*(m.mean(axis=0) for m in groups)))
    loo = np.stack([np.asarray(stat(*((m.sum(axis=0) - m[i]) / (g - 1) for m in groups)))
                    for i in range(g)])
    return full, np.sqrt((g - 1) / g * ((loo - loo.mean(axis=0)) ** 2).sum(axis=0))


def mean_and_se(groups):
    """Per-component mean over groups and its standard error: (P,), (P,)."""
    return groups.mean(axis=0), groups.std(axis=0, ddof=1) / np.sqrt(groups.shape[0])


def fit_all(means):
    """Fit every meta-gradient in ``estimate``'s group means; one row per (algo, k, alpha).

    Each row: the measured (c1, c2) with jackknife standard errors, the predicted ones, the
    relative residual ||E[g] - c1 A - c2 B|| / ||E[g]|| of the fit and of the prediction, and
    the noise floor ||se(E[g] - c1 A - c2 B)|| / ||E[g]||: the residual that sampling alone
    would leave if the two-term form were exact.
    """
    a, b, rows = means["AvgGrad"], means["AvgGradInner"], []
    for key in sorted(k for k in means if isinstance(k, tuple)):
        algo, k, alpha = key
        y = means[key]
        (c1, c2, res), se = jackknife(fit, [y, a, b])
        p1, p2 = predicted(algo, k, alpha)
        ym, am, bm = y.mean(axis=0), a.mean(axis=0), b.mean(axis=0)
        noise = np.linalg.norm(mean_and_se(y - c1 * a - c2 * b)[1]) / np.linalg.norm(ym)
        rows.append({"algo": algo, "k": k, "alpha": alpha, "c1": c1, "c1_se": se[0],
                     "c2": c2, "c2_se": se[1], "c1_pred": p1, "c2_pred": p2,
                     "residual": res, "residual_se": se[2], "noise": noise,
                     "residual_pred": np.linalg.norm(ym - p1 * am - p2 * bm)
                     / np.linalg.norm(ym)})
    return rows


def coefficients(problem, theta, rng, alphas, ks=range(2, 9), tasks=2000, groups=20, chunk=100):
    """Measure Eqs. (33)-(41) at theta: the report of ``fit_all`` and the two terms' sizes.

    Returns {"rows": fit_all's rows, "avg_grad": |AvgGrad| and its standard error,
    "avg_grad_inner": likewise, "tasks": ..., "groups": ...}.
    """
    ks = list(ks)
    means = estimate(problem.model, theta, problem.draw, rng, list(alphas), ks, tasks, groups,
                     chunk)
    sizes = {}
    for name in ("AvgGrad", "AvgGradInner"):
        norm, se = jackknife(lambda m: np.linalg.norm(m), [means[name]])
        sizes[name] = {"norm": float(norm), "se": float(se)}
    return {"rows": fit_all(means), "avg_grad": sizes["AvgGrad"],
            "avg_grad_inner": sizes["AvgGradInner"], "tasks": groups * (tasks // groups),
            "groups": groups, "ks": ks, "alphas": list(alphas)}
