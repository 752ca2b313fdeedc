"""Few-shot meta-training (section 6.1): Reptile, FOMAML or exact MAML on image tasks.

One meta-iteration, as the paper's code does it (supervised-reptile, reptile.py):
  1. sample n = meta_batch tasks, N-way with train_shots images per class;
  2. on every task, k = inner_iters steps of the inner optimizer (Adam with beta1 = 0, or
     SGD with --sgd) on mini-batches of inner_batch samples that cycle through the task;
  3. outer step with epsilon annealed linearly from meta_step to meta_step_final:
       Reptile (Eq. 5):  theta <- theta + epsilon * mean_i (phi_i - theta)
       FOMAML:           theta <- theta + epsilon * mean_i (phi_i,k - phi_i,k-1)
                         (the last inner update, as the paper's code takes it; with
                         --foml-tail S the last mini-batch is S disjoint shots per class)
       exact MAML:       theta <- theta - epsilon * alpha * mean_i g_MAML,i   (Eqs. 17-21,
                         SGD inner loop; -alpha g is FOMAML's update in the same units)

The inner Adam's state is never reset during training. The paper feeds the n tasks
through it one after another (``sequential=True`` does exactly that); the default runs the
meta-batch as one batched pass, each task from a copy of the shared state, merged after
(``optim.Adam.merge_tasks`` states the rule).
"""
import dataclasses
import math
import os
import time

import numpy as np

from .backend import dtype, get_xp, to_device, to_host
from .data import inner_batches, sample_tasks
from .errors import UserError
from .meta import linear_schedule, maml_gradient
from .optim import SGD, Adam


@dataclasses.dataclass
class TrainConfig:
    """The paper's flags (supervised-reptile's args.py), names and meanings kept.

    The defaults here are the quick embedded-Omniglot run (5-way 1-shot); ``PAPER_DEFAULTS``
    holds args.py's, which apply whenever a paper flag is given (see cli/train.py).
    """
    dataset: str = "omniglot"   # omniglot | miniimagenet (which CNN)
    classes: int = 5            # N-way
    shots: int = 1              # K-shot at evaluation
    train_shots: int = 10       # images per class in a training task (0 = shots)
    inner_batch: int = 10
    inner_iters: int = 5
    replacement: bool = False
    learning_rate: float = 3e-3
    meta_step: float = 1.0
    meta_step_final: float = 0.0
    meta_batch: int = 5
    meta_iters: int = 3000
    eval_batch: int = 5
    eval_iters: int = 50
    eval_samples: int = 200
    eval_interval: int = 500
    weight_decay: float = 1.0   # multiply theta by this before every inner step (1 = off)
    transductive: bool = False
    algo: str = "reptile"       # reptile | fomaml | maml
    foml_tail: int = 0          # FOMAML's separate tail: shots per class (0 = shared tail)
    sgd: bool = False
    augment: bool = True        # rotations of the training classes (Omniglot)
    sequential: bool = False
    seed: int = 0
    checkpoint_interval: int = 100
    eval_tasks_during: int = 20  # tasks per split in the periodic quick estimate


    def validate(self):
        positive = ("classes", "shots", "inner_batch", "inner_iters", "meta_batch",
                    "eval_batch", "eval_iters", "eval_samples", "eval_interval",
                    "checkpoint_interval")
        for name in positive:
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be at least 1, "
                                f"got {getattr(self, name)}")
        if self.meta_iters < 0 or self.train_shots < 0 or self.foml_tail < 0:
            raise UserError("--meta-iters, --train-shots and --foml-tail cannot be negative")
        if self.algo not in ("reptile", "fomaml", "maml"):
            raise UserError(f"unknown --algo {self.algo!r}; expected reptile, fomaml or maml")
        if self.algo == "maml" and not self.sgd:
            raise UserError("exact MAML differentiates through SGD inner steps (Eqs. 17-21): "
                            "add --sgd")
        if self.foml_tail and self.algo == "reptile":
            raise UserError("--foml-tail applies to --algo fomaml (or maml), not reptile")
        if not math.isfinite(self.learning_rate) or self.learning_rate <= 0:
            raise UserError(f"--learning-rate must be positive, got {self.learning_rate}")
        return self


# supervised-reptile's args.py defaults: used for every flag not given once any is given
PAPER_DEFAULTS = dict(classes=5, shots=5, train_shots=0, inner_batch=5, inner_iters=20,
                      replacement=False, learning_rate=1e-3, meta_step=0.1,
                      meta_step_final=0.1, meta_batch=1, meta_iters=400000, eval_batch=5,
                      eval_iters=50, eval_samples=10000, eval_interval=10, weight_decay=1.0,
                      eval_tasks_during=1)


def inner_optimizer(cfg):
    """The inner loop's optimizer: Adam with beta1 = 0 (paper), or SGD with --sgd."""
    return SGD(cfg.learning_rate) if cfg.sgd else Adam(cfg.learning_rate, beta1=0.0)


