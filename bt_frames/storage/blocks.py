"""Immutable Parquet blocks and the statistics they carry.

A block is one Parquet file written by Polars (zstd, column statistics on,
row groups of at most ``row_group_rows`` rows so that a narrow query can skip
part of a block). Its name (see :mod:`bt_frames.storage.layout`) holds its LSN
range, part number and the xxh3-64 digest of the whole file.

Parquet key-value metadata written into every block::

    bt_frames.format_version   "1" (BLOCK_FORMAT_VERSION)
    bt_frames.lsn_range        "<first>-<last>"   LSNs of the WAL records it holds
    bt_frames.part             "<part>/<nparts>"  position within a multi-part append
    bt_frames.stats            JSON, STATS_VERSION 2:
        {"version": 2, "rows": int,
         "columns": {name: {"nulls": int, "min": v|null, "max": v|null,
                            "distinct": [v, ...] | null, "counts": [n, ...] | null}}}

Values ``v`` are the column's *physical* values (integers for temporal types,
strings for categorical/enum, floats for floats). ``min``/``max`` follow
Polars' ordering: for floats NaN is the largest value, so ``max`` is NaN
when the block holds any NaN. ``distinct`` is the exact set of non-null values
when the block has at most ``DISTINCT_LIMIT`` of them (none for floats,
decimal, binary and nested types), in ascending order; ``counts`` (version 2)
gives how many rows hold each of them, in the same order, so that with
``nulls`` the block's whole value distribution in that column is known and a
count such as ``filter(col == v).select(pl.len())`` is answered without
reading the block. Version-1 blocks have no ``counts`` (read as null: such
blocks are read instead). Columns whose type is not prunable
(decimal, binary, nested) have ``min``/``max``/``distinct``/``counts`` null.

Write protocol (``write_block``): serialise to memory, hash, write
``.tmp``, fsync, rename to the final name (which contains the hash), fsync
the directory. A block becomes visible only by that rename.

Integrity (``verify_block``): before its first read in a process a block's
bytes are hashed and compared with the digest in its name; a mismatch raises
CorruptionError naming the file. Verified files are remembered per process
by (path, inode, size, mtime).
"""

from __future__ import annotations

import io
import itertools
import json
import math
import operator
import os
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, overload

import polars as pl
import xxhash

from bt_frames.errors import CorruptionError, UnsupportedFormatError
from bt_frames.storage import fs, layout
from bt_frames.storage.records import Record

BLOCK_FORMAT_VERSION = 1
STATS_VERSION = 2  # 2: per-value counts next to the distinct set
DISTINCT_LIMIT = 256
COMPRESSION: Final = "lz4"  # as ArcticDB: decode speed over size (zstd: ~40% smaller files, ~2x slower scans)
KEY_VERSION = "bt_frames.format_version"
KEY_LSN = "bt_frames.lsn_range"
KEY_PART = "bt_frames.part"
KEY_STATS = "bt_frames.stats"
KEY_WRITER = "bt_frames.writer"  # the writing process (locking.process_tag()), on the parts of a large append
HASH_CHUNK = 8 << 20


