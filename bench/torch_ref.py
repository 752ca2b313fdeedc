"""The PyTorch reference versions of the benchmarked meta-iterations.

Written the way a PyTorch user would write them, with nothing tuned: functional
parameters (a list of tensors), ``torch.autograd.grad`` for the inner steps,
``create_graph=True`` for exact MAML, batch norm in training mode (statistics of the
current batch, scale and offset, epsilon 1e-3), Adam with beta1 = 0 written out as
minireptile's is, the summed cross-entropy of the paper's code. Shapes are those of
the minireptile cases; images are NCHW, PyTorch's native layout.

Two forms of the classification meta-iteration: ``loop`` (tasks one after another, the
form of the paper's code) and ``vmap`` (the meta-batch as one batched pass through
``torch.func.vmap``), so minireptile's batched pass is compared with both. Few-shot
evaluation (``ConvEvaluate``) runs its tasks one after another, as the paper's code does.

This module is imported only by ``bench/case_torch.py`` when ``import torch`` works; PyTorch
is never a dependency of minireptile or its tests.
"""
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch.func import grad, vmap

BN_EPS = 1e-3


def conv_params(num_classes, in_channels, filters, head_features, seed=0):
    """[w, b, gamma, beta] x 4 conv blocks, then [w, b] of the linear head (float32)."""
    g = torch.Generator().manual_seed(seed)
    params, cin = [], in_channels
    for _ in range(4):
        limit = math.sqrt(6.0 / (9 * cin + 9 * filters))
        params += [(torch.rand(filters, cin, 3, 3, generator=g) * 2 - 1) * limit,
                   torch.zeros(filters), torch.ones(filters), torch.zeros(filters)]
        cin = filters
    limit = math.sqrt(6.0 / (head_features + num_classes))
    params += [(torch.rand(head_features, num_classes, generator=g) * 2 - 1) * limit,
               torch.zeros(num_classes)]
    return params


def _pad_same(x, stride):
    """TensorFlow 'same' padding for a 3x3 kernel: the extra row/column goes last."""
    size = x.shape[-1]
    out = -(-size // stride)
    total = max((out - 1) * stride + 3 - size, 0)
    return F.pad(x, (total // 2, total - total // 2, total // 2, total - total // 2))


def conv_net(params, x, stride, pool):
    """4 x [conv 3x3 'same', batch norm, (max-pool 2x2 'same'), ReLU] -> linear.

    x: (B, C, H, W); returns logits (B, num_classes).
    """
    for i in range(4):
        w, b, gamma, beta = params[4 * i:4 * i + 4]
        x = F.conv2d(_pad_same(x, stride), w, b, stride=stride)
        x = F.batch_norm(x, None, None, gamma, beta, training=True, eps=BN_EPS)
        if pool:
            x = F.max_pool2d(x, 2, 2, ceil_mode=True)
        x = F.relu(x)
    return x.flatten(1) @ params[-2] + params[-1]


def adam_step(params, grads, state, lr, beta2=0.999, eps=1e-8):
    """Adam with beta1 = 0 (m = g), TensorFlow's bias correction, one global step counter."""
    state["t"] += 1
    lr_t = lr * math.sqrt(1 - beta2 ** state["t"])
    if state["v"] is None:
        state["v"] = [torch.zeros_like(g) for g in grads]
    out = []
    for p, g, v in zip(params, grads, state["v"]):
        v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        out.append(p - lr_t * g / (v.sqrt() + eps))
    return out


class ConvReptile:
    """Reptile meta-iterations of the Omniglot or Mini-ImageNet CNN in PyTorch.

    batches: numpy arrays x (n, k, B, H, W, C), y (n, k, B) from the minireptile case,
    moved here to NCHW tensors once.
    """

    def __init__(self, x, y, num_classes, filters, stride, pool, head_features,
                 inner_lr, meta_step):
        self.x = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 1, 2, 5, 3, 4)))
        self.y = torch.from_numpy(y.astype(np.int64))
        self.stride, self.pool = stride, pool
        self.inner_lr, self.meta_step = inner_lr, meta_step
        self.theta = conv_params(num_classes, x.shape[-1], filters, head_features)
        self.states = {"loop": {"t": 0, "v": None}, "vmap": {"t": 0, "v": None}}

    def _loss(self, params, x, y):
        return F.cross_entropy(conv_net(params, x, self.stride, self.pool), y, reduction="sum")

    def loop(self):
        """Tasks one after another, one Adam state fed through all of them."""
        n, k = self.y.shape[:2]
        phis = []
        for t in range(n):
            phi = [p.clone().requires_grad_() for p in self.theta]
            for i in range(k):
                loss = self._loss(phi, self.x[t, i], self.y[t, i])
                grads = torch.autograd.grad(loss, phi)
                with torch.no_grad():
                    phi = [p.requires_grad_() for p in
                           adam_step(phi, grads, self.states["loop"], self.inner_lr)]
            phis.append([p.detach() for p in phi])
        self._update(phis)

    def vmap(self):
        """The meta-batch as one pass: vmap over tasks of grad of the loss, Adam per task.

        (Each task steps with its own copy of the second moments, as minireptile's
        batched pass does.)
        """
        n, k = self.y.shape[:2]
        grad_fn = vmap(grad(self._loss))
        phi = [p.expand(n, *p.shape).clone() for p in self.theta]
        for i in range(k):
            grads = grad_fn(phi, self.x[:, i], self.y[:, i])
            phi = adam_step(phi, grads, self.states["vmap"], self.inner_lr)
        self._update([[p[t] for p in phi] for t in range(n)])

    def _update(self, phis):
        with torch.no_grad():
            self.theta = [p + self.meta_step * (torch.stack(q).mean(0) - p)
                          for p, q in zip(self.theta, zip(*phis))]