def adapt(model, theta, batches, optimizer, weight_decay=1.0):
    """phi = U^k(theta): one inner step per mini-batch, for one task or T tasks at once.

    theta (P,) or (T, P); batches: k pairs (x, y) with the same leading task axes. Before
    each step theta is multiplied by weight_decay (the paper's --weight-decay; 1 = off).
    Returns (phi_k, phi_{k-1}, loss per example on the first mini-batch).
    """
    phi = prev = theta
    first_loss = None
    for x, y in batches:
        if weight_decay != 1:
            phi = phi * weight_decay
        loss, g = model.loss_and_grad(phi, x, y)
        first_loss = loss if first_loss is None else first_loss
        prev, phi = phi, optimizer.step(phi, g)
    return phi, prev, first_loss.mean() / batches[0][1].shape[-1]


def gather(x, y, idx):
    """Mini-batches by index: x (T, S, ...), idx (T, k, b) -> (T, k, b, ...), labels alike."""
    rows = np.arange(x.shape[0])[:, None, None]
    return x[rows, idx], y[rows, idx]


def sample_meta_batch(ds, rng, cfg):
    """The meta-batch's inner mini-batches on the device: x (n, k, b, H, W, C), y (n, k, b).

    With a separate tail (--foml-tail S), the k-th batch is S further shots of every class,
    disjoint from the first k - 1 batches (the paper's separate-tail FOMAML).
    """
    shots = cfg.train_shots or cfg.shots
    n, k = cfg.meta_batch, cfg.inner_iters
    x, y, xt, yt = sample_tasks(ds, "train", rng, n, cfg.classes, shots,
                                num_query=cfg.foml_tail,
                                augment=None if cfg.augment else False)
    idx = inner_batches(x.shape[1], rng, cfg.inner_batch, k - (cfg.foml_tail > 0),
                        cfg.replacement, num_tasks=n)
    xs, ys = gather(x, y, idx)
    if cfg.foml_tail:
        xs = np.concatenate([xs, xt[:, None]], axis=1) if k > 1 else xt[:, None]
        ys = np.concatenate([ys, yt[:, None]], axis=1) if k > 1 else yt[:, None]
    return to_device(xs, dtype()), to_device(ys)


def meta_iteration(model, theta, optimizer, x, y, epsilon, cfg):
    """One outer step on the meta-batch (x, y); returns (theta, mean inner loss)."""
    if cfg.algo == "maml":
        batches = [(x[:, i], y[:, i]) for i in range(x.shape[1])]
        xp = get_xp(theta)
        thetas = xp.broadcast_to(theta, (x.shape[0],) + theta.shape)
        g = maml_gradient(model, thetas, batches[:-1], batches[-1], cfg.learning_rate)
        loss = model.loss(thetas, *batches[0]).mean() / y.shape[-1]
        return theta - epsilon * cfg.learning_rate * g.mean(axis=0), loss
    xp, n, k = get_xp(theta), x.shape[0], x.shape[1]
    if cfg.sequential:                       # the paper's code: tasks one after another
        runs = [adapt(model, theta, [(x[i, j], y[i, j]) for j in range(k)], optimizer,
                      cfg.weight_decay) for i in range(n)]
        phi, prev = (xp.stack([r[j] for r in runs]) for j in (0, 1))
        loss = sum(r[2] for r in runs) / n
    else:                                    # one batched pass over the task axis
        start = (optimizer.t, optimizer.m, optimizer.v) if isinstance(optimizer, Adam) else None
        phi, prev, loss = adapt(model, xp.broadcast_to(theta, (n,) + theta.shape),
                                [(x[:, j], y[:, j]) for j in range(k)], optimizer,
                                cfg.weight_decay)
        if start is not None:
            optimizer.merge_tasks(start)
    if cfg.algo == "fomaml":
        return theta + epsilon * (phi - prev).mean(axis=0), loss
    return theta + epsilon * (phi.mean(axis=0) - theta), loss


class Progress:
    """One updating line on a terminal; plain lines every `every` seconds otherwise."""

    def __init__(self, total, start, stream, every=10.0):
        self.total, self.start_iter, self.stream, self.every = total, start, stream, every
        self.t0 = self.last = time.time()
        self.tty = stream.isatty()
        self.shown = None

    def update(self, iteration, loss, accuracy, force=False):
        now = time.time()
        if iteration == self.shown or not (self.tty or force or now - self.last >= self.every):
            return
        self.last, self.shown = now, iteration
        done = iteration - self.start_iter
        rate = done / max(now - self.t0, 1e-9)
        left = (self.total - iteration) / rate if rate > 0 else float("nan")
        acc = "" if accuracy is None else f"  test acc {100 * accuracy:5.1f}%"
        line = (f"iter {iteration:>6}/{self.total}  {rate:6.2f} it/s  left {left:6.0f}s  "
                f"loss {loss:.4f}{acc}")
        self.stream.write(("\r" + line + "\033[K") if self.tty else line + "\n")
        self.stream.flush()

    def close(self):
        if self.tty:
            self.stream.write("\n")


