"""The meta-training loops: sampling, the epsilon schedule, checkpoints, logs, resume.

The arithmetic of a meta-iteration is ``meta.meta_update``; this module only feeds it.

Few-shot classification (section 6.1), as the paper's code runs it (supervised-reptile):
  1. sample n = meta_batch tasks, N-way with train_shots images per class;
  2. on every task, k = inner_iters steps of the inner optimizer (Adam with beta1 = 0, or
     SGD with --sgd) on mini-batches of inner_batch samples that cycle through the task;
  3. theta <- theta + epsilon * mean_i Delta_i, epsilon annealed linearly from meta_step to
     meta_step_final (Delta_i per algorithm: ``meta.task_update``); with ``outer="adam"``,
     an Adam step of size epsilon on -mean_i Delta_i instead (section 3; Finn et al.'s
     MAML takes Adam with step 0.001 in its outer loop).
The inner Adam's state is never reset during training. The paper feeds the n tasks through
it one after another (``sequential=True``); the default runs the meta-batch as one batched
pass and merges the per-task states (``optim.Adam.merge_tasks``).

Task i of iteration t draws from its own generator, seeded (seed, TRAIN, t, i)
(``data.batches.task_rng``); evaluations seed theirs from (seed, tag, i). So the tasks never
depend on how a meta-batch is split over processes: with a ``distributed`` communicator,
each process runs its share of the tasks, one collective per meta-iteration sums what the
outer update needs, and rank 0 alone writes checkpoints and logs.

Sine regression (section 4): ``train_sine``, the same core on the sine tasks.
"""
import dataclasses
import math
import os
import sys

import numpy as np

from . import checkpoint
from .backend import available_memory, dtype, get_xp, to_device, to_host
from .data.batches import sample_meta_batch, task_rng
from .data.sampler import check_tasks
from .distributed import LOCAL
from .errors import UserError
from .evaluate import BYTES_PER_VALUE, evaluate, tasks_per_pass
from .meta import linear_schedule, meta_update
from .optim import SGD, Adam
from .progress import Progress
from .tasks import sine

TRAIN, QUICK_EVAL, SINE = 1, 2, 3        # first entry of a task's key (task_rng): its purpose
OUTER = "outer_"        # prefix of the outer Adam's state in a checkpoint (the inner's has none)

# Bytes per activation value that an exact-MAML inner step keeps for its Hessian-vector
# product (forward caches and every layer's dL/dy): measured 22.6 MiB per step on the Omniglot
# CNN for 50 images x 51,925 values (peak RSS, ``bench/run.py --only inner_steps``).
KEPT_BYTES = 9


@dataclasses.dataclass
class TrainConfig:
    """The paper's flags (supervised-reptile's args.py), names and meanings kept.

    The defaults here are the quick embedded-Omniglot run (5-way 1-shot); ``PAPER_DEFAULTS``
    holds args.py's, which ``--defaults paper`` selects (see cli/train.py).
    """
    dataset: str = "omniglot"   # omniglot | miniimagenet (which CNN)
    network: str = "reptile"    # reptile | maml: the CNN of the paper's code or of Finn et al.'s
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
    outer: str = "sgd"          # the outer optimizer: sgd (Eq. 5) | adam
    maml_recompute: bool = False  # exact MAML: recompute each H_i v's passes (memory O(k P))
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
        if self.network not in ("reptile", "maml"):
            raise UserError(f"unknown --network {self.network!r}; expected reptile or maml")
        if self.outer not in ("sgd", "adam"):
            raise UserError(f"unknown --outer {self.outer!r}; expected sgd or adam")
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


def outer_optimizer(cfg):
    """The outer loop's: None (theta + epsilon Delta, Eq. 5), or Adam with beta1 = 0.9
    (Kingma & Ba's default, as Finn et al.'s MAML) whose step size follows epsilon."""
    return Adam(cfg.meta_step, beta1=0.9) if cfg.outer == "adam" else None


