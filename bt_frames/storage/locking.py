"""The store's ``LOCK`` file: one writer per store.

A writer holds an exclusive ``flock`` on ``<store>/LOCK`` (through the
``filelock`` library) for as long as the store is open, and writes its PID
and host into the file for the error message of the next would-be writer.
A second writer — another process or another ``BacktraceStore`` in this one —
fails at once with ``StoreLockedError``. The kernel drops the lock when the
process dies (``kill -9`` included), so a crash never leaves a store locked.
Readers (``read_only=True``) take no lock and never write; ``filelock`` is
imported only when a writer makes its lock, so a read-only process never
pays for importing it.
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


class StoreLock:
    def __init__(self, root: Path) -> None:
        import filelock  # here, not at import: readers never take the lock

        self.path = root / layout.LOCK_NAME
        self._lock: filelock.FileLock = filelock.FileLock(
            self.path,
            timeout=0,
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
