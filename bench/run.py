"""minireptile benchmarks: time, memory and efficiency of every algorithm, against the
machine's own GEMM limit and against PyTorch.

    python bench/run.py [--device cpu|cuda] [--quick] [--only NAME] [--threads N]

Cases (``--only`` takes one name, or several joined by commas):
    meta_step    seconds per meta-iteration, Reptile / FOMAML / exact MAML on the sine MLP,
                 the Omniglot CNN and the Mini-ImageNet CNN, batched over the meta-batch
                 and as a loop over tasks
    inner_steps  time and peak memory of one meta-iteration for k = 1..32 inner steps,
                 each configuration in a fresh process (peak RSS on the CPU; CuPy's
                 memory-pool high-water mark on the GPU)
    hvp          one Hessian-vector product / one gradient, per model
    efficiency   achieved FLOP/s of the Omniglot (and Mini-ImageNet) Reptile meta-iteration,
                 FLOPs counted analytically, / FLOP/s of a large float32 GEMM, same run
    torch        the same meta-iterations in PyTorch (when ``import torch`` works), and
                 few-shot evaluation (50 Adam steps on a 5-way 1-shot task, then the
                 5 query images), ms per task
    jax          the same, each meta-iteration one ``jax.jit`` function (when ``import
                 jax`` works), its compile time excluded

Discipline (nanoGPT's): settings at the top, an untimed warm-up, ``synchronize()`` before
every clock read on the GPU, functions compared in a ratio timed in interleaved rounds
(so load from other processes hits both alike), the median and min-max per row, and the
Markdown table printed beside ``bench/results/<machine>-<device>.json`` (written through
a temporary file and a rename).
"""
import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# -- settings ----------------------------------------------------------------------------
CASES = ("meta_step", "inner_steps", "hvp", "efficiency", "torch", "jax")
BUDGET_S = {"full": 5.0, "quick": 1.0}        # timed seconds per measurement (after warm-up)
MIN_REPEATS = {"full": 3, "quick": 2}
MAX_REPEATS = 50
INNER_KS = {"full": (1, 2, 4, 8, 16, 32), "quick": (1, 8)}
INNER_MODELS = {"full": ("sine", "omniglot"), "quick": ("sine",)}
META_MODELS = {"full": ("sine", "omniglot", "miniimagenet"), "quick": ("sine", "omniglot")}
HVP_MODELS = {"full": ("sine", "omniglot", "miniimagenet"), "quick": ("sine", "omniglot")}
EFFICIENCY_MODELS = {"full": ("omniglot", "miniimagenet"), "quick": ("omniglot",)}
TORCH_MINIIMAGENET = {"full": True, "quick": False}
JAX_MINIIMAGENET = {"full": True, "quick": False}
EVAL_TASKS = {"full": 0, "quick": 5}   # tasks per evaluation pass (0: tasks_per_pass)
EVAL_SHOTS, EVAL_ITERS = 1, 50           # 5-way 1-shot, 50 Adam steps on the 5 images
GEMM_N = {"cpu": 2048, "cuda": 8192}           # the "large float32 matrix product"
DTYPE = "float32"

TARGETS = {   # (ratio name, comparison, bound): the speeds issue 7 asks for (CPU, 2 cores)
    "omniglot reptile: fraction of GEMM FLOP/s": (">=", 0.35),
    "omniglot reptile: PyTorch loop / minireptile": (">=", 2.0),
    "miniimagenet reptile: PyTorch loop / minireptile": (">=", 1.5),
    "omniglot: hvp / grad": ("<=", 3.0),
    "sine maml k=32 n=25: PyTorch / minireptile": (">", 1.0),
    "sine reptile: loop / batched": (">=", 5.0),
}


def _set_threads(argv):
    """Fix the BLAS thread count before numpy is imported: --threads N, else
    $MINIREPTILE_THREADS, else 1 (the package's default: OpenBLAS's threads spin on the
    small products of these models, and on a busy 2-core machine every product then waits
    for a descheduled thread)."""
    n = argv[argv.index("--threads") + 1] if "--threads" in argv else \
        os.environ.get("MINIREPTILE_THREADS", "1")
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = n


_set_threads(sys.argv)

import numpy as np  # noqa: E402  (after the thread count is fixed)

from bench import cases  # noqa: E402
from minireptile import backend  # noqa: E402
from minireptile.meta import tile  # noqa: E402


