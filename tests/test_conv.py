"""Conv2d, BatchNorm, MaxPool2d, Flatten and the paper's CNNs (section 6.1).

float64 central differences (h = 1e-5, relative error below 1e-6) for every pass of every
layer, forward passes against slow references, T batched tasks against T separate calls,
the whole models (gradient, Hessian-vector product, exact MAML through two inner steps),
output shapes at the real input sizes and the parameter counts of the TensorFlow models.
"""
import numpy as np
import pytest

from minireptile.conv import BatchNorm, Conv2d, Flatten, MaxPool2d, MeanPool, conv_geometry
from minireptile.meta import maml_gradient
from minireptile.models import miniimagenet_cnn, omniglot_cnn

H = 1e-5
TOL = 1e-6


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.linalg.norm(a - b) / max(np.linalg.norm(a), np.linalg.norm(b), 1e-300)


def make_params(layer, rng, lead=()):
    """Random parameters (not the initial ones: gamma = 1, b = 0 would hide mistakes)."""
    return {name: rng.normal(size=lead + shape) for name, shape in layer.params}


def make_input(layer, rng, shape):
    if isinstance(layer, MaxPool2d):                    # no ties inside a pooling window
        return rng.permutation(int(np.prod(shape))).reshape(shape) * 0.1 - 1.0
    return rng.normal(size=shape)


def plus(p, v, t):
    return {k: p[k] + t * v[k] for k in p}


# -- one layer: every pass against central differences ------------------------------------

LAYER_CASES = [
    (Conv2d(2, 3, stride=1, padding="same"), (2, 5, 5, 2)),
    (Conv2d(2, 3, stride=1, padding="same"), (2, 6, 5, 2)),
    (Conv2d(2, 3, stride=2, padding="same"), (2, 6, 6, 2)),
    (Conv2d(2, 3, stride=2, padding="same"), (2, 7, 5, 2)),
    (Conv2d(2, 3, stride=1, padding="valid"), (2, 6, 5, 2)),
    (Conv2d(2, 3, stride=2, padding="valid"), (2, 7, 6, 2)),
    (BatchNorm(3), (3, 4, 5, 3)),
    (BatchNorm(3), (6, 3)),
    (BatchNorm(3, scale=False), (3, 4, 5, 3)),
    (MaxPool2d(), (2, 4, 6, 3)),
    (MaxPool2d(), (2, 5, 7, 3)),
    (Flatten(), (2, 3, 4, 2)),
    (MeanPool(), (2, 3, 4, 2)),
]
LAYER_IDS = [f"{type(layer).__name__}{'' if getattr(layer, 'scale', True) else '-noscale'}-"
             f"{getattr(layer, 'stride', '')}"
             f"{getattr(layer, 'padding', '')}-{'x'.join(map(str, s))}" for layer, s in LAYER_CASES]


def all_passes(layer, p, rp, x, rx, dy, rdy):
    """Every output of the four passes: y, dx, dw, ry, rdx, rdw."""
    y, cache = layer.forward(p, x)
    dx, dw = layer.backward(p, cache, dy)
    ry, rcache = layer.rforward(p, rp, cache, rx)
    rdx, rdw = layer.rbackward(p, rp, cache, rcache, dy, rdy)
    return y, dx, dw, ry, rdx, rdw


