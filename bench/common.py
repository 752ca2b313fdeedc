"""What every benchmark case shares: settings, timing, the machine, the report.

Timing follows nanoGPT's discipline: one untimed warm-up call, ``synchronize()`` before
every clock read on the GPU, functions compared in a ratio timed in interleaved rounds (so
load from other processes hits both alike), the median and min-max per row. The report is
printed as a Markdown table and saved as JSON through a temporary file and a rename.

The BLAS thread count must be fixed before numpy is first imported, so ``bench/run.py``
sets it (``OPENBLAS_NUM_THREADS`` and friends) before importing this module.
"""
import json
import os
import platform
import statistics
import sys
import time

import numpy as np

from bench.cases import EVAL_ITERS, EVAL_SHOTS
from minireptile import backend

# -- settings ----------------------------------------------------------------------------
BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
BUDGET_S = {"full": 5.0, "quick": 1.0}        # timed seconds per measurement (after warm-up)
MIN_REPEATS = {"full": 3, "quick": 2}
MAX_REPEATS = 50
INNER_KS = {"full": (1, 2, 4, 8, 16, 32), "quick": (1, 8)}
INNER_MODELS = {"full": ("sine", "omniglot"), "quick": ("sine",)}
META_MODELS = {"full": ("sine", "omniglot", "miniimagenet"), "quick": ("sine", "omniglot")}
HVP_MODELS = {"full": ("sine", "omniglot", "miniimagenet"), "quick": ("sine", "omniglot")}
EFFICIENCY_MODELS = {"full": ("omniglot", "miniimagenet"), "quick": ("omniglot",)}
TORCH_MINIIMAGENET = {"full": True, "quick": False}
JAX_MINIIMAGENET = {"full": True, "quick": False}
EVAL_TASKS = {"full": 0, "quick": 5}   # tasks per evaluation pass (0: tasks_per_pass)
GEMM_N = {"cpu": 2048, "cuda": 8192}           # the "large float32 matrix product"
DTYPE = "float32"

TARGETS = {   # (ratio name, comparison, bound): the speeds issue 7 asks for (CPU, 2 cores)
    "omniglot reptile: fraction of GEMM FLOP/s": (">=", 0.35),
    "omniglot reptile: PyTorch loop / minireptile": (">=", 2.0),
    "miniimagenet reptile: PyTorch loop / minireptile": (">=", 1.5),
    "omniglot: hvp / grad": ("<=", 3.0),
    "sine maml k=32 n=25: PyTorch / minireptile": (">", 1.0),
    "sine reptile: loop / batched": (">=", 5.0),
}


# -- machine -----------------------------------------------------------------------------
def blas_threads():
    """The thread count fixed by ``bench/run.py`` before numpy was imported."""
    return int(os.environ["OPENBLAS_NUM_THREADS"])


def cpu_model():
    """The CPU's model name from /proc/cpuinfo, else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpu_name():
    """The name of CuPy's current GPU."""
    import cupy
    props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
    name = props["name"]
    return name.decode() if isinstance(name, bytes) else name


def machine(device):
    """A description of the machine, and its short name for the results file."""
    info = {"cpu": cpu_model(), "cpu_count": os.cpu_count(), "blas_threads": blas_threads(),
            "python": platform.python_version(), "numpy": np.__version__,
            "platform": platform.platform()}
    short = f"cpu{os.cpu_count()}"
    if device == "cuda":
        import cupy
        info["gpu"], info["cupy"] = gpu_name(), cupy.__version__
        short = info["gpu"].lower().replace("nvidia", "").strip().split()[0] or "gpu"
    return short, info


# -- timing ------------------------------------------------------------------------------
def sync():
    """Wait for the GPU (CuPy's stream, and PyTorch's when it is loaded); no-op on the CPU."""
    backend.synchronize()
    if backend.device() == "cuda" and "torch" in sys.modules:
        sys.modules["torch"].cuda.synchronize()


def measure(fns, mode):
    """Seconds per call of each function: one untimed warm-up each, then interleaved rounds.

    fns: {name: callable}. The number of rounds fills BUDGET_S[mode] (at least
    MIN_REPEATS, at most MAX_REPEATS). Returns {name: [seconds, ...]}.
    """
    for f in fns.values():
        f()
    sync()
    times = {name: [] for name in fns}
    rounds, r = MIN_REPEATS[mode], 0
    while r < rounds:
        for name, f in fns.items():
            sync()
            t0 = time.perf_counter()
            f()
            sync()
            times[name].append(time.perf_counter() - t0)
        if r == 0:
            per_round = sum(t[0] for t in times.values())
            rounds = int(min(MAX_REPEATS, max(rounds, BUDGET_S[mode] / max(per_round, 1e-9))))
        r += 1
    return times