# -- machine -----------------------------------------------------------------------------
def blas_threads():
    return int(os.environ["OPENBLAS_NUM_THREADS"])


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpu_name():
    import cupy
    props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
    name = props["name"]
    return name.decode() if isinstance(name, bytes) else name


def machine(device):
    """A description of the machine, and its short name for the results file."""
    info = {"cpu": cpu_model(), "cpu_count": os.cpu_count(), "blas_threads": blas_threads(),
            "python": platform.python_version(), "numpy": np.__version__,
            "platform": platform.platform()}
    short = f"cpu{os.cpu_count()}"
    if device == "cuda":
        import cupy
        info["gpu"], info["cupy"] = gpu_name(), cupy.__version__
        short = info["gpu"].lower().replace("nvidia", "").strip().split()[0] or "gpu"
    return short, info


# -- timing ------------------------------------------------------------------------------
def sync():
    backend.synchronize()
    if backend.device() == "cuda" and "torch" in sys.modules:
        sys.modules["torch"].cuda.synchronize()


def measure(fns, mode):
    """Seconds per call of each function: one untimed warm-up each, then interleaved rounds.

    fns: {name: callable}. The number of rounds fills BUDGET_S[mode] (at least
    MIN_REPEATS, at most MAX_REPEATS). Returns {name: [seconds, ...]}.
    """
    for f in fns.values():
        f()
    sync()
    times = {name: [] for name in fns}
    rounds, r = MIN_REPEATS[mode], 0
    while r < rounds:
        for name, f in fns.items():
            sync()
            t0 = time.perf_counter()
            f()
            sync()
            times[name].append(time.perf_counter() - t0)
        if r == 0:
            per_round = sum(t[0] for t in times.values())
            rounds = int(min(MAX_REPEATS, max(rounds, BUDGET_S[mode] / max(per_round, 1e-9))))
        r += 1
    return times


def stats(ts):
    return {"median_ms": 1e3 * statistics.median(ts), "min_ms": 1e3 * min(ts),
            "max_ms": 1e3 * max(ts), "repeats": len(ts)}


class Report:
    """Rows of the table, headline ratios, notes; printed as Markdown and saved as JSON."""

    def __init__(self, device, threads):
        self.device, self.threads = device, threads
        self.rows, self.ratios, self.notes = [], {}, []

    def row(self, case, config, ts, threads=None, **extra):
        r = {"case": case, "config": config, "device": self.device, "dtype": DTYPE,
             "threads": self.threads if threads is None else threads, **stats(ts), **extra}
        self.rows.append(r)
        print(f"  {case:12s} {config:48s} {r['median_ms']:10.2f} ms", flush=True)
        return r

    def ratio(self, name, num, den, note=""):
        """A ratio of two medians (and of the two minima) measured in the same rounds."""
        value = statistics.median(num) / statistics.median(den)
        entry = {"value": value, "of_minima": min(num) / min(den)}
        if name in TARGETS and self.device == "cpu":
            op, bound = TARGETS[name]
            entry["target"] = f"{op} {bound}"
            entry["met"] = bool({">=": value >= bound, "<=": value <= bound,
                                 ">": value > bound}[op])
        if note:
            entry["note"] = note
        self.ratios[name] = entry
        print(f"  ratio {name}: {value:.3f}", flush=True)

    def note(self, text):
        self.notes.append(text)
        print(f"  note: {text}", flush=True)

    def markdown(self):
        lines = ["| case | config | device | dtype | threads | median ms | min-max ms | "
                 "extra |", "|---|---|---|---|---|---:|---:|---|"]
        for r in self.rows:
            extra = ", ".join(f"{k}={_fmt(v)}" for k, v in r.items() if k not in
                              ("case", "config", "device", "dtype", "threads", "median_ms",
                               "min_ms", "max_ms", "repeats"))
            lines.append(f"| {r['case']} | {r['config']} | {r['device']} | {r['dtype']} | "
                         f"{r['threads']} | {r['median_ms']:.2f} | {r['min_ms']:.2f}-"
                         f"{r['max_ms']:.2f} | {extra} |")
        if self.ratios:
            lines += ["", "| ratio (same run) | value | of minima | target |",
                      "|---|---:|---:|---|"]
            for name, e in self.ratios.items():
                target = e.get("target", "")
                if target:
                    target += " (met)" if e["met"] else " (MISSED)"
                lines.append(f"| {name} | {e['value']:.3f} | {e['of_minima']:.3f} | {target} |")
        lines += [f"- {n}" for n in self.notes]
        return "\n".join(lines)


