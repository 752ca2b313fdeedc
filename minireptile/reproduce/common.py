"""What the experiments of ``minireptile reproduce`` share: running commands, resuming, and
writing the JSON, the Markdown table and the figure (``report`` makes their content).

Every number comes from a real ``minireptile`` command (``train``, ``eval``), run in this
process through the command line's own ``main``: the one core, ``meta.py``, does the work.
Each command's exact text, its wall-clock and CPU seconds and its output (a log file beside
its folder) are recorded. A command whose results file exists is skipped, so running an
experiment again resumes it: ``train --checkpoint DIR`` continues an interrupted run.

Several processes share one experiment: start the same ``minireptile reproduce`` command
once per core (``--threads 1``; ``--jobs N`` starts them). Each command takes a lock file
beside its output (``claim``) and a process skips the commands others hold, so each takes
the next free one; the last to finish writes the report (``Session.pending``).
"""
import contextlib
import dataclasses
import json
import os
import platform
import shlex
import signal
import sys
import threading
import time
import zipfile

import numpy as np

from .. import __version__, checkpoint
from ..errors import UserError
from .report import figure

BUSY_SECONDS = 300       # a checkpoint written this recently may have a live trainer


class Session:
    """One experiment at one budget: its folder, its flags for every command, its records.

    folder: OUT/EXPERIMENT for the paper budget, OUT/BUDGET/EXPERIMENT otherwise.
    device, threads: passed on to every command (``--device``, ``--threads``) when given.
    partial: run nothing; the report covers the commands that have finished, and names the
    others (``missing``) in EXPERIMENT-partial.json/.md/.png.
    """

    def __init__(self, experiment, budget, out, device=None, threads=None, stream=None,
                 ways=None, partial=False):
        self.experiment, self.budget, self.device, self.threads = (experiment, budget, device,
                                                                   threads)
        self.ways = ways                  # table2 --ways: the rows of one N only
        self.folder = os.path.join(out, *(() if budget == "paper" else (budget,)), experiment)
        self.stream = stream or sys.stdout
        self.records = []
        self.pending = {}                 # output path -> the process holding its command
        self.partial, self.missing = partial, []   # --partial: the commands not finished
        os.makedirs(self.folder, exist_ok=True)

    def path(self, *parts):
        return os.path.join(self.folder, *parts)

    def say(self, text):
        print(f"[reproduce {self.experiment}] {text}", file=self.stream, flush=True)

    def device_flags(self):
        flags = [] if self.device is None else ["--device", self.device]
        return flags + ([] if self.threads is None else ["--threads", str(self.threads)])

    def command(self, argv, log, done=None, stop=None, call=None, before=None):
        """Run ``minireptile ARGV`` unless the file ``done`` exists; record it either way.

        Its output goes to the terminal and is appended to ``log``; every run of it appends
        a line (command, seconds, exit status) to ``log + '.runs.jsonl'``, which the
        record sums. stop: a function; once it returns True the command is interrupted like
        Ctrl-C (it saves its checkpoint), which ends it without error. call: what runs
        the command (default the command line's ``main``). before: called once this process
        holds the command (``claim``), before it runs. Returns the record, or None while
        another process holds the command (it is then in ``pending``) or, with ``partial``,
        while it has not finished (it is then in ``missing``).
        """
        text = "minireptile " + shlex.join(argv)
        finished = bool(done) and os.path.exists(done)
        if self.partial and not finished:
            self.missing.append(text)
            return None
        if not finished:
            with claim(log) as holder:
                if holder:
                    self.pending[log] = holder
                    self.say(f"skipped, {holder} runs it: {text}")
                    return None
                if not (done and os.path.exists(done)):     # it may have finished since
                    if before is not None:
                        before()
                    self.say("running: " + text)
                    run_command(argv, log, stop, call)
        runs = read_jsonl(log + ".runs.jsonl")
        record = {"command": text, "log": os.path.relpath(log, self.folder),
                  "wall_seconds": round(sum(r["wall_seconds"] for r in runs), 2),
                  "cpu_seconds": round(sum(r["cpu_seconds"] for r in runs), 2),
                  "invocations": len(runs)}
        self.records.append(record)
        return record

    def train(self, folder, flags, stop_at=None):
        """``minireptile train omniglot FLAGS --checkpoint FOLDER``, skipped once
        FOLDER/results.json exists, resumed when FOLDER holds a checkpoint.

        stop_at: end once the checkpoint reaches this iteration (a multiple of
        --checkpoint-interval; a second or so later, as Ctrl-C would) although --meta-iters
        is larger: epsilon is annealed over --meta-iters (the paper's schedule, cut short).
        Returns (results or None when stopped, record); (None, None) while another
        process holds it.
        """
        results = os.path.join(folder, "results.json")
        argv = ["train", "omniglot", *flags, *self.device_flags(), "--checkpoint", folder]
        refuse_other_run(folder, argv)
        stopped = stop_at is not None and iteration(folder) >= stop_at
        stop = None if stop_at is None else (lambda: iteration(folder) >= stop_at)
        done = folder if stopped else results
        record = self.command(argv, folder + ".log", done=done, stop=stop,
                              before=lambda: refuse_busy(folder))
        if record is None:
            return None, None
        if not record["invocations"] and os.path.exists(results):   # trained outside reproduce
            record["wall_seconds"] = round(read_json(results)["total_seconds"], 1)
            record["timed_by"] = "results.json (total_seconds)"
            _ran_outside(record, results)
        return (read_json(results) if os.path.exists(results) else None), record

    def after(self, folder, again, poll=2.0):
        """Wait while another process holds FOLDER's command, then return again(): for a
        short command whose result every later one needs (maml's calibration sets the runs'
        lengths). A holder that dies leaves the command to again()."""
        log = folder + ".log"
        while holder(log):
            time.sleep(poll)
        self.pending.pop(log, None)
        return again()

    def evaluate(self, folder, flags, out):
        """``minireptile eval --checkpoint FOLDER FLAGS --out OUT``, skipped while OUT holds
        the evaluation of the checkpoint's current iteration (or the checkpoint is gone: a
        finished run may drop it). Returns (results, record); (None, None) while another
        process holds it."""
        done = out if (os.path.exists(out) and (not checkpoint.exists(folder) or read_json(
            out).get("iteration") == iteration(folder))) else None
        log = os.path.splitext(out)[0] + ".log"
        if done is None and os.path.exists(out):         # the checkpoint has moved on:
            for stale in (out, log + ".runs.jsonl"):     # its time is the new evaluation's
                if os.path.exists(stale):
                    os.remove(stale)
        argv = ["eval", "--checkpoint", folder, *flags, *self.device_flags(), "--out", out]
        record = self.command(argv, log, done=done)
        if record is None:
            return None, None
        if not record["invocations"]:                      # evaluated outside reproduce
            _ran_outside(record, out)
        return read_json(out), record

    def unfinished(self):
        """What an experiment returns in place of ``finish`` while other processes hold some
        of its commands: None; whichever process finishes last writes the report."""
        self.say(f"{len(self.pending)} command(s) still running in other processes; the last "
                 f"process to finish writes {self.experiment}.json")
        return None

    def finish(self, results, markdown, draw=None):
        """Write EXPERIMENT.json (results, commands, times, machine), EXPERIMENT.md and, with
        matplotlib, EXPERIMENT.png (draw(plt) returns the figure); returns the JSON's path.
        With ``partial``: EXPERIMENT-partial.*, which also list the missing commands."""
        name = self.path(self.experiment + ("-partial" if self.partial else ""))
        wall = sum(r["wall_seconds"] for r in self.records)
        cpu = sum(r["cpu_seconds"] for r in self.records)
        document = {"experiment": self.experiment, "budget": self.budget,
                    "device": self.device or os.environ.get("MINIREPTILE_DEVICE", "cpu"),
                    "command": reproduce_command(self), "wall_seconds": round(wall, 1),
                    "cpu_seconds": round(cpu, 1), "machine": machine(),
                    "minireptile": __version__, **results, "commands": self.records,
                    **({"partial": True, "missing": self.missing} if self.partial else {})}
        write_json(name + ".json", document)
        head = (f"`{reproduce_command(self)}`: {len(self.records)} commands, "
                f"{wall / 60:.1f} min wall-clock, {cpu / 60:.1f} min CPU "
                f"({machine()['cpus']} CPUs, {document['device']}).\n\n")
        if self.partial:
            head += (f"**Partial:** {len(self.missing)} command(s) have not finished; their "
                     f"cells read \"not run yet\" (`{reproduce_command(self)}` runs them).\n\n")
        write_text(name + ".md", head + markdown)
        if draw is not None and figure(name + ".png", draw):
            self.say(f"wrote {name}.png")
        self.say(f"wrote {name}.json and {name}.md")
        return name + ".json"


