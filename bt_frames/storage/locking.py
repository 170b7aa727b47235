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

Who wrote a file: ``process_tag()`` names this process (host, PID and the
PID's start time, so a recycled PID is a different process), and
:func:`process_alive` tells whether the process a tag names still runs. A
large append's parts carry their writer's tag: a reader that finds a
complete set no manifest version names knows whether it is in flight (its
writer lives: it may still commit or remove it) or left by a crash (the
next writer adopts it).
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


def _start_time(pid: int) -> str | None:
    """The start time of process ``pid`` in clock ticks since boot (Linux); None where unknown or
    when the process has exited (a zombie, not yet reaped by its parent, is gone too)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # "pid (comm) state ppid ...": comm may hold spaces and parentheses; field 22 is the start time
    fields = stat[stat.rindex(b")") + 2 :].split()
    return None if fields[0] in (b"Z", b"X") else fields[19].decode()


_TAG: tuple[int, str] | None = None


def process_tag() -> str:
    """This process as ``host/pid/start``: unique on the host even when PIDs are reused (and made again
    in a forked child, which is another process)."""
    global _TAG
    pid = os.getpid()
    if _TAG is None or _TAG[0] != pid:
        _TAG = (pid, f"{socket.gethostname()}/{pid}/{_start_time(pid) or '?'}")
    return _TAG[1]


def process_alive(tag: str) -> bool:
    """Whether the process ``tag`` (a ``process_tag()``) names may still run.

    True when that cannot be told: another host, a malformed tag, a PID we
    may not signal. False only when the process is certainly gone.
    """
    if tag == process_tag():
        return True
    host, _, rest = tag.partition("/")
    pid_text, _, start = rest.partition("/")
    if host != socket.gethostname() or not pid_text.isdigit():
        return True
    pid = int(pid_text)
    if os.path.isdir("/proc/self"):
        now = _start_time(pid)
        return now is not None and (start == "?" or now == start)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True
