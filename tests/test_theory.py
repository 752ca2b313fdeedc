"""Section 5 tools against known answers.

Quadratic task losses, L(phi) = 1/2 (phi - c)^T A (phi - c) with (c, A) drawn per mini-batch,
give every quantity of section 5.1 in closed form: each expectation is a finite sum over the
tasks and over all 2^k sequences of their two mini-batches, computed here with explicit
matrices. Each estimator must match it exactly where it is deterministic and within its
reported standard error where it samples. Hessian spectra: ``eigsh`` on the exact
Hessian-vector product against ``numpy.linalg.eigvalsh`` of the full Hessian of a small MLP.
float64 throughout.
"""
import itertools
import json

import numpy as np
import pytest

from minireptile import checkpoint
from minireptile.cli import main
from minireptile.meta import adapt, delta_rule, maml_gradient
from minireptile.models import mlp
from minireptile.optim import SGD
from minireptile.theory import (Problem, coefficients, extreme_eigenvalues, hessian_operator,
                                jacobian_operator, predicted)
from minireptile.theory.coefficients import ALGOS, estimate, fit, mean_and_se, sample_terms
from minireptile.theory.manifold import manifold, measure, schedule
from minireptile.theory.spectrum import singular_values

D = 3                                       # dimension of the quadratic tasks' theta


class Quadratic:
    """L(phi; x, y) = mean_b 1/2 (phi - c_b)^T A_b (phi - c_b): x holds c_b (T, B, D), y A_b
    (T, B, D, D). The ``models`` interface: theta (T, P) or (P,) with matching leading axes."""
    num_params = D

    def loss(self, theta, x, y):
        r = theta[..., None, :] - x                                    # (..., B, D)
        return 0.5 * np.einsum("...bi,...bij,...bj->...b", r, y, r).mean(axis=-1)

    def grad(self, theta, x, y):
        return np.einsum("...bij,...bj->...i", y, theta[..., None, :] - x) / x.shape[-2]

    def loss_and_grad(self, theta, x, y):
        return self.loss(theta, x, y), self.grad(theta, x, y)

    def hvp(self, theta, x, y, v):
        return np.einsum("...bij,...j->...i", y, v) / x.shape[-2]

    def linearize(self, theta, x, y):
        return self.loss(theta, x, y), self.grad(theta, x, y), lambda v: self.hvp(theta, x, y, v)


def quadratic_tasks(rng, tasks, same_batches=False):
    """(c (M, 2, D), A (M, 2, D, D)): M tasks of two equally likely mini-batches each;
    A symmetric positive definite with eigenvalues in [0.5, 3]."""
    c = rng.normal(size=(tasks, 2, D))
    q = np.linalg.qr(rng.normal(size=(tasks, 2, D, D)))[0]
    a = q @ (rng.uniform(0.5, 3, (tasks, 2, D))[..., None] * np.swapaxes(q, -1, -2))
    if same_batches:
        c, a = c[:, :1].repeat(2, axis=1), a[:, :1].repeat(2, axis=1)
    return c, a


def problem_of(c, a):
    """A ``Problem`` drawing tasks uniformly and each mini-batch uniformly from the two."""
    def draw(rng, n, k):
        t, b = rng.integers(len(c), size=n), rng.integers(2, size=(n, k))
        batches = [(c[t, b[:, i]][:, None], a[t, b[:, i]][:, None]) for i in range(k)]
        return batches, (c[t], a[t])
    return Problem("quadratic", Quadratic(), draw, 0.1)