@pytest.mark.parametrize("lead", [(), (2,)], ids=["one-task", "task-axis"])
@pytest.mark.parametrize("layer,shape", LAYER_CASES, ids=LAYER_IDS)
def test_layer_passes_match_finite_differences(layer, shape, lead):
    rng = np.random.default_rng(0)
    p, rp = make_params(layer, rng, lead), make_params(layer, rng, lead)
    x, rx = make_input(layer, rng, lead + shape), rng.normal(size=lead + shape)
    y, cache = layer.forward(p, x)
    dy, rdy = rng.normal(size=y.shape), rng.normal(size=y.shape)
    _, dx, dw, ry, rdx, rdw = all_passes(layer, p, rp, x, rx, dy, rdy)

    def moved(t):
        return all_passes(layer, plus(p, rp, t), rp, x + t * rx, rx, dy + t * rdy, rdy)
    hi, lo = moved(H), moved(-H)
    assert rel_err(ry, (hi[0] - lo[0]) / (2 * H)) < TOL                       # R{y}
    assert rel_err(rdx, (hi[1] - lo[1]) / (2 * H)) < TOL                      # R{dx}
    for name in p:
        assert rel_err(rdw[name], (hi[2][name] - lo[2][name]) / (2 * H)) < TOL  # R{dw}
    # backward is the adjoint of the tangent map: <dy, J (rx, rw)> = <dx, rx> + <dw, rw>
    vjp = (dx * rx).sum() + sum((dw[k] * rp[k]).sum() for k in p)
    assert rel_err(vjp, (dy * ry).sum()) < 1e-12


@pytest.mark.parametrize("layer,shape", LAYER_CASES, ids=LAYER_IDS)
def test_layer_zero_tangent_and_no_dx(layer, shape):
    """rx=None is a zero input tangent; need_dx=False skips dx and leaves dw unchanged."""
    rng = np.random.default_rng(1)
    p, rp = make_params(layer, rng), make_params(layer, rng)
    x = make_input(layer, rng, shape)
    y, cache = layer.forward(p, x)
    dy, rdy = rng.normal(size=y.shape), rng.normal(size=y.shape)
    _, _, _, ry0, rdx0, rdw0 = all_passes(layer, p, rp, x, np.zeros_like(x), dy, rdy)
    ry, rcache = layer.rforward(p, rp, cache, None)
    if layer.params:
        np.testing.assert_allclose(ry, ry0, rtol=1e-12, atol=1e-12)
    else:
        assert ry is None
    rdx, rdw = layer.rbackward(p, rp, cache, rcache, dy, rdy)
    np.testing.assert_allclose(rdx, rdx0, rtol=1e-12, atol=1e-12)
    for name in p:
        np.testing.assert_allclose(rdw[name], rdw0[name], rtol=1e-12, atol=1e-12)
    dx, dw = layer.backward(p, cache, dy, need_dx=False)
    _, dw1 = layer.backward(p, cache, dy)
    assert dx is None or not layer.params
    for name in p:
        np.testing.assert_array_equal(dw[name], dw1[name])
    if layer.params:
        assert layer.rbackward(p, rp, cache, rcache, dy, rdy, need_dx=False)[0] is None


@pytest.mark.parametrize("layer,shape", LAYER_CASES, ids=LAYER_IDS)
def test_batched_tasks_equal_separate_calls(layer, shape):
    """T tasks in one call == T calls (batch-norm statistics are per task)."""
    rng, T = np.random.default_rng(2), 3
    p, rp = make_params(layer, rng, (T,)), make_params(layer, rng, (T,))
    x, rx = make_input(layer, rng, (T,) + shape), rng.normal(size=(T,) + shape)
    y, _ = layer.forward(p, x)
    dy, rdy = rng.normal(size=y.shape), rng.normal(size=y.shape)
    batched = all_passes(layer, p, rp, x, rx, dy, rdy)
    for t in range(T):
        pt, rpt = {k: v[t] for k, v in p.items()}, {k: v[t] for k, v in rp.items()}
        single = all_passes(layer, pt, rpt, x[t], rx[t], dy[t], rdy[t])
        for a, b in zip(batched, single):
            if isinstance(b, dict):
                for k in b:
                    np.testing.assert_allclose(a[k][t], b[k], rtol=1e-12, atol=1e-12)
            else:
                np.testing.assert_allclose(a[t], b, rtol=1e-12, atol=1e-12)


# -- forward passes against references -----------------------------------------------------

def tf_same_pads(size, stride, kernel):
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return out, total // 2


