"""``minireptile reproduce``: every experiment end to end at the tiny budget, its files, its
tables, resuming; and the pieces (tables, intervals, the run locks, stopping a run early)
on their own.

No test asserts an accuracy: the tiny budget trains for a few iterations. The locks are held
by real second processes (``_holding``): an flock is per process.
"""
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from minireptile import checkpoint, files, reproduce
from minireptile.cli import build_parser, main
from minireptile.errors import UserError
from minireptile.reproduce import common, fig3, fig4, report

ROOT = Path(__file__).resolve().parents[1]
HOLD = """import os, sys, time
from minireptile import files
path, until, cap = sys.argv[1], sys.argv[2], float(sys.argv[3])
with files.locked(path):
    print("READY", flush=True)
    start = time.time()
    while not (until and os.path.exists(until)) and time.time() < start + cap:
        time.sleep(0.05)
    time.sleep(2 if until and os.path.exists(until) else 0)
    os._exit(0)                          # inside the block: only its death frees the lock
"""


def _holder_process(path, until="", cap=120):
    """A second process holding path's lock (``files.locked``) until the file `until`
    exists (then 2 s more) or cap seconds have passed, when it ends still holding it;
    returned once it holds it."""
    child = subprocess.Popen([sys.executable, "-c", HOLD, str(path), str(until), str(cap)],
                             env=dict(os.environ, PYTHONPATH=str(ROOT)),
                             stdout=subprocess.PIPE, text=True)
    ready = child.stdout.readline()
    if ready != "READY\n":
        child.kill()
        pytest.fail(f"the holder did not take the lock: {ready!r} {child.communicate()}")
    return child


@contextlib.contextmanager
def _holding(path, **kw):
    """_holder_process for the block; killed (if still running) and reaped after it."""
    child = _holder_process(path, **kw)
    try:
        yield child
    finally:
        child.kill()
        child.wait()


def _name(process):
    """How a lock names a process of this host."""
    return f"pid {process.pid} on {socket.gethostname()}"


def test_markdown_table_round_trip():
    text = "intro\n\n" + report.markdown_table(["a", "b|c"], [[1, "x | y"], [2.5, ""]])
    (rows,) = report.parse_tables(text)
    assert rows == [{"a": "1", "b|c": "x | y"}, {"a": "2.5", "b|c": ""}]


def test_parse_tables_refuses_a_broken_table():
    with pytest.raises(ValueError, match="separator"):
        report.parse_tables("| a | b |\n| 1 | 2 |\n")
    with pytest.raises(ValueError, match="cells"):
        report.parse_tables("| a | b |\n| --- | --- |\n| 1 |\n")


def test_intervals_decide_findings():
    assert report.combined(0.03, 0.04) == pytest.approx(0.05)
    assert report.compare((0.90, 0.01), (0.80, 0.01)) == "above"
    assert report.compare((0.80, 0.01), (0.90, 0.01)) == "below"
    assert report.compare((0.90, 0.05), (0.85, 0.05)) == "within"
    assert report.verdict(True, False) == "reproduced"
    assert report.verdict(False, False).startswith("not resolved")
    assert report.verdict(False, True).startswith("not reproduced")


def test_fig3_findings_read_the_paper_right():
    """Accuracies shaped like the paper's Figure 3 give 'reproduced' for every finding."""
    acc = {"g1": 0.3, "g2": 0.80, "g3": 0.85, "g4": 0.88, "sum2": 0.70, "sum3": 0.85,
           "sum4": 0.95, "mean2": 0.6, "mean3": 0.7, "mean4": 0.8}
    found = fig3.findings({n: (a, 0.01) for n, a in acc.items()})
    assert len(found) == 6 and all(f["verdict"] == "reproduced" for f in found), found


