"""Few-shot evaluation (section 6.1): fine-tune on the K shots, classify held-out samples.

``run(folder)`` is ``minireptile eval``: a checkpoint's accuracy per split (``final``); the
training loop's periodic estimate and its final evaluation call ``evaluate`` the same way.

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
import dataclasses
import os
import sys
import time
from contextlib import nullcontext

import numpy as np

from . import backend, checkpoint, files
from .backend import dtype, get_xp, to_device, to_host
from .config import build_model, from_saved, inner_optimizer, load_data
from .data.batches import gather, sample_each, task_rng
from .distributed import LOCAL
from .errors import UserError
from .meta import adapt
from .optim import Adam
from .parallel import map_tasks
from .progress import Progress

QUICK_EVAL, FINAL = 2, 2 ** 31   # first entry of an evaluation task's key (task_rng)

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


def adapt_and_predict(model, theta, optimizer, batches, x_train, x_test, transductive,
                      weight_decay=1.0):
    """Predicted classes (T, N) of T tasks' test samples after fine-tuning theta on each.

    theta: (P,); batches: the eval_iters mini-batches (x (T, B, ...), y (T, B)); every task
    starts from a copy of optimizer's state (left unchanged). The tasks are independent, so
    the CPU's workers take chunks of them (``parallel.map_tasks``).
    """
    xp = get_xp(theta)

    def tasks_of(rows):                              # adapt, then classify, these tasks
        phi = adapt(model, xp.broadcast_to(theta, (rows.stop - rows.start,) + theta.shape),
                    [(bx[rows], by[rows]) for bx, by in batches], optimizer.copy(),
                    weight_decay)
        return predict_test(model, phi, x_train[rows], x_test[rows], transductive)
    return map_tasks(tasks_of, x_train.shape[0], batches[0][0][0].size if batches else 1)


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
    correct = [np.zeros(0)]
    for start in range(0, len(mine), per_pass):
        tasks = mine[start:start + per_pass]
        rngs = ([rng] * len(tasks) if isinstance(rng, np.random.Generator)
                else [task_rng(*rng, i) for i in tasks])
        x, y, xq, yq, idx = sample_each(ds, split, rngs, num_classes, num_shots, eval_batch,
                                        eval_iters, 1, replacement)
        xs, ys = gather(x, y, idx)
        xs, x, xq, ys = (*(to_device(a, dtype()) for a in (xs, x, xq)), to_device(ys))
        pred = adapt_and_predict(model, theta, optimizer, [(xs[:, j], ys[:, j]) for j in
                                                           range(eval_iters)], x, xq,
                                 transductive, weight_decay)
        correct.append((to_host(pred) == yq).mean(axis=1))
        if progress:
            progress.update(start + len(tasks), force=start + len(tasks) == len(mine))
    if progress:
        progress.close()
    acc = comm.gather([np.concatenate(correct)], num_samples)[0]
    return float(acc.mean()), float(1.96 * acc.std() / np.sqrt(len(acc))), acc


def final(model, theta, optimizer, ds, cfg, stream=None, seed=None, splits=("train", "test"),
          comm=LOCAL):
    """Accuracy over cfg.eval_samples tasks of each split, as a dict; progress on stream.

    Per split: mean accuracy, its 95% interval, seconds, and the test samples each task got
    right ("correct", one count out of N per task). Task i of a split draws from
    (seed, FINAL, split, i) (``data.batches.task_rng``), seed defaulting to cfg.seed; comm:
    the processes sharing the tasks.
    """
    seed = cfg.seed if seed is None else seed
    results = {"classes": cfg.classes, "shots": cfg.shots, "transductive": cfg.transductive,
               "eval_samples": cfg.eval_samples, "eval_iters": cfg.eval_iters, "seed": seed}
    for split in splits:
        t0 = time.time()
        key = (seed, FINAL, ("train", "val", "test").index(split))
        mean, half, acc = evaluate(model, theta, optimizer, ds, split, key, cfg.classes,
                                   cfg.shots, cfg.eval_batch, cfg.eval_iters,
                                   cfg.eval_samples, cfg.transductive, cfg.replacement,
                                   cfg.weight_decay, stream=stream, comm=comm)
        results[split] = {"accuracy": mean, "ci95": half, "seconds": time.time() - t0,
                          "correct": [int(round(a * cfg.classes)) for a in acc]}
    mode = "transductive" if cfg.transductive else "non-transductive"
    print(f"\n{cfg.classes}-way {cfg.shots}-shot, {mode}, {cfg.eval_samples} tasks per split",
          file=stream)
    print("| classes | accuracy | 95% interval |\n| --- | --- | --- |", file=stream)
    for split in splits:
        r = results[split]
        print(f"| {split} | {100 * r['accuracy']:.2f}% | +/- {100 * r['ci95']:.2f}% |",
              file=stream)
    return results


def load_trained(folder):
    """(cfg, theta on the device, inner optimizer with its saved state, iteration) of the
    checkpoint in folder; its configuration decides the model and the optimizer."""
    theta, state, _, iteration, config = checkpoint.load(folder, expect="fewshot")
    cfg = from_saved(config)
    optimizer = inner_optimizer(cfg, build_model(cfg))
    if isinstance(optimizer, Adam):
        if not {"t", "m", "v"} <= set(state):
            raise UserError(f"{folder}: an Adam run's checkpoint without Adam's state")
        optimizer.load_state_dict(state, backend.xp())
    if not np.all(np.isfinite(theta)):
        raise UserError(f"{folder}: its parameters are not all finite (a diverged run)")
    return cfg, backend.to_device(theta, backend.dtype()), optimizer, iteration


def run(folder, data=None, shots=None, eval_batch=None, eval_iters=None, eval_samples=None,
        transductive=None, split="both", seed=None, stream=None, comm=LOCAL, out=None):
    """``minireptile eval``: the few-shot accuracy of the checkpoint in folder.

    The checkpoint's configuration gives every setting the arguments leave None; its seed
    draws the tasks unless seed is given (the training run's own final evaluation draws the
    same tasks). split: train, test or both. Returns the results (``final``'s, with the
    checkpoint, its iteration and the command), written as JSON to out by rank 0.
    """
    stream = stream or sys.stdout
    if comm.rank != 0:
        stream = open(os.devnull, "w")
    if out:
        files.output_file(out, "--out")
    cfg, theta, optimizer, iteration = load_trained(folder)
    for name, value in (("shots", shots), ("eval_batch", eval_batch),
                        ("eval_iters", eval_iters), ("eval_samples", eval_samples),
                        ("transductive", transductive)):
        if value is not None:
            setattr(cfg, name, value)
    cfg.validate()
    ds, model = load_data(data, cfg.dataset), build_model(cfg)
    if theta.shape != (model.num_params,):
        raise UserError(f"{folder}: theta has {theta.shape[-1]} parameters, the "
                        f"{model.name} model {model.num_params}")
    splits = ("train", "test") if split == "both" else (split,)
    into = os.path.dirname(os.path.abspath(out)) if out else None
    with (files.locked(into) if into and checkpoint.exists(into) and comm.rank == 0
          else nullcontext()):                       # a run folder: one writer at a time
        results = final(model, theta, optimizer, ds, cfg, stream, seed=seed, splits=splits,
                        comm=comm)
        results.update(checkpoint=folder, iteration=iteration, processes=comm.size,
                       config=dataclasses.asdict(cfg),
                       command=eval_command(folder, data=data, shots=shots,
                                            eval_batch=eval_batch, eval_iters=eval_iters,
                                            eval_samples=eval_samples,
                                            transductive=transductive, split=split,
                                            seed=seed, out=out))
        if out and comm.rank == 0:
            files.write_json(out, results)
    return results


def eval_command(folder, **options):
    """The ``minireptile eval`` command of ``run(folder, **options)`` (None: not given)."""
    words = ["minireptile", "eval", "--checkpoint", folder]
    for name, value in options.items():
        if value is True:
            words.append(f"--{name.replace('_', '-')}")
        elif value is False and name == "transductive":
            words.append("--no-transductive")
        elif value not in (None, False) and not (name == "split" and value == "both"):
            words += [f"--{name.replace('_', '-')}", str(value)]
    return " ".join(words)