def refuse_other_run(folder, argv):
    """UserError when FOLDER holds a run (finished, or a checkpoint) of another training than
    ``minireptile ARGV``: after a budget changes (--meta-iters), a finished run would be
    taken as done and an unfinished one extended. Evaluation settings may differ."""
    from ..cli import build_parser
    from ..cli.train import train_config
    from ..train import IDENTITY, differences
    results = os.path.join(folder, "results.json")
    if os.path.exists(results):
        saved = read_json(results).get("config") or {}
    elif checkpoint.exists(folder):
        saved = checkpoint.load(folder)[4]
    else:
        return
    wanted = dataclasses.asdict(train_config(build_parser().parse_args(argv))[0])
    differ = differences(saved, wanted, [k for k in IDENTITY if k != "model"])
    if differ:
        raise UserError(f"{folder}: holds another run ({'; '.join(differ)}); move it away "
                        f"or choose another --out")


def _ran_outside(record, results):
    """A command run by hand rather than by reproduce: record the command its results file
    says ran (it may differ in --threads or --split), not the one reproduce would run."""
    ran = read_json(results).get("command")
    if ran and ran != record["command"]:
        record["command"], record["run_outside_reproduce"] = ran, True


@contextlib.contextmanager
def claim(log):
    """Hold LOG.lock while running the command that writes LOG: yields None when this
    process got it, else the holder ("pid P on HOST").

    The lock appears whole (written aside, then hard-linked into place, which fails when it
    exists). A lock whose process has died on this host is taken over; one from another
    host is left to be deleted by hand."""
    lock, me = log + ".lock", checkpoint.process_name()
    aside = f"{lock}.{os.getpid()}"
    os.makedirs(os.path.dirname(os.path.abspath(lock)), exist_ok=True)
    with open(aside, "w") as f:
        f.write(me)
    try:
        while True:
            try:
                os.link(aside, lock)
                break
            except FileExistsError:
                who = holder(log)
                if who not in (None, me):                    # me: a reused pid's, stale
                    yield who
                    return
                with contextlib.suppress(FileNotFoundError):
                    os.remove(lock)                          # stale: its process is gone
    finally:
        os.remove(aside)
    try:
        yield None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(lock)


