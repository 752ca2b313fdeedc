"""What the experiments of ``minireptile reproduce`` share: running their runs, resuming,
sharing them among processes, and writing the JSON, the Markdown table and the figure
(``report`` makes their content).

An experiment builds a configuration per run (``Session.config``) and the session calls the
library with it: ``train.run`` (training, then the final evaluation), ``evaluate.run`` and
``sine.run`` -- the code ``minireptile train``, ``eval`` and ``sine`` run, on the one core.
Each run's command (the one that makes the same files by hand), its wall-clock and CPU seconds
are recorded in OUTPUT.runs.jsonl beside its output. A run whose results exist is reused,
and said so; an interrupted one resumes from its checkpoint.

Several processes share one experiment: start the same ``minireptile reproduce`` command
once per core (``--threads 1``; ``--jobs N`` starts them). Each run is claimed with the lock
of its output (``files.locked``: the one lock every writer of a run folder takes), a
process skips the runs others hold, and the last to finish writes the report
(``Session.pending``).

Or several processes share each run: under ``mpiexec -n R minireptile reproduce ...
--distributed mpi``, rank 0 runs the experiment alone (its decisions, locks, records and
reports) and sends each library call to the other ranks, which wait for them in ``serve``;
every rank then runs the call with the communicator, which splits each meta-batch and
evaluation over them (``distributed.py``).
"""
import dataclasses
import json
import os
import platform
import shlex
import sys
import time

import numpy as np

from .. import __version__, backend, checkpoint, config, evaluate, files, presets, sine, train
from ..distributed import LOCAL
from ..errors import UserError
from .report import figure


