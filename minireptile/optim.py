"""SGD and Adam as operations on flat parameter arrays, with saveable state.

Both work on ``theta`` of shape ``(P,)`` or ``(T, P)`` (T tasks stepping together).
``state_dict()`` returns plain arrays and numbers (checkpoints store them without
pickle), ``load_state_dict`` restores them, ``reset()`` forgets them.
"""
import numpy as np

from .backend import get_xp, to_host
from .parallel import map_blocks


class SGD:
    """theta <- theta - alpha * g.  Stateless; the paper's inner loop with ``--sgd``.

    mask: None, or a (P,) array of 1s and 0s, theta <- theta - alpha * (mask * g): the
    parameters at 0 stay where they are (Finn et al.'s batch-norm offsets, which their inner
    loop does not adapt; ``Sequential.inner_mask``). The outer loop still learns them.
    """

    def __init__(self, lr, mask=None):
        self.lr, self.mask = lr, mask

    def step(self, theta, g):
        return theta - self.lr * (g if self.mask is None else self.mask * g)

    def state_dict(self):
        return {}

    def load_state_dict(self, state, xp=np):
        pass

    def reset(self):
        pass

    def copy(self):
        return SGD(self.lr, self.mask)

    def snapshot(self):
        return None

    def task_terms(self, start, k):
        return []

    def merge_sums(self, start, sums, n, k):
        """Stateless: n tasks stepping in one batched pass need no merge."""


class Adam:
    """Adam (Kingma & Ba 2015) in TensorFlow's form, as the paper's code uses it.

        m <- beta1 m + (1 - beta1) g          v <- beta2 v + (1 - beta2) g^2
        t <- t + 1                            lr_t = lr sqrt(1 - beta2^t) / (1 - beta1^t)
        theta <- theta - lr_t m / (sqrt(v) + eps)

    The paper's inner loop uses beta1 = 0 (so m = g) and keeps one state -- second
    moments and the global step counter t -- for the whole run (section 6.1 / its code).
    m and v take the shape of theta on the first step, so T tasks can carry T states.
    """

    def __init__(self, lr, beta1=0.0, beta2=0.999, eps=1e-8):
        self.lr, self.beta1, self.beta2, self.eps = lr, beta1, beta2, eps
        self.reset()

    def reset(self):
        self.m = self.v = None
        self.t = 0

    def copy(self):
        """An independent Adam with the same settings and state (arrays are never mutated
        in place, so sharing them is safe)."""
        other = Adam(self.lr, self.beta1, self.beta2, self.eps)
        other.m, other.v, other.t = self.m, self.v, self.t
        return other

    def step(self, theta, g):
        xp = get_xp(theta, g)
        if self.v is None:
            self.m, self.v = xp.zeros_like(theta), xp.zeros_like(theta)
        self.t += 1
        lr_t = float(self.lr * np.sqrt(1 - self.beta2 ** self.t) / (1 - self.beta1 ** self.t))
        shape = np.broadcast_shapes(theta.shape, g.shape, self.v.shape)
        m0, v0, theta, g = (xp.broadcast_to(a, shape) for a in (self.m, self.v, theta, g))
        m = xp.empty(shape, theta.dtype) if self.beta1 else g   # beta1 = 0: m = g
        v, phi = xp.empty(shape, theta.dtype), xp.empty(shape, theta.dtype)

        def block(i):              # the update on one block of the flat arrays, in place
            if self.beta1:
                xp.multiply(g[i], 1 - self.beta1, out=m[i])
                m[i] += self.beta1 * m0[i]
            xp.multiply(g[i], g[i], out=v[i])                     # v = beta2 v + (1-beta2) g^2
            v[i] *= 1 - self.beta2
            v[i] += self.beta2 * v0[i]
            step = xp.sqrt(v[i], out=phi[i])                      # phi = theta - lr_t m / d
            step += self.eps
            xp.divide(m[i], step, out=step)
            step *= -lr_t
            step += theta[i]
        map_blocks(block, shape)
        self.m, self.v = m, v
        return phi

    def snapshot(self):
        """(t, m, v) now: the shared state a batched pass starts from (see merge_sums)."""
        return self.t, self.m, self.v

    def task_terms(self, start, k):
        """[m_i - beta1^k m_0, v_i - beta2^k v_0], each (n, P), for the n task copies that
        took k steps from ``start`` (a ``snapshot``): what ``merge_sums`` averages."""
        _, m0, v0 = start
        return [s if s0 is None else s - beta ** k * s0
                for s, s0, beta in ((self.m, m0, self.beta1), (self.v, v0, self.beta2))]

    def merge_sums(self, start, sums, n, k):
        """The state after n tasks took k steps each from one shared state, as the paper's
        code leaves it, from the sums over the tasks of ``task_terms``.

        The paper's code feeds the n tasks of a meta-batch through one Adam one after another,
        so the step counter advances by n k and every moment s (m with beta1, v with beta2)
        ends as  s_seq = beta^(nk) s_0 + sum_i beta^((n-i)k) D_i,  where task i alone gives
        s_i = beta^k s_0 + D_i.  Run as one batched pass, each task starts from a copy of s_0;
        the merge replaces every D_i by their mean, which is exact when the tasks' squared
        gradients are alike and unbiased when they are exchangeable:

            s <- beta^(nk) s_0 + (1 - beta^(nk)) / (1 - beta^k) * mean_i(s_i - beta^k s_0)
            t <- t_0 + n k

        start: ``snapshot()`` before the inner loop (m_0, v_0 None before any step); sums:
        sum_i(s_i - beta^k s_0) over all n tasks for m and v (over every process's tasks
        when they are split, ``distributed.py``).
        """
        t0, m0, v0 = start
        merged = []
        for total, s0, beta in zip(sums, (m0, v0), (self.beta1, self.beta2)):
            s0 = 0 * total if s0 is None else s0
            scale = n if beta == 1 else (1 - beta ** (n * k)) / (1 - beta ** k)
            merged.append(beta ** (n * k) * s0 + scale * (total / n))
        self.m, self.v = merged
        self.t = t0 + n * k

    def state_dict(self):
        """{'t', 'm', 'v'} as host arrays (m and v empty before the first step)."""
        empty = np.zeros(0)
        return {"t": np.int64(self.t),
                "m": empty if self.m is None else to_host(self.m),
                "v": empty if self.v is None else to_host(self.v)}

    def load_state_dict(self, state, xp=np):
        self.t = int(state["t"])
        if np.size(state["v"]) == 0:
            self.m = self.v = None
        else:
            self.m, self.v = xp.asarray(state["m"]), xp.asarray(state["v"])
