"""Finite-difference verification of every pass: gradients and Hessian-vector products.

For each layer, loss and whole model, in float64, with central differences (h = 1e-5):

    backward    dx, dw  vs  (f(. + h e_i) - f(. - h e_i)) / 2h, f = sum(dy * forward)
    R-forward   R{y}    vs  (forward(x + h rx, w + h rw) - forward(x - h rx, w - h rw)) / 2h
    R-backward  R{dx}, R{dw}  vs  the same difference of backward (dy moved by h rdy too)
    model grad          vs  differences of the loss (every coordinate, or random directions)
    model hvp    H v    vs  (grad(theta + h v) - grad(theta - h v)) / 2h
    symmetry            u.(H v) == v.(H u)
    batched             T tasks in one call == T separate calls

Relative error is max|a - b| / max(max|a|, max|b|, tiny), taken per output array; a check
passes below 1e-6. Inputs stay off kinks, where the function has no derivative and
differences would disagree with any formula: layer inputs |x| > 0.1 for ReLU and a
shuffled arange (no ties) for pooling; a model's (theta, x) is re-drawn until its ReLU
inputs and its pooling windows' top-two gaps exceed 1e-4.

``cases(family)`` lists the checks of 'mlp', 'omniglot' or 'miniimagenet' as ``Case``
objects; ``run_checks`` runs them and returns ``Row``s; ``format_table`` prints them.
Arrays are generated on the host and moved with ``xp.asarray``, so NumPy and CuPy check
the same numbers.
"""
from collections import namedtuple

import numpy as np

from .backend import get_xp, to_host
from .errors import UserError
from .layers import Linear, ReLU, Tanh
from .losses import MSE, SoftmaxCrossEntropy
from . import models

H, TOL, TINY = 1e-5, 1e-6, 1e-300
MAX_COORDS = 800          # above this many parameters, check gradients along random directions
FAMILIES = ("mlp", "omniglot", "miniimagenet")

Row = namedtuple("Row", "component check max_abs max_rel passed")
Case = namedtuple("Case", "name kind run")   # kind: layer|loss|model; run(rng, xp) -> Rows


# -- comparison and differences -------------------------------------------------------
def compare(component, check, analytic, numeric, tol=TOL):
    """A Row comparing arrays (or equal-length lists of arrays) output by output.

    rel = max|a - b| / max(max|a|, max|b|, tiny) for each pair; the row keeps the largest
    absolute and relative errors. ``None`` in ``analytic`` stands for zeros (a pass that
    returns no tangent because it is zero).
    """
    if not isinstance(analytic, (list, tuple)):
        analytic, numeric = [analytic], [numeric]
    if len(analytic) != len(numeric):
        raise ValueError(f"{component} {check}: {len(analytic)} outputs vs {len(numeric)}")
    max_abs = max_rel = 0.0
    for a, b in zip(analytic, numeric):
        b = np.asarray(to_host(b), np.float64)
        a = np.zeros_like(b) if a is None else np.asarray(to_host(a), np.float64)
        if a.shape != b.shape:
            raise ValueError(f"{component} {check}: shape {a.shape} vs expected {b.shape}")
        if a.size == 0:
            continue
        err = float(np.max(np.abs(a - b)))
        scale = max(float(np.max(np.abs(a))), float(np.max(np.abs(b))), TINY)
        max_abs, max_rel = max(max_abs, err), max(max_rel, err / scale)
    return Row(component, check, max_abs, max_rel, bool(max_rel < tol))


def coord_grad(f, a, h=H):
    """Numeric gradient of the scalar function f at the array a, coordinate by coordinate.

        g_i = (f(a + h e_i) - f(a - h e_i)) / 2h        (returned on the host, a's shape)
    """
    host = to_host(a).ravel()
    work = a.copy()
    flat = work.reshape(-1)                                   # a view of work
    g = np.empty(host.size)
    for i in range(host.size):
        flat[i] = host[i] + h
        fp = f(work)
        flat[i] = host[i] - h
        fm = f(work)
        flat[i] = host[i]
        g[i] = (fp - fm) / (2 * h)
    return g.reshape(a.shape)


def central(f, h=H):
    """(f(+h) - f(-h)) / 2h for f(step) returning an array, or a list of arrays."""
    plus, minus = f(h), f(-h)
    if isinstance(plus, (list, tuple)):
        return [(p - m) / (2 * h) for p, m in zip(plus, minus)]
    return (plus - minus) / (2 * h)


def _scalar(a):
    """The sum of a (device) array as a Python float."""
    return float(to_host(a.sum()))


# -- inputs -------------------------------------------------------------------------
def away_from_zero(rng, shape):
    """Values with |x| in [0.2, 1.5] and random signs: no ReLU kink within reach of h."""
    return rng.uniform(0.2, 1.5, shape) * rng.choice([-1.0, 1.0], shape)