def test_fig4_findings_read_the_paper_right():
    """Accuracies shaped like the paper's Figure 4 (shared-tail cycling drops past k = 4 and
    B = 25, replacement less; Reptile rises, separate tail flat) give 'reproduced' and
    'met' throughout; a Reptile that drops at k = 6 gives 'not reproduced' for it."""
    b = dict(iters=(1, 2, 4, 6), batches=(10, 25, 50))
    shape = {"reptile": lambda k, B: 0.40 + 0.14 * min(k, 4),
             "separate": lambda k, B: 0.95,
             "replacement": lambda k, B: 0.95 if k <= 4 and B <= 25 else 0.85,
             "shared": lambda k, B: 0.95 if k <= 4 and B <= 25 else 0.75}
    runs = {f"{c}-k{k}-b{B}": {"curve": c, "k": k, "batch": B, "test": (shape[c](k, B), 0.01)}
            for c in shape for k, B in fig4.points(b) if not (c == "separate" and k < 2)}
    found = fig4.findings(runs, b)
    assert len(found) == 9 and all(f["verdict"] in ("reproduced", "met") for f in found), found
    runs["reptile-k6-b25"]["test"] = (0.80, 0.01)
    verdicts = [(f["claim"][:32], f["verdict"]) for f in fig4.findings(runs, b)]
    assert ("4a: Reptile does not degrade whe", "not reproduced (the opposite, beyond the "
            "95% intervals)") in verdicts, verdicts
    assert ("4a: separate-tail FOMAML does no", "reproduced") in verdicts


def test_fig4_points_share_the_corner():
    assert fig4.points(fig4.BUDGETS["quick"]) == [(4, 10), (2, 25), (4, 25), (6, 25), (4, 50)]
    assert len(fig3.CURVES) == 10


def test_the_lock_names_its_live_holder_and_frees_when_it_dies(tmp_path):
    """A second process asking for a held lock gets Busy naming the holder ("pid P on HOST",
    one line); once the holder is killed (SIGKILL: no clean-up ran) the lock is free at
    once, with no stale lock to break."""
    path = str(tmp_path / "run")
    child = _holder_process(path)
    try:
        with pytest.raises(files.Busy) as info:
            with files.locked(path):
                pytest.fail("the lock of a live process was taken")
        assert info.value.holder == _name(child) == files.holder(path)
        assert isinstance(info.value, UserError) and "\n" not in str(info.value)
        assert f"{path}: {_name(child)} is writing it" in str(info.value)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert files.holder(path) is None
    with files.locked(path):
        assert (tmp_path / "run.lock").read_text() == files.process_name()


def test_the_lock_is_reentrant_in_its_process_and_held_until_the_outer_block_ends(tmp_path):
    """train.run inside a reproduce run takes the lock its session holds: held once more;
    another process sees it held until the outer block ends, then free."""
    path = str(tmp_path / "run")
    ask = [sys.executable, "-c", "import sys; from minireptile import files; "
                                 "print(files.holder(sys.argv[1]))", path]

    def seen_from_another_process():
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        return subprocess.run(ask, env=env, capture_output=True, text=True,
                              check=True).stdout.strip()
    with files.locked(path):
        with files.locked(path):
            assert files.holder(path) is None                    # ours: not a conflict
        assert seen_from_another_process() == files.process_name()
    assert seen_from_another_process() == "None"


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="needs Linux's /proc")
def test_a_child_that_ended_unreaped_holds_no_lock(tmp_path):
    """A --jobs process that dies is its parent's zombie until waited for: not a holder."""
    path = str(tmp_path / "run")
    child = _holder_process(path, cap=0)                  # takes the lock, then ends with it
    stat, deadline = Path(f"/proc/{child.pid}/stat"), time.time() + 60
    while stat.read_text().rpartition(")")[2].split()[0] != "Z" and time.time() < deadline:
        time.sleep(0.05)
    try:
        assert stat.read_text().rpartition(")")[2].split()[0] == "Z"    # ended, not reaped
        assert files.holder(path) is None
        assert child.wait(timeout=60) == 0              # reaped only now
    finally:
        child.wait()


