"""NumPy/CuPy selection, dtype, the run's random generator, host<->device transfer.

This is the only module that imports cupy. Library code takes its array module
from its inputs (``xp = get_xp(x)``); only code that *creates* arrays (parameter
initialisation, data loading) asks for the selected backend with ``xp()``.

The device is chosen once, at the edge: ``--device cuda`` on the command line or
``MINIREPTILE_DEVICE=cuda`` in the environment; NumPy (CPU) is the default.
"""
import os

import numpy as np

from .errors import UserError

DEVICES = ("cpu", "cuda")


def _keep_freed_memory():
    """Ask glibc to keep large freed blocks instead of returning them to the OS.

    Every layer pass allocates arrays of a few MB; by default glibc maps and unmaps each one,
    and the page faults of touching fresh pages cost about as much as the arithmetic
    (measured: 1.8x faster gradients of the Omniglot CNN at batch 10). Same effect as
    MALLOC_MMAP_THRESHOLD_=32M MALLOC_TRIM_THRESHOLD_=4G; a no-op outside glibc.
    """
    try:
        import ctypes
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 32 << 20)          # M_MMAP_THRESHOLD
        libc.mallopt(-1, 1 << 30)           # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass


_keep_freed_memory()
_state = {"device": None, "dtype": np.float32, "workers": 1}


class BackendError(UserError):
    """The requested device cannot be used (one-line message for the CLI)."""


def _cupy():
    try:
        import cupy
    except ImportError as exc:
        raise BackendError("--device cuda needs CuPy: pip install 'minireptile[cuda]' "
                           f"(import failed: {exc})") from None
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # CUDA driver missing or broken
        raise BackendError(f"--device cuda: no usable CUDA device ({exc})") from None
    if n == 0:
        raise BackendError("--device cuda: CuPy is installed but no GPU is visible")
    return cupy


def set_backend(device=None, dtype="float32"):
    """Select the device ('cpu' or 'cuda'; None reads MINIREPTILE_DEVICE) and dtype.

    Raises BackendError with a one-line message when CUDA is asked for and CuPy or a
    GPU is missing.
    """
    device = device or os.environ.get("MINIREPTILE_DEVICE") or "cpu"
    if device not in DEVICES:
        raise BackendError(f"unknown device {device!r}; expected one of {', '.join(DEVICES)}")
    if device == "cuda":
        _cupy()
    if np.dtype(dtype) not in (np.float32, np.float64):
        raise BackendError(f"unsupported dtype {dtype!r}; expected float32 or float64")
    _state["device"], _state["dtype"] = device, np.dtype(dtype).type
    return device


def set_threads(n):
    """Run the CPU's work on n threads: n workers over the task axis, one BLAS thread each.

    The few-shot models' matrix products are small, and OpenBLAS's own threads spin while
    they wait: with another process on the cores, two BLAS threads made a meta-iteration 13
    times slower than one. So BLAS gets one thread, and ``map_tasks`` spreads the T tasks of
    a batched call over n Python threads instead (NumPy releases the GIL in its loops).
    """
    _state["workers"] = max(1, int(n))
    set_blas_threads(1)


def set_blas_threads(n):
    """Use n threads in the BLAS that NumPy loaded (OpenBLAS); returns whether it could.

    NumPy's OpenBLAS reads OPENBLAS_NUM_THREADS only when it loads, so this calls its
    setter, found among the process's mapped libraries (Linux).
    """
    import ctypes
    try:
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if "openblas" in line.lower()}
    except OSError:
        return False
    for path in paths:
        lib = ctypes.CDLL(path)
        for name in ("scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads",
                     "openblas_set_num_threads64_", "openblas_set_num_threads"):
            if hasattr(lib, name):
                getattr(lib, name)(int(n))
                return True
    return False


CHUNK_VALUES = 1 << 16     # input values per chunk of tasks: keeps a chunk's activations in cache


