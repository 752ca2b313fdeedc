"""The `minireptile` command: its command list, --version, --threads, signals, and `gradcheck`,
which prints its table and exits 0 when all pass and non-zero when one fails."""
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import minireptile
import minireptile.cli.data
from minireptile import backend, layers, models
from minireptile.cli import main

REPO = Path(__file__).resolve().parents[1]


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


def test_gradcheck_checks_meta_gradients_and_writes_json(tmp_path, capsys):
    """The meta rows: exact MAML for k = 1..3, FOMAML, Reptile, the Taylor ratios; --json."""
    out_json = tmp_path / "g.json"
    assert main(["gradcheck", "--model", "mlp", "--json", str(out_json)]) == 0
    rows = _rows(capsys.readouterr().out)
    text = "\n".join(head for head, _ in rows)
    for check in ("maml k=1", "maml k=3", "fomaml = -alpha g_k", "reptile = -alpha sum g_i",
                  "Taylor Eq. 25 (maml)", "Taylor Eq. 27 (reptile)"):
        assert check in text
    import json
    table = json.loads(out_json.read_text())
    assert len(table["rows"]) == len(rows) and all(r["passed"] for r in table["rows"])


def test_gradcheck_fails_on_a_wrong_hessian_vector_product(monkeypatch, capsys):
    """R-passes off by 1% (every hvp, recomputed or from kept passes) pass every first-order
    check but fail exact MAML's rows."""
    right = models.Sequential._rpasses
    monkeypatch.setattr(models.Sequential, "_rpasses", lambda self, *a: 1.01 * right(self, *a))
    assert main(["gradcheck", "--model", "mlp"]) == 1
    failed = [head for head, result in _rows(capsys.readouterr().out) if result == "FAIL"]
    assert any("maml k=1" in h for h in failed)
    assert not any("fomaml = " in h or "reptile = " in h for h in failed)   # first-order


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


# -- the command itself -------------------------------------------------------------------

def test_no_command_lists_the_commands(capsys):
    assert main([]) == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: minireptile")
    text = " ".join(err.split())                             # each command, then its help
    for command in ("gradcheck check gradients", "train meta-train", "pack pack Omniglot",
                    "info describe", "sine meta-learn sine-wave"):
        assert command in text


def test_no_command_from_the_shell():
    """What a new user sees first: `python -m minireptile` is the `minireptile` script."""
    run = subprocess.run([sys.executable, "-m", "minireptile"], capture_output=True, text=True)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert "COMMAND" in run.stderr and "train" in run.stderr and "pack" in run.stderr


def test_version_is_written_once(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out == f"minireptile {minireptile.__version__}\n"
    setup = subprocess.run([sys.executable, "setup.py", "--version"], cwd=REPO,
                           capture_output=True, text=True)
    assert setup.stdout.split()[-1] == minireptile.__version__, setup.stderr


@pytest.mark.parametrize("value", ["0", "-2"])
def test_threads_must_be_positive(value, capsys):
    assert main(["gradcheck", "--threads", value]) == 2
    err = capsys.readouterr().err
    assert err == f"minireptile: error: --threads {value}: give a positive number of threads\n"


@pytest.mark.parametrize("value", ["0", "two", "-1"])
def test_threads_environment_variable_must_be_positive(value, monkeypatch, capsys):
    monkeypatch.setenv("MINIREPTILE_THREADS", value)
    assert main(["gradcheck"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"minireptile: error: MINIREPTILE_THREADS='{value}'")
    assert err.count("\n") == 1


def _interrupt(args):
    raise KeyboardInterrupt


def _terminate_self(args):
    signal.raise_signal(signal.SIGTERM)          # its handler has run when this returns


class _TerminatedWhileFinalized:
    def __del__(self):                           # Python prints and drops what this raises
        signal.raise_signal(signal.SIGTERM)


def _terminate_inside_a_finalizer(args):
    _TerminatedWhileFinalized()                  # finalized at once: SIGTERM inside __del__


@pytest.mark.parametrize("stop,status,word", [(_interrupt, 130, "interrupted"),
                                              (_terminate_self, 143, "terminated"),
                                              (_terminate_inside_a_finalizer, 143, "terminated")],
                         ids=["ctrl-c", "sigterm", "sigterm-in-__del__"])
def test_ctrl_c_and_sigterm_end_a_command_alike(stop, status, word, monkeypatch, capsys):
    """SIGTERM unwinds as KeyboardInterrupt (so commands clean up) and exits 143, even when
    it lands in a __del__, where Python would drop it; the caller's SIGTERM handler is back
    afterwards."""
    caught = []
    previous = signal.signal(signal.SIGTERM, lambda *_: caught.append("outside main"))
    try:
        monkeypatch.setattr(minireptile.cli.data, "run_info", stop)
        assert main(["info", "x.h5"]) == status
        assert capsys.readouterr().err == f"minireptile: {word}\n" and not caught
        signal.raise_signal(signal.SIGTERM)
        assert caught == ["outside main"]
    finally:
        signal.signal(signal.SIGTERM, previous)
