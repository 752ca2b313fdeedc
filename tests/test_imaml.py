"""iMAML (Rajeswaran et al. 2019) on the exact Hessian-vector products, in float64.

The exact test is a quadratic task family, where phi* and the meta-gradient have closed
forms; then conjugate gradient against SciPy's, the gradcheck rows on a nonlinear MLP and
a conv net, batched tasks against tasks alone, and the configuration's refusals.
"""
import numpy as np
import pytest
from scipy.sparse.linalg import LinearOperator, cg

from minireptile import config, gradcheck, models, optim, presets
from minireptile.errors import UserError
from minireptile.gradcheck.imaml import check_imaml
from minireptile.layers import Linear
from minireptile.losses import MSE
from minireptile.meta import conjugate_gradient, delta_rule, imaml_gradient
from minireptile.metabatch import meta_update
from minireptile.optim import SGD


def test_conjugate_gradient_agrees_with_scipys(rng):
    """Each task of a batch solves its own system; the reported residual is ||b - A x||."""
    mats = []
    for _ in range(3):
        q = rng.standard_normal((12, 12))
        mats.append(q @ q.T + 0.5 * np.eye(12))
    a = np.stack(mats)                                               # (3, 12, 12)
    b = rng.standard_normal((3, 12))
    for steps in (3, 12, 30):
        x, residual = conjugate_gradient(lambda v: np.einsum("tij,tj->ti", a, v), b, steps)
        for t in range(3):
            op = LinearOperator((12, 12), matvec=lambda v, t=t: a[t] @ v, dtype=np.float64)
            ref, _ = cg(op, b[t], x0=np.zeros(12), rtol=0, atol=0, maxiter=steps)
            np.testing.assert_allclose(x[t], ref, rtol=1e-8, atol=1e-10)
            assert residual[t] == pytest.approx(np.linalg.norm(b[t] - a[t] @ x[t]),
                                                rel=1e-6, abs=1e-12)
    np.testing.assert_allclose(x, np.linalg.solve(a, b[..., None])[..., 0], rtol=1e-9)


def test_quadratic_tasks_have_the_closed_form_meta_gradient(rng):
    """A linear model with the squared error: L_train(phi) is quadratic with Hessian H and
    gradient H phi + c, so phi* = (H + lam I)^(-1) (lam theta - c) and
    d/dtheta L_test(phi*) = lam (H + lam I)^(-1) L_test'(phi*) = (I + H/lam)^(-1) L_test'(phi*).
    iMAML-GD converges to phi*, CG (P steps) solves the system exactly, and the closed form
    itself is the derivative of theta -> L_test(phi*(theta)) (central differences)."""
    model = models.Sequential([Linear(3, 2)], MSE(), (3,))
    p, lam = model.num_params, 0.7
    theta = rng.standard_normal(p)
    train = rng.standard_normal((6, 3)), rng.standard_normal((6, 2))
    test = rng.standard_normal((4, 3)), rng.standard_normal((4, 2))
    h = np.stack([model.hvp(theta, *train, e) for e in np.eye(p)])   # constant: quadratic
    c = model.grad(np.zeros(p), *train)

    def phi_star(th):
        return np.linalg.solve(h + lam * np.eye(p), lam * th - c)
    closed = lam * np.linalg.solve(h + lam * np.eye(p), model.grad(phi_star(theta), *test))
    alpha = 1 / (np.linalg.eigvalsh(h)[-1] + lam)
    g, residual, _ = imaml_gradient(model, theta, train, test, alpha, 3000, lam, cg_steps=p)
    np.testing.assert_allclose(g, closed, rtol=1e-10, atol=1e-12)
    assert residual < 1e-10
    u = rng.standard_normal(p)
    fd = (model.loss(phi_star(theta + 1e-5 * u), *test) -
          model.loss(phi_star(theta - 1e-5 * u), *test)) / 2e-5
    assert closed @ u == pytest.approx(fd, rel=1e-8)


@pytest.mark.parametrize("name, make, sample", [
    ("mlp", lambda: models.mlp((1, 16, 16, 1), "tanh"), gradcheck.sine_batch),
    ("conv", lambda: gradcheck.smooth_cnn((9, 9, 1), 3), gradcheck.classes_batch((9, 9, 1), 3))])
def test_gradcheck_rows_pass(rng, name, make, sample):
    """minireptile gradcheck's iMAML rows: phi* reached, CG = direct solve with the full
    Hessian, u.g = central differences of L_test(phi*(theta)), the CG residual reported."""
    rows = check_imaml(name, make(), sample, rng)
    assert len(rows) == 4 and all(r.passed for r in rows), rows


def test_batched_tasks_equal_tasks_alone_and_delta_is_minus_alpha_g(rng):
    model = models.mlp((1, 8, 1), "tanh")
    theta = model.init(rng)
    x = rng.uniform(-5, 5, (3, 10, 1))
    train, test = (x, np.sin(x)), (x[:, ::-1] * 0.9, np.cos(x))
    rule = delta_rule("imaml", imaml={"lam": 2.0, "cg_steps": 4})
    delta, loss = rule(model, np.stack([theta] * 3), [train] * 6 + [test], SGD(0.01))
    for t in range(3):
        g = imaml_gradient(model, theta, (train[0][t], train[1][t]), (test[0][t], test[1][t]),
                           0.01, 6, 2.0, 4)[0]
        np.testing.assert_allclose(delta[t], -0.01 * g, rtol=1e-10, atol=1e-14)
    new, _ = meta_update(rule, model, theta, [train] * 6 + [test], SGD(0.01), 0.5)
    np.testing.assert_allclose(new, theta + 0.5 * delta.mean(axis=0), rtol=1e-12)


