"""Finite-difference verification of every pass, and of the meta-gradients built on them.

For each layer, loss and whole model, in float64, with central differences (h = 1e-5):
backward passes against differences of the output, R-passes and Hessian-vector products
against differences of the backward pass, the symmetry u.(H v) == v.(H u), and T tasks in
one batched call against T separate calls (``gradcheck/passes.py``; the shared comparison
rule and inputs kept off kinks are in ``gradcheck/core.py``).

The meta-gradients (``meta.py``) are checked on the same models: exact MAML against
differences of the unrolled loss, FOMAML and Reptile against their definitions, and the
Taylor expansion of Eqs. (25)-(27) (``gradcheck/meta.py``); iMAML's implicit meta-gradient
against a direct solve with the full Hessian and against differences of the test loss at the
solved inner problem, with its CG residual (``gradcheck/imaml.py``).

``cases(family)`` lists the checks of 'mlp', 'omniglot' or 'miniimagenet' as ``Case``
objects; ``run_checks`` runs them and returns ``Row``s; ``format_table`` prints them.
Arrays are generated on the host and moved with ``xp.asarray``, so NumPy and CuPy check
the same numbers.
"""
import numpy as np

from .. import conv, models
from ..errors import UserError
from ..layers import Linear, ReLU, Tanh
from ..losses import MSE, SoftmaxCrossEntropy
from .core import H, TOL, Case, Row, away_from_zero, compare, coord_grad, distinct
from .imaml import check_imaml
from .meta import check_meta
from .passes import check_layer, check_loss, check_model, kink_margin, pool_gap

__all__ = ["H", "TOL", "FAMILIES", "Case", "Row", "compare", "coord_grad", "away_from_zero",
           "distinct", "check_layer", "check_loss", "check_model", "check_meta", "kink_margin",
           "pool_gap", "cases", "run_checks", "format_table", "check_imaml", "smooth_cnn"]

FAMILIES = ("mlp", "omniglot", "miniimagenet")


def sine_batch(rng, lead, points=10):
    """Sine-wave regression tasks of section 4: x ~ U[-5, 5], y = A sin(x - phase)."""
    amp = rng.uniform(0.1, 5.0, lead + (1, 1))
    phase = rng.uniform(0, 2 * np.pi, lead + (1, 1))
    x = rng.uniform(-5, 5, lead + (points, 1))
    return x, amp * np.sin(x - phase)


def classes_batch(in_shape, num_classes, batch=5):
    """A sampler of (x, labels): standard-normal inputs, uniform random labels."""
    def sample(rng, lead):
        return (rng.standard_normal(lead + (batch,) + tuple(in_shape)),
                rng.integers(0, num_classes, lead + (batch,)))
    return sample


def _layer(name, make, in_shape, batch=3, sample=away_from_zero):
    """Cases checking one layer without and with task axes."""
    return [Case(f"{name} T={lead}", "layer", lambda r, xp, l=lead:
                 check_layer(name, make(), in_shape, r, xp, l, batch, sample))
            for lead in [(), (2,)]]


def _model(name, make, sample, leads=((), (4,))):
    """Cases checking one whole model without and with a task axis."""
    return [Case(f"{name} T={lead}", "model", lambda r, xp, l=lead:
                 check_model(name, make(), sample, r, xp, l)) for lead in leads]


def _meta(name, make, sample):
    """The meta-gradient checks of one model (``gradcheck/meta.py``)."""
    return [Case(f"{name} meta", "meta", lambda r, xp: check_meta(name, make(), sample, r, xp))]


def _imaml(name, make, sample):
    """iMAML's implicit meta-gradient checks of one model (``gradcheck/imaml.py``)."""
    return [Case(f"{name} imaml", "meta",
                 lambda r, xp: check_imaml(name, make(), sample, r, xp))]


def _mlp_cases():
    cases = []
    for lead in [(), (3,), (2, 2)]:
        cases += [
            Case(f"Linear(4,5) T={lead}", "layer", lambda r, xp, l=lead:
                 check_layer("Linear(4,5)", Linear(4, 5), (4,), r, xp, l)),
            Case(f"ReLU T={lead}", "layer", lambda r, xp, l=lead:
                 check_layer("ReLU", ReLU(), (6,), r, xp, l)),
            Case(f"Tanh T={lead}", "layer", lambda r, xp, l=lead:
                 check_layer("Tanh", Tanh(), (6,), r, xp, l)),
        ]
    for lead in [(), (3,)]:
        cases += [
            Case(f"MSE T={lead}", "loss", lambda r, xp, l=lead:
                 check_loss("MSE", MSE(), l + (4, 2), r.standard_normal(l + (4, 2)), r, xp)),
            Case(f"SoftmaxCrossEntropy T={lead}", "loss", lambda r, xp, l=lead:
                 check_loss("SoftmaxCrossEntropy", SoftmaxCrossEntropy(), l + (5, 4),
                            r.integers(0, 4, l + (5,)), r, xp)),
        ]
    return (cases
            + _model("mlp(1-64-64-1) relu mse", lambda: models.mlp((1, 64, 64, 1)), sine_batch)
            + _model("mlp(5-8-8-3) tanh xent", lambda: models.mlp((5, 8, 8, 3), "tanh", "xent"),
                     classes_batch((5,), 3))
            + _meta("mlp(1-64-64-1) tanh mse", lambda: models.mlp((1, 64, 64, 1), "tanh"),
                    sine_batch)
            + _meta("mlp(5-8-8-3) relu xent", lambda: models.mlp((5, 8, 8, 3), "relu", "xent"),
                    classes_batch((5,), 3))
            + _imaml("mlp(1-16-16-1) tanh mse", lambda: models.mlp((1, 16, 16, 1), "tanh"),
                     sine_batch))


