"""A training run's configuration: the paper's flags as one dataclass, its checks, what it builds.

    TrainConfig           every setting of a few-shot run, named as supervised-reptile's flags
                          (its defaults are the quick run's; ``presets.py`` gives the others)
    from_saved(config)    the TrainConfig a checkpoint or results.json recorded
    command_line(cfg)     the command that reproduces a run, every setting spelled out
    refuse_mismatch       one line naming how a checkpoint's run differs from this one

The library takes a TrainConfig (``train.run``, ``evaluate.run``); the command line is one of
its clients and turns flags into one (``cli/train.py``).
"""
import dataclasses
import math

from .backend import dtype, to_device
from .data import embedded_omniglot, load_dataset
from .errors import UserError
from .meta import imaml_options
from .models import miniimagenet_cnn, omniglot_cnn
from .optim import SGD, Adam


@dataclasses.dataclass
class TrainConfig:
    """The paper's flags (supervised-reptile's args.py), names and meanings kept.

    The defaults here are the quick preset's; ``preset`` gives the others.
    """
    dataset: str = "omniglot"   # omniglot | miniimagenet (which CNN)
    network: str = "reptile"    # reptile | maml: the CNN of the paper's code or of Finn et al.'s
    classes: int = 5            # N-way
    shots: int = 1              # K-shot at evaluation
    train_shots: int = 10       # images per class in a training task (0 = shots)
    inner_batch: int = 10
    inner_iters: int = 5
    replacement: bool = False
    learning_rate: float = 3e-3
    meta_step: float = 1.0
    meta_step_final: float = 0.0
    meta_batch: int = 5
    meta_iters: int = 3000
    eval_batch: int = 5
    eval_iters: int = 50
    eval_samples: int = 200
    eval_interval: int = 500
    weight_decay: float = 1.0   # multiply theta by this before every inner step (1 = off)
    transductive: bool = False
    algo: str = "reptile"       # reptile | fomaml | maml | imaml | combination
    foml_tail: int = 0          # separate tail: shots per class taken out of train_shots
    combination: str = ""       # section 6.2: last | sum | mean | w1,...,wk (algo combination)
    sgd: bool = False
    augment: bool = True        # rotations of the training classes (Omniglot)
    sequential: bool = False
    outer: str = "sgd"          # the outer optimizer: sgd (Eq. 5) | adam
    outer_eps: float = 1e-8     # the outer Adam's epsilon
    maml_recompute: bool = False  # exact MAML: recompute each H_i v's passes (memory O(k P))
    bn_offsets_outer: bool = False  # batch-norm offsets held in the inner loop (Finn et al.'s)
    imaml_lambda: float = 1.0   # iMAML: the proximal term's strength lambda
    imaml_inner: str = "proximal"  # iMAML: proximal (the paper's iMAML-GD) | authors (their code)
    cg_steps: int = 5           # iMAML: conjugate-gradient iterations for (I + H / lambda)^(-1)
    cg_damping: float = 0.0     # iMAML: the authors' damping, ((1 + d) I + H / (lambda + d'))
    cg_lambda_damping: float = 0.0   # ... its d' (0, 0: the paper's system)
    seed: int = 0
    checkpoint_interval: int = 100
    eval_tasks_during: int = 20  # tasks per split in the periodic quick estimate

    def validate(self):
        """Self, or a UserError naming the first setting that cannot work."""
        positive = ("classes", "shots", "inner_batch", "inner_iters", "meta_batch",
                    "eval_batch", "eval_iters", "eval_samples", "eval_interval",
                    "checkpoint_interval", "eval_tasks_during")
        for name in positive:
            if getattr(self, name) < 1:
                raise UserError(f"--{flag(name)} must be at least 1, got {getattr(self, name)}")
        if self.classes < 2:
            raise UserError(f"--classes {self.classes}: a task needs at least 2 classes to "
                            f"classify (1 is always right)")
        if self.meta_iters < 0 or self.train_shots < 0 or self.foml_tail < 0:
            raise UserError("--meta-iters, --train-shots and --foml-tail cannot be negative")
        for name in ("learning_rate", "meta_step", "meta_step_final", "weight_decay",
                     "outer_eps"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0 or (value == 0 and name in
                                                         ("learning_rate", "weight_decay",
                                                          "outer_eps")):
                kind = "non-negative" if name.startswith("meta") else "positive"
                raise UserError(f"--{flag(name)} must be a {kind} number, got {value}")
        for name, allowed in (("algo", ("reptile", "fomaml", "maml", "imaml", "combination")),
                              ("network", ("reptile", "maml")), ("outer", ("sgd", "adam")),
                              ("imaml_inner", ("proximal", "authors")),
                              ("dataset", ("omniglot", "miniimagenet"))):
            if getattr(self, name) not in allowed:
                raise UserError(f"unknown --{flag(name)} {getattr(self, name)!r}; expected "
                                f"{' or '.join(a for a in allowed if a != 'combination')}")
        if self.network == "maml" and self.dataset != "omniglot":
            raise UserError("--network maml: only the Omniglot CNN has Finn et al.'s variant")
        if self.algo == "maml" and not self.sgd:
            raise UserError("exact MAML differentiates through SGD inner steps (Eqs. 17-21): "
                            "add --sgd")
        if self.foml_tail and self.algo not in ("fomaml", "maml", "imaml"):
            raise UserError("--foml-tail applies to --foml / --algo fomaml (or maml, imaml)")
        if self.algo == "imaml":
            self.check_imaml()
        if self.bn_offsets_outer and not (self.sgd and self.algo in ("fomaml", "maml")):
            raise UserError("--bn-offsets-outer holds batch norm's offsets in an SGD inner loop "
                            "of --algo fomaml or maml (whose meta-update still moves them)")
        shots = self.train_shots or self.shots
        if self.foml_tail and not self.foml_tail < shots:
            raise UserError(f"--foml-tail {self.foml_tail} must be below --train-shots "
                            f"({shots}): the tail is taken out of the task's shots")
        if self.foml_tail and self.inner_iters < 2 and self.algo == "fomaml":
            raise UserError("--foml-tail needs --inner-iters 2 or more (the tail is the last)")
        if (self.algo == "combination") != bool(self.combination):
            raise UserError("--combination sets the algorithm: give it without --algo/--foml")
        if self.combination:
            if not self.sgd:
                raise UserError("--combination weighs the inner gradients g_j of an SGD inner "
                                "loop (section 6.2): add --sgd")
            combination_weights(self.combination, self.inner_iters)
        return self

    def check_imaml(self):
        """iMAML-GD: full-batch gradient descent on the support set, a positive lambda."""
        if not self.sgd:
            raise UserError("iMAML-GD solves its inner problem by gradient descent: add --sgd")
        support = self.classes * ((self.train_shots or self.shots) - self.foml_tail)
        if self.inner_batch != support or self.inner_iters < 2:
            raise UserError(f"iMAML's inner loop is gradient descent on the whole support set: "
                            f"--inner-batch {support} (N x the shots left after --foml-tail) "
                            f"and --inner-iters 2 or more (the last is the test batch)")
        if self.weight_decay != 1:
            raise UserError("iMAML's proximal term replaces --weight-decay; drop it")
        for name in ("imaml_lambda", "cg_damping", "cg_lambda_damping"):
            value = getattr(self, name)
            kind = "positive" if name == "imaml_lambda" else "non-negative"
            if not math.isfinite(value) or value < 0 or (name == "imaml_lambda" and not value):
                raise UserError(f"--{flag(name)} must be a {kind} number, got {value}")
        if self.cg_steps < 1:
            raise UserError(f"--cg-steps must be at least 1, got {self.cg_steps}")

    def imaml(self):
        """iMAML's options for ``meta.delta_rule``."""
        return imaml_options(self.imaml_lambda, self.cg_steps, self.imaml_inner,
                             self.cg_damping, self.cg_lambda_damping)


def flag(name):
    """The command-line flag of a TrainConfig field: learning_rate -> learning-rate."""
    return name.replace("_", "-")


def from_saved(config):
    """The TrainConfig of a saved run's configuration dict (a checkpoint's or results.json's);
    fields an older version did not save take their defaults, unknown keys are dropped."""
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in config.items() if k in fields})


