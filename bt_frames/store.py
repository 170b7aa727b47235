"""BacktraceStore: a folder of tables, one writer at a time."""

from __future__ import annotations

import logging
import os
import shutil
import sys
import threading
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import polars as pl

from bt_frames import _convert
from bt_frames.errors import (
    BtError,
    ReadOnlyError,
    SchemaMismatchError,
    StoreClosedError,
    TableExistsError,
    TableNotFoundError,
)
from bt_frames.storage import catalog, layout, wal
from bt_frames.storage.locking import StoreLock
from bt_frames.table import DEFAULT_MAX_BLOCK_ROWS, DEFAULT_ROW_GROUP_ROWS, Table

if TYPE_CHECKING:
    from bt_frames.verify import VerifyReport

log = logging.getLogger("bt_frames")

Durability = Literal["fsync", "batch", "none"]


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
        WAL as of opening; ``refresh()`` catches up.
    durability
        ``"fsync"`` (default): each append is on disk before it returns.
        ``"batch"``: a background thread syncs every few milliseconds — a process
        crash loses nothing, a power loss at most that interval. ``"none"``:
        left to the OS.
    progress
        Show progress bars for long operations: ``None`` (default) shows them
        only in an interactive session (a terminal or a notebook).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        read_only: bool = False,
        durability: Durability = "fsync",
        progress: bool | None = None,
    ) -> None:
        if durability not in wal.DURABILITY_MODES:
            raise BtError(f"durability must be one of {', '.join(map(repr, wal.DURABILITY_MODES))}, not {durability!r}")
        self._path = Path(path)
        self._read_only = read_only
        self._durability: Durability = durability
        self._show_progress = progress
        self._tables: dict[str, Table] = {}
        self._lock = threading.RLock()
        self._closed = False
        self._store_lock: StoreLock | None = None
        if read_only:
            if not self._path.is_dir():
                raise BtError(f"store {str(self._path)!r} does not exist (read_only=True cannot create it)")
            return
        self._path.mkdir(parents=True, exist_ok=True)
        self._store_lock = StoreLock(self._path)
        self._store_lock.acquire()
        try:
            for entry in os.listdir(self._path):  # interrupted create_table / drop_table
                if entry.startswith(".") and (self._path / entry).is_dir():
                    shutil.rmtree(self._path / entry, ignore_errors=True)
        except BaseException:
            self._store_lock.release()
            raise

    # -- properties ------------------------------------------------------------

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
    def tables(self) -> list[str]:
        """Names of the tables in the store, sorted."""
        self._check_open()
        out = []
        for entry in os.listdir(self._path):
            if (self._path / entry / layout.TABLE_JSON).is_file():
                try:
                    layout.validate_table_name(entry)
                except BtError:
                    continue
                out.append(entry)
        return sorted(out)

    # -- tables ----------------------------------------------------------------

    def table(self, name: str) -> Table:
        """Open (recovering if needed) and return a table."""
        self._check_open()
        layout.validate_table_name(name)
        with self._lock:
            t = self._tables.get(name)
            if t is not None:
                return t
            directory = self._path / name
            try:
                meta = catalog.TableMeta.load(directory / layout.TABLE_JSON)
            except FileNotFoundError:
                raise TableNotFoundError(self._path, name, self.tables) from None
            t = Table(self, directory, meta)
            self._tables[name] = t
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
    ) -> Table:
        """Create a table, or open it if it exists with the same schema.

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
            meta = catalog.TableMeta(name, pl_schema, time_column, max_block_rows, rg)
            self._create_dir(meta)
            return self.table(name)

    def _create_dir(self, meta: catalog.TableMeta) -> None:
        tmp = self._path / f".create-{meta.name}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        (tmp / layout.WAL_DIR).mkdir()
        (tmp / layout.BLOCKS_DIR).mkdir()
        layout.atomic_write(tmp / layout.TABLE_JSON, meta.to_json().encode())
        layout.fsync_dir(tmp)
        os.rename(tmp, self._path / meta.name)
        layout.fsync_dir(self._path)

    def append(self, name: str, data: object, *, time_column: str | None = None, **options: Any) -> int | None:
        """Append to table ``name``, creating it from ``data``'s schema if it does not exist.

        ``time_column`` (creation only) defaults to a pandas DatetimeIndex or
        the first datetime/date column without nulls. Returns the LSN of the append.
        """
        self._check_writable()
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
        return t.append(data)

    def drop_table(self, name: str) -> None:
        """Delete a table and all its files (atomic: one rename, then removal)."""
        self._check_writable()
        layout.validate_table_name(name)
        with self._lock:
            directory = self._path / name
            if not (directory / layout.TABLE_JSON).is_file():
                raise TableNotFoundError(self._path, name, self.tables)
            t = self._tables.pop(name, None)
            if t is not None:
                t.close()
                t._dropped = True  # its methods now say "dropped", not "closed"
            trash = self._path / f".dropped-{name}-{uuid.uuid4().hex[:8]}"
            os.rename(directory, trash)
            layout.fsync_dir(self._path)
            shutil.rmtree(trash, ignore_errors=True)

    def _set_pandas_meta(self, table: Table, meta: dict[str, Any]) -> None:
        if self._read_only:
            return
        table._meta.pandas = meta
        layout.atomic_write(table.path / layout.TABLE_JSON, table._meta.to_json().encode())

    # -- lifecycle -------------------------------------------------------------

    def refresh(self) -> None:
        """Read-only stores: pick up tables, blocks and WAL records written since opening."""
        self._check_open()
        with self._lock:
            for name, t in list(self._tables.items()):
                if not (self._path / name / layout.TABLE_JSON).is_file():
                    self._tables.pop(name).close()
                else:
                    t.refresh()

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
        """Make everything durable, close all tables and release the writer lock."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                for t in self._tables.values():
                    t.close()
            finally:
                if self._store_lock is not None:
                    self._store_lock.release()

    def __enter__(self) -> BacktraceStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            if not self._closed:
                self.close()
        except Exception:  # pragma: no cover - interpreter shutdown
            pass

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosedError(f"store {str(self._path)!r} is closed; open it again with bt.open(path)")

    def _check_writable(self) -> None:
        self._check_open()
        if self._read_only:
            raise ReadOnlyError(f"store {str(self._path)!r} was opened with read_only=True; it cannot be written")

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
