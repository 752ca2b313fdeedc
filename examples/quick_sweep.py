"""Hyper-parameter sweep for the quick embedded-Omniglot run, at equal compute.

Every configuration gets the same number of image-gradient evaluations
(meta_iters * meta_batch * inner_iters * inner_batch), so a setting that learns more per
FLOP wins. Runs the configurations in parallel processes (2 BLAS threads each) and
writes one JSON with each run's learning curve and final 5-way 1-shot accuracy.

    python examples/quick_sweep.py --budget 375000 --jobs 8 --out sweep.json
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

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


def command(cfg, iters, folder, eval_samples):
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in cfg.items()]
    return [sys.executable, "-m", "minireptile", "train", "omniglot", "--shots", "1",
            f"--meta-iters={iters}", "--meta-step=1", "--meta-step-final=0",
            f"--eval-interval={max(iters // 3, 1)}", "--eval-tasks-during=50",
            f"--eval-samples={eval_samples}", "--eval-batch=5", "--eval-iters=50",
            "--checkpoint", folder, *flags]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--budget", type=int, default=375000, help="image-gradients per run")
    p.add_argument("--jobs", type=int, default=8)
    p.add_argument("--eval-samples", type=int, default=200)
    p.add_argument("--only", nargs="*", help="configuration names")
    p.add_argument("--out", default="sweep.json")
    args = p.parse_args()
    env = dict(os.environ, OPENBLAS_NUM_THREADS="2", PYTHONUNBUFFERED="1")
    root = tempfile.mkdtemp(prefix="sweep-")
    names = args.only or list(CONFIGS)
    procs, t0 = {}, time.time()
    for name in names[:args.jobs]:
        cfg = CONFIGS[name]
        per_iter = cfg["meta_batch"] * cfg["inner_iters"] * cfg["inner_batch"]
        iters = args.budget // per_iter
        folder = os.path.join(root, name)
        procs[name] = (iters, subprocess.Popen(command(cfg, iters, folder, args.eval_samples),
                                               env=env, stdout=subprocess.DEVNULL,
                                               stderr=subprocess.STDOUT))
    results = {}
    for name, (iters, proc) in procs.items():
        proc.wait()
        folder = os.path.join(root, name)
        with open(os.path.join(folder, "results.json")) as f:
            r = json.load(f)
        with open(os.path.join(folder, "log.jsonl")) as f:
            curve = [json.loads(line) for line in f]
        results[name] = dict(config=CONFIGS[name], meta_iters=iters, curve=curve,
                             test=r["test"], train=r["train"],
                             train_seconds=r["train_seconds"])
        print(f"{name:18s} iters {iters:5d}  test {100 * r['test']['accuracy']:.1f} "
              f"+/- {100 * r['test']['ci95']:.1f}%  curve "
              + " ".join(f"{c['iteration']}:{100 * c['test']:.0f}" for c in curve)
              + f"  ({r['train_seconds']:.0f} s)", flush=True)
    with open(args.out, "w") as f:
        json.dump(dict(budget=args.budget, seconds=time.time() - t0, runs=results), f,
                  indent=1)


if __name__ == "__main__":
    main()
