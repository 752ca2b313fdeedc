"""The meta core against finite differences and the paper's identities.

float64 throughout; a smooth (tanh) MLP so central differences with h = 1e-5 are exact to
~1e-10. Tasks run batched: theta (T, P), inputs (T, B, 1).
"""
import numpy as np
import pytest

from minireptile import parallel
from minireptile.meta import (adapt, combination_delta, delta_rule, fomaml_delta, inner_steps,
                              linear_schedule, maml_delta, maml_gradient, outer_step,
                              reptile_delta, tile)
from minireptile.metabatch import meta_update, sum_tasks
from minireptile.models import mlp
from minireptile.optim import SGD, Adam

T, B = 3, 5


@pytest.fixture
def model():
    return mlp((1, 8, 8, 1), "tanh")


def batch(rng):
    x = rng.uniform(-5, 5, (T, B, 1))
    return x, 2 * np.sin(x + rng.uniform(0, 6, (T, 1, 1)))


def theta_of(model, rng):
    """T random parameter vectors with non-zero biases."""
    return np.stack([model.init(rng) for _ in range(T)]) + 0.1 * rng.standard_normal(
        (T, model.num_params))


def numeric_gradient(f, theta, h=1e-5):
    """Central differences of f: (T, P) -> (T,), one coordinate of every task at a time."""
    out = np.zeros_like(theta)
    for j in range(theta.shape[-1]):
        e = np.zeros(theta.shape[-1])
        e[j] = h
        out[:, j] = (f(theta + e) - f(theta - e)) / (2 * h)
    return out


@pytest.mark.parametrize("reuse", [True, False], ids=["reuse", "recompute"])
@pytest.mark.parametrize("weight_decay", [1.0, 0.9])
def test_maml_gradient_matches_central_differences(model, rng, weight_decay, reuse):
    """g_MAML = d/dtheta L_test(U^k(theta)) for k = 1..4 (Eqs. 17-21), all tasks at once,
    with and without the paper's weight decay inside the inner steps, each H_i v from the
    inner loop's kept passes or recomputed."""
    alpha, theta, test = 0.1, theta_of(model, rng), batch(rng)
    for k in range(1, 5):
        inner = [batch(rng) for _ in range(k)]

        def meta_loss(theta):                      # (T,): L_test(U^k(theta)) per task
            return model.loss(adapt(model, theta, inner, SGD(alpha), weight_decay), *test)

        g = maml_gradient(model, theta, inner, test, alpha, weight_decay, reuse)
        numeric = numeric_gradient(meta_loss, theta)
        assert np.linalg.norm(g - numeric) < 1e-6 * np.linalg.norm(numeric), k
        first_order = model.grad(adapt(model, theta, inner, SGD(alpha), weight_decay), *test)
        assert np.linalg.norm(g - first_order) > 1e-2 * np.linalg.norm(g)   # H terms matter


@pytest.mark.parametrize("reuse", [True, False], ids=["reuse", "recompute"])
def test_inner_steps_record_each_step(model, rng, reuse):
    """Step i holds phi_{i-1} (before weight decay), L_i and g_i at lambda phi_{i-1}, phi_i,
    and v -> H_i v at lambda phi_{i-1}."""
    theta, batches, lam, alpha = theta_of(model, rng), [batch(rng) for _ in range(3)], 0.8, 0.05
    phi, v = theta, rng.standard_normal(theta.shape)
    for (x, y), step in zip(batches, inner_steps(model, theta, batches, SGD(alpha), lam, reuse)):
        loss, g = model.loss_and_grad(lam * phi, x, y)
        np.testing.assert_array_equal(step.phi_prev, phi)
        np.testing.assert_allclose(step.loss, loss, rtol=1e-14)
        np.testing.assert_allclose(step.g, g, rtol=1e-14)
        np.testing.assert_allclose(step.phi, lam * phi - alpha * g, rtol=1e-14)
        np.testing.assert_allclose(step.hvp(v), model.hvp(lam * phi, x, y, v), rtol=1e-14)
        phi = step.phi


