"""``table.json`` (a table's identity) and ``stats.arrow`` (the statistics cache).

``table.json`` — written once at creation (atomically, as part of the table
folder) and rewritten atomically only when options or the schema change::

    {"format": "bt_frames.table", "format_version": 1, "name": "orders",
     "columns": [{"name": "ts", "dtype": "Datetime(time_unit='us', time_zone='UTC')"}, ...],
     "schema_ipc": "<base64 Arrow IPC stream of an empty frame: the exact schema>",
     "time_column": "ts" | null, "max_block_rows": 1000000, "row_group_rows": 16384,
     "pandas": null | {...pandas round-trip metadata...},
     "retention_s": null | seconds, "keep_versions_s": null | seconds, "auto_compact": true,
     "schema_version": N,            # only after a schema change: the manifest version that made it
     "checksum": "<xxh3 of the other fields>"}

The lifecycle options (``Table.set_options``) default to null, null and true
when absent (a table.json written before they existed); an older bt_frames
keeps them as unknown keys.

``columns`` is for people; ``schema_ipc`` is authoritative (it keeps every
dtype parameter: units, time zones, enum categories, decimal scale).
``format_version`` greater than ``TABLE_FORMAT_VERSION`` refuses to open.
After a schema change (``add_columns``, an append with ``schema_mode="merge"``:
see ``evolve.py``) the manifest version of the change is the commit point and
``table.json`` follows it; ``schema_version`` tells readers that blocks of an
older schema may exist (they are read conformed to this one). Should the two
disagree after a crash, the manifest's schema wins (see manifest.py).
``checksum`` is the xxh3 digest of the document without it, as canonical JSON
(sorted keys, no spaces), so an edit or a flipped byte that still parses is
caught; files written before the field existed have none and are accepted.
Any damage is a ``CorruptionError`` naming the file.

``stats.arrow`` — a **transient** cache of every block's statistics so that
opening a store is one small read instead of one footer read per block, as
SQLite treats its wal-index: it is rebuilt from the Parquet footers if it is
missing, stale or corrupt, and it is never the only copy of anything (each
block's footer holds its own statistics). Layout (version 5): an Arrow IPC
stream holding the statistics frame, then a JSON header
``{"format": "bt_frames.stats_cache", "version": 5, "schema": "<digest of the table
schema>", "xxh3": "<digest of the link's canonical JSON, then of the stream>",
"manifest": <link> | null}``, its length (8 bytes, little-endian) and the magic
``bt_stats``. The stream comes first so that Polars decodes it straight from
the file (the header and digest are read through a map of it): a cache is
never copied into Python. Version 4 (a JSON header line, then the stream) is
still read.

The stream holds the *statistics frame* (``stats_frame``): one
row per block with ``block`` (file name), ``first_lsn``, ``last_lsn``,
``part``, ``rows``, ``bytes`` and per column ``min.<c>``, ``max.<c>``,
``null_count.<c>``, ``distinct.<c>`` and ``counts.<c>`` (rows per distinct
value, same order; null where the block's stats have no counts). On open, rows are matched to the block
files on disk by name (a name carries the file's content digest); files
without a row are read from their footer, rows without a file are dropped,
and a writer rewrites the cache if anything differed. Loading it is one read
and one Arrow decode, whatever the number of blocks.
A cache written for an older schema of the table (before ``add_columns`` or
a widening, see evolve.py) is still used: its frame is converted
(``evolve.widen_stats``: a column it lacks is all null in its blocks, a
widened one's statistics are cast), it counts as stale (never linked), and a
writer rewrites it -- no footer is read again. A block's footer statistics
likewise give an all-null column for one the block lacks.

The *link* (version 5, ``manifest.link``): the manifest version whose blocks
are exactly the frame's rows, in order, the xxh3 of every version file a load
of that version reads and of the block names, and the WAL segments and last
clean close of that version. The writer writes it with every cache (and
rewrites the cache after a commit that changed no block, such as a close). A
reader whose newest manifest version is the linked one, with those files
byte for byte, takes the state from the cache and decodes no version
(``load_linked``); anything else and it decodes the manifest. Version-4 caches
(no link) are still read.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import mmap
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import polars as pl
import xxhash

from bt_frames.errors import CorruptionError, UnsupportedFormatError
from bt_frames.storage import blocks as blk
from bt_frames.storage import evolve, layout
from bt_frames.storage import manifest as mf

log = logging.getLogger("bt_frames")

TABLE_FORMAT = "bt_frames.table"
TABLE_FORMAT_VERSION = 1
CACHE_FORMAT = "bt_frames.stats_cache"
CACHE_VERSION = 5  # 1: JSON entries per block; 2: the statistics frame as an Arrow IPC file; 3: as a stream;
# 4: with counts.<c>; 5: the stream first (Polars reads it from the file), then the header, which links the
# frame to the manifest version whose blocks it lists


def schema_to_b64(schema: pl.Schema) -> str:
    buf = io.BytesIO()
    pl.DataFrame(schema=schema).write_ipc_stream(buf)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def schema_from_b64(data: str) -> pl.Schema:
    return pl.read_ipc_stream(io.BytesIO(base64.b64decode(data))).schema


@dataclass
class TableMeta:
    name: str
    schema: pl.Schema
    time_column: str | None
    max_block_rows: int
    row_group_rows: int
    pandas: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    # lifecycle options (``Table.set_options``); absent from a table.json written before them: the defaults
    retention_s: float | None = None  # rows older than this before the newest time value are dropped
    keep_versions_s: float | None = None  # retired blocks older than this are deleted (None: kept until vacuum)
    auto_compact: bool = True  # small adjacent blocks are merged in the background
    schema_version: int = 0  # the manifest version of the last schema change (0: none)

    def to_json(self) -> str:
        doc = {
            "format": TABLE_FORMAT,
            "format_version": TABLE_FORMAT_VERSION,
            "name": self.name,
            "columns": [{"name": n, "dtype": str(d)} for n, d in self.schema.items()],
            "schema_ipc": schema_to_b64(self.schema),
            "time_column": self.time_column,
            "max_block_rows": self.max_block_rows,
            "row_group_rows": self.row_group_rows,
            "pandas": self.pandas,
            "retention_s": self.retention_s,
            "keep_versions_s": self.keep_versions_s,
            "auto_compact": self.auto_compact,
            **({"schema_version": self.schema_version} if self.schema_version else {}),
            **{k: v for k, v in self.extra.items() if k != "checksum"},
        }
        doc["checksum"] = _doc_checksum(doc)
        return json.dumps(doc, indent=2) + "\n"

    @classmethod
    def load(cls, path: Path) -> TableMeta:
        """Read and check a ``table.json``; every kind of damage is a CorruptionError naming the file."""
        try:
            doc = json.loads(path.read_text())
        except FileNotFoundError:
            raise
        except (OSError, ValueError) as e:
            raise _bad_table_json(path, f"unreadable table metadata ({e})") from e
        if not isinstance(doc, dict) or doc.get("format") != TABLE_FORMAT:
            raise _bad_table_json(path, "not a bt_frames table.json")
        version = doc.get("format_version")
        if not isinstance(version, int) or isinstance(version, bool):
            raise _bad_table_json(path, f"format_version is {version!r}, not an integer")
        if version > TABLE_FORMAT_VERSION:
            raise UnsupportedFormatError.newer(path, version, TABLE_FORMAT_VERSION)
        try:
            schema = schema_from_b64(doc["schema_ipc"])
            known = {
                "format", "format_version", "name", "columns", "schema_ipc", "time_column",
                "max_block_rows", "row_group_rows", "pandas", "checksum",
                "retention_s", "keep_versions_s", "auto_compact",
                "schema_version",
            }  # fmt: skip
            meta = cls(
                name=doc["name"],
                schema=schema,
                time_column=doc.get("time_column"),
                max_block_rows=int(doc["max_block_rows"]),
                row_group_rows=int(doc["row_group_rows"]),
                pandas=doc.get("pandas"),
                retention_s=doc.get("retention_s"),
                keep_versions_s=doc.get("keep_versions_s"),
                auto_compact=doc.get("auto_compact", True),
                extra={k: v for k, v in doc.items() if k not in known},
                schema_version=int(doc.get("schema_version") or 0),
            )
        except (KeyError, ValueError, TypeError, pl.exceptions.PolarsError) as e:
            raise _bad_table_json(path, f"bad table metadata ({type(e).__name__}: {e})") from e
        problem = _meta_problem(meta, doc)
        if problem:
            raise _bad_table_json(path, f"bad table metadata ({problem})")
        if "checksum" in doc and doc["checksum"] != _doc_checksum(doc):
            raise _bad_table_json(
                path, f"its checksum {doc['checksum']!r} does not match its content ({_doc_checksum(doc)!r})"
            )
        return meta


def lost_table_json(directory: Path) -> CorruptionError | None:
    """The error for a table folder that still holds its data files but has lost its ``table.json``.

    Without this check such a table would look absent: ``store[name]`` would say
    "no table", ``verify()`` would skip the folder and ``create_table`` would
    fail to rename a new folder over it. None if ``directory`` is no such folder.
    """
    if not directory.is_dir() or (directory / layout.TABLE_JSON).exists():
        return None
    held = [n for n in (mf.MANIFEST_DIR, layout.WAL_DIR, layout.BLOCKS_DIR) if (directory / n).is_dir()]
    if not held:
        return None
    return CorruptionError.at(
        directory / layout.TABLE_JSON,
        None,
        f"table {directory.name!r} has its data files ({', '.join(held)}/) but its table.json is missing, so "
        "its schema is unknown and it cannot be read or created again. Restore table.json from a backup "
        "(or from a copy of this table made by the same bt_frames version)",
    )


def _doc_checksum(doc: dict[str, Any]) -> str:
    """xxh3 of ``doc`` without its ``checksum``, as canonical JSON (independent of indentation and key order)."""
    body = {k: v for k, v in doc.items() if k != "checksum"}
    return blk.hash_bytes(json.dumps(body, sort_keys=True, separators=(",", ":")).encode())


def _meta_problem(meta: TableMeta, doc: dict[str, Any]) -> str | None:
    """Why fields that parsed are still impossible, or None."""
    if not isinstance(meta.name, str) or not meta.name:
        return f"name is {meta.name!r}, not a table name"
    if meta.time_column is not None and meta.time_column not in meta.schema:
        return f"time_column {meta.time_column!r} is not a column of the schema"
    for key in ("max_block_rows", "row_group_rows"):
        if not isinstance(doc[key], int) or isinstance(doc[key], bool) or doc[key] < 1:
            return f"{key} is {doc[key]!r}, not a positive integer"
    for key in ("retention_s", "keep_versions_s"):
        value = doc.get(key)
        if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0):
            return f"{key} is {value!r}, not a number of seconds >= 0 or null"
    if not isinstance(doc.get("auto_compact", True), bool):
        return f"auto_compact is {doc['auto_compact']!r}, not true or false"
    if meta.pandas is not None and not isinstance(meta.pandas, dict):
        return f"pandas is a {type(meta.pandas).__name__}, not an object"
    if "checksum" in doc and not isinstance(doc["checksum"], str):
        return f"checksum is {doc['checksum']!r}, not a string"
    return None


def _bad_table_json(path: Path, reason: str) -> CorruptionError:
    store = path.parent.parent
    return CorruptionError(
        f"corrupt table metadata {path}: {reason}. Nothing was changed, and the table's data files were not "
        f"read. Restore {path.name} from a backup (or from a copy of this table made by the same bt_frames "
        f"version), then run `python -m bt_frames verify {store}` to check the rest of the store.",
        path=path,
    )


# -- statistics cache ----------------------------------------------------------


def literal_dtype(dtype: pl.DataType) -> pl.DataType:
    """The dtype literals compared with a column take (categoricals compare as strings)."""
    return pl.String() if isinstance(dtype, (pl.Categorical, pl.Enum)) else dtype


def _stat_dtype(dtype: pl.DataType) -> pl.DataType | None:
    """dtype of min/max stats, or None when the column has no range statistics."""
    if isinstance(dtype, (pl.Categorical, pl.Enum)):
        return None
    if dtype.is_numeric() and not isinstance(dtype, pl.Decimal):
        return dtype
    if isinstance(dtype, (pl.String, pl.Boolean, pl.Date, pl.Datetime, pl.Duration, pl.Time)):
        return dtype
    return None


def _typed(values: list[Any], dtype: pl.DataType) -> pl.Series:
    if isinstance(dtype, (pl.Categorical, pl.Enum)):
        return pl.Series(values, dtype=pl.String)
    phys = pl.Series([], dtype=dtype).to_physical().dtype
    return pl.Series(values, dtype=phys, strict=False).cast(dtype)


def _typed_lists(values: list[list[Any] | None], dtype: pl.DataType) -> pl.Series:
    """One List column from per-block value lists (None: no distinct set), in one constructor."""
    inner = literal_dtype(dtype)
    if isinstance(dtype, (pl.Categorical, pl.Enum)):
        return pl.Series(values, dtype=pl.List(inner))
    phys = pl.Series([], dtype=dtype).to_physical().dtype
    return pl.Series(values, dtype=pl.List(phys), strict=False).cast(pl.List(inner))


def stats_frame(infos: Sequence[blk.BlockInfo], schema: pl.Schema) -> pl.DataFrame:
    """One row per block: identity, ``rows``, ``bytes`` and the per-column statistics.

    This is the layout of the cache file: change it, bump ``CACHE_VERSION``.
    """
    cols: dict[str, pl.Series] = {
        "block": pl.Series([b.filename for b in infos], dtype=pl.String),
        "first_lsn": pl.Series([b.first_lsn for b in infos], dtype=pl.Int64),
        "last_lsn": pl.Series([b.last_lsn for b in infos], dtype=pl.Int64),
        "part": pl.Series([b.name.part for b in infos], dtype=pl.Int32),
        "nparts": pl.Series([b.name.nparts for b in infos], dtype=pl.Int32),
        "rows": pl.Series([b.rows for b in infos], dtype=pl.Int64),
        "bytes": pl.Series([b.bytes for b in infos], dtype=pl.Int64),
    }
    if any(b.columns is None for b in infos):  # a bug, never data: stats must come from somewhere
        raise ValueError("stats_frame: a block's statistics are only in the cached frame")
    for name, dtype in schema.items():
        # a column a block lacks (added after it was written: evolve.py) is all null there
        stats = [(b.columns or {}).get(name) or blk.ColumnStats(b.rows) for b in infos]
        st = _stat_dtype(dtype)
        if st is not None:
            cols[f"min.{name}"] = _typed([s.min for s in stats], dtype).alias(f"min.{name}")
            cols[f"max.{name}"] = _typed([s.max for s in stats], dtype).alias(f"max.{name}")
        cols[f"null_count.{name}"] = pl.Series([s.nulls for s in stats], dtype=pl.Int64)
        if st is not None or isinstance(dtype, (pl.Categorical, pl.Enum)):
            dist = [list(s.distinct) if s.distinct is not None else None for s in stats]
            cols[f"distinct.{name}"] = _typed_lists(dist, dtype)
            counts = [list(s.counts) if s.counts is not None and s.distinct is not None else None for s in stats]
            cols[f"counts.{name}"] = pl.Series(counts, dtype=pl.List(pl.Int64))
    return pl.DataFrame([s.alias(n) for n, s in cols.items()])


def stats_schema(schema: pl.Schema) -> pl.Schema:
    """The schema ``stats_frame`` gives for a table of ``schema`` (without building a frame)."""
    out: dict[str, pl.DataType] = {
        "block": pl.String(),
        "first_lsn": pl.Int64(),
        "last_lsn": pl.Int64(),
        "part": pl.Int32(),
        "nparts": pl.Int32(),
        "rows": pl.Int64(),
        "bytes": pl.Int64(),
    }
    for name, dtype in schema.items():
        st = _stat_dtype(dtype)
        if st is not None:
            out[f"min.{name}"] = out[f"max.{name}"] = dtype
        out[f"null_count.{name}"] = pl.Int64()
        if st is not None or isinstance(dtype, (pl.Categorical, pl.Enum)):
            out[f"distinct.{name}"] = pl.List(literal_dtype(dtype))
            out[f"counts.{name}"] = pl.List(pl.Int64())
    return pl.Schema(out)


@dataclass
class CacheLoad:
    blocks: Sequence[blk.BlockInfo]  # a list, or the frame's rows as ``CachedBlocks`` (a reader's linked open)
    stats: pl.DataFrame  # the statistics frame, one row per block of ``blocks``, same order
    from_cache: int  # blocks whose stats came from the cache
    from_footer: int  # blocks whose footer was read
    cache_state: str  # "fresh", "missing", "stale", "corrupt"
    changed: bool  # the cache on disk differs from what was loaded
    listing: frozenset[str] = frozenset()  # the blocks folder as it was listed


def _read_cache(path: Path, schema: pl.Schema) -> tuple[pl.DataFrame | None, str]:
    frame, state, _link = read_cache(path, schema)
    return frame, state


def read_cache(path: Path, schema: pl.Schema) -> tuple[pl.DataFrame | None, str, dict[str, Any] | None]:
    """(statistics frame or None, "fresh"/"missing"/"corrupt", the manifest link of a version-5 cache or None)."""
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed below, after Polars has read from it
    except FileNotFoundError:
        return None, "missing", None
    except OSError as e:  # a directory, no permission, an I/O error: only a cache, rebuilt from the footers
        log.warning("stats cache %s cannot be read (%s); treating it as corrupt and reading block footers", path, e)
        return None, "corrupt", None
    try:
        with f:
            frame, link = _read_open_cache(f, schema)
    except (ValueError, KeyError, TypeError, AttributeError, OSError, pl.exceptions.PolarsError) as e:
        if isinstance(e, OSError):
            log.warning("stats cache %s cannot be read (%s); treating it as corrupt and reading block footers", path, e)
        return None, "corrupt", None
    if frame is None or frame.schema != stats_schema(schema) or frame.get_column("block").null_count():
        return None, "corrupt", None  # another layout (a build that forgot to bump CACHE_VERSION?) or a bad writer
    if link is not None and link.get("older_schema"):  # written before a schema change: its rows still hold
        return frame, "stale", None
    return frame, "fresh", link


class _NotACache(ValueError):
    """The file is not a cache this version reads (damaged, another format or version, another schema)."""


def _read_open_cache(f: BinaryIO, schema: pl.Schema) -> tuple[pl.DataFrame | None, dict[str, Any] | None]:
    """The frame and link of the cache open as ``f`` (raises, or gives a None frame, when it is not one).

    Version 5 is read without copying it into Python: the header and the digest come from a read-only
    map of the file, then Polars decodes the stream from the same open file (replaced only by a
    rename, never changed in place, so both see the same bytes). Version 4 is read whole.
    """
    size = os.fstat(f.fileno()).st_size
    if size < len(CACHE_TRAILER_MAGIC) + 8:
        raise _NotACache("too short")
    with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        if mm[-len(CACHE_TRAILER_MAGIC) :] != CACHE_TRAILER_MAGIC:
            if mm[:1] != b"{":
                raise _NotACache("no header")
            return _read_cache_v4(mm[:], schema), None
        body_end, trailer = _sections(mm, size)
        header = json.loads(mm[body_end:trailer])
        if header.get("format") != CACHE_FORMAT or header.get("version") != CACHE_VERSION:
            raise _NotACache("another format or version")
        older = header.get("schema") != _schema_key(schema)  # another schema: maybe an older one of this table
        link = header.get("manifest")
        if link is not None and not isinstance(link, dict):
            raise _NotACache("bad link")
        with memoryview(mm) as view, view[:body_end] as body:
            digest = _cache_digest(body, link)
        if digest != header.get("xxh3"):
            raise _NotACache("checksum mismatch")
    f.seek(0)
    frame = pl.read_ipc_stream(f)  # stops at the end-of-stream marker: the header after it is not read
    if older:
        widened = evolve.widen_stats(frame, stats_schema(schema))
        if widened is None:
            raise _NotACache("written for another table schema")
        return widened, {"older_schema": True}
    return frame, link


def _read_cache_v4(data: bytes, schema: pl.Schema) -> pl.DataFrame | None:
    """A version-4 cache: one JSON header line, then the stream; the digest is of the stream alone."""
    end = data.find(b"\n") + 1 or len(data)
    head, body = data[:end], memoryview(data)[end:]
    header = json.loads(head)
    if header.get("format") != CACHE_FORMAT or header.get("version") != 4:
        return None
    if header.get("schema") != _schema_key_v4(schema) or blk.hash_bytes(body) != header.get("xxh3"):
        return None
    return pl.read_ipc_stream(io.BytesIO(body))


CACHE_TRAILER_MAGIC = b"bt_stats"  # the last 8 bytes of a version-5 cache
_EOS = b"\xff\xff\xff\xff\x00\x00\x00\x00"  # an Arrow IPC stream's end-of-stream marker


def encode_cache(header: dict[str, Any], body: bytes) -> bytes:
    """A version-5 cache file: the Arrow IPC stream, the header as JSON, its length (8 bytes, little-endian)
    and ``CACHE_TRAILER_MAGIC``. The stream comes first so that Polars reads it straight from the file."""
    head = json.dumps(header).encode()
    return body + head + len(head).to_bytes(8, "little") + CACHE_TRAILER_MAGIC


def split_cache(raw: bytes) -> tuple[dict[str, Any], bytes]:
    """(header, stream) of a version-5 cache file's bytes (``ValueError`` if it is not one)."""
    if len(raw) < len(CACHE_TRAILER_MAGIC) + 8 or raw[-len(CACHE_TRAILER_MAGIC) :] != CACHE_TRAILER_MAGIC:
        raise _NotACache("not a version-5 stats cache")
    body_end, trailer = _sections(raw, len(raw))
    header: dict[str, Any] = json.loads(raw[body_end:trailer])
    return header, raw[:body_end]


