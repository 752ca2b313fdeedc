"""The demo's few-shot learning: fine-tune on the drawings, classify the query, every step.

The same rule as ``minireptile eval`` (section 6.1, non-transductive): starting from theta and
a *copy* of the saved inner Adam state, ``eval_iters`` inner steps (``meta.inner_steps``) on
mini-batches of ``eval_batch`` drawings (``data.inner_batches``: cycling through a shuffled
order), then the query is classified in a batch made of the N*K drawings plus the query
(``evaluate.query_batch`` / ``predict_test``; batch norm uses that batch's statistics).

Next to the meta-learned theta, the same steps run from a random initialisation with a fresh
inner optimizer (a network learning from scratch), on the same mini-batches. After every step
the query's class probabilities are recorded, softmax of the query's row of the logits of
that same N*K + 1 batch, so the page can replay the learning.
"""
import time

import numpy as np

from ..backend import dtype, get_xp, to_device, to_host
from ..data import inner_batches
from ..evaluate import predict_test, query_batch
from ..meta import inner_steps


def softmax(z):
    """exp(z) / sum exp(z) over the last axis (shifted by the max for range)."""
    xp = get_xp(z)
    e = xp.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def step_probabilities(model, phis, x_train, x_query):
    """p(class | query) under each of S parameter vectors: (S, N).

    phis: (S, P); x_train: (N*K, H, W, C); x_query: (H, W, C). Every phi sees the batch of
    ``evaluate.query_batch`` (non-transductive): the N*K drawings plus the query, last row.
    """
    xq = query_batch(x_train[None], x_query[None, None], 0)                 # (1, N*K + 1, ...)
    xp = get_xp(phis)
    batch = xp.broadcast_to(xq, (phis.shape[0],) + xq.shape[1:])            # (S, N*K + 1, ...)
    return softmax(model.predict(phis, batch)[:, -1])


def fine_tune(model, theta, optimizer, xs, ys, weight_decay):
    """phi_0 = theta, phi_1, ..., phi_k: (k + 1, P), one inner step per mini-batch.

    xs: (k, b, H, W, C) and ys: (k, b), the k mini-batches; optimizer: copied, not changed.
    """
    xp = get_xp(theta)
    batches = [(xs[j], ys[j]) for j in range(len(xs))]
    steps = inner_steps(model, theta, batches, optimizer.copy(), weight_decay)
    return xp.stack([theta] + [step.phi for step in steps])


class Learner:
    """A meta-learned initialisation and what it needs to fine-tune, ready for drawings.

    model: the Omniglot CNN; theta: (P,) on the device; optimizer: the inner optimizer with
    its saved state (copied for every request, never changed); scratch_optimizer: a fresh
    one of the same kind; cfg: the checkpoint's ``TrainConfig`` (eval_batch, eval_iters,
    replacement, weight_decay); seed: the mini-batch order and the random initialisation.
    """

    def __init__(self, model, theta, optimizer, scratch_optimizer, cfg, seed=0):
        self.model, self.theta, self.optimizer, self.cfg = model, theta, optimizer, cfg
        self.scratch_optimizer, self.seed = scratch_optimizer, seed

    def learn(self, x_train, y_train, x_query):
        """Fine-tune on the drawings from both initialisations; the query's probabilities.

        x_train: float32 (N*K, 28, 28, 1); y_train: int (N*K,); x_query: (28, 28, 1).
        Returns {"meta": {...}, "scratch": {...}}, each with "steps" (k + 1 lists of N
        probabilities, step 0 before any step), "predicted" (predict_test's class after the
        last step) and "seconds".
        """
        rng = np.random.default_rng(self.seed)
        index = inner_batches(len(x_train), rng, self.cfg.eval_batch, self.cfg.eval_iters,
                              self.cfg.replacement)
        scratch = to_device(self.model.init(rng), dtype())
        xs = to_device(x_train[index], dtype())                          # (k, b, 28, 28, 1)
        ys = to_device(np.asarray(y_train, np.int64)[index])             # (k, b)
        x, xq = to_device(x_train, dtype()), to_device(x_query, dtype())
        out = {}
        for name, theta, optimizer in (("meta", self.theta, self.optimizer),
                                       ("scratch", scratch, self.scratch_optimizer)):
            t0 = time.perf_counter()
            phis = fine_tune(self.model, theta, optimizer, xs, ys, self.cfg.weight_decay)
            probs = step_probabilities(self.model, phis, x, xq)
            predicted = predict_test(self.model, phis[-1:], x[None], xq[None, None], False)
            out[name] = {"steps": to_host(probs).tolist(),
                         "predicted": int(to_host(predicted)[0, 0]),
                         "seconds": time.perf_counter() - t0}
        return out