def closed_forms(c, a, theta, alphas, ks):
    """Every expectation of section 5.1 on the quadratic tasks, by exhaustive enumeration."""
    eye, m = np.eye(D), len(c)
    g = np.einsum("tbij,tbj->tbi", a, theta - c)                        # gbar per mini-batch
    out = {"AvgGrad": g.mean(axis=(0, 1)),
           "AvgGradInner": np.einsum("tuij,tbj->i", a, g) / (4 * m)}     # E[H_2 gbar_1]
    for alpha, k in itertools.product(alphas, ks):
        sums = dict.fromkeys(ALGOS, 0)
        for t, seq in itertools.product(range(m), itertools.product(range(2), repeat=k)):
            phi, jac = theta.copy(), eye
            for i in seq[:-1]:
                phi = phi - alpha * a[t, i] @ (phi - c[t, i])           # phi_i, Eq. (10)
                jac = jac @ (eye - alpha * a[t, i])                     # prod (I - alpha H_i)
            g_k = a[t, seq[-1]] @ (phi - c[t, seq[-1]])
            phi_k = phi - alpha * g_k
            sums["fomaml"] = sums["fomaml"] + g_k
            sums["maml"] = sums["maml"] + jac @ g_k
            sums["reptile"] = sums["reptile"] + (theta - phi_k) / alpha
        for algo in ALGOS:
            out[algo, k, alpha] = sums[algo] / (m * 2 ** k)
    return out


ALPHAS, KS = (0.05, 0.2), (2, 3, 4)


def test_estimates_are_exact_when_nothing_is_random(rng):
    """One task whose mini-batches are all the same: every sample is the closed form itself,
    and the Taylor expansion is exact for FOMAML and Reptile at k = 2 on quadratics
    (g_2 = gbar_2 - alpha H_2 gbar_1 with constant H, Eqs. 26-27)."""
    c, a = quadratic_tasks(rng, 1, same_batches=True)
    problem, theta = problem_of(c, a), rng.normal(size=D)
    means = estimate(problem.model, theta, problem.draw, rng, ALPHAS, KS, 8, 4, 3)
    exact = closed_forms(c, a, theta, ALPHAS, KS)
    for name, value in exact.items():
        np.testing.assert_allclose(means[name], np.broadcast_to(value, (4, D)), rtol=1e-12,
                                   atol=1e-12, err_msg=str(name))
    rows = coefficients(problem, theta, rng, ALPHAS, KS, tasks=8, groups=4, chunk=3)["rows"]
    for r in rows:
        want = fit(exact[r["algo"], r["k"], r["alpha"]], exact["AvgGrad"],
                   exact["AvgGradInner"])
        np.testing.assert_allclose([r["c1"], r["c2"], r["residual"]], want, atol=1e-10)
        assert r["c1_se"] < 1e-12 and r["c2_se"] < 1e-12
        if r["k"] == 2 and r["algo"] != "maml":
            np.testing.assert_allclose([r["c1"], r["c2"]], predicted("fomaml" if r["algo"] ==
                                       "fomaml" else "reptile", 2, r["alpha"]), atol=1e-10)
            assert r["residual"] < 1e-10


def test_sampled_estimates_match_closed_forms_within_their_standard_errors():
    """Three tasks of two different mini-batches each: every group-mean estimate (AvgGrad,
    AvgGradInner, each E[g]) and every fitted coefficient lies within 4.5 of its reported
    standard errors from the closed form, while AvgGradInner stands far from the same-batch
    E[H_1 gbar_1] that a pairing bug would estimate."""
    rng = np.random.default_rng(7)
    c, a = quadratic_tasks(rng, 3)
    problem, theta = problem_of(c, a), rng.normal(size=D)
    means = estimate(problem.model, theta, problem.draw, rng, ALPHAS, KS, 16000, 40, 2000)
    exact = closed_forms(c, a, theta, ALPHAS, KS)
    for name, value in exact.items():
        mean, se = mean_and_se(means[name])
        assert np.all(np.abs(mean - value) < 4.5 * se), (name, mean, value, se)
    g = np.einsum("tbij,tbj->tbi", a, theta - c)
    same = np.einsum("tbij,tbj->i", a, g) / (2 * len(c))                 # E[H_1 gbar_1]
    mean, se = mean_and_se(means["AvgGradInner"])
    assert np.max(np.abs(mean - same) / se) > 10              # far outside 4.5
    rows = coefficients(problem, theta, np.random.default_rng(8), ALPHAS, KS, tasks=16000,
                        groups=40, chunk=2000)["rows"]
    for r in rows:
        c1, c2, _ = fit(exact[r["algo"], r["k"], r["alpha"]], exact["AvgGrad"],
                        exact["AvgGradInner"])
        assert abs(r["c1"] - c1) < 4.5 * r["c1_se"] and abs(r["c2"] - c2) < 4.5 * r["c2_se"], r


