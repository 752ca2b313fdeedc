"""Case ``jax``: minireptile against the same work in JAX, each step one jitted function.

The JAX references (``bench/jax_ref.py``) start from minireptile's theta and data; each
meta-iteration is one ``jax.jit`` function. Its first call (trace, compile, one run) is
timed apart as compile_s, outside the interleaved rounds. Timed against minireptile's
batched form: the Omniglot Reptile meta-iteration (the tasks under ``jax.vmap`` and
unrolled), exact MAML on the sine MLP, few-shot evaluation on Omniglot (ms per task) and,
in the full run, the Mini-ImageNet Reptile meta-iteration. On the CPU, XLA gets
``--threads`` threads (``PJRT_NPROC``, set before jax is imported). Skipped, with a note,
when ``import jax`` fails or JAX has no GPU backend on a GPU run.
"""
import os
import sys
import time

import numpy as np

from bench import cases
from bench.common import EVAL_TASKS, JAX_MINIIMAGENET, blas_threads, eval_rows, measure
from minireptile import backend


def jax_threads(n):
    """Give XLA's CPU client n threads; only works before jax is first imported.

    PJRT_NPROC sizes the PJRT CPU client's thread pools (XLA's ``DefaultThreadPoolSize``;
    it is otherwise one per core, whatever OMP_NUM_THREADS says); with one thread also
    the older flags that keep XLA's Eigen code single-threaded.
    """
    os.environ["PJRT_NPROC"] = str(n)
    single = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
    flags = os.environ.get("XLA_FLAGS", "")
    if n == 1 and single not in flags:
        os.environ["XLA_FLAGS"] = (flags + " " + single).strip()


def first_call(fn):
    """Seconds of fn's first call: jax.jit's tracing and compilation, and one run."""
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def run(rep, mode, args):
    """All JAX comparisons, or a note saying why they were skipped."""
    device = backend.device()
    if "jax" not in sys.modules and device == "cpu":
        jax_threads(blas_threads())
    try:
        import jax
    except ImportError as exc:
        rep.note(f"jax case skipped: JAX is not installed ({exc})")
        return
    if device == "cuda" and jax.default_backend() != "gpu":
        rep.note(f"jax case skipped: JAX has no GPU backend here ({jax.default_backend()})")
        return
    jthreads = int(os.environ.get("PJRT_NPROC", os.cpu_count())) if device == "cpu" else "-"
    rep.note(f"JAX {jax.__version__}, backend {jax.default_backend()}, {jthreads} threads "
             f"(PJRT_NPROC={os.environ.get('PJRT_NPROC', '')!r}, "
             f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}); compile_s = the first call "
             f"(trace, compile, one run), outside the timed rounds")
    conv_reptile(rep, mode, jthreads, "omniglot", 2, False)
    sine_maml(rep, mode, jthreads)
    evaluation(rep, mode, jthreads)
    if JAX_MINIIMAGENET[mode]:
        conv_reptile(rep, mode, jthreads, "miniimagenet", 1, True)
    else:
        rep.note("jax: Mini-ImageNet skipped in --quick (its jax.jit compile alone takes "
                 "tens of seconds)")


def timed(rep, mode, jthreads, label, fns, ratios):
    """Rows of minireptile and the JAX forms; ratios {name: JAX form}, each / minireptile.

    label: (model name, what); the JAX forms (names starting "jax") get a compile_s.
    """
    name, what = label
    compile_s = {f: first_call(fn) for f, fn in fns.items() if f.startswith("jax")}
    ts = measure(fns, mode)
    for f in fns:
        extra = {"compile_s": compile_s[f]} if f in compile_s else {}
        rep.row("jax", f"{name} {f} {what}", ts[f],
                threads=jthreads if f in compile_s else None, **extra)
    for ratio, f in ratios.items():
        rep.ratio(ratio, ts[f], ts["minireptile batched"])


def conv_reptile(rep, mode, jthreads, name, stride, pool):
    """The CNN's Reptile meta-iteration: JAX under vmap and as an unrolled loop."""
    from bench import jax_ref
    w = cases.workload(name)
    s = w.setting
    x = np.stack([b[0] for b in w.host_batches], axis=1)        # (n, k, B, H, W, C)
    y = np.stack([b[1] for b in w.host_batches], axis=1)        # (n, k, B)
    params = jax_ref.conv_params(w.model, backend.to_host(w.theta))
    ref = jax_ref.ConvReptile(params, x, y, stride, pool, s.lr, s.epsilon)
    timed(rep, mode, jthreads, (name, f"reptile k={s.k} n={s.meta_batch} B={s.inner_batch}"),
          {"minireptile batched": cases.meta_iteration(w, "reptile", batched=True),
           "jax vmap": ref.vmap, "jax loop": ref.loop},
          {f"{name} reptile: JAX vmap / minireptile": "jax vmap",
           f"{name} reptile: JAX loop / minireptile": "jax loop"})


def sine_maml(rep, mode, jthreads):
    """Exact MAML on the sine MLP, the meta-batch under vmap."""
    from bench import jax_ref
    w = cases.workload("sine")
    s = w.setting
    (xs, ys), (xt, yt) = w.host_batches[0], w.host_test
    ref = jax_ref.SineMAML(jax_ref.mlp_params(w.model, backend.to_host(w.theta)),
                           *(np.ascontiguousarray(a, np.float32) for a in (xs, ys, xt, yt)),
                           s.k, s.lr, s.epsilon)
    what = f"k={s.k} n={s.meta_batch}"
    timed(rep, mode, jthreads, ("sine", f"maml {what}"),
          {"minireptile batched": cases.meta_iteration(w, "maml", batched=True),
           "jax vmap": ref.step}, {f"sine maml {what}: JAX / minireptile": "jax vmap"})


def evaluation(rep, mode, jthreads):
    """Few-shot evaluation on Omniglot: minireptile's batched pass against JAX's loop."""
    from bench import jax_ref
    w, x, y, xq = cases.eval_workload(EVAL_TASKS[mode])
    s = w.setting
    ref = jax_ref.ConvEvaluate(jax_ref.conv_params(w.model, backend.to_host(w.theta)), x, y,
                               xq, 2, False, s.lr, cases.EVAL_ITERS)
    rep.note(f"jax omniglot eval: compile_s {first_call(ref.step):.2f} (first call, "
             f"{len(x)} tasks)")
    eval_rows(rep, "jax", {"minireptile batched": cases.evaluation(w, x, y, xq),
                           "jax loop": ref.step}, len(x), mode, "JAX", jthreads)