def conv_reference(x, w, b, stride, padding):
    """Direct cross-correlation, one output pixel at a time.  x (B, H, W, C), w (3, 3, C, F)."""
    _, h, wd, _ = x.shape
    if padding == "same":
        (ho, top), (wo, left) = tf_same_pads(h, stride, 3), tf_same_pads(wd, stride, 3)
    else:
        (ho, top), (wo, left) = ((h - 3) // stride + 1, 0), ((wd - 3) // stride + 1, 0)
    y = np.zeros((x.shape[0], ho, wo, w.shape[-1]))
    for i in range(ho):
        for j in range(wo):
            for di in range(3):
                for dj in range(3):
                    r, c = i * stride + di - top, j * stride + dj - left
                    if 0 <= r < h and 0 <= c < wd:
                        y[:, i, j, :] += x[:, r, c, :] @ w[di, dj]
    return y + b


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("padding", ["same", "valid"])
@pytest.mark.parametrize("hw", [(5, 5), (6, 6), (7, 4), (28, 28)])
def test_conv_forward_matches_loop_reference(stride, padding, hw):
    rng = np.random.default_rng(3)
    layer = Conv2d(3, 4, stride=stride, padding=padding)
    p = make_params(layer, rng)
    x = rng.normal(size=(2,) + hw + (3,))
    y, _ = layer.forward(p, x)
    assert y.shape[1:] == layer.output_shape(x.shape[1:])
    np.testing.assert_allclose(y, conv_reference(x, p["w"], p["b"], stride, padding),
                               rtol=1e-12, atol=1e-12)


def test_tensorflow_same_padding_puts_the_extra_row_last():
    assert [conv_geometry(n, 3, 2, "same") for n in (28, 14, 7, 4)] == \
        [(14, 0, 1), (7, 0, 1), (4, 1, 1), (2, 0, 1)]
    assert conv_geometry(5, 3, 1, "same") == (5, 1, 1)
    assert conv_geometry(7, 3, 2, "valid") == (3, 0, 0)
    assert [MaxPool2d().output_shape((n, n, 1))[0] for n in (84, 42, 21, 11)] == [42, 21, 11, 6]


def test_maxpool_forward_matches_reference():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(2, 5, 6, 3))
    y, _ = MaxPool2d().forward({}, x)
    ref = np.array([[[x[b, 2 * i:2 * i + 2, 2 * j:2 * j + 2, :].max(axis=(0, 1))
                      for j in range(3)] for i in range(3)] for b in range(2)])
    np.testing.assert_array_equal(y, ref)


@pytest.mark.parametrize("window,winner", [
    ([[0, 0], [0, 0]], (0, 0)), ([[1, 2], [2, 0]], (0, 1)), ([[0, 1], [0, 1]], (0, 1)),
    ([[0, 0], [1, 1]], (1, 0)), ([[0, 1], [1, 0]], (0, 1)), ([[3, 1], [2, 3]], (0, 0))])
def test_maxpool_ties_go_to_the_first_maximum(window, winner):
    """Row-major first maximum (TensorFlow's MaxPoolGrad); R{y} picks the same entry."""
    x = np.array(window, float)[None, :, :, None]
    y, cache = MaxPool2d().forward({}, x)
    dx, _ = MaxPool2d().backward({}, cache, np.ones_like(y))
    want = np.zeros_like(x)
    want[0, winner[0], winner[1], 0] = 1
    np.testing.assert_array_equal(dx, want)
    rx = np.arange(4.0).reshape(x.shape)
    np.testing.assert_array_equal(MaxPool2d().rforward({}, {}, cache, rx)[0],
                                  rx[:, winner[0]:winner[0] + 1, winner[1]:winner[1] + 1])


def test_maxpool_padding_never_wins():
    """Odd sizes: the bottom/right padding loses even to a tie of equal (or -inf) inputs."""
    for fill in (0.0, -np.inf):
        x = np.full((1, 3, 3, 1), fill)
        y, cache = MaxPool2d().forward({}, x)
        np.testing.assert_array_equal(y, np.full((1, 2, 2, 1), fill))
        dx, _ = MaxPool2d().backward({}, cache, np.ones_like(y))
        np.testing.assert_array_equal(dx[0, :, :, 0], [[1, 0, 1], [0, 0, 0], [1, 0, 1]])