def test_meta_gradients_are_those_of_the_delta_rules(rng):
    """g_algo = -Delta / alpha of meta.delta_rule(algo) on a real network (the prefix runs for
    Reptile and FOMAML, and MAML's split of the k mini-batches into k - 1 inner and 1 test)."""
    model, alpha = mlp((1, 8, 8, 1), "tanh"), 0.05
    theta = model.init(rng)
    x = rng.uniform(-5, 5, (4, 2, 5, 1))
    batches = [(x[i], np.sin(x[i] + i)) for i in range(4)]
    terms = sample_terms(model, theta, batches, [alpha], [2, 3, 4], control=False)
    thetas = np.broadcast_to(theta, (2, theta.size))
    for algo, k in itertools.product(ALGOS, [2, 3, 4]):
        delta = delta_rule(algo)(model, thetas, batches[:k], SGD(alpha))[0]
        np.testing.assert_allclose(terms[algo, k, alpha], -delta / alpha, rtol=1e-10,
                                   atol=1e-12, err_msg=f"{algo} k={k}")


def test_control_variates_leave_only_terms_of_order_alpha(rng):
    """With the control variates, each task's g_FOMAML and g_MAML minus its AvgGrad sample, and
    g_Reptile minus k times it, are O(alpha) (the order-1 mini-batch noise is gone): ten times
    smaller alpha, ten times smaller difference. Without them, the difference stays O(1)."""
    model = mlp((1, 8, 8, 1), "tanh")
    theta = model.init(rng)
    x = rng.uniform(-5, 5, (4, 3, 5, 1))
    batches = [(x[i], np.sin(x[i] + i)) for i in range(4)]

    def spread(alpha, control):
        terms = sample_terms(model, theta, batches, [alpha], [2, 3], control)   # K = 4
        return np.array([np.linalg.norm(terms[algo, k, alpha] - predicted(algo, k, alpha)[0]
                                        * terms["AvgGrad"]) for algo in ALGOS for k in (2, 3)])
    ratio = spread(1e-4, True) / spread(1e-3, True)
    np.testing.assert_allclose(ratio, 0.1, rtol=0.05)
    assert np.all(spread(1e-4, False) / spread(1e-3, False) > 0.5)


def full_hessian(model, theta, x, y):
    """The P x P Hessian from P Hessian-vector products, one per unit vector, in one pass."""
    p = theta.size
    h = model.hvp(np.broadcast_to(theta, (p, p)), np.broadcast_to(x, (p,) + x.shape),
                  np.broadcast_to(y, (p,) + y.shape), np.eye(p))
    return (h + h.T) / 2


def test_eigsh_on_hvp_agrees_with_eigvalsh_of_the_full_hessian(rng):
    model = mlp((1, 8, 8, 1), "tanh")                                   # P = 97
    theta = model.init(rng) + 0.3 * rng.normal(size=model.num_params)
    x = rng.uniform(-5, 5, (20, 1))
    y = 2 * np.sin(x + 1)
    exact = np.linalg.eigvalsh(full_hessian(model, theta, x, y))
    bottom, top, calls = extreme_eigenvalues(hessian_operator(model, theta, x, y), 3, rng,
                                             tol=1e-10)
    scale = np.abs(exact).max()
    np.testing.assert_allclose(bottom, exact[:3], atol=1e-10 * scale)
    np.testing.assert_allclose(top, exact[::-1][:3], atol=1e-10 * scale)
    assert exact[0] < 0 < exact[-1] and calls < model.num_params


