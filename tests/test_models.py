"""Whole models: gradients and exact Hessian-vector products, task batching, bad input."""
import numpy as np
import pytest

from minireptile import gradcheck, models
from minireptile.backend import to_host
from minireptile.errors import UserError
from minireptile.models import ShapeError

H = 1e-5


CASES = [c for name in ("mlp", "omniglot", "miniimagenet") for c in gradcheck.cases(name)
         if c.kind == "model"]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_gradcheck_model(case, xp):
    """grad vs differences of the loss, hvp vs differences of grad, u.Hv == v.Hu, batching."""
    rows = case.run(np.random.default_rng(11), xp)
    assert {r.check.split(" (")[0] for r in rows} >= {"grad", "hvp", "symmetry u.Hv=v.Hu"}
    bad = [r for r in rows if not r.passed or r.max_rel >= 1e-6]
    assert not bad, "\n" + gradcheck.format_table(bad)


def _tiny(kind):
    """A tiny MLP, its theta and a batch: (model, theta, x, y), all on the host."""
    rng = np.random.default_rng(3)
    if kind == "tanh-xent":
        model = models.mlp((3, 4, 3), "tanh", "xent")
        x, y = rng.standard_normal((5, 3)), rng.integers(0, 3, 5)
    else:
        model = models.mlp((2, 4, 2), "relu", "mse")
        x, y = rng.standard_normal((5, 2)), rng.standard_normal((5, 2))
    for _ in range(100):                             # stay off ReLU kinks
        theta = model.init(rng) + 0.3 * rng.standard_normal(model.num_params)
        if gradcheck.kink_margin(model, theta, x) > 1e-3:
            return model, theta, x, y
    raise AssertionError("no draw away from the ReLU kinks")


@pytest.mark.parametrize("kind", ["tanh-xent", "relu-mse"])
def test_hvp_equals_full_hessian(kind, xp):
    """H from differences of gradients, column by column; hvp(v) == H v for any v."""
    model, theta, x, y = _tiny(kind)
    P = model.num_params
    t, xd, yd = xp.asarray(theta), xp.asarray(x), xp.asarray(y)
    hess = np.empty((P, P))
    for j in range(P):
        e = np.zeros(P)
        e[j] = H
        hess[:, j] = (to_host(model.grad(t + xp.asarray(e), xd, yd))
                      - to_host(model.grad(t - xp.asarray(e), xd, yd))) / (2 * H)
    scale = np.abs(hess).max()
    assert scale > 0
    assert np.abs(hess - hess.T).max() < 1e-7 * scale               # a Hessian is symmetric
    rng = np.random.default_rng(0)
    for v in [np.eye(P)[0], np.eye(P)[P - 1], *rng.standard_normal((3, P))]:
        hv = to_host(model.hvp(t, xd, yd, xp.asarray(v)))
        assert np.abs(hv - hess @ v).max() < 1e-7 * np.abs(hess @ v).max()


def test_hvp_is_linear_in_v(xp, rng):
    """H (a u + b v) = a H u + b H v, to rounding."""
    model, theta, x, y = _tiny("tanh-xent")
    u, v = rng.standard_normal((2, model.num_params))
    args = [xp.asarray(a) for a in (theta, x, y)]
    lhs = to_host(model.hvp(*args, xp.asarray(2 * u - 3 * v)))
    rhs = (2 * to_host(model.hvp(*args, xp.asarray(u)))
           - 3 * to_host(model.hvp(*args, xp.asarray(v))))
    np.testing.assert_allclose(lhs, rhs, rtol=1e-10, atol=1e-12)


def _task_batch(model, T, B, rng, classes=None):
    theta = model.init(rng) + 0.1 * rng.standard_normal((T, model.num_params))
    x = rng.standard_normal((T, B) + model.input_shape)
    y = (rng.integers(0, classes, (T, B)) if classes
         else rng.standard_normal((T, B) + model.output_shape))
    return theta, x, y, rng.standard_normal((T, model.num_params))


@pytest.mark.parametrize("spec", [((1, 64, 64, 1), "relu", "mse", None),
                                  ((5, 8, 8, 3), "tanh", "xent", 3)],
                         ids=["sine-mlp", "classifier"])
def test_batched_tasks_equal_separate_calls(spec, xp, rng):
    """T tasks in one call on xp == T separate NumPy calls: loss, grad, hvp, loss_grad_hvp."""
    sizes, act, loss, classes = spec
    model = models.mlp(sizes, act, loss)
    T = 4
    theta, x, y, v = _task_batch(model, T, 6, rng, classes)
    d = [xp.asarray(a) for a in (theta, x, y, v)]
    batched = {"loss": model.loss(*d[:3]), "grad": model.grad(*d[:3]),
               "hvp": model.hvp(*d), "lgh": model.loss_grad_hvp(*d)}
    assert batched["loss"].shape == (T,) and batched["hvp"].shape == (T, model.num_params)
    for t in range(T):
        lt, gt = model.loss_and_grad(theta[t], x[t], y[t])
        ht = model.hvp(theta[t], x[t], y[t], v[t])
        for name, got, want in [("loss", batched["loss"], lt), ("grad", batched["grad"], gt),
                                ("hvp", batched["hvp"], ht), ("lgh loss", batched["lgh"][0], lt),
                                ("lgh grad", batched["lgh"][1], gt),
                                ("lgh hvp", batched["lgh"][2], ht)]:
            np.testing.assert_allclose(to_host(got)[t], want, rtol=1e-11, atol=1e-13,
                                       err_msg=f"task {t}: {name}")


