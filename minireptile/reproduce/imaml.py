"""iMAML's Omniglot 5-way 1-shot row (Rajeswaran et al. 2019, Table 2: iMAML-GD 99.16 +/-
0.35%), at the authors' settings (``--defaults imaml``, ``presets.imaml_preset``).

The run trains ``minireptile train omniglot --defaults imaml``: 16 gradient steps on each
task's support set, then one step on the proximal term (their lambda 2, 10 on our summed
loss), the implicit meta-gradient by 5 conjugate-gradient steps on the exact Hessian-vector
products (with the authors' damping), 32 tasks per outer Adam step of 0.001; then
evaluates as their measure_accuracy.py does (16 plain SGD steps, the query batch's own
batch-norm statistics: transductive) and with the paper's non-transductive protocol beside
it, on the same tasks.

The authors train "at least 20,000" meta-steps. On a CPU the paper budget stops at
``stop_cpu`` (the schedule is constant, so stopping cuts nothing else) and reports the row
as partial; ``--full`` or ``--device cuda`` trains to the end.
"""
import os

from .. import backend, checkpoint
from . import common, report

PAPER = {"iMAML-GD": (99.16, 0.35), "iMAML-HF": (99.50, 0.26)}   # their Table 2, 5-way 1-shot
BUDGETS = {  # meta_iters: None for the preset's 20,000; samples, split: final evaluation
    "paper": dict(meta_iters=None, stop_cpu=6000, samples=2000, split="both"),
    "quick": dict(meta_iters=200, stop_cpu=None, samples=200, split="test"),
    "tiny": dict(meta_iters=2, stop_cpu=None, samples=2, split="test",
                 extra=dict(eval_iters=2, eval_interval=1, inner_iters=3, cg_steps=2))}


def run(s, b):
    length = {} if b["meta_iters"] is None else {"meta_iters": b["meta_iters"]}
    cfg = s.config("imaml", eval_samples=b["samples"], **length, **b.get("extra", {}))
    folder = s.path("o5-1shot-imaml")
    stop = None if s.full or backend.device() != "cpu" else b["stop_cpu"]
    trained, record = s.train(folder, cfg, stop_at=stop)
    if record is None:                                       # another process runs it
        return s.unfinished()
    done = common.iteration(folder) or cfg.meta_iters
    row = {"iteration": done, "meta_iters": cfg.meta_iters, "partial": done < cfg.meta_iters,
           "commands": [record["command"]], "cpu_seconds": record["cpu_seconds"]}
    for mode, transductive in (("transductive", True), ("non-transductive", False)):
        if trained and transductive:                         # the train command's own
            results = trained
        else:
            samples = b["samples"] if trained else min(b["samples"], 1000)
            results, rec = s.evaluate(folder, os.path.join(folder, f"eval-{mode}.json"),
                                      transductive=transductive, eval_samples=samples,
                                      split=b["split"] if trained else "test")
            if rec is None:
                return s.unfinished()
            row["commands"].append(rec["command"])
        row[mode] = report.accuracy(results)
    paper = PAPER["iMAML-GD"]
    half = report.combined(row["transductive"][1], paper[1] / 100)
    row.update(difference=row["transductive"][0] - paper[0] / 100, combined_ci95=half,
               agrees=abs(row["transductive"][0] - paper[0] / 100) <= half)
    curve = checkpoint.read_log(folder)
    return s.finish({"paper": PAPER, "settings": b, "row": row, "learning_curve": curve},
                    markdown(row, b), lambda plt: draw(plt, curve))


def markdown(row, b):
    its = f"{row['iteration']:,}" + (f" of {row['meta_iters']:,} (partial)" if row["partial"]
                                     else "")
    table = report.markdown_table(
        ["Omniglot", "paper (iMAML-GD)", "minireptile, transductive", "ours - paper", "agrees",
         "non-transductive", "meta-iterations"],
        [["1-shot 5-way", report.pct(PAPER["iMAML-GD"][0] / 100, PAPER["iMAML-GD"][1] / 100),
          report.pct(*row["transductive"]),
          f"{100 * row['difference']:+.2f} (+/- {100 * row['combined_ci95']:.2f})",
          "yes" if row["agrees"] else "no", report.pct(*row["non-transductive"]), its]])
    return ("iMAML (Rajeswaran et al. 2019) at the authors' settings (`--defaults imaml`): "
            f"test classes, {b['samples']} tasks (1,000 for a partial run), 95% intervals.\n\n"
            + table + "\nCommands:\n\n" + "".join(f"    {c}\n" for c in row["commands"]))


def draw(plt, curve):
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot([c["iteration"] for c in curve], [c["test"] for c in curve], "-o", ms=3,
            label="iMAML, test classes (transductive)")
    ax.axhline(PAPER["iMAML-GD"][0] / 100, color="k", ls=":", lw=1, label="paper, iMAML-GD")
    ax.set(xlabel="meta-iteration", ylabel="accuracy", ylim=(0, 1),
           title="Omniglot 5-way 1-shot, iMAML at the authors' settings")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    return fig
