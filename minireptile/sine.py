"""Section 4, Figure 1: sine-wave regression, its tasks, its meta-training, its adaptation.

    task tau = (a, b):  f(x) = a sin(x + b),   a ~ U[0.1, 5.0],   b ~ U[0, 2 pi]
    the learner sees p = 10 points x_1..x_p ~ U[-5, 5] and their values f(x_j)
    loss, Eq. (8): integral over [-5, 5] of (f_theta(x) - f(x))^2, computed on 50 equally
    spaced points (as their mean: the MSE of ``losses.py``)

``run(SineConfig(...), out)`` is ``minireptile sine``: meta-train the 1-64-64-1 MLP with
Reptile, FOMAML or exact MAML (``metabatch.meta_update``, the one core), then fine-tune it
and the random initialisation it started from with SGD on the p points of held-out tasks,
and write the table (sine-ALGO.json), the trained initialisation (theta-ALGO.npy) and, with
matplotlib, Figure 1's panels. Random numbers come from the run's host generator, so both
backends see the same tasks.
"""
import dataclasses
import os
import time
from typing import NamedTuple

import numpy as np

from . import backend, files
from .data.batches import task_rng
from .distributed import LOCAL
from .errors import UserError
from .meta import delta_rule, imaml_options, inner_steps, linear_schedule, tile
from .metabatch import meta_update
from .models import mlp
from .optim import SGD, Adam
from .progress import Progress

AMPLITUDE = (0.1, 5.0)
PHASE = (0.0, 2 * np.pi)
X_RANGE = (-5.0, 5.0)
POINTS = 10            # p, the points the learner sees
GRID = 50              # points of the loss's grid
SINE = 3               # first entry of a meta-iteration's task key (task_rng)
# per algorithm: (meta_step, meta_step_final, outer optimizer) when not given
DEFAULTS = {"reptile": (1.0, 0.0, "sgd"), "fomaml": (1e-3, 1e-4, "adam"),
            "maml": (1e-3, 1e-4, "adam"), "imaml": (1e-3, 1e-4, "adam")}


class SineTasks(NamedTuple):
    """n sine tasks: parameters on the host, data on the device."""
    amplitude: np.ndarray    # (n,)
    phase: np.ndarray        # (n,)
    train: tuple             # (x, y), each (n, p, 1): the points the learner sees
    test: tuple              # (x, y), each (n, 50, 1): the grid of the loss, Eq. (8)


def sine(amplitude, phase, x):
    """f(x) = a sin(x + b) for n tasks: a, b (n,), x (n, B, 1) -> (n, B, 1)."""
    return amplitude[:, None, None] * np.sin(x + phase[:, None, None])


def grid(n, size=GRID):
    """The loss's equally spaced points of [-5, 5], for n tasks: (n, size, 1)."""
    return np.broadcast_to(np.linspace(*X_RANGE, size)[:, None], (n, size, 1))


def sample(rng, n, points=POINTS):
    """n tasks from the section 4 distribution, drawn with the host generator rng."""
    a, b = rng.uniform(*AMPLITUDE, size=n), rng.uniform(*PHASE, size=n)
    x = rng.uniform(*X_RANGE, size=(n, points, 1))

    def pair(x):
        return backend.to_device(x, backend.dtype()), backend.to_device(sine(a, b, x),
                                                                        backend.dtype())
    return SineTasks(a, b, pair(x), pair(grid(n)))


