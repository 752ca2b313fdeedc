"""Few-shot evaluation (section 6.1): fine-tune on the K shots, classify held-out samples.

Per task: N classes, K + 1 images each; the K shots are the training set, the extra image
of every class the test set. Starting from theta and from a *copy* of the inner Adam state
(the paper's code backs up and restores both around each task), take ``eval_iters`` inner
steps of ``eval_batch`` samples (``meta.adapt``, the training loop's inner loop), then
classify the N test samples:

- non-transductive: each test sample is classified in a batch made of the N*K training
  samples plus that one sample (batch-norm statistics of N*K + 1 images);
- transductive: all N test samples in one batch (batch-norm statistics shared among them).

Tasks run as one batched pass over a leading task axis, as many at a time as fit in
``MEMORY_BUDGET``; each task has its own copy of the optimizer state, so the shared state
is never touched (nothing to restore). Task i draws from its own generator, keyed by the
evaluation and i (``data.batches.task_rng``), so that the tasks can be split over processes
(``distributed.py``) and still be the same tasks.
"""
import numpy as np

from .backend import dtype, get_xp, to_device, to_host
from .data.batches import gather, sample_each, task_rng
from .distributed import LOCAL
from .errors import UserError
from .meta import adapt, inner_steps, tile
from .optim import SGD
from .progress import Progress

MEMORY_BUDGET = 1 << 30     # bytes of activations one evaluation pass may hold (1 GiB)
BYTES_PER_VALUE = 16        # float32 activations, kept about 4 times (caches, gradients)


def query_batch(x_train, x_test, j):
    """Non-transductive: test sample j in a batch with the N*K training samples.

    x_train (T, N*K, H, W, C), x_test (T, N, H, W, C) -> (T, N*K + 1, H, W, C), the test
    sample last (batch-norm statistics of N*K + 1 images).
    """
    xp = get_xp(x_train)
    return xp.concatenate([x_train, x_test[:, j:j + 1]], axis=1)


def test_scores(model, phi, x_train, x_test, transductive):
    """Class scores (logits) of the N test samples, (T, N, classes), after adaptation to
    phi (T, P): all in one batch (transductive), or each in its own ``query_batch``."""
    if transductive:
        return model.predict(phi, x_test)
    xp = get_xp(phi)
    return xp.stack([model.predict(phi, query_batch(x_train, x_test, j))[:, -1]
                     for j in range(x_test.shape[1])], axis=1)


def predict_test(model, phi, x_train, x_test, transductive):
    """Predicted classes of the test samples, (T, N), after adaptation to phi (T, P)."""
    return test_scores(model, phi, x_train, x_test, transductive).argmax(axis=-1)


def tasks_per_pass(model, images, budget=MEMORY_BUDGET):
    """How many tasks one evaluation pass holds within budget bytes of activations.

    images: a task's largest batch (a non-transductive query batch has N*K + 1 images).
    Raises UserError naming the memory one task would need when even one does not fit.
    """
    need = images * model.activation_values() * BYTES_PER_VALUE
    if need > budget:
        raise UserError(f"a batch of {images} images needs {need / 2 ** 30:.1f} GiB of "
                        f"activations (limit {budget / 2 ** 30:.1f} GiB); use fewer "
                        f"--classes, --shots or a smaller --eval-batch")
    return max(1, min(50, budget // need))


def evaluate(model, theta, optimizer, ds, split, rng, num_classes, num_shots, eval_batch,
             eval_iters, num_samples, transductive=False, replacement=False,
             weight_decay=1.0, stream=None, comm=LOCAL):
    """Accuracy on num_samples tasks of the given split: (mean, 95% half-width, per-task).

    theta: (P,); optimizer: the inner optimizer, whose state each task copies (unchanged on
    return). rng: the evaluation's key (seed, tag, ...), task i drawing from
    task_rng(*key, i); or one Generator drawing every task in turn (one process). The
    interval is 1.96 standard errors of the per-task accuracies. With a stream, progress
    (tasks done, rate, time left) is shown on it. comm: the processes sharing the tasks;
    each evaluates its share and every one returns the results of all, in task order.
    """
    mine = comm.share(num_samples)
    if isinstance(rng, np.random.Generator) and comm.size > 1:
        raise ValueError("a split evaluation needs a key, not one generator for all tasks")
    per_pass = tasks_per_pass(model, max(num_classes * num_shots + 1, eval_batch))
    progress = stream and Progress(len(mine), stream=stream, label=f"eval {split:5}",
                                   unit="tasks")
    correct, xp = [np.zeros(0)], get_xp(theta)
    for start in range(0, len(mine), per_pass):
        tasks = mine[start:start + per_pass]
        rngs = ([rng] * len(tasks) if isinstance(rng, np.random.Generator)
                else [task_rng(*rng, i) for i in tasks])
        x, y, xq, yq, idx = sample_each(ds, split, rngs, num_classes, num_shots, eval_batch,
                                        eval_iters, 1, replacement)
        xs, ys = gather(x, y, idx)
        xs, ys = to_device(xs, dtype()), to_device(ys)
        phi = adapt(model, xp.broadcast_to(theta, (len(tasks),) + theta.shape),
                    [(xs[:, j], ys[:, j]) for j in range(eval_iters)], optimizer.copy(),
                    weight_decay)
        pred = predict_test(model, phi, to_device(x, dtype()), to_device(xq, dtype()),
                            transductive)
        correct.append((to_host(pred) == yq).mean(axis=1))
        if progress:
            progress.update(start + len(tasks), force=start + len(tasks) == len(mine))
    if progress:
        progress.close()
    acc = comm.gather([np.concatenate(correct)], num_samples)[0]
    return float(acc.mean()), float(1.96 * acc.std() / np.sqrt(len(acc))), acc


def adaptation_losses(model, theta, tasks, alpha, steps=(0, 1, 2, 4, 8, 16, 32)):
    """Sine regression (section 4, Figure 1): mean loss (Eq. 8) over the tasks after s
    test-time SGD steps on their p points.

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
