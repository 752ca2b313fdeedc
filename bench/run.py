"""minireptile benchmarks: time, memory and efficiency of every algorithm, against the
machine's own GEMM limit and against PyTorch.

    python bench/run.py [--device cpu|cuda] [--quick] [--only NAME] [--threads N]

Cases (``--only`` takes one name, or several joined by commas), one module each:
    meta_step    seconds per meta-iteration, Reptile / FOMAML / exact MAML on the sine MLP,
                 the Omniglot CNN and the Mini-ImageNet CNN, batched over the meta-batch
                 and as a loop over tasks (``case_meta_step.py``)
    inner_steps  time and peak memory of one meta-iteration for k = 1..32 inner steps,
                 each configuration in a fresh process (peak RSS on the CPU; CuPy's
                 memory-pool high-water mark on the GPU) (``case_inner_steps.py``)
    hvp          one Hessian-vector product / one gradient, per model (``case_hvp.py``)
    efficiency   achieved FLOP/s of the Omniglot (and Mini-ImageNet) Reptile meta-iteration,
                 FLOPs counted analytically, / FLOP/s of a large float32 GEMM, same run
                 (``case_efficiency.py``)
    torch        the same meta-iterations in PyTorch (when ``import torch`` works), and
                 few-shot evaluation (50 Adam steps on a 5-way 1-shot task, then the
                 5 query images), ms per task (``case_torch.py``)
    jax          the same, each meta-iteration one ``jax.jit`` function (when ``import
                 jax`` works), its compile time excluded (``case_jax.py``)

The settings, the timing discipline (an untimed warm-up, ``synchronize()`` before every
clock read on the GPU, interleaved rounds, median and min-max), the machine description
and the report are in ``common.py``; the workloads in ``cases.py``. This driver fixes the
thread count, runs the cases, prints the Markdown table and writes
``bench/results/<machine>-<device>.json`` after every case.
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _set_threads(argv):
    """Fix the BLAS thread count before numpy is imported: --threads N, else
    $MINIREPTILE_THREADS, else 1 (the package's default: OpenBLAS's threads spin on the
    small products of these models, and on a busy 2-core machine every product then waits
    for a descheduled thread)."""
    n = argv[argv.index("--threads") + 1] if "--threads" in argv else \
        os.environ.get("MINIREPTILE_THREADS", "1")
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = n


_set_threads(sys.argv)

# numpy (imported by these) after the thread count is fixed
from bench import (case_cost, case_efficiency, case_hvp, case_imaml_k,  # noqa: E402
                   case_inner_steps, case_jax, case_meta_step, case_torch, common)
from minireptile import backend, parallel  # noqa: E402

RUNNERS = {"meta_step": case_meta_step.run, "inner_steps": case_inner_steps.run,
           "imaml_k": case_imaml_k.run, "cost": case_cost.run,
           "hvp": case_hvp.run, "efficiency": case_efficiency.run, "torch": case_torch.run,
           "jax": case_jax.run}
CASES = tuple(RUNNERS)


def parse_args(argv):
    """The command line (argv, or sys.argv's when None)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu", choices=backend.DEVICES)
    ap.add_argument("--quick", action="store_true", help="a short run (under 2 minutes)")
    ap.add_argument("--only", default="", help="one case or several, comma-separated: "
                    + ", ".join(CASES))
    ap.add_argument("--threads", type=int, default=0,
                    help="CPU cores used by each side: minireptile's task workers, the large "
                         "GEMM's BLAS threads and PyTorch's threads (default: "
                         "$MINIREPTILE_THREADS or 1)")
    ap.add_argument("--budget", type=float, default=0,
                    help="timed seconds per measurement (default: 5, or 1 with --quick)")
    ap.add_argument("--out", default="", help="results file (default bench/results/...)")
    ap.add_argument("--child", default="", help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def main(argv=None):
    """Run the chosen cases (or one inner_steps child); 0 on success, 2 on a usage error."""
    args = parse_args(argv)
    mode = "quick" if args.quick else "full"
    if args.budget:
        common.BUDGET_S[mode] = args.budget
    try:
        backend.set_backend(args.device, common.DTYPE)
        parallel.set_threads(common.blas_threads())     # N task workers, one BLAS thread each
    except backend.BackendError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    if args.child:
        case_inner_steps.child(json.loads(args.child), mode)
        return 0
    only = [c for c in args.only.split(",") if c] or list(CASES)
    unknown = set(only) - set(CASES)
    if unknown:
        print(f"bench: unknown case(s) {', '.join(sorted(unknown))}; expected "
              f"{', '.join(CASES)}", file=sys.stderr)
        return 2
    command = "python bench/run.py " + " ".join(argv if argv is not None else sys.argv[1:])
    run_cases(args, mode, only, command.strip())
    return 0


def run_cases(args, mode, only, command):
    """Run the cases in order, saving the results after each; print the tables at the end."""
    short, info = common.machine(args.device)
    threads = common.blas_threads() if args.device == "cpu" else "-"
    rep = common.Report(args.device, threads)
    print(f"minireptile bench: {mode}, device {args.device} ({info.get('gpu', info['cpu'])}), "
          f"{common.DTYPE}, {threads} threads, cases {', '.join(only)}", flush=True)
    start = time.time()
    suffix = (f"-t{threads}" if args.device == "cpu" else "") + ("-quick" if args.quick else "")
    path = args.out or os.path.join(common.BENCH, "results",
                                    f"{short}-{args.device}{suffix}.json")
    settings = {"budget_s": common.BUDGET_S[mode], "min_repeats": common.MIN_REPEATS[mode],
                "gemm_n": common.GEMM_N[args.device], "dtype": common.DTYPE}

    def save(done):                # after every case, so a run cut short keeps its rows
        common.write_json(path, {
            "command": command, "mode": mode, "complete": done, "machine": info,
            "load_average": os.getloadavg(), "elapsed_s": time.time() - start,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "settings": settings,
            "rows": rep.rows, "ratios": rep.ratios, "notes": rep.notes,
            "table": rep.markdown()})

    for name in only:
        print(f"[{name}]", flush=True)
        try:
            RUNNERS[name](rep, mode, args)
        except Exception as exc:       # one broken case must not lose the others' results
            rep.note(f"{name} failed: {type(exc).__name__}: {exc}")
        save(False)
    save(True)
    print()
    print(rep.markdown())
    print(f"\nwrote {os.path.relpath(path)} ({time.time() - start:.0f} s)")


if __name__ == "__main__":
    sys.exit(main())