def train(model, ds, cfg, theta=None, checkpoint_dir=None, stream=None):
    """Meta-train model on ds's training classes; returns (theta, inner optimizer).

    With checkpoint_dir, an existing checkpoint there is resumed (its configuration must
    match) and a new one is written atomically every cfg.checkpoint_interval iterations,
    at the end, and on Ctrl-C; every quick evaluation is appended to its log.jsonl.
    """
    import sys

    from . import checkpoint
    from .evaluate import evaluate

    stream = stream or sys.stderr
    cfg.validate()
    config = dict(dataclasses.asdict(cfg), model=f"{model.name}:{model.num_params}")
    optimizer, start = inner_optimizer(cfg), 0
    if checkpoint.exists(checkpoint_dir):
        theta, state, rng, start, saved = checkpoint.load(checkpoint_dir)
        if _identity(saved) != _identity(config) or theta.shape != (model.num_params,):
            raise UserError(f"{checkpoint_dir}: checkpoint of another run ({_describe(saved)}); "
                            f"use another --checkpoint folder")
        optimizer.load_state_dict(state, get_xp(to_device(np.zeros(1))))
        checkpoint.truncate_log(checkpoint_dir, start)
    else:
        if checkpoint_dir:
            if os.path.exists(checkpoint_dir) and not os.path.isdir(checkpoint_dir):
                raise UserError(f"--checkpoint {checkpoint_dir}: exists and is not a folder")
            os.makedirs(checkpoint_dir, exist_ok=True)
        rng = np.random.default_rng(cfg.seed)
        theta = model.init(rng) if theta is None else to_host(theta)
    theta = to_device(theta, dtype())

    def save(iteration):
        if checkpoint_dir:
            checkpoint.save(checkpoint_dir, to_host(theta), optimizer.state_dict(), rng,
                            iteration, config)

    progress, accuracy, it = Progress(cfg.meta_iters, start, stream), None, start
    at_start = rng.bit_generator.state, optimizer.copy(), theta
    try:
        for it in range(start, cfg.meta_iters):
            at_start = rng.bit_generator.state, optimizer.copy(), theta   # for Ctrl-C
            epsilon = linear_schedule(cfg.meta_step, cfg.meta_step_final, it, cfg.meta_iters)
            x, y = sample_meta_batch(ds, rng, cfg)
            with np.errstate(over="ignore", invalid="ignore"):    # checked just below
                new_theta, loss = meta_iteration(model, theta, optimizer, x, y, epsilon, cfg)
            loss = float(loss)
            if not math.isfinite(loss) or not bool(get_xp(new_theta).isfinite(new_theta).all()):
                kept = (f"last good checkpoint kept in {checkpoint_dir}"
                        if checkpoint.exists(checkpoint_dir) else "no checkpoint written")
                raise UserError(f"training diverged at iteration {it + 1} (loss {loss}, "
                                f"parameters not finite); {kept}")
            theta = new_theta
            if (it + 1) % cfg.eval_interval == 0 or it + 1 == cfg.meta_iters:
                record = {"iteration": it + 1, "loss": loss}
                eval_rng = np.random.default_rng([cfg.seed, it + 1])
                for split in ("train", "test"):
                    record[split] = evaluate(
                        model, theta, optimizer, ds, split, eval_rng, cfg.classes, cfg.shots,
                        cfg.eval_batch, cfg.eval_iters, cfg.eval_tasks_during,
                        cfg.transductive, cfg.replacement, cfg.weight_decay)[0]
                accuracy = record["test"]
                if checkpoint_dir:
                    checkpoint.append_log(checkpoint_dir, record)
            if checkpoint_dir and ((it + 1) % cfg.checkpoint_interval == 0):
                save(it + 1)
            progress.update(it + 1, loss, accuracy)
        it = cfg.meta_iters
    except KeyboardInterrupt:
        rng.bit_generator.state, optimizer, theta = at_start     # back to a whole iteration
        save(it)
        progress.close()
        raise
    save(cfg.meta_iters)
    progress.update(cfg.meta_iters, loss if cfg.meta_iters > start else float("nan"),
                    accuracy, force=True)
    progress.close()
    return theta, optimizer


def _identity(config):
    """What a checkpoint must agree on to be resumed (not eval or bookkeeping settings)."""
    keep = ("classes", "train_shots", "inner_batch", "inner_iters", "replacement",
            "learning_rate", "meta_step", "meta_step_final", "meta_batch", "meta_iters",
            "weight_decay", "algo", "foml_tail", "sgd", "sequential", "seed", "model",
            "dataset", "augment")
    return {k: config.get(k) for k in keep}


def _describe(config):
    return ", ".join(f"{k}={v}" for k, v in _identity(config).items() if v is not None)
