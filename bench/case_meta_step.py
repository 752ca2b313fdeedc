"""Case ``meta_step``: milliseconds per meta-iteration, batched against a loop over tasks.

For each model of META_MODELS (the sine MLP, the Omniglot CNN and, in the full run, the
Mini-ImageNet CNN) and each algorithm (Reptile, FOMAML, exact MAML), one meta-iteration at
the paper's settings (``cases.SETTINGS``) is timed in two forms, in interleaved rounds:
``batched``, ``meta.meta_update`` on the n tasks as one pass over a leading task axis (what
``minireptile train`` runs), and ``loop``, a Python loop of ``meta.task_update`` over the
tasks. Each pair gives a row per form and the ratio loop / batched.
"""
from bench import cases
from bench.common import META_MODELS, measure


def run(rep, mode, args):
    """Rows and ratios of every model and algorithm of META_MODELS[mode]."""
    for name in META_MODELS[mode]:
        w = cases.workload(name)
        for algo in cases.ALGOS:
            batched_and_loop(rep, mode, w, algo)


def batched_and_loop(rep, mode, w, algo):
    """One model and algorithm: the two forms timed in the same rounds."""
    s = w.setting
    fns = {"batched": cases.meta_iteration(w, algo, batched=True),
           "loop": cases.meta_iteration(w, algo, batched=False)}
    ts = measure(fns, mode)
    inner = "sgd" if algo == "maml" else s.inner
    for form in fns:
        rep.row("meta_step", f"{w.name} {algo} {form} k={s.k} n={s.meta_batch} "
                f"B={s.inner_batch} {inner}", ts[form])
    rep.ratio(f"{w.name} {algo}: loop / batched", ts["loop"], ts["batched"])