def holder(log):
    """The live process holding LOG's command ("pid P on HOST"), or None."""
    who = _read_lock(log + ".lock")
    return who if who and checkpoint.running(who) else None


def _read_lock(lock):
    try:
        with open(lock) as f:
            return f.read().strip()
    except FileNotFoundError:
        return None


def refuse_busy(folder, seconds=BUSY_SECONDS):
    """UserError when folder's checkpoint was written in the last `seconds` by another
    process that still runs (or one it does not name): that process may be training it, and
    two writers would spoil its resume. A checkpoint whose writer has ended (a stopped
    reproduce run) may be resumed at once."""
    path = os.path.join(folder, checkpoint.FILENAME)
    age = time.time() - os.path.getmtime(path) if os.path.exists(path) else seconds
    who = checkpoint.writer(folder)
    if age < seconds and (who is None or (who != checkpoint.process_name()
                                          and checkpoint.running(who))):
        by = "" if who is None else f" by {who}, which still runs"
        raise UserError(f"{folder}: its checkpoint was written {age:.0f} s ago{by}, so "
                        f"another process may be training it; let it finish (or stop it) "
                        f"and run this again in {seconds - age:.0f} s")


def start_copy(session, number):
    """Start this session's ``minireptile reproduce`` command in another process (job
    NUMBER of ``--jobs``), its output in FOLDER/jobs/NUMBER.out."""
    import subprocess
    argv = [sys.executable, "-m", "minireptile", *shlex.split(reproduce_command(session))[1:]]
    here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(         # this process's minireptile
        [here, *filter(None, [os.environ.get("PYTHONPATH")])]))
    out = session.path("jobs", f"{number}.out")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "a") as f:
        process = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, env=env)
    session.say(f"job {number}: pid {process.pid}, output in {out}")
    process.out = out
    return process


def wait_for(session, processes):
    """Wait for the --jobs processes; UserError naming the output of one that failed."""
    session.say(f"waiting for {len(processes)} more job(s) to finish their commands")
    for p in processes:
        if p.wait() != 0:
            raise UserError(f"a --jobs process (pid {p.pid}) failed with exit {p.returncode}; "
                            f"see {p.out}")


def stop(processes):
    """SIGTERM to the --jobs processes still running (each saves its checkpoint), then wait."""
    for p in processes:
        if p.poll() is None:
            p.terminate()
    for p in processes:
        p.wait()


