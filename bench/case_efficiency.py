"""Case ``efficiency``: achieved FLOP/s of the Reptile meta-iteration / FLOP/s of a GEMM.

For each model of EFFICIENCY_MODELS, the batched Reptile meta-iteration and a large float32
matrix product (GEMM_N cubed, on all ``--threads`` cores: the machine's practical limit)
are timed in the same interleaved rounds. The meta-iteration's FLOPs are counted
analytically (``cases.meta_iteration_flops``: matrix products only, forward, dW and dX) and
printed as a note; the ratio is (flops / t_meta) / (gemm_flops / t_gemm).
"""
import statistics

import numpy as np

from bench import cases
from bench.common import EFFICIENCY_MODELS, GEMM_N, blas_threads, measure
from minireptile import backend, parallel


def gemm_fn(n):
    """A large float32 GEMM on all --threads cores: the machine's practical limit (OpenBLAS's
    own threads, which minireptile otherwise keeps at one per worker)."""
    a = backend.to_device(np.random.default_rng(0).random((n, n), dtype=np.float32))
    b = backend.to_device(np.random.default_rng(1).random((n, n), dtype=np.float32))

    def gemm():
        parallel.set_blas_threads(blas_threads())
        try:
            return a @ b
        finally:
            parallel.set_blas_threads(1)
    return gemm


def run(rep, mode, args):
    """Rows and the ratio of every model of EFFICIENCY_MODELS[mode]."""
    n = GEMM_N[backend.device()]
    for name in EFFICIENCY_MODELS[mode]:
        w = cases.workload(name)
        flops = cases.meta_iteration_flops(w, "reptile")
        rep.note(flop_count(w, flops))
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


def flop_count(w, flops):
    """The note that shows how the meta-iteration's FLOPs were counted."""
    s = w.setting
    per_grad = cases.gradient_flops(w.model, s.inner_batch)
    shapes = ", ".join(f"{lname} {m}x{k}x{nn}"
                       for lname, m, k, nn in cases.gemm_shapes(w.model, s.inner_batch))
    return (f"{w.name} Reptile meta-iteration: {flops / 1e9:.3f} GFLOP = n {s.meta_batch}"
            f" x k {s.k} x {per_grad / 1e6:.2f} MFLOP per gradient (matrix "
            f"products only: forward, dW, dX but the first layer's; forward GEMMs MxKxN "
            f"per task: {shapes})")