@dataclasses.dataclass
class SineConfig:
    """The ``minireptile sine`` flags. meta_step, meta_step_final and outer left None take
    the algorithm's defaults (``DEFAULTS``): Reptile epsilon 1 -> 0 with Eq. (5); FOMAML and
    MAML an outer Adam 1e-3 -> 1e-4."""
    algo: str = "reptile"
    meta_iters: int = 20000
    inner_iters: int = 5          # k
    inner_lr: float = 0.02        # alpha, also the test-time step
    meta_step: float = None
    meta_step_final: float = None
    outer: str = None
    meta_batch: int = 10
    shared_tail: bool = False     # FOMAML/MAML's last step on the p points, not the grid
    imaml_lambda: float = 1.0     # iMAML: the proximal term's strength
    imaml_inner: str = "proximal"  # iMAML: proximal (iMAML-GD) | authors (their code)
    cg_steps: int = 5             # iMAML: conjugate-gradient iterations
    cg_damping: float = 0.0       # iMAML: the authors' ((1 + d) I + H / (lambda + d')) ...
    cg_lambda_damping: float = 0.0  # ... and its d'
    activation: str = "tanh"
    eval_tasks: int = 100
    eval_iters: int = 32
    seed: int = 0

    def resolved(self):
        """A copy with the algorithm's defaults filled in, checked (UserError otherwise)."""
        if self.algo not in DEFAULTS:
            raise UserError(f"unknown --algo {self.algo!r}; expected {', '.join(DEFAULTS)}")
        step, final, outer = DEFAULTS[self.algo]
        cfg = dataclasses.replace(
            self, meta_step=step if self.meta_step is None else self.meta_step,
            meta_step_final=final if self.meta_step_final is None else self.meta_step_final,
            outer=self.outer or outer)
        for name in ("meta_iters", "inner_iters", "meta_batch", "eval_tasks", "eval_iters"):
            if getattr(cfg, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be at least 1, "
                                f"got {getattr(cfg, name)}")
        for name in ("inner_lr", "meta_step", "meta_step_final"):
            value = getattr(cfg, name)
            if not np.isfinite(value) or value < 0 or (name == "inner_lr" and value == 0):
                kind = "positive" if name == "inner_lr" else "non-negative"
                raise UserError(f"--{name.replace('_', '-')} must be a {kind} number, "
                                f"got {value}")
        if not cfg.imaml_lambda > 0 or cfg.cg_steps < 1:
            raise UserError("--imaml-lambda must be positive and --cg-steps at least 1")
        if not (cfg.cg_damping >= 0 and cfg.cg_lambda_damping >= 0):
            raise UserError("--cg-damping and --cg-lambda-damping must be non-negative")
        if cfg.imaml_inner not in ("proximal", "authors"):
            raise UserError(f"--imaml-inner {cfg.imaml_inner}: expected proximal or authors")
        if cfg.shared_tail and cfg.algo == "reptile":
            raise UserError("--shared-tail applies to --algo fomaml or maml (Reptile has no "
                            "tail)")
        if cfg.outer not in ("sgd", "adam") or cfg.activation not in ("tanh", "relu"):
            raise UserError(f"--outer {cfg.outer} / --activation {cfg.activation}: expected "
                            f"sgd or adam / tanh or relu")
        return cfg

    def command_line(self, out):
        """The command that reproduces the run, every resolved setting spelled out."""
        flags = [f"--{k.replace('_', '-')}" + ("" if v is True else f" {v}")
                 for k, v in dataclasses.asdict(self).items() if v is not None and v is not False]
        return " ".join(["minireptile sine", *flags, "--out", out])


def meta_train(model, theta, cfg, callback=None, comm=LOCAL):
    """Meta-train theta (P,) on sine tasks: cfg.meta_iters outer steps of cfg.meta_batch tasks.

    Each task's k = inner_iters inner SGD steps use its p points (full batch); FOMAML and
    MAML then take one more mini-batch, the 50-point grid of the loss (a separate tail;
    shared_tail: the p points again), as FOMAML's last step and MAML's test loss.
    epsilon is annealed linearly; outer: Eq. (5) (sgd) or Adam on -Delta. Iteration t's tasks
    come from task_rng(seed, SINE, t): every process of comm draws all n and keeps its share.
    callback(iteration, theta) runs after every outer step.
    """
    if comm.size > cfg.meta_batch:
        raise UserError(f"--meta-batch {cfg.meta_batch} over {comm.size} processes: every "
                        f"process needs a task")
    imaml = imaml_options(cfg.imaml_lambda, cfg.cg_steps, cfg.imaml_inner, cfg.cg_damping,
                          cfg.cg_lambda_damping)
    rule = delta_rule(cfg.algo, imaml=imaml if cfg.algo == "imaml" else None)
    optimizer = SGD(cfg.inner_lr)
    outer = Adam(cfg.meta_step, beta1=0.9) if cfg.outer == "adam" else None
    here, reduce = comm.share(cfg.meta_batch), comm.reducer(cfg.meta_batch)
    rows = slice(here.start, here.stop)
    for i in range(cfg.meta_iters):
        full = sample(task_rng(cfg.seed, SINE, i), cfg.meta_batch)
        train, test = (tuple(a[rows] for a in pair) for pair in (full.train, full.test))
        tail = [] if cfg.algo == "reptile" else [train if cfg.shared_tail else test]
        epsilon = linear_schedule(cfg.meta_step, cfg.meta_step_final, i, cfg.meta_iters)
        theta, _ = meta_update(rule, model, theta, [train] * cfg.inner_iters + tail,
                               optimizer, epsilon, outer, reduce=reduce)
        if callback is not None:
            callback(i + 1, theta)
    return theta


