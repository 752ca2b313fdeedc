"""Meta-iterations per second over MPI ranks, bytes sent, and a cluster model (issue 12).

    python bench/mpi_scaling.py [--iters 12] [--rounds 3] [--out bench/results/mpi-cpu2.json]

Each case is `mpiexec -n R python bench/mpi_scaling.py --worker` on this machine, R ranks x
T threads (CASES): the quick Omniglot run's meta-iteration (5-way, 5 tasks of 10 shots per
class, k = 5 Adam steps of 10 images: ``train.meta_batch`` + ``metabatch.meta_update`` with the
communicator's reduce, as ``minireptile train --distributed mpi`` runs it), timed over
--iters iterations after WARMUP untimed ones. Cases run in interleaved rounds and the median
per case is kept, so that the load of other processes falls on every case alike.

Measured, per case: meta-iterations/s; the time inside the reduce (the collective plus the
wait for the slowest rank); bytes each rank sends per meta-iteration, counted as a ring
algorithm sends them (all-reduce of the W = P + 1 + 2P floats meta_update reduces -- sum of
Delta_i, the loss, Adam's two moments -- or, deterministic, all-gather of the n per-task
rows of W floats); and, with 2 ranks, the library's all-reduce of W floats alone.

The cluster model (its formula printed; README "Running on many processes or machines"):
m tasks per rank, t_task a measured compute time of one task, a ring all-reduce of B = 4W
bytes between R nodes over links of latency a and bandwidth b (LINKS):
    T(R) = m t_task + 2 (R - 1) a + 2 (R - 1) / R * B / b
    throughput = R m / T(R) tasks/s,   efficiency E(R) = m t_task / T(R)
Communication dominates from the node count where its term exceeds m t_task (crossover R).
t_task comes from this run (1 rank, 1 thread, sampling included) and from earlier
bench/run.py results where present: the idle 2-core CPU (cpu2-cpu-t1.json) and an NVIDIA
H200 (h200-cuda.json), their batched Omniglot Reptile meta-iteration / 5 tasks. The "10x
larger model" keeps the measured t_task (extra parameters that cost little compute).
"""
import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from bench.common import write_json  # noqa: E402

CASES = [(1, 1, False), (1, 2, False), (2, 1, False), (2, 1, True)]  # (R, threads, determ.)
WARMUP = 2
LINKS = {"10 GbE": (50e-6, 1.25e9), "100 Gb/s InfiniBand": (2e-6, 12.5e9)}  # (a s, b B/s)
TASKS_PER_RANK = (1, 5)                   # m in the model
NODES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


def worker(iters, deterministic):
    """One case, inside mpiexec: rank 0 prints one JSON line of its measurements."""
    from minireptile import distributed, parallel
    from minireptile.config import TrainConfig, inner_optimizer, load_data
    from minireptile.models import omniglot_cnn
    from minireptile.train import meta_batch, meta_iteration, task_rngs
    parallel.set_threads(int(os.environ["MINIREPTILE_THREADS"]))
    comm = distributed.communicator("mpi", deterministic)
    ds, model, cfg = load_data(None, "omniglot"), omniglot_cnn(5), TrainConfig()
    tasks, reduce = comm.share(cfg.meta_batch), comm.reducer(cfg.meta_batch)
    in_reduce = [0.0]

    def timed(arrays):
        t = time.perf_counter()
        out = reduce(arrays)
        in_reduce[0] += time.perf_counter() - t
        return out

    theta = model.init(np.random.default_rng(0)).astype(np.float32)
    optimizer = inner_optimizer(cfg, model)
    for it in range(WARMUP + iters):
        if it == WARMUP:
            comm.comm.Barrier()
            start, in_reduce[0], sent = time.perf_counter(), 0.0, comm.sent
        batches = meta_batch(ds, task_rngs(0, it, tasks), cfg)
        theta, _ = meta_iteration(model, theta, optimizer, batches, 0.5, cfg, timed)
    comm.comm.Barrier()
    elapsed, sent = time.perf_counter() - start, comm.sent - sent
    width = 3 * model.num_params + 1                     # Delta, loss, Adam's m and v
    allreduce = _allreduce_seconds(comm, width) if comm.size > 1 else 0.0
    if comm.rank == 0:
        print(json.dumps({
            "ranks": comm.size, "threads": int(os.environ["MINIREPTILE_THREADS"]),
            "deterministic": deterministic,
            "P": model.num_params, "meta_batch": cfg.meta_batch, "iters": iters,
            "it_per_s": iters / elapsed, "reduce_s_per_it": in_reduce[0] / iters,
            "bytes_sent_per_it": sent / iters, "floats_reduced": width,
            "allreduce_s": allreduce}), flush=True)


