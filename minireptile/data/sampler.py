"""N-way K-shot tasks and the inner loop's mini-batches (Section 6.1, Algorithm 1's "sample task").

Host NumPy only, driven by a ``numpy.random.Generator`` (``backend.make_rng``), so a seed
gives the same tasks on both backends; the caller moves the arrays to the device.

What the paper's code does, kept here (supervised-reptile's reptile.py):
- a task is N classes drawn without replacement, then K (+ query) distinct images of each;
  labels 0..N-1 in the order the classes were drawn;
- Omniglot training classes are augmented by rotations of 0/90/180/270 degrees, each a class
  of its own (4 x 1200 = 4800 training classes); test classes are never rotated;
- inner mini-batches cycle through the task's samples, reshuffling after every full pass, a
  batch running on into the next pass ("--replacement" instead draws each batch afresh).
"""
import numpy as np

from ..errors import UserError

ROTATIONS = 4                       # 0, 90, 180, 270 degrees counter-clockwise (PIL.rotate)


def sample_tasks(ds, split, rng, num_tasks, num_classes, num_shots, num_query=0, augment=None):
    """A meta-batch of T = num_tasks N-way K-shot tasks, with leading task axis.

    ds: a loaded Dataset; split: "train", "val" or "test"; rng: numpy Generator;
    num_classes: N; num_shots: K training images per class; num_query: held-out images per
    class (the evaluation's test samples, or FOMAML's separate tail); augment: rotations as
    extra classes, None = on for the 'train' split of an Omniglot file, off otherwise.
    Returns x_train float32 (T, N*K, H, W, C) in [0, 1], y_train int64 (T, N*K),
    x_query float32 (T, N*num_query, H, W, C), y_query int64 (T, N*num_query); samples are
    grouped by class (label 0's K images first). No image appears twice in one task.
    """
    classes = _split(ds, split)
    rotations = ROTATIONS if _augmented(ds, split, augment) else 1
    per_class = _check(ds, split, classes, rotations, num_tasks, num_classes, num_shots,
                       num_query)
    picks = np.stack([rng.choice(len(classes) * rotations, num_classes, replace=False)
                      for _ in range(num_tasks)])                          # (T, N)
    chosen, rotation = np.asarray(classes)[picks // rotations], picks % rotations
    sizes = ds.class_sizes
    index = np.stack([[ds.offsets[c] + rng.choice(sizes[c], per_class, replace=False)
                       for c in task] for task in chosen])                # (T, N, K + Q)
    x = ds.read(index).astype(np.float32) / np.float32(255)               # (T, N, K+Q, H, W, C)
    for k in range(1, rotations):
        x[rotation == k] = np.rot90(x[rotation == k], k, axes=(2, 3))
    return (*_flat(x[:, :, :num_shots]), *_flat(x[:, :, num_shots:]))


def inner_batches(num_samples, rng, batch_size, num_batches, replacement=False, num_tasks=None):
    """Index mini-batches into a task's num_samples samples: (num_batches, batch_size) int64.

    Default (the paper's): cycle through a shuffled order of the samples, reshuffling after
    each full pass; a batch may run on into the next pass, so every sample is visited once
    before any is repeated. replacement=True: each batch is num_batches independent draws of
    batch_size distinct samples (random.sample in the paper's code).
    num_tasks=T gives (T, num_batches, batch_size), each task drawn independently in turn.
    """
    if num_tasks is not None:
        return np.stack([inner_batches(num_samples, rng, batch_size, num_batches, replacement)
                         for _ in range(num_tasks)])
    if num_samples < 1 or batch_size < 1 or num_batches < 0:
        raise UserError(f"inner batches: need num_samples >= 1 and batch_size >= 1, got "
                        f"{num_samples} samples, batch size {batch_size}, {num_batches} batches")
    if replacement:
        if batch_size > num_samples:
            raise UserError(f"--inner-batch {batch_size} with --replacement is larger than the "
                            f"task's {num_samples} samples")
        return np.stack([rng.choice(num_samples, batch_size, replace=False)
                         for _ in range(num_batches)]).reshape(num_batches, batch_size)
    need = batch_size * num_batches
    passes = -(-need // num_samples)
    order = np.concatenate([rng.permutation(num_samples) for _ in range(passes)] or
                           [np.empty(0, np.int64)])
    return order[:need].reshape(num_batches, batch_size).astype(np.int64)


def _flat(x):
    """(T, N, S, H, W, C) -> x (T, N*S, H, W, C) and labels y (T, N*S) = class 0..N-1."""
    t, n, s = x.shape[:3]
    y = np.broadcast_to(np.repeat(np.arange(n, dtype=np.int64), s), (t, n * s)).copy()
    return np.ascontiguousarray(x.reshape(t, n * s, *x.shape[3:])), y


def check_tasks(ds, split, num_classes, num_shots, num_query=0, augment=None):
    """One-line UserError, before any sampling, when such tasks cannot be drawn from split."""
    rotations = ROTATIONS if _augmented(ds, split, augment) else 1
    _check(ds, split, _split(ds, split), rotations, 1, num_classes, num_shots, num_query)


def _augmented(ds, split, augment):
    """Rotations as extra classes: None means on for the 'train' split of an Omniglot file."""
    return ds.kind == "omniglot" and split == "train" if augment is None else augment


def _split(ds, split):
    if split not in ds.splits:
        raise UserError(f"{ds.path}: no '{split}' split (it has {', '.join(ds.splits)})")
    return ds.splits[split]


def _check(ds, split, classes, rotations, num_tasks, num_classes, num_shots, num_query):
    """K + query images per class, after checking that the task is possible."""
    if num_tasks < 1 or num_classes < 1 or num_shots < 1 or num_query < 0:
        raise UserError(f"impossible task: {num_tasks} tasks of {num_classes}-way "
                        f"{num_shots}-shot with {num_query} query shots")
    if rotations > 1 and ds.image_shape[0] != ds.image_shape[1]:
        raise UserError(f"{ds.path}: rotations need square images, not {ds.image_shape}")
    pool = len(classes) * rotations
    if num_classes > pool:
        rotated = f" ({len(classes)} x {rotations} rotations)" if rotations > 1 else ""
        raise UserError(f"{num_classes}-way tasks need {num_classes} classes, the '{split}' "
                        f"split of {ds.path} has {pool}{rotated}")
    per_class = num_shots + num_query
    sizes = ds.class_sizes[classes]
    if per_class > sizes.min():
        small = classes[int(np.argmin(sizes))]
        raise UserError(f"{num_shots} shots + {num_query} query = {per_class} images per "
                        f"class, but class {ds.class_names[small]} of the '{split}' split of "
                        f"{ds.path} has only {sizes.min()}")
    return per_class