def adaptation_losses(model, theta, tasks, alpha, steps=(0, 1, 2, 4, 8, 16, 32)):
    """Mean loss (Eq. 8) over the tasks after s test-time SGD steps on their p points.

    theta: (P,); alpha: the SGD step size. Returns ({s: mean loss} for s in steps, phi)
    with phi (n, P) the weights after max(steps) steps (``meta.inner_steps``).
    """
    phi = tile(theta, len(tasks.amplitude))
    losses = {0: float(model.loss(phi, *tasks.test).mean())} if 0 in steps else {}
    for s, step in enumerate(inner_steps(model, phi, [tasks.train] * max(steps), SGD(alpha)),
                             start=1):
        phi = step.phi
        if s in steps:
            losses[s] = float(model.loss(phi, *tasks.test).mean())
    return losses, phi


def sharpness(model, theta, tasks, iters=50, seed=0):
    """Each task's largest-magnitude eigenvalue h of H = L_train''(theta) on its p points, by
    `iters` steps of power iteration on the exact H v (``Sequential.linearize``).

    Why it matters for Figure 1: gradient descent with step alpha multiplies the error along
    an eigenvector of H by (1 - alpha h) per step, so the test-time steps are stable only
    while |h| < 2 / alpha (100 for alpha = 0.02). theta: (P,). Returns (n,) on the host.
    """
    n = len(tasks.amplitude)
    _, _, hvp = model.linearize(tile(theta, n), *tasks.train)
    rng = backend.make_rng(seed)
    v = backend.to_device(rng.standard_normal((n, theta.shape[-1])), backend.dtype())
    for _ in range(iters):
        v = v / ((v * v).sum(axis=-1, keepdims=True)) ** 0.5
        hv = hvp(v)
        h, v = (v * hv).sum(axis=-1), hv                      # Rayleigh quotient, |v| = 1
    return backend.to_host(h)


def eval_steps(n):
    """0, 1, 2, 4, ... up to n, and n itself."""
    return tuple(sorted({0, n} | {2 ** i for i in range(n.bit_length()) if 2 ** i <= n}))


def initial(cfg):
    """(model, random initialisation theta_0 on the device, held-out tasks), seeded as the
    command seeds them: theta_0 from seed, the held-out tasks from (seed, 1)."""
    model = mlp((1, 64, 64, 1), cfg.activation)
    theta0 = backend.to_device(model.init(backend.make_rng(cfg.seed)), backend.dtype())
    return model, theta0, sample(backend.make_rng((cfg.seed, 1)), cfg.eval_tasks)


