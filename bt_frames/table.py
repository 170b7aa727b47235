"""A table: WAL + hot buffer + immutable Parquet blocks, and its queries."""

from __future__ import annotations

import io
import itertools
import logging
import math
import operator
import os
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from bt_frames import _convert, _scan
from bt_frames.errors import CorruptionError, ReadOnlyError, StoreClosedError, TableDroppedError
from bt_frames.storage import blocks as blk
from bt_frames.storage import catalog, layout, wal

if TYPE_CHECKING:
    import pandas as pd

    from bt_frames._scan import ReadStats
    from bt_frames.prune import PruneReport, Where
    from bt_frames.store import BacktraceStore

log = logging.getLogger("bt_frames")

DEFAULT_MAX_BLOCK_ROWS = 1_000_000
DEFAULT_ROW_GROUP_ROWS = 16_384  # narrow time windows read only the row groups they touch
FOOTER_PROGRESS_MIN = 32  # rebuilding the stats cache shows a progress bar from this many footers


@dataclass
class Recovery:
    """What opening (or refreshing) a table found and did."""

    blocks: int = 0
    block_rows: int = 0
    stats_cache: str = "missing"  # fresh / missing / stale / corrupt
    blocks_from_cache: int = 0
    blocks_from_footer: int = 0
    wal_segments: int = 0
    wal_records: int = 0
    records_replayed: int = 0
    rows_replayed: int = 0
    records_skipped: int = 0  # already held by blocks (crash after a flush)
    torn_tail_bytes: int = 0
    incomplete_blocks_removed: int = 0
    superseded_blocks_removed: int = 0
    tmp_files_removed: int = 0
    wal_segments_removed: int = 0
    read_only: bool = False  # a reader leaves torn tails and leftovers for the next writer to remove

    def summary(self) -> str:
        removed = "left for the next writer to remove" if self.read_only else "removed"
        parts = [
            f"{self.blocks} blocks ({self.block_rows:,} rows; stats cache {self.stats_cache}, "
            f"{self.blocks_from_footer} footers read)",
            f"WAL: {self.wal_segments} segment(s), {self.wal_records} record(s), "
            f"{self.records_replayed} replayed ({self.rows_replayed:,} rows), "
            f"{self.records_skipped} already in blocks",
        ]
        if self.torn_tail_bytes:
            cut = "ignored (the next writer cuts it off)" if self.read_only else "cut off"
            parts.append(f"torn tail of {self.torn_tail_bytes} bytes {cut} (an unacknowledged append)")
        if self.incomplete_blocks_removed:
            parts.append(f"{self.incomplete_blocks_removed} part(s) of an unfinished multi-block append {removed}")
        if self.superseded_blocks_removed:
            parts.append(f"{self.superseded_blocks_removed} block(s) superseded by a compaction {removed}")
        if self.tmp_files_removed:
            parts.append(f"{self.tmp_files_removed} temporary file(s) removed")
        return "; ".join(parts)


@dataclass(frozen=True)
class CompactResult:
    blocks_before: int
    blocks_after: int
    merges: int
    rows_rewritten: int


@dataclass(frozen=True)
class Snapshot:
    """An immutable view of a table: the blocks and hot chunks as of one instant."""

    blocks: tuple[blk.BlockInfo, ...]
    hot: tuple[pl.DataFrame, ...]
    stats: pl.DataFrame | None = field(default=None, compare=False)

    @property
    def hot_rows(self) -> int:
        return sum(c.height for c in self.hot)


MAX_FROZEN = 2  # blocks' worth of rows that may wait for the block writer before appends wait too


@dataclass(eq=False)
class _Frozen:
    """Hot rows handed to the block writer. Still hot -- in the WAL, seen by scans -- until their block is durable."""

    first: int
    last: int
    chunks: list[pl.DataFrame]
    rows: int
    records: int  # WAL records / bytes holding these rows
    bytes: int
    error: BaseException | None = None


def _ipc_bytes(df: pl.DataFrame) -> bytes:
    buf = io.BytesIO()
    df.write_ipc_stream(buf)
    return buf.getvalue()


def _from_ipc(payload: bytes | memoryview) -> pl.DataFrame:
    return pl.read_ipc_stream(io.BytesIO(payload))


