"""The explore page's app: how Reptile, FOMAML, exact MAML and iMAML move theta on a plane.

The task family. theta = (w, b) is the whole parameter vector of y = tanh(w x + b)
(``Sequential([Linear(1, 1), Tanh()], MSE(), (1,))``), so a point of the plane is a model.
A task is y = tanh(a x + c), a ~ U[-2, 2], c ~ U[-1.5, 1.5], with its own train points (the
inner loop's mini-batch, 1 to MAX_POINTS of them) and TEST_POINTS test points (MAML's and
iMAML's test batch, FOMAML's tail), x ~ U[-2, 2]. Why this family: with one train point x_1
a task's train loss is zero on the whole line w x_1 + b = a x_1 + c -- section 5.2's
solution manifold W_tau, and different tasks' lines cross at different angles (Figure 2);
with more points it is zero at (a, c) only. tanh saturates, so every loss flattens to a
plateau away from its valley: non-convex, gradients vanishing far out, visibly different
from task to task. Tasks are drawn from the seed as MAX_TASKS tasks of MAX_POINTS points,
then cut, so asking for more tasks or points keeps the ones already shown.

    POST /explore/state   {theta: [w, b], k, alpha, epsilon, optimizer, lam, tasks, points,
                           seed, grid}, every key optional (DEFAULTS) ->
        tasks      each task's a, c, points, and inner trajectory phi_0 = theta ... phi_k:
                   ``meta.inner_steps``, k steps on its train points
        updates    per algorithm, end = theta + epsilon mean_i Delta_i: one
                   ``metabatch.meta_update`` with ``meta.delta_rule(algo)``, as training runs
                   it, on these mini-batches (``batches``):
                     reptile  train x k         phi_k - theta                Eq. (5), Alg. 1
                     fomaml   train x k, test   -alpha L_test'(phi_k)     section 2, Eq. (26)
                     maml     train x k, test   -alpha g_MAML, k steps       Eqs. (17)-(21)
                     imaml    train x k, test   -alpha (I + H/lam)^-1 L_test'(phi), phi by k
                              steps of gradient descent on the proximal problem
                              (Rajeswaran et al. 2019, Lemma 1; CG_STEPS of CG)
                   exact MAML and iMAML need the SGD inner loop: with Adam, {"error": why}
        section51  AvgGrad, AvgGradInner at theta and Eqs. (33)-(41)'s coefficients
                   (``section51``); SGD only
        grid       when grid is true: each task's train loss at GRID x GRID points of the
                   square PLANE, and their mean
        seconds    the request's time (the server logs it)
    POST /explore/run     the same settings and steps -> each algorithm's path theta_0 ...
                          theta_steps, one meta_update per step on all the tasks (``paths``)

Caps (400, one line, otherwise): DEFAULTS' ranges, numbers finite, theta within +/-THETA_MAX.
The CPU work runs under the app's lock, shared with the drawing page's app.
"""
import threading
import time
from typing import NamedTuple

import numpy as np

from ..layers import Linear, Tanh
from ..losses import MSE
from ..meta import ALGOS, adapt, delta_rule, inner_steps, tile
from ..metabatch import meta_update
from ..models import Sequential
from ..optim import SGD, Adam
from ..theory.coefficients import predicted
from .server import BadRequest

MODEL = Sequential([Linear(1, 1), Tanh()], MSE(), (1,), name="tanh(w x + b)")
PLANE = (-4.0, 4.0)         # the plane's w and b ranges: every task's (a, c) lies inside
GRID = 41                   # loss values per side of the plane
MAX_TASKS, MAX_POINTS, TEST_POINTS = 8, 5, 5
THETA_MAX = 10.0            # |w|, |b| a request may start from
CG_STEPS = 2                # CG on P = 2 parameters: exact in 2 (I + H/lam positive definite)
# name: (low, high, default); integers where the default is an int
DEFAULTS = {"k": (1, 20, 5), "alpha": (0.001, 2.0, 0.1), "epsilon": (0.0, 2.0, 1.0),
            "lam": (0.01, 100.0, 1.0), "tasks": (1, MAX_TASKS, 3), "points": (1, MAX_POINTS, 1),
            "seed": (0, 2 ** 31 - 1, 18), "steps": (1, 200, 100)}