@dataclass(frozen=True)
class ColumnStats:
    nulls: int
    min: Any = None
    max: Any = None
    distinct: tuple[Any, ...] | None = None
    counts: tuple[int, ...] | None = None  # rows per value of ``distinct``, same order (None: not known)

    def to_json(self) -> dict[str, Any]:
        return {
            "nulls": self.nulls,
            "min": self.min,
            "max": self.max,
            "distinct": list(self.distinct) if self.distinct is not None else None,
            "counts": list(self.counts) if self.counts is not None else None,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ColumnStats:
        dist, counts = d.get("distinct"), d.get("counts")
        if dist is None or counts is None or len(counts) != len(dist):
            counts = None  # a version-1 block (or a malformed entry: never trusted for counts)
        return cls(
            int(d["nulls"]),
            d.get("min"),
            d.get("max"),
            tuple(dist) if dist is not None else None,
            tuple(int(n) for n in counts) if counts is not None else None,
        )


class BlockInfo(Record):
    """Everything known about a block without opening it (immutable).

    ``BlockInfo(name, file, rows, bytes, columns)``: ``name`` the parsed file
    name, ``file`` its path (a str: Path objects are made only when used),
    ``columns`` its statistics, or None when they came from the table's
    statistics cache, which holds them as a frame. Equal (and hashed) by
    name, file, rows and bytes, not ``columns``.

    A tuple underneath, not a frozen dataclass: an open makes one per block
    (thousands), and a frozen dataclass costs ~4x more to construct. Use the
    attributes; the tuple layout is private.
    """

    __slots__ = ()
    KEY = 4  # (name, file, rows, bytes): not the statistics
    NEW_ARGS = 5  # and the statistics; the file name follows

    def __new__(
        cls,
        name: layout.BlockName,
        file: str | os.PathLike[str],
        rows: int,
        bytes: int,  # noqa: A002 - the field's name since the dataclass
        columns: dict[str, ColumnStats] | None,
    ) -> BlockInfo:
        path = file if isinstance(file, str) else os.fspath(file)
        return tuple.__new__(cls, (name, path, rows, bytes, columns, os.path.basename(path)))

    @classmethod
    def of_cached(cls, name: layout.BlockName, directory: str, filename: str, rows: int, size: int) -> BlockInfo:
        """A block whose statistics are in the cache frame: ``directory`` ends in a separator (the bulk path)."""
        return tuple.__new__(cls, (name, directory + filename, rows, size, None, filename))

    @classmethod
    def of_cached_many(
        cls,
        names: list[layout.BlockName],
        directory: str,
        filenames: list[str],
        rows: list[int],
        sizes: list[int],
    ) -> list[BlockInfo]:
        """``of_cached`` of each, with no Python code per block (an open makes thousands)."""
        if not len(names) == len(filenames) == len(rows) == len(sizes):
            raise ValueError("of_cached_many: the columns differ in length")
        paths = map(directory.__add__, filenames)
        fields = zip(names, paths, rows, sizes, itertools.repeat(None), filenames, strict=False)  # repeat: endless
        return list(map(tuple.__new__, itertools.repeat(cls), fields))

    @property
    def name(self) -> layout.BlockName:
        n: layout.BlockName = self[0]
        return n

    @property
    def file(self) -> str:
        f: str = self[1]
        return f

    @property
    def rows(self) -> int:
        r: int = self[2]
        return r

    @property
    def bytes(self) -> int:
        b: int = self[3]
        return b

    @property
    def columns(self) -> dict[str, ColumnStats] | None:
        c: dict[str, ColumnStats] | None = self[4]
        return c

    @property
    def filename(self) -> str:
        f: str = self[5]
        return f

    @property
    def path(self) -> Path:
        return Path(self[1])

    @property
    def first_lsn(self) -> int:
        n: layout.BlockName = self[0]
        return n.first_lsn

    @property
    def last_lsn(self) -> int:
        n: layout.BlockName = self[0]
        return n.last_lsn

    def __repr__(self) -> str:
        return (
            f"BlockInfo(name={self.name!r}, file={self.file!r}, rows={self.rows!r}, bytes={self.bytes!r}, "
            f"columns={self.columns!r})"
        )


class CachedBlocks(Sequence[BlockInfo]):
    """The blocks of a statistics frame as an immutable sequence of ``BlockInfo``, each made when first used.

    A reader's open of a table whose cache is linked to its manifest gets its blocks from the
    frame's identity columns; a query that the statistics prune to a few blocks touches only those,
    so the other thousands of ``BlockInfo`` (and their parsed names) are never made. Equal to any
    sequence of the same ``BlockInfo`` in the same order (a tuple of them, say).
    """

    __slots__ = ("_columns", "_made", "_prefix")

    def __init__(
        self,
        prefix: str,
        files: list[str],
        first: list[int],
        last: list[int],
        part: list[int],
        nparts: list[int],
        rows: list[int],
        sizes: list[int],
    ) -> None:
        if not len(files) == len(first) == len(last) == len(part) == len(nparts) == len(rows) == len(sizes):
            raise ValueError("CachedBlocks: the columns differ in length")
        self._prefix = prefix  # the blocks folder, ending in a separator
        self._columns = (files, first, last, part, nparts, rows, sizes)
        self._made: list[BlockInfo | None] = [None] * len(files)

    def _make(self, i: int) -> BlockInfo:
        files, first, last, part, nparts, rows, sizes = self._columns
        info = self._made[i]
        if info is None:
            # the name fields are the frame's columns, written from the parsed name of the same string
            name = layout.BlockName(first[i], last[i], part[i], nparts[i], files[i][layout.BLOCK_DIGEST])
            info = self._made[i] = BlockInfo.of_cached(name, self._prefix, files[i], rows[i], sizes[i])
        return info

    def __len__(self) -> int:
        return len(self._made)

    @overload
    def __getitem__(self, i: int) -> BlockInfo: ...
    @overload
    def __getitem__(self, i: slice) -> tuple[BlockInfo, ...]: ...
    def __getitem__(self, i: int | slice) -> BlockInfo | tuple[BlockInfo, ...]:
        if isinstance(i, slice):
            return tuple(self._make(j) for j in range(*i.indices(len(self._made))))
        n = len(self._made)
        if not -n <= i < n:
            raise IndexError("CachedBlocks index out of range")
        return self._make(i % n)

    def __iter__(self) -> Iterator[BlockInfo]:
        return map(self._make, range(len(self._made)))

    @property
    def filenames(self) -> list[str]:
        """Every block's file name, in order (without making a ``BlockInfo``)."""
        return list(self._columns[0])

    @property
    def total_rows(self) -> int:
        return sum(self._columns[5])

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sequence) or isinstance(other, (str, bytes)):
            return NotImplemented
        return len(other) == len(self) and all(map(operator.eq, self, other))

    def __ne__(self, other: object) -> bool:
        eq = self.__eq__(other)
        return eq if eq is NotImplemented else not eq

    def __hash__(self) -> int:
        return hash(tuple(self))

    def __add__(self, other: Sequence[BlockInfo]) -> list[BlockInfo]:
        return [*self, *other]

    def __repr__(self) -> str:
        return f"CachedBlocks({len(self)} blocks in {self._prefix!r})"