def test_two_task_axes(rng):
    """theta (2, 3, P) and x (2, 3, B, D): every result keeps both task axes."""
    model = models.mlp((2, 5, 1), "tanh")
    theta, x, y, v = _task_batch(model, 6, 4, rng)
    loss, g, hv = model.loss_grad_hvp(*(a.reshape((2, 3) + a.shape[1:]) for a in (theta, x, y, v)))
    assert loss.shape == (2, 3) and g.shape == hv.shape == (2, 3, model.num_params)
    np.testing.assert_allclose(hv.reshape(6, -1)[4], model.hvp(theta[4], x[4], y[4], v[4]),
                               rtol=1e-12)


def test_parameters_are_views_of_theta(rng):
    """Each layer reads its weights as views of the one flat vector, in layout order."""
    model = models.mlp((1, 64, 64, 1))
    assert model.num_params == (1 * 64 + 64) + (64 * 64 + 64) + (64 * 1 + 1)
    theta = rng.standard_normal((3, model.num_params))
    for i, p in enumerate(model.views(theta)):
        for name, arr in p.items():
            off, shape = model.layout[f"{i}.{name}"]
            assert arr.shape == (3,) + shape and np.shares_memory(arr, theta)
            np.testing.assert_array_equal(arr.reshape(3, -1),
                                          theta[:, off:off + int(np.prod(shape))])


def test_predict_and_loss_of_a_known_network(rng):
    """With all weights zero but the last bias b, the sine MLP predicts b everywhere."""
    model = models.mlp((1, 64, 64, 1))
    theta = np.zeros(model.num_params)
    theta[-1] = 0.7
    x, y = rng.uniform(-5, 5, (10, 1)), rng.standard_normal((10, 1))
    np.testing.assert_array_equal(model.predict(theta, x), np.full((10, 1), 0.7))
    assert model.loss(theta, x, y) == pytest.approx(((0.7 - y) ** 2).mean())


# -- bad input -----------------------------------------------------------------------
@pytest.fixture
def sine():
    model = models.mlp((1, 64, 64, 1))
    rng = np.random.default_rng(0)
    return model, model.init(rng), rng.standard_normal((10, 1)), rng.standard_normal((10, 1))


def test_wrong_theta_length(sine):
    model, theta, x, y = sine
    with pytest.raises(ShapeError, match=r"theta has shape \(4352,\); expected \(\.\.\., 4353\)"):
        model.loss_and_grad(theta[:-1], x, y)


def test_wrong_x_shape(sine):
    model, theta, x, y = sine
    with pytest.raises(ShapeError, match=r"x has shape \(10, 2\); expected \('B', 1\)"):
        model.grad(theta, np.ones((10, 2)), y)
    with pytest.raises(ShapeError, match=r"x has shape \(10, 1\); expected \(3, 'B', 1\)"):
        model.grad(np.stack([theta] * 3), x, y)                 # tasks in theta, not in x
    with pytest.raises(ShapeError, match=r"x has shape \(2, 10, 1\); expected \(3, 'B', 1\)"):
        model.grad(np.stack([theta] * 3), np.ones((2, 10, 1)), y)


def test_wrong_y_shape(sine):
    model, theta, x, y = sine
    with pytest.raises(ShapeError, match=r"y has shape \(9, 1\); expected leading shape \(10,\)"):
        model.loss(theta, x, y[:9])


def test_wrong_v_shape(sine):
    model, theta, x, y = sine
    with pytest.raises(ShapeError, match=r"v has shape \(4352,\); expected \(4353,\)"):
        model.hvp(theta, x, y, theta[:-1])
    with pytest.raises(ShapeError, match=r"v has shape \(2, 4353\); expected \(4353,\)"):
        model.hvp(theta, x, y, np.stack([theta] * 2))


def test_shape_errors_are_one_line_user_errors(sine):
    """The CLI prints a UserError as one line; ShapeError is also a ValueError."""
    model, theta, x, y = sine
    with pytest.raises(UserError) as info:
        model.loss(theta[:5], x, y)
    assert isinstance(info.value, ValueError) and "\n" not in str(info.value)
    assert str(info.value).startswith(model.name)


def _with_threads(n, fn):
    from minireptile import parallel
    old = parallel.threads()
    try:
        parallel.set_threads(n)
        return fn()
    finally:
        parallel.set_threads(old)


