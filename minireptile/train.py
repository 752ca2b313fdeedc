"""The meta-training loops: sampling, the epsilon schedule, checkpoints, logs, resume.

The arithmetic of a meta-iteration is ``meta.meta_update``; this module only feeds it.

Few-shot classification (section 6.1), as the paper's code runs it (supervised-reptile):
  1. sample n = meta_batch tasks, N-way with train_shots images per class;
  2. on every task, k = inner_iters steps of the inner optimizer (Adam with beta1 = 0, or
     SGD with --sgd) on mini-batches of inner_batch samples that cycle through the task;
  3. theta <- theta + epsilon * mean_i Delta_i, epsilon annealed linearly from meta_step to
     meta_step_final (Delta_i per algorithm: ``meta.task_update``).
The inner Adam's state is never reset during training. The paper feeds the n tasks through
it one after another (``sequential=True``); the default runs the meta-batch as one batched
pass and merges the per-task states (``optim.Adam.merge_tasks``).

Sine regression (section 4): ``train_sine``, the same core on the sine tasks.
"""
import dataclasses
import math
import os
import sys

import numpy as np

from . import checkpoint
from .backend import available_memory, dtype, get_xp, to_device, to_host
from .data.batches import sample_meta_batch
from .errors import UserError
from .evaluate import BYTES_PER_VALUE, evaluate, tasks_per_pass
from .meta import linear_schedule, meta_update
from .optim import SGD, Adam
from .progress import Progress
from .tasks import sine


@dataclasses.dataclass
class TrainConfig:
    """The paper's flags (supervised-reptile's args.py), names and meanings kept.

    The defaults here are the quick embedded-Omniglot run (5-way 1-shot); ``PAPER_DEFAULTS``
    holds args.py's, which ``--defaults paper`` selects (see cli/train.py).
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
    algo: str = "reptile"       # reptile | fomaml | maml | combination
    foml_tail: int = 0          # separate tail: shots per class taken out of train_shots
    combination: str = ""       # section 6.2: last | sum | mean | w1,...,wk (algo combination)
    sgd: bool = False
    augment: bool = True        # rotations of the training classes (Omniglot)
    sequential: bool = False
    seed: int = 0
    checkpoint_interval: int = 100
    eval_tasks_during: int = 20  # tasks per split in the periodic quick estimate

    def validate(self):
        positive = ("classes", "shots", "inner_batch", "inner_iters", "meta_batch",
                    "eval_batch", "eval_iters", "eval_samples", "eval_interval",
                    "checkpoint_interval", "eval_tasks_during")
        for name in positive:
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be at least 1, "
                                f"got {getattr(self, name)}")
        if self.meta_iters < 0 or self.train_shots < 0 or self.foml_tail < 0:
            raise UserError("--meta-iters, --train-shots and --foml-tail cannot be negative")
        for name in ("learning_rate", "meta_step", "meta_step_final", "weight_decay"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0 or (value == 0 and name in
                                                         ("learning_rate", "weight_decay")):
                kind = "non-negative" if name.startswith("meta") else "positive"
                raise UserError(f"--{name.replace('_', '-')} must be a {kind} number, "
                                f"got {value}")
        if self.algo not in ("reptile", "fomaml", "maml", "combination"):
            raise UserError(f"unknown --algo {self.algo!r}; expected reptile, fomaml or maml")
        if self.algo == "maml" and not self.sgd:
            raise UserError("exact MAML differentiates through SGD inner steps (Eqs. 17-21): "
                            "add --sgd")
        if self.foml_tail and self.algo not in ("fomaml", "maml"):
            raise UserError("--foml-tail applies to --foml / --algo fomaml (or maml)")
        shots = self.train_shots or self.shots
        if self.foml_tail and not self.foml_tail < shots:
            raise UserError(f"--foml-tail {self.foml_tail} must be below --train-shots "
                            f"({shots}): the tail is taken out of the task's shots")
        if self.foml_tail and self.inner_iters < 2 and self.algo == "fomaml":
            raise UserError("--foml-tail needs --inner-iters 2 or more (the tail is the last)")
        if (self.algo == "combination") != bool(self.combination):
            raise UserError("--combination sets the algorithm: give it without --algo/--foml")
        if self.combination:
            combination_weights(self.combination, self.inner_iters)
        return self


# supervised-reptile's args.py defaults, selected by --defaults paper
PAPER_DEFAULTS = dict(classes=5, shots=5, train_shots=0, inner_batch=5, inner_iters=20,
                      replacement=False, learning_rate=1e-3, meta_step=0.1,
                      meta_step_final=0.1, meta_batch=1, meta_iters=400000, eval_batch=5,
                      eval_iters=50, eval_samples=10000, eval_interval=10, weight_decay=1.0,
                      eval_tasks_during=1)


def combination_weights(spec, k):
    """The weights w_1..w_k of a section 6.2 combination sum_j w_j g_j.

    last: (0, ..., 0, 1), FOMAML's g_k; sum: (1, ..., 1), Reptile's; mean: (1/k, ..., 1/k);
    or k comma-separated numbers.
    """
    named = {"last": [0.0] * (k - 1) + [1.0], "sum": [1.0] * k, "mean": [1.0 / k] * k}
    if spec in named:
        return named[spec]
    try:
        weights = [float(w) for w in spec.split(",")]
    except ValueError:
        raise UserError(f"--combination {spec!r}: expected last, sum, mean or k numbers "
                        f"w1,...,wk") from None
    if len(weights) != k:
        raise UserError(f"--combination {spec!r} has {len(weights)} weights for "
                        f"--inner-iters {k}")
    return weights


def inner_optimizer(cfg):
    """The inner loop's optimizer: Adam with beta1 = 0 (paper), or SGD with --sgd."""
    return SGD(cfg.learning_rate) if cfg.sgd else Adam(cfg.learning_rate, beta1=0.0)


