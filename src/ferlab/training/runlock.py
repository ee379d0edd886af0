"""One process trains in a run directory at a time. `ferlab train` holds RUN/.lock from before it
reads the run's config.json until it exits, and `fit` holds it too (tune and reproduce), so a second
`ferlab train --resume --out RUN` is refused in one line naming the run and the holder's pid,
instead of both training and leaving config.json, last.pt and metrics.csv inconsistent.

The lock is fcntl.flock (msvcrt.locking on Windows) on the open file: the operating system releases
it when its process ends, however it ends, so the lock of a killed run never blocks the resume. The
file stays in the run directory; it holds the holder's pid while held and is empty after. Under
torchrun only rank 0 takes it.
"""

import os
from contextlib import contextmanager
from pathlib import Path

from ferlab.errors import FerlabError

try:
    import fcntl
except ImportError:   # Windows
    fcntl = None
try:
    import msvcrt
except ImportError:
    msvcrt = None

LOCK_FILE = ".lock"
MSVCRT_BYTE = 1 << 20    # msvcrt locks a byte range others cannot read: lock one far past the pid
_held: set[str] = set()  # run directories this process holds, so that fit inside `ferlab train` re-enters


def _try_lock(fd: int) -> bool:
    """Take the lock on fd without waiting; False when another process holds it. Where the platform
    has neither fcntl nor msvcrt, nothing is locked (True)."""
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        elif msvcrt is not None:
            os.lseek(fd, MSVCRT_BYTE, os.SEEK_SET)
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
    except OSError:
        return False
    return True


@contextmanager
def run_lock(run, main: bool = True):
    """Hold RUN/.lock while the block runs, or FerlabError naming the run and the pid of the process
    that holds it. Nothing on ranks other than 0 (main False) or when this process holds it already."""
    key = os.path.realpath(run)
    if not main or key in _held:
        yield
        return
    path = Path(run) / LOCK_FILE
    try:
        Path(run).mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as e:
        raise FerlabError(f"{path}: cannot write there ({e.strerror or e})") from None
    try:
        if not _try_lock(fd):
            holder = path.read_text(errors="replace").strip()
            who = f"pid {holder}" if holder.isdigit() else "a process that is just starting"
            raise FerlabError(f"{run}: another ferlab process ({who}) is training in this run directory; "
                              "wait for it to end (or stop it) and try again")
        _write(fd, str(os.getpid()))
        _held.add(key)
        try:
            yield
        finally:
            _held.discard(key)
            _write(fd, "")
    finally:
        os.close(fd)   # releases the lock


def _write(fd: int, text: str) -> None:
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, text.encode())