def test_quadratic_hessian_spectrum_is_its_matrix_spectrum(rng):
    """A task loss mean_b 1/2 (theta - c_b)^T A_b (theta - c_b) has Hessian mean_b A_b."""
    q = np.linalg.qr(rng.normal(size=(4, 40, 40)))[0]
    a = q @ (rng.uniform(-1, 3, (4, 40))[..., None] * np.swapaxes(q, -1, -2))   # (4, 40, 40)
    op = hessian_operator(Quadratic(), rng.normal(size=40), rng.normal(size=(4, 40)), a)
    bottom, top, _ = extreme_eigenvalues(op, 3, rng, tol=1e-12)
    exact = np.linalg.eigvalsh(a.mean(axis=0))
    np.testing.assert_allclose(np.concatenate([bottom, top]),
                               np.concatenate([exact[:3], exact[::-1][:3]]), rtol=1e-10)


def test_jacobian_operator_is_the_inner_loops_jacobian(rng):
    """J g = g_MAML for the test gradient g (Eq. 21), and J^T v is the derivative of phi_k
    along v (central differences): the product is applied in the right order."""
    model, alpha = mlp((1, 8, 8, 1), "tanh"), 0.1
    theta = model.init(rng) + 0.3 * rng.normal(size=model.num_params)
    x = rng.uniform(-5, 5, (4, 6, 1))
    batches = [(x[i], np.sin(x[i]) * (1 + i)) for i in range(3)]
    test = (x[3], np.cos(x[3]))
    j = jacobian_operator(model, theta, batches, alpha)
    g_test = model.grad(adapt(model, theta, batches, SGD(alpha)), *test)
    np.testing.assert_allclose(j.matvec(g_test), maml_gradient(model, theta, batches, test,
                                                                 alpha), rtol=1e-10)
    v, h = rng.normal(size=theta.size), 1e-5
    numeric = (adapt(model, theta + h * v, batches, SGD(alpha))
               - adapt(model, theta - h * v, batches, SGD(alpha))) / (2 * h)
    assert np.linalg.norm(j.rmatvec(v) - numeric) < 1e-7 * np.linalg.norm(numeric)
    exact = np.linalg.svd(np.stack([j.matvec(e) for e in np.eye(theta.size)], axis=1),
                          compute_uv=False)                              # descending
    bottom, top, _ = singular_values(j, 3, rng, tol=1e-12)
    np.testing.assert_allclose(top, exact[:3], rtol=1e-9)
    np.testing.assert_allclose(bottom, exact[::-1][:3], atol=1e-6 * exact[0])


def test_distance_to_a_point_solution_is_exact(rng):
    """A quadratic task's solution set is the one point c: SGD converges to it, and
    E[1/2 D^2] (Eq. 42) is mean 1/2 ||theta - c_tau||^2."""
    c, a = quadratic_tasks(rng, 4, same_batches=True)
    theta = rng.normal(size=D)
    fixed = ([(c[:, :1], a[:, :1])], (c[:, :1], a[:, :1]))
    m = measure(Quadratic(), theta, fixed, 0.1, 400, 0.3)
    np.testing.assert_allclose(m["half_sq_distance"],
                               0.5 * np.mean(np.sum((theta - c[:, 0]) ** 2, axis=-1)),
                               rtol=1e-10)
    assert m["loss_solution"] < 1e-20 < m["loss_adapted"] < m["loss"]


