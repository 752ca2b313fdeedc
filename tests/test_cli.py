"""`minireptile gradcheck`: prints its table, exits 0 when all pass and non-zero when one fails."""
import sys

import numpy as np
import pytest

from minireptile import backend, layers
from minireptile.cli import main


@pytest.fixture(autouse=True)
def fresh_backend(monkeypatch):
    """The command selects a backend (float64); undo it after each test."""
    monkeypatch.setattr(backend, "_state", {"device": None, "dtype": np.float32})
    monkeypatch.delenv("MINIREPTILE_DEVICE", raising=False)


def _rows(out):
    """The table's rows as (component, check, result) from the command's output."""
    rows = []
    for line in out.splitlines():
        if line.endswith((" pass", " FAIL")):
            head, result = line.rsplit(None, 1)
            rows.append((head, result))
    return rows


def test_gradcheck_mlp_passes(capsys):
    assert main(["gradcheck", "--model", "mlp", "--seed", "1"]) == 0
    out = capsys.readouterr().out
    assert "max rel err" in out.splitlines()[1]
    rows = _rows(out)
    assert rows and all(result == "pass" for _, result in rows)
    text = "\n".join(head for head, _ in rows)
    for component in ("Linear(4,5)", "ReLU", "Tanh", "MSE", "SoftmaxCrossEntropy",
                      "mlp(1-64-64-1)", "T=(4,)"):
        assert component in text
    for check in ("backward", "rforward", "rbackward", "hvp", "symmetry", "batched == per task"):
        assert check in text
    assert f"{len(rows)} checks, 0 failed" in out
    assert backend.dtype() is np.float64                        # gradcheck is always float64


def test_gradcheck_fails_on_a_wrong_backward(monkeypatch, capsys):
    """A Linear backward that is off by 1% fails the backward and model rows: exit 1."""
    right = layers.Linear.backward

    def wrong(self, p, x, dy, need_dx=True):
        dx, dw = right(self, p, x, dy, need_dx)
        return dx, {"w": 1.01 * dw["w"], "b": dw["b"]}

    monkeypatch.setattr(layers.Linear, "backward", wrong)
    assert main(["gradcheck", "--model", "mlp"]) == 1
    failed = [head for head, result in _rows(capsys.readouterr().out) if result == "FAIL"]
    assert any("Linear(4,5)" in h and "backward" in h for h in failed)
    assert any(h.startswith("mlp(") and " grad" in h for h in failed)


def test_gradcheck_cuda_without_cupy_is_one_line(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "cupy", None)
    assert main(["gradcheck", "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("minireptile: error:") and err.count("\n") == 1


def test_gradcheck_on_cuda(xp, capsys):
    """On a GPU the same checks run with CuPy arrays and all pass."""
    if xp is np:
        pytest.skip("the CPU run is test_gradcheck_mlp_passes")
    assert main(["gradcheck", "--model", "mlp", "--device", "cuda"]) == 0
    out = capsys.readouterr().out
    assert "on cuda" in out and _rows(out) and "FAIL" not in out


def test_gradcheck_help_names_the_flags(capsys):
    with pytest.raises(SystemExit) as info:
        main(["gradcheck", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--model", "--device", "--seed", "omniglot", "miniimagenet"):
        assert flag in out
