"""``minireptile sine``: meta-train the 1-64-64-1 MLP on sine waves, then compare inits.

Section 4 / Figure 1 of the paper: after meta-training with Reptile, FOMAML or exact
MAML, the initialisation is fine-tuned with 32 SGD steps on the p = 10 points of each
of 100 held-out tasks, next to the random initialisation meta-training started from.
Writes sine-ALGO.json (the table), theta-ALGO.npy (the initialisation) and, with matplotlib,
sine-ALGO.png and sine-random.png (Figure 1's panels), each through a temporary name.
"""
import dataclasses
import sys

from . import add_device_flags, add_distributed_flags, start_distributed
from .. import backend, sine
from ..meta import ALGOS


def register(sub):
    d = sine.SineConfig()
    p = sub.add_parser("sine", help="meta-learn sine-wave regression (section 4, Figure 1)",
                       description=__doc__.split("\n\n")[1])
    p.add_argument("--algo", choices=ALGOS, default=d.algo, help="default reptile")
    p.add_argument("--meta-iters", type=int, default=d.meta_iters,
                   help=f"outer steps (default {d.meta_iters})")
    p.add_argument("--inner-iters", type=int, default=d.inner_iters,
                   help=f"k, inner SGD steps per task (default {d.inner_iters})")
    p.add_argument("--inner-lr", "--learning-rate", dest="inner_lr", type=float,
                   default=d.inner_lr,
                   help=f"alpha, inner and test-time SGD step size (default {d.inner_lr})")
    p.add_argument("--meta-step", type=float, default=None,
                   help="epsilon at the start (default: reptile 1.0, fomaml/maml 1e-3)")
    p.add_argument("--meta-step-final", type=float, default=None,
                   help="epsilon at the end, annealed linearly (default: reptile 0, else 1e-4)")
    p.add_argument("--outer", choices=("sgd", "adam"), default=None,
                   help="outer optimizer (default: reptile sgd, i.e. Eq. 5; fomaml/maml adam)")
    p.add_argument("--meta-batch", type=int, default=d.meta_batch,
                   help=f"n, tasks per outer step (default {d.meta_batch})")
    p.add_argument("--shared-tail", action="store_true",
                   help="fomaml: last gradient on the 10 points, not on the loss's grid")
    p.add_argument("--imaml-lambda", type=float, default=d.imaml_lambda, metavar="LAMBDA",
                   help=f"imaml: the proximal term's strength (default {d.imaml_lambda})")
    p.add_argument("--imaml-inner", choices=("proximal", "authors"), default=d.imaml_inner,
                   help="imaml's inner loop: proximal (k steps on L_train + (lambda/2)"
                        "||phi - theta||^2, the paper's iMAML-GD; default) or authors (k steps "
                        "on L_train, then one on the proximal term alone, as their code)")
    p.add_argument("--cg-steps", type=int, default=d.cg_steps, metavar="N",
                   help=f"imaml: conjugate-gradient iterations (default {d.cg_steps})")
    p.add_argument("--cg-damping", type=float, default=d.cg_damping, metavar="D",
                   help="imaml: solve ((1 + D) I + H / (LAMBDA + D')) g = L_test' as the "
                        "authors' code does (default 0)")
    p.add_argument("--cg-lambda-damping", type=float, default=d.cg_lambda_damping,
                   metavar="D'", help="imaml: the D' above (default 0)")
    p.add_argument("--activation", choices=("tanh", "relu"), default=d.activation,
                   help=f"hidden activation of the MLP (default {d.activation})")
    p.add_argument("--eval-tasks", type=int, default=d.eval_tasks,
                   help=f"held-out tasks (default {d.eval_tasks})")
    p.add_argument("--eval-iters", type=int, default=d.eval_iters,
                   help=f"test-time SGD steps (default {d.eval_iters}, as in Figure 1)")
    p.add_argument("--out", default="runs/sine",
                   help="output folder (default runs/sine)")
    add_device_flags(p)
    add_distributed_flags(p)
    p.set_defaults(func=run)


def run(args):
    cfg = sine.SineConfig(**{f.name: getattr(args, f.name)
                             for f in dataclasses.fields(sine.SineConfig)}).resolved()
    backend.set_backend(args.device, args.dtype)
    comm = start_distributed(args)
    sine.run(cfg, args.out, sys.stdout, comm)