def test_a_run_folder_another_process_holds_is_not_trained_twice(tmp_path, capsys):
    """`minireptile train --checkpoint F` while another process holds F (a reproduce run, a
    train started by hand): one line naming it, exit 2, nothing written in F."""
    folder = tmp_path / "run"
    with _holding(folder) as child:
        code = main(["train", "omniglot", "--checkpoint", str(folder), "--meta-iters", "1"])
    err = capsys.readouterr().err
    assert code == 2 and f"{_name(child)} is writing it" in err and err.count("\n") == 1
    assert not folder.exists() or not list(folder.iterdir())
    assert checkpoint.writer(str(folder)) is None


def test_a_checkpoint_names_its_writer(tmp_path):
    folder = str(tmp_path / "run")
    checkpoint.save(folder, np.zeros(3), {}, np.random.default_rng(0), 7, {})
    assert checkpoint.writer(folder) == files.process_name()


TINY_RUN = dict(meta_batch=2, inner_iters=1, inner_batch=5, train_shots=1, eval_samples=1,
                eval_iters=1, eval_tasks_during=1, eval_interval=100, checkpoint_interval=100)


def test_session_train_stops_at_and_resumes(tmp_path):
    """Session.train(folder, cfg, stop_at=2) of a 3-iteration run: no results yet, a
    checkpoint at 2 of a run annealed over 3; asked again with stop_at=2 it is done (nothing
    runs); without stop_at it resumes to the end, both invocations in its record."""
    s = common.Session("fig4", "tiny", str(tmp_path), threads=1, stream=open(os.devnull, "w"))
    folder = str(tmp_path / "run")
    cfg = s.config(meta_iters=3, **TINY_RUN)
    results, record = s.train(folder, cfg, stop_at=2)
    assert results is None and record["invocations"] == 1
    assert common.iteration(folder) == 2 and checkpoint.load(folder)[4]["meta_iters"] == 3
    assert record["command"] == ("minireptile train omniglot " +
                                 " ".join(record["command"].split()[3:]))
    assert "--meta-iters 3" in record["command"] and f"--checkpoint {folder}" in \
        record["command"] and "--threads 1" in record["command"]
    assert s.train(folder, cfg, stop_at=2) == (None, record) and s.reused == [folder]
    results, record = s.train(folder, cfg)
    assert results["config"]["meta_iters"] == 3 and common.iteration(folder) == 3
    assert record["invocations"] == 2


def test_a_shared_run_records_the_cpu_seconds_of_every_rank(tmp_path):
    """Session.call under MPI (here rank 0 of a stand-in pair whose other rank reports 7 CPU
    seconds per call): the call is sent to the other rank first, then run here with the
    communicator; its record counts both ranks' CPU seconds and names the mpiexec command."""
    sent = []

    class Pair:                                        # rank 0 of two, without mpiexec
        rank, size, deterministic = 0, 2, True

        def from_root(self, fn):
            sent.append(fn())
            return sent[-1]

        def gather(self, arrays, n):                   # this rank's row, the other's 7 s
            assert n == 2 and arrays[0].shape == (1,)
            return [np.concatenate([arrays[0], [7.0]])]

    pair, seen = Pair(), []

    def work(folder, stream, comm):
        seen.append((folder, comm))
    s = common.Session("fig4", "tiny", str(tmp_path), threads=1, stream=open(os.devnull, "w"),
                       comm=pair)
    command = s.launch("minireptile sine --out x")
    assert command == "mpiexec -n 2 minireptile sine --out x --distributed mpi --deterministic"
    record = s.step(str(tmp_path / "out"), command, lambda: s.call(work, "F"), lambda: False)
    assert sent == [(work, ("F",), {})] and seen == [("F", pair)]
    assert 7.0 <= record["cpu_seconds"] < 8.0 and record["command"] == command


