"""``minireptile train``, ``eval`` and ``plot``: few-shot meta-training (section 6.1).

The paper's flags keep their names and meanings, so its README's commands run unchanged
after ``minireptile train omniglot --defaults paper`` (or ``miniimagenet``). Defaults: every
flag left out takes the quick embedded-Omniglot run's value (5-way 1-shot, minutes on 2
cores), so changing one flag changes only that one; ``--defaults paper`` gives every flag
left out supervised-reptile's args.py default instead (what the paper's commands assume),
and ``--defaults maml`` Finn et al.'s MAML settings (Table 2's MAML and FOMAML rows).
"""
import argparse
import dataclasses
import os
import sys

from .. import backend, checkpoint, config, evaluate, files, presets, train
from ..errors import UserError
from . import add_device_flags, add_distributed_flags, start_distributed

PAPER_FLAGS = (("classes", int, "number of classes per task (N-way)"),
               ("shots", int, "number of examples per class at evaluation (K-shot)"),
               ("train_shots", int, "examples per class in a training task (0 = --shots)"),
               ("inner_batch", int, "inner-loop mini-batch size"),
               ("inner_iters", int, "inner-loop iterations k"),
               ("learning_rate", float, "inner-loop step size (Adam's or SGD's)"),
               ("meta_step", float, "outer step size epsilon at the start"),
               ("meta_step_final", float, "outer step size at the end (annealed linearly)"),
               ("meta_batch", int, "tasks per meta-iteration n"),
               ("meta_iters", int, "number of meta-iterations"),
               ("eval_batch", int, "mini-batch size when fine-tuning for evaluation"),
               ("eval_iters", int, "fine-tuning steps at evaluation"),
               ("eval_samples", int, "tasks in the final evaluation"),
               ("eval_interval", int, "meta-iterations between quick evaluations"),
               ("weight_decay", float, "multiply the weights by this before every inner "
                                       "step (1 = off)"))
EVALUATION = ("shots", "eval_batch", "eval_iters", "eval_samples")   # what eval may change