def test_map_tasks_covers_the_tasks_in_order():
    """parallel.map_tasks: fn(rows) over slices covering range(T), on 2 workers, results
    concatenated in task order (arrays and tuples of arrays); one call when too small."""
    import threading
    from minireptile import parallel
    seen, names = [], set()

    def fn(rows):
        seen.append((rows.start, rows.stop))
        names.add(threading.current_thread().name)
        ids = np.arange(rows.start, rows.stop)
        return ids, np.stack([ids, -ids], axis=1)
    ids, pairs = _with_threads(2, lambda: parallel.map_tasks(fn, 5, parallel.CHUNK_VALUES))
    np.testing.assert_array_equal(ids, np.arange(5))
    np.testing.assert_array_equal(pairs, np.stack([np.arange(5), -np.arange(5)], axis=1))
    assert sorted(seen) == [(i, i + 1) for i in range(5)]        # one chunk per task here
    assert any(name.startswith("minireptile") for name in names)  # run on the worker pool
    seen.clear()
    single = _with_threads(2, lambda: parallel.map_tasks(lambda rows: fn(rows)[0], 5, 1))
    np.testing.assert_array_equal(single, np.arange(5))
    assert seen == [(0, 5)]                                       # too small to cut


def test_worker_threads_give_the_same_numbers(rng):
    """parallel.map_tasks: 4 tasks in chunks on 2 worker threads == one batched call, bit for
    bit (tasks are independent), for gradients and Hessian-vector products of a CNN."""
    from minireptile import parallel
    from minireptile.models import omniglot_cnn
    model = omniglot_cnn(3, input_shape=(9, 9, 1), filters=4)
    theta = np.stack([model.init(rng) for _ in range(4)])
    x, y = rng.normal(size=(4, 300, 9, 9, 1)), rng.integers(0, 3, (4, 300))
    v = rng.normal(size=theta.shape)
    chunks = []

    def tasks(rows):
        chunks.append(rows)
        return model.loss_grad_hvp(theta[rows], x[rows], y[rows], v[rows])
    one = model.loss_grad_hvp(theta, x, y, v)
    two = _with_threads(2, lambda: parallel.map_tasks(tasks, 4, x[0].size))
    assert len(chunks) >= 2                                       # it was cut
    for a, b in zip(one, two):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("T", [4, 5], ids=["4-tasks", "5-tasks"])
@pytest.mark.parametrize("name", ["sine-mlp", "cnn"])
def test_linearize_equals_loss_and_grad_and_hvp(name, T, threads, rng, monkeypatch):
    """linearize's (L, g) == loss_and_grad and its hvp(v) == hvp, bit for bit: one
    linearisation, several products, run (as metabatch runs a rule) inside map_tasks's chunks
    of 4 or 5 tasks (chunks of 2 tasks at most) on 1 or 2 worker threads, against one call
    over all the tasks."""
    from minireptile import parallel
    if name == "sine-mlp":                      # B large enough for map_tasks to cut
        model, classes, B = models.mlp((1, 64, 64, 1)), None, 1200
    else:
        model, classes, B = models.omniglot_cnn(3, input_shape=(9, 9, 1), filters=4), 3, 60
    theta, x, y, v = _task_batch(model, T, B, rng, classes)
    u = rng.standard_normal(theta.shape)
    monkeypatch.setattr(parallel, "CHUNK_VALUES", 2 * x[0].size)
    chunks = []

    def tasks(rows):
        chunks.append(rows)
        loss, g, hvp = model.linearize(theta[rows], x[rows], y[rows])
        return loss, g, hvp(v[rows]), hvp(u[rows])
    got = _with_threads(threads, lambda: parallel.map_tasks(tasks, T, x[0].size))
    assert len(chunks) >= 2
    want = [*model.loss_and_grad(theta, x, y), model.hvp(theta, x, y, v),
            model.hvp(theta, x, y, u)]
    for a, b in zip(got, want):                 # the same tasks: the same bits
        np.testing.assert_array_equal(a, b)


def test_linearize_without_and_with_two_task_axes(xp, rng):
    """linearize on one task (theta (P,)) and on task axes (2, 3): hvp == hvp, on xp."""
    model = models.mlp((2, 5, 1), "tanh")
    theta, x, y, v = _task_batch(model, 6, 4, rng)
    for shape in [(), (2, 3)]:
        args = ([a[0] for a in (theta, x, y, v)] if not shape else
                [a.reshape(shape + a.shape[1:]) for a in (theta, x, y, v)])
        args = [xp.asarray(a) for a in args]
        loss, g, hvp = model.linearize(*args[:3])
        lg = model.loss_and_grad(*args[:3])
        assert loss.shape == shape and g.shape == hvp(args[3]).shape == shape + theta.shape[1:]
        np.testing.assert_allclose(to_host(loss), to_host(lg[0]), rtol=1e-12)
        np.testing.assert_allclose(to_host(g), to_host(lg[1]), rtol=1e-12)
        np.testing.assert_allclose(to_host(hvp(args[3])), to_host(model.hvp(*args)), rtol=1e-12)
    with pytest.raises(ShapeError):
        hvp(xp.asarray(v))
