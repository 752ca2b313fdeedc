"""The meta-batch over processes and machines (MPI, through mpi4py), and between GPUs (NCCL).

Batched Reptile (Eq. 5) is the paper's link to SimuParallelSGD: every worker adapts to its
own tasks, and only the updates are averaged, once per meta-iteration. Under
``mpiexec -n R minireptile train ... --distributed mpi``:

    share      rank r takes a contiguous block of the n task indices (uneven splits are fine)
    sampling   task i draws from its own generator, seeded (seed, iteration, i)
               (``data.batches.task_rng``): the same tasks for every R and every rank
    reduce     one collective per meta-iteration carries what the outer update needs --
               sum_i Delta_i (Reptile's phi_i - theta, FOMAML's and MAML's meta-gradient
               steps), the losses, and with batched Adam the moments ``merge_tasks`` averages:
        default        local sums, then MPI_Allreduce(SUM): the rounding depends on R
        deterministic  MPI_Allgatherv of the per-task rows, then on every rank the one-process
                       sum in task order: bitwise the same result for every R
    root       rank 0 reads and writes checkpoints and logs; a checkpoint holds nothing of R
    GPUs       --device cuda: one GPU per rank, the collective on the devices through NCCL

Failures: a rank that fails leaves at once (``leave``), so that mpiexec stops the others
instead of leaving them waiting in a collective; a collective that waits more than
MINIREPTILE_MPI_TIMEOUT seconds (default 600) for the other ranks stops the run with a
one-line error. This is the only module that imports mpi4py, and only for --distributed mpi.
"""
import os
import pickle
import sys
import time

import numpy as np

from . import backend
from .errors import UserError

INSTALL = "pip install 'minireptile[mpi]'"
TIMEOUT = 600.0          # seconds a collective may wait for the other ranks


class Local:
    """One process holds the whole meta-batch: nothing to send."""
    rank, size, local_size, deterministic = 0, 1, 1, True

    def share(self, n):
        return range(n)

    def reducer(self, n):
        """None: ``meta.sum_tasks``, every task is here."""
        return None

    def gather(self, arrays, n):
        return arrays

    def from_root(self, fn):
        return fn()

    def describe(self):
        return "1 process"


LOCAL = Local()
_active = []             # the MPI communicator of this process's command, once made


def communicator(kind, deterministic=False):
    """LOCAL for kind 'none', else an ``Mpi`` over the processes mpiexec started."""
    if kind in (None, "none"):
        return LOCAL
    if kind != "mpi":
        raise UserError(f"--distributed {kind!r}: expected none or mpi")
    return Mpi(deterministic)


def _mpi():
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise UserError(f"--distributed mpi needs mpi4py and an MPI runtime: {INSTALL} "
                        f"(import failed: {exc})") from None
    return MPI


def _timeout():
    value = os.environ.get("MINIREPTILE_MPI_TIMEOUT", "").strip()
    try:
        seconds = float(value) if value else TIMEOUT
    except ValueError:
        seconds = -1
    if not seconds > 0:
        raise UserError(f"MINIREPTILE_MPI_TIMEOUT={value!r}: give a positive number of seconds")
    return seconds