def command_line(cfg, extra=()):
    """The full ``minireptile train`` command that reproduces cfg, every setting spelled out."""
    words = ["minireptile train", cfg.dataset]
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if f.name in ("dataset", "transductive", "augment") or value is False or value == "":
            continue
        if (f.name in IMAML_ONLY and cfg.algo != "imaml") or (
                f.name == "outer_eps" and cfg.outer != "adam"):
            continue
        words.append(f"--{flag(f.name)}" if value is True else f"--{flag(f.name)} {value}")
    if not cfg.augment:
        words.append("--no-augment")
    if cfg.transductive:
        words.append("--transductive")
    return " ".join([*words, *extra])


def flags(fields):
    """Fields as command-line flags: {"sgd": True, "seed": 0} -> '--sgd --seed 0'."""
    return " ".join(f"--{flag(k)}" if v is True else f"--{flag(k)} {v}"
                    for k, v in fields.items() if v is not False)


IMAML_ONLY = ("imaml_lambda", "imaml_inner", "cg_steps", "cg_damping", "cg_lambda_damping")


def combination_weights(spec, k):
    """The weights w_1..w_k of a section 6.2 combination sum_j w_j g_j.

    last: (0, ..., 0, 1), FOMAML's g_k; sum: (1, ..., 1), Reptile's; mean: (1/k, ..., 1/k);
    or k comma-separated numbers.
    """
    named = {"last": [0.0] * (k - 1) + [1.0], "sum": [1.0] * k, "mean": [1.0 / k] * k}
    if spec in named:
        return named[spec]
    try:
        weights = [float(w) for w in spec.split(",")]
    except ValueError:
        raise UserError(f"--combination {spec!r}: expected last, sum, mean or k numbers "
                        f"w1,...,wk") from None
    if len(weights) != k or not all(math.isfinite(w) for w in weights):
        raise UserError(f"--combination {spec!r} has {len(weights)} weights for "
                        f"--inner-iters {k}; give {k} finite numbers")
    return weights