def _sections(buf: bytes | mmap.mmap, size: int) -> tuple[int, int]:
    """(end of the stream, start of the trailer) of a version-5 cache of ``size`` bytes that ends in
    ``CACHE_TRAILER_MAGIC``: the trailer holds the header's length, the header follows the stream."""
    trailer = size - len(CACHE_TRAILER_MAGIC) - 8
    body_end = trailer - int.from_bytes(buf[trailer : trailer + 8], "little")
    if not len(_EOS) <= body_end <= trailer or buf[body_end - len(_EOS) : body_end] != _EOS:
        raise _NotACache("no stream before the header")
    return body_end, trailer


def _cache_digest(body: bytes | memoryview, link: dict[str, Any] | None) -> str:
    """xxh3 of the canonical JSON of the link (version 5; ``null`` when there is none), then of the body."""
    h = xxhash.xxh3_64(json.dumps(link, sort_keys=True, separators=(",", ":")).encode())
    h.update(body)
    return h.hexdigest()


def _schema_key(schema: pl.Schema) -> str:
    """What a cache was written for: the table schema (its dtypes' full text: units, time zones, categories).

    The frame's own schema is checked against ``stats_schema`` as well, so this only tells tables apart.
    """
    return blk.hash_bytes(repr(list(schema.items())).encode())


