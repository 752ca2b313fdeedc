"""Finn et al.'s MAML settings (``--defaults maml``): one meta-step against the unrolled loss,
their inner step on their loss, and a test-time step equal to the trained one.

The earlier MAML experiment stalled at 59% partly because its test-time step was half the
trained one (docs/reproduce.md, "Why MAML stalled at 59% before"); these tests hold the
settings to their definitions in float64.
"""
import dataclasses
import io

import numpy as np
import pytest

from minireptile import config, meta, presets, train
from minireptile.models import omniglot_cnn
from minireptile.optim import Adam

H = 1e-5


def finn_problem(rng, tasks=2, n=5, k=1):
    """A reduced Finn et al. network and a meta-batch shaped as --defaults maml makes it:
    the support batch (N K images) then the query batch (N K images), float64."""
    model = omniglot_cnn(n, input_shape=(9, 9, 1), filters=3, network="maml")
    theta = model.init(rng) + 0.1 * rng.standard_normal(model.num_params)

    def batch():
        return rng.random((tasks, n * k, 9, 9, 1)), np.tile(np.repeat(np.arange(n), k),
                                                            (tasks, 1))
    return model, theta, [batch(), batch()]


def unrolled_gradient(model, theta, support, query, alpha, mask=1.0):
    """Central differences, coordinate by coordinate, of the mean over tasks of
    L_query(theta - alpha M L_support'(theta)): Finn et al.'s meta-objective, written out
    (M: their inner loop's weights, all but the batch-norm offsets)."""
    def meta_loss(th):
        tiled = np.broadcast_to(th, (support[0].shape[0],) + th.shape)
        phi = tiled - alpha * mask * model.grad(tiled, *support)
        return model.loss(phi, *query).mean()
    g = np.zeros_like(theta)
    for j in range(theta.size):
        e = np.zeros_like(theta)
        e[j] = H
        g[j] = (meta_loss(theta + e) - meta_loss(theta - e)) / (2 * H)
    return g


def test_one_maml_meta_step_is_a_step_on_the_unrolled_meta_gradient(rng):
    """train.meta_iteration at --defaults maml (with outer SGD, so that the step's size shows)
    moves theta by -epsilon alpha g, g the central-difference gradient of the unrolled query
    loss: the inner step, the support/query wiring and the loss's reduction all enter g."""
    model, theta, batches = finn_problem(rng)
    cfg = config.TrainConfig(**{**presets.preset("maml", 5, 1), "outer": "sgd"})
    alpha, epsilon = cfg.learning_rate, 0.7
    sgd = config.inner_optimizer(cfg, model)
    new, _ = train.meta_iteration(model, theta, sgd, batches, epsilon, cfg)
    g = unrolled_gradient(model, theta, *batches, alpha, held_offsets(model))
    step = new - theta
    assert np.linalg.norm(step + epsilon * alpha * g) < 1e-6 * np.linalg.norm(step)


def test_the_outer_adam_takes_that_gradient(rng):
    """With Finn et al.'s outer Adam the first step is Adam's on alpha g (its lr 0.001).

    Adam's first step is about lr g / |g|, which turns the differences' noise on a zero
    gradient into a step: the conv biases before batch norm have a zero gradient (the norm
    removes any shift; a channel that ReLU silences has more), so these are held to "no
    step" and the rest to Adam's."""
    model, theta, batches = finn_problem(rng)
    cfg = config.TrainConfig(**presets.preset("maml", 5, 1))
    new, _ = train.meta_iteration(model, theta, config.inner_optimizer(cfg, model), batches,
                                  cfg.meta_step, cfg, outer=config.outer_optimizer(cfg))
    g = unrolled_gradient(model, theta, *batches, cfg.learning_rate, held_offsets(model))
    expected = Adam(cfg.meta_step, beta1=0.9).step(theta, cfg.learning_rate * g)
    moved = np.abs(g) > 1e-6 * np.abs(g).max()
    np.testing.assert_allclose(new[moved], expected[moved], rtol=0, atol=1e-6 * cfg.meta_step)
    biases = [model.layout[f"{i}.b"] for i in (0, 3, 6, 9)]           # the conv biases
    assert all(not moved[off:off + shape[0]].any() for off, shape in biases)
    assert np.abs(new - theta)[~moved].max() < 1e-6 * cfg.meta_step


@pytest.mark.parametrize("n, k", [(5, 1), (5, 5), (20, 1), (20, 5)])
def test_their_inner_step_on_their_loss_is_ours_on_the_summed_loss(rng, n, k):
    """Their inner loss is the per-example cross-entropy / K, summed by tf.gradients; ours is
    the sum: a step of update_lr on theirs is a step of --learning-rate update_lr / K on ours.
    And the preset evaluates with the trained step: the same N K support images per batch."""
    settings = presets.preset("maml", n, k)
    update_lr = presets.FINN[n][1]
    model = omniglot_cnn(n, input_shape=(9, 9, 1), filters=2, network="maml")
    theta = model.init(rng)
    x, y = rng.random((n * k, 9, 9, 1)), np.repeat(np.arange(n), k)
    theirs = theta - update_lr * model.grad(theta, x, y) / k
    ours = theta - settings["learning_rate"] * model.grad(theta, x, y)
    np.testing.assert_allclose(ours, theirs, rtol=1e-12)
    assert settings["inner_batch"] == settings["eval_batch"] == n * k
    assert (settings["train_shots"], settings["foml_tail"]) == (2 * k, k)
    assert settings["inner_iters"] == presets.FINN[n][2] + 1
    assert settings["bn_offsets_outer"]                 # their offsets are not fast weights


