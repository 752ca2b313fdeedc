"""The sine tasks of section 4, a short meta-training run, and the ``sine`` command."""
import json

import numpy as np
import pytest

from minireptile import backend, sine
from minireptile.cli import main
from minireptile.models import mlp
from minireptile.sine import SineConfig, adaptation_losses, meta_train


@pytest.fixture(autouse=True)
def float64():
    backend.set_backend("cpu", "float64")
    yield
    backend.set_backend("cpu", "float32")


def test_sample_follows_section_4():
    tasks = sine.sample(backend.make_rng(0), 1000)
    assert tasks.train[0].shape == tasks.train[1].shape == (1000, 10, 1)
    assert tasks.test[0].shape == (1000, 50, 1)
    assert 0.1 <= tasks.amplitude.min() and tasks.amplitude.max() <= 5.0
    assert 0 <= tasks.phase.min() and tasks.phase.max() <= 2 * np.pi
    assert np.abs(tasks.train[0]).max() <= 5
    np.testing.assert_allclose(tasks.test[0][3, :, 0], np.linspace(-5, 5, 50))
    np.testing.assert_allclose(tasks.test[1][7], tasks.amplitude[7] * np.sin(
        tasks.test[0][7] + tasks.phase[7]))


@pytest.mark.parametrize("algo, meta_step, outer", [("reptile", 1.0, "sgd"),
                                                    ("maml", 3e-3, "adam")])
def test_meta_training_beats_random_init(algo, meta_step, outer):
    """After a short seeded run the 32-step loss on held-out tasks is far below a random
    init's (the paper's Figure 1 in numbers)."""
    rng, model = backend.make_rng(0), mlp((1, 32, 32, 1), "tanh")
    theta0 = model.init(rng)
    cfg = SineConfig(algo, meta_iters=300, inner_iters=5, inner_lr=0.02, meta_step=meta_step,
                     meta_step_final=0.0, outer=outer, meta_batch=10).resolved()
    theta = meta_train(model, theta0, cfg)
    held_out = sine.sample(backend.make_rng(1), 100)
    meta = adaptation_losses(model, theta, held_out, 0.02)[0]
    random = adaptation_losses(model, theta0, held_out, 0.02)[0]
    assert meta[32] < 0.6 * random[32], (meta, random)


def test_command_writes_table(tmp_path, capsys):
    """sine-ALGO.json holds the table; theta-ALGO.npy the trained initialisation, whose
    adaptation on the command's held-out tasks gives the table's numbers."""
    out = tmp_path / "run"
    flags = ["--algo", "fomaml", "--meta-iters", "3", "--inner-iters", "2", "--eval-tasks", "4",
             "--eval-iters", "4"]
    assert main(["sine", *flags, "--out", str(out), "--dtype", "float64"]) == 0
    printed = capsys.readouterr().out
    assert "s=4" in printed and "random" in printed
    result = json.loads((out / "sine-fomaml.json").read_text())
    assert set(result["losses"]) == {"fomaml", "random"}
    assert set(result["losses"]["random"]) == {"0", "1", "2", "4"}
    assert not list(out.glob("*.tmp"))
    theta = np.load(out / "theta-fomaml.npy")
    cfg = SineConfig("fomaml", meta_iters=3, inner_iters=2, eval_tasks=4,
                     eval_iters=4).resolved()
    model, theta0, held_out = sine.initial(cfg)
    assert theta.shape == theta0.shape and not np.array_equal(theta, theta0)
    losses = adaptation_losses(model, theta, held_out, cfg.inner_lr, (0, 1, 2, 4))[0]
    for s, loss in losses.items():
        assert result["losses"]["fomaml"][str(s)] == pytest.approx(loss, rel=1e-12)


def test_command_writes_under_runs_sine_by_default(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["sine", "--meta-iters", "2", "--inner-iters", "1", "--eval-tasks", "2",
                 "--eval-iters", "1"]) == 0
    assert (tmp_path / "runs" / "sine" / "sine-reptile.json").exists()
    assert (tmp_path / "runs" / "sine" / "theta-reptile.npy").exists()


@pytest.mark.parametrize("flags, message", [
    (["--meta-iters", "-1"], "--meta-iters must be at least 1"),
    (["--inner-lr", "0"], "--inner-lr must be a positive number"),
    (["--meta-step", "nan"], "--meta-step must be a non-negative number"),
    (["--meta-step", "-0.5"], "--meta-step must be a non-negative number"),
    (["--algo", "reptile", "--shared-tail"], "--shared-tail applies to --algo fomaml or maml"),
    (["--algo", "imaml", "--cg-damping", "-1"], "--cg-damping and --cg-lambda-damping must be"),
    (["--algo", "imaml", "--imaml-lambda", "nan"], "--imaml-lambda must be positive"),
])
def test_bad_input_is_one_line_error(flags, message, tmp_path, capsys):
    assert main(["sine", "--out", str(tmp_path)] + flags) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_sharpness_is_the_largest_eigenvalue_of_the_full_hessian():
    """Power iteration on the exact H v against numpy.linalg.eigvalsh of the Hessian built
    by central differences of the gradient, in float64, per task."""
    model = mlp((1, 6, 6, 1), "tanh")
    theta = model.init(np.random.default_rng(0))
    tasks = sine.sample(np.random.default_rng(1), 3)
    h = sine.sharpness(model, theta, tasks, iters=500)
    eps = 1e-5
    for j in range(3):
        x, y = (a[j:j + 1] for a in tasks.train)

        def grad(t):
            return model.loss_and_grad(t[None], x, y)[1][0]
        full = np.stack([(grad(theta + eps * e) - grad(theta - eps * e)) / (2 * eps)
                         for e in np.eye(theta.size)])
        eig = np.linalg.eigvalsh((full + full.T) / 2)
        top = eig[np.argmax(np.abs(eig))]
        assert h[j] == pytest.approx(top, rel=1e-6)


def test_imaml_options_reach_the_inner_loop(monkeypatch):
    """--imaml-inner, --cg-damping and --cg-lambda-damping arrive in meta.imaml_delta."""
    seen, delta_rule = {}, sine.delta_rule

    def spy(algo, **kw):
        seen.update(kw["imaml"])
        return delta_rule(algo, **kw)
    monkeypatch.setattr(sine, "delta_rule", spy)
    cfg = SineConfig(algo="imaml", meta_iters=1, meta_batch=2, imaml_inner="authors",
                     cg_damping=1.0, cg_lambda_damping=10.0, imaml_lambda=2.0).resolved()
    model, theta0, _ = sine.initial(cfg)
    meta_train(model, theta0, cfg)
    assert seen == {"lam": 2.0, "cg_steps": 5, "pullback": True, "damping": 1.0,
                    "lam_damping": 10.0}
