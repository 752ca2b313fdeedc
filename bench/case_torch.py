"""Case ``torch``: minireptile against the same work in PyTorch, in interleaved rounds.

The PyTorch references (``bench/torch_ref.py``) are written as a PyTorch user would write
them and start from the same data. Timed, each against minireptile's batched form (and its
loop): the Omniglot Reptile meta-iteration (PyTorch as a loop over tasks and under
``torch.func.vmap``); exact MAML on the sine MLP (PyTorch with ``create_graph=True``);
few-shot evaluation on Omniglot, ms per task (50 Adam steps on a 5-way 1-shot task, then
the 5 query images); and, in the full run, the Mini-ImageNet Reptile meta-iteration.
PyTorch gets ``--threads`` threads. Skipped, with a note, when ``import torch`` fails.
"""
import numpy as np

from bench import cases
from bench.common import (EVAL_TASKS, TORCH_MINIIMAGENET, blas_threads, eval_rows,
                          measure)
from minireptile import backend


def run(rep, mode, args):
    """All PyTorch comparisons, or a note saying why they were skipped."""
    try:
        import torch
    except ImportError as exc:
        rep.note(f"torch case skipped: PyTorch is not installed ({exc})")
        return
    device = backend.device()
    torch.set_num_threads(blas_threads())
    tthreads = torch.get_num_threads() if device == "cpu" else "-"
    rep.note(f"PyTorch {torch.__version__}, {tthreads} threads, device {device}")
    conv_reptile(rep, mode, tthreads, "omniglot", (2, False, 256, 64))
    sine_maml(rep, mode, tthreads)
    evaluation(rep, mode, tthreads)
    if TORCH_MINIIMAGENET[mode]:
        conv_reptile(rep, mode, tthreads, "miniimagenet", (1, True, 1152, 32))
    else:
        rep.note("torch: Mini-ImageNet skipped in --quick (about a minute per PyTorch round)")


def on_device(obj):
    """Move a reference's tensors (x, y, xq, data, theta) to the GPU when running there."""
    device = backend.device()
    if device == "cuda":
        for attr in ("x", "y", "xq"):
            if hasattr(obj, attr):
                setattr(obj, attr, getattr(obj, attr).to(device))
        if hasattr(obj, "data"):
            obj.data = [a.to(device) for a in obj.data]
        obj.theta = [p.detach().to(device).requires_grad_(p.requires_grad)
                     for p in obj.theta]
    return obj


def conv_reptile(rep, mode, tthreads, name, net):
    """The CNN's Reptile meta-iteration; net: (stride, pool, head features, filters)."""
    from bench import torch_ref
    stride, pool, head, filters = net
    w = cases.workload(name)
    s = w.setting
    x = np.stack([b[0] for b in w.host_batches], axis=1)        # (n, k, B, H, W, C)
    y = np.stack([b[1] for b in w.host_batches], axis=1)        # (n, k, B)
    ref = on_device(torch_ref.ConvReptile(x, y, s.classes, filters, stride, pool, head,
                                          s.lr, s.epsilon))
    fns = {"minireptile batched": cases.meta_iteration(w, "reptile", batched=True),
           "minireptile loop": cases.meta_iteration(w, "reptile", batched=False),
           "torch loop": ref.loop, "torch vmap": ref.vmap}
    ts = measure(fns, mode)
    for f in fns:
        rep.row("torch", f"{name} reptile {f} k={s.k} n={s.meta_batch} B={s.inner_batch}",
                ts[f], threads=tthreads if f.startswith("torch") else None)
    rep.ratio(f"{name} reptile: PyTorch loop / minireptile", ts["torch loop"],
              ts["minireptile batched"])
    rep.ratio(f"{name} reptile: PyTorch loop / minireptile loop", ts["torch loop"],
              ts["minireptile loop"])
    rep.ratio(f"{name} reptile: PyTorch vmap / minireptile", ts["torch vmap"],
              ts["minireptile batched"])


def sine_maml(rep, mode, tthreads):
    """Exact MAML on the sine MLP: minireptile batched against PyTorch's create_graph."""
    from bench import torch_ref
    w = cases.workload("sine")
    s = w.setting
    (xs, ys), (xt, yt) = w.host_batches[0], w.host_test
    ref = on_device(torch_ref.SineMAML(*(np.ascontiguousarray(a, np.float32)
                                         for a in (xs, ys, xt, yt)), s.k, s.lr, s.epsilon))
    fns = {"minireptile": cases.meta_iteration(w, "maml", batched=True), "torch": ref.step}
    ts = measure(fns, mode)
    rep.row("torch", f"sine maml minireptile k={s.k} n={s.meta_batch} (batched)",
            ts["minireptile"])
    rep.row("torch", f"sine maml torch k={s.k} n={s.meta_batch} (create_graph)", ts["torch"],
            threads=tthreads)
    rep.ratio(f"sine maml k={s.k} n={s.meta_batch}: PyTorch / minireptile", ts["torch"],
              ts["minireptile"])


def evaluation(rep, mode, tthreads):
    """Few-shot evaluation on Omniglot: minireptile's batched pass against a PyTorch loop."""
    from bench import torch_ref
    w, x, y, xq = cases.eval_workload(EVAL_TASKS[mode])
    s = w.setting
    ref = on_device(torch_ref.ConvEvaluate(torch_ref.conv_params(s.classes, 1, 64, 256), x,
                                           y, xq, 2, False, s.lr, cases.EVAL_ITERS))
    eval_rows(rep, "torch", {"minireptile batched": cases.evaluation(w, x, y, xq),
                             "torch loop": ref.step}, len(x), mode, "PyTorch loop", tthreads)
