"""The store's ``LOCK`` file: one writer per store.

A writer holds an exclusive ``flock`` on ``<store>/LOCK`` (through the
``filelock`` library) for as long as the store is open, and writes its PID
and host into the file for the error message of the next would-be writer.
A second writer — another process or another ``BacktraceStore`` in this one —
fails at once with ``StoreLockedError``. The kernel drops the lock when the
process dies (``kill -9`` included), so a crash never leaves a store locked.
Readers (``read_only=True``) take no lock and never write; ``filelock`` is
imported only when a writer makes its lock, so a read-only process never
pays for importing it. A reader may ask whether a writer is alive
(``writer_alive``): it tries a shared ``flock`` for an instant, so a writer
opening at that instant waits up to ``WRITER_WAIT_S`` instead of failing.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING

from bt_frames.errors import StoreLockedError
from bt_frames.storage import layout

if TYPE_CHECKING:
    import filelock

WRITER_WAIT_S = 0.25  # longer than any reader's probe holds its shared lock


class StoreLock:
    def __init__(self, root: Path) -> None:
        import filelock  # here, not at import: readers never take the lock

        self.path = root / layout.LOCK_NAME
        self._lock: filelock.FileLock = filelock.FileLock(
            self.path,
            timeout=WRITER_WAIT_S,
            thread_local=False,
            fallback_to_soft=False,
            preserve_lock_file=True,
            on_acquired=self._stamp,
        )

    @staticmethod
    def _stamp(fd: int) -> None:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid={os.getpid()} host={socket.gethostname()}\n".encode(), 0)

    def acquire(self) -> None:
        import filelock

        try:
            self._lock.acquire()
        except filelock.Timeout:
            try:
                holder = self.path.read_text().strip() or "unknown"
            except OSError:
                holder = "unknown"
            raise StoreLockedError(
                f"store {str(self.path.parent)!r} is locked by another writer ({holder}). "
                "Close the other BacktraceStore first, or open this one with read_only=True."
            ) from None

    def release(self) -> None:
        if self._lock.is_locked:
            self._lock.release()


def writer_alive(root: Path) -> bool:
    """True when a writer holds ``<root>/LOCK`` now (or when that cannot be told).

    A read-only recovery uses it to tell a crashed writer's leftovers, which
    the next writer will adopt, from a live writer's work in flight.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: assume a writer may be alive
        return True
    try:
        fd = os.open(root / layout.LOCK_NAME, os.O_RDONLY)
    except FileNotFoundError:
        return False  # no writer ever opened the store
    except OSError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)