def test_batchnorm_forward_matches_reference():
    rng = np.random.default_rng(5)
    x = rng.normal(2.0, 3.0, size=(4, 3, 5, 2))
    p = make_params(BatchNorm(2), rng)
    y, _ = BatchNorm(2).forward(p, x)
    mean, var = x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2))
    np.testing.assert_allclose(y, (x - mean) / np.sqrt(var + 1e-3) * p["gamma"] + p["beta"],
                               rtol=1e-12, atol=1e-12)


def test_flatten_uses_tensorflow_hwc_order():
    x = np.arange(2 * 2 * 3 * 4).reshape(2, 2, 3, 4)
    np.testing.assert_array_equal(Flatten().forward({}, x)[0], x.reshape(2, 24))


def test_float32_stays_float32():
    rng = np.random.default_rng(6)
    model = omniglot_cnn(5, input_shape=(12, 12, 1), filters=8)
    theta = model.init(rng).astype(np.float32)
    x = rng.normal(size=(5, 12, 12, 1)).astype(np.float32)
    loss, g, hv = model.loss_grad_hvp(theta, x, np.arange(5), theta)
    assert loss.dtype == g.dtype == hv.dtype == np.float32


# -- whole models ---------------------------------------------------------------------------

def reduced(name):
    """Small versions that still exercise stride 2 on odd sizes and pooling of odd sizes."""
    if name == "omniglot":
        return omniglot_cnn(3, input_shape=(9, 9, 2), filters=4)          # 9 -> 5 -> 3 -> 2 -> 1
    if name == "omniglot-maml":                          # Finn et al.'s: 2x2 positions averaged
        return omniglot_cnn(3, input_shape=(13, 13, 2), filters=4, network="maml")
    return miniimagenet_cnn(3, input_shape=(11, 11, 2), filters=3)       # 11 -> 6 -> 3 -> 2 -> 1


def unit(v):
    """A unit direction: the finite differences then move pre-activations by about h, and
    stay clear of the ReLU kinks of three chained passes."""
    return v / np.linalg.norm(v)


def model_problem(model, rng, lead=(), batch=4):
    theta = model.init(rng)
    theta = theta + 0.3 * rng.normal(size=lead + theta.shape)
    x = rng.normal(size=lead + (batch,) + model.input_shape)
    y = rng.integers(0, model.output_shape[0], size=lead + (batch,))
    return theta, x, y


@pytest.mark.parametrize("name", ["omniglot", "omniglot-maml", "miniimagenet"])
def test_model_gradient_and_hvp_match_finite_differences(name):
    rng = np.random.default_rng(7)
    model = reduced(name)
    theta, x, y = model_problem(model, rng)
    u, v = unit(rng.normal(size=theta.shape)), unit(rng.normal(size=theta.shape))
    loss, g, hv = model.loss_grad_hvp(theta, x, y, v)
    np.testing.assert_allclose(loss, model.loss(theta, x, y), rtol=1e-14)
    np.testing.assert_allclose(g, model.grad(theta, x, y), rtol=1e-14)
    fd = (model.loss(theta + H * v, x, y) - model.loss(theta - H * v, x, y)) / (2 * H)
    assert rel_err(g @ v, fd) < TOL
    fd = (model.grad(theta + H * v, x, y) - model.grad(theta - H * v, x, y)) / (2 * H)
    assert rel_err(hv, fd) < TOL
    assert rel_err(u @ hv, v @ model.hvp(theta, x, y, u)) < 1e-10


