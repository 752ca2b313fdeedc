"""Every pass of every layer and loss against float64 central differences (STYLE.md).

The checks come from ``minireptile.gradcheck``; the tests here also show that those checks
catch a wrong pass (a check that cannot fail proves nothing) and that their numeric
derivatives are right on functions whose derivatives are known in closed form.
"""
import numpy as np
import pytest

from minireptile import gradcheck
from minireptile.backend import to_host
from minireptile.layers import Linear, ReLU, Tanh, swap
from minireptile.losses import MSE, SoftmaxCrossEntropy

TOL = 1e-6


CASES = [c for name in ("mlp", "omniglot", "miniimagenet") for c in gradcheck.cases(name)
         if c.kind in ("layer", "loss")]


def _assert_rows(rows):
    assert rows, "a check produced no rows"
    bad = [r for r in rows if not r.passed or r.max_rel >= TOL]
    assert not bad, "\n" + gradcheck.format_table(bad)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_gradcheck_case(case, xp):
    """Each layer/loss case of `minireptile gradcheck`, on NumPy and CuPy."""
    _assert_rows(case.run(np.random.default_rng(7), xp))


@pytest.mark.parametrize("seed", range(6))
def test_random_shapes(seed, xp):
    """Linear, ReLU, Tanh, MSE and cross-entropy on random sizes and 0-2 task axes."""
    rng = np.random.default_rng(seed)
    lead = tuple(rng.integers(1, 4, size=rng.integers(0, 3)))
    batch, d_in, d_out = (int(n) for n in rng.integers(1, 6, size=3))
    rows = gradcheck.check_layer("Linear", Linear(d_in, d_out), (d_in,), rng, xp, lead, batch)
    for layer in (ReLU(), Tanh()):
        rows += gradcheck.check_layer(type(layer).__name__, layer, (d_in,), rng, xp, lead, batch)
    z_shape = lead + (batch, d_out)
    rows += gradcheck.check_loss("MSE", MSE(), z_shape, rng.standard_normal(z_shape), rng, xp)
    rows += gradcheck.check_loss("xent", SoftmaxCrossEntropy(), z_shape,
                                 rng.integers(0, d_out, lead + (batch,)), rng, xp)
    _assert_rows(rows)


# -- the checks can fail ----------------------------------------------------------------
class TanhWrongBackward(Tanh):
    def backward(self, p, y, dy, need_dx=True):
        return dy * (1 - y), {}                                 # should be 1 - y^2


class TanhWrongRForward(Tanh):
    def rforward(self, p, rp, y, rx):
        return rx, rx                                           # forgets the factor 1 - y^2


class TanhWrongRBackward(Tanh):
    def rbackward(self, p, rp, y, ry, dy, rdy, need_dx=True):
        return rdy * (1 - y * y), {}                            # drops -2 dy y R{y}


class LinearWrongRBackward(Linear):
    def rbackward(self, p, rp, x, rx, dy, rdy, need_dx=True):
        rdx, rdw = super().rbackward(p, rp, x, rx, dy, rdy, need_dx)
        return rdx - dy @ swap(rp["w"]), rdw                    # drops dy rw^T from R{dx}


@pytest.mark.parametrize("layer, broken", [
    (TanhWrongBackward(), {"backward", "rbackward"}),           # R{dx} is checked vs backward
    (TanhWrongRForward(), {"rforward", "rbackward"}),           # rbackward uses R{y}
    (TanhWrongRBackward(), {"rbackward"}),
    (LinearWrongRBackward(3, 2), {"rbackward", "rbackward (rx=0)"}),
], ids=["Tanh backward", "Tanh rforward", "Tanh rbackward", "Linear rbackward"])
def test_check_catches_a_wrong_pass(layer, broken):
    """A mistake in one pass fails its row (and the rows built on it); the others pass."""
    rows = gradcheck.check_layer("mutant", layer, (3,), np.random.default_rng(0), lead=(2,))
    failed = {r.check for r in rows if not r.passed}
    assert failed == broken, gradcheck.format_table(rows)
    assert min(r.max_rel for r in rows if r.check in broken) > 1e-3


class XentWrongRBackward(SoftmaxCrossEntropy):
    def rbackward(self, cache, rz):
        p, _ = cache
        return p * rz                                           # drops the -p (p.rz) term


def test_check_catches_a_wrong_loss():
    rng = np.random.default_rng(0)
    rows = gradcheck.check_loss("mutant", XentWrongRBackward(), (4, 3), rng.integers(0, 3, 4), rng)
    assert [r.passed for r in rows] == [True, False]


# -- the numeric side of the checks --------------------------------------------------------
def test_coord_grad_matches_a_closed_form(xp, rng):
    """d/da sum(a^3) = 3 a^2, and the work array is left as it was."""
    host = rng.standard_normal((3, 4))
    a = xp.asarray(host)
    g = gradcheck.coord_grad(lambda b: float(to_host((b ** 3).sum())), a)
    want = 3 * host ** 2
    assert np.abs(g - want).max() < 1e-8 * np.abs(want).max()
    np.testing.assert_array_equal(to_host(a), host)


