"""How the CPU task workers share a batched Omniglot meta-iteration (minimum ms of 20 calls).

    python bench/task_workers.py

n = 5 tasks of 10 images, k = 5 Adam steps (``metabatch.meta_update``, Reptile), split over
2 workers as 3 + 2 (``parallel.map_tasks``), so the batched meta-iteration takes about as long
as the 3-task chunk; this prints the times that show it, and the same meta-iteration with
OpenBLAS's own 2 threads instead of task workers (the library's choice is one BLAS thread).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from bench.common import best_ms  # noqa: E402
from minireptile import parallel  # noqa: E402
from minireptile.meta import reptile_delta  # noqa: E402
from minireptile.metabatch import meta_update  # noqa: E402
from minireptile.models import omniglot_cnn  # noqa: E402
from minireptile.optim import Adam  # noqa: E402

REPEATS = 20               # calls per configuration; the fastest is printed


def main():
    """The table of meta-iteration times per worker count, BLAS threads and tasks."""
    rng = np.random.default_rng(0)
    model = omniglot_cnn(5)
    theta = model.init(rng).astype(np.float32)                                 # (P,)
    x = rng.random((5, 10, 28, 28, 1), dtype=np.float32)
    y = rng.integers(0, 5, (5, 10))
    print("| workers | BLAS threads | tasks | meta-iteration ms |\n| --- | --- | --- | --- |")
    for workers, blas, tasks in ((1, 1, 5), (1, 1, 3), (1, 1, 2), (2, 1, 5), (2, 1, 4),
                                 (1, 2, 5)):
        parallel.set_threads(workers)
        parallel.set_blas_threads(blas)
        batches = [(x[:tasks], y[:tasks])] * 5
        ms = best_ms(lambda: meta_update(reptile_delta, model, theta, batches,
                                         Adam(1e-3), 1.0), REPEATS)
        print(f"| {workers} | {blas} | {tasks} | {ms:.2f} |")


if __name__ == "__main__":
    main()