class Mpi:
    """The processes of MPI_COMM_WORLD sharing each meta-batch, one GPU each with CUDA."""

    def __init__(self, deterministic=False):
        MPI = _mpi()
        self.MPI, self.comm = MPI, MPI.COMM_WORLD
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        node = self.comm.Split_type(MPI.COMM_TYPE_SHARED)          # the ranks on this machine
        self.local_rank, self.local_size = node.Get_rank(), node.Get_size()
        self.deterministic, self.timeout = deterministic, _timeout()
        self.sent = 0              # bytes this rank sent (ring algorithms' count), for bench/
        self.nccl = Nccl(self) if backend.device() == "cuda" else None
        _active.append(self)
        if self.size > 1:
            sys.excepthook = _leave_after(sys.excepthook)

    def describe(self):
        how = "deterministic all-gather" if self.deterministic else "all-reduce"
        dev = ", NCCL" if self.nccl else ""
        return f"{self.size} MPI ranks ({how}{dev})"

    def share(self, n, rank=None):
        """This rank's task indices: a contiguous block, the first n % R ranks one larger."""
        r = self.rank if rank is None else rank
        q, extra = divmod(n, self.size)
        return range(r * q + min(r, extra), (r + 1) * q + min(r + 1, extra))

    def reducer(self, n):
        """meta.py's reduce for a meta-batch of n tasks split by ``share``: arrays of this
        rank's tasks (n_here, ...) -> ([their sums over all n tasks], n), one collective."""
        def reduce(arrays):
            if self.deterministic:                  # the one-process sum, on every rank
                return [a.sum(axis=0) for a in self.gather(arrays, n)], n
            sums = self._allreduce(_pack([a.sum(axis=0)[None] for a in arrays]))  # (1, W)
            return [s[0] for s in _unpack(sums, arrays, 1)], n
        return reduce

    def gather(self, arrays, n):
        """Arrays of this rank's tasks (n_here, ...) -> the same arrays of all n tasks, in
        task order, on every rank (one collective)."""
        rows = _pack(arrays)                                        # (n_here, W)
        if backend.get_xp(rows) is not np:
            full = self.nccl.allgather(rows, [len(self.share(n, r)) for r in range(self.size)])
        else:
            counts = [len(self.share(n, r)) * rows.shape[1] for r in range(self.size)]
            full = np.empty((n, rows.shape[1]), rows.dtype)
            self._wait(self.comm.Iallgatherv(rows, [full, counts]), "an all-gather")
        self.sent += full.nbytes * (self.size - 1) // self.size        # ring all-gather
        return _unpack(full, arrays, n)

    def _allreduce(self, buf):
        """The sum over ranks of buf (1, W), in place of an MPI_Allreduce or ncclAllReduce."""
        if backend.get_xp(buf) is not np:
            out = self.nccl.allreduce(buf)
        else:
            out = np.empty_like(buf)
            self._wait(self.comm.Iallreduce(buf, out, op=self.MPI.SUM), "an all-reduce")
        self.sent += buf.nbytes * 2 * (self.size - 1) // self.size     # ring all-reduce
        return out

    def from_root(self, fn):
        """fn() run on rank 0 and its result sent to every rank; a UserError it raises is
        raised on every rank (so that the run stops everywhere with one message)."""
        if self.rank == 0:
            try:
                outcome = ("ok", fn())
            except UserError as exc:
                outcome = ("error", str(exc))
            data = np.frombuffer(pickle.dumps(outcome), np.uint8)  # sent to the job's
            # own ranks, never stored (checkpoints hold no pickle)
            size = np.array([data.size], np.int64)
        else:
            size = np.zeros(1, np.int64)
        self._wait(self.comm.Ibcast(size, root=0), "a broadcast")
        if self.rank != 0:
            data = np.empty(int(size[0]), np.uint8)
        self._wait(self.comm.Ibcast(data, root=0), "a broadcast")
        kind, value = outcome if self.rank == 0 else pickle.loads(data.tobytes())
        if kind == "error":
            raise UserError(value)
        return value

    def _wait(self, request, what):
        """Wait for a non-blocking collective, at most self.timeout seconds."""
        deadline, pause = time.monotonic() + self.timeout, 1e-5
        while not request.Test():
            if time.monotonic() > deadline:
                raise UserError(f"rank {self.rank} of {self.size}: no answer from the other "
                                f"ranks in {what} for {self.timeout:g} s (a rank died or "
                                f"hangs; MINIREPTILE_MPI_TIMEOUT sets the limit); stopping")
            time.sleep(pause)
            pause = min(2 * pause, 1e-3)


def _leave_after(hook):
    """An excepthook that prints an uncaught exception (a bug) and then leaves at once, as
    ``leave`` does, instead of waiting in MPI_Finalize."""
    def excepthook(*exc_info):
        hook(*exc_info)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)
    return excepthook


