"""A meta-batch's inner mini-batches, on the device, ready for ``meta.meta_update``.

    task_rng -> one generator per task, seeded by the run's seed and the task's key
    sample_tasks -> each task: N classes x train_shots images, from its own generator
    inner_batches -> k - 1 (or k) index mini-batches cycling through each task
    gather -> the images of those indices; the last batch is FOMAML's tail / MAML's test batch

Every task draws from its own generator, seeded from (seed, iteration, task index) in
training and (seed, evaluation tag, task index) in evaluation: the tasks of a run do not
depend on how many processes share the meta-batch, nor on which one draws which task
(``distributed.py``).

A separate tail (FOMAML ``--foml-tail S``, section 6.3; the paper's code's
``_split_train_test``) takes S shots of every class out of the task's train_shots: the first
k - 1 mini-batches cycle through the other train_shots - S, and the k-th is all N*S tail
images, whatever the inner batch size.
"""
import numpy as np

from ..backend import dtype, to_device
from ..errors import UserError
from .sampler import inner_batches, sample_tasks


def task_rng(seed, *key):
    """The generator of one task: numpy's SeedSequence(seed, spawn_key=key).

    key names the task, its last entry the task's index: (TRAIN, iteration, i) in training,
    an evaluation's tag and i in evaluation (``train.py``). Streams with different keys are
    independent (numpy's ``spawn``), and none equals the run's own ``default_rng(seed)``.
    seed: an int (or ints), or a Generator, whose seed (not its current state) is taken.
    """
    if isinstance(seed, np.random.Generator):
        bits = seed.bit_generator
        root = getattr(bits, "seed_seq", None) or bits._seed_seq
    else:
        root = np.random.SeedSequence(seed)
    return np.random.default_rng(np.random.SeedSequence(
        root.entropy, spawn_key=(*root.spawn_key, *key)))


def gather(x, y, idx):
    """Mini-batches by index: x (T, S, ...), idx (T, k, b) -> (T, k, b, ...), labels alike."""
    rows = np.arange(x.shape[0])[:, None, None]
    return x[rows, idx], y[rows, idx]


def sample_each(ds, split, rngs, num_classes, num_shots, batch_size, num_batches, num_query=0,
                replacement=False, augment=None):
    """Tasks drawn one at a time, task i wholly from rngs[i]: its images, then its mini-batches.

    rngs: one numpy Generator per task (a list holding one generator T times draws the T
    tasks from it in turn). Returns x (T, N*K, H, W, C), y (T, N*K), x_query (T, N*Q, ...),
    y_query (T, N*Q) as ``sampler.sample_tasks``, and idx (T, num_batches, batch_size) as
    ``sampler.inner_batches``, all on the host.
    """
    parts = []
    for rng in rngs:
        x, y, xq, yq = sample_tasks(ds, split, rng, 1, num_classes, num_shots, num_query,
                                    augment)
        idx = inner_batches(x.shape[1], rng, batch_size, num_batches, replacement, num_tasks=1)
        parts.append((x, y, xq, yq, idx))
    return [np.concatenate(column) for column in zip(*parts)]


def sample_meta_batch(ds, rngs, num_tasks, num_classes, train_shots, inner_batch, inner_iters,
                      tail_shots=0, replacement=False, augment=None):
    """k mini-batches (x (n, B, H, W, C), y (n, B)) of n training tasks, on the device.

    rngs: one generator per task (``task_rng``), or one generator for all n tasks in turn;
    num_tasks: n; num_classes: N; train_shots: images per class in a task; inner_batch: B;
    inner_iters: k; tail_shots: S for a separate tail (0: shared tail, the k-th batch drawn
    like the others). augment: rotations of Omniglot's training classes (None = default).
    """
    if tail_shots and not 0 < tail_shots < train_shots:
        raise UserError(f"--foml-tail {tail_shots} must be between 1 and --train-shots - 1 "
                        f"({train_shots - 1}): the tail is taken out of the task's shots")
    if isinstance(rngs, np.random.Generator):
        rngs = [rngs] * num_tasks
    k = inner_iters - (tail_shots > 0)
    x, y, xt, yt, idx = sample_each(ds, "train", rngs, num_classes, train_shots - tail_shots,
                                    inner_batch, k, tail_shots, replacement, augment)
    xs, ys = gather(x, y, idx)                                       # (n, k, B, ...)
    batches = [(xs[:, j], ys[:, j]) for j in range(k)]
    if tail_shots:
        batches.append((xt, yt))                                     # (n, N*S, ...)
    return [(to_device(bx, dtype()), to_device(by)) for bx, by in batches]