def _fmt(v):
    return f"{v:.4g}" if isinstance(v, float) else str(v)


# -- cases -------------------------------------------------------------------------------
def case_meta_step(rep, mode):
    """Batched vs loop over tasks, per model and algorithm."""
    for name in META_MODELS[mode]:
        w = cases.workload(name)
        s = w.setting
        for algo in cases.ALGOS:
            fns = {"batched": cases.meta_iteration(w, algo, batched=True),
                   "loop": cases.meta_iteration(w, algo, batched=False)}
            ts = measure(fns, mode)
            inner = "sgd" if algo == "maml" else s.inner
            for form in fns:
                rep.row("meta_step", f"{name} {algo} {form} k={s.k} n={s.meta_batch} "
                        f"B={s.inner_batch} {inner}", ts[form])
            rep.ratio(f"{name} {algo}: loop / batched", ts["loop"], ts["batched"])


def case_hvp(rep, mode):
    """One Hessian-vector product against one gradient, at the meta-batch's shapes."""
    for name in HVP_MODELS[mode]:
        w = cases.workload(name)
        n, (x, y) = w.setting.meta_batch, w.batches[0]
        thetas = tile(w.theta, n)
        v = backend.to_device(np.random.default_rng(1).standard_normal(thetas.shape),
                              thetas.dtype)
        shapes = {"n": (thetas, x, y, v), "1": (w.theta, x[0], y[0], v[0])}
        for tasks, (th, xx, yy, vv) in shapes.items():
            fns = {"grad": lambda: w.model.grad(th, xx, yy),
                   "hvp": lambda: w.model.hvp(th, xx, yy, vv),
                   "loss_grad_hvp": lambda: w.model.loss_grad_hvp(th, xx, yy, vv)}
            ts = measure(fns, mode)
            label = f"n={n}" if tasks == "n" else "one task"
            for f in fns:
                rep.row("hvp", f"{name} {f} {label} B={w.setting.inner_batch}", ts[f])
            suffix = "" if tasks == "n" else " (one task)"
            rep.ratio(f"{name}: hvp / grad{suffix}", ts["hvp"], ts["grad"])


def gemm_fn(n):
    """A large float32 GEMM on all --threads cores: the machine's practical limit (OpenBLAS's
    own threads, which minireptile otherwise keeps at one per worker)."""
    a = backend.to_device(np.random.default_rng(0).random((n, n), dtype=np.float32))
    b = backend.to_device(np.random.default_rng(1).random((n, n), dtype=np.float32))

    def gemm():
        backend.set_blas_threads(blas_threads())
        try:
            return a @ b
        finally:
            backend.set_blas_threads(1)
    return gemm


def case_efficiency(rep, mode):
    """Achieved FLOP/s of the Reptile meta-iteration / FLOP/s of a large GEMM, same rounds."""
    n = GEMM_N[backend.device()]
    for name in EFFICIENCY_MODELS[mode]:
        w = cases.workload(name)
        flops = cases.meta_iteration_flops(w, "reptile")
        per_grad = cases.gradient_flops(w.model, w.setting.inner_batch)
        shapes = ", ".join(f"{lname} {m}x{k}x{nn}"
                           for lname, m, k, nn in cases.gemm_shapes(w.model,
                                                                   w.setting.inner_batch))
        rep.note(f"{name} Reptile meta-iteration: {flops / 1e9:.3f} GFLOP = n {w.setting.meta_batch}"
                 f" x k {w.setting.k} x {per_grad / 1e6:.2f} MFLOP per gradient (matrix "
                 f"products only: forward, dW, dX but the first layer's; forward GEMMs MxKxN "
                 f"per task: {shapes})")
        fns = {"meta": cases.meta_iteration(w, "reptile", batched=True), "gemm": gemm_fn(n)}
        ts = measure(fns, mode)
        gemm_flops = 2 * n ** 3
        rep.row("efficiency", f"{name} reptile batched", ts["meta"],
                gflops=flops / statistics.median(ts["meta"]) / 1e9, flops=flops)
        rep.row("efficiency", f"gemm {n}x{n}x{n} float32", ts["gemm"],
                gflops=gemm_flops / statistics.median(ts["gemm"]) / 1e9, flops=gemm_flops)
        # fraction = (flops / t_meta) / (gemm_flops / t_gemm): a ratio of times, scaled
        rep.ratio(f"{name} reptile: fraction of GEMM FLOP/s",
                  [t * flops / gemm_flops for t in ts["gemm"]], ts["meta"])


