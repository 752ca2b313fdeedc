"""``minireptile train``, ``eval`` and ``plot``: few-shot meta-training (section 6.1).

The paper's flags keep their names and meanings, so its README's commands run unchanged
after ``minireptile train omniglot --defaults paper`` (or ``miniimagenet``). Defaults: every
flag left out takes the quick embedded-Omniglot run's value (5-way 1-shot, minutes on 2
cores), so changing one flag changes only that one; ``--defaults paper`` gives every flag
left out supervised-reptile's args.py default instead (what the paper's commands assume).
"""
import argparse
import dataclasses
import json
import os
import sys
import time


from .. import backend, checkpoint
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


def register(sub):
    from ..train import TrainConfig
    d = TrainConfig()
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
    p.add_argument("--algo", choices=("reptile", "fomaml", "maml"), default=None,
                   help="meta-algorithm (default reptile; maml is exact and needs --sgd)")
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
    p.add_argument("--sequential", action="store_true", default=None,
                   help="run the meta-batch's tasks one after another through one Adam state, "
                        "exactly as the paper's code (default: one batched pass)")
    p.add_argument("--maml-recompute", action="store_true", default=None,
                   help="exact MAML: recompute each inner step's forward and backward passes "
                        "for its Hessian-vector product instead of keeping them (memory O(k P) "
                        "instead of k steps' activations; about 1.3x slower on Omniglot)")
    p.add_argument("--network", choices=("reptile", "maml"), default=None,
                   help="omniglot CNN as the paper's code builds it (reptile, default) or as "
                        "Finn et al.'s MAML code does (maml: batch norm without scale, the "
                        "2x2 positions averaged, a N(0, 1) dense head)")
    p.add_argument("--no-augment", dest="augment", action="store_false", default=None,
                   help="no rotated copies of the training classes (Omniglot has them)")
    p.add_argument("--defaults", choices=("quick", "paper"), default="quick",
                   help="values of the flags not given: quick (default; the embedded quick "
                        "run) or paper (supervised-reptile's args.py, which the paper's "
                        "commands assume: e.g. --shots 5, --eval-samples 10000)")
    p.add_argument("--checkpoint", metavar="DIR", default=None,
                   help="checkpoint folder: resumed if it holds one, written every "
                        "--checkpoint-interval iterations and on Ctrl-C")
    p.add_argument("--checkpoint-interval", type=int, default=None, metavar="N",
                   help=f"iterations between checkpoints (default {d.checkpoint_interval})")
    p.add_argument("--pretrained", action="store_true",
                   help="skip training: evaluate the model in --checkpoint")
    p.add_argument("--eval-tasks-during", type=int, default=None, metavar="N",
                   help=f"tasks per split in each quick evaluation (default "
                        f"{d.eval_tasks_during}; 1 with --defaults paper)")
    p.add_argument("--out", metavar="FILE.json", help="write the final results as JSON here "
                   "(default: results.json in --checkpoint when given)")
    add_device_flags(p)
    add_distributed_flags(p)
    p.set_defaults(func=run_train)

    e = sub.add_parser("eval", help="evaluate a checkpoint on train and test classes",
                       description="Few-shot accuracy of a trained checkpoint: fine-tune on "
                                   "the K shots, classify one held-out sample per class "
                                   "(section 6.1); mean and 95% interval.")
    e.add_argument("--checkpoint", metavar="DIR", required=True, help="a training folder")
    e.add_argument("--data", metavar="FILE.h5", help="packed dataset (default: embedded "
                   "Omniglot for an Omniglot checkpoint)")
    for name in ("shots", "eval_batch", "eval_iters", "eval_samples"):
        e.add_argument("--" + name.replace("_", "-"), type=int, default=None,
                       help="default: the checkpoint's")
    e.add_argument("--transductive", action="store_true", help="transductive evaluation")
    e.add_argument("--split", choices=("train", "test", "both"), default="both",
                   help="classes to evaluate on (default both)")
    e.add_argument("--out", metavar="FILE.json", help="write the results as JSON here")
    add_device_flags(e)
    add_distributed_flags(e)
    e.set_defaults(func=run_eval, seed=None)   # --seed: the checkpoint's unless given

    pl = sub.add_parser("plot", help="draw a training folder's learning curve (matplotlib)")
    pl.add_argument("checkpoint", metavar="DIR")
    pl.add_argument("-o", "--output", metavar="FILE.png",
                    help="image to write (default DIR/learning_curve.png)")
    pl.set_defaults(func=run_plot)


