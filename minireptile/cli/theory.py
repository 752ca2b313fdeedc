"""``minireptile theory``: the paper's section 5 measured on the sine MLP or the Omniglot CNN.

  coefficients  AvgGrad and AvgGradInner (Eqs. 28-32) and E[g] of MAML, FOMAML and Reptile
                fitted as c1 AvgGrad + c2 AvgGradInner, against Eqs. (33)-(41), k = 2..K
  spectrum      extreme eigenvalues of the task-loss Hessian (eigsh on exact Hessian-vector
                products) before and after k inner steps, and the singular values of MAML's
                Jacobian (I - alpha H_1)...(I - alpha H_k)
  manifold      section 5.2: E[1/2 D(theta, W_tau)^2] (Eq. 42) along a Reptile run and joint
                training, with the expected loss beside it

coefficients and spectrum measure at a random initialisation and at a meta-trained theta:
--checkpoint DIR (a ``minireptile train omniglot`` folder; for sine, when DIR holds no
checkpoint, the in-process Reptile run's theta is written there). Each experiment prints
tables, writes JSON and, with matplotlib, a figure.
"""
import argparse
import time

from . import add_device_flags
from .. import backend, checkpoint, files
from ..errors import UserError

EXPERIMENTS = ("coefficients", "spectrum", "manifold")
DEFAULTS = {  # model: flag -> default
    "sine": dict(tasks={"coefficients": 2000, "spectrum": 10, "manifold": 10},
                 alphas="1e-4,3e-4,1e-3,3e-3,1e-2", groups=20, chunk=100, alpha=0.02,
                 inner_iters=5, meta_iters=5000, solve_steps=1000, solve_lr=0.02, tol=1e-6),
    "omniglot": dict(tasks={"coefficients": 20, "spectrum": 1, "manifold": 4},
                     alphas="1e-5,3e-5,1e-4", groups=10, chunk=5, alpha=1e-3, inner_iters=5,
                     meta_iters=100, solve_steps=100, solve_lr=1e-3, tol=1e-4),
}


def _default(name):
    """'sine X; omniglot Y' for a flag's help."""
    return "; ".join(f"{model} {d[name]}" for model, d in DEFAULTS.items())


