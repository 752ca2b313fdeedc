"""Checks of every pass: each layer's and loss's backward and R-passes, each model's
gradient, Hessian-vector product, symmetry and batching.

    backward    dx, dw  vs  (f(. + h e_i) - f(. - h e_i)) / 2h, f = sum(dy * forward)
    R-forward   R{y}    vs  (forward(x + h rx, w + h rw) - forward(x - h rx, w - h rw)) / 2h
    R-backward  R{dx}, R{dw}  vs  the same difference of backward (dy moved by h rdy too)
    model grad          vs  differences of the loss (every coordinate, or random directions)
    model hvp    H v    vs  (grad(theta + h v) - grad(theta - h v)) / 2h
    symmetry            u.(H v) == v.(H u)
    batched             T tasks in one call == T separate calls

A model's (theta, x) is re-drawn until its ReLU inputs and its pooling windows' top-two
gaps exceed 1e-4.
"""
import numpy as np

from ..backend import get_xp, to_host
from ..layers import ReLU
from .core import (MAX_COORDS, central, compare, component_name, coord_grad, params, scalar,
                   shift, unit, away_from_zero)


def check_layer(name, layer, in_shape, rng, xp=np, lead=(), batch=3, sample=away_from_zero):
    """Rows for one layer: backward, R-forward and R-backward (and with rx = 0 if it has weights).

    in_shape: one example's shape; lead: task axes; sample(rng, shape): the input.
    """
    x_shape = lead + (batch,) + tuple(in_shape)
    y_shape = lead + (batch,) + tuple(layer.output_shape(tuple(in_shape)))
    dev = xp.asarray
    p = {k: dev(v) for k, v in params(layer, rng, lead).items()}
    rp = {k: dev(rng.standard_normal(v.shape)) for k, v in p.items()}
    x, rx = dev(sample(rng, x_shape)), dev(rng.standard_normal(x_shape))
    dy, rdy = dev(rng.standard_normal(y_shape)), dev(rng.standard_normal(y_shape))
    names = [k for k, _ in layer.params]
    component = component_name(name, lead)

    def objective(pp, xx):                                    # f = sum(dy * y)
        return scalar(dy * layer.forward(pp, xx)[0])

    y, cache = layer.forward(p, x)
    dx, dw = layer.backward(p, cache, dy)
    numeric = [coord_grad(lambda xx: objective(p, xx), x)]
    numeric += [coord_grad(lambda a, k=k: objective({**p, k: a}, x), p[k]) for k in names]
    rows = [compare(component, "backward", [dx] + [dw[k] for k in names], numeric)]

    for tangent in ([rx, None] if names else [rx]):
        txt = "" if tangent is not None else " (rx=0)"
        zx = xp.zeros_like(x) if tangent is None else tangent

        def forward_at(s):
            return layer.forward(shift(p, rp, s), x + s * zx)[0]

        def backward_at(s):
            ps = shift(p, rp, s)
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
    component = component_name(name, lead)
    _, cache = loss.forward(z, y)
    dz = loss.backward(cache)
    numeric = coord_grad(lambda zz: scalar(loss.forward(zz, y)[0]), z)
    rdz = loss.rbackward(cache, rz)
    diff = central(lambda s: loss.backward(loss.forward(z + s * rz, y)[1]))
    return [compare(component, "backward", dz, numeric), compare(component, "rbackward", rdz, diff)]


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
    component = component_name(name, lead)
    _, g = model.loss_and_grad(theta, x, y)

    def loss_at(th):
        return scalar(model.loss(th, x, y))

    if theta.size <= MAX_COORDS:
        rows = [compare(component, "grad", g, coord_grad(loss_at, theta))]
    else:                                                     # g.u vs directional differences
        dirs = [xp.asarray(unit(rng, theta.shape)) for _ in range(8)]
        rows = [compare(component, "grad (8 directions)",
                        np.array([scalar(g * u) for u in dirs]),
                        np.array([central(lambda s, u=u: loss_at(theta + s * u)) for u in dirs]))]

    u, v = (xp.asarray(unit(rng, theta.shape)) for _ in range(2))
    hv, hu = model.hvp(theta, x, y, v), model.hvp(theta, x, y, u)
    rows.append(compare(component, "hvp", hv, central(lambda s: model.grad(theta + s * v, x, y))))
    rows.append(compare(component, "symmetry u.Hv=v.Hu", scalar(u * hv), scalar(v * hu)))
    if lead:
        batched = model.loss_grad_hvp(theta, x, y, v)
        flat = [a.reshape((-1,) + a.shape[len(lead):]) for a in (theta, x, y, v)]
        single = [model.loss_grad_hvp(*args) for args in zip(*flat)]
        rows.append(compare(component, "batched == per task", list(batched),
                            [xp.stack([s[i] for s in single]).reshape(batched[i].shape)
                             for i in range(3)]))
    return rows
