"""The CPU scheduler: worker threads over a batched pass's tasks, one BLAS thread each.

How work is spread over the cores lives here and nowhere else; the math (``meta.py``,
``models.py``) never sees it. A batched pass runs T independent tasks (Reptile's meta-batch,
an evaluation's tasks); ``map_tasks`` cuts the T tasks into chunks and runs each chunk's
whole pass on a worker thread (NumPy releases the GIL in its loops), and the results are
concatenated in task order: the same numbers as one call, since the tasks never meet.

    set_threads(n)      n workers; BLAS gets one thread (threadpoolctl)
    map_tasks(fn, T)    fn(rows) for slices of range(T), on the workers
    map_blocks(fn, s)   an element-wise chain (Adam's step) block by block, cache-sized

Why one BLAS thread: the few-shot models' matrix products are small, and OpenBLAS's own
threads spin while they wait; with another process on the cores, two BLAS threads made a
meta-iteration 13 times slower than one. Why tasks and not examples: splitting each task's
examples over the workers, with batch norm's statistics summed across them at a barrier,
was measured 2.1x slower on the Omniglot meta-iteration (24 barriers per gradient).
On the GPU every call is one call: the device runs the tasks in parallel itself.
"""
import ctypes
import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from . import backend

CHUNK_VALUES = 1 << 16     # input values per chunk of tasks: keeps a chunk's activations in cache
BLOCK_VALUES = 1 << 15     # values per block of an element-wise chain: its arrays stay in L2
BLOCKS_FROM = 1 << 21      # below this many values the arrays stay in the last-level cache
_workers = {"n": 1, "pool": None}


def keep_freed_memory():
    """Ask glibc to keep large freed blocks instead of returning them to the OS.

    Every layer pass allocates arrays of a few MB; by default glibc maps and unmaps each one,
    and the page faults of touching fresh pages cost about as much as the arithmetic
    (measured: 1.8x faster gradients of the Omniglot CNN at batch 10). Same effect as
    MALLOC_MMAP_THRESHOLD_=32M MALLOC_TRIM_THRESHOLD_=4G; a no-op outside glibc.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 32 << 20)          # M_MMAP_THRESHOLD
        libc.mallopt(-1, 1 << 30)           # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass


keep_freed_memory()


def set_threads(n):
    """Run the CPU's work on n worker threads over the tasks, one BLAS thread each."""
    _workers["n"] = max(1, int(n))
    set_blas_threads(1)


def threads():
    """The number of worker threads (``set_threads``)."""
    return _workers["n"]


def set_blas_threads(n):
    """Use n threads in the BLAS libraries NumPy loaded (OpenBLAS, MKL, BLIS: threadpoolctl
    knows each, on every OS); returns whether one was found."""
    from threadpoolctl import threadpool_info, threadpool_limits
    threadpool_limits(limits=int(n), user_api="blas")
    return any(info["user_api"] == "blas" for info in threadpool_info())


def map_tasks(fn, tasks, values=1):
    """fn(rows) for slices rows of range(tasks) that cover it, results concatenated.

    fn returns an array, or a tuple of arrays, with the rows' tasks on the leading axis.
    values: input values per task (a task's images times their size): the tasks are cut into
    chunks of at most CHUNK_VALUES values (at least one task; and one chunk per worker at
    least, unless the whole call is too small to be worth a thread), which run on the
    ``set_threads`` workers. On the GPU, or for one chunk, it is one call fn(slice(0, T)).
    """
    n = _workers["n"]
    total = tasks * max(1, values)
    chunks = min(tasks, -(-total // CHUNK_VALUES))
    if total >= CHUNK_VALUES // 16:                 # worth a thread: not the sine MLP's
        chunks = max(chunks, min(n, tasks))
    if chunks < 2 or backend.device() == "cuda":
        return fn(slice(0, tasks))
    bounds = [round(i * tasks / chunks) for i in range(chunks + 1)]
    rows = [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:])]
    parts = list(_pool(n).map(fn, rows)) if n > 1 else [fn(r) for r in rows]
    xp = backend.get_xp(parts[0][0] if isinstance(parts[0], tuple) else parts[0])
    if isinstance(parts[0], tuple):
        return tuple(xp.concatenate(column, axis=0) for column in zip(*parts))
    return xp.concatenate(parts, axis=0)


def map_blocks(fn, shape):
    """fn(index) for blocks that cover an array of the given shape, one after another.

    An element-wise chain (Adam's update) run over the whole (T, P) arrays would stream them
    through memory once per operation; run block by block, each block's arrays stay in cache
    between operations. index: a tuple of slices into arrays of that shape. Arrays under
    BLOCKS_FROM values (a meta-batch's), and any on the GPU, get one call. (Measured on one
    thread, 50 tasks x 113,221 float32 parameters: Adam's step 35-40 ms against 49-63 ms
    unblocked.) The blocks run in the calling thread: ``map_tasks`` already gives every
    worker its own tasks.
    """
    if math.prod(shape) < BLOCKS_FROM or backend.device() == "cuda":
        fn((Ellipsis,))
        return
    cols = shape[-1]
    for lead in np.ndindex(*shape[:-1]):
        for c in range(0, cols, BLOCK_VALUES):
            fn(lead + (slice(c, min(c + BLOCK_VALUES, cols)),))


def _pool(n):
    """A thread pool of n threads, made once."""
    pool = _workers["pool"]
    if pool is None or pool._max_workers != n:
        pool = _workers["pool"] = ThreadPoolExecutor(n, thread_name_prefix="minireptile")
    return pool
