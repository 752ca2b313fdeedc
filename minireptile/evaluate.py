"""Few-shot evaluation (section 6.1): fine-tune on the K shots, classify held-out samples.

Per task: N classes, K + 1 images each; the K shots are the training set, the extra image
of every class the test set. Starting from theta and from a *copy* of the inner Adam state
(the paper's code backs up and restores both around each task), take ``eval_iters`` inner
steps of ``eval_batch`` samples, then classify the N test samples:

- non-transductive: each test sample is classified in a batch made of the N*K training
  samples plus that one sample (batch-norm statistics of N*K + 1 images);
- transductive: all N test samples in one batch (batch-norm statistics shared among them).

Tasks run as one batched pass over a leading task axis; each task has its own copy of the
optimizer state, so the shared state is never touched (nothing to restore).
"""
import numpy as np

from .backend import dtype, get_xp, to_device, to_host
from .data import inner_batches, sample_tasks
from .train import adapt, gather


def query_batches(x_train, x_test, transductive):
    """The batches the test samples are classified in, and which output row is each's.

    x_train (T, N*K, H, W, C), x_test (T, N, H, W, C).
    Non-transductive: (T, N, N*K + 1, H, W, C), row -1 of batch j is test sample j.
    Transductive: (T, N, H, W, C), row j is test sample j.
    """
    if transductive:
        return x_test
    xp = get_xp(x_train)
    t, n = x_test.shape[:2]
    train = xp.broadcast_to(x_train[:, None], (t, n) + x_train.shape[1:])
    return xp.concatenate([train, x_test[:, :, None]], axis=2)


def predict_test(model, phi, x_train, x_test, transductive):
    """Predicted classes of the test samples, (T, N), after adaptation to phi (T, P)."""
    xq = query_batches(x_train, x_test, transductive)
    if transductive:
        return model.predict(phi, xq).argmax(axis=-1)
    xp = get_xp(phi)
    n = x_test.shape[1]
    phis = xp.broadcast_to(phi[:, None], (phi.shape[0], n, phi.shape[1]))
    return model.predict(phis, xq)[:, :, -1].argmax(axis=-1)


def evaluate(model, theta, optimizer, ds, split, rng, num_classes, num_shots, eval_batch,
             eval_iters, num_samples, transductive=False, replacement=False,
             weight_decay=1.0, tasks_per_pass=50):
    """Accuracy on num_samples tasks of the given split: (mean, 95% half-width, per-task).

    theta: (P,); optimizer: the inner optimizer, whose state each task copies (unchanged on
    return). The interval is 1.96 standard errors of the per-task accuracies.
    """
    correct = []
    for start in range(0, num_samples, tasks_per_pass):
        t = min(tasks_per_pass, num_samples - start)
        x, y, xq, yq = sample_tasks(ds, split, rng, t, num_classes, num_shots, num_query=1)
        idx = inner_batches(x.shape[1], rng, eval_batch, eval_iters, replacement, num_tasks=t)
        xs, ys = gather(x, y, idx)
        xs, ys = to_device(xs, dtype()), to_device(ys)
        xp = get_xp(theta)
        phi = adapt(model, xp.broadcast_to(theta, (t,) + theta.shape),
                    [(xs[:, j], ys[:, j]) for j in range(eval_iters)], optimizer.copy(),
                    weight_decay=weight_decay)[0]
        pred = predict_test(model, phi, to_device(x, dtype()), to_device(xq, dtype()),
                            transductive)
        correct.append((to_host(pred) == yq).mean(axis=1))
    acc = np.concatenate(correct)
    return float(acc.mean()), float(1.96 * acc.std() / np.sqrt(len(acc))), acc

