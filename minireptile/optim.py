"""SGD and Adam as operations on flat parameter arrays, with saveable state.

Both work on ``theta`` of shape ``(P,)`` or ``(T, P)`` (T tasks stepping together).
``state_dict()`` returns plain arrays and numbers (checkpoints store them without
pickle), ``load_state_dict`` restores them, ``reset()`` forgets them.
"""
import numpy as np

from .backend import get_xp, to_host


class SGD:
    """theta <- theta - alpha * g.  Stateless; the paper's inner loop with ``--sgd``."""

    def __init__(self, lr):
        self.lr = lr

    def step(self, theta, g):
        return theta - self.lr * g

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass

    def reset(self):
        pass


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

    def step(self, theta, g):
        xp = get_xp(theta, g)
        if self.v is None:
            self.m, self.v = xp.zeros_like(theta), xp.zeros_like(theta)
        self.t += 1
        self.m = self.beta1 * self.m + (1 - self.beta1) * g if self.beta1 else g
        self.v = self.beta2 * self.v + (1 - self.beta2) * (g * g)
        lr_t = self.lr * np.sqrt(1 - self.beta2 ** self.t) / (1 - self.beta1 ** self.t)
        return theta - lr_t * self.m / (xp.sqrt(self.v) + self.eps)

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
