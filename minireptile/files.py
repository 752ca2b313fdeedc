"""Writing files safely: every write atomic, one writer per run folder, outputs checked first.

    atomic_write, write_json, write_text   a temporary file beside the target, flushed, then
                                           renamed over it, the folder flushed after
    locked(path), holder, Busy             one writer of a run folder or output at a time
                                           (an exclusive flock on PATH.lock)
    make_folder, output_file               a folder or file that can be written, or one line
    interrupts_kept                        Ctrl-C swallowed inside a block, raised at its end

Every command writes through these: checkpoints and logs (``checkpoint.py``), results and
reports, datasets, figures.
"""
import contextlib
import fcntl
import itertools
import json
import os
import re
import socket
import sys

from .errors import UserError

_HOST = socket.gethostname()
_COUNTER = itertools.count()
_HELD = {}                # lock file -> [fd, depth]: the locks this process holds


def atomic_write(path, write):
    """Call write(file_object) on a temporary file beside path, then rename it to path."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        write(f)


def write_json(path, obj):
    """obj as indented JSON at path, through ``atomic_write``."""
    write_text(path, json.dumps(obj, indent=2) + "\n")


def write_text(path, text):
    """text (UTF-8) at path, through ``atomic_write``."""
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


@contextlib.contextmanager
def atomic_path(path):
    """Yield a new temporary file's path beside `path`; when the block ends, rename it to `path`.

    The file is flushed to disk before the rename, so `path` always holds either its old
    content or the whole new one, and it gets a new file's permissions (the umask). An
    exception, Ctrl-C or SIGTERM (the CLI raises it as KeyboardInterrupt) removes it. It is
    named ``.NAME.HOST-PID-N.tmp``, so that the next write to `path` removes those left by a
    killed process (SIGKILL, a crash) of this host: the ones whose PID no longer runs.
    """
    folder, name = os.path.split(os.path.abspath(path))
    _remove_stale(folder, name)
    for n in _COUNTER:                                   # unique in this process
        tmp = os.path.join(folder, f".{name}.{_HOST}-{os.getpid()}-{n}.tmp")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            break
        except FileExistsError:                          # left by a dead process of our PID
            continue
    try:
        with interrupts_kept():                          # a swallowed Ctrl-C: no rename
            yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        _fsync_folder(folder)                            # the rename itself, on disk
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, OSError):                     # a full disk, ulimit -f, ...
            kept = "its previous content is kept" if os.path.exists(path) else "not written"
            raise UserError(f"{path}: cannot write it ({exc.strerror or exc}); {kept}") \
                from None
        raise


def _fsync_folder(folder):
    """Flush a folder's entries (a rename) to disk; a no-op where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def interrupts_kept():
    """Raise, when the block ends, a Ctrl-C (or the CLI's SIGTERM) that Python swallowed in it.

    Python runs a signal's handler at the next line of Python code, which may be a ``__del__``
    or a weakref callback (h5py runs many while it writes); a KeyboardInterrupt raised there
    is printed as "Exception ignored" and lost, and the work would go on as if never stopped.
    Here it is kept and raised at the end of the block instead.
    """
    kept, hook = [], sys.unraisablehook

    def keep(unraisable):
        if isinstance(unraisable.exc_value, KeyboardInterrupt):
            kept.append(unraisable.exc_value)
        else:
            hook(unraisable)

    sys.unraisablehook = keep
    try:
        yield
    finally:
        sys.unraisablehook = hook
    if kept:
        raise kept[0]


def _remove_stale(folder, name):
    """Remove the temporary files of folder/name whose process (of this host) is gone."""
    pattern = re.compile(re.escape(f".{name}.{_HOST}-") + r"(\d{1,9})-\d+\.tmp")
    for entry in os.listdir(folder):
        match = pattern.fullmatch(entry)
        if match and not alive(int(match.group(1))):
            with contextlib.suppress(FileNotFoundError):  # another writer removed it first
                os.unlink(os.path.join(folder, entry))


class Busy(UserError):
    """Another live process holds the lock (``holder``: "pid P on HOST")."""

    def __init__(self, path, holder):
        super().__init__(f"{path}: {holder} is writing it; let it finish (or stop it) first")
        self.holder = holder


@contextlib.contextmanager
def locked(path):
    """Hold the lock of a run folder or output file for the block: one writer at a time.

    Every writer takes it -- ``train`` on its checkpoint folder, ``eval --out`` into a run
    folder, each run of ``reproduce`` and of its ``--jobs`` -- so a second one gets ``Busy``
    naming the first (the lock file holds "pid P on HOST"). It is an exclusive ``flock`` on
    PATH.lock beside the folder or file, which the system releases when its process ends
    however it ends: no stale lock to break, no race between two that find one. Taken again
    by the process that holds it, it is held once more (a reproduce run calling train.run).
    """
    lock = os.path.abspath(path).rstrip(os.sep) + ".lock"
    if lock in _HELD:
        _HELD[lock][1] += 1
        try:
            yield
        finally:
            _HELD[lock][1] -= 1
        return
    os.makedirs(os.path.dirname(lock), exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 200).decode(errors="replace").strip() or "another process"
        os.close(fd)
        raise Busy(path, holder) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, process_name().encode(), 0)
    _HELD[lock] = [fd, 1]
    try:
        yield
    finally:
        if _HELD[lock][1] == 1:
            del _HELD[lock]
            os.ftruncate(fd, 0)
            os.close(fd)                                 # releases the flock


def holder(path):
    """The live process holding path's lock ("pid P on HOST"), or None. A process that has
    ended holds none, though some kernels (gVisor's) keep its flock until it is reaped: a
    parent polling its own --jobs child would otherwise wait on it for ever."""
    try:
        with locked(path):
            return None
    except Busy as busy:
        return busy.holder if running(busy.holder) else None


def process_name():
    """This process as locks and checkpoints name the one that wrote them: "pid P on HOST"."""
    return f"pid {os.getpid()} on {_HOST}"


def running(name):
    """Whether the process named "pid P on HOST" (``process_name``) still runs; one of
    another host is assumed to run, and a name this code did not write names no process."""
    try:
        pid, host = name.removeprefix("pid ").split(" on ", 1)
        pid = int(pid)
    except ValueError:
        return False
    return host != _HOST or alive(pid)


def alive(pid):
    """Whether process pid runs on this host (when in doubt, and off POSIX, say it does)."""
    if os.name != "posix":                               # os.kill(pid, 0) would end it
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:                              # another user's process
        pass
    try:                                                 # ended, not yet reaped by its parent
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):                        # no /proc (macOS): it runs
        return True


def make_folder(folder, what="folder"):
    """Make folder (and its parents) unless it exists; one-line UserError naming `what` when
    it cannot be made: a file in the way, no permission. One call to os.makedirs decides, so
    MPI ranks making the same folder at once all succeed (a check before it would race)."""
    try:
        os.makedirs(folder, exist_ok=True)
    except FileExistsError:                          # exists, but is not a folder
        raise UserError(f"{what} {folder}: exists and is not a folder") from None
    except OSError as exc:
        raise UserError(f"{what} {folder}: cannot be made ({exc.strerror})") from None


def output_file(path, what="output"):
    """Before any work: path can be written as a file (its folder made when missing), or a
    one-line UserError naming `what`."""
    if os.path.isdir(path):
        raise UserError(f"{what} {path}: is a folder; give a file name")
    make_folder(os.path.dirname(os.path.abspath(path)), what)
