"""The meta-training loop: sampling, the epsilon schedule, checkpoints, logs, resume.

``run(cfg, folder)`` is ``minireptile train``: meta-train cfg's CNN on its data, then
evaluate it (``evaluate.final``), returning and writing the results. The arithmetic of a
meta-iteration is ``metabatch.meta_update``; this module only feeds it.

Few-shot classification (section 6.1), as the paper's code runs it (supervised-reptile):
  1. sample n = meta_batch tasks, N-way with train_shots images per class;
  2. on every task, k = inner_iters steps of the inner optimizer (Adam with beta1 = 0, or
     SGD with --sgd) on mini-batches of inner_batch samples that cycle through the task;
  3. theta <- theta + epsilon * mean_i Delta_i, epsilon annealed linearly from meta_step to
     meta_step_final (Delta_i per algorithm: ``meta.delta_rule``); with ``outer="adam"``,
     an Adam step of size epsilon on -mean_i Delta_i instead (section 3; Finn et al.'s
     MAML takes Adam with step 0.001 in its outer loop).
The inner Adam's state is never reset during training. The paper feeds the n tasks through
it one after another (``sequential=True``); the default runs the meta-batch as one batched
pass and merges the per-task states (``optim.Adam.merge_sums``).

Task i of iteration t draws from its own generator, seeded (seed, TRAIN, t, i)
(``data.batches.task_rng``); evaluations seed theirs from (seed, tag, i). So the tasks never
depend on how a meta-batch is split over processes: with a ``distributed`` communicator,
each process runs its share of the tasks, one collective per meta-iteration sums what the
outer update needs, and rank 0 alone writes checkpoints and logs.
"""
import dataclasses
import math
import os
import sys
import time
from contextlib import nullcontext

import numpy as np

from . import backend, checkpoint, files
from .backend import available_memory, dtype, get_xp, to_device, to_host
from .config import (build_model, combination_weights, command_line, inner_optimizer,
                     load_data, outer_optimizer, refuse_mismatch)
from .data.batches import sample_meta_batch, task_rng
from .data.sampler import check_tasks
from .distributed import LOCAL
from .errors import UserError
from .evaluate import BYTES_PER_VALUE, QUICK_EVAL, evaluate, final, tasks_per_pass
from .meta import delta_rule, linear_schedule
from .metabatch import meta_update
from .progress import Progress

TRAIN = 1               # first entry of a training task's key (task_rng): its purpose
OUTER = "outer_"        # prefix of the outer Adam's state in a checkpoint (the inner's has none)

# Bytes per activation value that an exact-MAML inner step keeps for its Hessian-vector
# product (forward caches and every layer's dL/dy): measured 22.6 MiB per step on the Omniglot
# CNN for 50 images x 51,925 values (peak RSS, ``bench/run.py --only inner_steps``).
KEPT_BYTES = 9


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
    theta, loss = meta_update(rule(cfg), model, theta, batches, optimizer, epsilon, outer,
                              sequential=cfg.sequential, reduce=reduce)
    return theta, loss / batches[0][1].shape[-1]


def rule(cfg):
    """cfg's Delta rule (``meta.delta_rule``): its algorithm, weight decay, combination
    weights and exact MAML's memory path."""
    weights = combination_weights(cfg.combination, cfg.inner_iters) if cfg.combination else None
    return delta_rule(cfg.algo, cfg.weight_decay, weights, reuse=not cfg.maml_recompute,
                      imaml=cfg.imaml() if cfg.algo == "imaml" else None)


def check_split(meta_batch, comm, sequential=False):
    """One-line UserError for a meta-batch that cannot be split over comm's processes."""
    if comm.size > meta_batch:
        raise UserError(f"--meta-batch {meta_batch} over {comm.size} processes: every "
                        f"process needs a task; use at most {meta_batch} processes")
    if sequential and comm.size > 1:
        raise UserError("--sequential feeds the tasks through one Adam state one after "
                        "another: it cannot be split over processes (drop --sequential or "
                        "run one process)")


