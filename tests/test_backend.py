"""The NumPy/CuPy switch: defaults, MINIREPTILE_DEVICE, and the one-line CUDA error."""
import sys

import numpy as np
import pytest

from minireptile import backend
from minireptile.backend import BackendError
from minireptile.errors import UserError


@pytest.fixture(autouse=True)
def fresh_backend(monkeypatch):
    """Each test starts unselected, with MINIREPTILE_DEVICE unset, and leaves no trace."""
    monkeypatch.setattr(backend, "_state", {"device": None, "dtype": np.float32})
    monkeypatch.delenv("MINIREPTILE_DEVICE", raising=False)


@pytest.fixture
def no_cupy(monkeypatch):
    """Make `import cupy` fail, as on a machine without CuPy."""
    monkeypatch.setitem(sys.modules, "cupy", None)


def test_defaults_are_numpy_and_float32():
    assert backend.device() == "cpu" and backend.xp() is np
    assert backend.dtype() is np.float32
    assert backend.to_device([1.0, 2.0], dtype=backend.dtype()).dtype == np.float32


def test_float64_on_request():
    backend.set_backend("cpu", dtype="float64")
    assert backend.dtype() is np.float64


def test_bad_dtype_and_device_name_what_is_expected():
    with pytest.raises(BackendError, match="expected float32 or float64"):
        backend.set_backend("cpu", dtype="float16")
    with pytest.raises(BackendError, match="unknown device 'tpu'; expected one of cpu, cuda"):
        backend.set_backend("tpu")


def test_cuda_without_cupy_is_a_one_line_error(no_cupy):
    with pytest.raises(BackendError) as info:
        backend.set_backend("cuda")
    message = str(info.value)
    assert "\n" not in message and "CuPy" in message and "--device cuda" in message
    assert isinstance(info.value, UserError)
    assert backend._state["device"] is None                     # nothing was selected


def test_cuda_really_missing_is_a_one_line_error():
    """The same without simulation, where this machine has no CuPy or no GPU."""
    try:
        import cupy
        if cupy.cuda.runtime.getDeviceCount() > 0:
            pytest.skip("CuPy and a GPU are present")
    except Exception:
        pass
    with pytest.raises(BackendError) as info:
        backend.set_backend("cuda")
    assert "\n" not in str(info.value) and "--device cuda" in str(info.value)


def test_environment_variable_is_read(monkeypatch, no_cupy):
    monkeypatch.setenv("MINIREPTILE_DEVICE", "cpu")
    assert backend.device() == "cpu"
    monkeypatch.setenv("MINIREPTILE_DEVICE", "cuda")
    with pytest.raises(BackendError, match="CuPy"):
        backend.set_backend()
    monkeypatch.setenv("MINIREPTILE_DEVICE", "gpu0")
    with pytest.raises(BackendError, match="'gpu0'"):
        backend.set_backend()


def test_explicit_device_overrides_the_environment(monkeypatch, no_cupy):
    monkeypatch.setenv("MINIREPTILE_DEVICE", "cuda")
    assert backend.set_backend("cpu") == "cpu" and backend.xp() is np


def test_get_xp_and_transfers(xp, rng):
    """Arrays report their module; host -> device -> host returns the same numbers."""
    host = rng.standard_normal((3, 2))
    dev = xp.asarray(host)
    assert backend.get_xp(dev) is xp and backend.get_xp(host, dev) is xp
    back = backend.to_host(dev)
    assert isinstance(back, np.ndarray)
    np.testing.assert_array_equal(back, host)


def test_make_rng_is_reproducible():
    a, b = backend.make_rng(5), backend.make_rng(5)
    np.testing.assert_array_equal(a.standard_normal(4), b.standard_normal(4))
    assert not np.array_equal(backend.make_rng(6).standard_normal(4),
                              backend.make_rng(5).standard_normal(4))