def test_compare_relative_error():
    """rel = max|a-b| / max(max|a|, max|b|); None stands for zeros; exact zeros pass."""
    row = gradcheck.compare("c", "k", np.array([1.0, -4.0]), np.array([1.0, -4.0 + 2e-6]))
    assert row.max_abs == pytest.approx(2e-6) and row.max_rel == pytest.approx(5e-7)
    assert row.passed
    row = gradcheck.compare("c", "k", [np.array([1.0]), None], [np.array([1.0]), np.ones(2)])
    assert row.max_rel == 1.0 and not row.passed
    assert gradcheck.compare("c", "k", None, np.zeros(3)).passed
    with pytest.raises(ValueError, match=r"shape \(2,\) vs expected \(3,\)"):
        gradcheck.compare("c", "k", np.zeros(2), np.zeros(3))


def test_inputs_stay_off_kinks(rng):
    """ReLU inputs are at least 0.2 from 0; pooling inputs have no two equal values."""
    x = gradcheck.away_from_zero(rng, (50, 7))
    assert np.abs(x).min() >= 0.2 and (x < 0).any() and (x > 0).any()
    d = gradcheck.distinct(rng, (4, 5, 5, 3))
    assert np.unique(d).size == d.size and -1 < d.min() and d.max() < 1


def test_pool_gap():
    """The top-two gap of 2x2 windows, padded at the bottom/right for odd sizes."""
    x = np.array([[0.0, 1.0, 5.0], [0.5, 0.9, 7.0], [2.0, 3.0, 4.0]])[None, :, :, None]
    # windows: {0, 1, .5, .9} gap .1; {5, 7} gap 2; {2, 3} gap 1; {4} infinite
    assert gradcheck.pool_gap(x) == pytest.approx(0.1)


# -- batched passes and the two backends -----------------------------------------------
def _layer_passes(layer, p, rp, x, rx, dy, rdy):
    y, cache = layer.forward(p, x)
    dx, dw = layer.backward(p, cache, dy)
    ry, rcache = layer.rforward(p, rp, cache, rx)
    rdx, rdw = layer.rbackward(p, rp, cache, rcache, dy, rdy)
    names = sorted(dw)
    return [y, dx, ry, rdx] + [dw[k] for k in names] + [rdw[k] for k in names]


@pytest.mark.parametrize("layer", [Linear(4, 3), ReLU(), Tanh()], ids=["Linear", "ReLU", "Tanh"])
def test_layer_batched_equals_per_task(layer, xp, rng):
    """T tasks in one call (on xp) give every pass of T separate NumPy calls."""
    T, B = 3, 5
    out = layer.output_shape((4,))
    host = {"x": gradcheck.away_from_zero(rng, (T, B, 4)), "rx": rng.standard_normal((T, B, 4)),
            "dy": rng.standard_normal((T, B) + out), "rdy": rng.standard_normal((T, B) + out)}
    p = {k: rng.standard_normal((T,) + s) for k, s in layer.params}
    rp = {k: rng.standard_normal((T,) + s) for k, s in layer.params}
    batched = _layer_passes(layer, {k: xp.asarray(v) for k, v in p.items()},
                            {k: xp.asarray(v) for k, v in rp.items()},
                            *(xp.asarray(host[k]) for k in ("x", "rx", "dy", "rdy")))
    for t in range(T):
        single = _layer_passes(layer, {k: v[t] for k, v in p.items()},
                               {k: v[t] for k, v in rp.items()},
                               *(host[k][t] for k in ("x", "rx", "dy", "rdy")))
        for a, b in zip(batched, single):
            np.testing.assert_allclose(to_host(a)[t], b, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("loss", [MSE(), SoftmaxCrossEntropy()], ids=["MSE", "xent"])
def test_loss_batched_equals_per_task(loss, xp, rng):
    """Loss, dz and R{dz} for T tasks at once (on xp) == T separate NumPy calls."""
    T, B, C = 3, 4, 5
    z, rz = rng.standard_normal((T, B, C)), rng.standard_normal((T, B, C))
    y = rng.standard_normal((T, B, C)) if isinstance(loss, MSE) else rng.integers(0, C, (T, B))
    value, cache = loss.forward(xp.asarray(z), xp.asarray(y))
    got = [value, loss.backward(cache), loss.rbackward(cache, xp.asarray(rz))]
    assert got[0].shape == (T,)
    for t in range(T):
        v, c = loss.forward(z[t], y[t])
        for a, b in zip(got, [v, loss.backward(c), loss.rbackward(c, rz[t])]):
            np.testing.assert_allclose(to_host(a)[t], b, rtol=1e-12, atol=1e-14)


def test_losses_match_their_definitions(rng):
    """MSE = mean over the batch of the squared error; cross-entropy = summed -log p[y]."""
    z, y = rng.standard_normal((6, 3)), rng.standard_normal((6, 3))
    assert MSE().forward(z, y)[0] == pytest.approx(((z - y) ** 2).sum() / 6)
    labels = rng.integers(0, 3, 6)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    assert SoftmaxCrossEntropy().forward(z, labels)[0] == pytest.approx(
        -logp[np.arange(6), labels].sum())
