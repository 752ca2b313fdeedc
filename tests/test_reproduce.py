"""``minireptile reproduce``: every experiment end to end at the tiny budget, its files, its
tables, resuming; and the pieces (tables, intervals, the stop watcher) on their own.

No test asserts an accuracy: the tiny budget trains for a few iterations.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from minireptile import checkpoint, reproduce
from minireptile.cli import main
from minireptile.errors import UserError
from minireptile.reproduce import common, fig3, fig4, report


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


@pytest.mark.parametrize("sigint", ["handled", "ignored"])
def test_interrupt_when_stops_the_main_thread(sigint):
    """Also in a process started with SIGINT ignored (`cmd &` in a script); the block
    leaves SIGINT as it found it."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN if sigint == "ignored"
                             else signal.default_int_handler)
    try:
        flag = threading.Event()
        threading.Timer(0.2, flag.set).start()
        with pytest.raises(KeyboardInterrupt):
            with common.interrupt_when(flag.is_set, poll=0.05) as fired:
                deadline = time.time() + 10
                while time.time() < deadline:
                    time.sleep(0.01)
        assert fired == [True]
        assert signal.getsignal(signal.SIGINT) == (signal.SIG_IGN if sigint == "ignored"
                                                   else signal.default_int_handler)
    finally:
        signal.signal(signal.SIGINT, previous)


def test_a_checkpoint_written_just_now_is_not_trained_twice(tmp_path):
    """Another process may be training it: refused with one line, nothing touched."""
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "checkpoint.npz").write_bytes(b"x")
    with pytest.raises(UserError, match="another process may be training it"):
        common.refuse_busy(str(tmp_path / "run"))
    common.refuse_busy(str(tmp_path / "run"), seconds=0)
    common.refuse_busy(str(tmp_path / "none"))


def test_a_fresh_checkpoint_of_a_process_that_ended_is_resumed_at_once(tmp_path, monkeypatch):
    """The checkpoint names its writer: a stopped reproduce run may be restarted within
    BUSY_SECONDS, while a live writer (or another host's) still refuses it."""
    folder, ended, live = str(tmp_path / "run"), subprocess.Popen([sys.executable, "-c", ""]), \
        _sleeper()
    ended.wait()
    try:
        for name, refused in ((f"pid {ended.pid} on {socket.gethostname()}", False),
                              (f"pid {live.pid} on {socket.gethostname()}", True),
                              ("pid 1 on another-host", True),
                              (checkpoint.process_name(), False)):      # this process's own
            monkeypatch.setattr(checkpoint, "process_name", lambda: name)
            checkpoint.save(folder, np.zeros(3), {}, np.random.default_rng(0), 7, {})
            monkeypatch.undo()
            assert checkpoint.writer(folder) == name
            if refused:
                with pytest.raises(UserError, match=f"by {name}, which still runs"):
                    common.refuse_busy(folder)
            else:
                common.refuse_busy(folder)
    finally:
        live.kill()
        live.wait()


def test_a_run_of_another_budget_is_refused_not_reused(tmp_path):
    """A folder trained with other settings (here --meta-iters) is neither taken as done
    (results.json) nor extended (its checkpoint): one line names the difference."""
    s = common.Session("fig4", "tiny", str(tmp_path), threads=1, stream=open(os.devnull, "w"))
    folder = str(tmp_path / "run")
    flags = ["--sgd", "--train-shots", "2", "--inner-batch", "5", "--inner-iters", "2",
             "--eval-samples", "1", "--eval-iters", "1", "--eval-tasks-during", "1"]
    results, _ = s.train(folder, flags + ["--meta-iters", "2"])
    assert results["config"]["meta_iters"] == 2
    assert s.train(folder, flags + ["--meta-iters", "2", "--eval-samples", "2"])[0] == results
    for left in ("results.json", "checkpoint.npz"):   # finished, then its checkpoint only
        with pytest.raises(UserError, match=r"holds another run \(meta_iters 2 \(now 3\)\)"):
            s.train(folder, flags + ["--meta-iters", "3"])
        assert os.path.exists(os.path.join(folder, left))
        if left == "results.json":
            os.remove(os.path.join(folder, left))


def _sleeper():
    """A live process that is not this one, to hold a lock."""
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])


