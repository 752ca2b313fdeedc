"""How the CPU task workers share a batched Omniglot gradient (minimum ms of 40 calls).

    python bench/task_workers.py

n = 5 tasks of 10 images split over 2 workers as 3 + 2, so the batched gradient takes about
as long as the 3-task chunk; this prints the times that show it, and the same gradient with
OpenBLAS's own 2 threads instead of task workers (the library's choice is one BLAS thread).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from bench.common import best_ms  # noqa: E402
from minireptile import backend  # noqa: E402
from minireptile.models import omniglot_cnn  # noqa: E402

REPEATS = 40               # calls per configuration; the fastest is printed


def main():
    """The table of gradient times per worker count, BLAS threads and tasks."""
    rng = np.random.default_rng(0)
    model = omniglot_cnn(5)
    theta = np.stack([model.init(rng) for _ in range(5)]).astype(np.float32)   # (5, P)
    x = rng.random((5, 10, 28, 28, 1), dtype=np.float32)
    y = rng.integers(0, 5, (5, 10))
    print("| workers | BLAS threads | tasks | gradient ms |\n| --- | --- | --- | --- |")
    for workers, blas, tasks in ((1, 1, 5), (1, 1, 3), (1, 1, 2), (2, 1, 5), (2, 1, 4),
                                 (1, 2, 5)):
        backend.set_threads(workers)
        backend.set_blas_threads(blas)
        ms = best_ms(lambda: model.loss_and_grad(theta[:tasks], x[:tasks], y[:tasks]),
                     REPEATS)
        print(f"| {workers} | {blas} | {tasks} | {ms:.2f} |")


if __name__ == "__main__":
    main()