@pytest.mark.parametrize("name", ["omniglot", "omniglot-maml", "miniimagenet"])
def test_model_task_axis_equals_separate_tasks(name):
    rng = np.random.default_rng(8)
    model = reduced(name)
    theta, x, y = model_problem(model, rng, lead=(3,))
    v = rng.normal(size=theta.shape)
    loss, g, hv = model.loss_grad_hvp(theta, x, y, v)
    for t in range(3):
        lt, gt, hvt = model.loss_grad_hvp(theta[t], x[t], y[t], v[t])
        np.testing.assert_allclose(loss[t], lt, rtol=1e-12)
        np.testing.assert_allclose(g[t], gt, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(hv[t], hvt, rtol=1e-12, atol=1e-12)


def test_exact_maml_meta_gradient_matches_finite_differences():
    """meta.maml_gradient, (I - alpha H_1)(I - alpha H_2) L_test'(phi_2) (Eqs. (17)-(21), k = 2),
    against central differences of L_test(phi_2(theta)) through two plain SGD steps."""
    rng = np.random.default_rng(9)
    model = omniglot_cnn(3, input_shape=(17, 17, 1), filters=4)      # 17 -> 9 -> 5 -> 3 -> 2
    theta, _, _ = model_problem(model, rng)
    batches = [model_problem(model, rng, batch=5)[1:] for _ in range(3)]
    inner, test, alpha = batches[:2], batches[2], 0.05

    def adapted(theta):                                  # phi_2 = U(theta), two SGD steps
        for x, y in inner:
            theta = theta - alpha * model.grad(theta, x, y)
        return theta

    g = maml_gradient(model, theta, inner, test, alpha)
    d = unit(rng.normal(size=theta.shape))
    fd = (model.loss(adapted(theta + H * d), *test) -
          model.loss(adapted(theta - H * d), *test)) / (2 * H)
    assert rel_err(g @ d, fd) < TOL
    first_order = model.grad(adapted(theta), *test)
    assert rel_err(first_order @ d, fd) > 1e-4           # the second-order terms matter here


# -- real sizes -----------------------------------------------------------------------------

def test_output_shapes_at_real_sizes():
    rng = np.random.default_rng(10)
    for model, feats in [(omniglot_cnn(5), (2, 2, 64)), (miniimagenet_cnn(5), (6, 6, 32))]:
        assert model.shapes[-3] == feats and model.shapes[-2] == (int(np.prod(feats)),)
        theta = model.init(rng).astype(np.float32)
        x = rng.normal(size=(2,) + model.input_shape).astype(np.float32)
        assert model.predict(theta, x).shape == (2, 5)
        assert model.predict(np.stack([theta] * 3), np.stack([x] * 3)).shape == (3, 2, 5)
    assert [s[:2] for s in omniglot_cnn(5).shapes[0::3][:5]] == \
        [(28, 28), (14, 14), (7, 7), (4, 4), (2, 2)]


def test_parameter_counts_equal_the_tensorflow_models():
    def conv(c_in, c_out):
        return 3 * 3 * c_in * c_out + c_out
    omniglot = conv(1, 64) + 3 * conv(64, 64) + 4 * 2 * 64 + (2 * 2 * 64 + 1) * 5
    mini = conv(3, 32) + 3 * conv(32, 32) + 4 * 2 * 32 + (6 * 6 * 32 + 1) * 5
    assert omniglot_cnn(5).num_params == omniglot == 113221
    assert miniimagenet_cnn(5).num_params == mini == 34661
    assert omniglot_cnn(20).num_params == 111936 + 257 * 20
    model = omniglot_cnn(5)
    assert model.init(np.random.default_rng(0)).shape == (113221,)
    assert model.layout["1.gamma"][1] == (64,) and model.layout["0.w"][1] == (3, 3, 1, 64)
    finn = conv(1, 64) + 3 * conv(64, 64) + 4 * 64 + (64 + 1) * 5      # no scale, mean-pooled
    assert omniglot_cnn(5, network="maml").num_params == finn == 112005


def test_finn_network_head_starts_standard_normal():
    """Finn et al.'s dense head: w ~ N(0, 1) (tf.random_normal), b = 0; the convolutions
    keep the Glorot kernels of the paper's network."""
    model = omniglot_cnn(20, network="maml")
    theta = model.init(np.random.default_rng(0))
    off, shape = model.layout[f"{len(model.layers) - 1}.w"]                # the dense layer
    w = theta[off:off + int(np.prod(shape))]
    assert shape == (64, 20) and abs(w.std() - 1) < 0.05 and abs(w.mean()) < 0.1
    assert model.shapes[-2] == (64,)