def eval_workload(mode):
    """The Omniglot workload and T few-shot tasks, 5-way EVAL_SHOTS-shot (random images).

    Returns (w, x (T, N*K, 28, 28, 1), y (T, N*K), xq (T, N, 28, 28, 1)), host arrays; T is
    what one ``evaluate`` pass holds (``tasks_per_pass``), or EVAL_TASKS in --quick.
    """
    from minireptile.evaluate import tasks_per_pass
    w = cases.workload("omniglot")
    n, k = w.setting.classes, EVAL_SHOTS
    t = EVAL_TASKS[mode] or tasks_per_pass(w.model, n * k + 1)
    rng = np.random.default_rng(1)
    x = rng.random((t, n * k) + w.model.input_shape, dtype=np.float32)
    xq = rng.random((t, n) + w.model.input_shape, dtype=np.float32)
    return w, x, np.tile(np.arange(n).repeat(k), (t, 1)), xq


def eval_minireptile(w, x, y, xq):
    """One ``evaluate`` pass on the T tasks, less the sampling: ``meta.adapt`` (EVAL_ITERS
    Adam steps, each on the N*K training images, from a fresh inner Adam) and
    ``predict_test`` (non-transductive). Returns a function of no arguments."""
    from minireptile.evaluate import predict_test
    from minireptile.meta import adapt
    xs, ys, xqd = (backend.to_device(x, backend.dtype()), backend.to_device(y),
                   backend.to_device(xq, backend.dtype()))
    thetas = backend.get_xp(w.theta).broadcast_to(w.theta, (len(x),) + w.theta.shape)

    def run():
        phi = adapt(w.model, thetas, [(xs, ys)] * EVAL_ITERS,
                    cases.inner_optimizer(w.setting, "reptile"))
        return predict_test(w.model, phi, xs, xqd, transductive=False)
    return run


def eval_rows(rep, case, fns, tasks, mode, label, threads):
    """Time evaluation passes of `tasks` tasks; rows and the ratio in ms per task."""
    ts = {f: [t / tasks for t in v] for f, v in measure(fns, mode).items()}
    other = [f for f in fns if not f.startswith("minireptile")][0]
    for f in fns:
        rep.row(case, f"omniglot eval {f} 5-way {EVAL_SHOTS}-shot iters={EVAL_ITERS} "
                f"T={tasks}, per task", ts[f], threads=threads if f == other else None)
    rep.ratio(f"omniglot eval 5-way {EVAL_SHOTS}-shot: {label} / minireptile", ts[other],
              ts["minireptile batched"])


