"""How a meta-batch runs: its n tasks batched or one after another, summed, then one outer step.

The arithmetic of each task is ``meta.py`` (a Delta rule from ``meta.delta_rule``); this
module only decides how the n tasks of a meta-iteration are run and combined:

    batched      the n tasks in one pass over a leading task axis, theta (n, P); the CPU
                 runs chunks of them on its worker threads (``parallel.map_tasks``)
    sequential   task after task through the one inner optimizer state (the paper's code)
    reduce       the sums over the n tasks: here (``sum_tasks``), or over every process's
                 tasks (``distributed.py``), one collective per meta-iteration
    Adam merge   batched, each task starts from a copy of the inner Adam's state, and the
                 copies are merged after (``optim.Adam.merge_sums``): exact with SGD, the
                 documented approximation with Adam
    outer step   theta <- theta + epsilon mean_i Delta_i  (``meta.outer_step``, Eq. 5)
"""
from .backend import get_xp
from .meta import outer_step
from .parallel import map_tasks


def sum_tasks(arrays):
    """([a.sum(axis=0) for a in arrays], n): sums over the task axis, in task order.

    The default ``reduce``: the meta-batch's n tasks are all in this process. Split over
    processes, ``distributed.py`` gives a reduce with the same contract that sums over every
    process's tasks (in task order, with the same additions as here, when deterministic).
    """
    return [a.sum(axis=0) for a in arrays], len(arrays[0])


def meta_update(rule, model, theta, batches, optimizer, epsilon, outer=None, sequential=False,
                reduce=None):
    """One meta-iteration: theta <- theta + epsilon mean_i Delta_i.   Eq. (5), batched Reptile.

    rule: a task's Delta (``meta.delta_rule``); theta: (P,); batches: k pairs
    (x (n, B, ...), y (n, B, ...)), the last one FOMAML's tail and MAML's test batch;
    optimizer: the inner one, whose state advances; outer: None (Eq. 5) or an optimizer
    taking -mean_i Delta_i as its gradient (``meta.outer_step``). sequential: the tasks one
    after another through the one inner state, exactly as the paper's code feeds them.
    reduce: ``sum_tasks`` (default) or a function with its contract over every process's
    tasks, called once, on [Delta_i, loss_i, and Adam's per-task moments].
    Returns (new theta, mean loss of the first mini-batch over all n tasks).
    """
    run = _sequential if sequential else _batched
    delta_sum, loss_sum, n = run(rule, model, theta, batches, optimizer, reduce or sum_tasks)
    return outer_step(theta, delta_sum / n, epsilon, outer), loss_sum / n


def _batched(rule, model, theta, batches, optimizer, reduce):
    """The n tasks as one pass over the task axis, each from a copy of the inner state s_0,
    the copies merged after; the CPU's workers take chunks of tasks. Every task took one
    step per mini-batch. Returns (sum_i Delta_i, sum_i loss_i, n) over all tasks."""
    n, xp, start = batches[0][0].shape[0], get_xp(theta), optimizer.snapshot()

    def chunk(rows):                                 # the tasks of rows, from copies of s_0
        copy = optimizer.copy()
        thetas = xp.broadcast_to(theta, (rows.stop - rows.start,) + theta.shape)
        delta, loss = rule(model, thetas, [(x[rows], y[rows]) for x, y in batches], copy)
        return (delta, loss, *copy.task_terms(start, len(batches)))
    rows = map_tasks(chunk, n, sum(x[0].size for x, _ in batches))
    (delta_sum, loss_sum, *term_sums), total = reduce(list(rows))
    optimizer.merge_sums(start, term_sums, total, len(batches))
    return delta_sum, loss_sum, total


def _sequential(rule, model, theta, batches, optimizer, reduce):
    """Task after task through the one inner optimizer, its state carried from task to task.
    Returns (sum_i Delta_i, sum_i loss_i, n) over all tasks."""
    n, xp = batches[0][0].shape[0], get_xp(theta)
    runs = [rule(model, theta, [(x[i], y[i]) for x, y in batches], optimizer) for i in range(n)]
    (delta_sum, loss_sum), total = reduce([xp.stack([r[0] for r in runs]),
                                           xp.stack([r[1] for r in runs])])
    return delta_sum, loss_sum, total
