"""The block writer: frozen hot runs become Parquet blocks in a background thread, oldest first.

In-memory contract:

- ``frozen`` is the queue of ``hot.Frozen`` runs handed over, in LSN order.
  A run stays in the queue -- its rows hot, in the WAL and seen by scans --
  until its block's manifest version is committed, and only the oldest run
  is ever written: a later block is never published before an earlier one.
- Every method but the thread body runs under ``lock`` (the table's); the
  thread takes it only around ``prepare`` and ``publish``, so appends go on
  while a block is encoded, written and fsynced, and while the clean-up after
  it touches the file system.
- One write at a time, in four steps the table supplies:
  ``prepare(run)`` (under the lock: what the publish will clean up),
  ``write(run, ctx) -> BlockInfo`` (no lock: the block file and its manifest
  version, the commit point; raises if nothing was committed),
  ``publish(run, info, ctx) -> done`` (under the lock: the run leaves the
  queue; only in-memory work, so that an append never waits for a file
  system call of the block writer), and ``settle(done)`` (no lock: deleting
  what the block made redundant, caches; never raises). The thread stays
  ``draining`` until ``settle`` has returned.
- A failed write records its exception on the run (``run.error``) and stops
  the thread; nothing later is written until ``retry()`` clears it. Every
  observer calls ``wait_idle()`` first, so what it sees is as if freezing
  were synchronous.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from bt_frames.storage import blocks as blk
from bt_frames.storage.hot import Frozen

log = logging.getLogger("bt_frames")

# While a block is written, threads waiting for the GIL (appenders back from their fdatasync) get it after
# this long instead of Python's default 5 ms: the writer's Python work (statistics, Parquet set-up) would
# otherwise hold it for whole 5 ms slices at a time. Process-wide, so it is set by the first writer to
# start and given back by the last to stop, unless someone else changed it meanwhile.
WRITER_SWITCH_INTERVAL_S = 0.001
_switch_lock = threading.Lock()
_switch_users = 0
_switch_saved = 0.0


def _writer_started() -> None:
    global _switch_users, _switch_saved
    with _switch_lock:
        _switch_users += 1
        if _switch_users == 1:
            _switch_saved = sys.getswitchinterval()
            if _switch_saved > WRITER_SWITCH_INTERVAL_S:
                sys.setswitchinterval(WRITER_SWITCH_INTERVAL_S)


def _writer_stopped() -> None:
    global _switch_users
    with _switch_lock:
        _switch_users -= 1
        if _switch_users == 0 and sys.getswitchinterval() == WRITER_SWITCH_INTERVAL_S < _switch_saved:
            sys.setswitchinterval(_switch_saved)


class BlockWriter:
    def __init__(
        self,
        lock: threading.RLock,
        name: str,
        *,
        prepare: Callable[[Frozen], Any],
        write: Callable[[Frozen, Any], blk.BlockInfo],
        publish: Callable[[Frozen, blk.BlockInfo, Any], Any],
        settle: Callable[[Any], None] = lambda done: None,
    ) -> None:
        self.lock = lock
        self.cond = threading.Condition(lock)
        self.name = name
        self.frozen: list[Frozen] = []
        self.draining = False
        self._prepare, self._write, self._publish, self._settle = prepare, write, publish, settle
        self._pool: ThreadPoolExecutor | None = None

    @property
    def rows(self) -> int:
        return sum(e.rows for e in self.frozen)

    def failed(self) -> list[Frozen]:
        return [e for e in self.frozen if e.error is not None]

    def hand(self, run: Frozen) -> None:
        """Queue a run (under the lock); ``retry()`` or ``kick()`` starts the thread."""
        self.frozen.append(run)

    def retry(self) -> None:
        """Forget earlier failures and start the thread (under the lock)."""
        for e in self.frozen:
            e.error = None
        self.kick()

    def kick(self) -> None:
        """Start the thread if it is idle and the oldest run has not failed (under the lock)."""
        if self.draining or not self.frozen or self.frozen[0].error is not None:
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"bt_frames-freeze-{self.name}")
        self.draining = True
        self._pool.submit(self._drain)

    def wait_idle(self) -> None:
        """Wait until the thread is idle (under the lock: waiting releases it)."""
        while self.draining:
            self.cond.wait()

    def wait_below(self, runs: int) -> None:
        """Back-pressure: wait while more than ``runs`` runs are queued and being written."""
        while self.draining and len(self.frozen) > runs:
            self.cond.wait()

    def shutdown(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None

    def _drain(self) -> None:
        _writer_started()
        try:
            while True:
                with self.lock:
                    if not self.frozen or self.frozen[0].error is not None:
                        return
                    run = self.frozen[0]
                    ctx = self._prepare(run)
                try:
                    info = self._write(run, ctx)
                except BaseException as e:  # the rows stay hot and in the WAL; reported and retried later
                    with self.lock:
                        run.error = e
                    log.warning("table %r: writing the block of LSNs %d-%d failed: %s", self.name, run.first,
                                run.last, e)  # fmt: skip
                    return
                with self.lock:
                    self.frozen.remove(run)
                    done = self._publish(run, info, ctx)
                    self.cond.notify_all()
                try:
                    self._settle(done)  # appends go on meanwhile
                except Exception as e:  # pragma: no cover - settle logs its own failures
                    log.warning("table %r: cleaning up after a block failed: %s", self.name, e)
        finally:
            _writer_stopped()
            with self.lock:
                self.draining = False
                self.cond.notify_all()