def case_torch(rep, mode):
    """minireptile against the same meta-iterations in PyTorch, in interleaved rounds."""
    try:
        import torch
    except ImportError as exc:
        rep.note(f"torch case skipped: PyTorch is not installed ({exc})")
        return
    from bench import torch_ref
    device = backend.device()
    torch.set_num_threads(blas_threads())
    tthreads = torch.get_num_threads() if device == "cpu" else "-"
    rep.note(f"PyTorch {torch.__version__}, {tthreads} threads, device {device}")

    def tensors(obj):
        if device == "cuda":
            for attr in ("x", "y", "xq"):
                if hasattr(obj, attr):
                    setattr(obj, attr, getattr(obj, attr).to(device))
            if hasattr(obj, "data"):
                obj.data = [a.to(device) for a in obj.data]
            obj.theta = [p.detach().to(device).requires_grad_(p.requires_grad)
                         for p in obj.theta]
        return obj

    def conv_case(name, stride, pool, head, filters, with_vmap):
        w = cases.workload(name)
        s = w.setting
        x = np.stack([b[0] for b in w.host_batches], axis=1)        # (n, k, B, H, W, C)
        y = np.stack([b[1] for b in w.host_batches], axis=1)        # (n, k, B)
        ref = tensors(torch_ref.ConvReptile(x, y, s.classes, filters, stride, pool, head,
                                            s.lr, s.epsilon))
        fns = {"minireptile batched": cases.meta_iteration(w, "reptile", batched=True),
               "minireptile loop": cases.meta_iteration(w, "reptile", batched=False),
               "torch loop": ref.loop}
        if with_vmap:
            fns["torch vmap"] = ref.vmap
        ts = measure(fns, mode)
        for f in fns:
            rep.row("torch", f"{name} reptile {f} k={s.k} n={s.meta_batch} B={s.inner_batch}",
                    ts[f], threads=tthreads if f.startswith("torch") else None)
        rep.ratio(f"{name} reptile: PyTorch loop / minireptile", ts["torch loop"],
                  ts["minireptile batched"])
        rep.ratio(f"{name} reptile: PyTorch loop / minireptile loop", ts["torch loop"],
                  ts["minireptile loop"])
        if with_vmap:
            rep.ratio(f"{name} reptile: PyTorch vmap / minireptile", ts["torch vmap"],
                      ts["minireptile batched"])

    conv_case("omniglot", 2, False, 256, 64, True)

    w = cases.workload("sine")
    s = w.setting
    (xs, ys), (xt, yt) = w.host_batches[0], w.host_test
    ref = tensors(torch_ref.SineMAML(*(np.ascontiguousarray(a, np.float32)
                                       for a in (xs, ys, xt, yt)), s.k, s.lr, s.epsilon))
    fns = {"minireptile": cases.meta_iteration(w, "maml", batched=True), "torch": ref.step}
    ts = measure(fns, mode)
    for f in fns:
        rep.row("torch", f"sine maml {f} k={s.k} n={s.meta_batch} (create_graph)"
                if f == "torch" else f"sine maml {f} k={s.k} n={s.meta_batch} (batched)",
                ts[f], threads=tthreads if f == "torch" else None)
    rep.ratio(f"sine maml k={s.k} n={s.meta_batch}: PyTorch / minireptile", ts["torch"],
              ts["minireptile"])

    w, x, y, xq = eval_workload(mode)
    s = w.setting
    ref = tensors(torch_ref.ConvEvaluate(torch_ref.conv_params(s.classes, 1, 64, 256), x, y,
                                         xq, 2, False, s.lr, EVAL_ITERS))
    eval_rows(rep, "torch", {"minireptile batched": eval_minireptile(w, x, y, xq),
                             "torch loop": ref.step}, len(x), mode, "PyTorch loop",
              tthreads)

    if TORCH_MINIIMAGENET[mode]:
        conv_case("miniimagenet", 1, True, 1152, 32, True)
    else:
        rep.note("torch: Mini-ImageNet skipped in --quick (about a minute per PyTorch round)")


def _jax_threads(n):
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