def register(sub):
    d = config.TrainConfig()
    p = sub.add_parser("train", help="meta-train a few-shot classifier and evaluate it",
                       description="Meta-train the paper's few-shot CNN (section 6.1) with "
                                   "Reptile, FOMAML or exact MAML, then evaluate it.\n\n"
                                   + __doc__.split("\n\n")[1],
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dataset", choices=("omniglot", "miniimagenet"), help="which CNN and data")
    p.add_argument("--data", metavar="FILE.h5", help="packed dataset (minireptile pack); "
                   "default for omniglot: the full Omniglot set embedded in the package")
    for name, typ, text in PAPER_FLAGS:
        p.add_argument("--" + name.replace("_", "-"), type=typ, default=None,
                       help=f"{text} (quick default {getattr(d, name)})")
    p.add_argument("--replacement", action="store_true", default=None,
                   help="sample inner mini-batches with replacement instead of cycling")
    p.add_argument("--transductive", action="store_true",
                   help="classify all test samples in one batch (shared batch norm)")
    p.add_argument("--algo", choices=("reptile", "fomaml", "maml", "imaml"), default=None,
                   help="meta-algorithm (default reptile; maml is exact, imaml implicit "
                        "(Rajeswaran et al. 2019); both need --sgd)")
    p.add_argument("--imaml-lambda", type=float, default=None, metavar="LAMBDA",
                   help=f"iMAML: the proximal term's strength (default {d.imaml_lambda})")
    p.add_argument("--imaml-inner", choices=("proximal", "authors"), default=None,
                   help="iMAML's inner loop: proximal, k - 1 steps of gradient descent on "
                        "L_train + (lambda/2)||phi - theta||^2 (the paper's iMAML-GD; default), "
                        "or authors, k - 1 steps on L_train then one on the proximal term "
                        "alone (their code; --defaults imaml)")
    p.add_argument("--cg-steps", type=int, default=None, metavar="N",
                   help=f"iMAML: conjugate-gradient iterations (default {d.cg_steps})")
    p.add_argument("--cg-damping", type=float, default=None, metavar="D",
                   help="iMAML: solve ((1 + D) I + H / (LAMBDA + D')) g = L_test' as the "
                        "authors' code does (default 0, the paper's system)")
    p.add_argument("--cg-lambda-damping", type=float, default=None, metavar="D'",
                   help="iMAML: the D' above (default 0; the authors' code uses 10)")
    p.add_argument("--foml", action="store_true", help="the paper's spelling of --algo fomaml")
    p.add_argument("--foml-tail", type=int, default=None, metavar="SHOTS",
                   help="FOMAML's separate tail: SHOTS of every class's --train-shots are kept "
                        "out of the first k - 1 mini-batches and form the last one")
    p.add_argument("--combination", default=None, metavar="W",
                   help="first-order meta-gradient sum_i w_i g_i of the inner gradients "
                        "(section 6.2): last (FOMAML), sum (Reptile), mean, or k numbers "
                        "w1,...,wk; use with --sgd for the paper's Figure 3")
    p.add_argument("--sgd", action="store_true", default=None,
                   help="SGD in the inner loop instead of Adam (beta1 = 0)")
    p.add_argument("--outer", choices=("sgd", "adam"), default=None,
                   help="outer optimizer: sgd, theta + epsilon Delta (Eq. 5; default), or "
                        "adam, an Adam step of size epsilon (beta1 0.9) on -Delta, as Finn et "
                        "al.'s MAML (e.g. --meta-step 0.001 --meta-step-final 0.001)")
    p.add_argument("--outer-eps", type=float, default=None, metavar="EPS",
                   help="the outer Adam's epsilon (default 1e-8; --defaults imaml: the "
                        "authors' 1e-3 in our units, 1e-4)")
    p.add_argument("--sequential", action="store_true", default=None,
                   help="run the meta-batch's tasks one after another through one Adam state, "
                        "exactly as the paper's code (default: one batched pass)")
    p.add_argument("--maml-recompute", action="store_true", default=None,
                   help="exact MAML: recompute each inner step's forward and backward passes "
                        "for its Hessian-vector product instead of keeping them (memory O(k P) "
                        "instead of k steps' activations; about 1.3x slower on Omniglot)")
    p.add_argument("--bn-offsets-outer", action=argparse.BooleanOptionalAction, default=None,
                   help="fomaml/maml with --sgd: hold batch norm's offsets fixed in the inner "
                        "loop and learn them in the outer loop only, as Finn et al.'s code "
                        "(their offsets are not among the adapted weights; --defaults maml "
                        "sets it, --no-bn-offsets-outer adapts them with the rest)")
    p.add_argument("--network", choices=("reptile", "maml"), default=None,
                   help="omniglot CNN as the paper's code builds it (reptile, default) or as "
                        "Finn et al.'s MAML code does (maml: batch norm without scale, the "
                        "2x2 positions averaged, a N(0, 1) dense head)")
    p.add_argument("--no-augment", dest="augment", action="store_false", default=None,
                   help="no rotated copies of the training classes (Omniglot has them)")
    p.add_argument("--defaults", choices=presets.PRESETS, default="quick",
                   help="values of the flags not given: quick (default; the embedded quick "
                        "run), paper (supervised-reptile's args.py, which the paper's "
                        "commands assume: e.g. --shots 5, --eval-samples 10000) or maml "
                        "(Finn et al.'s MAML for the given --classes 5 or 20 and --shots: "
                        "--algo maml --network maml, 1 or 5 SGD steps, outer Adam 0.001) or "
                        "imaml (Rajeswaran et al.'s iMAML code: 16 steps, then one proximal "
                        "step of their lambda 2, 5 CG steps)")
    p.add_argument("--checkpoint", metavar="DIR", default=None,
                   help="checkpoint folder: resumed if it holds one, written every "
                        "--checkpoint-interval iterations and on Ctrl-C")
    p.add_argument("--checkpoint-interval", type=int, default=None, metavar="N",
                   help=f"iterations between checkpoints (default {d.checkpoint_interval})")
    p.add_argument("--pretrained", action="store_true",
                   help="skip training: evaluate the model in --checkpoint with its own "
                        "configuration (the evaluation flags given here apply)")
    p.add_argument("--eval-tasks-during", type=int, default=None, metavar="N",
                   help=f"tasks per split in each quick evaluation (default "
                        f"{d.eval_tasks_during}; 1 with --defaults paper)")
    p.add_argument("--out", metavar="FILE.json", help="write the final results as JSON here "
                   "(default: results.json in --checkpoint when given)")
    add_device_flags(p)
    add_distributed_flags(p)
    seed_from_checkpoint(p, "seed of the run's random generator (default 0; with "
                            "--pretrained, the checkpoint's)")
    p.set_defaults(func=run_train)

    e = sub.add_parser("eval", help="evaluate a checkpoint on train and test classes",
                       description="Few-shot accuracy of a trained checkpoint: fine-tune on "
                                   "the K shots, classify one held-out sample per class "
                                   "(section 6.1); mean and 95% interval.")
    e.add_argument("--checkpoint", metavar="DIR", required=True, help="a training folder")
    e.add_argument("--data", metavar="FILE.h5", help="packed dataset (default: embedded "
                   "Omniglot for an Omniglot checkpoint)")
    for name in EVALUATION:
        e.add_argument("--" + name.replace("_", "-"), type=int, default=None,
                       help="default: the checkpoint's")
    e.add_argument("--classes", type=int, default=None, metavar="N",
                   help="not allowed: N is the checkpoint's (its last layer has N outputs)")
    e.add_argument("--transductive", action=argparse.BooleanOptionalAction, default=None,
                   help="classify all test samples in one batch, or (--no-transductive) "
                        "each with the training samples (default: the checkpoint's)")
    e.add_argument("--split", choices=("train", "test", "both"), default="both",
                   help="classes to evaluate on (default both)")
    e.add_argument("--out", metavar="FILE.json", help="write the results as JSON here")
    add_device_flags(e)
    add_distributed_flags(e)
    seed_from_checkpoint(e, "seed of the evaluation's tasks (default: the checkpoint's, as "
                            "its training run's own final evaluation)")
    e.set_defaults(func=run_eval)

    pl = sub.add_parser("plot", help="draw a training folder's learning curve (matplotlib)")
    pl.add_argument("checkpoint", metavar="DIR")
    pl.add_argument("-o", "--output", metavar="FILE.png",
                    help="image to write (default DIR/learning_curve.png)")
    pl.set_defaults(func=run_plot)


def seed_from_checkpoint(parser, text):
    """--seed defaults to None (a checkpoint's seed where there is one) with this help."""
    for action in parser._actions:
        if action.dest == "seed":
            action.default, action.help = None, text


def train_config(args):
    """TrainConfig from flags: each flag given, else the --defaults preset's value, else the
    quick run's; returns (cfg, the preset's name)."""
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(config.TrainConfig)
             if getattr(args, f.name, None) is not None}
    if args.foml:
        if given.get("algo", "fomaml") != "fomaml":
            raise UserError(f"--foml and --algo {given['algo']} disagree")
        given["algo"] = "fomaml"
    if args.combination is not None:
        if "algo" in given:
            raise UserError("--combination is its own first-order algorithm (section 6.2); "
                            "drop --algo/--foml")
        given["algo"] = "combination"
    base = presets.preset(args.defaults, given.get("classes"), given.get("shots"))
    given.update(dataset=args.dataset, seed=args.seed or 0,
                 transductive=args.transductive or base.get("transductive", False))
    return config.TrainConfig(**{**base, **given}), args.defaults


