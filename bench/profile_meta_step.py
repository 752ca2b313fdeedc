"""Where the time of one meta-iteration goes on the CPU: cProfile of the benchmark's batched
Reptile meta-iteration (paper settings), one task worker, functions sorted by own time.

    python bench/profile_meta_step.py [omniglot|miniimagenet] [--iters N]

Matrix products are attributed to the function that calls them (`x @ w` is an operator):
Conv2d.forward holds the forward products, Conv2d.backward the dW products, and
Conv2d._col2im_product the dX products with their shifted sums.
"""
import argparse
import cProfile
import os
import pstats
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import cases  # noqa: E402
from minireptile import parallel  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", nargs="?", default="omniglot", choices=("omniglot", "miniimagenet"))
    ap.add_argument("--iters", type=int, default=20)
    args = ap.parse_args()
    parallel.set_threads(1)
    step = cases.meta_iteration(cases.workload(args.model), "reptile", batched=True)
    step()
    t = time.perf_counter()
    profile = cProfile.Profile()
    profile.enable()
    for _ in range(args.iters):
        step()
    profile.disable()
    total = (time.perf_counter() - t) / args.iters
    print(f"{args.model} Reptile meta-iteration: {1e3 * total:.1f} ms with the profiler on")
    stats = pstats.Stats(profile)
    rows = sorted(stats.stats.items(), key=lambda kv: -kv[1][2])[:10]
    print("| function | ms per meta-iteration (own time) | share |\n| --- | ---: | ---: |")
    for (path, line, name), (_, _, own, _, _) in rows:
        where = f"{os.path.basename(path)}:{line}({name})" if line else name
        print(f"| {where} | {1e3 * own / args.iters:.1f} | {own / args.iters / total:.0%} |")


if __name__ == "__main__":
    main()