def reproduce_command(session):
    """The ``minireptile reproduce`` command that makes this session's files."""
    out = os.path.dirname(session.folder)
    if session.budget != "paper":
        out = os.path.dirname(out)
    ways = [] if session.ways is None else ["--ways", str(session.ways)]
    words = ["minireptile", "reproduce", session.experiment, "--budget", session.budget,
             *ways, *session.device_flags(), "--out", out]
    return shlex.join(words)


class _Tee:
    """A text stream writing to two others (the terminal and a log file)."""

    def __init__(self, *streams):
        self.streams = streams

    def write(self, text):
        for s in self.streams:
            s.write(text)
        return len(text)

    def flush(self):
        for s in self.streams:
            s.flush()

    def isatty(self):                 # plain progress lines, which read well in a log
        return False


def run_command(argv, log, stop=None, call=None):
    """``minireptile ARGV`` in this process (call(argv), default the command line's main),
    output tee'd to log; its seconds and exit status appended to log + '.runs.jsonl'.
    Ctrl-C (exit 130/143) is raised again as KeyboardInterrupt, any other failure as
    UserError; stop() true ends it quietly."""
    if call is None:
        from ..cli import main as call
    os.makedirs(os.path.dirname(os.path.abspath(log)), exist_ok=True)
    wall, cpu, code, argv0, fired = time.time(), time.process_time(), None, sys.argv, []
    with open(log, "a") as f:
        tee_out, tee_err = _Tee(sys.stdout, f), _Tee(sys.stderr, f)
        f.write(f"$ minireptile {shlex.join(argv)}\n")
        f.flush()
        try:
            with contextlib.redirect_stdout(tee_out), contextlib.redirect_stderr(tee_err), \
                    interrupt_when(stop) as fired:
                sys.argv = ["minireptile", *argv]        # what `eval` records as its command
                code = call(argv)
        except KeyboardInterrupt:
            if not fired:
                raise
            code = 130
        finally:
            sys.argv = argv0
            row = {"command": "minireptile " + shlex.join(argv), "started": round(wall, 1),
                   "wall_seconds": round(time.time() - wall, 2),
                   "cpu_seconds": round(time.process_time() - cpu, 2),
                   "exit": code, "stopped": bool(fired)}
            with open(log + ".runs.jsonl", "a") as runs:
                runs.write(json.dumps(row) + "\n")
    if code in (130, 143) and not fired:                # Ctrl-C or SIGTERM: stop it all
        from ..cli import Terminated
        raise Terminated if code == 143 else KeyboardInterrupt
    if code not in (0, 130, 143):
        raise UserError(f"`minireptile {shlex.join(argv)}` failed (exit {code}); see {log}")


@contextlib.contextmanager
def interrupt_when(stop, poll=1.0):
    """Within the block, interrupt the main thread (as Ctrl-C does) once stop() is true.

    Yields a list that holds True once it did. Checked every poll seconds by a thread.
    A process started with SIGINT ignored (``cmd &`` in a script, where the shell ignores
    it) has no handler for the interruption to run: the block installs Python's own.
    """
    fired, done = [], threading.Event()
    if stop is None:
        yield fired
        return
    previous = signal.getsignal(signal.SIGINT)
    if not callable(previous):                           # SIG_IGN or SIG_DFL
        signal.signal(signal.SIGINT, signal.default_int_handler)

    def watch():
        import _thread
        while not done.wait(poll):
            try:
                reached = stop()
            except Exception:                            # a file being replaced: next time
                reached = False
            if reached:
                fired.append(True)
                _thread.interrupt_main()
                return

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        yield fired
    finally:
        done.set()
        watcher.join()
        if not callable(previous):
            signal.signal(signal.SIGINT, previous)


def iteration(folder):
    """The iteration of the checkpoint in folder (0 when there is none); reads only its
    small configuration entry, so a watcher may call it often."""
    path = os.path.join(folder, checkpoint.FILENAME)
    if not os.path.exists(path):
        return 0
    try:
        with np.load(path, allow_pickle=False) as z:
            return int(json.loads(str(z["meta"]))["iteration"])
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError):
        return checkpoint.load(folder)[3]               # its one-line error


def read_json(path):
    with open(path) as f:
        return json.load(f)


def read_jsonl(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def write_json(path, obj):
    write_text(path, json.dumps(obj, indent=2) + "\n")


def write_text(path, text):
    checkpoint.atomic_write(path, lambda f: f.write(text.encode()))


def machine():
    """The machine the numbers were measured on."""
    import numpy
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpus": cpus, "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(), "numpy": numpy.__version__,
            "load_average": [round(x, 2) for x in os.getloadavg()]
            if hasattr(os, "getloadavg") else None}