def _allreduce_seconds(comm, width, repeats=20):
    """Median time of the library's all-reduce (``Mpi._allreduce``: MPI_Iallreduce, polled)
    of `width` float32 values, the ranks in step."""
    buf, times = np.ones((1, width), np.float32), []
    for _ in range(repeats):
        comm.comm.Barrier()
        t = time.perf_counter()
        comm._allreduce(buf)
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def run_case(ranks, threads, deterministic, iters):
    mpiexec = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    mpiexec = mpiexec if os.path.exists(mpiexec) else shutil.which("mpiexec")
    env = dict(os.environ, MINIREPTILE_THREADS=str(threads), OPENBLAS_NUM_THREADS="1")
    out = subprocess.run([mpiexec, "--allow-run-as-root", "--oversubscribe", "-n", str(ranks),
                          sys.executable, os.path.abspath(__file__), "--worker", "--iters",
                          str(iters)] + ["--deterministic"] * deterministic, env=env,
                         capture_output=True, text=True, timeout=1800)
    if out.returncode:
        sys.exit(f"case R={ranks} T={threads} failed:\n{out.stdout}\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def measured_t_task(here):
    """Compute seconds per task: this run's, and the Omniglot Reptile rows of earlier
    bench/run.py results (batched meta-iteration of 5 tasks / 5), where those files exist."""
    sources = {"this run, 1 thread (loaded 2-core machine)": here}
    folder = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
    for name, label in (("cpu2-cpu-t1.json", "idle 2-core CPU, 1 thread"),
                        ("h200-cuda.json", "NVIDIA H200")):
        try:
            with open(os.path.join(folder, name)) as f:
                rows = json.load(f)["rows"]
        except (OSError, ValueError, KeyError):
            continue
        for row in rows:
            if row["case"] == "meta_step" and row["config"].startswith(
                    "omniglot reptile batched"):
                sources[f"{label} ({name}: {row['config']})"] = row["median_ms"] / 5e3
    return sources


def comm_seconds(r, bytes_, a, b):
    """A ring all-reduce of bytes_ over r nodes: 2 (r - 1) a + 2 (r - 1) / r * bytes_ / b."""
    return 2 * (r - 1) * a + 2 * (r - 1) / r * bytes_ / b


def crossover(compute, bytes_, a, b, limit=1 << 30):
    """The smallest node count R whose all-reduce takes longer than `compute` (None: never
    up to `limit`); comm_seconds grows with R, so a bisection finds it."""
    if comm_seconds(limit, bytes_, a, b) <= compute:
        return None
    lo, hi = 1, limit
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if comm_seconds(mid, bytes_, a, b) <= compute else (lo, mid)
    return hi


def model_table(t_tasks, width, links=LINKS):
    """The cluster model for every measured t_task, model size, link and m."""
    rows = []
    for source, t_task in t_tasks.items():
        for scale, label in ((1, "Omniglot CNN"), (10, "10x larger model")):
            bytes_ = 4 * width * scale
            for name, (a, b) in links.items():
                for m in TASKS_PER_RANK:
                    compute = m * t_task
                    rows.append({
                        "t_task_from": source, "model": label, "P": (width - 1) // 3 * scale,
                        "link": name, "latency_s": a, "bandwidth_Bps": b,
                        "tasks_per_rank": m, "compute_s": compute, "bytes": bytes_,
                        "crossover_R": crossover(compute, bytes_, a, b),
                        "curve": [{"R": r, "comm_s": comm_seconds(r, bytes_, a, b),
                                   "efficiency": compute / (compute + comm_seconds(
                                       r, bytes_, a, b)),
                                   "tasks_per_s": r * m / (compute + comm_seconds(
                                       r, bytes_, a, b))} for r in NODES]})
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--deterministic", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--iters", type=int, default=12, help="timed meta-iterations per case")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds of all cases")
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results",
                                                 "mpi-cpu2.json"))
    args = p.parse_args()
    if args.worker:
        return worker(args.iters, args.deterministic)
    runs = {case: [] for case in CASES}
    for _ in range(args.rounds):
        for case in CASES:
            runs[case].append(run_case(*case, args.iters))
            print(f"R={case[0]} T={case[1]}{' deterministic' * case[2]}: "
                  f"{runs[case][-1]['it_per_s']:.3f} it/s", file=sys.stderr, flush=True)
    rows = {}
    for case, rs in runs.items():
        rows[case] = dict(rs[0], **{key: float(np.median([r[key] for r in rs]))
                                    for key in ("it_per_s", "reduce_s_per_it", "allreduce_s")},
                          all_it_per_s=[r["it_per_s"] for r in rs])
    one, two = rows[(1, 1, False)], rows[(2, 1, False)]
    t_task = 1 / (one["it_per_s"] * one["meta_batch"])  # one task on one thread
    summary = {
        "efficiency_R2": two["it_per_s"] / (2 * one["it_per_s"]),
        "mpi_vs_threads_same_cores": two["it_per_s"] / rows[(1, 2, False)]["it_per_s"],
        "deterministic_vs_all_reduce": rows[(2, 1, True)]["it_per_s"] / two["it_per_s"],
        "t_task_s": t_task,
        "note": "5 tasks over 2 ranks is a 3 + 2 split: the best speed-up is 5/3, an "
                "efficiency of 0.83"}
    report = {"machine": f"{platform.node()}, {os.cpu_count()} CPUs (loaded by other "
                         f"processes while measured), Python {platform.python_version()}",
              "command": "python bench/mpi_scaling.py " + " ".join(sys.argv[1:]),
              "cases": [rows[c] for c in CASES], "summary": summary,
              "model_formula": "T(R) = m t_task + 2 (R-1) a + 2 (R-1)/R * 4W/b; "
                               "E(R) = m t_task / T(R); tasks/s = R m / T(R)",
              "model": model_table(measured_t_task(t_task), one["floats_reduced"])}
    print("| ranks | threads | reduce | it/s (median) | all rounds | s in reduce / it | "
          "bytes sent / it |\n| --- | --- | --- | --- | --- | --- | --- |")
    for c in CASES:
        r = rows[c]
        how = "all-gather (deterministic)" if c[2] else "all-reduce"
        print(f"| {c[0]} | {c[1]} | {how} | {r['it_per_s']:.3f} | "
              f"{', '.join(f'{v:.3f}' for v in r['all_it_per_s'])} | "
              f"{r['reduce_s_per_it']:.4f} | {r['bytes_sent_per_it']:.0f} |")
    print(f"\nparallel efficiency E(2) = rate(2 x 1) / (2 rate(1 x 1)) = "
          f"{summary['efficiency_R2']:.2f}; 2 ranks x 1 thread / 1 rank x 2 threads = "
          f"{summary['mpi_vs_threads_same_cores']:.2f}; deterministic / all-reduce = "
          f"{summary['deterministic_vs_all_reduce']:.2f}; t_task = {1e3 * t_task:.1f} ms; "
          f"all-reduce (Mpi._allreduce) of {two['floats_reduced']} floats between 2 local "
          f"ranks: "
          f"{1e3 * two['allreduce_s']:.2f} ms")
    print(f"\nmodel: {report['model_formula']}")
    print("| t_task from | model | link | m | compute ms | crossover R | E(16) | E(256) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for row in report["model"]:
        e = {c["R"]: c["efficiency"] for c in row["curve"]}
        print(f"| {row['t_task_from'].split(' (')[0]} | {row['model']} | {row['link']} | "
              f"{row['tasks_per_rank']} | {1e3 * row['compute_s']:.1f} | "
              f"{row['crossover_R'] or 'never'} | {e[16]:.2f} | {e[256]:.2f} |")
    write_json(args.out, report, indent=2)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