def _first_call(fn):
    """Seconds of fn's first call: jax.jit's tracing and compilation, and one run."""
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def case_jax(rep, mode):
    """minireptile against the same meta-iterations in JAX, each one jitted function, in
    interleaved rounds; the first call, which compiles, is timed apart (compile_s)."""
    device = backend.device()
    if "jax" not in sys.modules and device == "cpu":
        _jax_threads(blas_threads())
    try:
        import jax
    except ImportError as exc:
        rep.note(f"jax case skipped: JAX is not installed ({exc})")
        return
    from bench import jax_ref
    if device == "cuda" and jax.default_backend() != "gpu":
        rep.note(f"jax case skipped: JAX has no GPU backend here ({jax.default_backend()})")
        return
    jthreads = int(os.environ.get("PJRT_NPROC", os.cpu_count())) if device == "cpu" else "-"
    rep.note(f"JAX {jax.__version__}, backend {jax.default_backend()}, {jthreads} threads "
             f"(PJRT_NPROC={os.environ.get('PJRT_NPROC', '')!r}, "
             f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}); compile_s = the first call "
             f"(trace, compile, one run), outside the timed rounds")

    def timed(name, what, fns, ratios):
        """Rows of minireptile and the JAX forms; ratios {name: JAX form}, each / minireptile."""
        compile_s = {f: _first_call(fn) for f, fn in fns.items() if f.startswith("jax")}
        ts = measure(fns, mode)
        for f in fns:
            extra = {"compile_s": compile_s[f]} if f in compile_s else {}
            rep.row("jax", f"{name} {f} {what}", ts[f],
                    threads=jthreads if f in compile_s else None, **extra)
        for ratio, f in ratios.items():
            rep.ratio(ratio, ts[f], ts["minireptile batched"])

    def conv_case(name, stride, pool):
        w = cases.workload(name)
        s = w.setting
        x = np.stack([b[0] for b in w.host_batches], axis=1)        # (n, k, B, H, W, C)
        y = np.stack([b[1] for b in w.host_batches], axis=1)        # (n, k, B)
        params = jax_ref.conv_params(w.model, backend.to_host(w.theta))
        ref = jax_ref.ConvReptile(params, x, y, stride, pool, s.lr, s.epsilon)
        timed(name, f"reptile k={s.k} n={s.meta_batch} B={s.inner_batch}",
              {"minireptile batched": cases.meta_iteration(w, "reptile", batched=True),
               "jax vmap": ref.vmap, "jax loop": ref.loop},
              {f"{name} reptile: JAX vmap / minireptile": "jax vmap",
               f"{name} reptile: JAX loop / minireptile": "jax loop"})

    conv_case("omniglot", 2, False)

    w = cases.workload("sine")
    s = w.setting
    (xs, ys), (xt, yt) = w.host_batches[0], w.host_test
    ref = jax_ref.SineMAML(jax_ref.mlp_params(w.model, backend.to_host(w.theta)),
                           *(np.ascontiguousarray(a, np.float32) for a in (xs, ys, xt, yt)),
                           s.k, s.lr, s.epsilon)
    timed("sine", f"maml k={s.k} n={s.meta_batch}",
          {"minireptile batched": cases.meta_iteration(w, "maml", batched=True),
           "jax vmap": ref.step}, {f"sine maml k={s.k} n={s.meta_batch}: JAX / minireptile":
                                   "jax vmap"})

    w, x, y, xq = eval_workload(mode)
    s = w.setting
    ref = jax_ref.ConvEvaluate(jax_ref.conv_params(w.model, backend.to_host(w.theta)), x, y,
                               xq, 2, False, s.lr, EVAL_ITERS)
    rep.note(f"jax omniglot eval: compile_s {_first_call(ref.step):.2f} (first call, "
             f"{len(x)} tasks)")
    eval_rows(rep, "jax", {"minireptile batched": eval_minireptile(w, x, y, xq),
                           "jax loop": ref.step}, len(x), mode, "JAX", jthreads)

    if JAX_MINIIMAGENET[mode]:
        conv_case("miniimagenet", 1, True)
    else:
        rep.note("jax: Mini-ImageNet skipped in --quick (its jax.jit compile alone takes "
                 "tens of seconds)")


def peak_rss():
    """Peak resident memory of this process in bytes.

    VmHWM of /proc/self/status where there is one: getrusage's ru_maxrss is carried over
    exec on Linux, so a child started by a large parent would report the parent's peak.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def child_inner_steps(cfg, mode):
    """Run in a fresh process: one configuration's time and peak memory, as one JSON line."""
    w = cases.workload(cfg["model"], k=cfg["k"])
    fn = cases.meta_iteration(w, cfg["algo"], batched=True, reuse=cfg.get("reuse", True))
    if backend.device() == "cuda":
        import cupy
        pool = cupy.get_default_memory_pool()
        base = pool.total_bytes()
        ts = measure({"x": fn}, mode)["x"]
        peak = pool.total_bytes()          # the pool keeps what it took: its high-water mark
    else:
        base = peak_rss()
        ts = measure({"x": fn}, mode)["x"]
        peak = peak_rss()
    print(json.dumps({"times": ts, "peak_mb": peak / 2 ** 20, "base_mb": base / 2 ** 20}))


INNER_RUNS = [(algo, {"algo": algo}) for algo in cases.ALGOS] + [
    ("maml-recompute", {"algo": "maml", "reuse": False})]      # exact MAML, memory O(k P)


