"""One writer per run folder: ``files.locked``, taken by train, eval --out into a run
folder, and every run of reproduce (and of its --jobs processes).

Real processes: eval --out into a folder being trained waits its turn, and of many processes
that race for a free lock exactly one gets it. (A second trainer named, a SIGKILLed holder's
lock free at once and the lock's re-entrance: tests/test_reproduce.py.)
"""
import os
import subprocess
import sys
import textwrap
import time

import pytest

from minireptile.cli import main

HOLD = textwrap.dedent("""
    import sys, time
    from minireptile import files
    with files.locked(sys.argv[1]):
        print("holding", flush=True)
        time.sleep(600)
""")

RACE = textwrap.dedent("""
    import os, sys, time
    from minireptile import files
    while not os.path.exists(sys.argv[2]):                 # the start line
        time.sleep(0.001)
    try:
        with files.locked(sys.argv[1]):
            time.sleep(1.0)
            print("got it")
    except files.Busy:
        print("busy")
""")


def holder_process(path):
    """A process holding path's lock until killed; returns it once it holds it."""
    p = subprocess.Popen([sys.executable, "-c", HOLD, path], stdout=subprocess.PIPE,
                         text=True)
    assert p.stdout.readline().strip() == "holding"
    return p


def test_eval_writing_into_a_run_folder_waits_its_turn(tmp_path, capsys):
    """eval --out into a folder being trained is refused; elsewhere it runs."""
    folder = str(tmp_path / "run")
    tiny = ["--eval-samples", "2", "--eval-iters", "2", "--threads", "1"]
    assert main(["train", "omniglot", "--checkpoint", folder, "--meta-iters", "2", *tiny]) == 0
    p = holder_process(folder)
    try:
        out = os.path.join(folder, "eval.json")
        assert main(["eval", "--checkpoint", folder, "--out", out, *tiny]) == 2
        assert f"pid {p.pid} on" in capsys.readouterr().err and not os.path.exists(out)
        elsewhere = str(tmp_path / "eval.json")
        assert main(["eval", "--checkpoint", folder, "--out", elsewhere, *tiny]) == 0
    finally:
        p.kill()
        p.wait()


@pytest.mark.parametrize("processes", [6])
def test_of_processes_racing_for_a_free_lock_exactly_one_gets_it(tmp_path, processes):
    path, start = str(tmp_path / "run"), str(tmp_path / "go")
    racers = [subprocess.Popen([sys.executable, "-c", RACE, path, start],
                               stdout=subprocess.PIPE, text=True) for _ in range(processes)]
    time.sleep(1.0)                                        # all waiting at the start line
    open(start, "w").close()
    answers = sorted(r.communicate(timeout=120)[0].strip() for r in racers)
    assert answers == ["busy"] * (processes - 1) + ["got it"]
