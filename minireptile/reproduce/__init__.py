"""The paper's experiments, one command each: ``minireptile reproduce EXPERIMENT``.

    table2   Table 2, Omniglot, Reptile: 5-way and 20-way, 1-shot and 5-shot, transductive
             and not, with the learning curve                             table2.py
    fig1     Figure 1, sine regression: random init, after MAML, after Reptile     fig1.py
    fig3     Figure 3, inner-gradient combinations g1 ... g1+g2+g3+g4 (section 6.2)  fig3.py
    fig4     Figure 4a/4b, shared-tail against separate-tail FOMAML (section 6.3)   fig4.py
    maml     Table 2's MAML and FOMAML rows at Finn et al.'s settings, and the cost of
             each algorithm per meta-iteration                            maml.py
    imaml    iMAML's Omniglot 5-way 1-shot row at the authors' settings  imaml.py

Each builds the configurations of its runs and runs them with the library (``train.run``,
``evaluate.run``, ``sine.run``: ``common.Session``) at a budget:
``paper`` (the paper's settings and length), ``quick`` (minutes on 2 CPU cores; fewer
iterations, points and evaluation tasks) or ``tiny`` (seconds: the tests' smoke run, no
meaningful numbers). Several processes share its runs (``jobs``, ``files.locked``), or, under
MPI, each run (``comm``: rank 0 runs the experiment, ``common.serve`` the other ranks). It
writes EXPERIMENT.json (every number with its 95% interval, every
command with its wall-clock and CPU seconds), EXPERIMENT.md (the paper beside us) and, with
matplotlib, EXPERIMENT.png, under OUT/EXPERIMENT (paper) or OUT/BUDGET/EXPERIMENT. Running it
again skips what is done and resumes what is not.
"""
from .. import files
from ..distributed import LOCAL
from ..errors import UserError
from . import common, fig1, fig3, fig4, imaml, maml, table2
from .common import Session

EXPERIMENTS = {"table2": table2, "fig1": fig1, "fig3": fig3, "fig4": fig4, "maml": maml,
               "imaml": imaml}
BUDGETS = ("paper", "quick", "tiny")
OUT = "runs/reproduce"   # the default folder; the committed reports are docs/results/reproduce


def run(experiment, budget="quick", out=OUT, threads=None, stream=None, ways=None, jobs=1,
        partial=False, full=False, comm=LOCAL):
    """Run (or resume) one experiment; returns the path of its JSON, or None while other
    processes still run some of its commands (the last of them writes it).

    ways: table2 only, the rows of one N (5 or 20) instead of both. jobs: start jobs - 1
    more processes running this experiment with this one, each taking the next command
    that no other holds; wait for them, then write the report. partial: run nothing, and
    report the runs that have finished (experiments with ``PARTIAL``: fig4, whose points
    take a CPU several sessions) as EXPERIMENT-partial.*. full: on a CPU too, train the runs
    a CPU paper budget stops early (table2's 20-way, maml's 5-shot and 20-way) to the end.
    comm (``distributed.py``): the processes sharing each run; rank 0 runs the experiment
    and returns its path, the others serve its calls and return None. The device and CPU
    threads are the process's (``backend.set_backend``, ``parallel.set_threads``); threads
    is recorded in the commands."""
    if experiment not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {experiment!r}; expected one of {EXPERIMENTS}")
    if budget not in BUDGETS:
        raise ValueError(f"unknown budget {budget!r}; expected one of {BUDGETS}")
    module = EXPERIMENTS[experiment]
    settings = module.BUDGETS[budget]
    if ways is not None:
        if experiment != "table2":
            raise UserError(f"--ways chooses Table 2's rows; {experiment} has no ways")
        settings = {ways: settings[ways]}
    if jobs < 1:
        raise UserError(f"--jobs {jobs}: expected 1 or more processes")
    if partial and not getattr(module, "PARTIAL", False):
        raise UserError(f"--partial: {experiment} has no partial report (fig4 has)")
    if partial and jobs > 1:
        raise UserError("--partial runs nothing; --jobs does not go with it")
    if comm.size > 1 and jobs > 1:
        raise UserError(f"--jobs {jobs} with {comm.size} MPI ranks: the ranks share each run; "
                        f"give one or the other")
    if comm.rank != 0:
        return common.serve(comm)

    def new_session():                                   # a pass's records start afresh
        return Session(experiment, budget, out, threads, stream, ways, partial, full, comm)

    session = new_session()
    helpers = [common.start_copy(session, i) for i in range(1, jobs)]
    try:
        while True:
            path = module.run(session, settings)
            if not session.pending:
                break
            if helpers:                                  # ours: wait, then look again
                common.wait_for(session, helpers)
                helpers = []
            elif any(files.holder(path) for path in session.pending):
                path = None                              # another process's: it finishes
                break
            session = new_session()
    finally:
        common.stop(helpers)
    common.dismiss(comm)       # after an error, mpiexec stops the ranks (distributed.leave)
    return path