class ConvEvaluate:
    """Few-shot evaluation (section 6.1) in PyTorch, tasks one after another.

    Per task: ``iters`` Adam (beta1 = 0) steps from theta on its N*K training images (each
    step the whole set, as the paper's --eval-batch N*K does), from a fresh Adam state;
    then each of the N query images is classified in a batch with the training images
    (non-transductive, ``minireptile.evaluate``'s default).
    x (T, N*K, H, W, C), y (T, N*K), xq (T, N, H, W, C): moved here to NCHW tensors once.
    """

    def __init__(self, theta, x, y, xq, stride, pool, lr, iters):
        self.x = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 1, 4, 2, 3)))
        self.xq = torch.from_numpy(np.ascontiguousarray(xq.transpose(0, 1, 4, 2, 3)))
        self.y = torch.from_numpy(y.astype(np.int64))
        self.theta, self.stride, self.pool, self.lr, self.iters = theta, stride, pool, lr, iters

    def step(self):
        """Predicted classes of the query images, (T, N)."""
        preds = []
        for x, y, xq in zip(self.x, self.y, self.xq):
            phi, state = [p.detach().clone().requires_grad_() for p in self.theta], \
                {"t": 0, "v": None}
            for _ in range(self.iters):
                loss = F.cross_entropy(conv_net(phi, x, self.stride, self.pool), y,
                                       reduction="sum")
                grads = torch.autograd.grad(loss, phi)
                with torch.no_grad():
                    phi = [p.requires_grad_() for p in adam_step(phi, grads, state, self.lr)]
            with torch.no_grad():
                preds.append(torch.stack([
                    conv_net(phi, torch.cat([x, q[None]]), self.stride, self.pool)[-1].argmax()
                    for q in xq]))
        return torch.stack(preds)


class SineMAML:
    """Exact MAML on the sine MLP 1-64-64-1, all tasks of the meta-batch in one pass.

    Parameters carry a task axis (expanded from theta) and batched matrix products run
    the n tasks together; the inner SGD steps keep their graph (create_graph=True) and
    the test loss is differentiated back through all k of them to theta.
    x_train: (n, p, 1), y_train (n, p, 1), x_test (n, 50, 1), y_test (n, 50, 1).
    """

    def __init__(self, x_train, y_train, x_test, y_test, k, alpha, meta_step, seed=0):
        g = torch.Generator().manual_seed(seed)
        sizes, self.theta = (1, 64, 64, 1), []
        for d_in, d_out in zip(sizes[:-1], sizes[1:]):
            limit = math.sqrt(6.0 / (d_in + d_out))
            self.theta += [((torch.rand(d_in, d_out, generator=g) * 2 - 1) * limit),
                           torch.zeros(1, d_out)]
        self.theta = [p.requires_grad_() for p in self.theta]
        self.data = [torch.from_numpy(a) for a in (x_train, y_train, x_test, y_test)]
        self.k, self.alpha, self.meta_step = k, alpha, meta_step

    @staticmethod
    def _loss(params, x, y):                        # sum over tasks of each task's MSE
        for i in range(0, len(params), 2):
            x = torch.baddbmm(params[i + 1], x, params[i])
            if i < len(params) - 2:
                x = F.relu(x)
        return ((x - y) ** 2).sum() / x.shape[-2]

    def step(self):
        x_train, y_train, x_test, y_test = self.data
        n = x_train.shape[0]
        phi = [p.expand(n, *p.shape) for p in self.theta]
        for _ in range(self.k):
            grads = torch.autograd.grad(self._loss(phi, x_train, y_train), phi,
                                        create_graph=True)
            phi = [p - self.alpha * g for p, g in zip(phi, grads)]
        meta_grads = torch.autograd.grad(self._loss(phi, x_test, y_test) / n, self.theta)
        with torch.no_grad():
            for p, g in zip(self.theta, meta_grads):
                p -= self.meta_step * g
