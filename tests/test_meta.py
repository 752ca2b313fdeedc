"""Reptile, FOMAML and exact MAML against finite differences and the paper's identities.

float64 throughout; a smooth (tanh) MLP so central differences with h = 1e-5 are exact to
~1e-10. Tasks run batched: theta (T, P), inputs (T, B, 1).
"""
import numpy as np
import pytest

from minireptile.meta import (combination_gradient, fomaml_gradient, inner_loop,
                              linear_schedule, maml_gradient, meta_gradient, outer_step,
                              reptile_update, tile)
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


def test_maml_gradient_matches_central_differences(model, rng):
    """g_MAML = d/dtheta L_test(U^k(theta)) for k = 1..4 (Eqs. 17-21), all tasks at once."""
    alpha, h = 0.1, 1e-5
    theta, test = theta_of(model, rng), batch(rng)
    for k in range(1, 5):
        inner = [batch(rng) for _ in range(k)]

        def meta_loss(theta):                      # (T,): L_test(U^k(theta)) per task
            return model.loss(inner_loop(model, theta, inner, SGD(alpha)), *test)

        g = maml_gradient(model, theta, inner, test, alpha)
        numeric = np.zeros_like(theta)
        for j in range(model.num_params):          # column j of every task at once
            e = np.zeros(model.num_params)
            e[j] = h
            numeric[:, j] = (meta_loss(theta + e) - meta_loss(theta - e)) / (2 * h)
        assert np.linalg.norm(g - numeric) < 1e-6 * np.linalg.norm(numeric), k
        first_order = maml_gradient(model, theta, inner, test, alpha, first_order=True)
        assert np.linalg.norm(g - first_order) > 1e-2 * np.linalg.norm(g)   # H terms matter


@pytest.mark.parametrize("make_optimizer", [lambda: SGD(0.05), lambda: Adam(0.01)])
def test_fomaml_gradient_is_last_inner_gradient(model, rng, make_optimizer):
    theta, batches = theta_of(model, rng), [batch(rng) for _ in range(4)]
    _, grads = inner_loop(model, theta, batches, make_optimizer(), keep_grads=True)
    g = fomaml_gradient(model, theta, batches, make_optimizer())
    np.testing.assert_allclose(g, grads[-1], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(combination_gradient(grads, [0, 0, 0, 1]), g, rtol=1e-12)


def test_reptile_with_sgd_is_sum_of_inner_gradients(model, rng):
    """(theta - phi) / alpha = g_1 + ... + g_k (Eq. 40 before expanding)."""
    alpha, theta, batches = 0.05, theta_of(model, rng), [batch(rng) for _ in range(4)]
    phi, grads = inner_loop(model, theta, batches, SGD(alpha), keep_grads=True)
    np.testing.assert_allclose((theta - phi) / alpha, combination_gradient(grads, [1] * 4),
                               rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("make_optimizer", [lambda: SGD(0.05), lambda: Adam(0.01)])
def test_batched_reptile_is_average_of_serial_tasks(model, rng, make_optimizer):
    """Eq. (5) in one batched pass == Algorithm 1's inner loop run on each task alone."""
    theta, epsilon = model.init(rng), 0.3
    batches = [batch(rng) for _ in range(3)]
    phis = inner_loop(model, tile(theta, T), batches, make_optimizer())
    serial = [inner_loop(model, theta, [(x[i], y[i]) for x, y in batches], make_optimizer())
              for i in range(T)]
    expected = theta + epsilon * np.mean([phi - theta for phi in serial], axis=0)
    np.testing.assert_allclose(reptile_update(theta, phis, epsilon), expected, rtol=1e-12)
    g = meta_gradient("reptile", model, theta, batches, None, make_optimizer())
    np.testing.assert_allclose(outer_step(theta, g, epsilon), expected, rtol=1e-12)


def test_taylor_expansion_k2(model, rng):
    """Eqs. (25)-(27): errors O(alpha^2), so halving alpha divides them by ~4.

    gbar_i, Hbar_i: gradient and Hessian of L_i at theta (Eqs. 11-12).
    """
    theta, (b1, b2) = theta_of(model, rng), (batch(rng), batch(rng))
    g1, g2 = model.grad(theta, *b1), model.grad(theta, *b2)
    H1g2, H2g1 = model.hvp(theta, *b1, g2), model.hvp(theta, *b2, g1)

    def errors(alpha):
        exact = {"maml": maml_gradient(model, theta, [b1], b2, alpha),
                 "fomaml": fomaml_gradient(model, theta, [b1, b2], SGD(alpha)),
                 "reptile": (theta - inner_loop(model, theta, [b1, b2], SGD(alpha))) / alpha}
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
    """MAML with alpha = 0 or k = 0 is the plain test gradient; MAML's first-order option
    is FOMAML with the test batch as its separate tail."""
    theta, inner, test = theta_of(model, rng), [batch(rng) for _ in range(3)], batch(rng)
    plain = model.grad(theta, *test)
    np.testing.assert_allclose(maml_gradient(model, theta, inner, test, 0.0), plain, rtol=1e-12)
    np.testing.assert_allclose(fomaml_gradient(model, theta, inner + [test], SGD(0.0)), plain,
                               rtol=1e-12)
    np.testing.assert_allclose(maml_gradient(model, theta, [], test, 0.1), plain, rtol=1e-12)
    np.testing.assert_allclose(maml_gradient(model, theta, inner, test, 0.1, first_order=True),
                               fomaml_gradient(model, theta, inner + [test], SGD(0.1)),
                               rtol=1e-12)
    shared = theta[0]
    np.testing.assert_allclose(
        meta_gradient("maml", model, shared, inner, test, SGD(0.1)),
        maml_gradient(model, tile(shared, T), inner, test, 0.1).mean(axis=0), rtol=1e-12)
    assert linear_schedule(1.0, 0.2, 0, 10) == 1.0
    assert linear_schedule(1.0, 0.2, 5, 10) == pytest.approx(0.6)