def check_memory(model, cfg):
    """One-line UserError, naming the memory needed, for a run whose passes cannot fit."""
    tasks_per_pass(model, max(cfg.classes * cfg.shots + 1, cfg.eval_batch))
    images = cfg.meta_batch * max(cfg.inner_batch, cfg.classes * cfg.foml_tail)
    need, free = images * model.activation_values() * BYTES_PER_VALUE, available_memory()
    if need > free:
        raise UserError(f"a meta-iteration's batched pass of {images} images needs "
                        f"{need / 2 ** 30:.1f} GiB of activations, {free / 2 ** 30:.1f} GiB "
                        f"is available; use a smaller --meta-batch or --inner-batch")


def meta_batch(ds, rng, cfg):
    """The k mini-batches of one meta-iteration's n tasks, on the device."""
    return sample_meta_batch(ds, rng, cfg.meta_batch, cfg.classes, cfg.train_shots or cfg.shots,
                             cfg.inner_batch, cfg.inner_iters, cfg.foml_tail, cfg.replacement,
                             None if cfg.augment else False)


def meta_iteration(model, theta, optimizer, batches, epsilon, cfg):
    """One outer step of cfg's algorithm; returns (theta, mean loss per example)."""
    weights = combination_weights(cfg.combination, len(batches)) if cfg.combination else None
    theta, loss = meta_update(cfg.algo, model, theta, batches, optimizer, epsilon,
                              weight_decay=cfg.weight_decay, weights=weights,
                              sequential=cfg.sequential)
    return theta, loss / batches[0][1].shape[-1]


def train(model, ds, cfg, theta=None, checkpoint_dir=None, stream=None):
    """Meta-train model on ds's training classes; returns (theta, inner optimizer).

    With checkpoint_dir, an existing checkpoint there is resumed (its configuration must
    match, except a larger meta_iters, which extends a run) and a new one is written
    atomically every cfg.checkpoint_interval iterations, at the end, and on Ctrl-C; every
    quick evaluation is appended to its log.jsonl.
    """
    stream = stream or sys.stderr
    cfg.validate()
    check_memory(model, cfg)
    config = dict(dataclasses.asdict(cfg), model=f"{model.name}:{model.num_params}")
    optimizer, start = inner_optimizer(cfg), 0
    if checkpoint.exists(checkpoint_dir):
        theta, state, rng, start, saved = checkpoint.load(checkpoint_dir)
        refuse_mismatch(checkpoint_dir, saved, config, start)
        optimizer.load_state_dict(state, get_xp(to_device(np.zeros(1))))
        checkpoint.truncate_log(checkpoint_dir, start)
        print(f"resuming from iteration {start} ({checkpoint_dir})", file=stream, flush=True)
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

    progress, accuracy, it, loss = Progress(cfg.meta_iters, start, stream), None, start, None
    at_start = rng.bit_generator.state, optimizer.copy(), theta
    try:
        for it in range(start, cfg.meta_iters):
            at_start = rng.bit_generator.state, optimizer.copy(), theta   # for Ctrl-C
            epsilon = linear_schedule(cfg.meta_step, cfg.meta_step_final, it, cfg.meta_iters)
            batches = meta_batch(ds, rng, cfg)
            with np.errstate(over="ignore", invalid="ignore"):    # checked just below
                new_theta, loss = meta_iteration(model, theta, optimizer, batches, epsilon, cfg)
            loss = float(loss)
            if not math.isfinite(loss) or not bool(get_xp(new_theta).isfinite(new_theta).all()):
                kept = (f"last good checkpoint kept in {checkpoint_dir}"
                        if checkpoint.exists(checkpoint_dir) else "no checkpoint written")
                raise UserError(f"training diverged at iteration {it + 1} (loss {loss}, "
                                f"parameters not finite); {kept}")
            theta = new_theta
            if (it + 1) % cfg.eval_interval == 0 or it + 1 == cfg.meta_iters:
                accuracy = quick_evaluation(model, theta, optimizer, ds, cfg, it + 1, loss,
                                            checkpoint_dir)
            if checkpoint_dir and ((it + 1) % cfg.checkpoint_interval == 0):
                save(it + 1)
            progress.update(it + 1, _status(loss, accuracy))
        it = cfg.meta_iters
    except KeyboardInterrupt:
        rng.bit_generator.state, optimizer, theta = at_start     # back to a whole iteration
        save(it)
        progress.close()
        raise
    save(cfg.meta_iters)
    progress.update(cfg.meta_iters, _status(loss, accuracy), force=True)
    progress.close()
    return theta, optimizer


