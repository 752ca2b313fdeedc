"""Progress of long work: one updating line on a terminal, plain lines every few seconds otherwise.

    iter   1200/3000   20.1 it/s  left     90s  loss 1.6699  test acc  85.0%
    eval test    600/2000 tasks   55.3 tasks/s  left     25s

Log files (stdout not a terminal) get whole lines, never carriage returns; so do the ranks
of an ``mpiexec`` run, whose pseudo-terminal passes on whole lines only.
"""
import os
import sys
import time

MPIEXEC = ("OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK")   # Open MPI, PMIx, MPICH: set
# for each rank. mpiexec gives a rank a pseudo-terminal (isatty() is True) but forwards a
# line only at its newline, so an updated line would show nothing until the work ends.


class Progress:
    """Count ``done`` out of ``total`` units; ``update`` redraws, ``close`` ends the line.

    label: printed first ("iter", "eval test"); unit: the rate's unit ("it", "tasks");
    every: seconds between plain lines when the stream is not a terminal.
    """

    def __init__(self, total, start=0, stream=None, label="iter", unit="it", every=10.0):
        self.total, self.start, self.label, self.unit = total, start, label, unit
        self.stream, self.every = stream or sys.stderr, every
        self.tty = (hasattr(self.stream, "isatty") and self.stream.isatty()
                    and not any(name in os.environ for name in MPIEXEC))
        self.t0 = self.last = time.time()
        self.shown = None

    def update(self, done, extra="", force=False):
        """Show done/total with the rate and time left; extra: text appended (loss, accuracy)."""
        now = time.time()
        wait = 0.2 if self.tty else self.every        # redraw a terminal line 5 times a second
        if done == self.shown or not (force or now - self.last >= wait):
            return
        self.last, self.shown = now, done
        rate = (done - self.start) / max(now - self.t0, 1e-9)
        left = (self.total - done) / rate if rate > 0 else float("nan")
        width = len(str(self.total))
        line = (f"{self.label} {done:>{width}}/{self.total}  {rate:6.2f} {self.unit}/s  "
                f"left {left:6.0f}s{'  ' + extra if extra else ''}")
        self.stream.write(("\r" + line + "\033[K") if self.tty else line + "\n")
        self.stream.flush()

    def close(self):
        if self.tty and self.shown is not None:
            self.stream.write("\n")
            self.stream.flush()