def test_first_order_updates_with_sgd(model, rng):
    """With SGD: Reptile's Delta = -alpha sum_i g_i (Eq. 40 before expanding), FOMAML's
    -alpha g_k, and a combination -alpha sum_i w_i g_i (section 6.2); the all-ones and
    last-only combinations are Reptile and FOMAML."""
    alpha, theta, batches = 0.05, theta_of(model, rng), [batch(rng) for _ in range(4)]
    g = [s.g for s in inner_steps(model, theta, batches, SGD(alpha))]
    reptile = reptile_delta(model, theta, batches, SGD(alpha))[0]
    fomaml = fomaml_delta(model, theta, batches, SGD(alpha))[0]
    np.testing.assert_allclose(reptile, -alpha * sum(g), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(fomaml, -alpha * g[-1], rtol=1e-12, atol=1e-14)
    w = [0.5, -1.0, 0.0, 2.0]
    combo = combination_delta(model, theta, batches, SGD(alpha), w)[0]
    np.testing.assert_allclose(combo, -alpha * sum(wi * gi for wi, gi in zip(w, g)),
                               rtol=1e-9, atol=1e-12)
    for weights, expected in (([1] * 4, reptile), ([0, 0, 0, 1], fomaml)):
        got = delta_rule("combination", weights=weights)(model, theta, batches, SGD(alpha))[0]
        np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12)


def test_fomaml_with_adam_is_adams_last_step(model, rng):
    """The paper's code: FOMAML's update is phi_k - last_backup, Adam's last step."""
    theta, batches = theta_of(model, rng), [batch(rng) for _ in range(3)]
    phi_prev = adapt(model, theta, batches[:-1], reference := Adam(0.01))
    expected = reference.step(phi_prev, model.grad(phi_prev, *batches[-1])) - phi_prev
    np.testing.assert_allclose(fomaml_delta(model, theta, batches, Adam(0.01))[0],
                               expected, rtol=1e-12, atol=1e-15)


def test_maml_update_is_minus_alpha_g_maml(model, rng):
    alpha, theta, batches = 0.1, theta_of(model, rng), [batch(rng) for _ in range(3)]
    delta = maml_delta(model, theta, batches, SGD(alpha))[0]
    np.testing.assert_allclose(delta, -alpha * maml_gradient(model, theta, batches[:-1],
                                                             batches[-1], alpha), rtol=1e-14)
    np.testing.assert_array_equal(delta_rule("maml")(model, theta, batches, SGD(alpha))[0], delta)
    with pytest.raises(ValueError, match="SGD"):
        maml_delta(model, theta, batches, Adam(0.1))


@pytest.mark.parametrize("algo", ["reptile", "fomaml", "maml"])
def test_batched_meta_update_is_the_average_of_tasks_alone(model, rng, algo):
    """Eq. (5): one batched pass == each task alone (Algorithm 1's inner loop), then
    theta + epsilon mean_i Delta_i; with SGD, sequential mode gives the same numbers."""
    theta, epsilon, alpha = model.init(rng), 0.3, 0.05
    batches = [batch(rng) for _ in range(3)]
    rule = delta_rule(algo)
    alone = [rule(model, theta, [(x[i], y[i]) for x, y in batches], SGD(alpha))[0]
             for i in range(T)]
    expected = theta + epsilon * np.mean(alone, axis=0)
    for sequential in (False, True):
        new, loss = meta_update(rule, model, theta, batches, SGD(alpha), epsilon,
                                sequential=sequential)
        np.testing.assert_allclose(new, expected, rtol=1e-12, atol=1e-14)
        assert loss == pytest.approx(model.loss(tile(theta, T), *batches[0]).mean(), rel=1e-12)