def run(cfg, out, stream=None, comm=LOCAL):
    """``minireptile sine``: meta-train, compare with the random init, write the results.

    Writes OUT/sine-ALGO.json (the table, the command, the seconds), OUT/theta-ALGO.npy (the
    trained initialisation) and, with matplotlib, OUT/sine-ALGO.png and OUT/sine-random.png;
    returns the JSON's content (on the processes other than rank 0, None).
    """
    cfg = cfg.resolved()
    files.make_folder(out, "--out")
    model, theta0, held_out = initial(cfg)
    valid = sample(backend.make_rng((cfg.seed, 2)), 25)
    progress = Validated(cfg.meta_iters, lambda th: validate(model, th, valid, cfg),
                         stream if comm.rank == 0 else open(os.devnull, "w"))
    start = time.perf_counter()
    theta = meta_train(model, theta0, cfg, progress, comm)
    backend.synchronize()
    seconds = time.perf_counter() - start
    progress.close()
    if comm.rank != 0:
        return None
    steps = eval_steps(cfg.eval_iters)
    results = {name: adaptation_losses(model, th, held_out, cfg.inner_lr, steps)
               for name, th in ((cfg.algo, theta), ("random", theta0))}
    print(table(results, steps, cfg.eval_tasks), file=stream)
    sharp = {name: float(np.median(sharpness(model, th, held_out)))
             for name, th in ((cfg.algo, theta), ("random", theta0))}
    print("sharpness, the median largest |eigenvalue| of H on the p points: "
          + ", ".join(f"{name} {h:.1f}" for name, h in sharp.items())
          + f"; the test-time steps are stable below 2 / alpha = {2 / cfg.inner_lr:g}",
          file=stream)
    print(f"meta-training: {cfg.meta_iters} iterations in {seconds:.1f} s", file=stream)
    document = {"command": cfg.command_line(out), "config": dataclasses.asdict(cfg),
                "train_seconds": round(seconds, 2), "sharpness": sharp,
                "losses": {name: {str(s): v for s, v in losses.items()}
                           for name, (losses, _) in results.items()}}
    files.write_json(os.path.join(out, f"sine-{cfg.algo}.json"), document)
    files.atomic_write(os.path.join(out, f"theta-{cfg.algo}.npy"),
                       lambda f: np.save(f, backend.to_host(theta)))
    print(f"wrote {out}/sine-{cfg.algo}.json and theta-{cfg.algo}.npy", file=stream)
    save_figures(model, cfg, out, held_out, {cfg.algo: (theta, results[cfg.algo][1]),
                                             "random": (theta0, results["random"][1])},
                 stream)
    return document


def validate(model, theta, tasks, cfg):
    """Mean loss after the test-time steps on a few fixed tasks; a UserError once it is NaN."""
    loss = adaptation_losses(model, theta, tasks, cfg.inner_lr, (cfg.eval_iters,))[0]
    loss = loss[cfg.eval_iters]
    if not np.isfinite(loss):
        raise UserError(f"meta-training diverged (validation loss {loss}); lower --meta-step "
                        f"or --inner-lr")
    return loss


class Validated:
    """Progress with a validation loss, ``loss(theta)``, evaluated every 5% of the run."""

    def __init__(self, total, loss, stream=None):
        self.progress = Progress(total, stream=stream, every=5.0)
        self.total, self.loss, self.every = total, loss, max(1, total // 20)

    def __call__(self, i, theta):
        due = i % self.every == 0 or i in (1, self.total)
        if due:
            self.last = self.loss(theta)
        self.progress.update(i, f"validation loss after adaptation {self.last:.3f}", force=due)

    def close(self):
        self.progress.close()


def table(results, steps, n):
    """The adaptation table: mean loss over n held-out tasks after s SGD steps."""
    lines = [f"mean loss (Eq. 8) over {n} held-out tasks after s test-time SGD steps",
             f"{'init':>8} | " + " ".join(f"{f's={s}':>7}" for s in steps)]
    for name, (losses, _) in results.items():
        lines.append(f"{name:>8} | " + " ".join(f"{losses[s]:7.3f}" for s in steps))
    return "\n".join(lines)


def save_figures(model, cfg, out, tasks, inits, stream=None):
    """Figure 1's panel for each init: the true curve of the first held-out task, its p
    points, and the prediction before and after the test-time steps."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no figures (pip install 'minireptile[plot]')",
              file=stream)
        return
    x = np.linspace(*X_RANGE, 200)[None, :, None]                            # (1, 200, 1)
    xd = backend.to_device(x, backend.dtype())
    px, py = (backend.to_host(a[0, :, 0]) for a in tasks.train)
    for name, (theta, phi) in inits.items():
        fig, ax = plt.subplots(figsize=(5, 4))
        ax.plot(x[0, :, 0], sine(tasks.amplitude[:1], tasks.phase[:1], x)[0, :, 0], "k",
                label="True")
        for w, label in ((theta[None], "Before"), (phi[:1], f"After {cfg.eval_iters}")):
            ax.plot(x[0, :, 0], backend.to_host(model.predict(w, xd))[0, :, 0], label=label)
        ax.plot(px, py, "o", color="C3", label="Sampled")
        ax.set_title("random init" if name == "random" else f"after {name} meta-training")
        ax.legend(loc="lower right")
        path = os.path.join(out, f"sine-{name}.png")
        files.atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))
        plt.close(fig)
        print(f"wrote {path}", file=stream)