def train_config(args):
    """TrainConfig from flags: the quick defaults, or args.py's with --defaults paper."""
    from ..train import PAPER_DEFAULTS, TrainConfig
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
             if getattr(args, f.name, None) is not None}
    paper = args.defaults == "paper"
    base = dict(PAPER_DEFAULTS) if paper else {}
    if args.foml:
        if given.get("algo", "fomaml") != "fomaml":
            raise UserError(f"--foml and --algo {given['algo']} disagree")
        given["algo"] = "fomaml"
    if args.combination is not None:
        if "algo" in given:
            raise UserError("--combination is its own first-order algorithm (section 6.2); "
                            "drop --algo/--foml")
        given["algo"] = "combination"
    given.update(dataset=args.dataset, transductive=args.transductive)
    return TrainConfig(**{**base, **given}), paper


def command_line(dataset, cfg, extra=()):
    """The full command that reproduces cfg, every setting spelled out."""
    skip = {"dataset", "transductive"}
    flags = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if f.name in skip or value is False or value == "":
            continue
        name = "--no-augment" if f.name == "augment" else "--" + f.name.replace("_", "-")
        flags.append(name if value is True or f.name == "augment" else f"{name} {value}")
    flags = [f for f in flags if f != "--no-augment" or not cfg.augment]
    if cfg.transductive:
        flags.append("--transductive")
    return " ".join(["minireptile train", dataset, *flags, *extra])


def load_data(path, dataset):
    from ..data import load_dataset
    if path is None:
        if dataset != "omniglot":
            raise UserError("--data FILE.h5 is needed for miniimagenet "
                            "(pack it with: minireptile pack miniimagenet SRC -o FILE.h5)")
        path = os.path.join(os.path.dirname(os.path.dirname(__file__)), "assets",
                            "omniglot.h5")
    ds = load_dataset(path)
    if ds.kind != dataset:
        raise UserError(f"{path}: holds {ds.kind}, not {dataset}")
    return ds


def build_model(dataset, classes, network="reptile"):
    from ..models import miniimagenet_cnn, omniglot_cnn
    if dataset == "omniglot":
        return omniglot_cnn(classes, network=network)
    if network != "reptile":
        raise UserError(f"--network {network}: only the omniglot CNN has Finn et al.'s variant")
    return miniimagenet_cnn(classes)


def final_evaluation(model, theta, optimizer, ds, cfg, stream, seed=None,
                     splits=("train", "test"), comm=None):
    """Accuracy over cfg.eval_samples tasks of each split, as a dict; progress on stream.

    Per split: mean accuracy, its 95% interval, seconds, and the test samples each task got
    right ("correct", one count out of N per task).

    Task i of a split draws from (seed, 2^31, split, i) (``data.batches.task_rng``), seed
    defaulting to cfg.seed; comm: the processes sharing the tasks (default one).
    """
    from ..distributed import LOCAL
    from ..evaluate import evaluate
    seed = cfg.seed if seed is None else seed
    results = {"classes": cfg.classes, "shots": cfg.shots, "transductive": cfg.transductive,
               "eval_samples": cfg.eval_samples, "eval_iters": cfg.eval_iters, "seed": seed}
    for split in splits:
        t0 = time.time()
        key = (seed, 2 ** 31, ("train", "val", "test").index(split))
        mean, half, acc = evaluate(model, theta, optimizer, ds, split, key, cfg.classes,
                                   cfg.shots, cfg.eval_batch, cfg.eval_iters,
                                   cfg.eval_samples, cfg.transductive, cfg.replacement,
                                   cfg.weight_decay, stream=stream, comm=comm or LOCAL)
        results[split] = {"accuracy": mean, "ci95": half, "seconds": time.time() - t0,
                          "correct": [int(round(a * cfg.classes)) for a in acc]}
    mode = "transductive" if cfg.transductive else "non-transductive"
    print(f"\n{cfg.classes}-way {cfg.shots}-shot, {mode}, {cfg.eval_samples} tasks per split",
          file=stream)
    print("| classes | accuracy | 95% interval |\n| --- | --- | --- |", file=stream)
    for split in splits:
        r = results[split]
        print(f"| {split} | {100 * r['accuracy']:.2f}% | +/- {100 * r['ci95']:.2f}% |",
              file=stream)
    return results


