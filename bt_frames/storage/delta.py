"""The Delta Lake log of a table's published blocks: ``<table>/blocks/_delta_log/``, derived from the manifest.

Every table's published state (its live blocks, never the hot rows in the
WAL) is also a Delta table rooted at ``<table>/blocks/``, so that Polars
(``pl.scan_delta``), deltalake, DuckDB's ``delta_scan``, Dask or Spark read
it. Rooted at ``blocks/``, another engine's ``VACUUM`` never sees ``wal/``,
``_manifest/`` or ``table.json``. The log is written with ``deltalake``
(``create_table_with_add_actions`` to create it, ``create_write_transaction``
to commit ``add``/``remove`` actions of blocks that already exist: nothing is
rewritten).

Derived and **transient**, like the statistics cache (catalog.py): the
manifest stays the only source of truth. The log is written after a manifest
version commits, brought up to date on a writer's open when it is behind, and
rebuilt from the manifest when it is missing, damaged or inconsistent. It is
never on the durability path: delta-rs makes no fsync for a local commit and
writes from Rust, out of reach of the store's file seam (``fs.py``), so a
failure here is logged and reported (``Table.delta_log``, a ``Status``) and never fails an
append, a flush, a lifecycle operation, a recovery or an open.

How versions map (``sync``):

- one Delta commit per manifest version that adds or removes blocks, or
  changes the schema or the retention configuration; versions that change
  none of these (``rotate``, ``close``, ``purge``, ``vacuum``'s ``forget``...)
  make no commit: the next commit covers them;
- every commit carries the application transaction
  ``txn(appId="bt_frames:<table>", version=<manifest version>)``: the txn
  version says how far the log got (``DeltaLog.txn_version``);
- ``add`` = the version's new blocks, ``remove`` = the blocks it retired
  (kept on disk until ``Table.vacuum`` or ``keep_versions``, as Delta's
  tombstones are until ``VACUUM``); ``dataChange=false`` for ``compact``
  (the same rows in other files), ``true`` for every other operation
  (``publish``, ``append``, ``delete``, ``update``, ``upsert``,
  ``retention``, ``adopt``...);
- a schema change (``add_columns``, ``widen``) replaces the Delta table's
  metadata (``create_table_with_add_actions(mode="overwrite")`` with the
  live blocks re-added, ``dataChange=false``): older blocks keep their
  narrower Parquet types, which every reader tested here casts;
- sizes come from the manifest entries (``BlockEntry.bytes``), per-file
  statistics (``numRecords``, ``minValues``, ``maxValues``, ``nullCount``)
  from the statistics frame of the live blocks; a block added and retired
  between two syncs (a catch-up) gets ``numRecords`` only;
- when the versions after the txn version are not all readable (or the txn
  is ahead of the manifest, or the log is not ours), one reconciling commit
  removes and adds what differs from the live blocks; a log that cannot be
  loaded at all is removed (only the Delta files in ``_delta_log/``, which
  the store created: commits, checkpoints, ``_last_checkpoint``, delta-rs's
  temporary commit files; anything else there is left) and created again
  from the live blocks;
- delta-rs writes a Delta checkpoint every 100 commits (the default
  ``delta.checkpointInterval``), so loading the log stays fast.

Retention: the table configuration ``delta.deletedFileRetentionDuration``
and ``delta.logRetentionDuration`` are set to how long bt_frames keeps
retired blocks (``keep_versions``, at least the store's ``retired_grace``;
none set: ``FOREVER``), so another engine's ``VACUUM`` deletes no file
bt_frames still keeps.

Refused (``unsupported_columns``): types Delta cannot represent, or that
Polars' Delta reader rejects -- unsigned integers, ``Enum``, ``Duration``,
``Time``, ``Datetime("ns")`` (needs the ``timestampNanos`` reader feature),
``Array``, ``Float16``, 128-bit integers, ``Object`` -- also nested in a
``List`` or ``Struct``. Such a table has no Delta log (a ``DeltaIncompatibleWarning``
at ``create_table`` or at the schema change, and the state ``"unsupported"`` in ``Table.delta_log``); it
works fully in bt_frames.

Everything here takes the Delta table's URI (a local path or e.g.
``s3://bucket/prefix/<table>/blocks``) and ``storage_options``, and makes no
assumption about local files except in ``remove_log``.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import polars as pl

from bt_frames.storage import catalog, fs
from bt_frames.storage import manifest as mf

if TYPE_CHECKING:
    from deltalake import DeltaTable

LOG_DIR = "_delta_log"
APP_PREFIX = "bt_frames:"
NO_DATA_CHANGE = frozenset({"compact"})  # operations that rewrite rows without changing them
FOREVER = "interval 5200 weeks"  # "kept until vacuum": a century
UNKNOWN_ROWS = -1  # a block entry re-added without its row count (no statistics at all)
RETENTION_KEYS = ("delta.deletedFileRetentionDuration", "delta.logRetentionDuration")
# the files a Delta log is made of (the Delta protocol's names, and delta-rs's temporary commit files)
LOG_FILE = re.compile(
    r"\d{20}\.(json|crc|checkpoint(\.\d+\.\d+)?\.parquet)|\d{20}\.\d{20}\.compacted\.json"
    r"|_last_checkpoint|_commit_[0-9a-fA-F-]+\.json\.tmp"
)


def app_id(table: str) -> str:
    return APP_PREFIX + table


def available() -> bool:
    """Whether ``deltalake`` is installed (the ``delta`` extra)."""
    try:
        import deltalake  # noqa: F401
    except ImportError:
        return False
    return True


# -- types -------------------------------------------------------------------------------------------------


def _unsupported(dtype: Any) -> str | None:
    """Why ``dtype`` cannot be a column of the Delta table (None: it can)."""
    if isinstance(dtype, type):  # a class inside a nested type (pl.Struct({"t": pl.Time}))
        dtype = dtype()
    if dtype.is_unsigned_integer():
        return "Delta has no unsigned integers; use a signed type one size larger (pl.Int64 for pl.UInt32)"
    if isinstance(dtype, pl.Enum):
        return "Polars' Delta reader refuses Enum; use pl.Categorical() or pl.String"
    if isinstance(dtype, pl.Duration):
        return "Delta has no duration type; store pl.Int64 (e.g. microseconds)"
    if isinstance(dtype, pl.Time):
        return "Delta has no time-of-day type; store pl.Int64 (e.g. microseconds since midnight)"
    if isinstance(dtype, pl.Datetime) and dtype.time_unit == "ns":
        return 'Datetime("ns") needs the Delta reader feature timestampNanos, which Polars cannot read; use "us"'
    if isinstance(dtype, pl.Array):
        return "Polars' Delta reader refuses fixed-size arrays; use pl.List"
    if isinstance(dtype, pl.Object):
        return "an Object column cannot be written to Parquet"
    name = type(dtype).__name__
    if name in ("Float16", "Int128", "UInt128"):
        return f"Delta has no {name}; use pl.Float32 / pl.Int64 / pl.Decimal"
    if isinstance(dtype, pl.List):
        inner = _unsupported(dtype.inner)
        return None if inner is None else f"its items: {inner}"
    if isinstance(dtype, pl.Struct):
        for f in dtype.fields:
            why = _unsupported(f.dtype)
            if why is not None:
                return f"field {f.name!r}: {why}"
    return None


def unsupported_columns(schema: Mapping[str, pl.DataType]) -> dict[str, str]:
    """Column -> why it keeps the table from having a Delta log (empty: every column can be read as Delta)."""
    out = {}
    for name, dtype in schema.items():
        why = _unsupported(dtype)
        if why is not None:
            out[name] = f"{dtype}: {why}"
    return out


def arrow_schema(schema: Mapping[str, pl.DataType]) -> Any:
    """The Arrow schema of the Delta table: the blocks' columns, a categorical as a string, a time zone as UTC
    (Delta's ``timestamp`` is an instant, always in UTC), inside a list or struct too."""

    def plain(t: Any) -> pl.DataType:
        if isinstance(t, type):  # a class inside a nested type (pl.List(pl.Categorical))
            t = t()
        if isinstance(t, pl.Categorical):
            return pl.String()
        if isinstance(t, pl.Datetime) and t.time_zone is not None:
            return pl.Datetime(t.time_unit, "UTC")
        if isinstance(t, pl.List):
            return pl.List(plain(t.inner))
        if isinstance(t, pl.Struct):
            return pl.Struct({f.name: plain(f.dtype) for f in t.fields})
        return t

    return pl.DataFrame(schema={n: plain(t) for n, t in schema.items()}).to_arrow().schema


# -- statistics --------------------------------------------------------------------------------------------


def _stat_value(v: object, dtype: pl.DataType) -> object | None:
    """A min/max as Delta's stats JSON holds it, or None when it is left out."""
    if v is None:
        return None
    if isinstance(dtype, pl.Datetime):
        if dtype.time_zone is not None:  # an instant, written in UTC (the frame's values carry the column's zone)
            utc = v.astimezone(datetime.UTC)  # type: ignore[attr-defined]
            return utc.replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"
        return v.isoformat(timespec="microseconds")  # type: ignore[attr-defined]
    if isinstance(dtype, pl.Date):
        return v.isoformat()  # type: ignore[attr-defined]
    if isinstance(dtype, pl.Decimal):
        return float(v)  # type: ignore[arg-type]
    if dtype.is_float():
        return v if math.isfinite(v) else None  # type: ignore[arg-type]
    if dtype.is_integer() or isinstance(dtype, pl.String):
        return v
    return None


def file_stats(
    schema: Mapping[str, pl.DataType], stats: pl.DataFrame | None, blocks: Iterable[str] | None = None
) -> dict[str, str]:
    """Block name -> Delta stats JSON, from the statistics frame (catalog.stats_frame) of the live blocks
    (only those of ``blocks`` if given)."""
    if stats is None or stats.height == 0:
        return {}
    if blocks is not None:
        stats = stats.filter(pl.col("block").is_in(list(blocks)))
    out: dict[str, str] = {}
    for row in stats.iter_rows(named=True):
        mins: dict[str, object] = {}
        maxs: dict[str, object] = {}
        nulls: dict[str, int] = {}
        for c, dtype in schema.items():
            n = row.get(f"null_count.{c}")
            if n is not None and not isinstance(dtype, (pl.Struct, pl.List)):
                nulls[c] = int(n)
            lo = _stat_value(row.get(f"min.{c}"), dtype)
            hi = _stat_value(row.get(f"max.{c}"), dtype)
            if lo is not None and hi is not None:
                mins[c], maxs[c] = lo, hi
        doc = {"numRecords": int(row["rows"]), "minValues": mins, "maxValues": maxs, "nullCount": nulls}
        out[str(row["block"])] = json.dumps(doc)
    return out


def _interval(seconds: float) -> str:
    return FOREVER if not math.isfinite(seconds) else f"interval {max(0, math.ceil(seconds))} seconds"


def configuration(keep_s: float) -> dict[str, str]:
    """The Delta table configuration for retired blocks kept ``keep_s`` seconds (inf: until vacuum)."""
    return dict.fromkeys(RETENTION_KEYS, _interval(keep_s))


# -- the log -----------------------------------------------------------------------------------------------


@dataclass
class Source:
    """What the log is derived from: the table's manifest state now, and its versions since some version."""

    table: str
    version: int  # the newest manifest version
    blocks: Sequence[mf.BlockEntry]  # its live blocks
    schema: pl.Schema  # its schema
    stats: pl.DataFrame | None  # the statistics frame of those blocks
    keep_s: float  # how long retired blocks are kept (inf: until vacuum)
    # (version, edit) of every manifest version after the given one, or None if some are not readable
    edits: Callable[[int], list[tuple[int, mf.Edit]] | None]


@dataclass
class Status:
    """The state of a table's Delta log (``Table.delta_log``).

    ``state``: ``"up to date"``, ``"behind"`` (``behind`` manifest versions not yet in the log),
    ``"failed"`` (the last write failed: ``error``; retried at the next version and open),
    ``"unsupported"`` (column types Delta cannot represent: ``unsupported``),
    ``"unavailable"`` (deltalake is not installed) or ``"off"`` (the store was opened with ``delta_log=False``).
    A read-only store never writes the log: its status says whether the writer's log is up to date.
    """

    state: str
    uri: str
    txn_version: int | None = None
    manifest_version: int = 0
    error: str | None = None
    unsupported: dict[str, str] = field(default_factory=dict)

    @property
    def behind(self) -> int:
        """Manifest versions after the log's txn version (0 when up to date: the versions after it changed
        no block, schema or retention, so they need no Delta commit)."""
        return 0 if self.ok else max(0, self.manifest_version - (self.txn_version or 0))

    @property
    def ok(self) -> bool:
        return self.state == "up to date"


class DeltaLog:
    """The Delta log of one table at ``uri`` (the table's ``blocks/``); keeps its ``DeltaTable`` loaded."""

    def __init__(self, uri: str, table: str, *, storage_options: dict[str, str] | None = None) -> None:
        self.uri = uri
        self.table = table
        self.storage_options = storage_options
        self._dt: DeltaTable | None = None
        self._fresh = False  # _dt is as of our own last commit (one writer per table: nothing newer to read)
        self._txn_done: int | None = None  # the txn version of that commit
        self.app = app_id(table)
        self.resets = 0  # how many times the log was removed (then written anew: its commits start at 0)

    # reading

    def load(self) -> DeltaTable | None:
        """The DeltaTable, brought up to date (None if there is no loadable log)."""
        from deltalake import DeltaTable

        if self._dt is not None and self._fresh:
            return self._dt
        if self._dt is not None:
            try:
                self._dt.update_incremental()
                return self._dt
            except Exception:
                self._dt = None
        if not DeltaTable.is_deltatable(self.uri, self.storage_options):
            return None
        self._dt = DeltaTable(self.uri, storage_options=self.storage_options)
        self._fresh, self._txn_done = True, None
        return self._dt

    def txn_version(self, *, refresh: bool = False) -> int | None:
        """The manifest version the log is up to date with (None: no log, or not one of ours); ``refresh``:
        read the log again even if this process wrote its last commit (a reader's view of another writer's)."""
        if refresh:
            self._fresh = False
        dt = self.load()
        return None if dt is None else dt.transaction_version(self.app)

    # writing

    def sync(self, src: Source) -> int:
        """Bring the log up to manifest version ``src.version``; return the Delta commits made. Raises on failure
        (the caller reports it: the log is never on the durability path)."""
        try:
            return self._sync(src)
        except BaseException:
            self._dt, self._fresh = None, False  # read again from the storage next time
            raise

    def _sync(self, src: Source) -> int:
        try:
            dt = self.load()
        except Exception:  # damaged beyond loading: start again
            dt = None
            self._dt = None
        if dt is None:
            self.remove_log()
            self.create(src)
            return 1
        done = self._txn_done if self._fresh and self._txn_done is not None else dt.transaction_version(self.app)
        edits = None if done is None or done > src.version else src.edits(done)
        if edits is None:
            return self._reconcile(src)
        commits = 0
        stats = file_stats(src.schema, src.stats, (b.block for _v, e in edits for b in e.add)) if edits else {}
        for v, edit in edits:
            dt = self.load() or dt  # a schema change replaced the table object
            commits += self._apply(dt, src, v, edit, stats)
        dt = self.load() or dt
        if not self._config_ok(dt, src):  # keep_versions changed (set_options): no block did
            self._set_config(dt, src)
            commits += 1
        return commits

    def create(self, src: Source, *, mode: str = "error") -> None:
        """A new log of the live blocks (or, ``mode="overwrite"``, a new schema over them), txn = src.version."""
        from deltalake import Schema
        from deltalake.transaction import create_table_with_add_actions

        stats = file_stats(src.schema, src.stats)
        adds = self._adds(src.blocks, stats, data_change=mode == "error")
        create_table_with_add_actions(
            self.uri,
            Schema.from_arrow(arrow_schema(src.schema)),
            adds,
            mode=mode,  # type: ignore[arg-type]
            name=src.table,
            configuration=configuration(src.keep_s),
            storage_options=self.storage_options,
            commit_properties=self._txn(src.version),
        )
        self._dt, self._fresh = None, False

    def rebuild(self, src: Source) -> None:
        """Remove ``_delta_log/`` and write it again from the manifest's live blocks."""
        self.remove_log()
        self.create(src)

    def remove_log(self) -> None:
        """Delete the Delta log's files in ``_delta_log/`` (``LOG_FILE``: the store wrote them), then the folder
        if nothing else is in it; a file or folder of another name there is left as it is, and ``_delta_log``
        that is not a folder is refused. Local paths only, for now."""
        self._dt = None
        path = _local_path(self.uri)
        if path is None:
            raise NotImplementedError(f"removing the Delta log at {self.uri} (not a local path)")
        log_dir = os.path.join(path, LOG_DIR)
        if os.path.isdir(log_dir) and not os.path.islink(log_dir):
            self.resets += 1
            others = False
            for name in os.listdir(log_dir):
                full = os.path.join(log_dir, name)
                if LOG_FILE.fullmatch(name) and not os.path.isdir(full):
                    fs.unlink(full, missing_ok=True)
                else:
                    others = True
            if not others:
                fs.remove_tree(log_dir)
        elif os.path.lexists(log_dir):  # not a folder the store made: never deleted
            raise FileExistsError(f"{log_dir} is not a folder (the store did not write it); remove it")

    # internals

    def _txn(self, version: int) -> Any:
        from deltalake.transaction import CommitProperties, Transaction

        return CommitProperties(app_transactions=[Transaction(self.app, version)])

    def _adds(self, blocks: Iterable[mf.BlockEntry], stats: Mapping[str, str], *, data_change: bool) -> list[Any]:
        from deltalake.transaction import AddAction

        return [
            AddAction(b.block, b.bytes, {}, 0, data_change, stats.get(b.block) or _rows_only(b.rows)) for b in blocks
        ]

    def _commit(self, dt: DeltaTable, src: Source, version: int, actions: list[Any]) -> None:
        """Commit ``actions`` (delta-rs writes a checkpoint every ``delta.checkpointInterval``, 100, commits)."""
        self._fresh = False
        dt.create_write_transaction(actions, mode="append", schema=dt.schema(), commit_properties=self._txn(version))
        dt.update_incremental()
        self._fresh, self._txn_done = True, version

    def _apply(self, dt: DeltaTable, src: Source, v: int, edit: mf.Edit, stats: Mapping[str, str]) -> int:
        """The Delta commit of manifest version ``v`` (0 or 1 commits)."""
        from deltalake.transaction import RemoveAction

        if edit.schema is not None:  # new metadata over the blocks live before this version (it adds none)
            actions = pl.DataFrame(dt.get_add_actions(flatten=True)).select("path", "size_bytes")
            sizes = dict(actions.iter_rows())
            now = {b.block: b for b in src.blocks}
            blocks = [now.get(p) or mf.BlockEntry(p, UNKNOWN_ROWS, int(s)) for p, s in sorted(sizes.items())]
            schema = catalog.schema_from_b64(edit.schema)
            self.create(Source(src.table, v, blocks, schema, src.stats, src.keep_s, src.edits), mode="overwrite")
            self.load()
            return 1
        if not edit.add and not edit.remove:
            return 0
        data_change = edit.operation not in NO_DATA_CHANGE
        sizes = {b.block: b.bytes for b in src.blocks}
        now_ms = _now_ms()
        removes = [RemoveAction(p, data_change, now_ms, sizes.get(p), {}) for p in edit.remove]
        self._commit(dt, src, v, [*self._adds(edit.add, stats, data_change=data_change), *removes])
        return 1

    def _reconcile(self, src: Source) -> int:
        """One commit whose files are the live blocks, under the current schema (used when the versions since
        the log's txn version are not all readable, or the txn is not ours or ahead of the manifest)."""
        self.create(src, mode="overwrite")
        return 1

    def _config_ok(self, dt: DeltaTable, src: Source) -> bool:
        conf = dt.metadata().configuration
        return all(conf.get(k) == v for k, v in configuration(src.keep_s).items())

    def _set_config(self, dt: DeltaTable, src: Source) -> None:
        self._fresh = False
        dt.alter.set_table_properties(
            configuration(src.keep_s), raise_if_not_exists=False, commit_properties=self._txn(src.version)
        )
        dt.update_incremental()
        self._fresh, self._txn_done = True, src.version


def _rows_only(rows: int) -> str:
    return json.dumps({"numRecords": rows}) if rows != UNKNOWN_ROWS else "{}"


def _now_ms() -> int:
    import time

    return int(time.time() * 1000)


def _local_path(uri: str) -> str | None:
    if uri.startswith("file://"):
        return uri[len("file://") :]
    if "://" in uri:
        return None
    return uri
