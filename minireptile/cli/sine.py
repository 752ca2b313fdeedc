"""``minireptile sine``: meta-train the 1-64-64-1 MLP on sine waves, then compare inits.

Section 4 / Figure 1 of the paper: after meta-training with Reptile, FOMAML or exact
MAML, the initialisation is fine-tuned with 32 SGD steps on the p = 10 points of each
of 100 held-out tasks, next to the random initialisation meta-training started from.
Writes ``sine-<algo>.json`` (the table), and with matplotlib ``sine-<algo>.png`` and
``sine-random.png`` (Figure 1's panels), each through a temporary name.
"""
import json
import os
import sys
import time

import numpy as np

from . import add_device_flags, add_distributed_flags, start_distributed
from .. import backend
from ..distributed import LOCAL
from ..errors import UserError
from ..evaluate import adaptation_losses
from ..meta import ALGOS
from ..models import mlp
from ..optim import Adam
from ..progress import Progress
from ..tasks import sine
from ..train import train_sine

DEFAULTS = {  # algo: (meta_step, meta_step_final, outer optimizer)
    "reptile": (1.0, 0.0, "sgd"),
    "fomaml": (1e-3, 1e-4, "adam"),
    "maml": (1e-3, 1e-4, "adam"),
}


def register(sub):
    p = sub.add_parser("sine", help="meta-learn sine-wave regression (section 4, Figure 1)",
                       description=__doc__.split("\n\n")[1])
    p.add_argument("--algo", choices=ALGOS, default="reptile", help="default reptile")
    p.add_argument("--meta-iters", type=int, default=20000, help="outer steps (default 20000)")
    p.add_argument("--inner-iters", type=int, default=5,
                   help="k, inner SGD steps per task (default 5)")
    p.add_argument("--inner-lr", "--learning-rate", dest="inner_lr", type=float, default=0.02,
                   help="alpha, inner and test-time SGD step size (default 0.02)")
    p.add_argument("--meta-step", type=float, default=None,
                   help="epsilon at the start (default: reptile 1.0, fomaml/maml 1e-3)")
    p.add_argument("--meta-step-final", type=float, default=None,
                   help="epsilon at the end, annealed linearly (default: reptile 0, else 1e-4)")
    p.add_argument("--outer", choices=("sgd", "adam"), default=None,
                   help="outer optimizer (default: reptile sgd, i.e. Eq. 5; fomaml/maml adam)")
    p.add_argument("--meta-batch", type=int, default=10, help="n, tasks per outer step "
                   "(default 10)")
    p.add_argument("--shared-tail", action="store_true",
                   help="fomaml: last gradient on the 10 points, not on the loss's grid")
    p.add_argument("--activation", choices=("tanh", "relu"), default="tanh",
                   help="hidden activation of the MLP (default tanh)")
    p.add_argument("--eval-tasks", type=int, default=100, help="held-out tasks (default 100)")
    p.add_argument("--eval-iters", type=int, default=32,
                   help="test-time SGD steps (default 32, as in Figure 1)")
    p.add_argument("--out", default="sine-out", help="output directory (default sine-out)")
    add_device_flags(p)
    add_distributed_flags(p)
    p.set_defaults(func=run)


def check(args):
    """One-line UserError for flags that cannot work."""
    for name in ("meta_iters", "inner_iters", "meta_batch", "eval_tasks", "eval_iters"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1, "
                            f"got {getattr(args, name)}")
    for name in ("inner_lr", "meta_step", "meta_step_final"):
        value = getattr(args, name)
        if not np.isfinite(value) or value < 0 or (name == "inner_lr" and value == 0):
            kind = "positive" if name == "inner_lr" else "non-negative"
            raise UserError(f"--{name.replace('_', '-')} must be a {kind} number, got {value}")
    if args.shared_tail and args.algo == "reptile":
        raise UserError("--shared-tail applies to --algo fomaml or maml (Reptile has no tail)")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise UserError(f"--out {args.out} exists and is not a directory")


def run(args):
    step, final, outer = DEFAULTS[args.algo]
    args.meta_step = step if args.meta_step is None else args.meta_step
    args.meta_step_final = final if args.meta_step_final is None else args.meta_step_final
    args.outer = args.outer or outer
    check(args)
    backend.set_backend(args.device, args.dtype)
    rng = backend.make_rng(args.seed)
    model = mlp((1, 64, 64, 1), args.activation)
    theta0 = backend.to_device(model.init(rng), backend.dtype())
    comm = start_distributed(args)
    theta, seconds = train(model, theta0, rng, args, comm)
    if comm.rank != 0:                                   # rank 0 evaluates and reports
        return
    held_out = sine.sample(backend.make_rng((args.seed, 1)), args.eval_tasks)
    steps = eval_steps(args.eval_iters)
    results = {name: adaptation_losses(model, th, held_out, args.inner_lr, steps)
               for name, th in ((args.algo, theta), ("random", theta0))}
    print(table(results, steps, args.eval_tasks))
    print(f"meta-training: {args.meta_iters} iterations in {seconds:.1f} s "
          f"({args.meta_iters / seconds:.0f} it/s)")
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"sine-{args.algo}.json")
    write_atomic(path, lambda f: f.write(report(args, results, seconds).encode()))
    print(f"wrote {path}")
    save_figures(model, args, held_out, {args.algo: (theta, results[args.algo][1]),
                                         "random": (theta0, results["random"][1])})