def check_memory(model, cfg, tasks=None):
    """One-line UserError, naming the memory needed, for a run whose passes cannot fit
    (tasks: those of a meta-batch in this process, default all)."""
    tasks_per_pass(model, max(cfg.classes * cfg.shots + 1, cfg.eval_batch))
    images = (tasks or cfg.meta_batch) * max(cfg.inner_batch, cfg.classes * cfg.foml_tail)
    need, free = images * model.activation_values() * BYTES_PER_VALUE, available_memory()
    if need > free:
        raise UserError(f"a meta-iteration's batched pass of {images} images needs "
                        f"{need / 2 ** 30:.1f} GiB of activations, {free / 2 ** 30:.1f} GiB "
                        f"is available; use a smaller --meta-batch or --inner-batch")
    if cfg.algo == "maml" and not cfg.maml_recompute:       # the inner steps' kept passes
        kept = (cfg.inner_iters - 1) * images * model.activation_values() * KEPT_BYTES
        if need + kept > free:
            raise UserError(f"exact MAML keeping the passes of {cfg.inner_iters - 1} inner "
                            f"steps needs {(need + kept) / 2 ** 30:.1f} GiB, "
                            f"{free / 2 ** 30:.1f} GiB is available; add --maml-recompute "
                            f"(memory O(k P), slower) or use a smaller --inner-iters")


def task_rngs(seed, iteration, tasks):
    """The generators of a meta-iteration's tasks (indices `tasks`): (seed, TRAIN, t, i)."""
    return [task_rng(seed, TRAIN, iteration, i) for i in tasks]


def meta_batch(ds, rngs, cfg):
    """The k mini-batches of one meta-iteration's tasks, on the device: one task per
    generator in rngs (``task_rngs``), or cfg.meta_batch tasks drawn in turn from one."""
    n = cfg.meta_batch if isinstance(rngs, np.random.Generator) else len(rngs)
    return sample_meta_batch(ds, rngs, n, cfg.classes, cfg.train_shots or cfg.shots,
                             cfg.inner_batch, cfg.inner_iters, cfg.foml_tail, cfg.replacement,
                             None if cfg.augment else False)


def meta_iteration(model, theta, optimizer, batches, epsilon, cfg, reduce=None, outer=None):
    """One outer step of cfg's algorithm; returns (theta, mean loss per example).
    reduce: None, or the communicator's sum over every process's tasks (``meta_update``);
    outer: ``outer_optimizer(cfg)``, whose state the step advances."""
    weights = combination_weights(cfg.combination, len(batches)) if cfg.combination else None
    theta, loss = meta_update(cfg.algo, model, theta, batches, optimizer, epsilon, outer,
                              weight_decay=cfg.weight_decay, weights=weights,
                              sequential=cfg.sequential, reduce=reduce,
                              reuse=not cfg.maml_recompute)
    return theta, loss / batches[0][1].shape[-1]


def check_split(meta_batch, comm, sequential=False):
    """One-line UserError for a meta-batch that cannot be split over comm's processes."""
    if comm.size > meta_batch:
        raise UserError(f"--meta-batch {meta_batch} over {comm.size} processes: every "
                        f"process needs a task; use at most {meta_batch} processes")
    if sequential and comm.size > 1:
        raise UserError("--sequential feeds the tasks through one Adam state one after "
                        "another: it cannot be split over processes (drop --sequential or "
                        "run one process)")


