"""``Table``: the public face of one table -- append, scan, flush, compact -- over the storage layer.

The moving parts live in ``bt_frames.storage``: ``recovery`` opens a table
(manifest, blocks, WAL replay), ``manifest`` records which files make it up,
``wal`` makes appends durable, ``hot`` holds the rows not yet in a block,
``blocks`` writes and checks Parquet blocks, ``catalog`` caches their
statistics. This class wires them together under one lock and runs the
block writer thread.

Commit points (what "acknowledged" means): an append is committed when its
WAL record is durable; a block, the parts of a large append, a compaction
and a schema change (``add_columns``, ``append(schema_mode="merge")``; see
``storage/evolve.py``) when their manifest version is durable. ``append`` returns if and only if
its record committed; anything that fails after that point (rotating the
WAL, writing a block, the statistics cache) is logged, kept in
``table.health`` and retried -- never raised from the call that committed.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import io
import itertools
import logging
import math
import operator
import os
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar, get_args

import polars as pl

from bt_frames import _convert, _lifecycle, _scan
from bt_frames._compactor import CompactionStats, Compactor, merge_blocks
from bt_frames._lifecycle import Change
from bt_frames.errors import (
    BtError,
    CorruptionError,
    DeltaIncompatibleWarning,
    ReadOnlyError,
    SchemaMismatchError,
    StoreClosedError,
    TableDroppedError,
    find_stacklevel,
    os_errors,
)
from bt_frames.storage import blocks as blk
from bt_frames.storage import catalog, delta, evolve, fs, layout, locking, recovery, remote, wal
from bt_frames.storage import manifest as mf
from bt_frames.storage.hot import Frozen, HotBuffer
from bt_frames.storage.pins import PinSet
from bt_frames.storage.recovery import Recovery
from bt_frames.storage.snapshot import Snapshot
from bt_frames.storage.writer import BlockWriter

if TYPE_CHECKING:
    import dask.dataframe as dd
    import pandas as pd

    from bt_frames._scan import ReadStats
    from bt_frames.prune import PruneReport, Where
    from bt_frames.store import BacktraceStore

log = logging.getLogger("bt_frames")

DEFAULT_MAX_BLOCK_ROWS = 1_000_000
DEFAULT_ROW_GROUP_ROWS = 16_384  # narrow time windows read only the row groups they touch
FOOTER_PROGRESS_MIN = 32  # rebuilding the stats cache shows a progress bar from this many footers
MAX_FROZEN = 2  # blocks' worth of rows that may wait for the block writer before appends wait too
UNSUPPORTED = -2  # Table._delta_synced of a table whose types Delta cannot represent
NO_LOG = -3  # Table._delta_synced of a writer that writes no log (delta_log=False, or no deltalake)
RETRY_INTERVAL_S = 1.0  # a failed block write or rotation is retried at most this often

__all__ = ["Change", "CompactResult", "CompactionStats", "Health", "Recovery", "SchemaMode", "Snapshot", "Table"]

SchemaMode = Literal["strict", "merge"]


def check_schema_mode(mode: object, table: str) -> SchemaMode:
    """``mode`` if it is a ``SchemaMode``, else a BtError saying which ones exist."""
    if mode not in get_args(SchemaMode):
        raise BtError(
            f'table {table!r}: schema_mode={mode!r} is not a schema mode; use schema_mode="strict" (the '
            'default: the frame must fit the table\'s schema) or schema_mode="merge" (add its new columns and '
            "widen types losslessly)."
        )
    return mode  # type: ignore[return-value]


@dataclass(frozen=True)
class CompactResult:
    blocks_before: int
    blocks_after: int
    merges: int
    rows_rewritten: int


@dataclass(frozen=True)
class Health:
    """Failures after a commit point, which ``append`` never raises (``table.health``).

    ``ok`` is False while a block write, a WAL rotation or a manifest write
    keeps failing (a full disk, say). The rows concerned stay durable in the
    WAL and visible to scans; the work is retried (at most every
    ``RETRY_INTERVAL_S``) on later appends and on ``flush()``, and the table
    is healthy again as soon as it succeeds.
    """

    ok: bool
    problems: tuple[str, ...] = ()
    pending_rows: int = 0  # rows waiting for a block write that failed

    def __str__(self) -> str:
        if self.ok:
            return "ok"
        return "; ".join(self.problems) + f" ({self.pending_rows:,} rows wait in the WAL; retried automatically)"


def _ipc_bytes(df: pl.DataFrame) -> bytes:
    buf = io.BytesIO()
    df.write_ipc_stream(buf)
    return buf.getvalue()


def _from_ipc(payload: bytes | memoryview) -> pl.DataFrame:
    return pl.read_ipc_stream(io.BytesIO(payload))


def _decode_and_merge(
    chunks: list[pl.DataFrame], levels: list[int], payload: bytes, chunk: pl.DataFrame | None
) -> tuple[list[pl.DataFrame], list[int]]:
    """The hot chunks and levels after adding the record's rows (decoded from ``payload`` unless given)."""
    return HotBuffer.merged(chunks, levels, chunk if chunk is not None else _from_ipc(payload))


_helper: ThreadPoolExecutor | None = None
_helper_lock = threading.Lock()

_T = TypeVar("_T")


def _run_async(job: Callable[[], _T]) -> Future[_T]:
    """``job()`` in the helper thread (one per process, started on first use)."""
    global _helper
    if _helper is None:
        with _helper_lock:
            if _helper is None:
                _helper = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bt_frames-decode")
    return _helper.submit(job)


def _forget_helper() -> None:
    """In a forked child the helper thread is gone: start a new one on first use (else a job never runs)."""
    global _helper, _helper_lock
    _helper, _helper_lock = None, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_helper)


def _frozen(blocks: Sequence[blk.BlockInfo]) -> Sequence[blk.BlockInfo]:
    """``blocks`` as an immutable sequence: a writer's list is copied, a reader's ``CachedBlocks`` is one."""
    return blocks if isinstance(blocks, blk.CachedBlocks) else tuple(blocks)