def _schema_key_v4(schema: pl.Schema) -> str:
    """The schema key of version-4 caches (an Arrow IPC stream of the schema: slower to make)."""
    return blk.hash_bytes(schema_to_b64(schema).encode())


def merge_stats(previous: pl.DataFrame | None, infos: Sequence[blk.BlockInfo], schema: pl.Schema) -> pl.DataFrame:
    """The statistics frame of ``infos``: rows of ``previous`` where it has them, footer stats otherwise."""
    names = [b.filename for b in infos]
    if previous is not None and previous.schema != stats_schema(schema):  # written before a schema change
        previous = evolve.widen_stats(previous, stats_schema(schema))
    if previous is not None and previous.height == len(names) and previous["block"].to_list() == names:
        return previous
    known = set(previous["block"].to_list()) if previous is not None else set()
    fresh = stats_frame([b for b in infos if b.filename not in known], schema)
    if previous is None or not known:
        return fresh
    order = pl.DataFrame({"block": names, "_i": range(len(names))}, schema={"block": pl.String, "_i": pl.Int64})
    both = pl.concat([previous, fresh]).unique("block", keep="last", maintain_order=True)
    return order.join(both, on="block", how="left").sort("_i").drop("_i").select(fresh.columns)


def load_blocks(
    table_dir: Path,
    schema: pl.Schema,
    *,
    progress: Callable[[Iterable[Any], int], Iterable[Any]] | None = None,
) -> CacheLoad:
    """Every block of a table, statistics from the cache where it has them.

    A block's name carries the xxh3 digest of its content, so a cache row
    for that name describes exactly that file; names without a row are read
    from their footers, rows without a file are dropped.
    """
    try:
        listing = frozenset(os.listdir(table_dir / layout.BLOCKS_DIR))
    except FileNotFoundError:
        listing = frozenset()
    blocks_dir = table_dir / layout.BLOCKS_DIR
    prefix = os.path.join(os.fspath(blocks_dir), "")
    cached, state = _read_cache(table_dir / layout.STATS_CACHE, schema)
    known: dict[str, blk.BlockInfo] = {}  # cache rows, in the cache's (LSN) order
    in_order = True
    if cached is not None:
        prev = (-1, 0)
        for n, first, last, part, nparts, rows, size in zip(*_identity(cached), strict=True):
            in_order = in_order and (first, part) > prev
            prev = (first, part)
            # the name is the same string, so it parses to these fields (its digest is in it)
            name = layout.BlockName(first, last, part, nparts, n[layout.BLOCK_DIGEST])
            known[n] = blk.BlockInfo.of_cached(name, prefix, n, rows, size)
    hits = [b for n, b in known.items() if n in listing]
    new = [n for n in listing if n not in known and layout.parse_block_name(n) is not None]
    if state == "fresh" and (new or cached is None or len(hits) != cached.height):
        state = "stale"  # blocks the cache does not know, or rows for blocks that are gone
    footer: list[blk.BlockInfo] = []
    if new:
        it: Iterable[str] = progress(new, len(new)) if progress is not None else new
        footer = [blk.read_block_info(blocks_dir / n) for n in it]
    if cached is not None and state == "fresh" and in_order:
        infos, stats = hits, cached  # the usual case: the cache describes exactly the folder
    else:
        infos = sorted(hits + footer, key=lambda b: (b.name.first_lsn, b.name.part))
        stats = merge_stats(cached, infos, schema)
    changed = state != "fresh" or cached is None
    if changed:
        log.debug("stats cache of %s was %s: %d blocks read from footers", table_dir, state, len(footer))
    return CacheLoad(infos, stats, len(hits), len(footer), state, changed, listing)