def train(model, ds, cfg, theta=None, checkpoint_dir=None, stream=None, comm=LOCAL):
    """Meta-train model on ds's training classes; returns (theta, inner optimizer).

    With checkpoint_dir, an existing checkpoint there is resumed (its configuration must
    match, except a larger meta_iters, which extends a run) and a new one is written
    atomically every cfg.checkpoint_interval iterations, at the end, and on Ctrl-C; every
    quick evaluation is appended to its log.jsonl. comm (``distributed.py``): the processes
    sharing each meta-batch; rank 0 reads and writes the checkpoint, which any number of
    processes can resume.
    """
    stream = (stream or sys.stderr) if comm.rank == 0 else open(os.devnull, "w")
    cfg.validate()
    check_split(cfg.meta_batch, comm, cfg.sequential)
    tasks = comm.share(cfg.meta_batch)
    check_tasks(ds, "train", cfg.classes, cfg.train_shots or cfg.shots,
                augment=None if cfg.augment else False)
    check_tasks(ds, "test", cfg.classes, cfg.shots, num_query=1)
    check_memory(model, cfg, len(tasks))
    config = dict(dataclasses.asdict(cfg), model=f"{model.name}:{model.num_params}")
    optimizer, outer = inner_optimizer(cfg), outer_optimizer(cfg)
    resumed = comm.from_root(lambda: _open_checkpoint(checkpoint_dir, config))
    if resumed:
        theta, state, start = resumed
        load_states(state, optimizer, outer)
        print(f"resuming from iteration {start} ({checkpoint_dir})", file=stream, flush=True)
    else:
        start = 0
        theta = model.init(np.random.default_rng(cfg.seed)) if theta is None else to_host(theta)
    theta, reduce = to_device(theta, dtype()), comm.reducer(cfg.meta_batch)

    def save(iteration):
        if checkpoint_dir and comm.rank == 0:           # the generator of the next task drawn
            checkpoint.save(checkpoint_dir, to_host(theta), states(optimizer, outer),
                            task_rng(cfg.seed, TRAIN, iteration, 0), iteration, config)

    progress, accuracy, it, loss = Progress(cfg.meta_iters, start, stream), None, start, None
    at_start = optimizer.copy(), outer and outer.copy(), theta
    try:
        for it in range(start, cfg.meta_iters):
            at_start = optimizer.copy(), outer and outer.copy(), theta      # for Ctrl-C
            epsilon = linear_schedule(cfg.meta_step, cfg.meta_step_final, it, cfg.meta_iters)
            batches = meta_batch(ds, task_rngs(cfg.seed, it, tasks), cfg)
            with np.errstate(over="ignore", invalid="ignore"):    # checked just below
                new_theta, loss = meta_iteration(model, theta, optimizer, batches, epsilon, cfg,
                                                 reduce, outer)
            loss = float(loss)
            if not math.isfinite(loss) or not bool(get_xp(new_theta).isfinite(new_theta).all()):
                kept = (f"last good checkpoint kept in {checkpoint_dir}"
                        if checkpoint.exists(checkpoint_dir) else "no checkpoint written")
                raise UserError(f"training diverged at iteration {it + 1} (loss {loss}, "
                                f"parameters not finite); {kept}")
            theta = new_theta
            if (it + 1) % cfg.eval_interval == 0 or it + 1 == cfg.meta_iters:
                accuracy = quick_evaluation(model, theta, optimizer, ds, cfg, it + 1, loss,
                                            checkpoint_dir, comm)
            if checkpoint_dir and ((it + 1) % cfg.checkpoint_interval == 0):
                save(it + 1)
            progress.update(it + 1, _status(loss, accuracy))
        it = cfg.meta_iters
    except KeyboardInterrupt:
        optimizer, outer, theta = at_start              # back to a whole iteration
        save(it)
        progress.close()
        raise
    save(cfg.meta_iters)
    progress.update(cfg.meta_iters, _status(loss, accuracy), force=True)
    progress.close()
    return theta, optimizer


def states(optimizer, outer):
    """The inner optimizer's state and the outer one's (keys prefixed OUTER), to save."""
    outer_state = outer.state_dict() if outer else {}
    return {**optimizer.state_dict(), **{OUTER + k: v for k, v in outer_state.items()}}


def load_states(state, optimizer, outer):
    """Restore what ``states`` saved into the inner optimizer and the outer one (if any)."""
    xp = get_xp(to_device(np.zeros(1)))
    optimizer.load_state_dict(state, xp)
    if outer:
        outer.load_state_dict({k[len(OUTER):]: v for k, v in state.items()
                               if k.startswith(OUTER)}, xp)


def _open_checkpoint(folder, config):
    """(theta, optimizer state, iteration) of the checkpoint in folder to resume, after
    checking that it is this run's; None (making the folder) when there is none."""
    if checkpoint.exists(folder):
        theta, state, _, start, saved = checkpoint.load(folder)
        refuse_mismatch(folder, saved, config, start)
        checkpoint.truncate_log(folder, start)
        return theta, state, start
    if folder:
        if os.path.exists(folder) and not os.path.isdir(folder):
            raise UserError(f"--checkpoint {folder}: exists and is not a folder")
        os.makedirs(folder, exist_ok=True)
    return None