class Table:
    """One table of a :class:`~bt_frames.BacktraceStore`. Get it from the store; do not construct."""

    def __init__(self, store: BacktraceStore, directory: Path, meta: catalog.TableMeta) -> None:
        self._store = store
        self._dir = directory
        self._meta = meta
        self._lock = threading.RLock()
        self._closed = False
        self._dropped = False  # set by BacktraceStore.drop_table (after close())
        self._read_only = store.read_only
        self._blocks: list[blk.BlockInfo] = []
        self._hot: list[pl.DataFrame] = []
        self._hot_rows = 0
        self._hot_first_lsn = -1
        self._hot_last_lsn = -1
        self._next_lsn = 1
        self._wal: wal.WalWriter | None = None
        self._wal_records = 0
        self._wal_bytes = 0
        self._stats_frame: pl.DataFrame | None = None
        self._stats_key: tuple[blk.BlockInfo, ...] = ()  # the blocks _stats_frame describes
        self._warned_freeze_error = False  # one warning per run of failed block writes
        # Freezing: hot rows handed to the block writer (a background thread) stay hot -- in the WAL,
        # visible to scans -- until their block is durable. Every observer waits for the writer.
        self._frozen: list[_Frozen] = []
        self._hot_records = 0  # WAL records / bytes of the rows in self._hot
        self._hot_bytes = 0
        self._cond = threading.Condition(self._lock)
        self._draining = False
        self._freezer: ThreadPoolExecutor | None = None
        self._pins: dict[Path, int] = {}
        self._retired: set[Path] = set()
        self.recovery = Recovery()
        self.last_plan: PruneReport | None = None  # the plan of the last scan's collect()
        self.last_read: ReadStats | None = None  # what that read did: columns, rows, batches
        self.scans = 0
        self._load()

    # -- identity ------------------------------------------------------------

    @property
    def name(self) -> str:
        return self._meta.name

    @property
    def path(self) -> Path:
        return self._dir

    @property
    def schema(self) -> pl.Schema:
        return pl.Schema(self._meta.schema)

    @property
    def time_column(self) -> str | None:
        return self._meta.time_column

    @property
    def max_block_rows(self) -> int:
        return self._meta.max_block_rows

    @property
    def store(self) -> BacktraceStore:
        return self._store

    # -- opening / recovery ----------------------------------------------------

    def _load(self) -> None:
        """Read blocks (via the stats cache) and replay the WAL into the hot buffer."""
        rec = Recovery(read_only=self._read_only)
        blocks_dir = self._dir / layout.BLOCKS_DIR
        wal_dir = self._dir / layout.WAL_DIR
        writer = not self._read_only
        if writer:
            for d in (self._dir, blocks_dir, wal_dir):  # self._dir: .stats.arrow / .table.json tmps
                for n in os.listdir(d):
                    if layout.is_tmp(n):
                        (d / n).unlink(missing_ok=True)
                        rec.tmp_files_removed += 1
        for _attempt in range(20):
            loaded = catalog.load_blocks(
                self._dir,
                self._meta.schema,
                progress=self._store._progress(f"{self.name}: block stats", min_total=FOOTER_PROGRESS_MIN),
            )
            infos, dropped_incomplete, dropped_superseded = _resolve_blocks(loaded.blocks)
            blocks_max = max((b.last_lsn for b in infos), default=0)
            try:
                scans = list(wal.scan_wal(wal_dir))
            except FileNotFoundError:
                if writer:
                    raise
                continue  # a reader raced a flush that deleted a segment; look again
            # A reader: a flush may have produced blocks while we read the WAL; look again if so.
            if not writer and frozenset(os.listdir(blocks_dir)) != loaded.listing:
                continue
            break
        else:  # pragma: no cover - needs a writer flushing continuously
            raise CorruptionError.at(wal_dir, None, "the WAL kept changing while being read; retry refresh()")
        if writer:
            for b in dropped_incomplete + dropped_superseded:
                b.path.unlink(missing_ok=True)
            if dropped_incomplete or dropped_superseded:
                layout.fsync_dir(blocks_dir)
        rec.incomplete_blocks_removed = len(dropped_incomplete)
        rec.superseded_blocks_removed = len(dropped_superseded)
        rec.stats_cache = loaded.cache_state
        rec.blocks_from_cache = loaded.from_cache
        rec.blocks_from_footer = loaded.from_footer
        rec.blocks = len(infos)
        rec.block_rows = sum(b.rows for b in infos)

        hot: list[pl.DataFrame] = []
        first = last = -1
        max_wal_lsn = 0
        rec.wal_segments = len(scans)
        records = 0
        wal_bytes = 0
        for scan in scans:
            for r in scan.records:
                records += 1
                wal_bytes += wal.RECORD_HEADER_SIZE + len(r.payload)
                max_wal_lsn = r.lsn
                if r.lsn <= blocks_max:
                    rec.records_skipped += 1
                    continue
                try:
                    chunk = _from_ipc(r.payload)
                except Exception as e:
                    raise CorruptionError.at(
                        scan.path, r.offset, f"record {r.lsn} payload is not Arrow IPC ({e})"
                    ) from e
                if chunk.schema != self._meta.schema:
                    raise CorruptionError.at(
                        scan.path, r.offset, f"record {r.lsn} has schema {chunk.schema}, not the table's"
                    )
                hot.append(chunk)
                if first < 0:
                    first = r.lsn
                last = r.lsn
                rec.records_replayed += 1
                rec.rows_replayed += chunk.height
        rec.wal_records = records
        if scans and scans[-1].torn_bytes:
            rec.torn_tail_bytes = scans[-1].torn_bytes
        last_seg_first = scans[-1].first_lsn if scans else 1
        next_lsn = max(blocks_max, max_wal_lsn, last_seg_first - 1) + 1

        dropped = dropped_incomplete or dropped_superseded
        stats = catalog.merge_stats(loaded.stats, infos, self._meta.schema) if dropped else loaded.stats
        with self._lock:
            self._blocks = infos
            self._stats_frame = stats
            self._stats_key = tuple(infos)
            self._hot = hot
            self._hot_rows = sum(c.height for c in hot)
            self._hot_first_lsn, self._hot_last_lsn = first, last
            self._next_lsn = next_lsn
            self._wal_records = records
            self._wal_bytes = wal_bytes
            self._hot_records, self._hot_bytes = records, wal_bytes  # freed by the next freeze
            self.recovery = rec
        if not writer:
            return
        # Writer: make the files match what was just loaded.
        if scans and scans[-1].torn_bytes:
            seg = scans[-1]
            with open(seg.path, "r+b") as f:
                f.truncate(seg.valid_end)
                os.fsync(f.fileno())
            log.info("table %r: cut a torn WAL tail of %d bytes from %s", self.name, seg.torn_bytes, seg.path)
        covered = [s for s in scans[:-1] if not s.records or s.records[-1].lsn <= blocks_max]
        for s in covered:
            s.path.unlink()
        rec.wal_segments_removed = len(covered)
        if scans and scans[-1].size >= wal.SEGMENT_HEADER_SIZE and scans[-1].valid_end >= wal.SEGMENT_HEADER_SIZE:
            self._wal = wal.WalWriter(wal_dir, self._store.durability, scans[-1].path, create=False)
        else:
            if scans:  # crash while creating the segment: header incomplete
                scans[-1].path.unlink()
            self._wal = wal.WalWriter(wal_dir, self._store.durability, wal_dir / layout.wal_name(next_lsn), create=True)
        if covered:
            layout.fsync_dir(wal_dir)
        if loaded.changed or dropped_incomplete or dropped_superseded:
            catalog.write_cache(self._dir, stats, self._meta.schema)
        if self._hot_rows >= self._meta.max_block_rows:
            with self._lock:
                self._freeze()
        log.debug("opened table %r: %s", self.name, rec.summary())

    def refresh(self) -> None:
        """Re-read blocks and the WAL tail (read-only stores): see every append acknowledged so far."""
        self._check_open()
        if not self._read_only:
            return
        self._load()

    # -- writing ---------------------------------------------------------------

    def _check_open(self) -> None:
        if self._dropped:
            raise TableDroppedError(self.name, self._store.path)
        if self._closed:
            raise StoreClosedError(f"table {self.name!r} of store {str(self._store.path)!r} is closed")

    def _check_writable(self) -> None:
        self._check_open()
        if self._read_only:
            raise ReadOnlyError(
                f"table {self.name!r}: the store {str(self._store.path)!r} was opened with read_only=True; "
                "open it without read_only to write."
            )

    def validate(self, data: object) -> pl.DataFrame:
        """Convert and coerce ``data`` to this table's schema without writing anything."""
        df, _meta = _convert.to_polars(data, table=self.name)
        return _convert.coerce(df, self._meta.schema, table=self.name, time_column=self._meta.time_column)

    def append(self, data: object) -> int | None:
        """Append a frame; return its LSN (``None`` for an empty frame).

        Durability: returns only after the WAL record is durable under the
        store's policy (``"fsync"``: on disk). When the hot rows reach
        ``max_block_rows`` they are handed to a background block writer and
        the call returns without waiting for the Parquet write; until the block
        is durable those rows stay in the WAL and in every scan. A frame with
        at least ``max_block_rows`` rows is written straight to blocks (all
        parts, then one directory sync) instead of the WAL. Crash: a record that was not
        acknowledged may leave a torn tail, which the next open cuts off.
        All-or-nothing: a frame that fails validation changes nothing.
        """
        self._check_writable()
        df, pandas_meta = _convert.to_polars(data, table=self.name)
        df = _convert.coerce(df, self._meta.schema, table=self.name, time_column=self._meta.time_column)
        if df.height == 0:  # an empty append changes nothing, not even the pandas metadata
            return None
        if pandas_meta is not None and self._meta.pandas is None:
            self._store._set_pandas_meta(self, pandas_meta)
        with self._lock:
            self._check_writable()
            assert self._wal is not None
            if df.height >= self._meta.max_block_rows:
                return self._append_blocks(df)
            if self._hot_rows and self._hot_rows + df.height > self._meta.max_block_rows:
                self._freeze_async()
            payload = _ipc_bytes(df)
            lsn = self._next_lsn
            self._wal.append(lsn, payload)  # the commit point
            self._next_lsn = lsn + 1
            size = wal.RECORD_HEADER_SIZE + len(payload)
            self._wal_records += 1
            self._wal_bytes += size
            self._hot_records += 1
            self._hot_bytes += size
            # Polars buffers are immutable, so a shallow clone is safe; other inputs may share
            # (mutable) numpy/pandas buffers with the caller: keep what replay would rebuild.
            self._hot.append(df.clone() if isinstance(data, pl.DataFrame) else _from_ipc(payload))
            self._hot_rows += df.height
            if self._hot_first_lsn < 0:
                self._hot_first_lsn = lsn
            self._hot_last_lsn = lsn
            if self._hot_rows >= self._meta.max_block_rows:
                self._freeze_async()
            return lsn

    def _freeze_async(self) -> None:
        """Hand the hot rows to the block writer and return; called after an acknowledged append.

        A failed block write must not un-acknowledge anything: the rows stay hot
        and durable in the WAL, the failure is reported (a warning) on the next
        freeze, which retries it.
        """
        err = next((e.error for e in self._frozen if e.error is not None), None)
        if err is not None and not self._warned_freeze_error:
            self._warned_freeze_error = True
            warnings.warn(
                f"table {self.name!r}: writing a block failed ({err}); the rows stay durable in the WAL "
                "and the write is retried now",
                RuntimeWarning,
                stacklevel=3,
            )
        self._hand_over()
        self._retry()
        # Back-pressure: at most MAX_FROZEN blocks' rows wait for the writer.
        while self._draining and len(self._frozen) > MAX_FROZEN:
            self._cond.wait()

    def _append_blocks(self, df: pl.DataFrame) -> int:
        """A large append goes straight to blocks: every part is written, then all are renamed."""
        assert self._wal is not None
        self._freeze()  # blocks hold every earlier LSN first: replay skips LSNs below a block's
        lsn = self._next_lsn
        size = self._meta.max_block_rows
        nparts = math.ceil(df.height / size)
        infos: list[blk.BlockInfo] = []
        blocks_dir = self._dir / layout.BLOCKS_DIR
        parts = range(nparts)
        bar = self._store._progress(f"append to {self.name}")
        it: Iterable[int] = bar(parts, nparts) if bar is not None else parts
        try:
            for i in it:
                infos.append(
                    blk.write_block(
                        blocks_dir,
                        df.slice(i * size, size),
                        first_lsn=lsn,
                        last_lsn=lsn,
                        part=i + 1,
                        nparts=nparts,
                        row_group_rows=self._meta.row_group_rows,
                        publish=False,
                    )
                )
        except BaseException:
            for info in infos:
                blk.pending_path(info).unlink(missing_ok=True)
            raise
        for info in infos:  # a crash part-way leaves an incomplete set, removed on open
            blk.publish_block(blk.pending_path(info), info.path, sync_dir=False)
        layout.fsync_dir(blocks_dir)  # the commit point
        self._next_lsn = lsn + 1
        self._blocks.extend(infos)
        self._write_cache()
        return lsn

    def flush(self) -> int:
        """Freeze the hot buffer into a block now; return the number of rows written."""
        self._check_writable()
        with self._lock:
            self._wait_frozen()
            n = self._hot_rows + sum(e.rows for e in self._frozen)
            self._freeze()
            return n

    def compact(self, *, target_rows: int | None = None, min_rows: int | None = None) -> CompactResult:
        """Merge runs of adjacent small blocks into blocks of up to ``target_rows`` rows.

        ``target_rows`` defaults to ``max_block_rows``; a block is small when it
        has fewer than ``min_rows`` rows (default: half of ``target_rows``).
        Parts of a multi-part append are left alone. Row order is unchanged.

        Crash safety: each merged block, covering the whole LSN range of its
        inputs, is written and renamed before any input is deleted. A crash in
        between leaves inputs whose range lies inside the merged block's; the
        next open recognises them as superseded and removes them, so rows are
        never duplicated or lost. Inputs that a running scan in this process
        still reads are deleted when that scan finishes.
        """
        self._check_writable()
        target = target_rows or self._meta.max_block_rows
        small = min_rows if min_rows is not None else max(1, target // 2)
        with self._lock:
            self._wait_frozen()
            before = len(self._blocks)
            runs: list[list[blk.BlockInfo]] = []
            run: list[blk.BlockInfo] = []
            run_rows = 0
            for b in self._blocks:
                candidate = b.name.nparts == 1 and b.rows < small
                if candidate and run_rows + b.rows <= target:
                    run.append(b)
                    run_rows += b.rows
                    continue
                if len(run) > 1:
                    runs.append(run)
                run, run_rows = ([b], b.rows) if candidate else ([], 0)
            if len(run) > 1:
                runs.append(run)
            bar = self._store._progress(f"compact {self.name}")
            it: Iterable[list[blk.BlockInfo]] = bar(runs, len(runs)) if bar is not None else runs
            rows_rewritten = 0
            blocks_dir = self._dir / layout.BLOCKS_DIR
            for group in it:
                for b in group:
                    blk.verify_block(b.path)
                df = pl.concat([pl.read_parquet(b.path) for b in group], rechunk=True)
                merged = blk.write_block(
                    blocks_dir,
                    df,
                    first_lsn=group[0].first_lsn,
                    last_lsn=group[-1].last_lsn,
                    row_group_rows=self._meta.row_group_rows,
                )
                i = self._blocks.index(group[0])
                self._blocks[i : i + len(group)] = [merged]
                for b in group:
                    self._retire(b.path)
                rows_rewritten += df.height
            if runs:
                layout.fsync_dir(blocks_dir)
                self._write_cache()
            return CompactResult(before, len(self._blocks), len(runs), rows_rewritten)

    # -- pins: blocks a running scan still reads are not deleted under it ----------

    def _pin(self, paths: Iterable[Path]) -> None:
        with self._lock:
            for p in paths:
                self._pins[p] = self._pins.get(p, 0) + 1

    def _unpin(self, paths: Iterable[Path]) -> None:
        with self._lock:
            for p in paths:
                n = self._pins.get(p, 0) - 1
                if n > 0:
                    self._pins[p] = n
                    continue
                self._pins.pop(p, None)
                if p in self._retired:
                    self._retired.discard(p)
                    p.unlink(missing_ok=True)

    def _retire(self, path: Path) -> None:
        """Delete a block that is no longer live, now or when the last scan reading it ends."""
        if self._pins.get(path):
            self._retired.add(path)
        else:
            path.unlink(missing_ok=True)

    def _freeze(self) -> None:
        """Hot buffer -> blocks, now: hand over, write (retrying earlier failures), wait; raise on failure."""
        self._hand_over()
        self._retry()
        self._wait_frozen()
        if self._frozen:
            err = self._frozen[0].error
            assert err is not None
            raise err

    def _hand_over(self) -> None:
        """Move the hot rows to the frozen list and start a new WAL segment after them (under the lock)."""
        if not self._hot:
            return
        assert self._wal is not None
        first, last = self._hot_first_lsn, self._hot_last_lsn
        new_seg = self._dir / layout.WAL_DIR / layout.wal_name(last + 1)
        if self._wal.path != new_seg:
            self._wal.rotate(last + 1)  # the block's records end where a segment ends
        self._frozen.append(_Frozen(first, last, self._hot, self._hot_rows, self._hot_records, self._hot_bytes))
        self._hot = []
        self._hot_rows = self._hot_records = self._hot_bytes = 0
        self._hot_first_lsn = self._hot_last_lsn = -1

    def _retry(self) -> None:
        """Forget earlier block-write failures and start the writer (under the lock)."""
        for e in self._frozen:
            e.error = None
        self._kick()

    def _kick(self) -> None:
        """Start the block writer if it is idle and there is work (under the lock)."""
        if self._draining or not self._frozen or self._frozen[0].error is not None:
            return
        if self._freezer is None:
            self._freezer = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"bt_frames-freeze-{self.name}")
        self._draining = True
        self._freezer.submit(self._drain)

    def _wait_frozen(self) -> None:
        """Wait until the block writer is idle (under the lock: waiting releases it)."""
        while self._draining:
            self._cond.wait()

    def _drain(self) -> None:
        """The block writer: frozen rows -> blocks, oldest first; stops at the first failure."""
        try:
            while True:
                with self._lock:
                    if not self._frozen or self._frozen[0].error is not None:
                        return
                    entry = self._frozen[0]
                try:
                    info = blk.write_block(
                        self._dir / layout.BLOCKS_DIR,
                        pl.concat(entry.chunks, rechunk=True),
                        first_lsn=entry.first,
                        last_lsn=entry.last,
                        row_group_rows=self._meta.row_group_rows,
                    )
                except BaseException as e:  # the rows stay hot and in the WAL; reported and retried later
                    with self._lock:
                        entry.error = e
                    log.warning("table %r: writing the block of LSNs %d-%d failed: %s", self.name, entry.first,
                                entry.last, e)  # fmt: skip
                    return
                with self._lock:
                    self._publish(entry, info)
        finally:
            with self._lock:
                self._draining = False
                self._cond.notify_all()

    def _publish(self, entry: _Frozen, info: blk.BlockInfo) -> None:
        """A block is durable: its rows leave the hot set, and WAL segments it covers are deleted."""
        self._blocks.append(info)
        self._frozen.remove(entry)
        self._wal_records -= entry.records
        self._wal_bytes -= entry.bytes
        if not any(e.error is not None for e in self._frozen):
            self._warned_freeze_error = False
        # A segment goes when every record in it is in a block: when the next segment starts at or
        # below the first LSN not yet in a block.
        unfrozen = min([e.first for e in self._frozen] + [self._hot_first_lsn if self._hot else self._next_lsn])
        # No directory fsync: a deletion lost in a crash brings back records that replay skips (<= a block).
        segs = wal.list_segments(self._dir / layout.WAL_DIR)
        for (_first, path), (next_first, _p) in itertools.pairwise(segs):
            if next_first <= unfrozen and (self._wal is None or path != self._wal.path):
                path.unlink(missing_ok=True)
        self._write_cache()
        self._cond.notify_all()
        log.debug("table %r: froze LSNs %d-%d into %s (%d rows)", self.name, entry.first, entry.last,
                  info.filename, info.rows)  # fmt: skip

    def _write_cache(self) -> None:
        try:
            catalog.write_cache(self._dir, self._stats(), self._meta.schema)
        except OSError as e:  # only a cache: rebuilt from footers on the next open
            log.warning("table %r: could not write the stats cache (%s)", self.name, e)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._wait_frozen()
            if self._frozen:
                log.warning("table %r: closing with %d rows not in blocks (a block write failed); they are "
                            "durable in the WAL and replayed on the next open", self.name,
                            sum(e.rows for e in self._frozen))  # fmt: skip
            self._closed = True
            if self._freezer is not None:
                self._freezer.shutdown(wait=False)
                self._freezer = None
            if self._wal is not None:
                self._wal.close()
                self._wal = None
            for p in self._retired:  # scans of a closed table cannot continue anyway
                p.unlink(missing_ok=True)
            self._retired.clear()

    # -- state -----------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        """The blocks and hot chunks as of now (cheap; blocks are immutable)."""
        self._check_open()
        with self._lock:
            self._wait_frozen()
            hot = tuple(c for e in self._frozen for c in e.chunks) + tuple(self._hot)
            return Snapshot(tuple(self._blocks), hot, self._stats())

    def _record_scan(self, report: PruneReport, read: ReadStats) -> None:
        self.last_plan = report
        self.last_read = read
        self.scans += 1

    def _stats(self) -> pl.DataFrame:
        """The statistics frame of ``self._blocks`` (kept in step with them incrementally)."""
        with self._lock:
            blocks, key = self._blocks, self._stats_key
            if self._stats_frame is None or len(key) != len(blocks) or not all(map(operator.is_, key, blocks)):
                self._stats_frame = catalog.merge_stats(self._stats_frame, blocks, self._meta.schema)
                self._stats_key = tuple(blocks)
            return self._stats_frame

    @property
    def blocks(self) -> pl.DataFrame:
        """One row per block: file, LSN range, rows, bytes and ``min.<col>``/``max.<col>``/``null_count.<col>``."""
        from bt_frames.prune import blocks_frame

        snap = self.snapshot()
        return blocks_frame(snap.blocks, snap.stats, self._meta.schema)

    @property
    def rows(self) -> int:
        return sum(self._row_counts())

    @property
    def hot_rows(self) -> int:
        """Rows not yet in a block (in the WAL and in memory)."""
        return self._row_counts()[1]

    @property
    def cold_rows(self) -> int:
        return self._row_counts()[0]

    def _row_counts(self) -> tuple[int, int]:
        """(rows in blocks, hot rows), both from one state: after the block writer, under one lock."""
        if self._dropped:
            self._check_open()
        with self._lock:
            self._wait_frozen()
            cold = sum(b.rows for b in self._blocks)
            return cold, self._hot_rows + sum(e.rows for e in self._frozen)

    @property
    def wal_state(self) -> dict[str, Any]:
        """Segments, records and bytes currently in the WAL (records not yet in blocks)."""
        with self._lock:
            self._wait_frozen()
            segs = wal.list_segments(self._dir / layout.WAL_DIR)
            return {
                "segments": len(segs),
                "records": self._wal_records,
                "bytes": self._wal_bytes,
                "next_lsn": self._next_lsn,
                "durability": self._store.durability,
                "current_segment": self._wal.path.name if self._wal else (segs[-1][1].name if segs else None),
            }

    def wal_records(self) -> pl.DataFrame:
        """The WAL as it is on disk now: one row per record, plus one for a torn tail.

        Columns: ``segment``, ``offset``, ``lsn``, ``bytes`` (header + payload),
        ``rows`` (decoded from the payload) and ``status`` (``"record"``, or
        ``"torn tail"`` for bytes after the last valid record of the last
        segment: an append that was never acknowledged). Reads the files, writes
        nothing; a corrupt record raises :class:`~bt_frames.CorruptionError`.
        """
        self._check_open()
        rows: list[tuple[str, int, int | None, int, int | None, str]] = []
        for scan in wal.scan_wal(self._dir / layout.WAL_DIR):
            name = scan.path.name
            for r in scan.records:
                size = wal.RECORD_HEADER.size + len(r.payload)
                rows.append((name, r.offset, r.lsn, size, _from_ipc(r.payload).height, "record"))
            if scan.torn_bytes:
                rows.append((name, scan.valid_end, None, scan.torn_bytes, None, "torn tail"))
        return pl.DataFrame(
            rows,
            schema={
                "segment": pl.String,
                "offset": pl.Int64,
                "lsn": pl.Int64,
                "bytes": pl.Int64,
                "rows": pl.Int64,
                "status": pl.String,
            },
            orient="row",
        )

    def time_range(self) -> tuple[Any, Any] | None:
        tc = self._meta.time_column
        if tc is None:
            return None
        snap = self.snapshot()
        lo: Any = None
        hi: Any = None
        st = snap.stats
        if st is not None and st.height and f"min.{tc}" in st.columns:
            lo, hi = st.get_column(f"min.{tc}").min(), st.get_column(f"max.{tc}").max()
        if snap.hot:
            hot = pl.concat([c.select(tc) for c in snap.hot]).get_column(tc)
            hlo, hhi = hot.min(), hot.max()
            lo = hlo if lo is None else min(lo, hlo)
            hi = hhi if hi is None else max(hi, hhi)
        return None if lo is None else (lo, hi)

    # -- reading ---------------------------------------------------------------

    def scan(self, where: Where | None = None, *, prune: bool = True) -> pl.LazyFrame:
        """A LazyFrame over blocks + hot rows, in append order.

        Filters (``where=`` or any later ``.filter``) and projections are
        pushed down: blocks whose statistics rule the predicate out are never
        opened, survivors are read by Polars' Parquet reader. Each
        ``collect()`` reads one consistent snapshot taken when it starts.
        """
        self._check_open()
        return _scan.scan(self, where, prune=prune)

    def prune(self, where: Where | None = None) -> PruneReport:
        """Plan a scan: which blocks ``where`` skips and why (nothing is read)."""
        from bt_frames import prune as _prune

        return _prune.plan(
            self.snapshot(), self._meta.schema, _prune.to_expr(where, self._meta.schema), table=self.name
        )

    def plot_blocks(self, where: Where | None = None, *, ax: Any = None) -> Any:
        """A matplotlib figure of the blocks along the time axis, pruned vs scanned for ``where``.

        Needs matplotlib (``pip install 'bt_frames[notebook]'``); see :mod:`bt_frames._plot`.
        """
        from bt_frames import _plot

        self._check_open()
        return _plot.plot_blocks(self, where, ax=ax)

    def read(self, where: Where | None = None, *, columns: Sequence[str] | None = None) -> pl.DataFrame:
        lf = self.scan(where)
        if columns is not None:
            lf = lf.select(columns)
        return lf.collect()

    def to_polars(self, where: Where | None = None, *, columns: Sequence[str] | None = None) -> pl.DataFrame:
        return self.read(where, columns=columns)

    def to_pandas(self, where: Where | None = None, *, columns: Sequence[Any] | None = None) -> pd.DataFrame:
        """The table (or a filtered part of it) as pandas, with the index and dtypes it was appended with.

        Parameters
        ----------
        where
            A filter, as for :meth:`scan` (a Polars expression or DNF tuples);
            blocks are pruned the same way.
        columns
            Data columns to return, in this order: stored names or the pandas
            labels they came from. The index column(s) of the first pandas
            append are always read too, so the index is restored.

        Returns
        -------
        pandas.DataFrame
            Equal (``pd.testing.assert_frame_equal``) to the concatenation of
            the pandas frames appended. The dtypes, column labels and index
            come from the table's first pandas append (``table.json``'s
            ``pandas`` field); a default ``RangeIndex`` is renumbered
            ``0..n-1`` over the rows returned (a filtered result too). A table
            never appended from pandas gets Polars' own ``to_pandas()``. See
            ``bt_frames/_pandas.py`` for the rules per dtype.

        Examples
        --------
        >>> idx = pd.DatetimeIndex(["2024-01-01", "2024-01-02"], name="ts")  # doctest: +SKIP
        >>> df = pd.DataFrame({"px": [1.5, 2.0]}, index=idx)  # doctest: +SKIP
        >>> store.append("ticks", df)  # doctest: +SKIP
        >>> pd.testing.assert_frame_equal(store["ticks"].to_pandas(), df)  # doctest: +SKIP
        """
        from bt_frames import _pandas

        meta = self._meta.pandas
        if meta is None and self._read_only:  # a writer may have made the first pandas append since we opened
            try:
                meta = catalog.TableMeta.load(self._dir / layout.TABLE_JSON).pandas
            except (OSError, CorruptionError):
                meta = None
        read, order = _pandas.projection(meta, columns, self._meta.schema.names(), table=self.name)
        return _pandas.to_pandas(self.read(where, columns=read), meta, columns=order)

    def iter_batches(
        self, where: Where | None = None, *, columns: Sequence[str] | None = None, batch_size: int = 65_536
    ) -> Iterator[pl.DataFrame]:
        """Stream the rows as DataFrames of at most ``batch_size`` rows, with bounded memory."""
        self._check_open()
        yield from _scan.iter_batches(self, where, columns=columns, batch_size=batch_size)

    def iter_rows(
        self, where: Where | None = None, *, columns: Sequence[str] | None = None, named: bool = True
    ) -> Iterator[dict[str, Any]] | Iterator[tuple[Any, ...]]:
        """Stream rows (dicts by default) with bounded memory."""
        for batch in self.iter_batches(where, columns=columns):
            if named:
                yield from batch.iter_rows(named=True)
            else:
                yield from batch.iter_rows(named=False)

    def __len__(self) -> int:
        return self.rows

    def __repr__(self) -> str:
        from bt_frames import _display

        return _display.table_repr(self)

    def _repr_html_(self) -> str:
        from bt_frames import _display

        return _display.table_html(self)