def _identity(cached: pl.DataFrame) -> list[list[Any]]:
    """The identity columns of a statistics frame, as lists: block, first/last LSN, part, nparts, rows, bytes."""
    return [
        cached.get_column(c).to_list() for c in ("block", "first_lsn", "last_lsn", "part", "nparts", "rows", "bytes")
    ]


def _cached_infos(cached: pl.DataFrame, prefix: str) -> list[blk.BlockInfo]:
    """A ``BlockInfo`` per row of the statistics frame, built from its columns in bulk."""
    return _infos(prefix, *_identity(cached))


def _infos(
    prefix: str,
    files: list[str],
    first: list[int],
    last: list[int],
    part: list[int],
    nparts: list[int],
    rows: list[int],
    size: list[int],
) -> list[blk.BlockInfo]:
    """The name fields come from the frame's columns, written from the parsed name of the same
    string (its digest is in it), so nothing is parsed again."""
    digests = [n[layout.BLOCK_DIGEST] for n in files]
    names = list(map(layout.BlockName._make, zip(first, last, part, nparts, digests, strict=True)))
    return blk.BlockInfo.of_cached_many(names, prefix, files, rows, size)


@dataclass
class Linked:
    """A reader's open from a cache linked to the newest manifest version (``load_linked``)."""

    loaded: CacheLoad
    state: mf.State  # without ``blocks``: they are the frame's rows
    files: list[str]  # the frame's block names, in order
    lsns: tuple[list[int], list[int], list[int], list[int]]  # first LSN, last LSN, part, nparts per block
    rows: list[int]


