"""The presets of ``--defaults``: the values of the flags a user leaves out, as TrainConfig fields.

    quick     the embedded-Omniglot run of the README's first command (5-way 1-shot, minutes
              on 2 cores): TrainConfig's own defaults
    paper     supervised-reptile's args.py defaults, which the paper's commands assume
    maml      Finn et al.'s MAML settings for Omniglot (cbfinn/maml): Table 2's MAML and
              FOMAML rows
    imaml     Rajeswaran et al.'s iMAML settings for Omniglot (aravindr93/imaml_dev)

Each setting of the last two is given with the line of their code it comes from, converted
to our units where theirs differ (our loss sums over a batch where theirs averages).
"""
from .errors import UserError

# supervised-reptile's args.py defaults, selected by --defaults paper
PAPER = dict(classes=5, shots=5, train_shots=0, inner_batch=5, inner_iters=20,
             replacement=False, learning_rate=1e-3, meta_step=0.1, meta_step_final=0.1,
             meta_batch=1, meta_iters=400000, eval_batch=5, eval_iters=50, eval_samples=10000,
             eval_interval=10, weight_decay=1.0, eval_tasks_during=1)

# Finn et al.'s Omniglot commands (cbfinn/maml main.py's docstring): N -> (meta_batch_size,
# update_lr, num_updates); both with metatrain_iterations=40000 and outer Adam at meta_lr 0.001
FINN = {5: (32, 0.4, 1), 20: (16, 0.1, 5)}
PRESETS = ("quick", "paper", "maml", "imaml")


def preset(name, classes=None, shots=None):
    """The values a preset gives the flags left out, as a dict of TrainConfig fields.

    maml: Finn et al.'s settings for N-way K-shot Omniglot (N = 5 or 20; each line is from
    cbfinn/maml: main.py's flags and README commands, maml.py, utils.py, data_generator.py):
      - a task has K support and K query images per class (``DataGenerator(update_batch_size
        * 2, ...)``): --train-shots 2K, the query as a separate tail --foml-tail K;
      - num_updates SGD steps on all N K support images (--inner-batch N K): --inner-iters
        num_updates + 1, the query loss counted as the last (Eqs. 17-21's convention);
      - the inner loss is the per-example cross-entropy divided by K (utils.py ``xent``:
        ``softmax_cross_entropy_with_logits(...) / FLAGS.update_batch_size``), a vector that
        ``tf.gradients`` sums: our summed loss with --learning-rate update_lr / K;
      - outer Adam (``tf.train.AdamOptimizer(meta_lr)``, meta_lr 0.001, not annealed);
      - --meta-batch meta_batch_size, 40,000 iterations (--metatrain_iterations);
      - test: 10 SGD steps (``test_num_updates = 10``) on the support set, batch norm on the
        query batch's own statistics (transductive), 600 tasks (``NUM_TEST_POINTS``);
      - their CNN (--network maml): batch norm without scale, the 2x2 positions averaged, a
        N(0, 1) dense head (``models.omniglot_cnn``);
      - its batch-norm offsets are not among the inner loop's weights (``maml.py``'s
        ``weights`` dict holds kernels, biases and the head; ``tf_layers.batch_norm`` keeps
        its own variables): --bn-offsets-outer.
    """
    if name == "quick":
        return {}
    if name == "paper":
        return dict(PAPER)
    if name == "imaml":
        return imaml_preset(classes, shots)
    if name != "maml":
        raise UserError(f"unknown --defaults {name!r}; expected {', '.join(PRESETS)}")
    n, k = classes or 5, shots or 1
    if n not in FINN:
        raise UserError(f"--defaults maml: Finn et al. give Omniglot settings for 5 and 20 "
                        f"classes, not {n}")
    meta_batch, update_lr, updates = FINN[n]
    return dict(network="maml", classes=n, shots=k, train_shots=2 * k, foml_tail=k,
                inner_batch=n * k, inner_iters=updates + 1, learning_rate=update_lr / k,
                sgd=True, algo="maml", bn_offsets_outer=True, outer="adam", meta_step=1e-3,
                meta_step_final=1e-3, meta_batch=meta_batch, meta_iters=40000,
                eval_batch=n * k, eval_iters=10, eval_samples=600, transductive=True,
                eval_interval=1000, eval_tasks_during=100)


def imaml_preset(classes=None, shots=None):
    """Rajeswaran et al.'s iMAML settings for N-way K-shot Omniglot, as their code runs them
    (aravindr93/imaml_dev: examples/README.md's command, omniglot_implicit_maml.py,
    implicit_maml/learner_model.py):
      - --inner_lr 1e-1 on the mean cross-entropy of the N K support images
        (``torch.nn.CrossEntropyLoss()``): our summed loss with --learning-rate 0.1 / (N K);
      - --n_steps 16 gradient steps, --lam 2.0, --cg_steps 5, --cg_damping 1.0: their system
        is ``(1.0 + regu_coef) * v + hvp / (lam + lam_damping)`` with regu_coef the
        cg_damping and lam_damping 10 (``matrix_evaluator``'s default); lam weighs the
        proximal term against the *mean* loss and hvp is the mean loss's, so on our summed
        loss both lambdas are N K times theirs: --imaml-lambda 2 N K, --cg-lambda-damping
        10 N K (the same steps and the same system, in our units);
      - --task_mb_size 32, outer Adam --outer_lr 1e-3, at least 20,000 meta-steps; its eps
        1e-3 (``torch.optim.Adam(..., eps=1e-3)``) on the mean-loss gradient, which our outer
        Adam sees multiplied by alpha N K = inner_lr (Delta = -alpha g): --outer-eps 1e-4;
      - test: 600 tasks, 16 steps of 0.1 with --lam 0.0 (plain fine-tuning), the query
        batch's own batch-norm statistics (``track_running_stats=False``): transductive;
      - their CNN flattens 2x2x64 features with a batch-norm scale, as the paper's network.
    Their inner loop takes the 16 steps on the plain loss, then one step on the proximal
    term (``omniglot_implicit_maml.py``: ``learn_task``, then ``regularization_loss(w_0,
    lam)``): --imaml-inner authors (the paper's iMAML-GD, 16 steps on the proximal problem,
    is --imaml-inner proximal).
    """
    n, k = classes or 5, shots or 1
    return dict(classes=n, shots=k, train_shots=2 * k, foml_tail=k, inner_batch=n * k,
                inner_iters=17, learning_rate=0.1 / (n * k), sgd=True, algo="imaml",
                imaml_lambda=2.0 * n * k, imaml_inner="authors", cg_steps=5, cg_damping=1.0,
                cg_lambda_damping=10.0 * n * k, outer="adam", outer_eps=1e-3 * 0.1,
                meta_step=1e-3, meta_step_final=1e-3, meta_batch=32, meta_iters=20000,
                eval_batch=n * k, eval_iters=16, eval_samples=600, transductive=True,
                eval_interval=1000, eval_tasks_during=100)