class Session:
    """One experiment at one budget: its folder, its runs, their records.

    folder: OUT/EXPERIMENT for the paper budget, OUT/BUDGET/EXPERIMENT otherwise.
    threads: recorded in each command (the CLI has set them for this process).
    partial: run nothing; the report covers the runs that have finished, and names the
    others (``missing``) in EXPERIMENT-partial.json/.md/.png.
    comm: the processes sharing each run (``call``); the session itself lives on rank 0.
    """

    def __init__(self, experiment, budget, out, threads=None, stream=None, ways=None,
                 partial=False, full=False, comm=LOCAL):
        self.experiment, self.budget, self.threads, self.ways = experiment, budget, threads, ways
        self.full = full                  # table2: the 20-way run to its end on the CPU too
        self.folder = os.path.join(out, *(() if budget == "paper" else (budget,)), experiment)
        self.stream = stream or sys.stdout
        self.records, self.reused = [], []
        self.pending = {}                 # output path -> the process holding its run
        self.partial, self.missing = partial, []
        self.comm, self.ranks_cpu = comm, 0.0   # the CPU seconds of ranks other than 0
        files.make_folder(self.folder, "--out")

    def path(self, *parts):
        return os.path.join(self.folder, *parts)

    def say(self, text):
        print(f"[reproduce {self.experiment}] {text}", file=self.stream, flush=True)

    def config(self, preset="quick", **fields):
        """A checked TrainConfig: the preset's values, then these fields."""
        base = presets.preset(preset, fields.get("classes"), fields.get("shots"))
        return config.TrainConfig(**{**base, **fields}).validate()

    def flags(self):
        """The device and thread flags each recorded command carries (None: not given)."""
        device = backend.device()
        return {"device": None if device == "cpu" else device, "threads": self.threads}

    def extra(self):
        """``flags`` as words of a command line."""
        return [w for k, v in self.flags().items() if v is not None for w in (f"--{k}", str(v))]

    def launch(self, command):
        """command as typed: with R processes sharing the runs, under ``mpiexec -n R`` with
        ``--distributed mpi`` (and ``--deterministic``)."""
        if self.comm.size == 1:
            return command
        return (f"mpiexec -n {self.comm.size} {command} --distributed mpi"
                + (" --deterministic" if self.comm.deterministic else ""))

    def call(self, fn, *args, **kwargs):
        """fn(*args, stream, comm, **kwargs) -- train.run, evaluate.run or sine.run -- on
        every rank: rank 0 sends the call to the ranks waiting in ``serve``, and adds the
        CPU seconds they spend in it to ``ranks_cpu`` (one process: sends nothing, adds 0)."""
        self.comm.from_root(lambda: (fn, args, kwargs))
        result, others = _run_call(self.comm, fn, args, kwargs, self.stream)
        self.ranks_cpu += others
        return result

    def cpu_clock(self):
        """CPU seconds of every rank so far (of this process alone without MPI)."""
        return time.process_time() + self.ranks_cpu

    def step(self, output, command, run, done):
        """Run run() (which writes output) unless done(); record it either way.

        command: the command line that makes output by hand. Returns the record, or None
        while another process holds output's lock (it is then in ``pending``) or, with
        ``partial``, while it has not finished (it is then in ``missing``).
        """
        if done():
            self.reused.append(output)
        elif self.partial:
            self.missing.append(command)
            return None
        else:
            try:
                with files.locked(output):
                    if not done():                             # it may have finished since
                        self.say("running: " + command)
                        timed(run, output + ".log.runs.jsonl", command, self.cpu_clock)
            except files.Busy as busy:
                self.pending[output] = busy.holder
                self.say(f"skipped, {busy.holder} runs it: {command}")
                return None
        runs = read_jsonl(output + ".log.runs.jsonl")
        record = {"command": command, "wall_seconds": round(sum(r["wall_seconds"]
                                                                for r in runs), 2),
                  "cpu_seconds": round(sum(r["cpu_seconds"] for r in runs), 2),
                  "invocations": len(runs)}
        self.records.append(record)
        return record

    def train(self, folder, cfg, stop_at=None):
        """train.run(cfg, folder): skipped once FOLDER/results.json exists (or, with stop_at,
        once the checkpoint reaches that iteration), resumed when FOLDER holds a checkpoint.

        stop_at: end at that iteration although cfg.meta_iters is larger (epsilon is
        annealed over meta_iters: the paper's schedule, cut short). Returns (results, or
        None when stopped, record); (None, None) while another process holds it.
        """
        results = os.path.join(folder, "results.json")
        refuse_other_run(folder, cfg)
        command = self.launch(config.command_line(cfg, [*self.extra(), "--checkpoint", folder]))

        def done():
            return os.path.exists(results) or (stop_at is not None and
                                               iteration(folder) >= stop_at)
        record = self.step(folder, command, lambda: self.call(
            train.run, cfg, folder, stop_at=stop_at), done)
        if record is None:
            return None, None
        if not record["invocations"] and os.path.exists(results):   # trained by hand
            record["wall_seconds"] = round(read_json(results)["total_seconds"], 1)
            ran_outside(record, results)
        return (read_json(results) if os.path.exists(results) else None), record

    def evaluate(self, folder, out, **options):
        """evaluate.run(folder, out=out, **options), skipped while OUT holds the evaluation
        of the checkpoint's current iteration (or the checkpoint is gone: a finished run may
        drop it). Returns (results, record); (None, None) while another holds it."""
        def done():
            return os.path.exists(out) and (not checkpoint.exists(folder) or read_json(
                out).get("iteration") == iteration(folder))
        if not done():                                   # the checkpoint has moved on:
            for stale in (out, out + ".log.runs.jsonl"):  # its time is the new evaluation's
                if os.path.exists(stale):
                    os.remove(stale)
        command = self.launch(evaluate.eval_command(folder, **options, **self.flags(), out=out))
        record = self.step(out, command, lambda: self.call(
            evaluate.run, folder, out=out, **options), done)
        if record is None:
            return None, None
        if not record["invocations"]:                    # evaluated by hand
            ran_outside(record, out)
        return read_json(out), record

    def sine(self, cfg, theta_path):
        """sine.run(cfg, the session's folder): skipped once theta_path (its trained
        initialisation) exists. Returns the record, or None while another holds it."""
        command = self.launch(cfg.resolved().command_line(self.folder))
        return self.step(theta_path, command, lambda: self.call(sine.run, cfg, self.folder),
                         lambda: os.path.exists(theta_path))

    def after(self, output, again, poll=2.0):
        """Wait while another process holds output's run, then return again(): for a short
        run whose result every later one needs (maml's calibration sets the runs' lengths).
        A holder that dies leaves the run to again()."""
        while files.holder(output):
            time.sleep(poll)
        self.pending.pop(output, None)
        return again()

    def unfinished(self):
        """What an experiment returns in place of ``finish`` while other processes hold some
        of its runs: None; whichever process finishes last writes the report."""
        self.say(f"{len(self.pending)} run(s) still running in other processes; the last "
                 f"process to finish writes {self.experiment}.json")
        return None

    def finish(self, results, markdown, draw=None):
        """Write EXPERIMENT.json (results, commands, times, machine), EXPERIMENT.md and, with
        matplotlib, EXPERIMENT.png (draw(plt) returns the figure); returns the JSON's path.
        With ``partial``: EXPERIMENT-partial.*, which also list the missing commands."""
        if self.reused:
            self.say(f"reusing {len(self.reused)} finished run(s) found in {self.folder}: "
                     + ", ".join(os.path.relpath(p, self.folder) for p in self.reused))
        name = self.path(self.experiment + ("-partial" if self.partial else ""))
        wall = sum(r["wall_seconds"] for r in self.records)
        cpu = sum(r["cpu_seconds"] for r in self.records)
        document = {"experiment": self.experiment, "budget": self.budget,
                    "device": backend.device(), "command": reproduce_command(self),
                    "wall_seconds": round(wall, 1), "cpu_seconds": round(cpu, 1),
                    "machine": machine(), "minireptile": __version__, **results,
                    "commands": self.records,
                    **({"partial": True, "missing": self.missing} if self.partial else {})}
        files.write_json(name + ".json", document)
        head = (f"`{reproduce_command(self)}`: {len(self.records)} commands, "
                f"{wall / 60:.1f} min wall-clock, {cpu / 60:.1f} min CPU "
                f"({machine()['cpus']} CPUs, {document['device']}).\n\n")
        if self.partial:
            head += (f"**Partial:** {len(self.missing)} command(s) have not finished; their "
                     f"cells read \"not run yet\" (`{reproduce_command(self)}` runs them).\n\n")
        files.write_text(name + ".md", head + markdown)
        if draw is not None and figure(name + ".png", draw):
            self.say(f"wrote {name}.png")
        self.say(f"wrote {name}.json and {name}.md")
        return name + ".json"