def distinct(rng, shape):
    """A shuffled arange scaled to [-1, 1]: no ties inside any pooling window."""
    n = int(np.prod(shape))
    return (rng.permutation(n).reshape(shape) + 0.5) * (2.0 / n) - 1.0


def _params(layer, rng, lead):
    """Host parameters (lead + shape) for a layer: its initialisation plus noise."""
    init = layer.init(rng)
    return {name: np.broadcast_to(np.asarray(init[name], np.float64), lead + tuple(shape))
            + 0.3 * rng.standard_normal(lead + tuple(shape)) for name, shape in layer.params}


def _component(name, lead):
    """A table label: the component's name and, if any, its task axes."""
    return f"{name} T={lead}" if lead else name


def _shift(p, rp, s):
    return {k: p[k] + s * rp[k] for k in p}


# -- layers -------------------------------------------------------------------------
def check_layer(name, layer, in_shape, rng, xp=np, lead=(), batch=3, sample=away_from_zero):
    """Rows for one layer: backward, R-forward and R-backward (and with rx = 0 if it has weights).

    in_shape: one example's shape; lead: task axes; sample(rng, shape): the input.
    """
    x_shape = lead + (batch,) + tuple(in_shape)
    y_shape = lead + (batch,) + tuple(layer.output_shape(tuple(in_shape)))
    dev = xp.asarray
    p = {k: dev(v) for k, v in _params(layer, rng, lead).items()}
    rp = {k: dev(rng.standard_normal(v.shape)) for k, v in p.items()}
    x, rx = dev(sample(rng, x_shape)), dev(rng.standard_normal(x_shape))
    dy, rdy = dev(rng.standard_normal(y_shape)), dev(rng.standard_normal(y_shape))
    names = [k for k, _ in layer.params]
    component = _component(name, lead)

    def objective(pp, xx):                                    # f = sum(dy * y)
        return _scalar(dy * layer.forward(pp, xx)[0])

    y, cache = layer.forward(p, x)
    dx, dw = layer.backward(p, cache, dy)
    numeric = [coord_grad(lambda xx: objective(p, xx), x)]
    numeric += [coord_grad(lambda a, k=k: objective({**p, k: a}, x), p[k]) for k in names]
    rows = [compare(component, "backward", [dx] + [dw[k] for k in names], numeric)]

    for tangent in ([rx, None] if names else [rx]):
        txt = "" if tangent is not None else " (rx=0)"
        zx = xp.zeros_like(x) if tangent is None else tangent

        def forward_at(s):
            return layer.forward(_shift(p, rp, s), x + s * zx)[0]

        def backward_at(s):
            ps = _shift(p, rp, s)
            dxs, dws = layer.backward(ps, layer.forward(ps, x + s * zx)[1], dy + s * rdy)
            return [dxs] + [dws[k] for k in names]

        ry, rcache = layer.rforward(p, rp, cache, tangent)
        rows.append(compare(component, "rforward" + txt, ry, central(forward_at)))
        rdx, rdw = layer.rbackward(p, rp, cache, rcache, dy, rdy)
        rows.append(compare(component, "rbackward" + txt, [rdx] + [rdw[k] for k in names],
                            central(backward_at)))
    return rows


def check_loss(name, loss, z_shape, y, rng, xp=np):
    """Rows for a loss: dz vs differences of sum(L), and R{dz} vs differences of dz.

    z_shape: (..., B, D) logits/predictions; y: host targets.
    """
    z, rz, y = xp.asarray(rng.standard_normal(z_shape)), \
        xp.asarray(rng.standard_normal(z_shape)), xp.asarray(y)
    lead = tuple(z_shape[:-2])
    component = _component(name, lead)
    _, cache = loss.forward(z, y)
    dz = loss.backward(cache)
    numeric = coord_grad(lambda zz: _scalar(loss.forward(zz, y)[0]), z)
    rdz = loss.rbackward(cache, rz)
    diff = central(lambda s: loss.backward(loss.forward(z + s * rz, y)[1]))
    return [compare(component, "backward", dz, numeric), compare(component, "rbackward", rdz, diff)]


