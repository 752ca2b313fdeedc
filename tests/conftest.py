"""Shared fixtures: ``xp`` runs a test on NumPy and, where a GPU is visible, on CuPy."""
import numpy as np
import pytest


def _cupy_or_reason():
    """(cupy, None) when CuPy imports and sees a GPU, else (None, why not)."""
    try:
        import cupy
    except ImportError:
        return None, "CuPy is not installed"
    try:
        if cupy.cuda.runtime.getDeviceCount() == 0:
            return None, "CuPy sees no GPU"
    except Exception as exc:  # no driver, no device
        return None, f"CuPy sees no GPU ({type(exc).__name__})"
    return cupy, None


@pytest.fixture(params=["numpy", "cupy"])
def xp(request):
    """The array module under test: numpy, then cupy (skipped without CuPy and a GPU).

    Tests generate inputs on the host with NumPy and move them with ``xp.asarray``, so both
    backends see the same numbers and CuPy's results can be compared with NumPy's.
    """
    if request.param == "numpy":
        return np
    cupy, reason = _cupy_or_reason()
    if cupy is None:
        pytest.skip(reason)
    return cupy


@pytest.fixture
def rng():
    """A seeded host generator (fresh per test, so tests do not depend on their order)."""
    return np.random.default_rng(1234)