def map_tasks(fn, theta, *arrays):
    """fn(theta, *arrays) computed chunk by chunk along the leading task axis.

    On the CPU, with theta of shape (T, ..., P), the T tasks are cut into chunks of at most
    CHUNK_VALUES input values (at least one task; and one chunk per worker at least, unless
    the whole call is too small to be worth a thread) and the chunks run on the worker
    threads of ``set_threads``; the results (an array or a tuple of arrays with the task
    axis first) are concatenated. Tasks are independent, so this gives the same numbers as
    one call. On the GPU, or for one task, it is one call.

    The tasks are the unit of work: 5 tasks on 2 workers run 3 + 2. Splitting each task's
    examples over the workers instead, with batch norm's statistics summed across them at a
    barrier (synchronised batch norm), was measured slower: 2.1x on the Omniglot
    meta-iteration at 2 threads (24 barriers per gradient, 0.24 ms each), and even without
    the barriers two 5-task halves took as long as the 3 + 2 split (11.9 ms a gradient).
    """
    workers = _state.get("workers", 1)
    if theta.ndim < 2 or theta.shape[0] < 2 or get_xp(theta) is not np:
        return fn(theta, *arrays)
    t = theta.shape[0]
    values = t * max(1, arrays[0][0].size) if arrays else t
    chunks = min(t, -(-values // CHUNK_VALUES))
    if values >= CHUNK_VALUES // 16:                 # worth a thread: not the sine MLP's
        chunks = max(chunks, min(workers, t))
    if chunks < 2:
        return fn(theta, *arrays)
    bounds = np.linspace(0, t, min(chunks, t) + 1).astype(int)
    errors = np.geterr()                     # np.errstate is per thread: carry the caller's

    def chunk(ab):
        with np.errstate(**errors):
            return fn(theta[ab[0]:ab[1]], *(a[ab[0]:ab[1]] for a in arrays))
    parts = list(_pool(workers).map(chunk, zip(bounds[:-1], bounds[1:])))
    if isinstance(parts[0], tuple):
        return tuple(np.concatenate(column, axis=0) for column in zip(*parts))
    return np.concatenate(parts, axis=0)


BLOCK_VALUES = 1 << 15     # values per block of an element-wise chain: its arrays stay in L2
BLOCKS_FROM = 1 << 21      # below this many values the arrays stay in the last-level cache


def map_blocks(fn, shape):
    """fn(index) for blocks that cover an array of the given shape, on the worker threads.

    An element-wise chain (Adam's update) run over the whole (T, P) arrays would stream them
    through memory once per operation; run block by block, each block's arrays stay in cache
    between operations, and the blocks run on the ``set_threads`` workers (NumPy's
    ufuncs release the GIL). index: a tuple of slices into arrays of that shape. Arrays
    under BLOCKS_FROM values (a meta-batch's), and any on the GPU, get one call.
    (Measured on a loaded 2-core machine, 50 tasks x 113,221 float32 parameters: Adam's step
    35-40 ms against 49-63 ms unblocked on one thread, 12.5 ms against 20 ms on two; with 5
    tasks 0.8 ms against 0.7, hence BLOCKS_FROM.)
    """
    if np.prod(shape) < BLOCKS_FROM or _state["device"] == "cuda":
        fn((Ellipsis,))
        return
    rows, cols = int(np.prod(shape[:-1])), shape[-1]
    flat = [(r, c, min(c + BLOCK_VALUES, cols)) for r in range(rows)
            for c in range(0, cols, BLOCK_VALUES)]
    lead = shape[:-1]

    def run(block):
        r, c0, c1 = block
        fn(np.unravel_index(r, lead) + (slice(c0, c1),) if lead else (slice(c0, c1),))
    workers = _state.get("workers", 1)
    if workers == 1:
        for block in flat:
            run(block)
    else:
        list(_pool(workers).map(run, flat))


def _pool(workers):
    """A thread pool of `workers` threads, made once (1 worker runs chunks in order)."""
    if workers == 1:
        return _Serial
    pool = _state.get("pool")
    if pool is None or pool._max_workers != workers:
        from concurrent.futures import ThreadPoolExecutor
        pool = _state["pool"] = ThreadPoolExecutor(workers, thread_name_prefix="minireptile")
    return pool


class _Serial:
    map = staticmethod(map)


def device():
    """The selected device name, selecting the default on first use."""
    if _state["device"] is None:
        set_backend()
    return _state["device"]


def dtype():
    """The selected floating-point dtype (float32 unless asked otherwise)."""
    return _state["dtype"]


def xp():
    """The array module of the selected device: numpy or cupy."""
    return _cupy() if device() == "cuda" else np


def get_xp(*arrays):
    """The array module the given arrays live in (numpy for host arrays)."""
    for a in arrays:
        if type(a).__module__.startswith("cupy"):
            import cupy
            return cupy
    return np


def to_device(a, dtype=None):
    """Copy a host array to the selected device (a no-op on the CPU)."""
    a = np.asarray(a) if dtype is None else np.asarray(a, dtype=dtype)
    return xp().asarray(a)


def to_host(a):
    """A NumPy copy of a (device) array; host arrays are returned unchanged."""
    return a.get() if hasattr(a, "get") and not isinstance(a, np.ndarray) else np.asarray(a)


def synchronize():
    """Wait for queued device work (call before reading a clock on the GPU)."""
    if _state["device"] == "cuda":
        import cupy
        cupy.cuda.Stream.null.synchronize()


def available_memory():
    """Bytes the selected device can still allocate: the GPU's free memory, or the host's
    MemAvailable (Linux; unbounded where it cannot be read)."""
    if device() == "cuda":
        return _cupy().cuda.runtime.memGetInfo()[0]
    try:
        with open("/proc/meminfo") as f:
            fields = dict(line.split(":", 1) for line in f)
        return int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return float("inf")


def make_rng(seed):
    """The run's one host random generator; both backends see the same numbers."""
    return np.random.default_rng(seed)