def test_a_maml_run_whose_test_step_differs_from_the_trained_one_is_warned(tmp_path):
    """Exact MAML learns an initialisation for one step: evaluating with another batch size
    (the summed loss scales the step with it) gets a one-line warning before training."""
    stream = io.StringIO()
    cfg = config.TrainConfig(**{**presets.preset("maml"), "eval_batch": 3, "meta_iters": 1,
                                "eval_samples": 1, "eval_iters": 1, "meta_batch": 2,
                                "eval_tasks_during": 1})
    train.run(cfg, stream=stream)
    assert "warning: exact MAML" in stream.getvalue() and "3/5" in stream.getvalue()
    train.run(dataclasses.replace(cfg, eval_batch=5), stream=(quiet := io.StringIO()))
    assert "warning" not in quiet.getvalue()


def held_offsets(model):
    """Finn et al.'s inner loop's weights: all but the batch-norm offsets (--bn-offsets-outer)."""
    mask = model.inner_mask(("beta",))
    offsets = [model.layout[f"{i}.beta"] for i in (1, 4, 7, 10)]
    assert all(not mask[off:off + shape[0]].any() for off, shape in offsets)
    assert mask.sum() == model.num_params - sum(shape[0] for _, shape in offsets)
    return mask


def test_maml_with_the_offsets_held_is_the_unrolled_gradient_of_that_inner_step(rng):
    """--bn-offsets-outer: phi = theta - alpha M L_support'(theta). maml_gradient's (I - alpha
    H M) products equal central differences of the query loss through that step, the held
    offsets' own meta-gradient included (they enter the query loss and the others' step)."""
    model, theta, (support, query) = finn_problem(rng)
    mask, alpha = held_offsets(model), 0.4

    def meta_loss(th):
        tiled = np.broadcast_to(th, (support[0].shape[0],) + th.shape)
        return model.loss(tiled - alpha * mask * model.grad(tiled, *support), *query).mean()
    g_fd = np.array([(meta_loss(theta + e) - meta_loss(theta - e)) / (2 * H)
                     for e in np.eye(theta.size) * H])
    tiled = np.broadcast_to(theta, (2,) + theta.shape).copy()
    for reuse in (True, False):
        g = meta.maml_gradient(model, tiled, [support], query, alpha, reuse=reuse,
                               mask=mask).mean(axis=0)
        assert np.linalg.norm(g - g_fd) < 1e-7 * np.linalg.norm(g_fd)
    offsets = mask == 0
    assert np.abs(g_fd[offsets]).max() > 1e-3 * np.abs(g_fd).max()     # they are learned
    unmasked = meta.maml_gradient(model, tiled, [support], query, alpha).mean(axis=0)
    assert np.linalg.norm(unmasked - g_fd) > 1e-3 * np.linalg.norm(g_fd)  # and it matters


def test_fomaml_with_the_offsets_held_steps_every_parameter_on_the_query_gradient(rng):
    """FOMAML (Finn et al.'s stop_grad) with the offsets held: the support step leaves them,
    and Delta = -alpha g_query(phi) on every parameter, theirs too; evaluation's adaptation
    (``meta.adapt`` with the same optimizer) leaves them as the inner loop does."""
    model, theta, (support, query) = finn_problem(rng)
    mask, alpha = held_offsets(model), 0.4
    tiled = np.broadcast_to(theta, (2,) + theta.shape).copy()
    sgd = config.inner_optimizer(config.TrainConfig(
        **{**presets.preset("maml", 5, 1), "algo": "fomaml"}), model)
    np.testing.assert_array_equal(sgd.mask, mask)
    phi = meta.adapt(model, tiled, [support], sgd)
    np.testing.assert_array_equal(phi[:, mask == 0], tiled[:, mask == 0])
    np.testing.assert_allclose(phi, tiled - alpha * mask * model.grad(tiled, *support),
                               rtol=0, atol=1e-15)
    delta, _ = meta.fomaml_delta(model, tiled, [support, query], sgd)
    np.testing.assert_allclose(delta, -alpha * model.grad(phi, *query), rtol=0, atol=1e-15)


@pytest.mark.parametrize("change", [dict(algo="reptile", foml_tail=0), dict(algo="imaml"),
                                    dict(sgd=False, algo="fomaml")])
def test_held_offsets_are_refused_where_they_would_never_be_learned(change):
    """Reptile's and Adam's updates are the inner steps themselves (held offsets would never
    move) and iMAML's proximal solve has no mask: one line naming the flag."""
    cfg = config.TrainConfig(**{**presets.preset("maml", 5, 1),
                                **change})
    with pytest.raises(config.UserError, match="--bn-offsets-outer"):
        cfg.validate()


def test_the_preset_holds_the_offsets_and_the_flag_can_adapt_them():
    """--defaults maml sets --bn-offsets-outer (Finn et al.'s inner loop); the command line
    can turn it off (the runs with adapted offsets in docs/reproduce.md)."""
    from minireptile.cli import build_parser
    from minireptile.cli.train import train_config
    parser = build_parser()
    held, _ = train_config(parser.parse_args(["train", "omniglot", "--defaults", "maml"]))
    adapted, _ = train_config(parser.parse_args(["train", "omniglot", "--defaults", "maml",
                                                 "--no-bn-offsets-outer"]))
    assert held.bn_offsets_outer and not adapted.bn_offsets_outer
    assert "--bn-offsets-outer" in config.command_line(held)
    assert "bn-offsets" not in config.command_line(adapted)
