"""Figure 1: sine-wave regression (section 4) -- a random init, after MAML, after Reptile.

Each meta-trained initialisation is made by ``sine.run``, the code of ``minireptile sine
--algo ALGO`` with the budget's lengths: it writes sine-ALGO.json and theta-ALGO.npy, the
trained initialisation, so that a second run redraws without retraining. The random init
and the held-out tasks are the ones the command draws (``sine.initial``, the same seed).

The paper gives no length for this run; the ``paper`` budget is the ``sine`` command's
defaults (20,000 meta-iterations of 10 tasks, k = 5 inner SGD steps with alpha = 0.02).
The figure's three panels show the first held-out task: the true curve, its p = 10
sampled points, and the prediction before and after 32 SGD steps on them.
"""
import numpy as np

from .. import backend, sine
from . import report

BUDGETS = {"paper": dict(meta_iters=20000, eval_tasks=100, eval_iters=32),
           "quick": dict(meta_iters=5000, eval_tasks=100, eval_iters=32),
           "tiny": dict(meta_iters=3, eval_tasks=4, eval_iters=4)}
ALGOS = ("maml", "reptile")
TITLES = {"random": "(a) Before training", "maml": "(b) After MAML training",
          "reptile": "(c) After Reptile training"}


def run(s, b):
    configs = {algo: sine.SineConfig(algo=algo, **b) for algo in ALGOS}
    for algo, cfg in configs.items():
        s.sine(cfg, s.path(f"theta-{algo}.npy"))
    if s.pending:
        return s.unfinished()
    cfg = configs["reptile"].resolved()
    model, theta0, held_out = sine.initial(cfg)
    rows, panels = {}, {}
    for name in ("random", *ALGOS):
        theta = theta0 if name == "random" else backend.to_device(
            np.load(s.path(f"theta-{name}.npy")), backend.dtype())
        losses, phi = sine.adaptation_losses(model, theta, held_out, cfg.inner_lr,
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