def quick_evaluation(model, theta, optimizer, ds, cfg, iteration, loss, checkpoint_dir,
                     comm=LOCAL):
    """Accuracy on cfg.eval_tasks_during tasks per split, logged; returns the test one.
    Task i of a split draws from (seed, QUICK_EVAL, iteration, split, i)."""
    record = {"iteration": iteration, "loss": loss}
    for s, split in enumerate(("train", "test")):
        record[split] = evaluate(model, theta, optimizer, ds, split,
                                 (cfg.seed, QUICK_EVAL, iteration, s), cfg.classes,
                                 cfg.shots, cfg.eval_batch, cfg.eval_iters,
                                 cfg.eval_tasks_during, cfg.transductive, cfg.replacement,
                                 cfg.weight_decay, comm=comm)[0]
    if checkpoint_dir and comm.rank == 0:
        checkpoint.append_log(checkpoint_dir, record)
    return record["test"]


def _status(loss, accuracy):
    text = "" if loss is None else f"loss {loss:.4f}"
    return text + ("" if accuracy is None else f"  test acc {100 * accuracy:5.1f}%")


IDENTITY = ("classes", "train_shots", "inner_batch", "inner_iters", "replacement",
            "learning_rate", "meta_step", "meta_step_final", "meta_batch", "meta_iters",
            "weight_decay", "algo", "foml_tail", "combination", "sgd", "sequential", "outer",
            "seed", "model", "dataset", "augment", "network")


def refuse_mismatch(folder, saved, config, iteration):
    """UserError naming every field in which a checkpoint's run differs from this one.

    Evaluation and bookkeeping settings may differ; meta_iters may grow (extending a
    finished or running run: the remaining iterations anneal epsilon over the new total).
    """
    differ = differences(saved, config, [k for k in IDENTITY if k != "meta_iters"])
    if config["meta_iters"] < iteration:
        differ.append(f"meta_iters {saved['meta_iters']} with {iteration} done "
                      f"(now {config['meta_iters']})")
    if differ:
        raise UserError(f"{folder}: checkpoint of another run: {'; '.join(differ)}; use "
                        f"another --checkpoint folder")


def differences(saved, config, fields=IDENTITY):
    """"FIELD SAVED (now NEW)" for each of fields in which a saved run's configuration
    differs from config (a field an older version did not save counts as its default)."""
    defaults = {"combination": "", "outer": "sgd", "network": "reptile"}
    return [f"{k} {saved.get(k, defaults.get(k))!r} (now {config.get(k)!r})"
            for k in fields if saved.get(k, defaults.get(k)) != config.get(k)]


def train_sine(model, theta, rng, algo, meta_iters, inner_iters, inner_lr, meta_step,
               meta_step_final, meta_batch, outer=None, shared_tail=False, callback=None,
               comm=LOCAL):
    """Meta-train theta (P,) on sine tasks (section 4): meta_iters outer steps of n tasks.

    Each task's k = inner_iters inner SGD steps use its p points (full batch); FOMAML and
    MAML then take one more mini-batch, the 50-point grid of the loss (a separate tail;
    shared_tail: the p points again), as FOMAML's last step and MAML's test loss.
    epsilon is annealed linearly; outer: None (theta + epsilon Delta, Eq. 5 for Reptile) or
    an optimizer such as Adam. callback(iteration, theta) runs after every outer step.
    rng: the run's seed or generator; iteration t's tasks come from task_rng(rng, SINE, t)
    (``sine_tasks``). comm: the processes sharing each meta-batch.
    """
    check_split(meta_batch, comm)
    optimizer, here, reduce = SGD(inner_lr), comm.share(meta_batch), comm.reducer(meta_batch)
    for i in range(meta_iters):
        tasks = sine_tasks(rng, i, meta_batch, here)
        tail = [] if algo == "reptile" else [tasks.train if shared_tail else tasks.test]
        epsilon = linear_schedule(meta_step, meta_step_final, i, meta_iters)
        theta, _ = meta_update(algo, model, theta, [tasks.train] * inner_iters + tail,
                               optimizer, epsilon, outer, reduce=reduce)
        if callback is not None:
            callback(i + 1, theta)
    return theta


def sine_tasks(rng, iteration, n, tasks):
    """The sine tasks of indices `tasks` (a range) among the n of a meta-iteration.

    A sine task is three numbers and ten points, so every process draws all n from
    task_rng(rng, SINE, iteration) and keeps its own: task i is the same for any split.
    """
    full, rows = sine.sample(task_rng(rng, SINE, iteration), n), slice(tasks.start, tasks.stop)
    return sine.SineTasks(full.amplitude[rows], full.phase[rows],
                          tuple(a[rows] for a in full.train), tuple(a[rows] for a in full.test))