def case_inner_steps(rep, mode, args):
    what = "CuPy pool high-water mark" if backend.device() == "cuda" else "peak RSS"
    rep.note(f"inner_steps: each row in a fresh process; peak_mb = {what} of the process, "
             f"base_mb = the same before the first meta-iteration (model, data, imports)")
    rep.note("inner_steps: maml keeps every inner step's passes for its Hessian-vector "
             "product (memory O(k x activations)); maml-recompute keeps phi_0..phi_{k-1} "
             "only and recomputes them (memory O(k P)); see meta.maml_gradient")
    for name in INNER_MODELS[mode]:
        for label, run in INNER_RUNS:
            for k in INNER_KS[mode]:
                cfg = {"model": name, "k": k, **run}
                cmd = [sys.executable, os.path.abspath(__file__), "--child", json.dumps(cfg),
                       "--device", args.device] + (["--quick"] if args.quick else [])
                cmd += ["--threads", str(blas_threads())]
                if args.budget:
                    cmd += ["--budget", str(args.budget)]
                out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
                if out.returncode != 0:
                    rep.note(f"inner_steps {cfg} failed: {out.stderr.strip().splitlines()[-1]}")
                    continue
                res = json.loads(out.stdout.strip().splitlines()[-1])
                s = cases.SETTINGS[name]
                rep.row("inner_steps", f"{name} {label} k={k} n={s.meta_batch}", res["times"],
                        peak_mb=res["peak_mb"], base_mb=res["base_mb"],
                        delta_mb=res["peak_mb"] - res["base_mb"])


# -- main --------------------------------------------------------------------------------
def write_json(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1)
        f.write("\n")
    os.replace(tmp, path)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu", choices=backend.DEVICES)
    ap.add_argument("--quick", action="store_true", help="a short run (under 2 minutes)")
    ap.add_argument("--only", default="", help="one case or several, comma-separated: "
                    + ", ".join(CASES))
    ap.add_argument("--threads", type=int, default=0,
                    help="CPU cores used by each side: minireptile's task workers, the large "
                         "GEMM's BLAS threads and PyTorch's threads (default: "
                         "$MINIREPTILE_THREADS or 1)")
    ap.add_argument("--budget", type=float, default=0,
                    help="timed seconds per measurement (default: 5, or 1 with --quick)")
    ap.add_argument("--out", default="", help="results file (default bench/results/...)")
    ap.add_argument("--child", default="", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    mode = "quick" if args.quick else "full"
    if args.budget:
        BUDGET_S[mode] = args.budget
    try:
        backend.set_backend(args.device, DTYPE)
        backend.set_threads(blas_threads())     # N task workers, one BLAS thread each
    except backend.BackendError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    if args.child:
        child_inner_steps(json.loads(args.child), mode)
        return 0
    only = [c for c in args.only.split(",") if c] or list(CASES)
    unknown = set(only) - set(CASES)
    if unknown:
        print(f"bench: unknown case(s) {', '.join(sorted(unknown))}; expected "
              f"{', '.join(CASES)}", file=sys.stderr)
        return 2
    short, info = machine(args.device)
    threads = blas_threads() if args.device == "cpu" else "-"
    rep = Report(args.device, threads)
    print(f"minireptile bench: {mode}, device {args.device} ({info.get('gpu', info['cpu'])}), "
          f"{DTYPE}, {threads} threads, cases {', '.join(only)}", flush=True)
    start = time.time()
    runners = {"meta_step": lambda: case_meta_step(rep, mode),
               "inner_steps": lambda: case_inner_steps(rep, mode, args),
               "hvp": lambda: case_hvp(rep, mode),
               "efficiency": lambda: case_efficiency(rep, mode),
               "torch": lambda: case_torch(rep, mode),
               "jax": lambda: case_jax(rep, mode)}
    command = "python bench/run.py " + " ".join(argv if argv is not None else sys.argv[1:])
    suffix = (f"-t{threads}" if args.device == "cpu" else "") + ("-quick" if args.quick else "")
    path = args.out or os.path.join(ROOT, "bench", "results",
                                    f"{short}-{args.device}{suffix}.json")

    def save(done):                # after every case, so a run cut short keeps its rows
        write_json(path, {"command": command.strip(), "mode": mode, "complete": done,
                          "machine": info, "load_average": os.getloadavg(),
                          "elapsed_s": time.time() - start,
                          "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "settings": {
                              "budget_s": BUDGET_S[mode], "min_repeats": MIN_REPEATS[mode],
                              "gemm_n": GEMM_N[args.device], "dtype": DTYPE},
                          "rows": rep.rows, "ratios": rep.ratios, "notes": rep.notes,
                          "table": rep.markdown()})

    for name in only:
        print(f"[{name}]", flush=True)
        try:
            runners[name]()
        except Exception as exc:       # one broken case must not lose the others' results
            rep.note(f"{name} failed: {type(exc).__name__}: {exc}")
        save(False)
    save(True)
    print()
    print(rep.markdown())
    print(f"\nwrote {os.path.relpath(path)} ({time.time() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