def _write_json(path, obj):
    checkpoint.atomic_write(path, lambda f: f.write(json.dumps(obj, indent=2).encode()))


def run_train(args):
    from ..train import train
    backend.set_backend(args.device, args.dtype)
    cfg, paper = train_config(args)
    cfg.seed = args.seed
    cfg.validate()
    if args.pretrained and not checkpoint.exists(args.checkpoint):
        raise UserError("--pretrained needs --checkpoint DIR holding a trained model")
    comm = start_distributed(args)
    ds = load_data(args.data, args.dataset)
    model = build_model(args.dataset, cfg.classes, cfg.network)
    stream = sys.stdout if comm.rank == 0 else open(os.devnull, "w")
    print(f"minireptile train {args.dataset}: {cfg.algo}, {cfg.classes}-way {cfg.shots}-shot, "
          f"{cfg.meta_iters} meta-iterations of {cfg.meta_batch} tasks x {cfg.inner_iters} "
          f"steps, device {backend.device()} ({'paper' if paper else 'quick'} defaults), "
          f"{comm.describe()}, data {ds.path}", file=stream)
    print("resolved: " + command_line(args.dataset, cfg), file=stream, flush=True)
    t0 = time.time()
    if args.pretrained:
        theta, optimizer = load_trained(args.checkpoint, cfg)
    else:
        theta, optimizer = train(model, ds, cfg, checkpoint_dir=args.checkpoint, stream=stream,
                                 comm=comm)
    train_seconds = time.time() - t0
    results = final_evaluation(model, theta, optimizer, ds, cfg, stream, comm=comm)
    results.update(train_seconds=train_seconds, total_seconds=time.time() - t0,
                   config=dataclasses.asdict(cfg), device=backend.device(),
                   processes=comm.size, command=command_line(args.dataset, cfg))
    print(f"training {train_seconds:.0f} s, total {time.time() - t0:.0f} s", file=stream)
    out = args.out or (os.path.join(args.checkpoint, "results.json") if args.checkpoint
                       else None)
    if out and comm.rank == 0:
        _write_json(out, results)
        print(f"results written to {out}", file=stream)


def load_trained(folder, cfg=None):
    """(theta on the device, inner optimizer with its saved state) from a checkpoint folder;
    cfg (the checkpoint's configuration when None) decides the optimizer."""
    from ..optim import Adam
    from ..train import TrainConfig, inner_optimizer
    theta, state, _, _, config = checkpoint.load(folder)
    if cfg is None:
        fields = {f.name for f in dataclasses.fields(TrainConfig)}
        cfg = TrainConfig(**{k: v for k, v in config.items() if k in fields})
    optimizer = inner_optimizer(cfg)
    if isinstance(optimizer, Adam):
        optimizer.load_state_dict(state, backend.xp())
    return backend.to_device(theta, backend.dtype()), optimizer


def run_eval(args):
    from ..train import TrainConfig
    backend.set_backend(args.device, args.dtype)
    comm = start_distributed(args)
    config = checkpoint.load(args.checkpoint)[4]
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    cfg = TrainConfig(**{k: v for k, v in config.items() if k in fields})
    for name in ("shots", "eval_batch", "eval_iters", "eval_samples"):
        if getattr(args, name) is not None:
            setattr(cfg, name, getattr(args, name))
    cfg.transductive = args.transductive
    cfg.validate()
    ds = load_data(args.data, cfg.dataset)
    model = build_model(cfg.dataset, cfg.classes, cfg.network)
    theta, optimizer = load_trained(args.checkpoint, cfg)
    if theta.shape != (model.num_params,):
        raise UserError(f"{args.checkpoint}: theta has {theta.shape[-1]} parameters, the "
                        f"{cfg.dataset} model {model.num_params}")
    splits = ("train", "test") if args.split == "both" else (args.split,)
    stream = sys.stdout if comm.rank == 0 else open(os.devnull, "w")
    results = final_evaluation(model, theta, optimizer, ds, cfg, stream, seed=args.seed,
                               splits=splits, comm=comm)
    results.update(checkpoint=args.checkpoint, iteration=checkpoint.load(args.checkpoint)[3],
                   processes=comm.size, command=" ".join(["minireptile", *sys.argv[1:]]))
    if args.out and comm.rank == 0:
        _write_json(args.out, results)


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
    tmp = out + ".tmp.png"
    fig.savefig(tmp, dpi=120, bbox_inches="tight")
    os.replace(tmp, out)
    print(f"wrote {out}")
