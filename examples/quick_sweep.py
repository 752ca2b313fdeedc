"""Hyper-parameter sweep for the quick embedded-Omniglot run, at equal compute.

Every configuration gets the same number of image-gradient evaluations
(meta_iters * meta_batch * inner_iters * inner_batch), so a setting that learns more per
FLOP wins. Each configuration is a ``TrainConfig`` run by ``minireptile.train_run`` in its
own process (one CPU thread each); writes one JSON with each run's learning curve and final
5-way 1-shot accuracy.

    python examples/quick_sweep.py --budget 375000 --jobs 8 --out runs/sweep.json
"""
import argparse
import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor

from minireptile import TrainConfig, checkpoint, files, parallel, train_run

CONFIGS = {
    "paper-mb5-lr1e-3": dict(meta_batch=5, inner_iters=5, inner_batch=10, train_shots=10,
                             learning_rate=1e-3),
    "mb5-lr2e-3": dict(meta_batch=5, inner_iters=5, inner_batch=10, train_shots=10,
                       learning_rate=2e-3),
    "mb5-lr3e-3": dict(meta_batch=5, inner_iters=5, inner_batch=10, train_shots=10,
                       learning_rate=3e-3),
    "mb2-lr1e-3": dict(meta_batch=2, inner_iters=5, inner_batch=10, train_shots=10,
                       learning_rate=1e-3),
    "mb2-lr2e-3": dict(meta_batch=2, inner_iters=5, inner_batch=10, train_shots=10,
                       learning_rate=2e-3),
    "mb5-ib5-ts5": dict(meta_batch=5, inner_iters=5, inner_batch=5, train_shots=5,
                        learning_rate=1e-3),
    "mb5-k10": dict(meta_batch=5, inner_iters=10, inner_batch=10, train_shots=10,
                    learning_rate=1e-3),
    "mb3-lr1.5e-3": dict(meta_batch=3, inner_iters=5, inner_batch=10, train_shots=10,
                         learning_rate=1.5e-3),
}


def run(name, fields, iters, folder, eval_samples):
    """One configuration of the sweep, in a worker process: its results and learning curve."""
    parallel.set_threads(1)
    cfg = TrainConfig(shots=1, meta_iters=iters, meta_step=1.0, meta_step_final=0.0,
                      eval_interval=max(iters // 3, 1), eval_tasks_during=50,
                      eval_samples=eval_samples, eval_batch=5, eval_iters=50, **fields)
    with open(os.devnull, "w") as quiet:
        results = train_run(cfg, folder, stream=quiet)
    return name, iters, results, checkpoint.read_log(folder)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--budget", type=int, default=375000, help="image-gradients per run")
    p.add_argument("--jobs", type=int, default=8, help="runs at once, one process each")
    p.add_argument("--eval-samples", type=int, default=200)
    p.add_argument("--only", nargs="*", choices=list(CONFIGS), help="configuration names")
    p.add_argument("--out", default="runs/sweep.json")
    args = p.parse_args()
    root, t0, results = tempfile.mkdtemp(prefix="sweep-"), time.time(), {}
    with ProcessPoolExecutor(args.jobs) as pool:
        futures = []
        for name in args.only or list(CONFIGS):
            fields = CONFIGS[name]
            iters = args.budget // (fields["meta_batch"] * fields["inner_iters"] *
                                    fields["inner_batch"])
            futures.append(pool.submit(run, name, fields, iters, os.path.join(root, name),
                                       args.eval_samples))
        for future in futures:
            name, iters, r, curve = future.result()
            results[name] = dict(config=CONFIGS[name], meta_iters=iters, curve=curve,
                                 test=r["test"], train=r["train"],
                                 train_seconds=r["train_seconds"])
            print(f"{name:18s} iters {iters:5d}  test {100 * r['test']['accuracy']:.1f} "
                  f"+/- {100 * r['test']['ci95']:.1f}%  curve "
                  + " ".join(f"{c['iteration']}:{100 * c['test']:.0f}" for c in curve)
                  + f"  ({r['train_seconds']:.0f} s)", flush=True)
    files.make_folder(os.path.dirname(os.path.abspath(args.out)), "--out")
    files.write_json(args.out, dict(budget=args.budget, seconds=time.time() - t0,
                                    runs=results))


if __name__ == "__main__":
    main()
