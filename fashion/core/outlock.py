"""One run per output folder (`generate_dataset.py --out`, `detect.py --list --out`): an flock on
`OUT/.ingest.lock` held for the whole run.

The kernel releases an flock when its holder dies (Ctrl-C, crash, kill -9), so a stale lock never
blocks a rerun; the file only carries the holder's pid for the refusal message. An object store
(`s3://`, `gs://`: storage.RemotePath) has no such lock: there the run goes on unlocked, and says so.
The lowest layer: imports nothing of ours but errors and storage.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path

from fashion.core.errors import IngestError
from fashion.core.storage import RemotePath

LOCK_NAME = ".ingest.lock"


def _pid_in(fd: int) -> str:
    try:
        return os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"
    except OSError:
        return "?"


@contextlib.contextmanager
def hold(out: Path | RemotePath, command: str = "generate_dataset.py") -> Iterator[None]:
    """Lock `out` (created if missing) or raise IngestError naming the run that holds it.

    A refused run changes nothing in `out`. On release the lock file is removed, and `out`
    too when this run created it and left it empty (a refused or empty list writes nothing).
    """
    if isinstance(out, RemotePath):
        print(f"note: {out} is on an object store, which has no lock: do not start two runs into it at once")
        yield
        return
    out = Path(out)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    path = out / LOCK_NAME
    try:
        fd = _acquire(path, command)
    except BaseException:
        if created:
            with contextlib.suppress(OSError):
                out.rmdir()
        raise
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        # Unlink while still holding it: a run that opened the old file finds it gone and retries.
        with contextlib.suppress(OSError):
            path.unlink()
        os.close(fd)
        if created:
            with contextlib.suppress(OSError):
                out.rmdir()  # only succeeds when empty


def _try_lock(fd: int) -> bool:
    # `holder` (a --verify) holds a shared lock for microseconds: retry briefly before calling it a writer
    for wait in (0.0, 0.05, 0.1, 0.2):
        time.sleep(wait)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            pass
    return False


def _acquire(path: Path, command: str) -> int:
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            locked = _try_lock(fd)
        except BaseException:
            os.close(fd)
            raise
        if not locked:
            pid = _pid_in(fd)
            os.close(fd)
            raise IngestError(
                f"{path.parent} is being written by another {command} run (pid {pid}); "
                f"wait for it to end or stop it, then rerun (nothing was changed)"
            )
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # the holder released and removed this file between our open and flock


def holder(out: Path) -> str | None:
    """The pid of the run writing `out`, or None; read-only (creates nothing, takes no lasting lock)."""
    try:
        fd = os.open(Path(out) / LOCK_NAME, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _pid_in(fd)
    except OSError:
        return None
    finally:
        os.close(fd)
    return None
