"""Figure 3: inner-gradient combinations on 5-shot 5-way Omniglot (section 6.2).

The paper's own commands (supervised-reptile's README, "Comparing different inner-loop
gradient combinations"), flag for flag on ``minireptile train omniglot --defaults paper``
(args.py: 5-shot 5-way, meta-batch 1, so no meta-batch, as the section says):

    --sgd --seed 0 --inner-batch 25 --learning-rate 0.0003 --meta-step-final 0
    --meta-iters 40000 --eval-batch 25 --eval-iters 5 --meta-step 0.25
    --inner-iters k --train-shots 5k        k non-overlapping mini-batches of 25 images

SGD in the inner loop and (epsilon times the update) in the outer loop. The combination
sum_j w_j g_j is ``--combination``: last (g_k, the paper's ``--foml``), sum (Reptile, the
paper's default) and mean (the sum over k; the paper runs the sum at --meta-step 0.25/k:
0.125, 0.08325, 0.0625, the same update but for 0.08325 against 0.08333).

The learning curve is test-class accuracy on --eval-tasks-during tasks every
--eval-interval iterations (the paper evaluates one task every iteration and smooths);
the findings use the final evaluation (--eval-samples tasks per split).
"""
from .. import checkpoint
from ..config import flags
from . import report

SHARED = dict(sgd=True, seed=0, inner_batch=25, learning_rate=0.0003, meta_step=0.25,
              meta_step_final=0, eval_batch=25, eval_iters=5)     # on --defaults paper
CURVES = (  # (folder, label as in the paper's legend, k, combination)
    ("g1", "g1", 1, "last"),
    ("mean2", "1/2*(g1+g2)", 2, "mean"), ("sum2", "g1+g2", 2, "sum"), ("g2", "g2", 2, "last"),
    ("mean3", "1/3*(g1+g2+g3)", 3, "mean"), ("sum3", "g1+g2+g3", 3, "sum"),
    ("g3", "g3", 3, "last"),
    ("mean4", "1/4*(g1+g2+g3+g4)", 4, "mean"), ("sum4", "g1+g2+g3+g4", 4, "sum"),
    ("g4", "g4", 4, "last"))
BUDGETS = {  # meta_iters; interval, during: the curve; samples: final tasks per split
    "paper": dict(meta_iters=40000, interval=1000, during=100, samples=2000),
    "quick": dict(meta_iters=1000, interval=200, during=20, samples=200),
    "tiny": dict(meta_iters=2, interval=1, during=1, samples=2)}


def run(s, b):
    runs = {}
    for name, label, k, combination in CURVES:
        cfg = s.config("paper", **SHARED, meta_iters=b["meta_iters"], inner_iters=k,
                       train_shots=5 * k, algo="combination", combination=combination,
                       eval_interval=b["interval"], eval_tasks_during=b["during"],
                       eval_samples=b["samples"])
        folder = s.path("runs", name)
        results, record = s.train(folder, cfg)
        if record is None:                                  # another process runs it
            continue
        runs[name] = {"label": label, "k": k, "combination": combination,
                      "test": report.accuracy(results), "train": report.accuracy(results, "train"),
                      "curve": checkpoint.read_log(folder), "command": record["command"],
                      "wall_seconds": record["wall_seconds"]}
    if s.pending:
        return s.unfinished()
    found = findings({n: r["test"] for n, r in runs.items()})
    return s.finish({"settings": b, "runs": runs, "findings": found,
                     "paper": "Figure 3 only (curves, no numbers); the findings below are "
                              "the text's (section 6.2)"},
                    markdown(runs, found, b), lambda plt: draw(plt, runs))


def findings(acc):
    """The text's four findings, each judged with the 95% intervals of the final accuracies.

    acc: {folder: (mean, half-width)}."""
    def beats(a, b):                                     # True, False (opposite) or None
        where = report.compare(acc[a], acc[b])
        return True if where == "above" else False if where == "below" else None

    out = []
    below = [beats(other, "g1") for other in acc if other != "g1"]
    out.append(("g1 alone is ineffective: below every other combination",
                all(below), any(b is False for b in below)))
    two = beats("g2", "sum2")
    out.append(("two-step Reptile (g1+g2) is below two-step FOMAML (g2)", two, two is False))
    for family, names in (("last gradient g_k", ("g2", "g3", "g4")),
                          ("sum (Reptile)", ("sum2", "sum3", "sum4")),
                          ("mean", ("mean2", "mean3", "mean4"))):
        more = beats(names[2], names[0])
        out.append((f"{family} improves with more mini-batches (k = 4 above k = 2)", more,
                    more is False))
    gain = (acc["sum4"][0] - acc["sum2"][0]) - (acc["g4"][0] - acc["g2"][0])
    half = report.combined(*(acc[n][1] for n in ("sum4", "sum2", "g4", "g2")))
    out.append(("the sum gains more than the last gradient from k = 2 to 4: "
                f"(sum4 - sum2) - (g4 - g2) = {100 * gain:+.1f} +/- {100 * half:.1f} points",
                gain > half, gain < -half))
    return [{"claim": claim, "verdict": report.verdict(bool(yes), bool(no))}
            for claim, yes, no in out]


def markdown(runs, found, b):
    header = ["combination", "k", "flags", "test classes", "train classes", "wall-clock"]
    table = [[r["label"], r["k"], f"--inner-iters {r['k']} --train-shots {5 * r['k']} "
              f"--combination {r['combination']}", report.pct(*r["test"]),
              report.pct(*r["train"]), f"{r['wall_seconds'] / 60:.1f} min"]
             for r in runs.values()]
    text = (f"Figure 3 (5-shot 5-way Omniglot, SGD inner and outer loops, meta-batch 1): "
            f"accuracy after {b['meta_iters']:,} meta-iterations, {b['samples']} tasks per "
            f"split, 95% intervals. The paper trains 40,000 iterations and shows curves only."
            "\n\n" + report.markdown_table(header, table) + "\nThe paper's findings "
            "(section 6.2), judged with the 95% intervals:\n\n"
            + "".join(f"- {f['claim']}: **{f['verdict']}**\n" for f in found))
    its = [r["iteration"] for r in next(iter(runs.values()))["curve"]]
    curve = [[f"{it:,}", *(report.pct(dict((c["iteration"], c["test"]) for c in r["curve"])
                                      .get(it, float("nan"))) for r in runs.values())]
             for it in its]
    text += (f"\nLearning curves: test-class accuracy on {b['during']} tasks every "
             f"{b['interval']:,} iterations.\n\n"
             + report.markdown_table(["iteration", *(r["label"] for r in runs.values())], curve))
    shared = "--defaults paper " + flags(SHARED)
    return text + (f"\nCommands: `minireptile train omniglot {shared} --meta-iters "
                   f"{b['meta_iters']} ...` with the flags of each row (each in "
                   f"fig3.json).\n")


def draw(plt, runs):
    fig, ax = plt.subplots(figsize=(9, 5))
    colours = {1: "C0", 2: "C1", 3: "C2", 4: "C3"}
    styles = {"last": ":", "sum": "-", "mean": "--"}
    for r in runs.values():
        ax.plot([c["iteration"] for c in r["curve"]], [c["test"] for c in r["curve"]],
                styles[r["combination"]] if r["k"] > 1 else "-", color=colours[r["k"]],
                marker="o", ms=3, label=r["label"])
    ax.set(xlabel="Iteration", ylabel="Accuracy", ylim=(0, 1),
           title="Inner-loop gradient combinations, 5-shot 5-way Omniglot (test classes)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2, loc="lower right")
    return fig