OPTIMIZERS = ("sgd", "adam")


class Tasks(NamedTuple):
    """n tasks y = tanh(a x + c): a, c (n,); train and test (x (n, B, 1), y (n, B, 1))."""
    a: np.ndarray
    c: np.ndarray
    train: tuple
    test: tuple


def draw_tasks(seed, n, points):
    """n tasks of `points` train and TEST_POINTS test points, the first n of the seed's
    MAX_TASKS (the first `points` of each one's MAX_POINTS train points)."""
    rng = np.random.default_rng(seed)
    a, c = rng.uniform(-2, 2, MAX_TASKS)[:n], rng.uniform(-1.5, 1.5, MAX_TASKS)[:n]
    x_train = rng.uniform(-2, 2, (MAX_TASKS, MAX_POINTS, 1))[:n, :points]     # (n, B, 1)
    x_test = rng.uniform(-2, 2, (MAX_TASKS, TEST_POINTS, 1))[:n]               # (n, T, 1)

    def f(x):
        return np.tanh(a[:, None, None] * x + c[:, None, None])
    return Tasks(a, c, (x_train, f(x_train)), (x_test, f(x_test)))


def batches(tasks, k, algo):
    """The mini-batches ``meta_update`` gets for algo: the train points k times (the inner
    loop), then, for all but Reptile, the test points (FOMAML's tail, MAML's and iMAML's
    test batch: ``meta.py`` takes the last mini-batch as that)."""
    return [tasks.train] * k + ([] if algo == "reptile" else [tasks.test])


def inner_optimizer(s):
    """SGD(alpha), or Adam(alpha) with beta1 = 0 as the paper's inner loop (section 6.1)."""
    return SGD(s["alpha"]) if s["optimizer"] == "sgd" else Adam(s["alpha"], beta1=0.0)


def update(algo, theta, tasks, s, inner):
    """theta + epsilon mean_i Delta_i: one ``metabatch.meta_update`` of algo (Eq. 5 for all
    four: the paper's convention, every Delta a step in parameter space), inner's state
    advancing as in training. ValueError (the core's) for MAML or iMAML with Adam."""
    rule = delta_rule(algo, imaml={"lam": s["lam"], "cg_steps": CG_STEPS})
    return meta_update(rule, MODEL, theta, batches(tasks, s["k"], algo), inner,
                       s["epsilon"])[0]


def trajectories(theta, tasks, s):
    """Each task's inner loop phi_0 = theta, phi_1 ... phi_k: (n, k + 1, 2)."""
    start = tile(theta, len(tasks.a))
    steps = inner_steps(MODEL, start, [tasks.train] * s["k"], inner_optimizer(s))
    return np.stack([start] + [step.phi for step in steps], axis=1)