def test_a_run_of_another_budget_is_refused_not_reused(tmp_path):
    """A folder trained with other settings (here meta_iters) is neither taken as done
    (results.json) nor extended (its checkpoint): one line names the difference."""
    s = common.Session("fig4", "tiny", str(tmp_path), threads=1, stream=open(os.devnull, "w"))
    folder = str(tmp_path / "run")
    fields = dict(sgd=True, train_shots=2, inner_batch=5, inner_iters=2, eval_samples=1,
                  eval_iters=1, eval_tasks_during=1)
    results, _ = s.train(folder, s.config(meta_iters=2, **fields))
    assert results["config"]["meta_iters"] == 2
    assert s.train(folder, s.config(meta_iters=2, **{**fields, "eval_samples": 2}))[0] == \
        results
    for left in ("results.json", "checkpoint.npz"):   # finished, then its checkpoint only
        with pytest.raises(UserError, match=r"holds another run \(meta_iters 2 \(now 3\)\)"):
            s.train(folder, s.config(meta_iters=3, **fields))
        assert os.path.exists(os.path.join(folder, left))
        if left == "results.json":
            os.remove(os.path.join(folder, left))


def test_out_defaults_to_runs_reproduce_and_full_is_recorded(tmp_path):
    args = build_parser().parse_args(["reproduce", "fig1"])
    assert args.out == reproduce.OUT == "runs/reproduce" and args.full is False
    assert build_parser().parse_args(["reproduce", "table2", "--full"]).full is True
    s = common.Session("table2", "quick", str(tmp_path), threads=2, full=True,
                       stream=open(os.devnull, "w"))
    assert common.reproduce_command(s) == (f"minireptile reproduce table2 --budget quick "
                                           f"--full --threads 2 --out {tmp_path}")


@pytest.mark.slow
def test_a_command_held_by_another_process_is_skipped_then_taken_up(tmp_path, capsys):
    """fig3 with g2's command held by a live process: every other run trains, no report;
    once the holder is gone, the same command trains g2 alone and writes the report."""
    argv = ["reproduce", "fig3", "--budget", "tiny", "--threads", "1", "--out",
            str(tmp_path)]
    folder = tmp_path / "tiny" / "fig3"
    with _holding(folder / "runs" / "g2") as holder:
        assert main(argv) == 0
    out = capsys.readouterr().out
    assert f"skipped, {_name(holder)} runs it" in out
    assert "still running in other processes" in out
    assert not (folder / "fig3.json").exists() and not (folder / "runs" / "g2").exists()
    assert len(list(folder.rglob("results.json"))) == len(fig3.CURVES) - 1
    assert main(argv) == 0
    assert capsys.readouterr().out.count("running:") == 1
    assert (folder / "fig3.json").exists()
    assert set(_runs(folder).values()) == {1}                # no command ran twice


@pytest.mark.slow
def test_a_partial_report_covers_the_finished_runs_and_trains_nothing(tmp_path, capsys):
    """fig4 --partial: its table has a number for every finished run and "not run yet" for
    the others, which its JSON lists; it starts no command, and the full report is untouched.
    Here one run (shared-tail, k = 5) is held by another process while the rest train."""
    argv = ["reproduce", "fig4", "--budget", "tiny", "--threads", "1", "--out", str(tmp_path)]
    folder = tmp_path / "tiny" / "fig4"
    assert main(argv + ["--partial"]) == 0                   # nothing trained yet
    nothing = json.loads((folder / "fig4-partial.json").read_text())
    assert not nothing["runs"] and len(nothing["missing"]) == 4 * len(fig4.points(
        fig4.BUDGETS["tiny"])) and not (folder / "runs").exists()
    with _holding(folder / "runs" / "shared-k5-b25"):
        assert main(argv) == 0
    assert not (folder / "fig4.json").exists()
    capsys.readouterr()
    assert main(argv + ["--partial"]) == 0
    assert "running:" not in capsys.readouterr().out
    result = json.loads((folder / "fig4-partial.json").read_text())
    assert result["partial"] and len(result["missing"]) == 1
    missing = result["missing"][0].split(" --")
    assert {"algo fomaml", "inner-iters 5", "inner-batch 25"} <= set(missing), missing
    assert "shared-k5-b25" not in result["runs"] and len(result["runs"]) == len(
        nothing["missing"]) - 1
    (table_a, table_b) = report.parse_tables((folder / "fig4-partial.md").read_text())
    shared = "FOMAML (shared-tail, cycling)"
    assert [r[shared] for r in table_a if r["k"] == "5"] == ["not run yet"]
    assert all("%" in r[c] for r in table_a + table_b for c in r
               if c not in ("k", "B") and not (c == shared and r.get("k") == "5"))
    assert (folder / "fig4-partial.png").stat().st_size > 10000
    assert not (folder / "fig4.json").exists()
    assert main(["reproduce", "fig3", "--budget", "tiny", "--partial", "--out",
                 str(tmp_path)]) != 0
    assert "--partial: fig3 has no partial report" in capsys.readouterr().err


