"""BacktraceStore: a folder of tables, one writer at a time."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import datetime as dt
import json
import logging
import os
import shutil
import sys
import tempfile
import threading
import warnings
import weakref
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import polars as pl

from bt_frames import _convert, _lifecycle
from bt_frames.errors import (
    BtError,
    CorruptionError,
    DeltaIncompatibleWarning,
    MirrorConflictError,
    ReadOnlyError,
    SchemaMismatchError,
    StoreClosedError,
    StoreLockedError,
    TableExistsError,
    TableNotFoundError,
    UnsupportedFormatError,
    find_stacklevel,
    os_errors,
)
from bt_frames.storage import catalog, delta, fs, layout, objectstore, remote, wal
from bt_frames.storage.locking import StoreLock
from bt_frames.storage.manifest import Edit, Manifest, State, manifest_dir, version_name
from bt_frames.storage.manifest import list_versions as manifest_versions
from bt_frames.storage.manifest import load as mf_load
from bt_frames.storage.objectstore import ObjectStore
from bt_frames.table import DEFAULT_MAX_BLOCK_ROWS, DEFAULT_ROW_GROUP_ROWS, SchemaMode, Table, check_schema_mode

if TYPE_CHECKING:
    from bt_frames.verify import VerifyReport

log = logging.getLogger("bt_frames")

Durability = Literal["fsync", "batch", "none"]
DEFAULT_RETIRED_GRACE_S = 60.0
STORE_FORMAT = "bt_frames.store"
STORE_FORMAT_VERSION = 1

# Writers open in this process, by resolved folder (see BacktraceStore.__new__).
_OPEN: weakref.WeakValueDictionary[str, BacktraceStore] = weakref.WeakValueDictionary()
_OPEN_LOCK = threading.Lock()


class BacktraceStore:
    """An embedded, durable store of time-ordered tables in one folder.

    >>> store = BacktraceStore("trading_db")            # doctest: +SKIP
    >>> orders = store.create_table("orders", schema={...}, time_column="ts")  # doctest: +SKIP

    Parameters
    ----------
    path
        The store's folder (created if missing, unless ``read_only``).
    read_only
        Open without the writer lock; never writes a file. Sees the blocks and
        WAL as of opening; ``refresh()`` catches up. A scan whose blocks the
        writer has since compacted away and deleted refreshes the table and
        starts again once, by itself.
    durability
        ``"fsync"`` (default): each append is on disk before it returns.
        ``"batch"``: a background thread syncs every few milliseconds — a process
        crash loses nothing, a power loss at most that interval. ``"none"``:
        left to the OS.
    progress
        Show progress bars for long operations: ``None`` (default) shows them
        only in an interactive session (a terminal or a notebook).
    retired_grace
        Seconds a writer keeps the blocks a compaction retired (default 60),
        for read-only readers in other processes that still read them; scans
        in the writer's own process keep theirs for as long as they run.
    storage_options
        For a store in a bucket (``path`` = ``"s3://bucket/prefix"``): the
        options Polars and deltalake take (``aws_endpoint_url``,
        ``aws_access_key_id``, ``aws_secret_access_key``, ``aws_region``,
        ``aws_allow_http``...). Blocks, manifest, Delta log and stats cache
        live in the bucket (``storage/remote.py``).
    wal_dir
        A writer on a bucket: the local folder of its WAL (an object store
        cannot append or fsync) and of a working copy of the store. An append
        is durable (acknowledged) once it is in this WAL, as for a local
        store; it is *published* once its block's manifest version is in the
        bucket, which happens in the background: ``flush()``, ``sync()`` and
        ``close()`` return once everything is published. A reader
        (``read_only=True``) needs none.
    lease_seconds
        A writer on a bucket holds a lease on the prefix (one writer anywhere),
        renewed in the background; a writer that stops renewing loses it after
        this long (default 60) and another may take the store over.
    delta_log
        Keep a Delta Lake log of every table's published blocks in
        ``<table>/blocks/_delta_log`` (default True, when ``deltalake`` is
        installed), so that other engines read the tables (README, "Reading a
        table with other engines"). About 10-40 ms per manifest version that
        changes blocks: False turns it off for a writer that flushes very often
        and needs no other reader (a log an earlier open wrote is removed: it
        would show other engines stale rows).
    """

    def __new__(cls, path: str | os.PathLike[str], **kwargs: Any) -> BacktraceStore:
        if not kwargs.get("read_only", False):
            # a store in a bucket runs on its wal_dir: that folder is the store this process may already have
            uri = os.fspath(path) if objectstore.is_uri(os.fspath(path)) else None
            folder = kwargs.get("wal_dir") if uri is not None else path
            with _OPEN_LOCK:
                same = _OPEN.get(_key(folder)) if folder is not None else None
                if same is not None and not same._closed:
                    same._check_same_options(kwargs, uri)
                    same._handles += 1  # each close() gives one back; the last one closes the store
                    return same  # DuckDB-style: one open writer per store folder and process
        return super().__new__(cls)

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        read_only: bool = False,
        durability: Durability = "fsync",
        progress: bool | None = None,
        retired_grace: float = DEFAULT_RETIRED_GRACE_S,
        storage_options: Mapping[str, Any] | None = None,
        wal_dir: str | os.PathLike[str] | None = None,
        lease_seconds: float = remote.DEFAULT_LEASE_S,
        delta_log: bool = True,
    ) -> None:
        if getattr(self, "_initialised", False):  # the store this process already had open (see __new__)
            return
        self._remote: ObjectStore | None = None  # a store in a bucket (storage/remote.py)
        self._mirror: remote.Mirror | None = None  # a writer's publishing of its versions to the bucket
        self._lease: remote.Lease | None = None
        self._uri: str | None = None
        self._scratch: str | None = None  # a bucket reader's private folder (removed at close)
        if objectstore.is_uri(os.fspath(path)):
            self._uri = os.fspath(path)
            self._remote = ObjectStore(self._uri, storage_options)
            if read_only:
                # nothing read yet: a table's open is one GET and one LIST (storage/remote.py)
                self._scratch = tempfile.mkdtemp(prefix="bt_frames-reader-")
                path = self._scratch
                _write_marker(Path(path), durable=False)
            else:
                if wal_dir is None:
                    raise BtError(
                        f"store {self._uri!r}: a writer on object storage needs wal_dir= (a local folder for the "
                        "WAL, which an object store cannot hold; the bucket has everything else). "
                        "Fix: bt.open(uri, storage_options=..., wal_dir='local/folder'), or read_only=True."
                    )
                path = wal_dir
        elif storage_options is not None or wal_dir is not None:
            raise BtError(
                f"storage_options and wal_dir are for a store in a bucket (s3://bucket/prefix), not {str(path)!r}"
            )
        if durability not in wal.DURABILITY_MODES:
            raise BtError(f"durability must be one of {', '.join(map(repr, wal.DURABILITY_MODES))}, not {durability!r}")
        if not isinstance(retired_grace, (int, float)) or retired_grace < 0:
            raise BtError(f"retired_grace must be a number of seconds >= 0, not {retired_grace!r}")
        self._path = Path(os.path.expanduser(os.fspath(path)))
        self._pid = os.getpid()  # a forked child shares this store's lock and WAL descriptors: it must not write
        self._read_only = read_only
        self._durability: Durability = durability
        self._show_progress = progress
        self._retired_grace = float(retired_grace)
        self.delta_log = bool(delta_log)  # write each table's Delta log (storage/delta.py)
        self._storage_options = dict(storage_options or {})  # (a second open in this process must agree)
        self._tables: dict[str, Table] = {}
        self._lock = threading.RLock()
        self._closed = True  # until the lock is held and the folder checked
        self._store_lock: StoreLock | None = None
        self.upgraded = False  # opening found a store written before the marker and upgraded it
        if read_only:
            kind = _classify(self._path)
            if kind in ("missing", "empty"):
                raise BtError(
                    f"store {str(self._path)!r} does not exist (read_only=True cannot create it); "
                    "open it once without read_only to create it"
                )
            if kind == "foreign":
                raise BtError(_foreign_message(self._path))
            if kind == "file":
                raise BtError(_file_message(self._path))
            _check_marker(self._path, kind)
            self._closed = False
            self._initialised = True
            self._handles = 1
            return
        kind = _classify(self._path)
        if kind == "file":
            raise BtError(_file_message(self._path))
        if kind == "foreign":
            raise BtError(_foreign_message(self._path))
        _check_marker(self._path, kind)
        with os_errors(f"opening store {str(self._path)!r}"):
            if kind == "missing":
                _make_dirs(self._path)
            if kind in ("missing", "empty"):
                _write_marker(self._path)  # first: a crash leaves an empty folder or a store, never a LOCK alone
            self._store_lock = StoreLock(self._path)
            self._store_lock.acquire()
            try:
                _remove_transient_dirs(self._path)
                if kind == "legacy":  # tables upgrade as they open; the marker says the folder is a store
                    self.upgraded = True
                    _write_marker(self._path)
            except BaseException:
                self._store_lock.release()
                raise
        if self._remote is not None:
            try:
                self._open_remote(lease_seconds)
            except BaseException:
                self._release_remote()
                self._store_lock.release()
                raise
        self._closed = False
        self._initialised = True
        self._handles = 1
        with _OPEN_LOCK:
            _OPEN[_key(self._path)] = self
        if self._lease is not None and self._lease.taken_over:
            try:
                self._fence()
            except BaseException:  # the open fails: nothing of it may go on (lease renewals, the mirror, the lock)
                try:
                    self._close_all()
                except Exception as e:
                    log.debug("store %s: closing after a failed takeover: %s", self._uri, e)
                raise

    def _open_remote(self, lease_seconds: float) -> None:
        """A writer on a bucket: marker, lease, then every table brought level with the bucket."""
        obj = self._remote
        assert obj is not None
        marker = json.dumps({"format": STORE_FORMAT, "format_version": STORE_FORMAT_VERSION}).encode() + b"\n"
        if obj.head(layout.STORE_MARKER) is None:
            # as a local folder: a prefix holding objects but no marker is someone else's, never written into
            # the store's own files (a writer opening at this moment, a lease left behind: the lease decides)
            # and the prefix's own empty "folder" object (the S3 console's Create folder) are no one else's
            ours = {"", layout.STORE_MARKER, remote.LEASE}
            entries = [e for e in obj.list_first("")[0] if e.key not in ours]
            if entries:
                uri = obj.uri
                raise BtError(
                    f"{uri!r} is not a bt_frames store and is not empty (it has no {layout.STORE_MARKER}; "
                    f"it holds e.g. {entries[0].key!r}), so bt_frames will not write into it. "
                    f"Fix: choose a new or empty prefix, e.g. bt.open({uri + '/db'!r}, ...)."
                )
        if not obj.put_if_absent(layout.STORE_MARKER, marker):
            _check_remote_marker(obj)
        self._lease = remote.Lease(obj, lease_seconds)
        self._lease.acquire()
        self._mirror = remote.Mirror(obj, self._lease)
        tables, dropped = remote.remote_folders(obj)
        for name in dropped:  # a drop a writer began (killed, or the bucket failed): finish it, never resurrect
            if (self._path / name).is_dir():
                self._drop_local(name)
            self._mirror.drop(name, tombstone=False)  # (in the background: the table is gone already)
        for name in tables:
            self._sync_table(name)
        for name in _local_tables(self._path):  # local versions the bucket lacks (a crash, or an older store)
            mf_versions = manifest_versions(self._path / name)
            if mf_versions:
                self._mirror.enqueue(name, self._path / name, mf_versions[-1])
        self._mirror.start()

    def _sync_table(self, name: str) -> None:
        """Bring the local copy of table ``name`` level with the bucket (a writer's open)."""
        obj, mirror = self._remote, self._mirror
        assert obj is not None
        assert mirror is not None
        directory = self._path / name
        local = manifest_versions(directory)
        bucket = remote.remote_versions(obj, name)
        common = min(local[-1] if local else 0, bucket[-1] if bucket else 0)
        while common > 0:  # the newest version both have, byte for byte
            there = obj.get(remote.version_key(name, common))
            with os_errors(f"table {name!r}: reading its manifest"):
                if manifest_path(directory, common).read_bytes() == there:
                    break
            common -= 1
        newest_local = local[-1] if local else 0
        newest_bucket = bucket[-1] if bucket else 0
        if not local and not bucket:  # a folder under the prefix that is no table (of this store): left alone
            return
        if newest_local > common and newest_bucket > common:
            raise MirrorConflictError(
                f"table {name!r}: the local store {str(self._path)!r} has versions {common + 1}-{newest_local} "
                f"that are not in the bucket, and the bucket has other versions {common + 1}-{newest_bucket} "
                "(another writer held the lease meanwhile). Nothing was changed. The local rows are safe in "
                f"{str(directory)!r}. Fix: move that folder away, reopen to take the bucket's state, and append "
                "the rows you need from bt.open(<moved folder's store>, read_only=True)."
            )
        if newest_bucket > newest_local:  # another writer (another wal_dir) published since
            if local:
                _drop_published_wal(name, directory)
            remote.pull_table(obj, name, directory, blocks=True)
            with os_errors(f"table {name!r}: taking the bucket's versions into {str(directory)!r}"):
                # the WAL segments the bucket's newest versions name are on another disk: start our own
                m = Manifest(directory, mf_load(directory))
                first = m.state.block_lsn + 1
                wal.create_segment(directory / layout.WAL_DIR / layout.wal_name(first))
                m.commit(Edit("recover", wal_remove=list(m.state.wal), wal_add=[first], next_lsn=first))
        mirror.published[name] = newest_bucket
        # level with the bucket (or ahead of it): the local state names every block a version keeps
        mirror.remove_orphans(name, _local_names(directory))

    def _fence(self) -> None:
        """After taking over an expired lease: a version of every table first, so that the old writer's next
        version PUT finds it taken (see storage/remote.py)."""
        for name in self.tables:
            t = self.table(name)
            with t._lock:
                t._commit(_fence_edit(t))
        if self._mirror is not None:
            self._mirror.wait()

    def sync(self) -> None:
        """A store in a bucket: wait until every committed version is published (raise if publishing stopped)."""
        self._check_open()
        if self._mirror is not None:
            self._mirror.wait()

    def _release_remote(self) -> None:
        if self._mirror is not None:
            self._mirror.close()
        if self._lease is not None:
            try:
                self._lease.release()
            except BtError as e:
                log.warning("store %s: releasing the lease failed (%s); it expires by itself", self._uri, e)

    def _check_same_options(self, kwargs: dict[str, Any], uri: str | None) -> None:
        mine = objectstore.split_uri(self._uri) if self._uri is not None else None
        if mine != (objectstore.split_uri(uri) if uri is not None else None):
            raise StoreLockedError(
                f"{str(self._path)!r} is already open as a writer in this process (pid {os.getpid()}) for "
                f"{str(self._where)!r}; a folder serves one store at a time. Close that store first "
                "(store.close()), or choose another folder" + (" for wal_dir" if uri is not None else "")
            )
        options = kwargs.get("storage_options") or {}
        if not isinstance(options, Mapping) or dict(options) != self._storage_options:
            # another endpoint or other credentials: another way to the bucket, maybe another bucket
            raise StoreLockedError(
                f"store {str(self._where)!r} is already open as a writer in this process (pid {os.getpid()}) on "
                f"{str(self._path)!r} with other storage_options (not shown: they may hold credentials); "
                "close it first (store.close()), open it with the same storage_options, or with read_only=True"
            )
        want = {"durability": self._durability, "retired_grace": self._retired_grace, "delta_log": self.delta_log}
        diff = {k: v for k, v in kwargs.items() if k in want and v != want[k]}
        if diff:
            raise StoreLockedError(
                f"store {str(self._path)!r} is already open as a writer in this process (pid {os.getpid()}) "
                f"with other options ({', '.join(f'{k}={want[k]!r}' for k in diff)}); "
                "close it first (store.close()), or open it with read_only=True"
            )

    # -- properties ------------------------------------------------------------

    @property
    def _where(self) -> str | Path:
        """What messages call this store: its bucket URI, else its folder."""
        return self._uri or self._path

    @property
    def path(self) -> Path:
        return self._path

    @property
    def read_only(self) -> bool:
        return self._read_only

    @property
    def durability(self) -> Durability:
        return self._durability

    @property
    def retired_grace(self) -> float:
        """Seconds a block retired by compaction is kept for readers that may still use it."""
        return self._retired_grace

    @property
    def tables(self) -> list[str]:
        """Names of the tables in the store, sorted."""
        self._check_open()
        if self._remote is not None and self._read_only:
            return remote.remote_tables(self._remote)
        return _local_tables(self._path)

    # -- tables ----------------------------------------------------------------

    def table(self, name: str) -> Table:
        """Open (recovering if needed) and return a table."""
        layout.validate_table_name(name)
        with self._lock:
            self._check_open()  # under the lock: close() cannot run between the check and the open
            t = self._tables.get(name)
            if t is not None:
                return t
            directory = self._path / name
            if self._remote is not None and self._read_only:  # a bucket reader: the table's metadata first
                remote.pull_table(self._remote, name, directory, blocks=False)
            try:
                meta = catalog.TableMeta.load(directory / layout.TABLE_JSON)
            except FileNotFoundError:
                lost = catalog.lost_table_json(directory)
                if lost is not None:
                    raise lost from None
                raise TableNotFoundError(self._where, name, self.tables, read_only=self._read_only) from None
            t = Table(self, directory, meta)
            self._tables[name] = t
            if self._mirror is not None and t._manifest is not None:  # what creating or recovering committed
                self._mirror.enqueue(name, directory, t._manifest.state.version)
            return t

    def __getitem__(self, name: str) -> Table:
        return self.table(name)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self.tables

    def create_table(
        self,
        name: str,
        schema: Mapping[str, Any] | pl.Schema | Any = None,
        *,
        time_column: str | None = None,
        max_block_rows: int | None = None,
        row_group_rows: int | None = None,
        exist_ok: bool = True,
        retention: dt.timedelta | None = None,
        keep_versions: dt.timedelta | None = None,
        auto_compact: bool = True,
    ) -> Table:
        """Create a table, or open it if it exists with the same schema.

        ``retention``, ``keep_versions`` and ``auto_compact`` are the lifecycle
        options of :meth:`Table.set_options` (used when the table is created;
        change them later with ``set_options``).

        A different schema or time column raises SchemaMismatchError listing
        the differences, and so does a ``max_block_rows``/``row_group_rows``
        passed explicitly that differs from the existing table's (omitted:
        the table keeps its own; for a new table ``max_block_rows`` defaults to
        ``DEFAULT_MAX_BLOCK_ROWS``). Creation is atomic (the table folder
        appears by one rename).
        """
        requested_block_rows = max_block_rows
        if max_block_rows is None:
            max_block_rows = DEFAULT_MAX_BLOCK_ROWS
        self._check_writable()
        layout.validate_table_name(name)
        if schema is None:
            raise SchemaMismatchError(
                f"table {name!r}: create_table needs a schema (dict of column -> polars dtype); "
                "or call store.append(name, df) to create it from a frame.",
                table=name,
            )
        pl_schema = _convert.normalize_schema(schema, table=name)
        if time_column is not None:
            if time_column not in pl_schema:
                raise SchemaMismatchError(
                    f"table {name!r}: time_column {time_column!r} is not a column of the schema "
                    f"({', '.join(pl_schema.names())})",
                    table=name,
                    columns=[time_column],
                )
            dtype = pl_schema[time_column]
            if not (dtype.is_temporal() or dtype.is_integer()):
                raise SchemaMismatchError(
                    f"table {name!r}, column {time_column!r}: a time column must be a date, datetime or "
                    f"integer, not {dtype}",
                    table=name,
                    columns=[time_column],
                )
        if not isinstance(max_block_rows, int) or max_block_rows < 1:
            raise BtError(f"table {name!r}: max_block_rows must be a positive integer, not {max_block_rows!r}")
        rg = row_group_rows or min(DEFAULT_ROW_GROUP_ROWS, max_block_rows)
        with self._lock:
            if (self._path / name / layout.TABLE_JSON).is_file():
                if not exist_ok:
                    raise TableExistsError(f"table {name!r} already exists in store {str(self._path)!r}")
                t = self.table(name)
                _check_same(
                    t, pl_schema, time_column, max_block_rows=requested_block_rows, row_group_rows=row_group_rows
                )
                return t
            lost = catalog.lost_table_json(self._path / name)
            if lost is not None:  # a table whose table.json is gone: never built over (its data is there)
                raise lost
            if self._mirror is not None and name in self._mirror.dropping:
                with contextlib.suppress(BtError):  # a drop the bucket is finishing now: wait for it
                    self._mirror.wait()
            if self._mirror is not None and name in self._mirror.dropping:
                assert self._remote is not None
                raise BtError(
                    f"table {name!r}: its drop is not finished in the bucket yet ({self._remote.url(name + '/')} "
                    "still holds objects of the dropped table); nothing was created. Fix: store.sync() (it waits "
                    "until the bucket answers), then create the table again."
                )
            if self._mirror is not None and name in self._mirror.tombstones:  # a dropped name: no more a drop
                assert self._remote is not None
                try:
                    self._mirror.clear_tombstone(name)
                except BtError as e:
                    raise BtError(
                        f"table {name!r}: the tombstone of the table dropped under this name "
                        f"({self._remote.url(remote.tombstone_key(name))}) could not be deleted ({e}); nothing was "
                        "created. Fix: create the table again once the bucket answers."
                    ) from e
            meta = catalog.TableMeta(name, pl_schema, time_column, max_block_rows, rg)
            meta = _lifecycle.with_options(
                meta, table=name, retention=retention, keep_versions=keep_versions, auto_compact=auto_compact
            )
            with os_errors(f"store {str(self._path)!r}: create_table({name!r})"):
                self._create_dir(meta)
                try:
                    t = self.table(name)
                    _warn_delta_types(name, pl_schema)
                    return t
                except BaseException:  # an empty table that cannot be opened: take it back (nothing was in it)
                    self._tables.pop(name, None)
                    trash = self._path / layout.transient_dir("dropped", name)
                    try:
                        fs.replace(self._path / name, trash)
                        _sync_after_commit(self._path, f"removing table {name!r} again")
                        fs.remove_tree(trash)
                    except OSError as e:
                        log.warning("store %s: could not take back table %r (%s)", self._path, name, e)
                    raise

    def _create_dir(self, meta: catalog.TableMeta) -> None:
        """Build the table folder under a temporary name, then rename it into place (the commit point)."""
        tmp = self._path / layout.transient_dir("create", meta.name)
        fs.mkdir(tmp)
        try:
            fs.mkdir(tmp / layout.WAL_DIR)
            fs.mkdir(tmp / layout.BLOCKS_DIR)
            layout.atomic_write(tmp / layout.TABLE_JSON, meta.to_json().encode())
            wal.create_segment(tmp / layout.WAL_DIR / layout.wal_name(1))  # opening the new table writes nothing
            Manifest.create(tmp, State(wal=[1]))
            layout.fsync_dir(tmp)
            fs.replace(tmp, self._path / meta.name)  # the commit point: the table exists
        except BaseException:
            fs.remove_tree(tmp)
            raise
        _sync_after_commit(self._path, f"creating table {meta.name!r}")

    def append(
        self,
        name: str,
        data: object,
        *,
        time_column: str | None = None,
        schema_mode: SchemaMode = "strict",
        **options: Any,
    ) -> int | None:
        """Append to table ``name``, creating it from ``data``'s schema if it does not exist.

        ``time_column`` (creation only) defaults to a pandas DatetimeIndex or
        the first datetime/date column without nulls. ``schema_mode="merge"``
        lets the frame add columns and widen types of an existing table (see
        :meth:`Table.append`). Returns the LSN of the append.
        """
        self._check_writable()
        check_schema_mode(schema_mode, name)
        t = self._tables.get(name)
        if t is not None and time_column is None and not options and not (t._closed or t._dropped):
            # Open in this process: this writer's table.json cannot have gone (drop_table forgets the table;
            # a new one of that name is opened anew). No stat() of table.json per append.
            return t.append(data, schema_mode=schema_mode)
        layout.validate_table_name(name)
        with self._lock:
            if not (self._path / name / layout.TABLE_JSON).is_file():
                df, pmeta = _convert.to_polars(data, table=name)
                tc = time_column
                if tc is None and pmeta is not None:  # a pandas DatetimeIndex is the natural time column
                    from bt_frames._pandas import time_column_hint

                    tc = time_column_hint(pmeta)
                if tc is None:  # the first datetime/date column without nulls (a time column cannot hold any)
                    tc = next(
                        (
                            c
                            for c, d in df.schema.items()
                            if isinstance(d, (pl.Datetime, pl.Date)) and not df.get_column(c).has_nulls()
                        ),
                        None,
                    )
                schema = pl.Schema({c: (pl.String if d == pl.Null else d) for c, d in df.schema.items()})
                t = self.create_table(name, schema, time_column=tc, **options)
            else:
                t = self.table(name)
                if time_column is not None or options:  # creation options for a table that exists: must agree
                    _check_same(
                        t,
                        t.schema,
                        t.time_column if time_column is None else time_column,
                        max_block_rows=options.get("max_block_rows"),
                        row_group_rows=options.get("row_group_rows"),
                    )
        return t.append(data, schema_mode=schema_mode)

    def drop_table(self, name: str) -> None:
        """Delete a table and all its files (atomic: one rename, then removal).

        On a store in a bucket the table goes from the bucket too: a tombstone there first (after the
        table's versions queued before it), then the local copy, then the objects the store made under
        the table's folder (storage/remote.py). It returns once the bucket no longer shows the table.
        If the bucket fails before the tombstone is in, nothing is changed; after it, the table is gone
        (readers no longer see it) and the rest is done in the background and by the next writer's open.
        """
        self._check_writable()
        layout.validate_table_name(name)
        with self._lock:
            directory = self._path / name
            if not (directory / layout.TABLE_JSON).is_file():
                raise TableNotFoundError(self._where, name, self.tables, read_only=self._read_only)
            t = self._tables.pop(name, None)
            if t is not None:
                t.close()
            if self._mirror is not None:
                self._drop_tombstone(name, t)
            if t is not None:
                t._dropped = True
            self._drop_local(name)
            if self._mirror is not None:
                self._mirror.drop(name, tombstone=False)
                try:
                    self._mirror.wait()
                except BtError as e:
                    assert self._remote is not None
                    raise BtError(
                        f"table {name!r} is dropped (its tombstone {self._remote.url(remote.tombstone_key(name))} "
                        f"is in the bucket: no reader sees the table), but deleting its objects failed: {e}. Fix: "
                        "none needed -- it is retried in the background (store.sync() waits for it), and the next "
                        "writer's open of the store finishes it."
                    ) from e

    def _drop_tombstone(self, name: str, t: Table | None) -> None:
        """Step 1 of a drop in the bucket: the tombstone; on failure, nothing changed (the table stays)."""
        assert self._mirror is not None
        assert self._remote is not None
        self._mirror.drop(name, tombstone=True)
        try:
            self._mirror.wait()
            return
        except BtError as e:
            failure = e
        if not self._mirror.cancel_drop(name):  # the tombstone made it after all: the drop goes on
            return
        # a PUT whose response was lost may have stored it: take it back, as far as the bucket answers -- only
        # if it is this writer's (a fenced writer's drop fails too, and the tombstone there is the lease holder's)
        with contextlib.suppress(BtError):
            mine = self._lease.owner if self._lease is not None else None
            if mine is not None and remote.tombstone_owner(self._remote, name) == mine:
                self._remote.delete(remote.tombstone_key(name))
        raise BtError(
            f"table {name!r}: drop_table could not put its tombstone in the bucket ({failure}); nothing was "
            f"dropped{' (the Table object was closed: store[name] opens it again)' if t is not None else ''}. "
            "Fix: retry drop_table once the bucket answers."
        ) from failure

    def _drop_local(self, name: str) -> None:
        directory = self._path / name
        trash = self._path / layout.transient_dir("dropped", name)
        with os_errors(f"store {str(self._path)!r}: drop_table({name!r})"):
            fs.replace(directory, trash)  # the commit point (locally): the table is gone
        _sync_after_commit(self._path, f"dropping table {name!r}")
        try:
            fs.remove_tree(trash)
        except OSError as e:  # the next writer to open the store removes it
            log.warning("store %s: could not remove dropped table folder %s (%s)", self._path, trash.name, e)

    def _set_pandas_meta(self, table: Table, meta: dict[str, Any]) -> None:
        if self._read_only:
            return
        meta = copy.deepcopy(meta)  # the caller's may be shared with later frames (the pandas plan cache)
        new = dataclasses.replace(table._meta, pandas=meta)
        with os_errors(f"table {table.name!r}: recording its pandas metadata in table.json"):
            layout.atomic_write(table.path / layout.TABLE_JSON, new.to_json().encode())
        table._meta.pandas = meta  # only once it is on disk

    # -- lifecycle -------------------------------------------------------------

    def refresh(self) -> None:
        """Read-only stores: pick up tables, blocks and WAL records written since opening."""
        self._check_open()
        with self._lock:
            for name, t in list(self._tables.items()):
                recreated: list[str] = []
                if self._remote is not None and self._read_only:
                    remote.pull_table(self._remote, name, self._path / name, blocks=False, recreated=recreated)
                if recreated or not (self._path / name / layout.TABLE_JSON).is_file():  # dropped since
                    self._forget_dropped(t)
                elif self._read_only:  # (a writer's tables are always current)
                    t._reload()  # (the bucket's versions were just pulled)

    def _forget_dropped(self, t: Table) -> None:
        """A reader's table found dropped (and maybe created again) in the bucket: closed, marked dropped."""
        with self._lock:
            if self._tables.get(t.name) is t:
                self._tables.pop(t.name)
            t.close()
            t._dropped = True

    def flush(self) -> None:
        """Freeze every open table's hot buffer into blocks."""
        self._check_writable()
        for t in list(self._tables.values()):
            t.flush()

    def verify(self) -> VerifyReport:
        """Check every WAL record and every block's checksum and footer; return a report (never raises)."""
        from bt_frames.verify import verify_store

        self._check_open()
        return verify_store(self._path)

    def close(self) -> None:
        """Make everything durable, close all tables and release the writer lock.

        Every table is closed even if closing one fails; the first failure is
        raised after the lock is released. A store opened more than once in this
        process (``bt.open`` of the same folder gives the same store) closes when
        each opener has closed it.
        """
        with _OPEN_LOCK:
            self._handles -= 1
            if self._handles > 0:
                return
            if _OPEN.get(_key(self._path)) is self:  # no later bt.open() can be handed this closing store
                del _OPEN[_key(self._path)]
        self._close_all()

    @property
    def _forked(self) -> bool:
        """This is a forked child's copy of a store its parent opened (see ``_abandon``)."""
        return os.getpid() != self._pid

    def _close_all(self) -> None:
        if self._forked:
            self._abandon()
            return
        with self._lock:
            if self._closed:
                return
            self._closed = True
            errors: list[BaseException] = []
            try:
                for t in list(self._tables.values()):
                    try:
                        t.close()
                    except BaseException as e:
                        errors.append(e)
                if self._mirror is not None:  # every version published before the lease goes
                    try:
                        self._mirror.wait()
                    except BaseException as e:
                        errors.append(e)
            finally:
                self._release_remote()
                if self._scratch is not None:
                    shutil.rmtree(self._scratch, ignore_errors=True)
                if self._store_lock is not None:
                    self._store_lock.release()
                with _OPEN_LOCK:
                    if _OPEN.get(_key(self._path)) is self:
                        del _OPEN[_key(self._path)]
            if errors:
                raise errors[0]

    def _abandon(self) -> None:
        """A forked child closing its copy of the parent's store: drop its descriptors and write nothing.

        Its lock is the parent's (``flock`` belongs to the open file, which fork shares: releasing it here
        would release the parent's), and so are the WAL segments and the manifest, which the parent goes on
        writing. No lock is taken: a thread of the parent may have held one at the fork.
        """
        self._closed = True
        for t in list(self._tables.values()):
            t._abandon()

    def __enter__(self) -> BacktraceStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            if getattr(self, "_initialised", False) and not self._closed:
                self._close_all()
        except Exception:  # pragma: no cover - interpreter shutdown
            pass

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosedError(f"store {str(self._path)!r} is closed; open it again with bt.open(path)")

    def _check_writable(self) -> None:
        self._check_open()
        if self._forked:  # (the tables refuse too): its drop would remove the parent's live table; in a bucket
            # store it would wait forever for a mirror thread the child does not have
            raise BtError(self._forked_refusal())
        if self._read_only:
            raise ReadOnlyError(f"store {str(self._path)!r} was opened with read_only=True; it cannot be written")

    def _forked_refusal(self) -> str:
        """Why a forked child may not write: the message of the store's and its tables' refusals."""
        return (
            f"store {str(self._where)!r} was opened by process {self._pid}; this forked child (process "
            f"{os.getpid()}) shares its lock and WAL and cannot write to it. Write from the parent, or open the "
            "store with read_only=True in the child."
        )

    def _progress(self, desc: str, *, min_total: int = 2) -> Any:
        """A progress-bar factory (iterable, total) -> iterable, or None when bars are off.

        Bars are on with ``progress=True``; with ``progress=None`` only in an
        interactive session (a terminal on stderr, or a Jupyter kernel) unless
        ``BT_FRAMES_PROGRESS=0``. A loop of fewer than ``min_total`` steps gets
        no bar. tqdm.auto picks a notebook widget or a terminal bar (stderr).
        """
        show = self._show_progress
        if show is None:
            show = _interactive()
        if not show:
            return None

        def bar(it: Iterable[Any], total: int) -> Iterable[Any]:
            if total < max(2, min_total):
                return it
            return _tqdm()(it, total=total, desc=desc, leave=False)

        return bar

    def __repr__(self) -> str:
        from bt_frames import _display

        return _display.store_repr(self)

    def _repr_html_(self) -> str:
        from bt_frames import _display

        return _display.store_html(self)


def _tqdm() -> Any:
    """tqdm.auto's class, without its warnings (no ipywidgets: it falls back to the terminal bar)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from tqdm.auto import tqdm
    return tqdm


def _in_jupyter_kernel() -> bool:
    """A Jupyter kernel is running this code (not merely: something imported ipykernel)."""
    ipython = sys.modules.get("IPython")
    get = getattr(ipython, "get_ipython", None)
    shell = get() if get is not None else None
    return type(shell).__name__ == "ZMQInteractiveShell"


def _interactive() -> bool:
    if os.environ.get("BT_FRAMES_PROGRESS", "").lower() in ("0", "false", "off"):
        return False
    if _in_jupyter_kernel():
        return True
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def _check_same(
    t: Table,
    schema: pl.Schema,
    time_column: str | None,
    *,
    max_block_rows: int | None = None,
    row_group_rows: int | None = None,
) -> None:
    """Raise SchemaMismatchError unless ``t`` has this schema, time column and (when given) these options."""
    have = t.schema
    options = [
        (f"({key})", stored, wanted)
        for key, stored, wanted in [
            ("max_block_rows", t.max_block_rows, max_block_rows),
            ("row_group_rows", t._meta.row_group_rows, row_group_rows),
        ]
        if wanted is not None and wanted != stored
    ]
    same_schema = have == schema and list(have.names()) == list(schema.names())
    if same_schema and t.time_column == time_column and not options:
        return
    rows: list[tuple[str, str, str, str]] = []
    for c in dict.fromkeys([*have.names(), *schema.names()]):
        a, b = have.get(c), schema.get(c)
        prob = (
            "ok"
            if a == b
            else (
                "only in the existing table"
                if b is None
                else "only in the new schema"
                if a is None
                else "different type"
            )
        )
        rows.append((c, str(a) if a is not None else "-", str(b) if b is not None else "-", prob))
    if t.time_column != time_column:
        rows.append(("(time_column)", str(t.time_column), str(time_column), "different time column"))
    for key, stored, wanted in options:
        rows.append((key, f"{stored:,}", f"{wanted:,}", f"different {key[1:-1]}"))
    if same_schema:
        differ = ["time_column"] * (t.time_column != time_column) + [k[1:-1] for k, _, _ in options]
        headline = f"exists with a different {' and '.join(differ)} (table = existing, frame = requested)"
        fix = (
            f"leave out {', '.join(differ)} to use the table's own (see store[{t.name!r}]), drop the table "
            "first (store.drop_table), or use another name."
        )
    else:
        headline = "exists with a different schema (table = existing, frame = requested)"
        fix = "open it with the existing schema, drop it first (store.drop_table), or use another name."
    raise SchemaMismatchError.from_rows(t.name, rows, headline=headline, fix=fix)


def open(path: str | os.PathLike[str], **kwargs: Any) -> BacktraceStore:  # noqa: A001 - mirrors builtins.open
    """Open (or create) a store: same as ``BacktraceStore(path, **kwargs)``."""
    return BacktraceStore(path, **kwargs)


# -- the store folder ------------------------------------------------------------
#
# A store is a folder holding ``bt_frames.json`` (the marker), written when the
# store is created: {"format": "bt_frames.store", "format_version": 1}. Opening:
#   missing folder       -> created (parents too; each new folder's parent fsynced), marker written;
#   empty folder         -> marker written;
#   marker present       -> opened (a newer format_version is refused);
#   no marker, but the layout of a store written before the marker existed (a LOCK
#   file, tables with table.json, the store's own temporary folders, nothing else)
#                        -> upgraded: marker written; each table builds its manifest when opened;
#   anything else        -> refused with BtError; nothing is changed.
# Start-up cleanup removes only the store's own temporary folders (layout.TRANSIENT_DIR).


def _key(path: str | os.PathLike[str]) -> str:
    return os.path.realpath(os.path.expanduser(os.fspath(path)))


def _classify(path: Path) -> str:
    """missing / file / empty / store / legacy / foreign (the store's own temporary names do not count)."""
    if not path.exists():
        return "file" if path.is_symlink() else "missing"
    if not path.is_dir():
        return "file"
    names = [n for n in os.listdir(path) if not _store_temporary(path, n)]
    if not names:
        return "empty"
    if layout.STORE_MARKER in names:
        return "store"
    # a store written before the marker existed: its LOCK file and table folders, nothing else
    return "legacy" if all(_legacy_entry(path / n) for n in names) else "foreign"


def _legacy_entry(full: Path) -> bool:
    if full.name == layout.LOCK_NAME:
        return full.is_file()
    return full.is_dir() and (full / layout.TABLE_JSON).is_file() and _is_table_json(full / layout.TABLE_JSON)


def _store_temporary(path: Path, name: str) -> bool:
    """A temporary file (the marker's, mid-write) or table folder only the store makes."""
    full = path / name
    if full.is_symlink():
        return False
    marker_tmp = layout.is_tmp(name) and name.startswith(f".{layout.STORE_MARKER}.")
    return (marker_tmp and full.is_file()) or (layout.is_transient_dir(name) and full.is_dir())


def _is_table_json(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            head = f.read(4096)
    except OSError:
        return False
    return f'"format": "{catalog.TABLE_FORMAT}"'.encode() in head


def _check_marker(path: Path, kind: str) -> None:
    if kind != "store":
        return
    marker = path / layout.STORE_MARKER
    try:
        doc = json.loads(marker.read_text())
        version = doc["format_version"]
        if doc.get("format") != STORE_FORMAT or not isinstance(version, int):
            raise ValueError("not a bt_frames store marker")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CorruptionError.at(
            marker,
            None,
            f"the store marker is unreadable ({e}); if this folder is a bt_frames store, "
            f'write {{"format": "{STORE_FORMAT}", "format_version": {STORE_FORMAT_VERSION}}} into it',
        ) from e
    if version > STORE_FORMAT_VERSION:
        raise UnsupportedFormatError.newer(marker, version, STORE_FORMAT_VERSION)


def _write_marker(path: Path, *, durable: bool = True) -> None:
    doc = {"format": STORE_FORMAT, "format_version": STORE_FORMAT_VERSION}
    layout.atomic_write(path / layout.STORE_MARKER, (json.dumps(doc) + "\n").encode(), durable=durable)


def _make_dirs(path: Path) -> None:
    """Create ``path`` and missing parents, fsyncing each new folder's parent (survives a power loss)."""
    missing: list[Path] = []
    p = path
    while not p.exists():
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    for d in reversed(missing):
        fs.mkdir(d, exist_ok=True)
        layout.fsync_dir(d.parent)


def _sync_after_commit(path: Path, what: str) -> None:
    """fsync ``path`` after a rename that already took effect: a failure is logged, not raised
    (raising would say "nothing happened" about a change every reader already sees)."""
    try:
        layout.fsync_dir(path)
    except OSError as e:
        log.warning("store %s: %s took effect, but syncing the folder failed (%s); a power loss may undo it",
                    path, what, e)  # fmt: skip


def _remove_transient_dirs(path: Path) -> None:
    """Leftovers of an interrupted create_table / drop_table / marker write: names only the store makes."""
    for n in os.listdir(path):
        if _store_temporary(path, n):
            if layout.is_tmp(n):
                fs.unlink(path / n, missing_ok=True)
            else:
                fs.remove_tree(path / n)


def _file_message(path: Path) -> str:
    return f"{str(path)!r} is a file, not a folder: a store is a folder. Fix: choose another path."


def _warn_delta_types(table: str, schema: pl.Schema, before: pl.Schema | None = None) -> None:
    """Warn (at the user's line) when ``schema`` keeps a table from having a Delta log (storage/delta.py)."""
    if not delta.available():
        return
    bad = delta.unsupported_columns(schema)
    if bad and (before is None or not delta.unsupported_columns(before)):
        warnings.warn(DeltaIncompatibleWarning.from_columns(table, bad), stacklevel=find_stacklevel())


def _foreign_message(path: Path) -> str:
    return (
        f"{str(path)!r} is not a bt_frames store and is not empty (it has no {layout.STORE_MARKER}), so bt_frames "
        "will not write into it. Fix: choose a new or empty folder, e.g. bt.open(" + repr(str(path / "db")) + ")."
    )


# -- a store in a bucket (storage/remote.py) ---------------------------------------


def _drop_published_wal(name: str, directory: Path) -> None:
    """Before taking newer versions from the bucket: the local WAL must hold nothing the bucket lacks (then
    its segments, every record of which is in a published block, are deleted); otherwise refuse."""
    block_lsn = mf_load(directory).block_lsn
    segments = list(wal.scan_wal(directory / layout.WAL_DIR))
    late = [r.lsn for s in segments for r in s.records if r.lsn > block_lsn]
    if late:
        raise MirrorConflictError(
            f"table {name!r}: the local WAL in {str(directory)!r} holds LSNs {late[0]}-{late[-1]}, which were "
            "never published, and the bucket has newer versions by another writer. Nothing was changed. Fix: "
            "move that folder away, reopen to take the bucket's state, and append the rows you need from the "
            "moved copy."
        )
    for s in segments:
        fs.unlink(s.path, missing_ok=True)


def _local_tables(path: Path) -> list[str]:
    out = []
    for entry in os.listdir(path):
        if (path / entry / layout.TABLE_JSON).is_file():
            try:
                layout.validate_table_name(entry)
            except BtError:
                continue
            out.append(entry)
    return sorted(out)


def manifest_path(table_dir: Path, version: int) -> Path:
    return manifest_dir(table_dir) / version_name(version)


def _local_names(table_dir: Path) -> set[str]:
    """Every block a local version names (live or retired): never an orphan in the bucket."""
    if not manifest_versions(table_dir):
        return set()
    state = mf_load(table_dir)
    return {e.block for e in state.blocks} | {r.block for r in state.retired}


def _fence_edit(t: Table) -> Edit:
    return Edit("recover", next_lsn=t._next_lsn, info={"lease": "taken over"})


def _check_remote_marker(obj: ObjectStore) -> None:
    data = obj.get(layout.STORE_MARKER)
    try:
        doc = json.loads(data or b"")
        version = doc["format_version"]
        if doc.get("format") != STORE_FORMAT or not isinstance(version, int):
            raise ValueError("not a bt_frames store marker")
    except (ValueError, KeyError, TypeError) as e:
        raise BtError(
            f"{obj.url(layout.STORE_MARKER)} is not a bt_frames store marker ({e}); this prefix is not a "
            "bt_frames store. Fix: choose another prefix."
        ) from e
    if version > STORE_FORMAT_VERSION:
        raise UnsupportedFormatError.newer(Path(obj.url(layout.STORE_MARKER)), version, STORE_FORMAT_VERSION)