def test_claim_skips_a_live_holder_and_takes_over_a_dead_one(tmp_path):
    log = str(tmp_path / "run.log")
    sleeper = _sleeper()
    other = f"pid {sleeper.pid} on {socket.gethostname()}"
    (tmp_path / "run.log.lock").write_text(other)
    try:
        with common.claim(log) as holder:
            assert holder == other
        assert common.holder(log) == other and (tmp_path / "run.log.lock").exists()
    finally:
        sleeper.kill()
        sleeper.wait()
    assert common.holder(log) is None                      # its process is gone: stale
    with common.claim(log) as holder:
        assert holder is None
        assert (tmp_path / "run.log.lock").read_text() == f"pid {os.getpid()} on " \
                                                          f"{socket.gethostname()}"
    assert not (tmp_path / "run.log.lock").exists()
    assert not list(tmp_path.glob("run.log.lock.*"))        # the aside copy is gone too
    (tmp_path / "run.log.lock").write_text("pid 1 on another-host")
    with common.claim(log) as holder:                      # another host's: left alone
        assert holder == "pid 1 on another-host"


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="needs Linux's /proc")
def test_a_child_that_ended_unreaped_holds_no_lock(tmp_path):
    """A --jobs process that dies is its parent's zombie until waited for: not a holder."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    (tmp_path / "run.log.lock").write_text(f"pid {child.pid} on {socket.gethostname()}")
    deadline = time.time() + 60
    while common.holder(str(tmp_path / "run.log")) and time.time() < deadline:
        time.sleep(0.05)
    try:
        assert common.holder(str(tmp_path / "run.log")) is None
        assert child.poll() == 0                        # it had ended, unreaped until now
    finally:
        child.wait()


@pytest.mark.slow
def test_a_command_held_by_another_process_is_skipped_then_taken_up(tmp_path, capsys):
    """fig3 with g2's command held by a live process: every other run trains, no report;
    once the holder is gone, the same command trains g2 alone and writes the report."""
    argv = ["reproduce", "fig3", "--budget", "tiny", "--threads", "1", "--out",
            str(tmp_path)]
    folder = tmp_path / "tiny" / "fig3"
    (folder / "runs").mkdir(parents=True)
    sleeper = _sleeper()
    (folder / "runs" / "g2.log.lock").write_text(f"pid {sleeper.pid} on {socket.gethostname()}")
    try:
        assert main(argv) == 0
    finally:
        sleeper.kill()
        sleeper.wait()
    out = capsys.readouterr().out
    assert f"skipped, pid {sleeper.pid}" in out and "still running in other processes" in out
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
    (folder / "runs").mkdir(parents=True)
    sleeper = _sleeper()
    (folder / "runs" / "shared-k5-b25.log.lock").write_text(
        f"pid {sleeper.pid} on {socket.gethostname()}")
    try:
        assert main(argv) == 0
    finally:
        sleeper.kill()
        sleeper.wait()
    assert not (folder / "fig4.json").exists()
    capsys.readouterr()
    assert main(argv + ["--partial"]) == 0
    assert "running:" not in capsys.readouterr().out
    result = json.loads((folder / "fig4-partial.json").read_text())
    assert result["partial"] and len(result["missing"]) == 1
    assert "--algo fomaml --inner-iters 5 --inner-batch 25" in result["missing"][0]
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
    """Every run's length comes from the calibration: a process finding one calibration
    command held waits for it rather than giving up (a --jobs process used to exit there),
    and takes it over once its holder dies -- then trains everything, writes the report.

    The holder lives until the other calibrations have run and 3 s more, or 5 s in all:
    a process that did not wait would find it alive at the end of its pass and stop."""
    argv = ["reproduce", "maml", "--budget", "tiny", "--threads", "1", "--out", str(tmp_path)]
    folder = tmp_path / "tiny" / "maml" / "calibration"
    folder.mkdir(parents=True)
    last = folder / "reptile-3.log.runs.jsonl"
    sleeper = subprocess.Popen([sys.executable, "-c", f"""import os, time
start = time.time()
while not os.path.exists({str(last)!r}) and time.time() < start + 5:
    time.sleep(0.05)
time.sleep(3 if os.path.exists({str(last)!r}) else 0)"""])
    (folder / "maml-1.log.lock").write_text(f"pid {sleeper.pid} on {socket.gethostname()}")
    try:
        assert main(argv) == 0
    finally:
        sleeper.kill()
        sleeper.wait()
    assert f"skipped, pid {sleeper.pid}" in capsys.readouterr().out
    assert (tmp_path / "tiny" / "maml" / "maml.json").exists()
    assert set(_runs(tmp_path / "tiny" / "maml").values()) == {1}


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
    assert not list(folder.rglob("*.lock"))


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
    (folder / "o5" / "eval-1shot-transductive.log.runs.jsonl").unlink()
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