@pytest.mark.slow
def test_maml_waits_for_a_calibration_another_process_runs(tmp_path, capsys):
    """The cost table needs every calibration's seconds: a process finding one calibration
    held waits for it rather than going on without it (a --jobs process used to exit
    there), and takes it over once its holder dies -- then trains everything, writes the
    report. The holder lets go 2 s after the cells' last file is written, while the process
    under test is at the calibration; waiting, it runs maml-1 before maml-3."""
    argv = ["reproduce", "maml", "--budget", "tiny", "--threads", "1", "--out", str(tmp_path)]
    folder = tmp_path / "tiny" / "maml"
    last_cell = folder / "o5-1shot-fomaml" / "eval-non-transductive.json"
    with _holding(folder / "calibration" / "maml-1", until=last_cell, cap=600) as holder:
        assert main(argv) == 0
    assert f"skipped, {_name(holder)} runs it" in capsys.readouterr().out
    assert (folder / "maml.json").exists()
    assert set(_runs(folder).values()) == {1}
    started = {name: json.loads((folder / "calibration" / f"{name}.log.runs.jsonl")
                                .read_text())["started"] for name in ("maml-1", "maml-3")}
    assert started["maml-1"] <= started["maml-3"], started


@pytest.mark.slow
def test_jobs_share_the_commands(tmp_path):
    """--jobs 2: two processes, each command run once, one report."""
    argv = ["reproduce", "fig3", "--budget", "tiny", "--threads", "1", "--jobs", "2",
            "--out", str(tmp_path)]
    assert main(argv) == 0
    folder = tmp_path / "tiny" / "fig3"
    assert json.loads((folder / "fig3.json").read_text())["runs"].keys() == \
        {c[0] for c in fig3.CURVES}
    runs = _runs(folder)
    assert len(runs) == len(fig3.CURVES) and set(runs.values()) == {1}, runs
    assert (folder / "jobs" / "1.out").exists()
    locks = list(folder.rglob("*.lock"))                   # every run took its lock ...
    assert len(locks) == len(fig3.CURVES)
    for lock in locks:                                     # ... and no process holds one
        assert lock.read_text() == "" and files.holder(str(lock)[:-5]) is None


def test_unknown_experiment_or_budget_is_refused():
    with pytest.raises(SystemExit):
        main(["reproduce", "fig9"])
    with pytest.raises(ValueError, match="budget"):
        reproduce.run("fig1", budget="huge")


def test_ways_is_for_table2_only(capsys):
    """--ways chooses Table 2's rows; any other experiment refuses it in one line, exit 2."""
    assert main(["reproduce", "fig1", "--budget", "tiny", "--ways", "5"]) != 0
    err = capsys.readouterr().err.strip()
    assert "--ways" in err and "\n" not in err
    with pytest.raises(SystemExit):
        main(["reproduce", "table2", "--ways", "7"])