def ran_outside(record, results):
    """A run made by hand rather than by reproduce: record the command its results file says
    ran (it may differ in --threads or --split), not the one reproduce would run."""
    ran = read_json(results).get("command")
    if ran and ran != record["command"]:
        record["command"], record["run_outside_reproduce"] = ran, True


def serve(comm):
    """The ranks other than 0 of ``reproduce --distributed mpi``: run each call rank 0
    sends (``Session.call``), sharing it, until rank 0 sends None (``dismiss``)."""
    quiet = open(os.devnull, "w")
    while (call := comm.from_root(lambda: None)) is not None:
        _run_call(comm, *call, quiet)


def dismiss(comm):
    """Rank 0: let the ranks waiting in ``serve`` leave."""
    if comm.size > 1:
        comm.from_root(lambda: None)


def _run_call(comm, fn, args, kwargs, stream):
    """fn(*args, stream, comm, **kwargs) on this rank, then one collective: (its result,
    the CPU seconds the other ranks spent in it)."""
    cpu = time.process_time()
    result = fn(*args, stream=stream, comm=comm, **kwargs)
    spent = comm.gather([np.array([time.process_time() - cpu])], comm.size)[0]
    return result, float(spent.sum() - spent[comm.rank])


def timed(run, runs_file, command, cpu_clock=time.process_time):
    """run(), its wall-clock and CPU seconds (cpu_clock: every rank's under MPI) appended to
    runs_file as one JSON line (also when it is interrupted: a resumed run's seconds add
    up)."""
    wall, cpu, status = time.time(), cpu_clock(), "interrupted"
    try:
        run()
        status = "finished"
    finally:
        os.makedirs(os.path.dirname(os.path.abspath(runs_file)), exist_ok=True)
        with open(runs_file, "a") as f:
            f.write(json.dumps({"command": command, "started": round(wall, 1),
                                "wall_seconds": round(time.time() - wall, 2),
                                "cpu_seconds": round(cpu_clock() - cpu, 2),
                                "status": status}) + "\n")


def refuse_other_run(folder, cfg):
    """UserError when FOLDER holds a run (finished, or a checkpoint) of another training than
    cfg: after a budget changes (meta_iters), a finished run would be taken as done and an
    unfinished one extended. Evaluation settings may differ."""
    results = os.path.join(folder, "results.json")
    if os.path.exists(results):
        saved = read_json(results).get("config") or {}
    elif checkpoint.exists(folder):
        saved = checkpoint.load(folder)[4]
    else:
        return
    differ = config.differences(saved, dataclasses.asdict(cfg))
    if differ:
        raise UserError(f"{folder}: holds another run ({'; '.join(differ)}); move it away "
                        f"or choose another --out")


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
    session.say(f"waiting for {len(processes)} more job(s) to finish their runs")
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
             *ways, *(["--full"] if session.full else []), *session.extra(), "--out", out]
    return session.launch(shlex.join(words))


def iteration(folder):
    """The iteration of the checkpoint in folder (0 when there is none); reads only its
    small configuration entry."""
    path = os.path.join(folder, checkpoint.FILENAME)
    if not os.path.exists(path):
        return 0
    try:
        with np.load(path, allow_pickle=False) as z:
            return int(json.loads(str(z["meta"]))["iteration"])
    except (OSError, ValueError, KeyError, EOFError):
        return checkpoint.load(folder)[3]               # its one-line error


def read_json(path):
    with open(path) as f:
        return json.load(f)


def read_jsonl(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def machine():
    """The machine the numbers were measured on."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpus": cpus, "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(), "numpy": np.__version__,
            "load_average": [round(x, 2) for x in os.getloadavg()]
            if hasattr(os, "getloadavg") else None}
