"""Every exception bt_frames raises, in one place.

All of them derive from :class:`BtError`, so ``except bt.BtError`` catches
anything this library raises on purpose. Where a builtin exception has the
same meaning (``ValueError`` for bad values, ``KeyError`` for a missing
table) the class derives from that too, so generic handlers keep working.

Messages name the object (store, table, column, file), say what was wrong
and how to fix it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from pathlib import Path

__all__ = [
    "BtError",
    "BtWarning",
    "CorruptionError",
    "DeltaIncompatibleWarning",
    "InvalidTableNameError",
    "MirrorConflictError",
    "MissingOptionalDependencyError",
    "ObjectStoreError",
    "ReadOnlyError",
    "SchemaMismatchError",
    "StorageIOError",
    "StoreClosedError",
    "StoreLockedError",
    "TableDroppedError",
    "TableExistsError",
    "TableNotFoundError",
    "UnsupportedFormatError",
    "UnsupportedInputError",
]


class BtError(Exception):
    """Root of every bt_frames exception: ``except bt.BtError`` catches anything bt_frames raises on purpose.

    >>> try:                                                     # doctest: +SKIP
    ...     store.append("orders", bad_frame)
    ... except bt.BtError as e:
    ...     print(type(e).__name__, e)
    SchemaMismatchError table 'orders': the frame does not match the table schema ...
    """


class UnsupportedInputError(BtError, TypeError):
    """The object passed as data is not a frame bt_frames can read (pandas, Polars, pyarrow).

    >>> store.append("orders", [1, 2, 3])                  # doctest: +SKIP
    UnsupportedInputError: table 'orders': cannot append a list; pass a polars.DataFrame, a pandas.DataFrame
    or a pyarrow Table/RecordBatch ...
    """


class SchemaMismatchError(BtError, ValueError):
    """A frame or schema does not fit the table.

    Raised for missing or extra columns, types that cannot be converted
    without loss, nulls in the time column, and ``create_table`` with a schema
    that differs from the existing table's.

    >>> store.append("orders", pl.DataFrame({"ts": [...], "px": [1.0]}))  # doctest: +SKIP
    SchemaMismatchError: table 'orders': the frame does not match the table schema
      column  table                    frame    problem
      ts      Datetime(us, UTC)        ...      ok
      price   Float64                  -        missing from the frame
      px      -                        Float64  not in the table
    Fix: rename or add the columns so the frame has exactly the table's columns.
    """

    def __init__(self, message: str, *, table: str | None = None, columns: Iterable[str] = ()) -> None:
        super().__init__(message)
        self.table = table
        self.columns = tuple(columns)

    @classmethod
    def from_rows(
        cls,
        table: str,
        rows: list[tuple[str, str, str, str]],
        *,
        headline: str = "the frame does not match the table schema",
        fix: str,
        note: str | None = None,
    ) -> SchemaMismatchError:
        """Render a per-column table of (column, table dtype, frame dtype, problem); ``note`` goes before the fix."""
        header = ("column", "table", "frame", "problem")
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(3)]
        lines = [f"table {table!r}: {headline}"]
        for r in [header, *rows]:
            lines.append("  " + "  ".join(r[i].ljust(widths[i]) for i in range(3)) + "  " + r[3])
        if note:
            lines.append(note)
        lines.append(f"Fix: {fix}")
        bad = [r[0] for r in rows if r[3] != "ok"]
        return cls("\n".join(lines), table=table, columns=bad)


class CorruptionError(BtError):
    """A file on disk failed a checksum or format check.

    ``path`` names the file and ``offset`` the byte where the damage was
    found (``None`` for whole-file checks). Nothing is repaired silently:
    acknowledged data is never dropped to make an error go away.

    >>> store["orders"].scan().collect()  # after a byte of a block was flipped   # doctest: +SKIP
    CorruptionError: corrupt file trading_db/orders/blocks/...parquet: xxh3 digest ... does not match
    the digest in its name. Nothing was changed. Run `python -m bt_frames verify trading_db` for a full report; ...
    """

    def __init__(self, message: str, *, path: Path | str, offset: int | None = None) -> None:
        super().__init__(message)
        self.path = Path(path)
        self.offset = offset

    @classmethod
    def at(cls, path: Path | str, offset: int | None, reason: str) -> CorruptionError:
        where = f"{path}" if offset is None else f"{path} at byte offset {offset}"
        store = _store_root(Path(path))
        hint = f"python -m bt_frames verify {store}" if store else "python -m bt_frames verify STORE"
        return cls(
            f"corrupt file {where}: {reason}. Nothing was changed. Run `{hint}` for a full "
            "report; restore the file from a backup, or move it aside to give up the rows it holds.",
            path=path,
            offset=offset,
        )


def _store_root(path: Path) -> Path | None:
    for parent in path.parents:
        if (parent / "bt_frames.json").exists() or (parent / "LOCK").exists():
            return parent
    return None


@contextlib.contextmanager
def os_errors(what: str) -> Iterator[None]:
    """Turn an ``OSError`` raised inside into a ``StorageIOError`` saying ``what`` failed (BtErrors pass)."""
    try:
        yield
    except BtError:
        raise
    except OSError as e:
        raise StorageIOError.wrap(what, e) from e


class StorageIOError(BtError, OSError):
    """The operating system refused a read or write (a full disk, an I/O error, permissions).

    Also an ``OSError``: ``errno`` and ``filename`` are the system's. The
    message names the table and what was being done. The call that raised it
    committed nothing (an append raises only if its record is not in the
    WAL), so it can be retried once the cause is fixed.

    >>> table.append(df)  # on a full disk                   # doctest: +SKIP
    StorageIOError: table 'orders': append failed: [Errno 28] No space left on device: '.../wal/...wal'.
    Nothing was committed; free disk space (or fix the folder's permissions) and retry.
    """

    def __init__(self, message: str, *, errno: int | None = None, filename: str | None = None) -> None:
        OSError.__init__(self, errno, message, filename)
        self.message = message

    def __str__(self) -> str:
        return self.message

    @classmethod
    def wrap(cls, what: str, e: OSError) -> StorageIOError:
        return cls(
            f"{what} failed: {e}. Nothing was committed; free disk space (or fix the folder's permissions) and retry.",
            errno=e.errno,
            filename=e.filename,
        )


class StoreLockedError(BtError):
    """Another writer (another process, or another store object in this one) holds the store.

    >>> a = bt.open("trading_db")                                # doctest: +SKIP
    >>> b = bt.open("trading_db")                                # doctest: +SKIP
    StoreLockedError: store 'trading_db' is locked by another writer (pid=4242 host=box). Close the other
    BacktraceStore first, or open this one with read_only=True.
    """


class ObjectStoreError(BtError, OSError):
    """A request to the object store failed (network, credentials, a missing bucket, a refused upload).

    >>> bt.open("s3://no-such-bucket/db", storage_options=opts, wal_dir="wal")   # doctest: +SKIP
    ObjectStoreError: s3://no-such-bucket/db/bt_frames.json: uploading failed (...); bucket 'no-such-bucket'
    does not exist. Fix: create it, or correct the URI.
    """


class MirrorConflictError(BtError):
    """Another writer published versions of a table in the bucket: this writer lost its lease.

    Nothing more is published; the local store at ``wal_dir`` keeps every acknowledged row.

    >>> store.flush()                                        # doctest: +SKIP
    MirrorConflictError: table 'orders': version 12 already exists in the bucket (...) with different
    contents: another writer published it (this writer lost its lease). ...
    """


class StoreClosedError(BtError):
    """The store (or a table of it) was used after ``close()``.

    >>> store.close(); store.tables                              # doctest: +SKIP
    StoreClosedError: store 'trading_db' is closed; open it again with bt.open(path)
    """


class TableDroppedError(StoreClosedError):
    """A :class:`~bt_frames.Table` object was used after ``store.drop_table`` deleted its table.

    A ``StoreClosedError`` too (the object is closed), so existing handlers keep working.

    >>> orders = store["orders"]; store.drop_table("orders"); orders.rows   # doctest: +SKIP
    TableDroppedError: table 'orders' was dropped from store 'trading_db' (store.drop_table); this Table
    object has no data any more. If you meant to keep using a table of that name, create it again ...
    """

    def __init__(self, name: str, store: Path | str) -> None:
        super().__init__(
            f"table {name!r} was dropped from store {str(store)!r} (store.drop_table); this Table object "
            "has no data any more. If you meant to keep using a table of that name, create it again "
            f"(store.create_table({name!r}, ...) or store.append({name!r}, df)) and use the Table that returns."
        )
        self.name = name


class ReadOnlyError(BtError):
    """A write was attempted through a store opened with ``read_only=True``.

    >>> bt.open("trading_db", read_only=True).append("orders", df)   # doctest: +SKIP
    ReadOnlyError: store 'trading_db' was opened with read_only=True; it cannot be written
    """


class TableNotFoundError(BtError, KeyError):
    """No table of that name exists in the store.

    >>> store.table("order")                                     # doctest: +SKIP
    TableNotFoundError: store 'trading_db' has no table 'order' (tables: 'orders'). Create it with
    store.create_table(...) or store.append(name, df).

    ``read_only``: whether the store was opened read-only, which decides the
    advice (a read-only store cannot create tables); ``None`` (not known) gives
    advice that holds either way.
    """

    def __init__(
        self, store: Path | str, name: str, available: Iterable[str], *, read_only: bool | None = None
    ) -> None:
        names = sorted(available)
        shown = ", ".join(repr(n) for n in names) if names else "none"
        if read_only is None:
            fix = (
                "Check the name; to create the table, call store.create_table(...) or store.append(name, df) "
                "on a store opened for writing (not read_only=True)."
            )
        elif read_only:
            fix = (
                "Check the name. This store was opened with read_only=True and cannot create tables: create it "
                "through a writer (bt.open(path)); a read-only store sees it once it exists."
            )
        else:
            fix = "Create it with store.create_table(...) or store.append(name, df)."
        msg = f"store {str(store)!r} has no table {name!r} (tables: {shown}). {fix}"
        super().__init__(msg)
        self.message = msg
        self.name = name

    def __str__(self) -> str:  # KeyError would quote the message
        return self.message


class TableExistsError(BtError, ValueError):
    """``create_table(..., exist_ok=False)`` on a table that already exists.

    >>> store.create_table("orders", schema, time_column="ts", exist_ok=False)   # doctest: +SKIP
    TableExistsError: table 'orders' already exists in store 'trading_db'
    """


class InvalidTableNameError(BtError, ValueError):
    """Table names are ``[A-Za-z0-9_][A-Za-z0-9_.-]*`` (max 128 chars, never ``..``).

    >>> store.create_table("../etc", schema)                     # doctest: +SKIP
    InvalidTableNameError: invalid table name '../etc': names match [A-Za-z0-9_][A-Za-z0-9_.-]*, ...
    Fix: use a name like 'orders' or 'ticks_2024.v2'.
    """


class UnsupportedFormatError(BtError):
    """A file was written by a newer bt_frames format than this build can read.

    >>> bt.open("store_from_the_future")["orders"]               # doctest: +SKIP
    UnsupportedFormatError: store_from_the_future/orders/table.json was written by bt_frames format 9;
    this build reads formats <= 1. Upgrade bt_frames (pip install -U bt-frames).
    """

    @classmethod
    def newer(cls, path: Path | str, found: object, supported: int) -> UnsupportedFormatError:
        return cls(
            f"{path} was written by bt_frames format {found}; this build reads formats <= {supported}. "
            "Upgrade bt_frames (pip install -U bt-frames)."
        )


class MissingOptionalDependencyError(BtError, ImportError):
    """A feature needs a package that is not installed (an optional extra of bt_frames).

    >>> orders.plot_blocks()  # without matplotlib                # doctest: +SKIP
    MissingOptionalDependencyError: Table.plot_blocks needs matplotlib, which is not installed.
    Install it with: pip install 'bt_frames[notebook]'
    """

    def __init__(self, message: str, *, package: str) -> None:
        super().__init__(message)
        self.package = package
        self.name = package  # ImportError's attribute

    @classmethod
    def needs(cls, feature: str, package: str, extra: str) -> MissingOptionalDependencyError:
        return cls(
            f"{feature} needs {package}, which is not installed. Install it with: pip install 'bt_frames[{extra}]'",
            package=package,
        )


class BtWarning(UserWarning):
    """The root of the warnings bt_frames emits; each points at the user's line that caused it."""


class DeltaIncompatibleWarning(BtWarning):
    """A table has column types the Delta Lake log cannot represent: it gets no Delta log (it works in bt_frames).

    >>> store.create_table("t", {"n": pl.UInt32})  # doctest: +SKIP
    DeltaIncompatibleWarning: table 't' will not be readable as a Delta table (pl.scan_delta, DuckDB delta_scan):
    column 'n' is UInt32: Delta has no unsigned integers; use a signed type one size larger ...
    """

    @classmethod
    def from_columns(cls, table: str, columns: dict[str, str]) -> DeltaIncompatibleWarning:
        what = "; ".join(f"column {c!r} is {why}" for c, why in columns.items())
        return cls(
            f"table {table!r} will not be readable as a Delta table (pl.scan_delta, DuckDB delta_scan, Spark): "
            f"{what}. bt_frames itself reads and writes it fully; table.delta_log says 'unsupported'."
        )


def find_stacklevel() -> int:
    """The ``stacklevel`` for ``warnings.warn`` that points at the first frame outside bt_frames."""
    import inspect
    import os

    package = os.path.dirname(__file__)
    frame = inspect.currentframe()
    level = 0
    while frame is not None:
        if not frame.f_code.co_filename.startswith(package + os.sep):
            break
        frame = frame.f_back
        level += 1
    return level
