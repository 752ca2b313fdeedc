"""The ``minireptile`` command: one sub-command per module of this package.

Each module here has ``register(subparsers)``, which adds its sub-command(s) and sets
``func`` to a function taking the parsed arguments. Library code never sees argparse:
these modules turn flags into a configuration or keyword arguments and call the library
(``train.run``, ``evaluate.run``, ``sine.run``, ``reproduce.run``, ...).

Bad input (``UserError``) is printed as one line and exits with status 2. Ctrl-C exits with
status 130 and SIGTERM with 143; both unwind as ``KeyboardInterrupt``, so a command cleans up
(temporary files, a last checkpoint) the same way for either. Under ``mpiexec`` a failing
rank leaves at once, so that the others do not wait for it (``distributed.leave``).
"""
import argparse
import contextlib
import os
import signal
import sys
import threading

from .. import __version__, distributed, parallel
from ..files import interrupts_kept
from ..errors import UserError


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised wherever the program is, so that it unwinds like Ctrl-C."""


def build_parser():
    parser = argparse.ArgumentParser(
        prog="minireptile",
        description="Reptile, first-order MAML and exact MAML in NumPy/CuPy "
                    "(Nichol, Achiam, Schulman 2018, arXiv:1803.02999).",
        epilog="`minireptile COMMAND --help` describes a command and its flags.")
    parser.add_argument("--version", action="version", version=f"minireptile {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    from . import data, demo, gradcheck, reproduce, sine, theory, train
    for command in (gradcheck, data, train, sine, demo, theory, reproduce):
        command.register(sub)
    return parser


def add_device_flags(parser, dtype=True):
    """--device cpu|cuda (default: $MINIREPTILE_DEVICE or cpu) and --seed."""
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None,
                        help="array backend: cpu (NumPy) or cuda (CuPy); "
                             "default $MINIREPTILE_DEVICE or cpu")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the run's random generator (default 0)")
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="CPU threads: N workers over the tasks of a batched pass, one "
                             "BLAS thread each (default $MINIREPTILE_THREADS or the number "
                             "of CPUs)")
    if dtype:
        parser.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                            help="floating-point precision (default float32)")


def add_distributed_flags(parser):
    """--distributed none|mpi and --deterministic (train, eval, sine, reproduce)."""
    parser.add_argument("--distributed", choices=("none", "mpi"), default="none",
                        help="mpi: split the tasks of every meta-batch and evaluation over "
                             "the processes of `mpiexec -n R` (needs pip install "
                             "'minireptile[mpi]'); default none")
    parser.add_argument("--deterministic", action="store_true",
                        help="with --distributed mpi: gather the per-task updates and sum "
                             "them in task order, so that any number of processes gives "
                             "bitwise the same parameters (n/2 times the bytes sent)")


def start_distributed(args):
    """The communicator of --distributed (``distributed.LOCAL`` for none). Under MPI, CPU
    threads default to the cores shared by the ranks of a machine (R x threads = cores)."""
    comm = distributed.communicator(args.distributed, args.deterministic)
    if comm.local_size > 1 and args.threads is None and not os.environ.get(
            "MINIREPTILE_THREADS", "").strip():
        parallel.set_threads(max(1, _cpus() // comm.local_size))
    return comm


def _cpus():
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def _threads(flag):
    """The number of CPU threads: --threads N, else $MINIREPTILE_THREADS, else the CPUs."""
    if flag is not None:
        if flag < 1:
            raise UserError(f"--threads {flag}: give a positive number of threads")
        return flag
    value = os.environ.get("MINIREPTILE_THREADS", "").strip()
    if not value:
        return _cpus()
    if not value.isdigit() or int(value) < 1:
        raise UserError(f"MINIREPTILE_THREADS={value!r}: give a positive number of threads")
    return int(value)


def _terminate(signum, frame):
    raise Terminated


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """Within the block, SIGTERM raises Terminated (on the main thread: only it gets signals)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous or signal.SIG_DFL)


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:                     # no sub-command: what there is to run
        parser.print_help(sys.stderr)
        return 2
    try:
        with _sigterm_as_interrupt(), interrupts_kept():
            if hasattr(args, "threads"):
                parallel.set_threads(_threads(args.threads))
            return args.func(args) or 0
    except UserError as exc:
        return distributed.leave(2, f"minireptile: error: {exc}")
    except KeyboardInterrupt as exc:
        terminated = isinstance(exc, Terminated)
        return distributed.leave(128 + (signal.SIGTERM if terminated else signal.SIGINT),
                                 f"minireptile: {'terminated' if terminated else 'interrupted'}")


if __name__ == "__main__":
    sys.exit(main())
