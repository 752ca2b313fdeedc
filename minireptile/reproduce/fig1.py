"""Figure 1: sine-wave regression (section 4) -- a random init, after MAML, after Reptile.

Each meta-trained initialisation is made by the ``minireptile sine`` command's own code: its
parser and defaults, ``cli.sine.train`` (``train.train_sine``, the meta core), then
``evaluate.adaptation_losses`` on the held-out tasks and ``cli.sine.report``, which writes the
same sine-ALGO.json as ``minireptile sine --algo ALGO`` with the recorded flags (same seed:
same random init, tasks and numbers; a test checks it). The initialisation is kept
(theta-ALGO.npy) so that a second run redraws without retraining.

The paper gives no length for this run; the ``paper`` budget is the ``sine`` command's
defaults (20,000 meta-iterations of 10 tasks, k = 5 inner SGD steps with alpha = 0.02).
The figure's three panels show the first held-out task: the true curve, its p = 10
sampled points, and the prediction before and after 32 SGD steps on them.
"""
import numpy as np

from .. import backend, checkpoint
from ..evaluate import adaptation_losses
from ..models import mlp
from ..tasks import sine
from . import common, report

BUDGETS = {"paper": dict(meta_iters=20000, eval_tasks=100, eval_iters=32),
           "quick": dict(meta_iters=5000, eval_tasks=100, eval_iters=32),
           "tiny": dict(meta_iters=3, eval_tasks=4, eval_iters=4)}
ALGOS = ("maml", "reptile")
TITLES = {"random": "(a) Before training", "maml": "(b) After MAML training",
          "reptile": "(c) After Reptile training"}


def run(s, b):
    for algo in ALGOS:
        argv = ["sine", "--algo", algo, "--meta-iters", str(b["meta_iters"]),
                "--eval-tasks", str(b["eval_tasks"]), "--eval-iters", str(b["eval_iters"]),
                *s.device_flags(), "--out", s.folder]
        s.command(argv, s.path(f"sine-{algo}.log"), done=s.path(f"theta-{algo}.npy"),
                  call=lambda argv, algo=algo: sine_command(argv, s.path(f"theta-{algo}.npy")))
    if s.pending:
        return s.unfinished()
    args = parse(["sine", *s.device_flags()])              # the command's defaults
    model = mlp((1, 64, 64, 1), args.activation)
    theta0, held_out = tasks(model, args, b)
    rows, panels = {}, {}
    for name in ("random", *ALGOS):
        theta = theta0 if name == "random" else backend.to_device(
            np.load(s.path(f"theta-{name}.npy")), backend.dtype())
        losses, phi = adaptation_losses(model, theta, held_out, args.inner_lr,
                                        (0, 1, b["eval_iters"]))
        per_task = backend.to_host(model.loss(phi, *held_out.test))          # (tasks,)
        rows[name] = {"losses": losses, "loss_after": float(per_task.mean()),
                      "ci95": float(1.96 * per_task.std() / np.sqrt(len(per_task)))}
        panels[name] = (theta, phi)
    findings = [finding(rows, name, b["eval_iters"]) for name in ALGOS]
    results = {"settings": b, "losses": rows, "findings": findings,
               "paper": "Figure 1 only (no numbers): after 32 steps the MAML and Reptile "
                        "inits fit the sampled sine; the random init does not"}
    return s.finish(results, markdown(rows, b, findings),
                    lambda plt: draw(plt, model, panels, held_out, b["eval_iters"]))


def finding(rows, name, k):
    """The paper's point, in numbers: the meta-learned init adapts, the random one does not."""
    where = report.compare((rows[name]["loss_after"], rows[name]["ci95"]),
                           (rows["random"]["loss_after"], rows["random"]["ci95"]))
    label = {"maml": "MAML", "reptile": "Reptile"}[name]
    return {"claim": f"after {k} steps the {label} init's loss is below the random init's "
                     f"(Figure 1{'b' if name == 'maml' else 'c'} against 1a)",
            "verdict": report.verdict(where == "below", where == "above")}


