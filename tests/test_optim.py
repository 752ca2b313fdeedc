"""SGD and Adam on flat arrays: the update formulas, and state save / restore / reset."""
import math

import numpy as np
import pytest

from minireptile.backend import to_host
from minireptile.optim import SGD, Adam


def _adam_by_hand(theta, grads, lr, beta1, beta2, eps):
    """TensorFlow's Adam written out with Python floats, element by element.

        m <- b1 m + (1 - b1) g;  v <- b2 v + (1 - b2) g^2;  t <- t + 1
        lr_t = lr sqrt(1 - b2^t) / (1 - b1^t);  theta <- theta - lr_t m / (sqrt(v) + eps)
    """
    theta = [float(a) for a in theta]
    m, v = [0.0] * len(theta), [0.0] * len(theta)
    for t, g in enumerate(grads, start=1):
        lr_t = lr * math.sqrt(1 - beta2 ** t) / (1 - beta1 ** t)
        for i, gi in enumerate(g):
            m[i] = beta1 * m[i] + (1 - beta1) * gi
            v[i] = beta2 * v[i] + (1 - beta2) * gi * gi
            theta[i] -= lr_t * m[i] / (math.sqrt(v[i]) + eps)
    return np.array(theta)


@pytest.mark.parametrize("beta1", [0.0, 0.9])
def test_adam_matches_hand_computed_tf_update(beta1, xp, rng):
    """Three Adam steps == the TF-form update computed by hand (beta1 = 0 is the paper's)."""
    theta0, grads = rng.standard_normal(4), rng.standard_normal((3, 4))
    opt = Adam(lr=0.01, beta1=beta1, beta2=0.99, eps=1e-8)
    theta = xp.asarray(theta0)
    for g in grads:
        theta = opt.step(theta, xp.asarray(g))
    want = _adam_by_hand(theta0, grads, 0.01, beta1, 0.99, 1e-8)
    np.testing.assert_allclose(to_host(theta), want, rtol=1e-13, atol=1e-15)
    assert opt.t == 3


def test_adam_first_step_moves_by_lr_times_sign():
    """On the first step m / sqrt(v) = g / |g|, so every coordinate moves by about lr."""
    theta = Adam(lr=0.1).step(np.zeros(3), np.array([2.0, -0.5, 1e-2]))
    np.testing.assert_allclose(theta, [-0.1, 0.1, -0.1], rtol=1e-4)


def test_adam_task_axis_keeps_one_state_per_task(rng):
    """theta (T, P): one (m, v) per task, each equal to a single-task Adam's."""
    theta0, grads = rng.standard_normal((3, 5)), rng.standard_normal((2, 3, 5))
    opt = Adam(lr=0.02)
    theta = theta0
    for g in grads:
        theta = opt.step(theta, g)
    assert opt.v.shape == (3, 5)
    for t in range(3):
        np.testing.assert_allclose(theta[t], _adam_by_hand(theta0[t], grads[:, t], 0.02, 0.0,
                                                           0.999, 1e-8), rtol=1e-13)


def test_sgd_step(xp, rng):
    theta, g = rng.standard_normal(6), rng.standard_normal(6)
    out = SGD(0.3).step(xp.asarray(theta), xp.asarray(g))
    np.testing.assert_allclose(to_host(out), theta - 0.3 * g, rtol=1e-15)
    assert SGD(0.3).state_dict() == {}


def test_adam_state_save_restore_round_trip(xp, rng, tmp_path):
    """Save after 2 steps (to an npz without pickle), restore in a new Adam, step on:
    the same parameters and state as the optimiser that never stopped."""
    grads = rng.standard_normal((5, 4))
    opt = Adam(lr=0.05, beta1=0.5)
    theta = xp.asarray(rng.standard_normal(4))
    for g in grads[:2]:
        theta = opt.step(theta, xp.asarray(g))
    np.savez(tmp_path / "adam.npz", **opt.state_dict())
    saved_theta = theta
    for g in grads[2:]:
        theta = opt.step(theta, xp.asarray(g))

    restored = Adam(lr=0.05, beta1=0.5)
    with np.load(tmp_path / "adam.npz", allow_pickle=False) as f:
        restored.load_state_dict(dict(f), xp=xp)
    assert restored.t == 2
    other = saved_theta
    for g in grads[2:]:
        other = restored.step(other, xp.asarray(g))
    np.testing.assert_array_equal(to_host(other), to_host(theta))
    for key in ("m", "v"):
        np.testing.assert_array_equal(restored.state_dict()[key], opt.state_dict()[key])


def test_adam_state_before_any_step_round_trips():
    state = Adam(lr=0.1).state_dict()
    assert int(state["t"]) == 0 and state["m"].size == state["v"].size == 0
    opt = Adam(lr=0.1)
    opt.load_state_dict(state)
    assert opt.t == 0 and opt.v is None


def test_adam_reset_forgets_the_state(rng):
    """After reset(), a step is the first step of a fresh optimiser."""
    theta, g = rng.standard_normal(4), rng.standard_normal(4)
    opt = Adam(lr=0.1)
    for _ in range(3):
        opt.step(theta, rng.standard_normal(4))
    opt.reset()
    assert opt.t == 0
    np.testing.assert_array_equal(opt.step(theta, g), Adam(lr=0.1).step(theta, g))


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("beta1", [0.0, 0.9])
def test_adam_in_blocks_matches_by_hand(beta1, workers, rng, monkeypatch):
    """Adam's update run block by block on the worker threads (``parallel.map_blocks``, here
    forced on small arrays) == the update by hand, for T tasks starting from one shared
    state (theta and the moments broadcast from (P,) to (T, P), as evaluation does)."""
    from minireptile import parallel
    monkeypatch.setattr(parallel, "BLOCKS_FROM", 1)
    monkeypatch.setattr(parallel, "BLOCK_VALUES", 3)       # rows cut into blocks of 3
    old = parallel.threads()
    theta0, grads = rng.standard_normal(7), rng.standard_normal((3, 4, 7))
    opt = Adam(lr=0.01, beta1=beta1, beta2=0.99, eps=1e-8)
    theta1 = opt.step(theta0, grads[0, 0])                 # a shared (P,) state first
    try:
        parallel.set_threads(workers)
        theta = np.broadcast_to(theta1, (4, 7))
        for g in grads[1:]:
            theta = opt.step(theta, g)
    finally:
        parallel.set_threads(old)
    for task in range(4):
        want = _adam_by_hand(theta0, [grads[0, 0], grads[1, task], grads[2, task]], 0.01,
                             beta1, 0.99, 1e-8)
        np.testing.assert_allclose(theta[task], want, rtol=1e-12, atol=1e-14)