def run_train(args):
    backend.set_backend(args.device, args.dtype)
    if args.pretrained:
        return pretrained(args)
    cfg, _ = train_config(args)
    cfg.validate()
    check_output(args.checkpoint, args.out)
    comm = start_distributed(args)
    stream = sys.stdout if comm.rank == 0 else open(os.devnull, "w")
    train.run(cfg, args.checkpoint, args.data, stream, comm, out=args.out)


def pretrained(args):
    """``train --pretrained``: evaluate the checkpoint with its own configuration; the
    evaluation flags given apply, a training flag that disagrees with it is refused."""
    if not checkpoint.exists(args.checkpoint):
        raise UserError("--pretrained needs --checkpoint DIR holding a trained model")
    saved = evaluate.load_trained(args.checkpoint)[0]
    given = {k for k in config.IDENTITY if getattr(args, k, None) is not None}
    differ = config.differences(dataclasses.asdict(saved), vars(args), sorted(given))
    if differ:
        raise UserError(f"--pretrained: {args.checkpoint} was trained with other settings "
                        f"({'; '.join(differ)}); drop those flags")
    comm = start_distributed(args)
    out = args.out or os.path.join(args.checkpoint, "results.json")
    evaluate.run(args.checkpoint, args.data, transductive=args.transductive or None,
                 seed=args.seed,
                 comm=comm, out=out, **{k: getattr(args, k) for k in EVALUATION})
    print(f"results written to {out}")


def check_output(folder, out):
    """Before any work: the checkpoint folder and --out's folder exist (made when missing),
    or a one-line UserError when they cannot be (a file in the way, no permission)."""
    if folder is not None:
        files.make_folder(folder, "--checkpoint")
    if out is not None:
        files.output_file(out, "--out")


def run_eval(args):
    if args.classes is not None:
        trained = checkpoint.load(args.checkpoint, expect="fewshot")[4]["classes"]
        raise UserError(f"--classes {args.classes}: N is fixed by the checkpoint, "
                        f"{args.checkpoint} classifies {trained}-way tasks (drop --classes)")
    backend.set_backend(args.device, args.dtype)
    check_output(None, args.out)
    comm = start_distributed(args)
    stream = sys.stdout if comm.rank == 0 else open(os.devnull, "w")
    evaluate.run(args.checkpoint, args.data, args.shots, args.eval_batch, args.eval_iters,
                 args.eval_samples, args.transductive, args.split, args.seed, stream, comm,
                 args.out)


def run_plot(args):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserError("plotting needs matplotlib: pip install 'minireptile[plot]'") from None
    records = checkpoint.read_log(args.checkpoint)
    if not records:
        raise UserError(f"{args.checkpoint}: no {checkpoint.LOGNAME} with evaluations to plot")
    its = [r["iteration"] for r in records]
    fig, ax = plt.subplots(figsize=(6, 4))
    for split in ("train", "test"):
        ax.plot(its, [100 * r[split] for r in records], label=f"{split} classes")
    ax.set_xlabel("meta-iteration")
    ax.set_ylabel("accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend()
    out = args.output or os.path.join(args.checkpoint, "learning_curve.png")
    files.atomic_write(out, lambda f: fig.savefig(f, format="png", dpi=120,
                                                  bbox_inches="tight"))
    print(f"wrote {out}")
