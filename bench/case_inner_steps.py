"""Case ``inner_steps``: time and peak memory of one meta-iteration for k inner steps.

Each configuration (model of INNER_MODELS, algorithm, k of INNER_KS) runs in a fresh
process, ``bench/run.py --child CONFIG``, so that its peak memory is its own: the batched
meta-iteration is timed as ``measure`` times it, and the process reports, as one JSON
line, the peak before the first meta-iteration (base_mb: model, data, imports) and after
the timing (peak_mb). The peak is the process's peak RSS (``VmHWM``) on the CPU and CuPy's
memory-pool high-water mark on the GPU. Exact MAML runs twice: ``maml`` keeps every inner
step's passes for its Hessian-vector product, ``maml-recompute`` recomputes them.
"""
import json
import os
import resource
import subprocess
import sys

from bench import cases
from bench.common import BENCH, INNER_KS, INNER_MODELS, ROOT, blas_threads, measure
from minireptile import backend

INNER_RUNS = [(algo, {"algo": algo}) for algo in cases.ALGOS] + [
    ("maml-recompute", {"algo": "maml", "reuse": False})]      # exact MAML, memory O(k P)


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


def child(cfg, mode):
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


def run(rep, mode, args):
    """A row per model, algorithm and k, each from its own process."""
    what = "CuPy pool high-water mark" if backend.device() == "cuda" else "peak RSS"
    rep.note(f"inner_steps: each row in a fresh process; peak_mb = {what} of the process, "
             f"base_mb = the same before the first meta-iteration (model, data, imports)")
    rep.note("inner_steps: maml keeps every inner step's passes for its Hessian-vector "
             "product (memory O(k x activations)); maml-recompute keeps phi_0..phi_{k-1} "
             "only and recomputes them (memory O(k P)); see meta.maml_gradient")
    for name in INNER_MODELS[mode]:
        for label, runs in INNER_RUNS:
            for k in INNER_KS[mode]:
                one_config(rep, args, label, {"model": name, "k": k, **runs})


def one_config(rep, args, label, cfg, case="inner_steps"):
    """Run one configuration in a child process and add its row to `case` (or a note if it
    failed)."""
    out = subprocess.run(child_command(cfg, args), capture_output=True, text=True, cwd=ROOT)
    if out.returncode != 0:
        rep.note(f"{case} {cfg} failed: {out.stderr.strip().splitlines()[-1]}")
        return
    res = json.loads(out.stdout.strip().splitlines()[-1])
    s = cases.SETTINGS[cfg["model"]]
    rep.row(case, f"{cfg['model']} {label} k={cfg['k']} n={s.meta_batch}",
            res["times"], peak_mb=res["peak_mb"], base_mb=res["base_mb"],
            delta_mb=res["peak_mb"] - res["base_mb"])


def child_command(cfg, args):
    """The command line of the child process: this run's device, mode, threads, budget."""
    cmd = [sys.executable, os.path.join(BENCH, "run.py"), "--child", json.dumps(cfg),
           "--device", args.device] + (["--quick"] if args.quick else [])
    cmd += ["--threads", str(blas_threads())]
    if args.budget:
        cmd += ["--budget", str(args.budget)]
    return cmd