# the settings that make a run what it is: a checkpoint resumed or reused must agree on them
IDENTITY = ("classes", "train_shots", "inner_batch", "inner_iters", "replacement",
            "learning_rate", "meta_step", "meta_step_final", "meta_batch", "meta_iters",
            "weight_decay", "algo", "foml_tail", "combination", "sgd", "sequential", "outer",
            "seed", "dataset", "augment", "network", "imaml_lambda", "imaml_inner", "cg_steps",
            "cg_damping", "cg_lambda_damping", "bn_offsets_outer", "outer_eps")
OLD_DEFAULTS = {"combination": "", "outer": "sgd", "network": "reptile",   # not saved before
                "imaml_lambda": 1.0, "imaml_inner": "proximal", "cg_steps": 5, "cg_damping": 0.0,
                "cg_lambda_damping": 0.0, "bn_offsets_outer": False, "outer_eps": 1e-8}


def differences(saved, config, fields=IDENTITY):
    """"FIELD SAVED (now NEW)" for each of fields in which a saved run's configuration
    differs from config (a field an older version did not save counts as its default)."""
    return [f"{k} {saved.get(k, OLD_DEFAULTS.get(k))!r} (now {config.get(k)!r})"
            for k in fields if saved.get(k, OLD_DEFAULTS.get(k)) != config.get(k)]


def refuse_mismatch(folder, saved, config, iteration):
    """UserError naming every field in which a checkpoint's run differs from this one.

    Evaluation and bookkeeping settings may differ; meta_iters may grow (extending a
    finished or running run: the remaining iterations anneal epsilon over the new total).
    """
    differ = differences(saved, config, [k for k in IDENTITY if k != "meta_iters"])
    if saved.get("model", config.get("model")) != config.get("model"):
        differ.append(f"model {saved['model']!r} (now {config['model']!r})")
    if config["meta_iters"] < iteration:
        differ.append(f"meta_iters {saved['meta_iters']} with {iteration} done "
                      f"(now {config['meta_iters']})")
    if differ:
        raise UserError(f"{folder}: checkpoint of another run: {'; '.join(differ)}; use "
                        f"another --checkpoint folder")


# -- what a configuration builds ------------------------------------------------------------

def build_model(cfg):
    """The CNN of cfg's dataset and network, with cfg.classes outputs."""
    if cfg.dataset == "omniglot":
        return omniglot_cnn(cfg.classes, network=cfg.network)
    return miniimagenet_cnn(cfg.classes)


def load_data(path, dataset):
    """The packed dataset at path (default for omniglot: the one embedded in the package),
    checked to hold the dataset cfg names."""
    if path is None:
        if dataset != "omniglot":
            raise UserError("--data FILE.h5 is needed for miniimagenet "
                            "(pack it with: minireptile pack miniimagenet SRC -o FILE.h5)")
        path = embedded_omniglot()
    ds = load_dataset(path)
    if ds.kind != dataset:
        raise UserError(f"{path}: holds {ds.kind}, not {dataset}")
    return ds


def inner_optimizer(cfg, model):
    """The inner loop's optimizer: Adam with beta1 = 0 (the paper's), or SGD with --sgd,
    holding model's batch-norm offsets with --bn-offsets-outer."""
    if not cfg.sgd:
        return Adam(cfg.learning_rate, beta1=0.0)
    mask = to_device(model.inner_mask(("beta",)), dtype()) if cfg.bn_offsets_outer else None
    return SGD(cfg.learning_rate, mask)


def outer_optimizer(cfg):
    """The outer loop's: None (theta + epsilon Delta, Eq. 5), or Adam with beta1 = 0.9
    (Kingma & Ba's default, as Finn et al.'s MAML) whose step size follows epsilon."""
    return Adam(cfg.meta_step, beta1=0.9, eps=cfg.outer_eps) if cfg.outer == "adam" else None
