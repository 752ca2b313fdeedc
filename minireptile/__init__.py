"""minireptile: Reptile, first-order MAML and exact MAML in NumPy/CuPy, written by hand.

Nichol, Achiam, Schulman, "On First-Order Meta-Learning Algorithms", arXiv:1803.02999.
The command line is ``minireptile`` (see ``minireptile --help``); the pieces a program
composes are named here (``__all__``; docs/api.md shows them at work):

    layers      Linear, ReLU, Tanh, Conv2d, BatchNorm, MaxPool2d, MeanPool, Flatten,
                MSE, SoftmaxCrossEntropy; Sequential over one flat parameter vector, and the
                paper's models mlp, omniglot_cnn, miniimagenet_cnn
    optimizers  SGD, Adam
    meta core   inner_steps, adapt, maml_gradient, the Delta of each algorithm
                (reptile_delta, fomaml_delta, combination_delta, maml_delta, delta_rule),
                meta_update (one meta-iteration), outer_step, linear_schedule
    tasks       sample_tasks, inner_batches, task_rng (few-shot), sine (section 4)
    runs        TrainConfig, preset, train_run, evaluate_run, SineConfig
"""
__version__ = "0.1.0"

from . import sine                                                          # noqa: E402
from .config import TrainConfig                                             # noqa: E402
from .conv import BatchNorm, Conv2d, Flatten, MaxPool2d, MeanPool           # noqa: E402
from .data import inner_batches, load_dataset, sample_tasks                 # noqa: E402
from .data.batches import task_rng                                          # noqa: E402
from .evaluate import run as evaluate_run                                   # noqa: E402
from .layers import Linear, ReLU, Tanh                                      # noqa: E402
from .losses import MSE, SoftmaxCrossEntropy                                # noqa: E402
from .meta import (adapt, combination_delta, delta_rule, fomaml_delta,      # noqa: E402
                   inner_steps, linear_schedule, maml_delta, maml_gradient, outer_step,
                   reptile_delta)
from .metabatch import meta_update                                          # noqa: E402
from .models import Sequential, miniimagenet_cnn, mlp, omniglot_cnn         # noqa: E402
from .optim import SGD, Adam                                                # noqa: E402
from .presets import preset                                                 # noqa: E402
from .sine import SineConfig                                                # noqa: E402
from .train import run as train_run                                         # noqa: E402

__all__ = ["Linear", "ReLU", "Tanh", "Conv2d", "BatchNorm", "MaxPool2d", "MeanPool", "Flatten",
           "MSE", "SoftmaxCrossEntropy", "Sequential", "mlp", "omniglot_cnn",
           "miniimagenet_cnn", "SGD", "Adam", "inner_steps", "adapt", "maml_gradient",
           "reptile_delta", "fomaml_delta", "combination_delta", "maml_delta", "delta_rule",
           "meta_update", "outer_step", "linear_schedule", "sample_tasks", "inner_batches",
           "load_dataset", "task_rng", "sine", "TrainConfig", "preset", "train_run",
           "evaluate_run", "SineConfig", "__version__"]