def _prunable(dtype: pl.DataType) -> bool:
    return (dtype.is_numeric() and not isinstance(dtype, pl.Decimal)) or isinstance(
        dtype, (pl.String, pl.Boolean, pl.Date, pl.Datetime, pl.Duration, pl.Time, pl.Categorical, pl.Enum)
    )


def _is_cat(dtype: pl.DataType) -> bool:
    return isinstance(dtype, (pl.Categorical, pl.Enum))


def _py(v: Any) -> Any:
    if isinstance(v, float) and math.isnan(v):
        return float("nan")
    return v


DISTINCT_PROBE_ROWS = 4_096  # more distinct values than the limit in these rows: no distinct set


def compute_stats(df: pl.DataFrame) -> dict[str, ColumnStats]:
    """Per-column statistics of a frame, in the JSON-able form described above.

    Two Polars queries (all columns in parallel): nulls, min, max and a
    probe of the distinct count on the first rows; then the distinct values,
    with their counts, of the columns the probe did not rule out. This runs
    on every block write.
    """
    first: list[pl.Expr] = []
    for name, dtype in df.schema.items():
        c = pl.col(name)
        first.append(c.null_count().alias(f"nulls|{name}"))
        if not _prunable(dtype):
            continue
        v = c.cast(pl.String) if _is_cat(dtype) else c.to_physical()
        if dtype.is_float():  # NaN sorts last in Polars: max is NaN when there is one
            finite = v.drop_nulls().drop_nans()
            first += [
                finite.min().alias(f"min|{name}"),
                pl.when(v.is_nan().any()).then(float("nan")).otherwise(finite.max()).alias(f"max|{name}"),
            ]
            continue
        first += [
            v.min().alias(f"min|{name}"),
            v.max().alias(f"max|{name}"),
            v.head(DISTINCT_PROBE_ROWS).drop_nulls().n_unique().alias(f"probe|{name}"),
        ]
    row = df.select(first).row(0, named=True) if first else {}
    second = []
    for name, dtype in df.schema.items():
        probe = row.get(f"probe|{name}")
        if probe is not None and probe <= DISTINCT_LIMIT and row[f"nulls|{name}"] < df.height:
            v = pl.col(name).cast(pl.String) if _is_cat(dtype) else pl.col(name).to_physical()
            second.append(v.alias("v").drop_nulls().value_counts(name="n").implode().alias(name))
    sets = df.select(second).row(0, named=True) if second else {}
    out: dict[str, ColumnStats] = {}
    for name, dtype in df.schema.items():
        nulls = row[f"nulls|{name}"]
        if not _prunable(dtype) or nulls == df.height:
            out[name] = ColumnStats(nulls)
            continue
        mn, mx = row[f"min|{name}"], row[f"max|{name}"]
        if dtype.is_float():
            out[name] = ColumnStats(nulls, _py(float("nan") if mn is None else mn), _py(mx))
            continue
        pairs = sets.get(name)
        if pairs is None or len(pairs) > DISTINCT_LIMIT:
            out[name] = ColumnStats(nulls, mn, mx)
            continue
        pairs = sorted((p["v"], p["n"]) for p in pairs)
        out[name] = ColumnStats(nulls, mn, mx, tuple(v for v, _ in pairs), tuple(int(n) for _, n in pairs))
    return out