def parse(argv):
    """The ``minireptile sine`` flags of argv, defaults resolved as the command does."""
    from ..cli import build_parser, sine as sine_cli
    args = build_parser().parse_args(argv)
    step, final, outer = sine_cli.DEFAULTS[args.algo]
    args.meta_step = step if args.meta_step is None else args.meta_step
    args.meta_step_final = final if args.meta_step_final is None else args.meta_step_final
    args.outer = args.outer or outer
    sine_cli.check(args)
    backend.set_backend(args.device, args.dtype)
    return args


def tasks(model, args, b):
    """The random init and the held-out tasks of ``minireptile sine`` (seeded as it does)."""
    theta0 = backend.to_device(model.init(backend.make_rng(args.seed)), backend.dtype())
    return theta0, sine.sample(backend.make_rng((args.seed, 1)), b["eval_tasks"])


def sine_command(argv, theta_path):
    """``minireptile sine ARGV`` as cli.sine.run does it, keeping the trained init."""
    from ..cli import sine as sine_cli
    args = parse(argv)
    rng = backend.make_rng(args.seed)
    model = mlp((1, 64, 64, 1), args.activation)
    theta0 = backend.to_device(model.init(rng), backend.dtype())
    theta, seconds = sine_cli.train(model, theta0, rng, args)
    held_out = sine.sample(backend.make_rng((args.seed, 1)), args.eval_tasks)
    steps = sine_cli.eval_steps(args.eval_iters)
    results = {name: adaptation_losses(model, th, held_out, args.inner_lr, steps)
               for name, th in ((args.algo, theta), ("random", theta0))}
    print(sine_cli.table(results, steps, args.eval_tasks))
    common.write_text(f"{args.out}/sine-{args.algo}.json",
                      sine_cli.report(args, results, seconds))
    checkpoint.atomic_write(theta_path, lambda f: np.save(f, backend.to_host(theta)))
    return 0


def markdown(rows, b, findings):
    k = b["eval_iters"]
    header = ["initialisation", "loss before (s=0)", "after 1 step", f"after {k} steps",
              "paper"]
    table = [[{"random": "random (before training)", "maml": "after MAML",
               "reptile": "after Reptile"}[name],
              f"{r['losses'][0]:.3f}", f"{r['losses'][1]:.3f}",
              f"{r['loss_after']:.3f} +/- {r['ci95']:.3f}", "figure only"]
             for name, r in rows.items()]
    return (f"Figure 1 (sine regression): mean loss (Eq. 8) over {b['eval_tasks']} held-out "
            f"tasks after s SGD steps (alpha 0.02) on their 10 points, with its 95% "
            f"interval; meta-training {b['meta_iters']:,} iterations of 10 tasks.\n\n"
            + report.markdown_table(header, table) + "\n"
            + "".join(f"- {f['claim']}: **{f['verdict']}**\n" for f in findings))


def draw(plt, model, panels, held_out, k):
    x = np.linspace(*sine.X_RANGE, 200)[None, :, None]                       # (1, 200, 1)
    xd = backend.to_device(x, backend.dtype())
    px, py = (backend.to_host(a[0, :, 0]) for a in held_out.train)
    true = sine.sine(held_out.amplitude[:1], held_out.phase[:1], x)[0, :, 0]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4), sharey=True)
    for ax, name in zip(axes, ("random", *ALGOS)):
        theta, phi = panels[name]
        ax.plot(x[0, :, 0], backend.to_host(model.predict(theta[None], xd))[0, :, 0],
                label="Before")
        ax.plot(x[0, :, 0], backend.to_host(model.predict(phi[:1], xd))[0, :, 0],
                label=f"After {k}")
        ax.plot(x[0, :, 0], true, "k", label="True")
        ax.plot(px, py, "o", color="C3", label="Sampled")
        ax.set_title(TITLES[name])
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right")
    return fig