@pytest.mark.slow
def test_table2_ways_writes_only_those_rows(tmp_path):
    """reproduce table2 --ways 5 trains and evaluates the 5-way run alone: 4 rows, all 5-way,
    one learning curve, and no 20-way folder."""
    argv = ["reproduce", "table2", "--budget", "tiny", "--ways", "5", "--threads", "1",
            "--out", str(tmp_path)]
    assert main(argv) == 0
    folder = tmp_path / "tiny" / "table2"
    result = json.loads((folder / "table2.json").read_text())
    assert [r["classes"] for r in result["rows"]] == [5, 5, 5, 5]
    assert list(result["learning_curves"]) == ["5"] and not (folder / "o20").exists()
    assert "--ways 5" in result["command"] and "--ways 5" in (folder / "table2.md").read_text()
    # an evaluation run by hand (no record of reproduce running it): its own command is listed
    out = folder / "o5" / "eval-1shot-transductive.json"
    data = json.loads(out.read_text())
    data["command"] = "minireptile eval --by-hand"
    out.write_text(json.dumps(data))
    (folder / "o5" / "eval-1shot-transductive.json.log.runs.jsonl").unlink()
    assert main(argv) == 0
    commands = json.loads((folder / "table2.json").read_text())["commands"]
    assert [c.get("run_outside_reproduce") for c in commands
            if c["command"] == "minireptile eval --by-hand"] == [True]


def test_every_experiment_has_every_budget():
    import importlib
    for name in reproduce.EXPERIMENTS:
        module = importlib.import_module(f"minireptile.reproduce.{name}")
        assert set(module.BUDGETS) == set(reproduce.BUDGETS), name


def _runs(folder):
    """Every recorded invocation under folder: {log: number of lines}."""
    return {str(p): len(p.read_text().splitlines()) for p in folder.rglob("*.runs.jsonl")}


@pytest.mark.slow
@pytest.mark.parametrize("experiment", reproduce.EXPERIMENTS)
def test_experiment_end_to_end_at_the_tiny_budget(experiment, tmp_path, capsys):
    argv = ["reproduce", experiment, "--budget", "tiny", "--threads", "1", "--out",
            str(tmp_path)]
    assert main(argv) == 0
    folder = tmp_path / "tiny" / experiment
    result = json.loads((folder / f"{experiment}.json").read_text())
    assert result["experiment"] == experiment and result["budget"] == "tiny"
    assert result["commands"] and all(c["command"].startswith("minireptile ")
                                      for c in result["commands"])
    assert result["wall_seconds"] >= 0 and result["machine"]["cpus"] >= 1
    tables = report.parse_tables((folder / f"{experiment}.md").read_text())
    assert tables and all(tables), "every table has rows"
    assert (folder / f"{experiment}.png").stat().st_size > 10000
    assert not list(tmp_path.rglob("*.tmp"))
    if experiment == "table2":          # the 20-way run stops at its budget, the curve kept
        rows = [r for r in result["rows"] if r["classes"] == 20]
        assert all(r["partial"] and 2 <= r["iteration"] < 40 for r in rows)
        assert result["learning_curves"]["20"]
    # a second run resumes: nothing is run again, the same numbers come out
    before = _runs(folder)
    capsys.readouterr()
    assert main(argv) == 0
    assert "running:" not in capsys.readouterr().out
    assert _runs(folder) == before
    again = json.loads((folder / f"{experiment}.json").read_text())
    strip = ("wall_seconds", "cpu_seconds", "machine", "commands")
    assert ({k: v for k, v in again.items() if k not in strip} ==
            {k: v for k, v in result.items() if k not in strip})
    # finished runs may drop their checkpoints (1 MB each): still nothing to run again
    for results in folder.rglob("results.json"):
        (results.parent / "checkpoint.npz").unlink()
    assert main(argv) == 0
    assert "running:" not in capsys.readouterr().out


@pytest.mark.slow
def test_fig1_numbers_are_the_sine_commands(tmp_path):
    """fig1 runs `minireptile sine`'s code: its sine-reptile.json equals the command's."""
    assert main(["reproduce", "fig1", "--budget", "tiny", "--out", str(tmp_path)]) == 0
    ours = json.loads((tmp_path / "tiny" / "fig1" / "sine-reptile.json").read_text())
    assert main(["sine", "--algo", "reptile", "--meta-iters", "3", "--eval-tasks", "4",
                 "--eval-iters", "4", "--out", str(tmp_path / "sine")]) == 0
    theirs = json.loads((tmp_path / "sine" / "sine-reptile.json").read_text())
    assert ours["losses"] == theirs["losses"]
