"""Losses with the three passes a model needs: value, gradient, and R{gradient}.

    forward(z, y)        -> loss (...), cache       one loss per task (leading axes kept)
    backward(cache)      -> dz = dL/dz
    rbackward(cache, rz) -> rdz = R{dL/dz} = (d^2 L / dz^2) rz
"""
from .backend import get_xp


class MSE:
    """Mean squared error over the batch, L = (1/B) sum_b sum_j (z_bj - y_bj)^2.

    The sine-wave loss of section 4, Eq. (8), estimated on a batch of points.
    z, y: (..., B, D).
    """

    def forward(self, z, y):
        diff = z - y
        return (diff * diff).sum(axis=(-2, -1)) / z.shape[-2], diff

    def backward(self, diff):
        return diff * (2.0 / diff.shape[-2])

    def rbackward(self, diff, rz):
        return rz * (2.0 / diff.shape[-2])


class SoftmaxCrossEntropy:
    """Sum over the batch of -log softmax(z)[label].

    The paper's code sums the per-example cross-entropies (it minimises the vector
    of losses, which TensorFlow sums), so its SGD step sizes carry over: the gradient
    is dz = p - onehot(y), not divided by B.
        rdz = p * rz - p * sum_j (p_j rz_j)           (softmax Jacobian applied to rz)
    z: (..., B, C) logits; y: (..., B) integer labels.
    """

    def forward(self, z, y):
        xp = get_xp(z)
        z = z - z.max(axis=-1, keepdims=True)
        logp = z - xp.log(xp.exp(z).sum(axis=-1, keepdims=True))
        onehot = (y[..., None] == xp.arange(z.shape[-1])).astype(z.dtype)
        return -(logp * onehot).sum(axis=(-2, -1)), (xp.exp(logp), onehot)

    def backward(self, cache):
        p, onehot = cache
        return p - onehot

    def rbackward(self, cache, rz):
        p, _ = cache
        prz = p * rz
        return prz - p * prz.sum(axis=-1, keepdims=True)
