"""Auto-compaction: merging small adjacent blocks in the background (``storage/compaction.py`` plans what).

Retention too: each round first retires the blocks every row of which is
past the table's ``retention`` (``_lifecycle.retain``, whole blocks, unread:
"enforced when blocks are frozen"), so a table with a retention and
``auto_compact`` off still runs rounds, without merges.

Where it runs: in one housekeeping thread per table, started by a kick at
the end of the block writer's ``settle`` (after each block is published),
by ``flush()`` and by ``set_options(auto_compact=True)``. Not in the block
writer's thread itself: every observer (each scan's snapshot, ``rows``,
``health``) and an append's back-pressure wait for that thread to be idle,
so a merge of up to ``max_block_rows`` rows there would make a scan or an
append wait for it. Here nobody waits for a merge except ``close()``.

One merge at a time, each on a fresh plan of the current blocks:

1. Under the table lock (briefly): plan, pin the run's blocks (a delete and
   ``vacuum`` meanwhile cannot take the files away).
2. No lock (appends, scans, freezes go on): verify each input's digest,
   read them through the scan path (the table's schema), write the merged
   block (``first_lsn`` of the first, ``last_lsn`` of the last input).
3. Under the lock: check that no operation is running (``hold()``) and that
   every input is still live and adjacent; if not -- a delete, update or
   ``compact()`` retired one meanwhile -- the merged file is deleted and
   nothing is committed (a *conflict*: no error, the next plan sees the new
   blocks). Else ``committing`` is set and the lock released.
4. No table lock: one manifest version ``compact`` (``info={"auto": True}``)
   replaces the inputs by the merged block: the commit point.
5. Under the lock (in-memory only): the inputs' slice of the block list is
   replaced by the merged block (a block the writer published meanwhile is
   appended after them: the slice is where the manifest puts it, at the
   first input's LSN); ``committing`` cleared. Then the stats cache.

Coordination: an operation that retires blocks it chose under the lock
(``_lifecycle.change``, ``Table.compact``) runs inside ``hold()``, which
waits for a ``committing`` merge to finish and keeps new ones from
committing (a merge waits at step 3) until it is done; so their commits
never conflict and a background merge never makes them fail. ``close()``
stops the thread and waits for a running merge (the merge checks the stop
flag before writing, so only one block read or write can be in flight);
a closed table, a forked child (``store._forked``) or a table with
``auto_compact`` off never starts one, and never commits one.

Failures (a full disk): the merged file is deleted, the error logged and
kept in ``table.health`` and ``table.compaction.last_error``; never raised
to anyone. The merge is retried on a later kick, at most every
``RETRY_INTERVAL_S``; a success clears it.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bt_frames.storage import blocks as blk
from bt_frames.storage import compaction, fs, layout
from bt_frames.storage import manifest as mf
from bt_frames.storage import writer as _writer
from bt_frames.storage.snapshot import Snapshot

if TYPE_CHECKING:
    from bt_frames.table import Table

log = logging.getLogger("bt_frames")

RETRY_INTERVAL_S = 1.0


@dataclass(frozen=True)
class CompactionStats:
    """What auto-compaction has done in this process (``table.compaction``)."""

    enabled: bool
    merges: int  # merges committed
    blocks_merged: int  # input blocks those merges retired
    rows_rewritten: int
    bytes_rewritten: int  # bytes of the merged blocks written
    runs_pending: int  # runs the last plan had left to merge
    conflicts: int  # merges given up because an operation retired an input meanwhile
    running: bool
    last_error: str | None


class Stopped(Exception):
    """The table closed while a merge was reading: nothing is written."""


def merge_blocks(table: Table, run: Sequence[blk.BlockInfo], stop: Callable[[], bool] = lambda: False) -> blk.BlockInfo:
    """The blocks of ``run`` (adjacent, single-part) as one block: verified, read through the scan path
    (the table's schema), written with the run's LSN range. Needs no lock. ``stop()`` is asked before
    writing (``Stopped`` if true)."""
    from bt_frames import _scan

    for b in run:
        blk.verify_block(b.path)
    snap = Snapshot(tuple(run), (), None, None, table.schema, table._meta.schema_version > 0)
    df = _scan._parquet(snap, run).collect()
    if stop():
        raise Stopped
    return blk.write_block(
        table.path / layout.BLOCKS_DIR,
        df,
        first_lsn=run[0].first_lsn,
        last_lsn=run[-1].last_lsn,
        row_group_rows=table._meta.row_group_rows,
    )


class Compactor:
    def __init__(self, table: Table) -> None:
        self.table = table
        self.cond = threading.Condition(table._lock)
        self.running = False  # the thread is planning or merging
        self.committing = False  # between the conflict check and the swap (the table lock is free)
        self.holds = 0  # operations running that retire blocks (hold())
        self.stopped = False  # close(): never start or commit again
        self.again = False  # kicked while running: plan once more before stopping
        self.merges = self.blocks_merged = self.rows = self.bytes = self.pending = self.conflicts = 0
        self.error: str | None = None
        self.failed_at = 0.0
        self._pool: ThreadPoolExecutor | None = None

    # -- under the table lock ------------------------------------------------------------------------

    def _alive(self) -> bool:
        t = self.table
        return not (self.stopped or t._closed or t._read_only or t._store._forked)

    def _may_run(self) -> bool:
        return self._alive() and self.table._meta.auto_compact

    def _may_start(self) -> bool:
        """A round does retention (whole expired blocks) and merges: either may be on."""
        return self._alive() and (self.table._meta.auto_compact or self.table._meta.retention_s is not None)

    def kick(self) -> None:
        """Start a round of merges unless one runs (then it plans once more), it is off, or it failed
        less than ``RETRY_INTERVAL_S`` ago. Needs no lock (takes it briefly); never raises."""
        try:
            with self.cond:
                if not self._may_start():
                    return
                if self.running:
                    self.again = True
                    return
                if self.error is not None and time.monotonic() - self.failed_at < RETRY_INTERVAL_S:
                    return
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(
                        max_workers=1, thread_name_prefix=f"bt_frames-compact-{self.table.name}"
                    )
                self.running = True
                self._pool.submit(self._run)
        except Exception as e:  # pragma: no cover - a thread that cannot start: merging waits for the next kick
            log.warning("table %r: could not start auto-compaction (%s)", self.table.name, e)
            with self.cond:
                self.running = False

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        """Around an operation that retires blocks it chose under the lock (held by the caller): wait for a
        merge being committed, and keep others from committing until the operation is done."""
        while self.committing:
            self.cond.wait()
        self.holds += 1
        try:
            yield
        finally:
            self.holds -= 1
            self.cond.notify_all()

    def stop(self) -> None:
        """For ``close()`` (under the lock): no more merges; wait for the running one to end."""
        self.stopped = True
        self.cond.notify_all()
        while self.running:
            self.cond.wait()
        if self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None

    def wait_idle(self) -> None:
        """Wait until no merge runs and none is planned (under the lock; for tests and benchmarks)."""
        while self.running:
            self.cond.wait()

    def stats(self) -> CompactionStats:
        return CompactionStats(
            bool(self.table._meta.auto_compact),
            self.merges,
            self.blocks_merged,
            self.rows,
            self.bytes,
            self.pending,
            self.conflicts,
            self.running,
            self.error,
        )

    # -- the thread --------------------------------------------------------------------------------------

    def _run(self) -> None:
        _writer._writer_started()  # appenders get the GIL back quickly while we encode
        try:
            self._retain()
            while self._one():
                pass
        except Exception as e:  # pragma: no cover - _one records its failures; a bug must not kill the thread
            log.warning("table %r: auto-compaction stopped: %s", self.table.name, e)
        finally:
            _writer._writer_stopped()
            with self.cond:
                self.running = False
                self.cond.notify_all()

    def _retain(self) -> None:
        """Retention as blocks are frozen: retire the blocks every row of which is past the table's
        retention, unread (``_lifecycle.retain``: one manifest version). The partly expired blocks keep
        their rows until a compaction or ``enforce_retention()``."""
        from bt_frames import _lifecycle

        t = self.table
        with self.cond:
            if not self._alive() or t._meta.retention_s is None:
                return
        try:
            _lifecycle.retain(t, whole_blocks=True, freeze=False)
        except Exception as e:
            if not self._alive():  # closed meanwhile: nothing to report
                return
            with self.cond:
                t._problems["retention"] = f"dropping the blocks past the retention failed ({e}); retried"
            log.warning("table %r: retention failed (%s); retried when the next block is frozen", t.name, e)
        else:
            with self.cond:
                t._problems.pop("retention", None)

    def _one(self) -> bool:
        """Plan and merge one run; False when there is nothing (more) to do for now."""
        t = self.table
        with self.cond:
            if not self._may_run():
                return False
            blocks = tuple(t._blocks)
            runs = compaction.plan([(b.rows, b.name.part, b.name.nparts) for b in blocks], t._meta.max_block_rows)
            self.pending = len(runs)
            if not runs:
                if self.again:
                    self.again = False
                    return True
                return False
            self.again = False
            run = blocks[runs[0].start : runs[0].stop]
            token = t._pins.pin(run)
        out: blk.BlockInfo | None = None
        try:
            out = merge_blocks(t, run, lambda: self.stopped or t._closed)
            return self._commit(run, out)
        except Stopped:
            return False
        except Exception as e:
            with self.cond:
                if out is not None:
                    self._discard(out)
                self.error = f"{type(e).__name__}: {e}"
                self.failed_at = time.monotonic()
                t._problems["compact"] = (
                    f"auto-compaction of blocks of LSNs {run[0].first_lsn}-{run[-1].last_lsn} failed ({e}); "
                    "the blocks are unchanged and it is retried"
                )
            log.warning("table %r: auto-compaction failed (%s); retried later", t.name, e)
            return False
        finally:
            t._unpin(token)

    def _commit(self, run: Sequence[blk.BlockInfo], out: blk.BlockInfo) -> bool:
        t = self.table
        with self.cond:
            while self.holds and not self.stopped:
                self.cond.wait()
            if not self._may_run() or not _adjacent_in(t._blocks, run) or not out.path.exists():
                # (missing: an operation wrote the same rows under the same name meanwhile, then gave up)
                if self._may_run():
                    self.conflicts += 1
                self._discard(out)
                log.debug("table %r: auto-compaction of %d blocks given up (conflict or close)", t.name, len(run))
                return self._may_run()
            self.committing = True
        committed = False
        try:
            info = {"auto": True, "blocks": len(run), "rows_rewritten": out.rows}
            t._commit(
                mf.Edit("compact", add=[mf.entry_of(out)], remove=[b.filename for b in run], info=info)
            )  # the commit point
            committed = True
        finally:
            with self.cond:
                if committed:
                    blocks = t._block_list()
                    i = _index(blocks, run[0])
                    blocks[i : i + len(run)] = [out]
                    self.merges += 1
                    self.blocks_merged += len(run)
                    self.rows += out.rows
                    self.bytes += out.bytes
                    self.error = None
                    t._problems.pop("compact", None)
                self.committing = False
                self.cond.notify_all()
        t._write_cache()
        with self.cond:
            t._purge_retired()
        return True

    def _discard(self, out: blk.BlockInfo) -> None:
        """Delete a merged block no version committed (under the lock) -- unless a version names the same
        file: an operation that merged the same rows (``compact()``) wrote and committed it meanwhile."""
        m = self.table._manifest
        if m is not None:
            state = m.state
            if any(e.block == out.filename for e in state.blocks) or any(
                r.block == out.filename for r in state.retired
            ):
                return
        _unlink(out)


def _index(blocks: Sequence[blk.BlockInfo], b: blk.BlockInfo) -> int:
    for i, x in enumerate(blocks):
        if x is b:
            return i
    raise ValueError(b.filename)


def _adjacent_in(blocks: Sequence[blk.BlockInfo], run: Sequence[blk.BlockInfo]) -> bool:
    """``run`` is still a slice of the live blocks (the very objects: none was replaced)."""
    try:
        i = _index(blocks, run[0])
    except ValueError:
        return False
    return len(blocks) >= i + len(run) and all(x is y for x, y in zip(blocks[i : i + len(run)], run, strict=True))


def _unlink(info: blk.BlockInfo) -> None:
    try:
        fs.unlink(info.path, missing_ok=True)
    except OSError as e:  # never named by a version: the next open removes it
        log.warning("could not delete the unused merged block %s (%s)", info.filename, e)