class Table:
    """One table of a :class:`~bt_frames.BacktraceStore`. Get it from the store; do not construct."""

    def __init__(self, store: BacktraceStore, directory: Path, meta: catalog.TableMeta) -> None:
        self._store = store
        self._dir = directory
        self._meta = meta
        self._names = meta.schema.names()  # the schema as lists, compared with every pandas append's
        self._dtypes = meta.schema.dtypes()
        self._lock = threading.RLock()
        self._closed = False
        self._dropped = False  # set by BacktraceStore.drop_table (after close())
        self._read_only = store.read_only
        # a list, which writers change in place; a reader's linked open gives an immutable blk.CachedBlocks
        self._blocks: Sequence[blk.BlockInfo] = []
        self._stats_frame: pl.DataFrame | None = None
        self._stats_key: Sequence[blk.BlockInfo] = ()  # the blocks _stats_frame describes (a tuple, or CachedBlocks)
        self._hot = HotBuffer()
        self._next_lsn = 1
        self._wal: wal.WalWriter | None = None
        self._wal_records = 0
        self._wal_bytes = 0
        # Freezing: hot rows handed to the block writer (a background thread) stay hot -- in the WAL,
        # visible to scans -- until their block is durable. Every observer waits for the writer.
        self._writer = BlockWriter(
            self._lock,
            meta.name,
            prepare=self._covered_segments,
            write=self._write_run,
            publish=self._publish,
            settle=self._settle,
        )
        self._cache_lock = threading.Lock()  # one stats-cache write at a time (they share a tmp file name)
        self._cache_version = 0  # the manifest version the cache this table last wrote is linked to
        # The manifest: commits are serialised by _manifest_lock (the block writer commits without the table lock).
        self._manifest: mf.Manifest | None = None
        self._manifest_lock = threading.Lock()
        self._pending_forget: list[str] = []  # retired files deleted, to be forgotten by the next version
        self._pending_wal: list[int] = []  # segments created whose "rotate" version failed to commit
        self._pins = PinSet()  # the blocks running scans read
        self._problems: dict[str, str] = {}  # what failed after a commit point (see Health)
        self._last_attempt = 0.0
        self.recovery = Recovery()
        self.last_plan: PruneReport | None = None  # the plan of the last scan's collect()
        self.last_read: ReadStats | None = None  # what that read did: columns, rows, batches
        self.scans = 0
        self.last_change: Change | None = None  # what the last delete/update/upsert/retention did
        self._compactor = Compactor(self)  # auto-compaction (bt_frames/_compactor.py)
        # the Delta log of the published blocks (storage/delta.py): derived, written after versions, never raising
        self._delta = delta.DeltaLog(str(directory / layout.BLOCKS_DIR), meta.name)
        bucket = store._remote
        if bucket is not None and self._read_only:  # a bucket reader has no log of its own: the writer's is there
            opts = {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in bucket.storage_options.items()}
            self._delta = delta.DeltaLog(
                bucket.url(f"{meta.name}/{layout.BLOCKS_DIR}"), meta.name, storage_options=opts
            )
        self._delta_lock = threading.Lock()
        self._delta_synced = -1  # the manifest version the last successful sync reached
        self._delta_error: str | None = None
        self._load()

    # -- identity ------------------------------------------------------------

    @property
    def name(self) -> str:
        """The table's name (its folder in the store)."""
        return self._meta.name

    @property
    def path(self) -> Path:
        """The table's folder."""
        return self._dir

    @property
    def schema(self) -> pl.Schema:
        """Column names and Polars dtypes, in order (what every append is coerced to)."""
        return pl.Schema(self._meta.schema)

    @property
    def time_column(self) -> str | None:
        """The column that orders the table in time (``None``: none), used by pruning and ``time_range``."""
        return self._meta.time_column

    @property
    def max_block_rows(self) -> int:
        """Hot rows that trigger a block write; appends of at least this many rows go straight to blocks."""
        return self._meta.max_block_rows

    @property
    def store(self) -> BacktraceStore:
        """The store this table belongs to."""
        return self._store

    @property
    def read_only(self) -> bool:
        """True when the store was opened with ``read_only=True``."""
        return self._read_only

    @property
    def health(self) -> Health:
        """Failures after a commit point (see :class:`Health`); ``table.health.ok`` is the short answer."""
        with self._lock:
            self._writer.wait_idle()  # like every observer: as if block writes were synchronous
            problems = dict(self._problems)
            for e in self._writer.failed():
                problems.setdefault("block", f"writing the block of LSNs {e.first}-{e.last} failed: {e.error}")
            pending = sum(e.rows for e in self._writer.failed())
            if "freeze" in problems:  # the hot rows could not even be handed to the block writer
                pending += self._hot.rows
            m = self._manifest
            if m is not None and not m.sync():
                problems["manifest"] = (
                    f"manifest version {m.state.version} is committed but its folder could not be synced; "
                    "WAL segments and retired blocks are kept until it is"
                )
        return Health(not problems, tuple(problems.values()), pending)

    # -- opening / recovery ----------------------------------------------------

    def _load(self) -> None:
        """Check the files against the manifest, read block statistics and replay the WAL."""
        writer = not self._read_only
        with os_errors(f"table {self.name!r}: opening"):
            got = recovery.recover(
                self._dir,
                self._meta.schema,
                writer=writer,
                durability=self._store.durability,
                grace_s=self._keep_retired_s(),
                pinned=self._pins.holds,
                progress=self._store._progress(f"{self.name}: block stats", min_total=FOOTER_PROGRESS_MIN),
                published_only=self._store._remote is not None and not writer,
            )
        hot = HotBuffer()
        for lsn, chunk, size in got.hot:
            hot.add(lsn, chunk, size)
        schema = got.schema if got.schema is not None else self._meta.schema
        version = max(self._meta.schema_version, got.state.schema_version)
        if schema != self._meta.schema or version != self._meta.schema_version:
            # the manifest records a newer schema than table.json: a crash between the two steps of a schema
            # change (see manifest.py); a writer completes it
            meta = dataclasses.replace(self._meta, schema=schema, schema_version=version)
            if writer:
                self._write_meta(meta)
            self._set_meta(meta)
        with self._lock:
            self._blocks = got.blocks
            self._stats_frame = got.stats
            self._stats_key = _frozen(got.blocks)
            self._hot = hot
            self._next_lsn = got.next_lsn
            self._wal_records = got.wal_records
            self._wal_bytes = got.wal_bytes
            self._manifest = got.manifest
            self._wal = got.wal_writer
            self.recovery = got.report
        if not writer:
            return
        if got.report.stats_linked and got.manifest is not None:
            self._cache_version = got.manifest.state.version
        if got.stats_changed or not got.report.stats_linked:
            self._write_cache()
        else:
            self._sync_delta()  # catch up if the log is behind (a crash after a version, a damaged log)
        if self._hot.rows >= self._meta.max_block_rows:
            with self._lock:  # in the background, and never raising: opening never fails for want of disk space
                self._after_commit(self._freeze_async)
        log.debug("opened table %r: %s", self.name, got.report.summary())

    def refresh(self) -> None:
        """Re-read the manifest, blocks and WAL tail (read-only stores): see every append acknowledged so far.

        A writer's table is always current; this does nothing there.
        """
        self._check_open()
        if not self._read_only:
            return
        obj = self._store._remote
        if obj is not None:  # a reader of a store in a bucket: the versions published since, first
            recreated: list[str] = []
            with os_errors(f"table {self.name!r}: refreshing from the bucket"):
                newest = remote.pull_table(obj, self.name, self._dir, blocks=False, recreated=recreated)
            if recreated or not newest:  # dropped: this object is gone (store[name] opens a table created since)
                self._store._forget_dropped(self)
                self._check_open()
        self._reload()

    def _reload(self) -> None:
        """A read-only table: take what the local folder holds now (table.json, manifest, blocks, WAL tail)."""
        try:  # the writer may have changed the schema (or made the first pandas append) since
            meta = catalog.TableMeta.load(self._dir / layout.TABLE_JSON)
        except (OSError, CorruptionError) as e:
            log.debug("table %r: table.json not re-read (%s)", self.name, e)
        else:
            if meta.schema_version >= self._meta.schema_version:
                self._set_meta(meta)
        self._load()

    def _set_meta(self, meta: catalog.TableMeta) -> None:
        self._meta = meta
        self._names = meta.schema.names()
        self._dtypes = meta.schema.dtypes()

    def _write_meta(self, meta: catalog.TableMeta) -> None:
        """Rewrite ``table.json`` (atomically, durably) after a schema change committed; never raises:
        the manifest holds the schema, and the next writer's open rewrites it (see manifest.py)."""
        try:
            layout.atomic_write(self._dir / layout.TABLE_JSON, meta.to_json().encode())
        except OSError as e:
            log.warning("table %r: could not rewrite table.json after a schema change (%s); the manifest holds "
                        "the new schema and the next open rewrites it", self.name, e)  # fmt: skip

    # -- writing ---------------------------------------------------------------

    def _check_open(self) -> None:
        if self._dropped:
            raise TableDroppedError(self.name, self._store._where)
        if self._closed:
            raise StoreClosedError(
                f"table {self.name!r} of store {str(self._store._where)!r} is closed; "
                "open the store again with bt.open(path)"
            )

    def _check_writable(self) -> None:
        self._check_open()
        if self._store._forked:
            raise BtError(f"table {self.name!r}: the {self._store._forked_refusal()}")
        if self._read_only:
            raise ReadOnlyError(
                f"table {self.name!r}: the store {str(self._store.path)!r} was opened with read_only=True; "
                "open it without read_only to write."
            )

    def validate(self, data: object) -> pl.DataFrame:
        """Convert and coerce ``data`` to this table's schema without writing anything."""
        df, _meta = _convert.to_polars(data, table=self.name)
        return _convert.coerce(df, self._meta.schema, table=self.name, time_column=self._meta.time_column)

    def append(self, data: object, *, schema_mode: SchemaMode = "strict") -> int | None:
        """Append a frame; return its LSN (``None`` for an empty frame).

        ``schema_mode="strict"`` (the default): the frame must fit the
        table's schema (see ``_convert.coerce``). ``schema_mode="merge"``:
        columns the table lacks are added (at the end, in the frame's order),
        columns of a lossless wider type widen the table's (``storage/evolve.py``),
        and columns the frame lacks are null (never the time column); anything
        else is refused as in strict mode, with nothing changed. A schema
        change is committed (see :meth:`add_columns`) before the rows are
        appended: if the append itself then fails, the new schema stays.

        Durability: returns only after the WAL record is durable under the
        store's policy (``"fsync"``: on disk). Exactly once: the call returns
        if and only if the append committed, and raises only if nothing was
        committed, so retrying a failed append never duplicates rows. Work
        after the commit point (a WAL rotation, the block write when the hot
        rows reach ``max_block_rows``, which runs in the background) never
        raises: a failure is logged, shown in ``table.health`` and retried,
        and until the block is durable those rows stay in the WAL and in every
        scan. The table owns the appended data: changing the caller's arrays
        afterwards changes nothing stored or shown.

        A frame with at least ``max_block_rows`` rows is written straight to
        blocks (every part, then one manifest version: the commit point).
        Crash: an append that was not acknowledged may leave a torn tail,
        which the next open cuts off. A frame that fails validation changes
        nothing.
        """
        self._check_writable()
        mirror = self._store._mirror
        if mirror is not None:  # a store in a bucket whose publishing stopped (a lost lease): refuse early
            mirror.check()
        if check_schema_mode(schema_mode, self.name) == "merge":
            return self._append_merge(data)
        return self._append(data)

    def _append(self, data: object, prepared: tuple[pl.DataFrame, dict[str, Any] | None] | None = None) -> int | None:
        """``append`` of ``data``, or of ``prepared`` (a frame already coerced to the schema, its pandas metadata)."""
        meta = self._meta
        df: pl.DataFrame | None = None
        payload: bytes | None = None
        chunk: pl.DataFrame | None = None
        pandas_meta: dict[str, Any] | None
        fast = _convert.pandas_arrow(data) if prepared is None else None  # a pandas frame of a known structure
        if fast is not None:
            tbl, pandas_meta = fast.table, fast.meta
            n = tbl.num_rows
            tc = meta.time_column
            if (
                0 < n < meta.max_block_rows
                and fast.dtypes == self._dtypes
                and tbl.column_names == self._names
                and (tc is None or tbl.column(tc).null_count == 0)
            ):  # nothing to coerce: the record is encoded from Arrow, the hot rows decoded from it
                payload = fast.ipc()
                chunk = _from_ipc(payload)
                if chunk.dtypes != self._dtypes:  # pragma: no cover - the plan's dtypes say it cannot happen
                    payload = chunk = None
            if payload is None:
                got = pl.from_arrow(tbl)
                assert isinstance(got, pl.DataFrame)
                df = _convert.coerce(got, meta.schema, table=self.name, time_column=tc)
        elif prepared is not None:
            df, pandas_meta = prepared
        else:
            df, pandas_meta = _convert.to_polars(data, table=self.name)
            df = _convert.coerce(df, meta.schema, table=self.name, time_column=meta.time_column)
        n = df.height if df is not None else n
        if pandas_meta is not None and meta.pandas is None and (n or self._next_lsn == 1):
            # the first pandas append says what the table is for pandas (dtypes, index, labels) -- even an
            # empty one, if the table is still empty: reading it back then gives the same empty frame
            self._store._set_pandas_meta(self, pandas_meta)
        if n == 0:  # no rows: no WAL record, no LSN
            return None
        with self._lock, os_errors(f"table {self.name!r}: append"):
            self._check_writable()
            assert self._wal is not None
            if df is not None and n >= meta.max_block_rows:
                return self._append_blocks(df)
            if self._hot and self._hot.rows + n > meta.max_block_rows:
                self._after_commit(self._freeze_async)  # not a commit point, but never worth failing for
                self._check_writable()  # waiting for the block writer released the lock: close() may have run
            if payload is None:
                assert df is not None
                payload = _ipc_bytes(df)
            # The hot rows are decoded from the record: they share no memory with the caller's arrays. While
            # the record is fdatasync'ed (no GIL held) a helper thread decodes it and consolidates the hot
            # chunks (HotBuffer.merged; the lock we hold keeps the buffer as it is): the sync hides both.
            hot = self._hot
            work: list[Future[tuple[list[pl.DataFrame], list[int]]]] = []
            job = functools.partial(_decode_and_merge, list(hot.chunks), list(hot.levels), payload, chunk)
            lsn = self._next_lsn
            self._wal.append(lsn, payload, before_sync=lambda: work.append(_run_async(job)))  # the commit point
            self._next_lsn = lsn + 1  # nothing from here on raises
            size = wal.RECORD_HEADER_SIZE + len(payload)
            self._wal_records += 1
            self._wal_bytes += size
            try:
                merged = work[0].result() if work else job()
            except Exception:  # pragma: no cover - the decode or a merge failed: the plain way, as before
                hot.add(lsn, chunk if chunk is not None else _from_ipc(payload), size)
            else:
                hot.add_merged(lsn, n, size, *merged)
            if self._hot.rows >= self._meta.max_block_rows:
                self._after_commit(self._freeze_async)
            return lsn

    def _append_merge(self, data: object) -> int | None:
        """``append(data, schema_mode="merge")``: the merged schema, checked against the whole frame before
        anything changes; then the schema change (if any), then the append of the conformed frame."""
        df, pandas_meta = _convert.to_polars(data, table=self.name)
        meta = self._meta
        old = meta.schema
        tc = meta.time_column
        if tc is not None and tc not in df.columns:
            raise SchemaMismatchError(
                f"table {self.name!r}, column {tc!r}: the time column is missing from the frame; "
                'schema_mode="merge" fills missing columns with nulls, but never the time column. '
                f"Fix: add a {tc!r} column ({old[tc]}) to the frame.",
                table=self.name,
                columns=[tc],
            )
        cols: dict[str, pl.DataType] = dict(old)
        added: dict[str, pl.DataType] = {}
        for name, dtype in df.schema.items():
            if name not in old:
                added[name] = pl.String() if dtype == pl.Null else dtype  # an all-null column: as create does
            elif evolve.is_widening(old[name], dtype):
                cols[name] = dtype
        if added:
            _convert.normalize_schema(added, table=self.name)  # a type that cannot be stored: refused
        new = pl.Schema({**cols, **added})
        missing = [pl.lit(None, dtype=d).alias(n) for n, d in new.items() if n not in df.columns]
        filled = df.with_columns(missing) if missing else df
        frame = _convert.coerce(filled, new, table=self.name, time_column=tc, merge=True)  # raises: nothing changed
        if new != old:
            self._change_schema(new, "add_columns" if added and new.dtypes()[: len(old)] == old.dtypes() else "widen",
                                pandas_meta=pandas_meta)  # fmt: skip
        self._check_writable()
        return self._append(data, (frame, pandas_meta))

    def add_columns(self, columns: Mapping[str, Any]) -> None:
        """Add columns at the end of the schema (in the mapping's order); rows appended before read as null.

        ``columns`` maps new column names to Polars dtypes (as for
        ``create_table``). Refused -- a :class:`~bt_frames.BtError` naming the
        table, the column and the fix, nothing changed -- for a name the table
        has, a dtype that cannot be stored, an empty mapping or a read-only store.

        Atomic and durable on return: the hot rows are first written to a
        block, then one manifest version (operation ``"add_columns"``) records
        the new schema -- the commit point -- and ``table.json`` is rewritten
        after it (see ``storage/manifest.py`` for what a crash in between leaves).
        """
        self._check_writable()
        if not isinstance(columns, Mapping) or not columns:
            raise SchemaMismatchError(
                f"table {self.name!r}: add_columns needs a non-empty dict of new column -> polars dtype, "
                f"e.g. table.add_columns({{'venue': pl.String}}); got {columns!r}.",
                table=self.name,
            )
        old = self._meta.schema
        taken = [c for c in columns if c in old]
        if taken:
            raise SchemaMismatchError(
                f"table {self.name!r}: column(s) {', '.join(map(repr, taken))} already exist "
                f"({', '.join(f'{c}: {old[c]}' for c in taken)}); add_columns only adds new ones. Fix: pick "
                'another name; to widen a column\'s type, append a frame of the wider type with schema_mode="merge".',
                table=self.name,
                columns=taken,
            )
        bad = [c for c in columns if not isinstance(c, str) or not c]
        if bad:
            raise SchemaMismatchError(
                f"table {self.name!r}: column name(s) {bad!r} are not non-empty strings. Fix: name them with strings.",
                table=self.name,
            )
        added = _convert.normalize_schema(columns, table=self.name)
        self._change_schema(pl.Schema({**old, **added}), "add_columns")

    def _change_schema(self, new: pl.Schema, operation: str, *, pandas_meta: dict[str, Any] | None = None) -> None:
        """Commit ``new`` as the table's schema (a widening of the current one: ``evolve.conforms``).

        Order (the crash analysis is in ``storage/manifest.py``): the hot rows are frozen into a block (so
        every WAL record replay decodes has the current schema), then the manifest version carrying the
        schema (the commit point), then ``table.json``, then the in-memory state and the statistics cache.
        """
        with self._lock, os_errors(f"table {self.name!r}: {operation}"):
            self._writer.wait_idle()
            self._check_writable()  # waiting released the lock: close() may have run
            old = self._meta
            assert evolve.conforms(old.schema, new), (old.schema, new)
            self._freeze()  # raises (nothing changed) if the block cannot be written
            # the previous schema too, as history: what scan(as_of=) of an older version reads
            edit = mf.Edit(
                operation,
                schema=catalog.schema_to_b64(new),
                info={"previous_schema": catalog.schema_to_b64(old.schema), "columns": list(new)[len(old.schema) :]},
            )
            state = self._commit(edit)  # the commit point
            meta = dataclasses.replace(
                old,
                schema=new,
                schema_version=state.version,
                pandas=_evolved_pandas(old.pandas, old.schema, new, pandas_meta),
            )
            self._write_meta(meta)
            self._set_meta(meta)
            frame = self._stats_frame
            if frame is not None:
                self._stats_frame = evolve.widen_stats(frame, catalog.stats_schema(new))
                if self._stats_frame is None:  # pragma: no cover - widen_stats accepts every older schema
                    self._stats_key = ()
            log.info("table %r: schema changed (%s, manifest version %d): %s", self.name, operation,
                     state.version, new)  # fmt: skip
        self._write_cache()
        if delta.available() and delta.unsupported_columns(new) and not delta.unsupported_columns(old.schema):
            warnings.warn(
                DeltaIncompatibleWarning.from_columns(self.name, delta.unsupported_columns(new)),
                stacklevel=find_stacklevel(),
            )

    def _after_commit(self, work: Callable[[], None]) -> None:
        """Run work that follows a commit point: a failure is logged and kept in ``health``, never raised."""
        try:
            work()
        except Exception as e:
            self._problems["freeze"] = f"handing the hot rows to the block writer failed: {e}"
            log.warning("table %r: %s; the rows stay durable in the WAL and it is retried", self.name, e)

    def _freeze_async(self) -> None:
        """Hand the hot rows to the block writer and return (under the lock).

        A failed block write must not un-acknowledge anything: the rows stay
        hot and durable in the WAL; the failure is in ``health`` and the write
        is retried here, at most every ``RETRY_INTERVAL_S``.
        """
        now = time.monotonic()
        recent = now - self._last_attempt < RETRY_INTERVAL_S
        if "freeze" in self._problems and recent:  # the last rotation failed: do not hammer a full disk
            return
        self._last_attempt = now
        self._hand_over()
        if not (recent and self._writer.failed()):
            self._writer.retry()
        self._writer.wait_below(MAX_FROZEN)  # back-pressure: at most MAX_FROZEN blocks' rows wait

    def _append_blocks(self, df: pl.DataFrame) -> int:
        """A large append goes straight to blocks: every part is written and renamed, then one manifest version."""
        assert self._wal is not None
        self._freeze()  # blocks hold every earlier LSN first: the table's LSNs stay in order
        self._check_writable()  # waiting for the block writer released the lock: close() may have run
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
                        writer=locking.process_tag(),  # a reader tells parts in flight from a crash's
                    )
                )
            self._commit(mf.Edit("append", add=[mf.entry_of(b) for b in infos]))  # the commit point
        except BaseException:
            for info in infos:  # never named by a manifest version: the append did not happen
                fs.unlink(info.path, missing_ok=True)
            raise
        self._next_lsn = lsn + 1
        self._block_list().extend(infos)
        self._write_cache()
        return lsn

    def _commit(self, edit: mf.Edit) -> mf.State:
        """Write the next manifest version (with what earlier failed commits left pending)."""
        assert self._manifest is not None
        with self._manifest_lock:
            forget, self._pending_forget = self._pending_forget, []
            segs, self._pending_wal = self._pending_wal, []
            edit.forget += forget
            edit.wal_add += segs
            try:
                state = self._manifest.commit(edit)
            except BaseException:
                self._pending_forget, self._pending_wal = forget + self._pending_forget, segs + self._pending_wal
                raise
            mirror = self._store._mirror
            if mirror is not None:  # a store in a bucket: publish the version in the background
                mirror.enqueue(self.name, self._dir, state.version)
            return state

    def flush(self) -> int:
        """Freeze the hot buffer into a block now; return the number of rows written.

        Durable on return (the block's manifest version is on disk). Unlike an
        append, a flush raises if the block write fails (the rows stay in the
        WAL and ``health`` reports it).
        """
        self._check_writable()
        with self._lock, os_errors(f"table {self.name!r}: flush"):
            self._writer.wait_idle()
            self._check_writable()  # waiting released the lock: close() may have run
            n = self._hot.rows + sum(e.rows for e in self._writer.frozen)
            self._freeze()
            if self._meta.retention_s is not None:  # whole blocks past the retention go as they are frozen
                _lifecycle.retain(self, whole_blocks=True, freeze=False)
            self._compactor.kick()  # retries a failed auto-compaction too
        mirror = self._store._mirror
        if mirror is not None:  # a store in a bucket: the rows are published when flush returns
            mirror.wait()
        return n

    def compact(self, *, target_rows: int | None = None, min_rows: int | None = None) -> CompactResult:
        """Merge runs of adjacent small blocks into blocks of up to ``target_rows`` rows.

        ``target_rows`` defaults to ``max_block_rows``; a block is small when it
        has fewer than ``min_rows`` rows (default: half of ``target_rows``).
        Parts of a multi-part append are left alone. Row order is unchanged.
        (With ``auto_compact`` on, the default, small blocks are also merged in
        the background by a size-tiered policy: ``bt_frames/_compactor.py``;
        ``table.compaction`` says what it did.)

        Crash safety: the merged blocks are written first, then one manifest
        version replaces the inputs with them (the commit point); a crash
        before it leaves merged files no version names, which the next open
        removes. The inputs are retired, not deleted: scans in this process
        and readers in others that still use them keep them until the store's
        ``retired_grace`` has passed.
        """
        self._check_writable()
        target = target_rows or self._meta.max_block_rows
        small = min_rows if min_rows is not None else max(1, target // 2)
        with self._lock, os_errors(f"table {self.name!r}: compact"):
            self._writer.wait_idle()
            self._check_writable()  # waiting released the lock: close() may have run
            return self._compact(target, small)

    def _compact(self, target: int, small: int) -> CompactResult:
        """``compact`` under the lock, the block writer idle; no background merge commits meanwhile."""
        with self._compactor.hold():
            before = len(self._blocks)
            runs = _compaction_runs(self._blocks, target, small)
            bar = self._store._progress(f"compact {self.name}")
            it: Iterable[list[blk.BlockInfo]] = bar(runs, len(runs)) if bar is not None else runs
            rows_rewritten = 0
            merged: list[tuple[list[blk.BlockInfo], blk.BlockInfo]] = []
            try:
                for group in it:
                    out = merge_blocks(self, group)
                    merged.append((group, out))
                    rows_rewritten += out.rows
                if merged:
                    self._commit(
                        mf.Edit(
                            "compact",
                            add=[mf.entry_of(out) for _g, out in merged],
                            remove=[b.filename for g, _o in merged for b in g],
                        )
                    )
            except BaseException:
                for _g, out in merged:  # not named by any version: the compaction did not happen
                    fs.unlink(out.path, missing_ok=True)
                raise
            for group, out in merged:
                i = self._blocks.index(group[0])
                self._block_list()[i : i + len(group)] = [out]
            if merged:
                self._write_cache()
                self._purge_retired()
            if self._meta.retention_s is not None:  # and, compacting, the rows of partly expired blocks
                _lifecycle.retain(self, whole_blocks=False, freeze=False)
            return CompactResult(before, len(self._blocks), len(merged), rows_rewritten)

    # -- the table's life: delete, update, upsert, options (see bt_frames/_lifecycle.py) --------------------

    def delete(self, where: Where) -> int:
        """Delete the rows matching ``where`` (an expression or DNF tuples, as for :meth:`scan`); return how many.

        Durable and atomic like an append: when it returns, one manifest version
        (the commit point) has retired the blocks that held those rows, and every
        later scan misses them; a crash before that leaves the table as it was.
        Blocks the statistics rule out are not touched, blocks where every row
        matches are retired unread, and only the others are read and rewritten
        (``table.last_change`` says how many). Rows where ``where`` is null are
        kept. The hot rows are frozen into a block first.
        """
        return _lifecycle.delete(self, where)

    def update(self, data: object) -> Change:
        """Replace the rows whose time lies in ``data``'s time range by ``data`` (ArcticDB's ``update``).

        Needs a time column. ``data`` is coerced like an append. Its rows take the
        place of the first row they replace (see ``bt_frames/_lifecycle.py`` for
        the order rule). Atomic and durable on return: one manifest version.
        """
        return _lifecycle.update(self, data)

    def upsert(self, data: object, on: str | Sequence[str]) -> Change:
        """Rows of ``data`` replace the rows with an equal key (columns ``on``); the others are appended.

        A key may appear once in ``data``; null keys never match (appended, as
        in a Delta ``MERGE``). A replacing row takes the place of the first row
        with its key. Atomic and durable on return: one manifest version.
        """
        return _lifecycle.upsert(self, data, on)

    @property
    def options(self) -> dict[str, Any]:
        """``max_block_rows``, ``retention``, ``keep_versions`` and ``auto_compact`` (see :meth:`set_options`)."""
        return _lifecycle.options_of(self._meta)

    @property
    def retention(self) -> dt.timedelta | None:
        """Rows whose time is older than this before the newest time value are dropped (None: kept)."""
        return _lifecycle.options_of(self._meta)["retention"]

    @property
    def keep_versions(self) -> dt.timedelta | None:
        """Retired blocks older than this are deleted automatically (None: kept until :meth:`vacuum`)."""
        return _lifecycle.options_of(self._meta)["keep_versions"]

    @property
    def auto_compact(self) -> bool:
        """Whether small adjacent blocks are merged in the background."""
        return self._meta.auto_compact

    @property
    def compaction(self) -> CompactionStats:
        """What auto-compaction did in this process: merges, rows and bytes rewritten, runs pending, the last
        error (see ``bt_frames/_compactor.py``). Never waits for a running merge."""
        with self._lock:
            return self._compactor.stats()

    def _wait_compacted(self) -> None:
        """Wait until auto-compaction has nothing left to merge now (for tests and benchmarks)."""
        with self._lock:
            self._writer.wait_idle()
            self._compactor.kick()
            self._compactor.wait_idle()

    def set_options(self, **options: Any) -> None:
        """Change ``max_block_rows``, ``retention``, ``keep_versions`` or ``auto_compact``.

        ``retention`` (a ``timedelta``, or None): keep the rows whose time is
        within it of the table's newest time value (not the wall clock); older
        rows are dropped when blocks are frozen or compacted, whole blocks
        first. ``keep_versions``: how long retired blocks are kept for
        ``scan(as_of=)`` (None, the default: until :meth:`vacuum`).
        ``auto_compact``: merge small adjacent blocks in the background.

        Durable on return: ``table.json`` is rewritten atomically (the commit
        point), then a manifest version records the change for ``versions``.
        """
        self._check_writable()
        _lifecycle.check_options(options, self.name)
        with self._lock, os_errors(f"table {self.name!r}: set_options"), self._compactor.hold():
            self._writer.wait_idle()
            self._check_writable()
            new = _lifecycle.with_options(self._meta, table=self.name, **options)
            if new == self._meta:
                return
            layout.atomic_write(self._dir / layout.TABLE_JSON, new.to_json().encode())
            self._meta = new
            try:
                self._commit(mf.Edit("set_options", info={"options": _lifecycle.options_json(new)}))
            except Exception as e:  # the options are set; only their line in the history is missing
                log.warning("table %r: could not record set_options in the manifest (%s)", self.name, e)
            self._link_cache()
        if new.retention_s is not None:  # after the commit point: a failure is reported, never raised
            try:
                self.enforce_retention()
            except BtError as e:
                self._problems["retention"] = f"enforcing the retention failed ({e}); retried at the next freeze"
                log.warning("table %r: %s", self.name, self._problems["retention"])
        if new.auto_compact:  # after the retention: its round then finds nothing left to drop
            self._compactor.kick()

    @property
    def versions(self) -> pl.DataFrame:
        """The table's history, one row per manifest version (Delta's ``history()``).

        Columns: ``version``, ``lsn`` (the last LSN whose rows the version's
        blocks hold), ``time`` (UTC), ``operation`` (``create``, ``publish``,
        ``append``, ``compact``, ``delete``, ``update``, ``upsert``,
        ``retention``, ``set_options``, ``vacuum``, housekeeping such as
        ``rotate`` and ``close``...), ``rows_added``, ``rows_removed``, then
        ``rows``, ``blocks`` and ``bytes`` in blocks after it, and ``detail``.
        Any version whose blocks are still kept can be read with
        ``scan(as_of=version)``.
        """
        self._check_open()
        with os_errors(f"table {self.name!r}: reading the manifest"):
            return _lifecycle.versions(self)

    def vacuum(self, older_than: dt.timedelta = dt.timedelta(0)) -> int:
        """Delete the files of blocks retired at least ``older_than`` ago; return the bytes freed.

        Retired blocks (replaced by a compaction, a delete, an update...) are
        kept for ``scan(as_of=)`` until vacuumed. Never deleted: a block the
        newest version uses, one a running read in this process uses, or one
        retired less than the store's ``retired_grace`` ago (readers in other
        processes may still use it). Versions that needed a deleted file can no
        longer be read with ``as_of``.
        """
        return _lifecycle.vacuum(self, older_than)

    def enforce_retention(self, retention: dt.timedelta | None = None) -> int:
        """Drop the rows older than the table's ``retention`` now (whole blocks and partial ones); return how many.

        Runs by itself when blocks are frozen (whole blocks) and compacted.
        ``retention``: a one-off retention instead of the table's (its option unchanged):
        ``enforce_retention(timedelta(days=30))`` keeps the last 30 days once.
        """
        seconds = None if retention is None else _lifecycle.seconds_of(retention, "retention", self.name)
        got = _lifecycle.retain(self, whole_blocks=False, seconds=seconds)
        return got.rows_removed if got is not None else 0

    # -- pins and retired blocks: a running read never loses its files ---------

    def _snapshot(self, *, pin: bool, as_of: int | None = None) -> Snapshot:
        """The blocks and hot chunks as of now (or the blocks of manifest version ``as_of``); with ``pin``,
        its blocks are pinned under the same lock (``snap.pin`` is the token that releases them: :meth:`_unpin`)."""
        self._check_open()
        if as_of is not None:
            with self._lock:  # found and pinned under the lock: a vacuum cannot delete them in between
                old = _lifecycle.blocks_at(self, as_of)  # live ones as they are, retired ones from their footers
                token = self._pins.pin(old) if pin else None
            schema = _lifecycle.schema_at(self._dir, as_of, self._meta.schema)
            stats = catalog.merge_stats(self._stats(), list(old), self._meta.schema)
            return Snapshot(old, (), stats, token, schema, self._meta.schema_version > 0, self._fetcher())
        with self._lock:
            self._writer.wait_idle()
            hot = tuple(c for e in self._writer.frozen for c in e.chunks) + tuple(self._hot.chunks)
            blocks = _frozen(self._blocks)
            token = self._pins.pin(blocks) if pin else None
            return Snapshot(
                blocks, hot, self._stats(), token, self._meta.schema, self._meta.schema_version > 0, self._fetcher()
            )

    def _fetcher(self) -> Callable[[Sequence[blk.BlockInfo]], None] | None:
        """A reader of a store in a bucket: what brings a scan's blocks into the local folder (else None)."""
        obj = self._store._remote
        if obj is None or not self._read_only:
            return None

        def fetch(blocks: Sequence[blk.BlockInfo]) -> None:
            for b in blocks:
                if not os.path.exists(b.file):
                    with os_errors(f"table {self.name!r}: fetching block {b.filename} from the bucket"):
                        remote.fetch_block(obj, self.name, Path(b.file))

        return fetch

    def _repin(self, token: int, blocks: Sequence[blk.BlockInfo]) -> int:
        """Narrow pin ``token`` to ``blocks`` (a subset of what it holds): a new token for them."""
        with self._lock:
            new = self._pins.pin(tuple(blocks))
        self._unpin(token)
        return new

    def _unpin(self, token: int | None) -> None:
        if token is None:
            return
        with self._lock:
            released = self._pins.unpin(token)
            if released and not self._closed and self._manifest is not None and self._manifest.state.retired:
                self._purge_retired()

    def _keep_retired_s(self) -> float:
        """How long a retired block stays: for readers (the store's ``retired_grace``) and for time travel
        (the table's ``keep_versions``; none set: until ``vacuum``)."""
        keep = self._meta.keep_versions_s
        return math.inf if keep is None else max(keep, self._store.retired_grace)

    def _purge_retired(self, *, grace_s: float | None = None) -> None:
        """Delete retired blocks past the grace period that no scan here pins; the next version forgets them."""
        if self._manifest is None or not self._manifest.sync():  # the versions retiring them must be durable
            return
        grace = self._keep_retired_s() if grace_s is None else grace_s
        if grace == math.inf:
            return
        now = dt.datetime.now(dt.UTC)
        gone = []
        for r in self._manifest.state.retired:
            if r.block in self._pending_forget or self._pins.holds(r.block) or r.age_s(now) < grace:
                continue
            try:
                fs.unlink(self._dir / layout.BLOCKS_DIR / r.block, missing_ok=True)
            except OSError as e:  # retried by the next purge
                log.warning("table %r: could not delete retired block %s (%s)", self.name, r.block, e)
                continue
            gone.append(r.block)
        self._pending_forget += gone

    # -- the block writer ------------------------------------------------------

    def _freeze(self) -> None:
        """Hot buffer -> blocks, now: hand over, write (retrying earlier failures), wait; raise on failure."""
        self._hand_over()
        self._writer.retry()
        self._writer.wait_idle()
        if self._writer.frozen:
            run = self._writer.frozen[0]
            err = run.error
            assert err is not None
            raise BtError(
                f"table {self.name!r}: writing the block of LSNs {run.first}-{run.last} "
                f"failed ({err}); the rows stay durable in the WAL and the write is retried. "
                "Fix: free disk space (or fix the folder's permissions) and call flush() again."
            ) from err

    def _hand_over(self) -> None:
        """Move the hot rows to the frozen list and start a new WAL segment after them (under the lock).

        If the rotation fails the rows stay hot, appends go on into the
        current segment, and the failure is raised to the caller (which, after
        a commit point, only logs it).
        """
        if not self._hot:
            return
        assert self._wal is not None
        last = self._hot.last_lsn
        new_seg = self._dir / layout.WAL_DIR / layout.wal_name(last + 1)
        if self._wal.path != new_seg:
            self._wal.rotate(last + 1)  # the block's records end where a segment ends
            try:
                self._commit(mf.Edit("rotate", wal_add=[last + 1]))
            except Exception as e:  # the segment is named by the next version that commits
                with self._manifest_lock:
                    self._pending_wal.append(last + 1)
                log.warning("table %r: recording WAL segment %s failed (%s); retried", self.name, new_seg.name, e)
        self._problems.pop("freeze", None)
        self._writer.hand(self._hot.take())

    def _write_run(self, entry: Frozen, covered: list[tuple[int, Path]]) -> blk.BlockInfo:
        """The block writer's work (no lock held): the block file, then its manifest version (the commit point).

        Raises only if nothing was committed; a block file written but never
        named by a version is deleted (or, failing that, removed by the next open).
        """
        info = blk.write_block(
            self._dir / layout.BLOCKS_DIR,
            entry.frame(),
            first_lsn=entry.first,
            last_lsn=entry.last,
            row_group_rows=self._meta.row_group_rows,
        )
        try:
            self._commit(mf.Edit("publish", add=[mf.entry_of(info)], wal_remove=[f for f, _p in covered]))
        except BaseException:
            try:
                fs.unlink(info.path, missing_ok=True)
            except OSError:
                pass
            raise
        return info

    def _covered_segments(self, entry: Frozen) -> list[tuple[int, Path]]:
        """WAL segments every record of which is in ``entry``'s block or an earlier one (under the lock).

        A segment is covered when the next segment starts at or below the first
        LSN not yet in a block once ``entry`` is published.
        """
        later = [e.first for e in self._writer.frozen if e is not entry]
        unfrozen = min([*later, self._hot.first_lsn if self._hot else self._next_lsn])
        segs = wal.list_segments(self._dir / layout.WAL_DIR)
        return [
            (first, path)
            for (first, path), (next_first, _p) in itertools.pairwise(segs)
            if next_first <= unfrozen and (self._wal is None or path != self._wal.path)
        ]

    def _publish(self, entry: Frozen, info: blk.BlockInfo, covered: list[tuple[int, Path]]) -> list[tuple[int, Path]]:
        """A block's version is committed (``entry`` has left the writer's queue): the block joins the table.

        Under the lock, so in memory only (``_write_run`` left the manifest's
        folder synced); returns the WAL segments ``_settle`` deletes.
        """
        self._block_list().append(info)
        self._wal_records -= entry.records
        self._wal_bytes -= entry.bytes
        # While the manifest's folder is not synced, a power loss could lose the version naming the block:
        # its records then must still be in the WAL (recovery removes the segments later).
        if self._manifest is not None and not self._manifest.sync():
            covered = []
        self._purge_retired()
        log.debug("table %r: froze LSNs %d-%d into %s (%d rows)", self.name, entry.first, entry.last,
                  info.filename, info.rows)  # fmt: skip
        return covered

    def _settle(self, covered: list[tuple[int, Path]]) -> None:
        """After a publish, without the table lock (appends go on): delete the covered segments, write the cache."""
        # No directory fsync: a deletion lost in a crash leaves a segment that recovery removes again.
        for _first, path in covered:
            try:
                fs.unlink(path, missing_ok=True)
            except OSError as e:  # removed by the next open: no version names it
                log.warning("table %r: could not delete WAL segment %s (%s)", self.name, path.name, e)
        self._write_cache()
        self._compactor.kick()  # a new block: perhaps a run of small ones to merge (in another thread)

    def _block_list(self) -> list[blk.BlockInfo]:
        """The blocks, to change in place: a writer's are always a list."""
        assert isinstance(self._blocks, list), "only a writer changes its blocks"
        return self._blocks

    def _write_cache(self) -> None:
        """Write the statistics cache of the current blocks (needs no table lock; never raises).

        It is linked to the current manifest version (``manifest.link``) when its rows are exactly that
        version's blocks, in order, so that readers take the state from it instead of decoding the manifest.
        """
        try:
            stats = self._stats()  # before the cache lock: never wait for the table lock while holding it
            # Our own frame object: writing a DataFrame locks it in Polars while the GIL is released, and another
            # thread (the block writer's settle, a background merge) reading the shared one would hold the GIL
            # waiting for that lock -- a deadlock. A clone shares the columns; it costs nothing.
            stats = stats.clone()
            link = None
            m = self._manifest
            if m is not None:
                state = m.state  # replaced, never changed, by a commit: one consistent version
                if stats.get_column("block").to_list() == [e.block for e in state.blocks]:
                    link = mf.link(state)
            with self._cache_lock:
                catalog.write_cache(self._dir, stats, self._meta.schema, link)
                self._cache_version = link["version"] if link is not None else 0
            mirror = self._store._mirror
            if mirror is not None and link is not None:  # a store in a bucket: readers open from its copy
                mirror.cache_written(self.name, self._dir, link["version"])
        except Exception as e:  # only a cache: rebuilt from footers on the next open
            if sys.is_finalizing():  # a store closed by its finaliser at exit: nothing to tell anyone
                return
            log.warning("table %r: could not write the stats cache (%s)", self.name, e)
        self._sync_delta()

    # -- the Delta log (storage/delta.py) ----------------------------------------------------------------------

    def _delta_source(self) -> delta.Source | None:
        """The manifest state and the statistics of its blocks (None: they do not match yet -- a later sync)."""
        m = self._manifest
        if m is None:
            return None
        stats = self._stats()
        state = m.state  # replaced, never changed, by a commit
        if stats.get_column("block").to_list() != [e.block for e in state.blocks]:
            return None
        return delta.Source(
            self.name,
            state.version,
            state.blocks,
            self._meta.schema,
            stats,
            self._keep_retired_s(),
            lambda after: mf.edits_after(self._dir, after, state.version),
        )

    def _sync_delta(self, *, rebuild: bool = False) -> None:
        """Bring the Delta log up to the manifest (needs no table lock; never raises: see storage/delta.py)."""
        if self._read_only or self._store._forked:
            return
        with self._delta_lock:
            # no log: one written before (by an earlier open, or before the schema change) goes, or other
            # engines would read it as the table while the versions after it change the rows
            off = not self._store.delta_log or not delta.available()
            if off or delta.unsupported_columns(self._meta.schema):
                gone = NO_LOG if off else UNSUPPORTED
                if self._delta_synced != gone:
                    try:
                        self._delta.remove_log()
                        self._delta_synced = gone
                        mirror = self._store._mirror
                        if mirror is not None:  # a store in a bucket: the log leaves the bucket too
                            mirror.delta_written(self.name, self._dir)
                    except Exception as e:
                        log.warning("table %r: could not remove its Delta log (%s)", self.name, e)
                return
            try:
                src = self._delta_source()
                if src is None or (src.version == self._delta_synced and not rebuild):
                    return
                resets = self._delta.resets
                if rebuild:
                    self._delta.rebuild(src)
                else:
                    self._delta.sync(src)
                self._delta_synced = src.version
                self._delta_error = None
                mirror = self._store._mirror
                if mirror is not None:  # a store in a bucket: the log's new commits follow their versions there
                    mirror.delta_written(self.name, self._dir, reset=self._delta.resets != resets)
            except Exception as e:
                if sys.is_finalizing():
                    return
                if self._delta_error is None:  # once per failure streak, not at every version
                    log.warning("table %r: could not write the Delta log in %s (%s: %s); the table is unaffected, "
                                "the log is brought up to date at the next version or open", self.name,
                                self._delta.uri, type(e).__name__, e)  # fmt: skip
                self._delta_error = f"{type(e).__name__}: {e}"

    @property
    def delta_log(self) -> delta.Status:
        """The state of the table's Delta log at ``<table>/blocks/_delta_log`` (see "Reading a table with
        other engines" in the README): ``up to date``, ``behind``, ``failed`` (with the error), ``unsupported``
        (column types Delta cannot represent), ``unavailable`` (deltalake not installed) or ``off``
        (``bt.open(..., delta_log=False)``). A read-only store never writes the log; its status says whether
        the writer's log is up to date."""
        self._check_open()
        m = self._manifest  # a reader's open from the statistics cache loads none: the newest version file then
        version = m.state.version if m is not None else (mf.list_versions(self._dir) or [0])[-1]
        uri = self._delta.uri
        if not self._store.delta_log:
            return delta.Status("off", uri, None, version)
        bad = delta.unsupported_columns(self._meta.schema)
        if bad:
            return delta.Status("unsupported", uri, None, version, unsupported=bad)
        if not delta.available():
            return delta.Status("unavailable", uri, None, version, error="deltalake is not installed")
        if self._delta_synced != version:  # versions since the last sync (a rotation...) may need no commit
            self._sync_delta()
        err: str | None
        with self._delta_lock:
            try:
                txn = self._delta.txn_version(refresh=self._read_only)
            except Exception as e:
                txn, err = None, f"{type(e).__name__}: {e}"
            else:
                err = self._delta_error
        if self._read_only:  # judged from the files: is any version after the log's txn one that needs a commit?
            edits = None if txn is None or txn > version else mf.edits_after(self._dir, txn, version)
            pending = edits is None or any(e.add or e.remove or e.schema for _v, e in edits)
            return delta.Status("behind" if pending else "up to date", uri, txn, version, error=err)
        if err is not None:
            return delta.Status("failed", uri, txn, version, error=err)
        state = "up to date" if self._delta_synced == version else "behind"
        return delta.Status(state, uri, txn, version)

    def rebuild_delta_log(self) -> delta.Status:
        """Remove ``<table>/blocks/_delta_log`` (which the store wrote) and write it again from the manifest.

        The log is derived from the manifest and repaired by itself (at the next version, and on open); this is
        for a log another tool changed. Raises if it cannot be written (a ``BtError`` naming the folder).
        """
        self._check_writable()
        with self._lock:
            self._writer.wait_idle()
        self._sync_delta(rebuild=True)
        status = self.delta_log
        if status.state in ("failed", "behind"):
            raise BtError(
                f"table {self.name!r}: could not rebuild the Delta log in {self._delta.uri} ({status.error}); "
                "fix the folder's permissions or free disk space and call rebuild_delta_log() again."
            )
        return status

    def _link_cache(self) -> None:
        """Rewrite the cache if it is not linked to the current manifest version (after a commit that
        changed no block: a reader would otherwise decode the manifest)."""
        m = self._manifest
        if m is not None and self._cache_version != m.state.version:
            self._write_cache()

    def _abandon(self) -> None:
        """In a forked child: forget the parent's WAL descriptor without touching its files (see
        ``BacktraceStore._abandon``)."""
        self._closed = True
        self._compactor.stopped = True  # the parent's merge thread does not exist here: never start one
        wal_, self._wal = self._wal, None
        if wal_ is not None:
            wal_.abandon()

    def close(self) -> None:
        """Wait for the block writer, record the table's last LSN in the manifest and close the WAL.

        Rows whose block write failed stay durable in the WAL and are replayed
        on the next open. Closing twice does nothing.
        """
        if self._store._forked:
            self._abandon()
            return
        with self._lock:
            if self._closed:
                return
            if self._store._mirror is not None and self._hot and self._store._mirror.failed is None:
                try:  # a store in a bucket: rows only in the local WAL are not published; freeze them
                    self._freeze()
                except BtError as e:
                    log.warning("table %r: %s", self.name, e)
            self._writer.wait_idle()
            self._compactor.stop()  # waits for a running background merge (releasing the lock)
            self._writer.wait_idle()  # a block may have been handed over meanwhile
            if self._writer.frozen:
                log.warning("table %r: closing with %d rows not in blocks (a block write failed); they are "
                            "durable in the WAL and replayed on the next open", self.name,
                            sum(e.rows for e in self._writer.frozen))  # fmt: skip
            self._closed = True
            self._writer.shutdown()
            wal_closed = False
            try:
                if self._wal is not None:
                    with os_errors(f"table {self.name!r}: close (syncing the WAL)"):
                        self._wal.close()
                wal_closed = True
            finally:
                self._wal = None
                if self._manifest is not None and wal_closed:  # the last LSN is recorded only once it is durable
                    self._purge_retired()
                    state = self._manifest.state
                    if state.next_lsn != self._next_lsn or self._pending_forget or self._pending_wal:
                        try:  # lets the next open tell a truncated WAL from one that ends here
                            self._commit(mf.Edit("close", next_lsn=self._next_lsn))
                        except Exception as e:
                            log.warning("table %r: could not record the close in the manifest (%s)", self.name, e)
                    self._link_cache()

    # -- state -----------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        """The blocks and hot chunks as of now (cheap; blocks are immutable)."""
        return self._snapshot(pin=False)

    def _record_scan(self, report: PruneReport, read: ReadStats) -> None:
        self.last_plan = report
        self.last_read = read
        self.scans += 1

    def _stats(self) -> pl.DataFrame:
        """The statistics frame of ``self._blocks`` (kept in step with them incrementally).

        The merge runs outside the table lock unless the caller holds it (the
        block writer's ``_settle`` does not: appends go on meanwhile).
        """
        with self._lock:
            if self._stats_frame is not None and self._stats_key is self._blocks:  # immutable CachedBlocks
                return self._stats_frame
            frame, key, blocks = self._stats_frame, self._stats_key, tuple(self._blocks)
            if frame is not None and len(key) == len(blocks) and all(map(operator.is_, key, blocks)):
                return frame
        merged = catalog.merge_stats(frame, list(blocks), self._meta.schema)
        with self._lock:
            now = self._blocks
            if len(now) == len(blocks) and all(map(operator.is_, now, blocks)):
                self._stats_frame, self._stats_key = merged, blocks
        return merged

    @property
    def blocks(self) -> pl.DataFrame:
        """One row per block: file, LSN range, rows, bytes and ``min.<col>``/``max.<col>``/``null_count.<col>``."""
        from bt_frames.prune import blocks_frame

        snap = self.snapshot()
        return blocks_frame(snap.blocks, snap.stats, self._meta.schema)

    @property
    def rows(self) -> int:
        """Rows in the table: in blocks plus hot (acknowledged, in the WAL, not yet in a block)."""
        self._check_open()
        return sum(self._row_counts())

    @property
    def hot_rows(self) -> int:
        """Rows not yet in a block (in the WAL and in memory)."""
        return self._row_counts()[1]

    @property
    def cold_rows(self) -> int:
        """Rows in blocks."""
        return self._row_counts()[0]

    def _row_counts(self) -> tuple[int, int]:
        """(rows in blocks, hot rows), both from one state: after the block writer, under one lock."""
        if self._dropped:
            self._check_open()
        with self._lock:
            self._writer.wait_idle()
            cold = sum(b.rows for b in self._blocks)
            return cold, self._hot.rows + sum(e.rows for e in self._writer.frozen)

    @property
    def wal_state(self) -> dict[str, Any]:
        """Segments, records and bytes currently in the WAL (records not yet in blocks)."""
        with self._lock:
            self._writer.wait_idle()
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
        """(earliest, latest) value of the time column over blocks and hot rows; ``None`` without one or rows.

        Block bounds come from the cached statistics: no block is read.
        """
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

    def scan(
        self, where: Where | None = None, *, prune: bool = True, as_of: int | dt.datetime | str | None = None
    ) -> pl.LazyFrame:
        """A LazyFrame over blocks + hot rows, in append order.

        Filters (``where=`` or any later ``.filter``) and projections are
        pushed down: blocks whose statistics rule the predicate out are never
        opened, survivors are read by Polars' Parquet reader. Each
        ``collect()`` reads one consistent snapshot taken when it starts.

        ``as_of``: the table as it was at a manifest version (a number from
        :attr:`versions`) or at a time (the newest version made at or before
        it; naive datetimes are UTC): that version's blocks, read even if they
        were retired since (until :meth:`vacuum` deletes them). A version holds
        the rows in blocks then; rows still in the WAL at that moment are not
        part of any version.
        """
        self._check_open()
        version = None if as_of is None else _lifecycle.resolve_version(self, as_of)
        if version is not None:
            _lifecycle.blocks_at(self, version)  # a vacuumed version fails now, not at collect()
        return _scan.scan(self, where, prune=prune, as_of=version)

    def prune(self, where: Where | None = None) -> PruneReport:
        """Plan a scan: which blocks ``where`` skips and why (nothing is read)."""
        from bt_frames import prune as _prune

        return _prune.plan(
            self.snapshot(),
            self._meta.schema,
            _prune.to_expr(where, self._meta.schema, table=self.name),
            table=self.name,
        )

    def plot_blocks(self, where: Where | None = None, *, ax: Any = None) -> Any:
        """A matplotlib figure of the blocks along the time axis, pruned vs scanned for ``where``.

        Needs matplotlib (``pip install 'bt_frames[notebook]'``); see :mod:`bt_frames._plot`.
        """
        from bt_frames import _plot

        self._check_open()
        return _plot.plot_blocks(self, where, ax=ax)

    def read(self, where: Where | None = None, *, columns: Sequence[str] | None = None) -> pl.DataFrame:
        """The table (or the rows matching ``where``) as one Polars DataFrame: ``scan(where).select(columns)``,
        planned once and read by one Polars query over the surviving blocks and the hot rows."""
        self._check_open()
        return _scan.collect(self, where, columns=columns)

    def to_polars(self, where: Where | None = None, *, columns: Sequence[str] | None = None) -> pl.DataFrame:
        """Same as :meth:`read` (named like ``to_pandas``)."""
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

        meta = self._pandas_meta()
        read, order = _pandas.projection(meta, columns, self._meta.schema.names(), table=self.name)
        return _pandas.to_pandas(self.read(where, columns=read), meta, columns=order)

    def _pandas_meta(self) -> dict[str, Any] | None:
        """``table.json``'s ``pandas`` field (see ``_pandas``): how stored rows become the appended pandas frame."""
        meta = self._meta.pandas
        if meta is None and self._read_only:  # a writer may have made the first pandas append since we opened
            try:
                meta = catalog.TableMeta.load(self._dir / layout.TABLE_JSON).pandas
            except (OSError, CorruptionError):
                meta = None
        return meta

    def to_dask(
        self, where: Where | None = None, *, columns: Sequence[Any] | None = None, divisions: bool = True
    ) -> dd.DataFrame:
        """The table (or the rows matching ``where``) as a ``dask.dataframe.DataFrame`` of this snapshot.

        One partition per surviving block (read on the workers: no store, no lock) plus the hot rows as
        one partition made here; ``compute()`` equals :meth:`to_pandas`. ``divisions=False``: do not
        derive known divisions from the statistics. Needs ``pip install 'bt_frames[dask]'``; the full
        contract (divisions, dtypes, files deleted before ``compute()``) is in :mod:`bt_frames._dask`.
        """
        from bt_frames import _dask

        self._check_open()
        return _dask.to_dask(self, where, columns=columns, pandas_meta=self._pandas_meta(), divisions=divisions)

    def files(self, where: Where | None = None) -> list[str]:
        """Absolute paths of the block files that may hold rows matching ``where`` (the pruner's plan over
        one snapshot), in table order: for engines that read Parquet themselves (Spark, DuckDB). Hot rows
        are in no file (``flush()`` first); blocks written before a schema change lack later columns."""
        from bt_frames import _dask

        self._check_open()
        return _dask.files(self, where)

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


def _evolved_pandas(
    doc: dict[str, Any] | None, old: pl.Schema, new: pl.Schema, frame: dict[str, Any] | None
) -> dict[str, Any] | None:
    """The table's pandas metadata after a schema change: columns whose type changed, and new ones, take
    the codec of the pandas frame that changed them (if it was one); else a widened column drops its
    codec (Polars' own conversion: the old pandas dtype may not hold the wider values) and a new one
    has none (read as Polars converts it)."""
    if doc is None:
        return None
    out = dict(doc)
    theirs = {c["column"]: c for c in (frame or {}).get("columns") or []}
    columns = []
    for c in doc.get("columns") or []:
        name = c.get("column")
        if name in old and name in new and old[name] != new[name]:
            c = theirs.get(name) or {**c, "dtype": {"kind": "polars"}}
        columns.append(c)
    index_cols = {lv.get("column") for lv in (doc.get("index") or {}).get("levels") or []}
    columns += [theirs[n] for n in new.names() if n not in old and n in theirs and n not in index_cols]
    out["columns"] = columns
    return out


def _compaction_runs(blocks: Sequence[blk.BlockInfo], target: int, small: int) -> list[list[blk.BlockInfo]]:
    """Runs of adjacent small single-part blocks to merge, each of at most ``target`` rows (a pure plan)."""
    runs: list[list[blk.BlockInfo]] = []
    run: list[blk.BlockInfo] = []
    run_rows = 0
    for b in blocks:
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
    return runs


ProgressFactory = Callable[[Iterable[Any], int], Iterable[Any]]