def _pack(arrays):
    """Per-task arrays (n, ...) -> one contiguous (n, W) buffer, in the first one's dtype."""
    xp, n = backend.get_xp(arrays[0]), arrays[0].shape[0]
    return xp.ascontiguousarray(xp.concatenate(
        [a.reshape(n, _width(a)).astype(arrays[0].dtype, copy=False) for a in arrays], axis=1))


def _width(a):
    return int(np.prod(a.shape[1:], dtype=np.int64))


def _unpack(rows, like, n):
    """The inverse of _pack: rows (n, W) -> arrays shaped like `like` with n rows, each
    contiguous like the arrays a process makes itself (so that summing them runs the same
    reduction as summing those)."""
    xp, out, at = backend.get_xp(rows), [], 0
    for a in like:
        width = _width(a)
        part = rows[:, at:at + width].reshape((n,) + a.shape[1:]).astype(a.dtype, copy=False)
        out.append(xp.ascontiguousarray(part))
        at += width
    return out


class Nccl:
    """NCCL between the ranks' GPUs (cupy.cuda.nccl): the reduce stays on the devices.

    Rank r uses GPU (its rank on the node) mod (GPUs on the node); the NCCL id travels by MPI.
    """

    def __init__(self, mpi):
        cupy = backend.xp()
        cupy.cuda.Device(mpi.local_rank % cupy.cuda.runtime.getDeviceCount()).use()
        try:
            nccl = cupy.cuda.nccl
            uid = nccl.get_unique_id() if mpi.rank == 0 else None
        except (AttributeError, ImportError, RuntimeError) as exc:
            raise UserError(f"--distributed mpi --device cuda needs NCCL in CuPy "
                            f"(pip install nvidia-nccl-cu12): {exc}") from None
        self.cupy, self.nccl, self.mpi = cupy, nccl, mpi
        self.comm = nccl.NcclCommunicator(mpi.size, mpi.comm.bcast(uid, root=0), mpi.rank)
        self.types = {np.dtype(np.float32): nccl.NCCL_FLOAT32,
                      np.dtype(np.float64): nccl.NCCL_FLOAT64}

    def allreduce(self, buf):
        out, stream = self.cupy.empty_like(buf), self.cupy.cuda.get_current_stream()
        self.comm.allReduce(buf.data.ptr, out.data.ptr, buf.size, self.types[buf.dtype],
                            self.nccl.NCCL_SUM, stream.ptr)
        self._wait(stream, "an NCCL all-reduce")
        return out

    def allgather(self, rows, counts):
        """Rows (counts[rank], W) of every rank, in rank order: (sum(counts), W). NCCL gathers
        equal blocks, so each is padded to max(counts) rows."""
        pad = self.cupy.zeros((max(counts), rows.shape[1]), rows.dtype)
        pad[:len(rows)] = rows
        full = self.cupy.empty((len(counts),) + pad.shape, rows.dtype)
        stream = self.cupy.cuda.get_current_stream()
        self.comm.allGather(pad.data.ptr, full.data.ptr, pad.size, self.types[rows.dtype],
                            stream.ptr)
        self._wait(stream, "an NCCL all-gather")
        return self.cupy.concatenate([full[r, :c] for r, c in enumerate(counts)])

    def _wait(self, stream, what):
        deadline = time.monotonic() + self.mpi.timeout
        while not stream.done:
            if time.monotonic() > deadline:
                raise UserError(f"rank {self.mpi.rank}: {what} waited more than "
                                f"{self.mpi.timeout:g} s (a rank died or hangs); stopping")
            time.sleep(1e-4)


def leave(code, message=None):
    """Print a command's closing message (its one-line error) and return its exit status;
    under MPI with more than one rank, a failing rank exits at once.

    A rank that returned normally would wait in MPI_Finalize for ranks that may be waiting in
    a collective for it: os._exit instead makes mpiexec stop the whole job. A rank other than
    0 first waits a second, so that when every rank fails alike (bad input), rank 0's message
    and exit come first and mpiexec stops the others before they repeat the message.
    """
    many = code and _active and _active[-1].size > 1
    if many and _active[-1].rank != 0:
        time.sleep(1.0)
    if message:
        print(message, file=sys.stderr)
    if many:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code