def best_ms(fn, repeats):
    """Milliseconds of fn's fastest call of `repeats`, after one untimed warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return 1e3 * min(times)


def stats(ts):
    """Median, minimum and maximum of a list of seconds, in milliseconds."""
    return {"median_ms": 1e3 * statistics.median(ts), "min_ms": 1e3 * min(ts),
            "max_ms": 1e3 * max(ts), "repeats": len(ts)}


# -- report ------------------------------------------------------------------------------
ROW_KEYS = ("case", "config", "device", "dtype", "threads", "median_ms", "min_ms", "max_ms",
            "repeats")


class Report:
    """Rows of the table, headline ratios, notes; printed as Markdown and saved as JSON."""

    def __init__(self, device, threads):
        self.device, self.threads = device, threads
        self.rows, self.ratios, self.notes = [], {}, []

    def row(self, case, config, ts, threads=None, **extra):
        """A row of timings ts (seconds); threads: the row's own count, else the run's."""
        r = {"case": case, "config": config, "device": self.device, "dtype": DTYPE,
             "threads": self.threads if threads is None else threads, **stats(ts), **extra}
        self.rows.append(r)
        print(f"  {case:12s} {config:48s} {r['median_ms']:10.2f} ms", flush=True)

    def ratio(self, name, num, den):
        """A ratio of two medians (and of the two minima) measured in the same rounds."""
        value = statistics.median(num) / statistics.median(den)
        entry = {"value": value, "of_minima": min(num) / min(den)}
        if name in TARGETS and self.device == "cpu":
            op, bound = TARGETS[name]
            entry["target"] = f"{op} {bound}"
            entry["met"] = bool({">=": value >= bound, "<=": value <= bound,
                                 ">": value > bound}[op])
        self.ratios[name] = entry
        print(f"  ratio {name}: {value:.3f}", flush=True)

    def note(self, text):
        """A line printed under the tables."""
        self.notes.append(text)
        print(f"  note: {text}", flush=True)

    def markdown(self):
        """The rows' table, the ratios' table and the notes, as Markdown."""
        notes = [f"- {n}" for n in self.notes]
        return "\n".join(self._row_lines() + self._ratio_lines() + notes)

    def _row_lines(self):
        """The rows' table: one line per row, the extra keys (gflops, peak_mb...) last."""
        lines = ["| case | config | device | dtype | threads | median ms | min-max ms | "
                 "extra |", "|---|---|---|---|---|---:|---:|---|"]
        for r in self.rows:
            extra = ", ".join(f"{k}={_fmt(v)}" for k, v in r.items() if k not in ROW_KEYS)
            lines.append(f"| {r['case']} | {r['config']} | {r['device']} | {r['dtype']} | "
                         f"{r['threads']} | {r['median_ms']:.2f} | {r['min_ms']:.2f}-"
                         f"{r['max_ms']:.2f} | {extra} |")
        return lines

    def _ratio_lines(self):
        """The ratios' table, after a blank line; none when there are no ratios."""
        if not self.ratios:
            return []
        lines = ["", "| ratio (same run) | value | of minima | target |", "|---|---:|---:|---|"]
        for name, e in self.ratios.items():
            target = e.get("target", "")
            if target:
                target += " (met)" if e["met"] else " (MISSED)"
            lines.append(f"| {name} | {e['value']:.3f} | {e['of_minima']:.3f} | {target} |")
        return lines


def _fmt(v):
    """A value of a row's extra column: floats to 4 significant digits."""
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def eval_rows(rep, case, fns, tasks, mode, label, threads):
    """Time evaluation passes of `tasks` tasks; rows and the ratio in ms per task.

    fns: {"minireptile batched": ..., other: ...}; threads: the other side's count.
    """
    ts = {f: [t / tasks for t in v] for f, v in measure(fns, mode).items()}
    other = [f for f in fns if not f.startswith("minireptile")][0]
    for f in fns:
        rep.row(case, f"omniglot eval {f} 5-way {EVAL_SHOTS}-shot iters={EVAL_ITERS} "
                f"T={tasks}, per task", ts[f], threads=threads if f == other else None)
    rep.ratio(f"omniglot eval 5-way {EVAL_SHOTS}-shot: {label} / minireptile", ts[other],
              ts["minireptile batched"])


def write_json(path, data, indent=1):
    """Write data to path as JSON through a temporary file and a rename."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=indent)
        f.write("\n")
    os.replace(tmp, path)
