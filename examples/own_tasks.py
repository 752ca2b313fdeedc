"""Meta-train your own model on your own task family, with Reptile and with exact MAML.

The tasks: y = a x^2 + b x + c with random (a, b, c); a learner sees 10 points and should fit
the curve after 5 SGD steps. The model: any ``Sequential`` of minireptile's layers.

    python examples/own_tasks.py
"""
import numpy as np

from minireptile import (MSE, SGD, Linear, Sequential, Tanh, adapt, delta_rule,
                         linear_schedule, meta_update)


def task_family(rng, n):
    """n tasks y = a x^2 + b x + c; returns draw(count): count points of each, (n, count, 1)."""
    a, b, c = (rng.uniform(-1, 1, (n, 1, 1)) for _ in range(3))

    def draw(count):
        x = rng.uniform(-2, 2, (n, count, 1))
        return x, a * x ** 2 + b * x + c
    return draw


model = Sequential([Linear(1, 32), Tanh(), Linear(32, 32), Tanh(), Linear(32, 1)], MSE(), (1,))
rng, alpha, k, iters = np.random.default_rng(0), 0.05, 5, 2000
theta0 = model.init(rng)
held_out = task_family(rng, 200)
shots, query = held_out(10), held_out(50)                    # the same 200 tasks, new points

for algo in ("reptile", "maml"):
    theta, rule = theta0, delta_rule(algo)
    for i in range(iters):
        draw = task_family(rng, 8)                                   # 8 tasks per iteration
        train = draw(10)
        batches = [train] * k if algo == "reptile" else [train] * k + [draw(10)]  # + test batch
        theta, _ = meta_update(rule, model, theta, batches, SGD(alpha),
                               linear_schedule(1.0, 0.0, i, iters))        # epsilon, Eq. 5
    for name, init in ((algo, theta), ("random init", theta0)):
        phi = adapt(model, np.stack([init] * 200), [shots] * k, SGD(alpha))
        print(f"{name:>12}: loss on new points after {k} SGD steps "
              f"{model.loss(phi, *query).mean():.3f}")
