"""``minireptile reproduce``: the paper's Table 2 and Figures 1, 3 and 4, one command each.

Every experiment runs ``minireptile train``/``eval``/``sine`` code at a budget -- ``paper``
(the paper's settings and length), ``quick`` (minutes on 2 CPU cores) or ``tiny`` (a smoke
test) -- and writes OUT/[BUDGET/]EXPERIMENT/EXPERIMENT.json (every number with its 95%
interval, every command with its time), EXPERIMENT.md (the paper beside us) and
EXPERIMENT.png. Running it again skips finished runs and resumes unfinished ones.
"""
import argparse

from .. import backend
from . import add_distributed_flags, start_distributed

EXPERIMENTS_HELP = """experiments:
  table2   Table 2, Omniglot, Reptile: 5-way and 20-way rows, transductive and not
  fig1     Figure 1, sine regression: random init, after MAML, after Reptile
  fig3     Figure 3, inner-gradient combinations g1, g2, g1+g2, ... (section 6.2)
  fig4     Figure 4a/4b, shared-tail against separate-tail FOMAML (section 6.3)
  maml     Table 2, Omniglot, exact MAML and FOMAML at Finn et al.'s settings, and the cost
           of MAML, FOMAML and Reptile per meta-iteration
  imaml    iMAML (Rajeswaran et al. 2019), Omniglot 5-way 1-shot, at the authors' settings
"""


def register(sub):
    from ..reproduce import BUDGETS, EXPERIMENTS, OUT
    p = sub.add_parser("reproduce", help="run one of the paper's experiments, results beside "
                                         "the paper's",
                       description=__doc__.split("\n\n")[1], epilog=EXPERIMENTS_HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("experiment", choices=EXPERIMENTS, help="which experiment (see below)")
    p.add_argument("--budget", choices=BUDGETS, default="quick",
                   help="paper (the paper's length), quick (default; minutes on 2 CPU "
                        "cores) or tiny (seconds; a smoke test, numbers meaningless)")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None,
                   help="the device of every run (default $MINIREPTILE_DEVICE or cpu)")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="CPU threads of every run (default $MINIREPTILE_THREADS or the CPUs)")
    p.add_argument("--ways", type=int, choices=(5, 20), default=None,
                   help="table2 only: the rows of this N alone (default both), e.g. the 5-way "
                        "rows while the 20-way run is still training")
    p.add_argument("--jobs", type=int, default=1, metavar="N",
                   help="run the experiment's commands in N processes at once, each taking "
                        "the next free one (default 1); with --threads 1, one per core. "
                        "Starting the same command N times does the same")
    p.add_argument("--partial", action="store_true",
                   help="fig4 only: train nothing; write EXPERIMENT-partial.json/.md/.png from "
                        "the runs that have finished (the others read 'not run yet')")
    p.add_argument("--full", action="store_true",
                   help="on a CPU, train the runs the CPU paper budget stops early (table2's "
                        "20-way, maml's 5-shot and 20-way cells) to the paper's end")
    p.add_argument("--out", default=OUT, metavar="DIR",
                   help=f"results folder (default {OUT}): DIR/EXPERIMENT for the paper "
                        f"budget, DIR/BUDGET/EXPERIMENT for the others; finished runs found "
                        f"there are reused (the committed reports are in "
                        f"docs/results/reproduce)")
    add_distributed_flags(p)
    p.set_defaults(func=run)


def run(args):
    from ..reproduce import run as reproduce
    backend.set_backend(args.device)
    path = reproduce(args.experiment, args.budget, args.out, args.threads, ways=args.ways,
                     jobs=args.jobs, partial=args.partial, full=args.full,
                     comm=start_distributed(args))
    if path is not None:
        print(f"results: {path}")