# -- models -------------------------------------------------------------------------
def pool_gap(x):
    """The smallest gap between the two largest values of any 2x2 'same' pooling window.

    x (..., B, H, W, C); odd sizes are padded at the bottom/right with -inf (TensorFlow),
    as in ``conv.MaxPool2d``. A window with one real value has an infinite gap.
    """
    xp = get_xp(x)
    *lead, n, h, w, c = x.shape
    ho, wo = -(-h // 2), -(-w // 2)
    padded = xp.full((*lead, n, 2 * ho, 2 * wo, c), -np.inf, x.dtype)
    padded[..., :h, :w, :] = x
    win = padded.reshape(*lead, n, ho, 2, wo, 2, c).swapaxes(-4, -3)
    top2 = xp.sort(win.reshape(*lead, n, ho, wo, 4, c), axis=-2)[..., -2:, :]
    return float(to_host((top2[..., 1, :] - top2[..., 0, :]).min()))


def kink_margin(model, theta, x):
    """How far (theta, x) is from a kink: the smallest |input| of any ReLU and the smallest
    top-two gap of any max-pooling window (layers named MaxPool2d: 2x2, stride 2)."""
    margin, h = np.inf, x
    for layer, p in zip(model.layers, model.views(theta)):
        if isinstance(layer, ReLU):
            margin = min(margin, float(to_host(abs(h).min())))
        elif type(layer).__name__ == "MaxPool2d":
            margin = min(margin, pool_gap(h))
        h = layer.forward(p, h)[0]
    return margin


def _unit(rng, shape):
    v = rng.standard_normal(shape)
    return v / np.linalg.norm(v)


def check_model(name, model, sample, rng, xp=np, lead=(), min_margin=1e-4, tries=200):
    """Rows for a whole model: grad, hvp, symmetry u.Hv == v.Hu, and batched == per task.

    sample(rng, lead) -> host (x, y). theta is the model's initialisation plus noise;
    (theta, x) are re-drawn until every ReLU input is at least min_margin from 0 and every
    pooling window's two largest values are min_margin apart (``kink_margin``).
    """
    for _ in range(tries):
        theta0 = np.broadcast_to(model.init(rng), lead + (model.num_params,))
        theta = xp.asarray(theta0 + 0.05 * rng.standard_normal(theta0.shape))
        x, y = (xp.asarray(a) for a in sample(rng, lead))
        if kink_margin(model, theta, x) > min_margin:
            break
    else:
        raise RuntimeError(f"{name}: no draw kept ReLU inputs and pooling windows "
                           f"{min_margin} away from a kink")
    component = _component(name, lead)
    _, g = model.loss_and_grad(theta, x, y)

    def loss_at(th):
        return _scalar(model.loss(th, x, y))

    if theta.size <= MAX_COORDS:
        rows = [compare(component, "grad", g, coord_grad(loss_at, theta))]
    else:                                                     # g.u vs directional differences
        dirs = [xp.asarray(_unit(rng, theta.shape)) for _ in range(8)]
        rows = [compare(component, "grad (8 directions)",
                        np.array([_scalar(g * u) for u in dirs]),
                        np.array([central(lambda s, u=u: loss_at(theta + s * u)) for u in dirs]))]

    u, v = (xp.asarray(_unit(rng, theta.shape)) for _ in range(2))
    hv, hu = model.hvp(theta, x, y, v), model.hvp(theta, x, y, u)
    rows.append(compare(component, "hvp", hv, central(lambda s: model.grad(theta + s * v, x, y))))
    rows.append(compare(component, "symmetry u.Hv=v.Hu", _scalar(u * hv), _scalar(v * hu)))
    if lead:
        batched = model.loss_grad_hvp(theta, x, y, v)
        flat = [a.reshape((-1,) + a.shape[len(lead):]) for a in (theta, x, y, v)]
        single = [model.loss_grad_hvp(*args) for args in zip(*flat)]
        rows.append(compare(component, "batched == per task", list(batched),
                            [xp.stack([s[i] for s in single]).reshape(batched[i].shape)
                             for i in range(3)]))
    return rows


# -- the cases of each model family --------------------------------------------------
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
                     classes_batch((5,), 3)))


def _conv():
    try:
        from . import conv
    except ImportError as exc:
        raise UserError(f"the convolutional checks need minireptile/conv.py ({exc})") from None
    return conv


def _conv_cases(conv, convs, pools):
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
    conv, shape = _conv(), (9, 9, 1)
    return _conv_cases(conv, [(2, (9, 9, 2)), (2, (6, 6, 2))], []) + _model(
        "omniglot_cnn(3) 9x9x1 filters=3",
        lambda: models.omniglot_cnn(3, input_shape=shape, filters=3),
        classes_batch(shape, 3), leads=((), (2,)))


def _miniimagenet_cases():
    conv, shape = _conv(), (13, 13, 2)
    return _conv_cases(conv, [(1, (7, 6, 2))], [(7, 7, 3), (6, 6, 2)]) + _model(
        "miniimagenet_cnn(3) 13x13x2 filters=3",
        lambda: models.miniimagenet_cnn(3, input_shape=shape, filters=3),
        classes_batch(shape, 3), leads=((), (2,)))


def cases(family):
    """The Cases of one family: 'mlp', 'omniglot' or 'miniimagenet' (conv ones need conv.py)."""
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
                 f"float64, central differences h = {H:g})")
    return "\n".join(lines)