def load_linked(table_dir: Path, cache: tuple[pl.DataFrame | None, str, dict[str, Any] | None]) -> Linked | None:
    """A reader's open from the statistics cache alone, when it is linked to the newest manifest version.

    ``cache`` is what ``read_cache`` gave. The blocks, statistics and state if the cache is intact
    and its link checks out (``manifest.load_linked``): the state's blocks are the frame's rows,
    which the writer of the link wrote from exactly that state. Otherwise None: decode the manifest.
    """
    cached, _state, link = cache
    if cached is None or link is None:
        return None
    state = mf.load_linked(table_dir, link)
    if state is None:
        return None
    files, first, last, part, nparts, rows, size = _identity(cached)
    if mf.names_digest(files) != link.get("blocks"):
        return None  # rows that are not the linked state's blocks (a writer's bug): never trusted
    prefix = os.path.join(os.fspath(table_dir / layout.BLOCKS_DIR), "")
    infos = blk.CachedBlocks(prefix, files, first, last, part, nparts, rows, size)
    return Linked(
        CacheLoad(infos, cached, len(infos), 0, "fresh", False), state, files, (first, last, part, nparts), rows
    )


def load_named(
    table_dir: Path,
    names: Sequence[str],
    schema: pl.Schema,
    *,
    progress: Callable[[Iterable[Any], int], Iterable[Any]] | None = None,
    cache: tuple[pl.DataFrame | None, str] | None = None,
) -> CacheLoad:
    """The blocks the manifest names, in its order: statistics from the cache, else from the footers.

    The caller has checked that every named file exists. A cache row describes
    exactly the file of that name (the name carries its content digest).
    ``cache``: what ``read_cache`` gave, when the caller has read it already.
    """
    blocks_dir = table_dir / layout.BLOCKS_DIR
    prefix = os.path.join(os.fspath(blocks_dir), "")
    cached, state = cache if cache is not None else _read_cache(table_dir / layout.STATS_CACHE, schema)
    if cached is not None and cached.height == len(names) and cached.get_column("block").to_list() == list(names):
        return CacheLoad(_cached_infos(cached, prefix), cached, len(names), 0, "fresh", False)
    if state == "fresh":
        state = "stale"
    known = set(cached.get_column("block").to_list()) if cached is not None else set()
    need = [n for n in names if n not in known]
    it: Iterable[str] = progress(need, len(need)) if progress is not None and need else need
    from_footer = {n: blk.read_block_info(blocks_dir / n) for n in it}
    infos = []
    for n in names:
        info = from_footer.get(n)
        if info is None:
            parsed = layout.parse_block_name(n)
            assert parsed is not None
            info = blk.BlockInfo(parsed, prefix + n, 0, 0, None)  # rows/bytes from the cache row below
        infos.append(info)
    stats = merge_stats(cached, infos, schema)
    if known:  # rows and bytes of the blocks described by the cache
        rows = dict(zip(stats.get_column("block").to_list(), stats.get_column("rows").to_list(), strict=True))
        size = dict(zip(stats.get_column("block").to_list(), stats.get_column("bytes").to_list(), strict=True))
        infos = [
            b if b.columns is not None else blk.BlockInfo(b.name, b.file, rows[b.filename], size[b.filename], None)
            for b in infos
        ]
    log.debug("stats cache of %s was %s: %d blocks read from footers", table_dir, state, len(from_footer))
    return CacheLoad(infos, stats, len(names) - len(from_footer), len(from_footer), state, True)


def write_cache(table_dir: Path, stats: pl.DataFrame, schema: pl.Schema, link: dict[str, Any] | None = None) -> None:
    """Write the statistics frame as the cache (not durable: it is only a cache).

    ``link`` (``manifest.link`` of the state whose blocks are exactly the frame's rows, in order)
    lets a reader take the state from the cache instead of decoding the manifest.

    Never raises for the file system: a cache that cannot be written (its path
    is a directory, the disk is full, no permission) is logged and left to be
    rebuilt from the block footers on the next open.
    """
    buf = io.BytesIO()
    stats.write_ipc_stream(buf, compression="uncompressed")
    body = buf.getvalue()
    data = encode_cache(
        {
            "format": CACHE_FORMAT,
            "version": CACHE_VERSION,
            "schema": _schema_key(schema),
            "xxh3": _cache_digest(body, link),
            "manifest": link,
        },
        body,
    )
    path = table_dir / layout.STATS_CACHE
    try:
        layout.atomic_write(path, data, durable=False)
    except OSError as e:
        log.warning("stats cache %s cannot be written (%s); the next open reads block footers instead", path, e)
