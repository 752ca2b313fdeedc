"""Exact MAML on Omniglot 5-way 1-shot, against FOMAML and Reptile at equal compute.

Exact MAML (Eqs. 17-21, ``--algo maml``) differentiates through SGD steps, so all three
algorithms run the same SGD inner loop on the same tasks: the paper's 1-shot 5-way Omniglot
command (--train-shots 10, mini-batches of 10, meta-batch 5, epsilon annealed to 0) with
``--sgd --learning-rate 0.03`` (SGD on the summed loss of 10 images: 0.3 on the mean, near
Finn et al.'s 0.4). MAML and FOMAML take Finn et al.'s separate test batch
(``--foml-tail 1``: 4 inner steps on 45 images, the meta-gradient on the 5 held out);
Reptile takes 5 steps on all 50. The outer step is epsilon times each algorithm's update,
``--meta-step 1`` for Reptile and 5 for MAML and FOMAML, whose update is one step's size
where Reptile's is k = 5 steps' (Eqs. 39 and 41: their AvgGrad terms then match).

Equal compute: MAML runs the budget's iterations; FOMAML and Reptile run as many as take the
same CPU time (CPU rather than wall-clock time, which the machine's load changes), measured
per iteration by two short calibration runs of each (the difference of a run of c and of 3c
iterations, which cancels loading and evaluation). The table gives each run's wall-clock and
CPU seconds. Each checkpoint is evaluated non-transductive (the train command's own
evaluation) and transductive (``minireptile eval --transductive``) on the same tasks.
"""
from .. import checkpoint
from . import report

SHARED = ("--defaults paper --shots 1 --train-shots 10 --inner-batch 10 --inner-iters 5 "
          "--meta-batch 5 --meta-step-final 0 --eval-batch 5 --eval-iters 50 --sgd "
          "--learning-rate 0.03")
ALGOS = (("maml", "MAML (exact, second order)", "--algo maml --foml-tail 1 --meta-step 5"),
         ("fomaml", "FOMAML (separate tail)", "--algo fomaml --foml-tail 1 --meta-step 5"),
         ("reptile", "Reptile", "--algo reptile --meta-step 1"))
PAPER = {  # Table 2, 1-shot 5-way Omniglot: (accuracy %, 95% interval %); MAML from Finn et
    # al., FOMAML from their code with MAML's hyper-parameters (the paper's note)
    "maml": {"transductive": (98.7, 0.4)}, "fomaml": {"transductive": (98.3, 0.5)},
    "reptile": {"non-transductive": (95.39, 0.09), "transductive": (97.68, 0.04)}}
BUDGETS = {  # meta_iters: MAML's; calib: c; samples: evaluation tasks
    "paper": dict(meta_iters=20000, calib=20, samples=2000, split="both"),
    "quick": dict(meta_iters=300, calib=10, samples=200, split="test"),
    "tiny": dict(meta_iters=2, calib=1, samples=2, split="test", extra="--eval-iters 2")}


def run(s, b):
    per_iteration = {name: calibrate(s, name, flags, b) for name, _, flags in ALGOS}
    runs = {}
    for name, label, flags in ALGOS:
        iters = max(1, round(b["meta_iters"] * per_iteration["maml"] / per_iteration[name]))
        folder = s.path(name)
        train_flags = [*SHARED.split(), *flags.split(), "--meta-iters", str(iters),
                       "--eval-interval", str(max(1, iters // 10)), "--eval-tasks-during",
                       str(max(1, b["samples"] // 10)), "--eval-samples", str(b["samples"]),
                       *b.get("extra", "").split()]
        results, train = s.train(folder, train_flags)
        if train is None:                                   # another process runs it
            continue
        trans, evaluation = s.evaluate(
            folder, ["--transductive", "--eval-samples", str(b["samples"]), "--split",
                     b["split"], *b.get("extra", "").split()],
            s.path(f"{name}-transductive.json"))
        if evaluation is None:
            continue
        runs[name] = {"label": label, "meta_iters": iters,
                      "cpu_seconds_per_iteration": per_iteration[name],
                      "non-transductive": report.accuracy(results),
                      "transductive": report.accuracy(trans),
                      "train_classes": report.accuracy(results, "train"),
                      "training_loop_wall_seconds": results["train_seconds"],
                      "train_command_wall_seconds": train["wall_seconds"],
                      "train_command_cpu_seconds": train["cpu_seconds"],
                      "curve": checkpoint.read_log(folder),
                      "commands": [train["command"], evaluation["command"]]}
    if s.pending:
        return s.unfinished()
    return s.finish({"settings": b, "paper": PAPER, "runs": runs}, markdown(runs, b),
                    lambda plt: draw(plt, runs))


def calibrate(s, name, flags, b):
    """CPU seconds per meta-iteration of one algorithm: runs of c and 3c iterations (one
    that another process runs is waited for: every run's length depends on them)."""
    cpu = []
    for iters in (b["calib"], 3 * b["calib"]):
        calib_flags = [*SHARED.split(), *flags.split(), "--meta-iters", str(iters),
                       "--eval-interval", str(iters), "--eval-tasks-during", "1",
                       "--eval-samples", "1", "--eval-iters", "1"]
        folder = s.path("calibration", f"{name}-{iters}")
        record = s.train(folder, calib_flags)[1]
        if record is None:                   # another process runs it: seconds; wait
            record = s.after(folder, lambda: s.train(folder, calib_flags)[1])
        cpu.append(record["cpu_seconds"])
    return max(cpu[1] - cpu[0], 1e-3) / (2 * b["calib"])


def markdown(runs, b):
    header = ["algorithm", "meta-iterations", "CPU s / iteration", "train command (wall / CPU)",
              "non-transductive", "transductive", "paper (Table 2)"]
    rows = []
    for name, r in runs.items():
        paper = "; ".join(f"{mode} {v[0]} +/- {v[1]}%" for mode, v in PAPER[name].items())
        rows.append([r["label"], f"{r['meta_iters']:,}", f"{r['cpu_seconds_per_iteration']:.3f}",
                     f"{r['train_command_wall_seconds'] / 60:.1f} / "
                     f"{r['train_command_cpu_seconds'] / 60:.1f} min",
                     report.pct(*r["non-transductive"]), report.pct(*r["transductive"]), paper])
    text = (f"Exact MAML against FOMAML and Reptile on 1-shot 5-way Omniglot (test classes, "
            f"{b['samples']} tasks, 95% intervals), at equal CPU time: MAML "
            f"{b['meta_iters']:,} meta-iterations, the others as many as take the same CPU "
            f"time. The paper's MAML number is Finn et al.'s and its FOMAML "
            f"number from their code with the same hyper-parameters (transductive); its "
            f"Reptile numbers are 100,000 iterations with an Adam inner loop.\n\n"
            + report.markdown_table(header, rows) + "\nCommands:\n\n")
    return text + "".join(f"    {c}\n" for r in runs.values() for c in r["commands"])


def draw(plt, runs):
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in runs.values():
        per_it = r["cpu_seconds_per_iteration"]
        ax.plot([c["iteration"] * per_it / 60 for c in r["curve"]],
                [c["test"] for c in r["curve"]], "-o", ms=3, label=r["label"])
    ax.set(xlabel="training CPU time (min): iterations x calibrated CPU s per iteration",
           ylabel="test accuracy (1-shot 5-way)", ylim=(0, 1),
           title="Omniglot 1-shot 5-way, SGD inner loop, equal compute")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    return fig