def test_reptile_with_exact_projections_reaches_the_minimum_of_eq_42(rng):
    """With A = I and alpha = 1 one inner step lands on W_tau = {c_tau}, so Reptile is SGD on
    E[1/2 D^2] (Eqs. 45-47). On a meta-batch of all five tasks its first step (epsilon = 1)
    lands on the mean of the c_tau, the minimiser, and stays there: E[1/2 D^2] goes from
    mean 1/2 ||c_tau||^2 at theta = 0 to mean 1/2 ||c_tau - mean c||^2 exactly."""
    c = np.repeat(rng.normal(size=(5, 1, D)) + 3, 2, axis=1)
    a = np.broadcast_to(np.eye(D), (5, 2, D, D))

    def draw(rng, n, k):                                 # all five tasks, in order
        return [(c[:n, :1], a[:n, :1])] * k, (c[:n, :1], a[:n, :1])
    report = manifold(Problem("quadratic", Quadratic(), draw, 1.0), np.zeros(D), rng, 50, 1,
                      1.0, tasks=5, steps=1, lr=1.0, points=4, meta_batch=5)
    assert report["iterations"] == schedule(50, 4) == [0, 1, 4, 14, 50]
    start = 0.5 * np.mean(np.sum(c[:, 0] ** 2, axis=-1))
    best = 0.5 * np.mean(np.sum((c[:, 0] - c[:, 0].mean(axis=0)) ** 2, axis=-1))
    for label in ("reptile", "joint"):
        half_sq = [r["half_sq_distance"] for r in report["runs"][label]]
        np.testing.assert_allclose(half_sq, [start] + [best] * 4, rtol=1e-12)


def test_cli_coefficients_on_sine_writes_json_and_figure(tmp_path, capsys):
    out, fig = tmp_path / "c.json", tmp_path / "c.png"
    assert main(["theory", "coefficients", "--tasks", "4", "--groups", "2", "--max-k", "3",
                 "--alphas", "1e-3", "--meta-iters", "3", "--checkpoint", str(tmp_path / "ck"),
                 "--json", str(out), "--plot", str(fig), "--threads", "1"]) == 0
    report = json.loads(out.read_text())["report"]
    assert set(report) == {"random", "trained"}
    assert {(r["algo"], r["k"]) for r in report["trained"]["rows"]} == set(
        itertools.product(ALGOS, [2, 3]))
    assert checkpoint.exists(str(tmp_path / "ck"))
    printed = capsys.readouterr().out
    assert "c2 / alpha" in printed and "MAML" in printed
    pytest.importorskip("matplotlib")
    assert fig.read_bytes()[:4] == b"\x89PNG"


def test_cli_omniglot_coefficients_from_a_checkpoint(tmp_path):
    """The Omniglot CNN (5-way, its P from the checkpoint's configuration) end to end."""
    folder, out = str(tmp_path / "ck"), tmp_path / "o.json"
    theta = np.random.default_rng(0).normal(0, 0.05, 111936 + 257 * 5)
    checkpoint.save(folder, theta, {}, np.random.default_rng(0), 1,
                    {"dataset": "omniglot", "classes": 5, "train_shots": 10,
                     "inner_batch": 10})                  # as a train checkpoint names them
    assert main(["theory", "coefficients", "--model", "omniglot", "--checkpoint", folder,
                 "--tasks", "4", "--groups", "2", "--max-k", "2", "--alphas", "1e-4",
                 "--json", str(out), "--plot", str(tmp_path / "o.png"), "--threads", "1"]) == 0
    rows = json.loads(out.read_text())["report"]["trained"]["rows"]
    assert [(r["algo"], r["k"]) for r in rows] == [("fomaml", 2), ("maml", 2), ("reptile", 2)]
    assert all(np.isfinite(r["c2"]) for r in rows)


@pytest.mark.parametrize("argv, message", [
    (["coefficients", "--model", "omniglot"], "measures a meta-trained"),
    (["coefficients", "--tasks", "3", "--groups", "2"], "too few"),
    (["spectrum", "--alphas", "x"], "--alphas"),
    (["manifold", "--checkpoint", "somewhere"], "does not apply"),
    (["spectrum", "--alpha", "-1"], "positive"),
    (["coefficients", "--max-k", "1"], "--max-k"),
    (["spectrum", "--data", "x.h5"], "--model omniglot"),
])
def test_cli_bad_input_is_one_line_and_exit_2(argv, message, capsys):
    assert main(["theory"] + argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_cli_checkpoint_of_another_model_is_refused(tmp_path, capsys):
    folder = str(tmp_path / "ck")
    checkpoint.save(folder, np.zeros(10), {}, np.random.default_rng(0), 1, {})
    assert main(["theory", "spectrum", "--checkpoint", folder]) == 2
    assert "10 parameters" in capsys.readouterr().err