def train(model, theta, rng, args, comm=LOCAL):
    """Meta-train with progress shown (on rank 0 of comm); returns (theta, seconds)."""
    valid = sine.sample(backend.make_rng((args.seed, 2)), 25)
    stream = None if comm.rank == 0 else open(os.devnull, "w")
    progress = Validated(args.meta_iters, lambda theta: validate(model, theta, valid, args),
                         stream)
    start = time.perf_counter()
    theta = train_sine(
        model, theta, rng, args.algo, args.meta_iters, args.inner_iters, args.inner_lr,
        args.meta_step, args.meta_step_final, args.meta_batch,
        outer=Adam(args.meta_step, beta1=0.9) if args.outer == "adam" else None,
        shared_tail=args.shared_tail, callback=progress, comm=comm)
    backend.synchronize()
    progress.close()
    return theta, time.perf_counter() - start


def eval_steps(n):
    """0, 1, 2, 4, ... up to n, and n itself."""
    return tuple(sorted({0, n} | {2 ** i for i in range(n.bit_length()) if 2 ** i <= n}))


def validate(model, theta, tasks, args):
    """Mean loss after the test-time steps on a few fixed tasks; a UserError once it is NaN."""
    loss = adaptation_losses(model, theta, tasks, args.inner_lr, (args.eval_iters,))[0]
    loss = loss[args.eval_iters]
    if not np.isfinite(loss):
        raise UserError(f"meta-training diverged (validation loss {loss}); lower --meta-step "
                        f"or --inner-lr")
    return loss


class Validated:
    """Progress with a validation loss, ``loss(theta)``, evaluated every 5% of the run."""

    def __init__(self, total, loss, stream=None):
        self.progress = Progress(total, stream=stream or sys.stderr, every=5.0)
        self.total, self.loss, self.every = total, loss, max(1, total // 20)

    def __call__(self, i, theta):
        due = i % self.every == 0 or i in (1, self.total)
        if due:
            self.last = self.loss(theta)
        self.progress.update(i, f"validation loss after adaptation {self.last:.3f}", force=due)

    def close(self):
        self.progress.close()


def table(results, steps, n):
    """The adaptation table: mean loss over n held-out tasks after s SGD steps."""
    lines = [f"mean loss (Eq. 8) over {n} held-out tasks after s test-time SGD steps",
             f"{'init':>8} | " + " ".join(f"{f's={s}':>7}" for s in steps)]
    for name, (losses, _) in results.items():
        lines.append(f"{name:>8} | " + " ".join(f"{losses[s]:7.3f}" for s in steps))
    return "\n".join(lines)


def report(args, results, seconds):
    config = {k: v for k, v in vars(args).items() if k not in ("func", "command")}
    return json.dumps({
        "command": command_line(config), "config": config, "train_seconds": round(seconds, 2),
        "losses": {name: {str(s): v for s, v in losses.items()}
                   for name, (losses, _) in results.items()},
    }, indent=2) + "\n"


def command_line(config):
    """The command that reproduces a run, every resolved default spelled out."""
    flags = [f"--{k.replace('_', '-')}" + ("" if v is True else f" {v}")
             for k, v in config.items() if v is not None and v is not False]
    return "minireptile sine " + " ".join(flags)


def write_atomic(path, write):
    """write(file) into path + '.tmp', then rename it over path."""
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        write(f)
    os.replace(tmp, path)


def save_figures(model, args, tasks, inits):
    """Figure 1's panel for each init: the true curve of the first held-out task, its p
    points, and the prediction before and after the test-time steps."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no figures (pip install 'minireptile[plot]')")
        return
    x = np.linspace(*sine.X_RANGE, 200)[None, :, None]                       # (1, 200, 1)
    xd = backend.to_device(x, backend.dtype())
    px, py = (backend.to_host(a[0, :, 0]) for a in tasks.train)
    for name, (theta, phi) in inits.items():
        fig, ax = plt.subplots(figsize=(5, 4))
        ax.plot(x[0, :, 0], sine.sine(tasks.amplitude[:1], tasks.phase[:1], x)[0, :, 0],
                "k", label="True")
        for w, label in ((theta[None], "Before"), (phi[:1], f"After {args.eval_iters}")):
            ax.plot(x[0, :, 0], backend.to_host(model.predict(w, xd))[0, :, 0], label=label)
        ax.plot(px, py, "o", color="C3", label="Sampled")
        ax.set_title("random init" if name == "random" else f"after {name} meta-training")
        ax.legend(loc="lower right")
        path = os.path.join(args.out, f"sine-{name}.png")
        write_atomic(path, lambda f: fig.savefig(f, format="png", dpi=100))
        plt.close(fig)
        print(f"wrote {path}")