def train(model, ds, cfg, theta=None, checkpoint_dir=None, stream=None, comm=LOCAL,
          stop_at=None):
    """Meta-train model on ds's training classes; returns (theta, inner optimizer).

    With checkpoint_dir, an existing checkpoint there is resumed (its configuration must
    match, except a larger meta_iters, which extends a run) and a new one is written
    atomically every cfg.checkpoint_interval iterations, at the end, and on Ctrl-C; every
    quick evaluation is appended to its log.jsonl. comm (``distributed.py``): the processes
    sharing each meta-batch; rank 0 reads and writes the checkpoint, which any number of
    processes can resume. stop_at: end (with a checkpoint) at this iteration although
    epsilon is annealed over cfg.meta_iters: the paper's schedule, cut short.
    """
    stream = (stream or sys.stderr) if comm.rank == 0 else open(os.devnull, "w")
    cfg.validate()
    check_split(cfg.meta_batch, comm, cfg.sequential)
    tasks = comm.share(cfg.meta_batch)
    check_tasks(ds, "train", cfg.classes, cfg.train_shots or cfg.shots,
                augment=None if cfg.augment else False)
    check_tasks(ds, "test", cfg.classes, cfg.shots, num_query=1)
    check_memory(model, cfg, len(tasks))
    config = dict(dataclasses.asdict(cfg), model=f"{model.name}:{model.num_params}",
                  kind="fewshot")
    optimizer, outer = inner_optimizer(cfg, model), outer_optimizer(cfg)
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

    end = cfg.meta_iters if stop_at is None else min(stop_at, cfg.meta_iters)
    if start >= end:
        print(f"already trained to iteration {start}", file=stream, flush=True)
        return theta, optimizer
    progress, accuracy, it, loss = Progress(end, start, stream), None, start, None
    at_start = optimizer.copy(), outer and outer.copy(), theta
    try:
        for it in range(start, end):
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
        it = end
    except KeyboardInterrupt:
        optimizer, outer, theta = at_start              # back to a whole iteration
        save(it)
        progress.close()
        raise
    save(end)
    progress.update(end, _status(loss, accuracy), force=True)
    progress.close()
    return theta, optimizer


def run(cfg, folder=None, data=None, stream=None, comm=LOCAL, stop_at=None, out=None):
    """``minireptile train``: meta-train cfg's CNN on its data, then evaluate it.

    folder: the checkpoint folder (resumed when it holds this run's checkpoint); data: a
    packed dataset (default: the embedded Omniglot); stream: where progress goes (default
    stderr); comm: the processes sharing each meta-batch. Returns the results (per split:
    accuracy, 95% interval, seconds, each task's count; the config, the command, the
    seconds), also written as JSON to out (default FOLDER/results.json) by rank 0.
    stop_at: train to that iteration only (``train``), then return None, evaluating nothing.
    """
    cfg.validate()
    stream = stream or sys.stderr
    if comm.rank != 0:
        stream = open(os.devnull, "w")
    if out:
        files.output_file(out, "--out")
    ds, model = load_data(data, cfg.dataset), build_model(cfg)
    print(f"minireptile train {cfg.dataset}: {cfg.algo}, {cfg.classes}-way {cfg.shots}-shot, "
          f"{cfg.meta_iters} meta-iterations of {cfg.meta_batch} tasks x {cfg.inner_iters} "
          f"steps, device {backend.device()}, {comm.describe()}, data {ds.path}",
          file=stream)
    print("resolved: " + command_line(cfg), file=stream, flush=True)
    warn_test_step(cfg, stream)
    t0 = time.time()
    with (files.locked(folder) if folder and comm.rank == 0 else nullcontext()):
        theta, optimizer = train(model, ds, cfg, checkpoint_dir=folder, stream=stream,
                                 comm=comm, stop_at=stop_at)
        if stop_at is not None and stop_at < cfg.meta_iters:
            return None
        return finish(model, theta, optimizer, ds, cfg, folder, stream, comm, out, t0)


def warn_test_step(cfg, stream):
    """A one-line warning when exact MAML will be evaluated with another inner step than the
    one it learned its initialisation for: the loss sums over a batch, so an SGD step on
    --eval-batch B' images is B'/B of one on --inner-batch B. (The earlier MAML experiment
    trained on batches of 10 and was evaluated on 5: docs/reproduce.md.)"""
    if cfg.algo in ("maml", "imaml") and cfg.eval_batch != cfg.inner_batch:
        name = {"maml": "exact MAML", "imaml": "iMAML"}[cfg.algo]
        print(f"warning: {name} with --eval-batch {cfg.eval_batch} and --inner-batch "
              f"{cfg.inner_batch}: the test-time step is {cfg.eval_batch}/{cfg.inner_batch} of "
              f"the trained one (the loss is a sum over the batch)", file=stream, flush=True)


def finish(model, theta, optimizer, ds, cfg, folder, stream, comm, out, t0):
    """The final evaluation of a trained run, its results returned and written to out
    (default FOLDER/results.json)."""
    train_seconds = time.time() - t0
    results = final(model, theta, optimizer, ds, cfg, stream, comm=comm)
    results.update(train_seconds=train_seconds, total_seconds=time.time() - t0,
                   config=dataclasses.asdict(cfg), device=backend.device(),
                   processes=comm.size, command=command_line(cfg))
    print(f"training {train_seconds:.0f} s, total {time.time() - t0:.0f} s", file=stream)
    out = out or (os.path.join(folder, "results.json") if folder else None)
    if out and comm.rank == 0:
        files.write_json(out, results)
        print(f"results written to {out}", file=stream)
    return results


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
        theta, state, _, start, saved = checkpoint.load(folder, expect="fewshot")
        refuse_mismatch(folder, saved, config, start)
        checkpoint.truncate_log(folder, start)
        return theta, state, start
    if folder:
        files.make_folder(folder, "--checkpoint")
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