def _conv_cases(convs, pools):
    """Conv2d (stride, in_shape) and MaxPool2d (in_shape) cases, then BatchNorm and Flatten.

    Odd sizes exercise TensorFlow's asymmetric 'same' padding and partial pooling windows.
    """
    cases = []
    for stride, shape in convs:
        cases += _layer(f"Conv2d(2,3,stride={stride}) on {shape}",
                        lambda s=stride: conv.Conv2d(2, 3, stride=s), shape, batch=2)
    for shape in pools:
        cases += _layer(f"MaxPool2d on {shape}", conv.MaxPool2d, shape, 2, distinct)
    return (cases
            + _layer("BatchNorm(3) on (4, 5, 3)", lambda: conv.BatchNorm(3), (4, 5, 3), 3,
                     lambda g, s: g.standard_normal(s))
            + _layer("Flatten on (3, 3, 2)", conv.Flatten, (3, 3, 2)))


def _omniglot_cases():
    shape = (9, 9, 1)
    return _conv_cases([(2, (9, 9, 2)), (2, (6, 6, 2))], []) + _model(
        "omniglot_cnn(3) 9x9x1 filters=3",
        lambda: models.omniglot_cnn(3, input_shape=shape, filters=3),
        classes_batch(shape, 3), leads=((), (2,))) + _meta(
        "omniglot_cnn(3) 9x9x1 filters=3",
        lambda: models.omniglot_cnn(3, input_shape=shape, filters=3), classes_batch(shape, 3)
    ) + _imaml("conv-bn-tanh x2 (3) 9x9x1", lambda: smooth_cnn(shape, 3),
               classes_batch(shape, 3))


def smooth_cnn(shape, classes, filters=3):
    """2 x [conv 3x3 stride 2, batch norm, tanh] -> dense: the Omniglot CNN's blocks with a
    smooth activation, for iMAML's check (with ReLU the proximal problem's minimum sits on
    kinks, where phi*(theta) has no derivative)."""
    layers, c = [], shape[-1]
    for _ in range(2):
        layers += [conv.Conv2d(c, filters, stride=2), conv.BatchNorm(filters), Tanh()]
        c = filters
    out = shape
    for layer in layers:
        out = layer.output_shape(out)
    layers += [conv.Flatten(), Linear(int(np.prod(out)), classes)]
    return models.Sequential(layers, SoftmaxCrossEntropy(), shape, name="conv-bn-tanh")


def _miniimagenet_cases():
    shape = (13, 13, 2)
    return _conv_cases([(1, (7, 6, 2))], [(7, 7, 3), (6, 6, 2)]) + _model(
        "miniimagenet_cnn(3) 13x13x2 filters=3",
        lambda: models.miniimagenet_cnn(3, input_shape=shape, filters=3),
        classes_batch(shape, 3), leads=((), (2,))) + _meta(
        "miniimagenet_cnn(3) 13x13x2 filters=3",
        lambda: models.miniimagenet_cnn(3, input_shape=shape, filters=3),
        classes_batch(shape, 3))


def cases(family):
    """The Cases of one family: 'mlp', 'omniglot' or 'miniimagenet'."""
    builders = {"mlp": _mlp_cases, "omniglot": _omniglot_cases,
                "miniimagenet": _miniimagenet_cases}
    if family not in builders:
        raise UserError(f"unknown model family {family!r}; expected one of {', '.join(FAMILIES)}")
    return builders[family]()


def run_checks(families=("mlp",), xp=np, seed=0):
    """Run every case of the given families on array module xp; a list of Rows.

    Case i of a family draws from numpy.random.default_rng((seed, i)) on the host.
    """
    rows = []
    for family in families:
        for i, case in enumerate(cases(family)):
            rows += case.run(np.random.default_rng((seed, i)), xp)
    return rows


def format_table(rows, tol=TOL):
    """The rows as a fixed-width table with a closing summary line."""
    width = max([len("component")] + [len(r.component) for r in rows])
    cwidth = max([len("check")] + [len(r.check) for r in rows])
    lines = [f"{'component':<{width}}  {'check':<{cwidth}}  {'max abs err':>11}  "
             f"{'max rel err':>11}  result"]
    lines.append("-" * len(lines[0]))
    for r in rows:
        lines.append(f"{r.component:<{width}}  {r.check:<{cwidth}}  {r.max_abs:11.2e}  "
                     f"{r.max_rel:11.2e}  {'pass' if r.passed else 'FAIL'}")
    failed = sum(not r.passed for r in rows)
    lines.append(f"{len(rows)} checks, {failed} failed (pass: relative error < {tol:g}, "
                 f"float64, central differences h = {H:g}; Taylor rows: error ratio within "
                 f"10% of 4)")
    return "\n".join(lines)