def _in_append_order(infos: Sequence[blk.BlockInfo]) -> bool:
    """Whole sets of parts (1..n, one LSN range each) with disjoint LSN ranges, in order."""
    i, prev_last, n = 0, -1, len(infos)
    while i < n:
        head = infos[i].name
        if head.first_lsn <= prev_last or head.part != 1 or i + head.nparts > n:
            return False
        for j in range(1, head.nparts):
            c = infos[i + j].name
            if (c.first_lsn, c.last_lsn, c.nparts, c.part) != (head.first_lsn, head.last_lsn, head.nparts, j + 1):
                return False
        prev_last = head.last_lsn
        i += head.nparts
    return True


def _resolve_blocks(
    infos: list[blk.BlockInfo],
) -> tuple[list[blk.BlockInfo], list[blk.BlockInfo], list[blk.BlockInfo]]:
    """(live blocks, parts of unfinished multi-part appends, blocks superseded by compaction)."""
    if _in_append_order(infos):  # the usual case, in one pass
        return list(infos), [], []
    by_set: dict[tuple[int, int, int], list[blk.BlockInfo]] = {}
    for b in infos:
        by_set.setdefault((b.first_lsn, b.last_lsn, b.name.nparts), []).append(b)
    complete: list[blk.BlockInfo] = []
    incomplete: list[blk.BlockInfo] = []
    for (_f, _l, nparts), members in by_set.items():
        if len({m.name.part for m in members}) == nparts:
            complete.extend(members)
        else:
            incomplete.extend(members)
    # A compaction writes its output before deleting its inputs: a block whose
    # range lies inside a wider block's range is superseded.
    ranges = sorted({(b.first_lsn, b.last_lsn) for b in complete}, key=lambda r: (r[0], -r[1]))
    keep: set[tuple[int, int]] = set()
    reach = -1
    for r in ranges:
        if r[1] <= reach:
            continue
        keep.add(r)
        reach = r[1]
    live = [b for b in complete if (b.first_lsn, b.last_lsn) in keep]
    superseded = [b for b in complete if (b.first_lsn, b.last_lsn) not in keep]
    live.sort(key=lambda b: (b.first_lsn, b.name.part))
    return live, incomplete, superseded


ProgressFactory = Callable[[Iterable[Any], int], Iterable[Any]]