def quick_evaluation(model, theta, optimizer, ds, cfg, iteration, loss, checkpoint_dir):
    """Accuracy on cfg.eval_tasks_during tasks per split, logged; returns the test one."""
    record = {"iteration": iteration, "loss": loss}
    rng = np.random.default_rng([cfg.seed, iteration])
    for split in ("train", "test"):
        record[split] = evaluate(model, theta, optimizer, ds, split, rng, cfg.classes,
                                 cfg.shots, cfg.eval_batch, cfg.eval_iters,
                                 cfg.eval_tasks_during, cfg.transductive, cfg.replacement,
                                 cfg.weight_decay)[0]
    if checkpoint_dir:
        checkpoint.append_log(checkpoint_dir, record)
    return record["test"]


def _status(loss, accuracy):
    text = "" if loss is None else f"loss {loss:.4f}"
    return text + ("" if accuracy is None else f"  test acc {100 * accuracy:5.1f}%")


IDENTITY = ("classes", "train_shots", "inner_batch", "inner_iters", "replacement",
            "learning_rate", "meta_step", "meta_step_final", "meta_batch", "meta_iters",
            "weight_decay", "algo", "foml_tail", "combination", "sgd", "sequential", "seed",
            "model", "dataset", "augment")


def refuse_mismatch(folder, saved, config, iteration):
    """UserError naming every field in which a checkpoint's run differs from this one.

    Evaluation and bookkeeping settings may differ; meta_iters may grow (extending a
    finished or running run: the remaining iterations anneal epsilon over the new total).
    """
    defaults = {"combination": ""}
    differ = [f"{k} {saved.get(k, defaults.get(k))!r} (now {config.get(k)!r})"
              for k in IDENTITY if k != "meta_iters"
              and saved.get(k, defaults.get(k)) != config.get(k)]
    if config["meta_iters"] < iteration:
        differ.append(f"meta_iters {saved['meta_iters']} with {iteration} done "
                      f"(now {config['meta_iters']})")
    if differ:
        raise UserError(f"{folder}: checkpoint of another run: {'; '.join(differ)}; use "
                        f"another --checkpoint folder")


def train_sine(model, theta, rng, algo, meta_iters, inner_iters, inner_lr, meta_step,
               meta_step_final, meta_batch, outer=None, shared_tail=False, callback=None):
    """Meta-train theta (P,) on sine tasks (section 4): meta_iters outer steps of n tasks.

    Each task's k = inner_iters inner SGD steps use its p points (full batch); FOMAML and
    MAML then take one more mini-batch, the 50-point grid of the loss (a separate tail;
    shared_tail: the p points again), as FOMAML's last step and MAML's test loss.
    epsilon is annealed linearly; outer: None (theta + epsilon Delta, Eq. 5 for Reptile) or
    an optimizer such as Adam. callback(iteration, theta) runs after every outer step.
    """
    optimizer = SGD(inner_lr)
    for i in range(meta_iters):
        tasks = sine.sample(rng, meta_batch)
        tail = [] if algo == "reptile" else [tasks.train if shared_tail else tasks.test]
        epsilon = linear_schedule(meta_step, meta_step_final, i, meta_iters)
        theta, _ = meta_update(algo, model, theta, [tasks.train] * inner_iters + tail,
                               optimizer, epsilon, outer)
        if callback is not None:
            callback(i + 1, theta)
    return theta