def hash_bytes(data: bytes | memoryview) -> str:
    return xxhash.xxh3_64_hexdigest(data)


def hash_file(path: Path) -> str:
    h = xxhash.xxh3_64()
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def write_block(
    blocks_dir: Path,
    df: pl.DataFrame,
    *,
    first_lsn: int,
    last_lsn: int,
    part: int = 1,
    nparts: int = 1,
    row_group_rows: int,
    publish: bool = True,
    writer: str | None = None,
) -> BlockInfo:
    """Write ``df`` as a block; durable and visible on return (if ``publish``).

    With ``publish=False`` the file is left at its temporary name (fsynced) and
    the caller renames it with :func:`publish_block`: multi-part appends write
    every part before renaming any. ``writer`` (a process tag) goes into the
    footer: see :func:`block_writer`.
    """
    stats = compute_stats(df)
    stats_doc = {
        "version": STATS_VERSION,
        "rows": df.height,
        "columns": {c: s.to_json() for c, s in stats.items()},
    }
    buf = io.BytesIO()
    df.write_parquet(
        buf,
        compression=COMPRESSION,
        statistics=True,
        row_group_size=row_group_rows,
        metadata={
            KEY_VERSION: str(BLOCK_FORMAT_VERSION),
            KEY_LSN: f"{first_lsn}-{last_lsn}",
            KEY_PART: f"{part}/{nparts}",
            KEY_STATS: json.dumps(stats_doc, allow_nan=True),
            **({KEY_WRITER: writer} if writer is not None else {}),
        },
    )
    data = buf.getbuffer()
    name = layout.BlockName(first_lsn, last_lsn, part, nparts, hash_bytes(data))
    path = blocks_dir / str(name)
    tmp = layout.tmp_path(path)
    fs.write_file(tmp, data)  # removes the tmp file if the write or fsync fails
    info = BlockInfo(name, os.fspath(path), df.height, len(data), stats)
    if publish:
        publish_block(tmp, path)
    _mark_verified(path)
    return info


def publish_block(tmp: Path, path: Path, *, sync_dir: bool = True) -> None:
    try:
        fs.replace(tmp, path)
    except BaseException:
        fs.unlink(tmp, missing_ok=True)
        raise
    if sync_dir:
        layout.fsync_dir(path.parent)


def pending_path(info: BlockInfo) -> Path:
    return layout.tmp_path(info.path)


