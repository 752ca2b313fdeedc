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
