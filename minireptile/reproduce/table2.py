"""Table 2: Reptile on Omniglot with the paper's commands, each checkpoint evaluated 4 ways.

The paper's 1-shot and 5-shot commands for one N differ only in ``--shots``, which only the
evaluation reads (a training task has ``--train-shots 10`` images per class either way), so
one run per N trains with the 1-shot command, and ``minireptile eval`` evaluates its
checkpoint 1-shot and 5-shot, transductive and not, on the same tasks (the evaluation's seed
is the checkpoint's). The learning curve is the run's log.jsonl: 1-shot test accuracy every
--eval-interval iterations.

The 20-way rows train 200,000 meta-iterations in the paper. On a CPU the paper budget stops
the paper's command at 20,000 (epsilon still annealed over 200,000, so the run can be
resumed to the end on a GPU with ``--device cuda``, which runs the full budget) and reports
those rows as partial.
"""
import os

from .. import backend, checkpoint
from . import common, report

PAPER = {  # Table 2, Reptile: (N, K, transductive) -> (accuracy %, 95% interval %)
    (5, 1, False): (95.39, 0.09), (5, 5, False): (98.90, 0.10),
    (20, 1, False): (88.14, 0.15), (20, 5, False): (96.65, 0.33),
    (5, 1, True): (97.68, 0.04), (5, 5, True): (99.48, 0.06),
    (20, 1, True): (89.43, 0.14), (20, 5, True): (97.12, 0.32)}

COMMANDS = {  # supervised-reptile's README (the paper's), 1-shot, on --defaults paper
    5: dict(shots=1, inner_batch=10, inner_iters=5, meta_step=1, meta_batch=5, eval_batch=5,
            eval_iters=50, learning_rate=0.001, meta_step_final=0, train_shots=10),
    20: dict(shots=1, classes=20, inner_batch=20, inner_iters=10, meta_step=1, meta_batch=5,
             eval_batch=10, eval_iters=50, learning_rate=0.0005, meta_step_final=0,
             train_shots=10)}

# per N: meta_iters (the schedule); stop_cpu: where a CPU run stops (None: the end);
# interval/during: learning curve; samples: final evaluation tasks per split (the train
# command's); partial: (tasks, split) of the evaluations of a stopped run; extra, eval_extra:
# more settings for train, for eval
BUDGETS = {
    "paper": {5: dict(meta_iters=100000, stop_cpu=None, interval=5000, during=200,
                      samples=2000, split="both"),
              20: dict(meta_iters=200000, stop_cpu=20000, interval=5000, during=200,
                       samples=2000, split="both", partial=(1000, "test"))},
    "quick": {5: dict(meta_iters=1000, stop_cpu=None, interval=250, during=50, samples=200,
                      split="test"),
              20: dict(meta_iters=200, stop_cpu=None, interval=50, during=20, samples=50,
                       split="test")},
    "tiny": {5: dict(meta_iters=2, stop_cpu=None, interval=1, during=1, samples=2,
                     split="test", extra=dict(eval_iters=2), eval_extra=dict(eval_iters=2)),
             20: dict(meta_iters=40, stop_cpu=2, interval=1, during=1, samples=2,
                      split="test", partial=(2, "test"),
                      extra=dict(eval_iters=2, checkpoint_interval=1),
                      eval_extra=dict(eval_iters=2))},
}


def run(s, budget):
    rows, curves = [], {}
    for n in budget:                     # 5 and 20, or the one of --ways
        b = budget[n]
        folder = s.path(f"o{n}")
        cfg = s.config("paper", **{**COMMANDS[n], "meta_iters": b["meta_iters"],
                                   "eval_interval": b["interval"],
                                   "eval_tasks_during": b["during"],
                                   "eval_samples": b["samples"], **b.get("extra", {})})
        stop = b["stop_cpu"] if backend.device() == "cpu" and not s.full else None
        trained, record = s.train(folder, cfg, stop_at=stop)
        if record is None:                                  # another process trains it
            continue
        done = common.iteration(folder)
        samples, split = (b["samples"], b["split"]) if trained else b["partial"]
        for shots in (1, 5):
            for transductive in (False, True):
                if trained and shots == 1 and not transductive:    # the train command's own
                    results, rec = trained, record
                else:
                    mode = "transductive" if transductive else "non-transductive"
                    out = os.path.join(folder, f"eval-{shots}shot-{mode}.json")
                    results, rec = s.evaluate(folder, out, shots=shots, eval_samples=samples,
                                              split=split, transductive=transductive,
                                              **b.get("eval_extra", {}))
                    if rec is None:                         # another process evaluates it
                        continue
                rows.append(row(n, shots, transductive, results, rec, done, b["meta_iters"]))
        curves[n] = checkpoint.read_log(folder)
    if s.pending:
        return s.unfinished()
    return s.finish({"paper": {f"{n}-way {k}-shot" + (" transductive" if t else ""): v
                               for (n, k, t), v in PAPER.items()},
                     "settings": {str(n): budget[n] for n in budget},
                     "rows": rows, "learning_curves": {str(n): c for n, c in curves.items()}},
                    markdown(rows, curves), lambda plt: draw(plt, curves, rows))


