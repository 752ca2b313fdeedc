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
_state = {"device": None, "dtype": np.float32}


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
    """Use n threads in the BLAS that NumPy loaded (OpenBLAS); returns whether it could.

    The few-shot models' matrix products are small: one thread per process is as fast on an
    idle 2-core machine and many times faster on a busy one, where OpenBLAS's threads spin
    against other processes. NumPy's OpenBLAS reads OPENBLAS_NUM_THREADS only when it loads,
    so this calls its setter, found among the process's mapped libraries (Linux).
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


def make_rng(seed):
    """The run's one host random generator; both backends see the same numbers."""
    return np.random.default_rng(seed)