def register(sub):
    parts = __doc__.split("\n\n")
    p = sub.add_parser("theory", help="section 5 measured: Taylor coefficients, Hessian "
                       "spectra, distances to task solutions",
                       description=parts[1] + "\n\n" + parts[2],
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("experiment", choices=EXPERIMENTS)
    p.add_argument("--model", choices=tuple(DEFAULTS), default="sine",
                   help="sine MLP (section 4) or Omniglot CNN (section 6.1); default sine")
    p.add_argument("--checkpoint", metavar="DIR", help="the meta-trained theta (see above)")
    p.add_argument("--data", metavar="FILE.h5", help="Omniglot data (default: embedded)")
    p.add_argument("--json", metavar="FILE",
                   help="results (default theory-EXPERIMENT-MODEL.json)")
    p.add_argument("--plot", metavar="FILE", help="figure (default theory-EXPERIMENT-MODEL.png)")
    p.add_argument("--tasks", type=int, help="sampled tasks (default, " + " / ".join(DEFAULTS)
                   + ": " + ", ".join(f"{e} " + " / ".join(str(d["tasks"][e]) for d in
                                                            DEFAULTS.values())
                                      for e in EXPERIMENTS) + ")")
    p.add_argument("--alphas", help="coefficients: inner SGD step sizes, comma-separated "
                   f"(default {_default('alphas')})")
    p.add_argument("--max-k", type=int, default=8, help="coefficients: k = 2..K (default 8)")
    p.add_argument("--groups", type=int, help="coefficients: groups of tasks for the standard "
                   f"errors (default {_default('groups')})")
    p.add_argument("--alpha", type=float, help="spectrum, manifold and sine's training: inner "
                   f"SGD step size (default {_default('alpha')})")
    p.add_argument("--inner-iters", type=int, help="k, inner steps of spectrum, manifold and "
                   f"sine's training (default {_default('inner_iters')})")
    p.add_argument("--meta-iters", type=int, help="Reptile iterations of manifold and of "
                   f"sine's training (default {_default('meta_iters')})")
    p.add_argument("--solve-steps", type=int, help="manifold: SGD steps approximating each "
                   f"task's solution (default {_default('solve_steps')})")
    p.add_argument("--solve-lr", type=float, help="manifold: their step size (default "
                   f"{_default('solve_lr')})")
    p.add_argument("--eigenvalues", type=int, default=3,
                   help="spectrum: how many at each end (default 3)")
    p.add_argument("--tol", type=float, help="spectrum: relative accuracy of eigsh "
                   f"(default {_default('tol')})")
    add_device_flags(p, dtype=False)
    p.add_argument("--dtype", choices=("float32", "float64"), default="float64",
                   help="floating-point precision (default float64)")
    p.set_defaults(func=run)


def settings(args):
    """The flags with each model's defaults filled in, checked; UserError for bad values."""
    d = DEFAULTS[args.model]
    for name in ("groups", "alpha", "inner_iters", "meta_iters", "solve_steps", "solve_lr",
                 "tol"):
        if getattr(args, name) is None:
            setattr(args, name, d[name])
    args.tasks = args.tasks or d["tasks"][args.experiment]
    try:
        args.alphas = [float(a) for a in (args.alphas or d["alphas"]).split(",")]
    except ValueError:
        raise UserError(f"--alphas {args.alphas!r}: expected numbers separated by commas")
    for name in ("tasks", "groups", "inner_iters", "meta_iters", "solve_steps", "eigenvalues"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1")
    if min(args.alphas + [args.alpha, args.solve_lr, args.tol]) <= 0:
        raise UserError("--alphas, --alpha, --solve-lr and --tol must be positive")
    if args.max_k < 2:
        raise UserError("--max-k must be at least 2: AvgGradInner needs two mini-batches")
    if args.experiment == "coefficients" and args.tasks < 2 * args.groups:
        raise UserError(f"--tasks {args.tasks} is too few for --groups {args.groups}: "
                        f"need at least 2 tasks per group")
    if args.data and args.model != "omniglot":
        raise UserError("--data applies to --model omniglot")
    if args.experiment == "manifold" and args.checkpoint:
        raise UserError("manifold runs Reptile from a random initialisation; --checkpoint "
                        "does not apply")
    args.chunk = d["chunk"]
    return args


def problem_of(args):
    """(Problem, the checkpoint's theta or None) for --model and --checkpoint."""
    from ..theory import omniglot_problem, sine_problem
    saved = None
    if checkpoint.exists(args.checkpoint):
        saved = checkpoint.load(args.checkpoint, expect="sine" if args.model == "sine" else
                                "fewshot")
    elif args.model == "omniglot" and args.experiment != "manifold":
        raise UserError("--model omniglot measures a meta-trained theta: give --checkpoint DIR "
                        "of `minireptile train omniglot --checkpoint DIR`")
    if args.model == "sine":
        problem = sine_problem(alpha=args.alpha)
    else:
        from ..config import load_data
        config = saved[4] if saved else {}
        problem = omniglot_problem(load_data(args.data, "omniglot"), config.get("classes", 5),
                                   config.get("train_shots", 10) or 10,
                                   config.get("inner_batch", 10), args.alpha)
    if saved is not None and saved[0].shape != (problem.model.num_params,):
        raise UserError(f"{args.checkpoint}: theta has {saved[0].shape[-1]} parameters; the "
                        f"{args.model} model has {problem.model.num_params}")
    return problem, None if saved is None else saved[0]


def thetas(args, problem, saved):
    """{"random": the seed's initialisation, "trained": the meta-trained theta} on the device.

    sine without a checkpoint: Reptile from the random initialisation (``theory.reptile``:
    --meta-iters iterations of 10 tasks, k = --inner-iters, SGD(--alpha), epsilon 1 -> 0),
    saved to --checkpoint when given.
    """
    from ..theory import reptile
    rng = backend.make_rng(args.seed)
    random = backend.to_device(problem.model.init(rng), backend.dtype())
    if saved is None:
        t0 = time.time()
        print(f"meta-training theta: Reptile, {args.meta_iters} iterations, k = "
              f"{args.inner_iters}, alpha = {args.alpha}", flush=True)
        saved = backend.to_host(reptile(problem, random, rng, args.meta_iters,
                                        args.inner_iters, args.alpha))
        print(f"  {time.time() - t0:.0f} s", flush=True)
        if args.checkpoint:
            checkpoint.save(args.checkpoint, saved, {}, rng, args.meta_iters,
                            {"kind": "sine", "model": "sine",
                             "trainer": "minireptile theory (Reptile)",
                             "meta_iters": args.meta_iters, "inner_iters": args.inner_iters,
                             "alpha": args.alpha, "meta_batch": 10, "seed": args.seed})
    return {"random": random, "trained": backend.to_device(saved, backend.dtype())}


def measure(args, problem, saved):
    """Run the experiment; returns its report."""
    from .. import theory
    rng = backend.make_rng((args.seed, 1))
    if args.experiment == "manifold":
        theta0 = backend.to_device(problem.model.init(backend.make_rng(args.seed)),
                                   backend.dtype())
        report = theory.manifold(problem, theta0, rng, args.meta_iters, args.inner_iters,
                                 args.alpha, args.tasks, args.solve_steps, args.solve_lr)
    else:
        points = thetas(args, problem, saved)
        if args.experiment == "coefficients":
            report = {name: theory.coefficients(problem, theta, rng, args.alphas,
                                                range(2, args.max_k + 1), args.tasks,
                                                args.groups, args.chunk)
                      for name, theta in points.items()}
        else:
            report = theory.spectrum(problem, points, rng, args.tasks, args.inner_iters,
                                     args.alpha, args.eigenvalues, args.tol)
    return report


def run(args):
    from ..theory import render
    settings(args)
    for path, flag in ((args.json, "--json"), (args.plot, "--plot")):
        if path:
            files.output_file(path, flag)
    backend.set_backend(args.device, args.dtype)
    problem, saved = problem_of(args)
    t0, cpu0 = time.time(), time.process_time()
    report = measure(args, problem, saved)
    seconds, cpu = time.time() - t0, time.process_time() - cpu0
    print(render(args.experiment, report))
    print(f"{args.experiment} on {args.model}: {seconds:.0f} s ({cpu:.0f} s of CPU time)")
    flags = {k: v for k, v in vars(args).items() if k != "func"}
    out = {"experiment": args.experiment, "model": args.model, "seconds": seconds,
           "cpu_seconds": cpu, "device": backend.device(), "flags": flags, "report": report}
    write(args, out)


def write(args, out):
    """The JSON, and with matplotlib the figure, each through a temporary name."""
    from ..theory import plot
    stem = f"theory-{args.experiment}-{args.model}"
    path = args.json or stem + ".json"
    files.write_json(path, out)
    print(f"wrote {path}")
    try:
        import matplotlib
    except ImportError:
        print("figures need matplotlib: pip install 'minireptile[plot]'")
        return
    matplotlib.use("Agg")
    path = args.plot or stem + ".png"
    files.atomic_write(path, lambda f: plot(args.experiment, out["report"], f))
    print(f"wrote {path}")