def section51(theta, tasks, s):
    """Section 5.1's two terms at theta over the tasks, every loss a task's train loss:

        AvgGrad      = mean_i gbar_i,          gbar_i = L_i'(theta)        Eqs. (11), (28)
        AvgGradInner = mean_i Hbar_i gbar_i,   Hbar_i = L_i''(theta)       Eqs. (12), (29)

    with their coefficients in E[g] = c1 AvgGrad + c2 AvgGradInner + O(alpha^2), Eqs. (33)-(41):
    Reptile's for its k losses, FOMAML's and MAML's for k + 1 (the test loss counted as the
    last, as the paper does). Reptile's inner loop here takes its k steps on one train loss,
    so for it the expansion holds task by task (Eq. 40 with every L_j = L_i): its step
    -epsilon alpha g_Reptile is the sum of the two ``terms``, -epsilon alpha c1 AvgGrad and
    -epsilon alpha c2 AvgGradInner, up to O(alpha^3); ``predicted`` is theta plus both.
    """
    start = tile(theta, len(tasks.a))
    g = MODEL.grad(start, *tasks.train)                                 # gbar_i
    hg = MODEL.hvp(start, *tasks.train, g)                              # Hbar_i gbar_i
    avg_grad, avg_grad_inner = g.mean(axis=0), hg.mean(axis=0)
    k, alpha, epsilon = s["k"], s["alpha"], s["epsilon"]
    coefficients = {"reptile": predicted("reptile", k, alpha),
                    "fomaml": predicted("fomaml", k + 1, alpha),
                    "maml": predicted("maml", k + 1, alpha)}
    c1, c2 = coefficients["reptile"]
    terms = [-epsilon * alpha * c1 * avg_grad, -epsilon * alpha * c2 * avg_grad_inner]
    return {"avg_grad": avg_grad.tolist(), "avg_grad_inner": avg_grad_inner.tolist(),
            "coefficients": coefficients, "terms": [t.tolist() for t in terms],
            "predicted": (theta + terms[0] + terms[1]).tolist()}


def grid_losses(tasks):
    """Each task's train loss at the GRID x GRID points (w_j, b_i) of PLANE: (n, G, G),
    rows along b (increasing), columns along w."""
    n, axis = len(tasks.a), np.linspace(*PLANE, GRID)
    w, b = np.meshgrid(axis, axis)                                      # (G, G) each
    thetas = np.broadcast_to(np.stack([w.ravel(), b.ravel()], axis=1), (n, GRID * GRID, 2))
    x, y = (np.broadcast_to(v[:, None], (n, GRID * GRID) + v.shape[1:]) for v in tasks.train)
    return axis, MODEL.loss(thetas, x, y).reshape(n, GRID, GRID)


def paths(theta, tasks, s):
    """Each algorithm's path theta_0 ... theta_steps, one ``update`` per meta-step on all n
    tasks (a full meta-batch, so the path is deterministic and shows where it converges), the
    inner optimizer's state carried from step to step as in training. A path stops where
    theta is no longer finite ("diverged": the step). Each end point's mean train loss (the
    joint-training objective E[L], Eqs. 6-7) and mean test loss after k inner steps (MAML's
    objective, Eq. 2) come with it."""
    out = {}
    for algo in ALGOS:
        inner, path, diverged = inner_optimizer(s), [theta], None
        try:
            for step in range(1, s["steps"] + 1):
                nxt = update(algo, path[-1], tasks, s, inner)
                if not np.all(np.isfinite(nxt)):
                    diverged = step
                    break
                path.append(nxt)
        except ValueError as exc:
            out[algo] = {"error": str(exc)}
            continue
        end = tile(path[-1], len(tasks.a))
        phi = adapt(MODEL, end, [tasks.train] * s["k"], inner_optimizer(s))
        out[algo] = {"path": np.stack(path).tolist(), "diverged": diverged,
                     "train_loss": float(MODEL.loss(end, *tasks.train).mean()),
                     "test_loss_adapted": float(MODEL.loss(phi, *tasks.test).mean())}
    return out