# -- integrity ---------------------------------------------------------------

_verified: dict[str, tuple[int, int, int]] = {}
_verified_lock = threading.Lock()


def _file_key(path: Path) -> tuple[int, int, int]:
    st = os.stat(path)
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def _mark_verified(path: Path) -> None:
    try:
        key = _file_key(path)
    except FileNotFoundError:  # not yet published: verified when renamed
        key = _file_key(layout.tmp_path(path))
    with _verified_lock:
        _verified[str(path)] = key


def is_verified(path: str) -> bool:
    """Whether the block file at ``path`` was verified in this process and is unchanged since (one stat)."""
    with _verified_lock:
        known = _verified.get(path)
    if known is None:
        return False
    try:
        return _file_key(Path(path)) == known
    except OSError:
        return False


def verify_block(path: Path, *, force: bool = False) -> None:
    """Check a block's bytes against the digest in its name (once per process)."""
    name = layout.parse_block_name(path.name)
    if name is None:
        raise CorruptionError.at(path, None, "not a bt_frames block file name")
    try:
        key = _file_key(path)
    except FileNotFoundError:
        raise CorruptionError.at(
            path,
            None,
            "block file is missing (if another process compacted or dropped the table, a read-only "
            "store must call refresh() to see the new blocks)",
        ) from None
    with _verified_lock:
        if not force and _verified.get(str(path)) == key:
            return
    digest = hash_file(path)
    if digest != name.digest:
        raise CorruptionError.at(
            path, None, f"xxh3-64 digest {digest} does not match {name.digest} recorded in the file name"
        )
    with _verified_lock:
        _verified[str(path)] = key


def read_block_info(path: Path, *, verify: bool = True) -> BlockInfo:
    """Read a block's statistics from its Parquet footer (key-value metadata)."""
    name = layout.parse_block_name(path.name)
    if name is None:  # pragma: no cover - callers filter names
        raise ValueError(f"not a block name: {path}")
    if verify:
        verify_block(path)
    try:
        meta = pl.read_parquet_metadata(path)
    except Exception as e:  # polars raises ComputeError etc. on a bad footer
        raise CorruptionError.at(path, None, f"unreadable Parquet footer ({e})") from e
    version = meta.get(KEY_VERSION)
    if version is None or KEY_STATS not in meta:
        raise CorruptionError.at(path, None, "Parquet footer lacks bt_frames metadata")
    if int(version) > BLOCK_FORMAT_VERSION:
        raise UnsupportedFormatError.newer(path, version, BLOCK_FORMAT_VERSION)
    if meta.get(KEY_LSN) != f"{name.first_lsn}-{name.last_lsn}":
        raise CorruptionError.at(path, None, f"LSN range {meta.get(KEY_LSN)!r} in the footer disagrees with the name")
    try:
        doc = json.loads(meta[KEY_STATS])
        cols = {c: ColumnStats.from_json(d) for c, d in doc["columns"].items()}
        rows = int(doc["rows"])
    except (ValueError, KeyError, TypeError) as e:
        raise CorruptionError.at(path, None, f"bad statistics in the Parquet footer ({e})") from e
    return BlockInfo(name, os.fspath(path), rows, path.stat().st_size, cols)


def block_writer(path: Path) -> str | None:
    """The tag of the process that wrote the block (``write_block(writer=)``), None if not recorded."""
    try:
        return pl.read_parquet_metadata(path).get(KEY_WRITER)
    except Exception:  # unreadable: the caller has verified the file, so this is a race with its removal
        return None


def list_block_files(blocks_dir: Path) -> list[tuple[layout.BlockName, Path]]:
    """The blocks in ``blocks_dir``, in LSN order (foreign files ignored)."""
    try:
        names = os.listdir(blocks_dir)
    except FileNotFoundError:
        return []
    out = []
    for n in names:
        parsed = layout.parse_block_name(n)
        if parsed is not None:
            out.append((parsed, blocks_dir / n))
    out.sort(key=lambda t: (t[0].first_lsn, t[0].part))
    return out
