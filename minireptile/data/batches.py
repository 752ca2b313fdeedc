"""A meta-batch's inner mini-batches, on the device, ready for ``meta.meta_update``.

    sample_tasks -> n tasks of N classes x train_shots images
    inner_batches -> k - 1 (or k) index mini-batches cycling through each task
    gather -> the images of those indices; the last batch is FOMAML's tail / MAML's test batch

A separate tail (FOMAML ``--foml-tail S``, section 6.3; the paper's code's
``_split_train_test``) takes S shots of every class out of the task's train_shots: the first
k - 1 mini-batches cycle through the other train_shots - S, and the k-th is all N*S tail
images, whatever the inner batch size.
"""
import numpy as np

from ..backend import dtype, to_device
from ..errors import UserError
from .sampler import inner_batches, sample_tasks


def gather(x, y, idx):
    """Mini-batches by index: x (T, S, ...), idx (T, k, b) -> (T, k, b, ...), labels alike."""
    rows = np.arange(x.shape[0])[:, None, None]
    return x[rows, idx], y[rows, idx]


def sample_meta_batch(ds, rng, num_tasks, num_classes, train_shots, inner_batch, inner_iters,
                      tail_shots=0, replacement=False, augment=None):
    """k mini-batches (x (n, B, H, W, C), y (n, B)) of n training tasks, on the device.

    num_tasks: n; num_classes: N; train_shots: images per class in a task; inner_batch: B;
    inner_iters: k; tail_shots: S for a separate tail (0: shared tail, the k-th batch drawn
    like the others). augment: rotations of Omniglot's training classes (None = default).
    """
    if tail_shots and not 0 < tail_shots < train_shots:
        raise UserError(f"--foml-tail {tail_shots} must be between 1 and --train-shots - 1 "
                        f"({train_shots - 1}): the tail is taken out of the task's shots")
    x, y, xt, yt = sample_tasks(ds, "train", rng, num_tasks, num_classes,
                                train_shots - tail_shots, num_query=tail_shots,
                                augment=augment)
    k = inner_iters - (tail_shots > 0)
    idx = inner_batches(x.shape[1], rng, inner_batch, k, replacement, num_tasks=num_tasks)
    xs, ys = gather(x, y, idx)                                       # (n, k, B, ...)
    batches = [(xs[:, j], ys[:, j]) for j in range(k)]
    if tail_shots:
        batches.append((xt, yt))                                     # (n, N*S, ...)
    return [(to_device(bx, dtype()), to_device(by)) for bx, by in batches]
