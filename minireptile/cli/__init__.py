"""The ``minireptile`` command: one sub-command per module of this package.

Each module here has ``register(subparsers)``, which adds its sub-command(s) and sets
``func`` to a function taking the parsed arguments. Library code never sees argparse:
these modules turn flags into keyword arguments.

Bad input (``UserError``) is printed as one line and exits with status 2; Ctrl-C exits
with status 130.
"""
import argparse
import importlib
import os
import sys

from .. import backend
from ..errors import UserError

COMMANDS = ("gradcheck", "data", "train", "sine")


def build_parser():
    parser = argparse.ArgumentParser(
        prog="minireptile",
        description="Reptile, first-order MAML and exact MAML in NumPy/CuPy "
                    "(Nichol, Achiam, Schulman 2018, arXiv:1803.02999).")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMANDS:
        importlib.import_module(f"{__name__}.{name}").register(sub)
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


def _cpus():
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if hasattr(args, "threads"):
        backend.set_threads(args.threads or int(os.environ.get("MINIREPTILE_THREADS", "0"))
                            or _cpus())
    try:
        return args.func(args) or 0
    except UserError as exc:
        print(f"minireptile: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("minireptile: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