def test_imaml_settings_are_checked():
    good = config.TrainConfig(**presets.preset("imaml"))
    assert good.validate() is good and good.imaml()["lam"] == 2.0 * 5
    for change, message in ((dict(sgd=False), "--sgd"), (dict(inner_batch=3), "--inner-batch"),
                            (dict(imaml_lambda=0.0), "--imaml-lambda"),
                            (dict(cg_steps=0), "--cg-steps"),
                            (dict(weight_decay=0.9), "--weight-decay")):
        with pytest.raises(UserError, match=message):
            config.TrainConfig(**{**presets.preset("imaml"), **change}).validate()


@pytest.mark.parametrize("n, k", [(5, 1), (5, 5), (20, 1)])
def test_the_authors_settings_in_our_units_take_their_steps(rng, n, k):
    """--defaults imaml on our summed loss is the authors' code on their mean loss
    (aravindr93/imaml_dev, torch.nn.CrossEntropyLoss): the same proximal gradient step
    (inner_lr 0.1, lam 2), the same CG system ((1 + 1) v + H v / (2 + 10)), and the same
    outer Adam (eps 1e-3 on their gradient), float64."""
    cfg = config.TrainConfig(**presets.preset("imaml", n, k)).validate()
    model = models.omniglot_cnn(n, input_shape=(9, 9, 1), filters=2)
    theta = model.init(rng)
    phi = theta + 0.1 * rng.standard_normal(theta.size)
    x, y = rng.random((n * k, 9, 9, 1)), np.repeat(np.arange(n), k)
    v = rng.standard_normal(theta.size)
    mean_grad = model.grad(phi, x, y) / (n * k)                       # their loss: the mean
    theirs = phi - 0.1 * (mean_grad + 2.0 * (phi - theta))
    ours = phi - cfg.learning_rate * (model.grad(phi, x, y) + cfg.imaml_lambda * (phi - theta))
    np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=1e-15)
    hv = model.hvp(phi, x, y, v)
    theirs = (1 + 1.0) * v + hv / (n * k) / (2.0 + 10.0)
    ours = (1 + cfg.cg_damping) * v + hv / (cfg.imaml_lambda + cfg.cg_lambda_damping)
    np.testing.assert_allclose(ours, theirs, rtol=1e-12)
    g_theirs = rng.standard_normal(theta.size) * 10.0 ** rng.uniform(-6, 0, theta.size)
    delta = -cfg.learning_rate * (n * k * g_theirs)                 # ours: alpha g on the sum
    adam_theirs = optim.Adam(1e-3, beta1=0.9, eps=1e-3).step(theta, g_theirs)
    adam_ours = config.outer_optimizer(cfg).step(theta, -delta)
    np.testing.assert_allclose(adam_ours, adam_theirs, rtol=1e-12, atol=1e-15)


def test_the_authors_inner_loop_is_plain_steps_then_one_pull_back(rng):
    """--imaml-inner authors (their omniglot_implicit_maml.py): k - 1 gradient steps on
    L_train alone, one step on the proximal term, then the damped system at that phi, solved
    by CG as numpy.linalg.solve does with the full Hessian (float64, a tanh MLP)."""
    model = models.mlp([1, 6, 6, 1], activation="tanh")
    theta = model.init(rng)
    train = rng.standard_normal((7, 1)), rng.standard_normal((7, 1))
    test = rng.standard_normal((9, 1)), rng.standard_normal((9, 1))
    alpha, lam, steps, damping, lam_damping = 0.05, 3.0, 4, 1.0, 10.0
    phi = theta
    for _ in range(steps):
        phi = phi - alpha * model.grad(phi, *train)
    phi = phi - alpha * lam * (phi - theta)
    hessian = np.stack([model.hvp(phi, *train, e) for e in np.eye(theta.size)], axis=1)
    a = (1 + damping) * np.eye(theta.size) + hessian / (lam + lam_damping)
    expected = np.linalg.solve(a, model.grad(phi, *test))
    g, residual, _ = imaml_gradient(model, theta, train, test, alpha, steps, lam,
                                    cg_steps=4 * theta.size, damping=damping,
                                    lam_damping=lam_damping, pullback=True)
    np.testing.assert_allclose(g, expected, rtol=1e-9, atol=1e-12)
    assert residual < 1e-9 * np.linalg.norm(expected)
    proximal, _, _ = imaml_gradient(model, theta, train, test, alpha, steps, lam,
                                    cg_steps=4 * theta.size, damping=damping,
                                    lam_damping=lam_damping)
    assert np.linalg.norm(proximal - expected) > 1e-3 * np.linalg.norm(expected)
    cfg = config.TrainConfig(**presets.preset("imaml", 5, 1))
    assert cfg.imaml()["pullback"] and cfg.validate()