def row(n, shots, transductive, results, record, done, meta_iters):
    """One line of the table: paper and ours (test classes), whether they agree."""
    paper = PAPER[(n, shots, transductive)]
    ours = report.accuracy(results)
    half = report.combined(ours[1], paper[1] / 100)
    return {"classes": n, "shots": shots, "transductive": transductive,
            "paper": {"accuracy": paper[0] / 100, "ci95": paper[1] / 100},
            "ours": {"accuracy": ours[0], "ci95": ours[1], "tasks": len(results["test"]["correct"]),
                     "train_classes": results.get("train", {}).get("accuracy")},
            "iteration": done, "meta_iters": meta_iters, "partial": done < meta_iters,
            "difference": ours[0] - paper[0] / 100, "combined_ci95": half,
            "agrees": abs(ours[0] - paper[0] / 100) <= half, "command": record["command"]}


def markdown(rows, curves):
    header = ["Omniglot", "evaluation", "paper (Reptile)", "minireptile (test classes)",
              "ours - paper", "agrees", "meta-iterations", "test tasks"]
    table = []
    for r in rows:
        its = f"{r['iteration']:,}" + (f" of {r['meta_iters']:,} (partial)" if r["partial"]
                                       else "")
        table.append([f"{r['shots']}-shot {r['classes']}-way",
                      "transductive" if r["transductive"] else "non-transductive",
                      report.pct(r["paper"]["accuracy"], r["paper"]["ci95"]),
                      report.pct(r["ours"]["accuracy"], r["ours"]["ci95"]),
                      f"{100 * r['difference']:+.2f} (+/- {100 * r['combined_ci95']:.2f})",
                      "yes" if r["agrees"] else "no", its, r["ours"]["tasks"]])
    text = ("Table 2 (Omniglot), Reptile rows. \"agrees\": the difference is within the two "
            "95% intervals combined, sqrt(ours^2 + paper's^2).\n\n"
            + report.markdown_table(header, table))
    for n, log in curves.items():
        if log:
            text += (f"\nLearning curve, {n}-way 1-shot non-transductive (test classes):\n\n"
                     + report.markdown_table(["meta-iteration", "train classes", "test classes"],
                                             [[f"{r['iteration']:,}", report.pct(r["train"]),
                                               report.pct(r["test"])] for r in log]))
    seen = []
    for r in rows:
        if r["command"] not in seen:
            seen.append(r["command"])
    return text + "\nCommands:\n\n" + "".join(f"    {c}\n" for c in seen)


def draw(plt, curves, rows):
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, n in zip(axes, (5, 20)):
        log = curves.get(n) or []
        its = [r["iteration"] for r in log]
        for split, style in (("test", "-o"), ("train", "--")):
            ax.plot(its, [r[split] for r in log], style, ms=3, label=f"{split} classes")
        ax.axhline(PAPER[(n, 1, False)][0] / 100, color="k", ls=":", lw=1,
                   label="paper, 1-shot (Table 2)")
        done = [r for r in rows if r["classes"] == n]
        title = f"Omniglot {n}-way 1-shot, Reptile"
        if done and done[0]["partial"]:
            title += f" ({done[0]['iteration']:,} of {done[0]['meta_iters']:,} iterations)"
        ax.set(title=title, xlabel="meta-iteration", ylabel="accuracy", ylim=(0, 1))
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right")
    return fig