def settings(body):
    """The request's settings, DEFAULTS filled in; BadRequest (400, one line) for a key not
    known, a number not finite, out of range or (for the counts) not whole, a choice not
    offered, or theta not two numbers within +/-THETA_MAX."""
    if not isinstance(body, dict):
        raise BadRequest(400, "the request needs a JSON object of settings")
    known = {"theta", "optimizer", "grid", *DEFAULTS}
    for key in body:
        if key not in known:
            raise BadRequest(400, f"unknown setting {str(key)[:40]!r}; expected "
                                  f"{', '.join(sorted(known))}")
    s = {}
    for name, (low, high, default) in DEFAULTS.items():
        value, whole = body.get(name, default), isinstance(default, int)
        if not (isinstance(value, (int, float)) and not isinstance(value, bool)
                and low <= value <= high and (not whole or float(value).is_integer())):
            kind, (lo, hi) = (("a whole number", (low, high)) if whole else
                              ("a number", (f"{low:g}", f"{high:g}")))
            raise BadRequest(400, f"{name} must be {kind} from {lo} to {hi}")
        s[name] = int(value) if whole else float(value)
    s["optimizer"], s["grid"] = body.get("optimizer", "sgd"), body.get("grid", False)
    if s["optimizer"] not in OPTIMIZERS:
        raise BadRequest(400, f"optimizer must be {' or '.join(OPTIMIZERS)}")
    if not isinstance(s["grid"], bool):
        raise BadRequest(400, "grid must be true or false")
    theta = body.get("theta", [0.0, 0.0])
    if not (isinstance(theta, list) and len(theta) == 2 and all(
            isinstance(v, float) and abs(v) <= THETA_MAX for v in theta)):
        raise BadRequest(400, f"theta must be [w, b], two numbers from -{THETA_MAX:g} to "
                              f"{THETA_MAX:g}")
    s["theta"] = np.array(theta, np.float64)
    return s


class ExploreApp:
    """The explore page's endpoints. lock: the lock of the CPU work, shared with the drawing
    page's app (``cli/demo.py`` makes one); every request's work runs under it."""

    def __init__(self, lock=None):
        self.lock = lock or threading.Lock()

    def routes(self):
        """{(method, path): answer(body)} for the server."""
        return {("POST", "/explore/state"): self.state, ("POST", "/explore/run"): self.run}

    def state(self, body):
        """The /explore/state answer (module docstring), timed from the parsed body."""
        t0 = time.perf_counter()
        with self.lock:
            s = settings(body)
            theta, tasks = s["theta"], draw_tasks(s["seed"], s["tasks"], s["points"])
            answer = {"theta": theta.tolist(), "tasks": _tasks(tasks, trajectories(theta,
                                                                                   tasks, s))}
            answer["updates"] = {}
            for algo in ALGOS:
                try:
                    end = update(algo, theta, tasks, s, inner_optimizer(s))
                    answer["updates"][algo] = {"end": _finite(end)}
                except ValueError as exc:
                    answer["updates"][algo] = {"error": str(exc)}
            answer["section51"] = section51(theta, tasks, s) if s["optimizer"] == "sgd" else \
                {"error": "Eqs. (33)-(41) expand an SGD inner loop; choose sgd"}
            if s["grid"]:
                axis, losses = grid_losses(tasks)
                answer["grid"] = {"axis": axis.tolist(), "tasks": losses.tolist(),
                                  "mean": losses.mean(axis=0).tolist()}
        return {**answer, "seconds": time.perf_counter() - t0}

    def run(self, body):
        """The /explore/run answer: {"paths": {algo: ``paths``' entry}, "seconds"}."""
        t0 = time.perf_counter()
        with self.lock:
            s = settings(body)
            tasks = draw_tasks(s["seed"], s["tasks"], s["points"])
            answer = {"paths": paths(s["theta"], tasks, s)}
        return {**answer, "seconds": time.perf_counter() - t0}


def _tasks(tasks, phis):
    """Each task as JSON: a, c, train and test points (x, y lists), its trajectory."""
    def points(batch):
        return {"x": batch[0][..., 0].tolist(), "y": batch[1][..., 0].tolist()}
    return [{"a": float(tasks.a[i]), "c": float(tasks.c[i]),
             "train": points((tasks.train[0][i], tasks.train[1][i])),
             "test": points((tasks.test[0][i], tasks.test[1][i])),
             "trajectory": _finite(phis[i])} for i in range(len(tasks.a))]


def _finite(a):
    """a as nested lists, or None where it is not all finite (JSON has no NaN or infinity)."""
    return a.tolist() if np.all(np.isfinite(a)) else None