def test_sequential_adam_feeds_tasks_through_one_state(model, rng):
    """--sequential: task i starts from the Adam state task i - 1 left (the paper's code).
    The per-task Deltas are what meta_update hands its reduce; theta moves by their mean."""
    theta, batches, reduced = model.init(rng), [batch(rng) for _ in range(2)], []

    def reduce(arrays):                                  # sum_tasks, keeping the per-task rows
        reduced.append(arrays)
        return sum_tasks(arrays)
    new, _ = meta_update(delta_rule("reptile"), model, theta, batches, opt := Adam(0.01), 0.5,
                         sequential=True, reduce=reduce)
    reference, expected = Adam(0.01), []
    for i in range(T):
        expected.append(adapt(model, theta, [(x[i], y[i]) for x, y in batches], reference)
                        - theta)
    assert len(reduced) == 1                             # one reduce per meta-iteration
    np.testing.assert_allclose(reduced[0][0], expected, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(new, theta + 0.5 * np.mean(expected, axis=0), rtol=1e-12,
                               atol=1e-15)
    assert opt.t == reference.t == 2 * T
    np.testing.assert_allclose(opt.v, reference.v, rtol=1e-12)


def test_outer_adam_treats_minus_delta_as_a_gradient(rng):
    theta, delta = rng.normal(size=6), rng.normal(size=6)
    np.testing.assert_allclose(outer_step(theta, delta, 0.5), theta + 0.5 * delta)
    outer, reference = Adam(1.0, beta1=0.9), Adam(0.01, beta1=0.9)
    np.testing.assert_allclose(outer_step(theta, delta, 0.01, outer),
                               reference.step(theta, -delta), rtol=1e-14)


def test_taylor_expansion_k2(model, rng):
    """Eqs. (25)-(27): errors O(alpha^2), so halving alpha divides them by ~4.

    gbar_i, Hbar_i: gradient and Hessian of L_i at theta (Eqs. 11-12).
    """
    theta, (b1, b2) = theta_of(model, rng), (batch(rng), batch(rng))
    g1, g2 = model.grad(theta, *b1), model.grad(theta, *b2)
    H1g2, H2g1 = model.hvp(theta, *b1, g2), model.hvp(theta, *b2, g1)

    def errors(alpha):
        exact = {a: -delta_rule(a)(model, theta, [b1, b2], SGD(alpha))[0] / alpha
                 for a in ("maml", "fomaml", "reptile")}
        taylor = {"maml": g2 - alpha * H2g1 - alpha * H1g2,          # Eq. (25)
                  "fomaml": g2 - alpha * H2g1,                       # Eq. (26)
                  "reptile": g1 + g2 - alpha * H2g1}                 # Eq. (27)
        return {name: np.linalg.norm(exact[name] - taylor[name]) for name in exact}

    alpha = 1e-3
    coarse, fine = errors(alpha), errors(alpha / 2)
    for name in coarse:
        assert coarse[name] < 1e-3 * np.linalg.norm(g2), name
        assert 3.6 < coarse[name] / fine[name] < 4.4, (name, coarse[name] / fine[name])


def test_identities(model, rng):
    """MAML with alpha = 0 or k = 0 is the plain test gradient; with alpha = 0 every
    first-order update is zero."""
    theta, inner, test = theta_of(model, rng), [batch(rng) for _ in range(3)], batch(rng)
    plain = model.grad(theta, *test)
    np.testing.assert_allclose(maml_gradient(model, theta, inner, test, 0.0), plain, rtol=1e-12)
    np.testing.assert_allclose(maml_gradient(model, theta, [], test, 0.1), plain, rtol=1e-12)
    for delta in (reptile_delta, fomaml_delta):
        assert not delta(model, theta, inner + [test], SGD(0.0))[0].any()
    assert linear_schedule(1.0, 0.2, 0, 10) == 1.0
    assert linear_schedule(1.0, 0.2, 5, 10) == pytest.approx(0.6)


def test_bad_algorithm_and_weights_are_refused(model, rng):
    theta, batches = theta_of(model, rng), [batch(rng) for _ in range(2)]
    with pytest.raises(ValueError, match="unknown algorithm"):
        delta_rule("mamI")
    with pytest.raises(ValueError, match="one weight per mini-batch"):
        combination_delta(model, theta, batches, SGD(0.1), [1.0])
    with pytest.raises(ValueError, match="one weight per mini-batch"):
        delta_rule("combination", weights=[1.0])(model, theta, batches, SGD(0.1))
    with pytest.raises(ValueError, match="one weight per mini-batch"):
        delta_rule("combination")(model, theta, batches, SGD(0.1))       # no weights at all


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("n", [4, 5], ids=["4-tasks", "5-tasks"])
@pytest.mark.parametrize("name", ["sine-mlp", "cnn"])
def test_maml_reusing_the_inner_passes_equals_recomputing_them(name, n, threads):
    """Exact MAML with each H_i v from the inner loop's kept passes == with the passes
    recomputed at every product (float64, 1e-12), on the sine MLP 1-64-64-1 and a reduced
    Omniglot CNN, n = 4 or 5 tasks cut by map_tasks into chunks over 1 or 2 worker threads,
    through meta_update as training calls it, with weight decay."""
    from minireptile.models import omniglot_cnn
    rng = np.random.default_rng(5)
    if name == "sine-mlp":                      # B large enough for map_tasks to cut
        model, b = mlp((1, 64, 64, 1)), 1200

        def draw():
            x = rng.uniform(-5, 5, (n, b, 1))
            return x, rng.uniform(0.1, 5, (n, 1, 1)) * np.sin(x + rng.uniform(0, 6, (n, 1, 1)))
    else:
        model, b = omniglot_cnn(3, input_shape=(9, 9, 1), filters=4), 60

        def draw():
            return rng.random((n, b, 9, 9, 1)), rng.integers(0, 3, (n, b))
    theta = model.init(rng) + 0.1 * rng.standard_normal(model.num_params)
    batches = [draw() for _ in range(4)]
    old = parallel.threads()
    try:
        parallel.set_threads(threads)
        got, want = [meta_update(delta_rule("maml", weight_decay=0.99, reuse=reuse), model,
                                 theta, batches, SGD(0.02), 1.0)[0] - theta
                     for reuse in (True, False)]
    finally:
        parallel.set_threads(old)
    assert np.linalg.norm(got - want) < 1e-12 * np.linalg.norm(want)


@pytest.mark.parametrize("algo", ["reptile", "fomaml"])
def test_meta_update_on_two_worker_threads_equals_one_call(algo):
    """metabatch.meta_update with the meta-batch cut into chunks of tasks on 2 worker threads
    == the whole meta-batch in one call, bit for bit: the new theta, the loss and the merged
    inner Adam state (t, m, v), over two meta-iterations (the second from a merged state)."""
    from minireptile.models import omniglot_cnn
    rng = np.random.default_rng(7)
    model, n = omniglot_cnn(3, input_shape=(9, 9, 1), filters=4), 4
    theta0 = model.init(rng)
    batches = [(rng.random((n, 60, 9, 9, 1)), rng.integers(0, 3, (n, 60))) for _ in range(3)]
    results = {}
    for threads in (1, 2):
        calls, rule = [], delta_rule(algo)

        def spy(model, theta, batches, optimizer):            # the tasks of each call
            calls.append(theta.shape[0])
            return rule(model, theta, batches, optimizer)
        old, theta, opt = parallel.threads(), theta0, Adam(0.01)
        try:
            parallel.set_threads(threads)
            losses = []
            for _ in range(2):
                theta, loss = meta_update(spy, model, theta, batches, opt, 0.5)
                losses.append(loss)
        finally:
            parallel.set_threads(old)
        results[threads] = (calls, theta, losses, opt)
    assert results[1][0] == [n, n] and results[2][0] == [n // 2] * 4     # cut on 2 threads
    (_, theta1, loss1, opt1), (_, theta2, loss2, opt2) = results[1], results[2]
    np.testing.assert_array_equal(theta1, theta2)
    np.testing.assert_array_equal(loss1, loss2)
    assert opt1.t == opt2.t == 2 * n * 3
    np.testing.assert_array_equal(opt1.m, opt2.m)
    np.testing.assert_array_equal(opt1.v, opt2.v)
