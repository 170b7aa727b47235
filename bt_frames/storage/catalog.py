"""``table.json`` (a table's identity) and ``stats.arrow`` (the statistics cache).

``table.json`` — written once at creation (atomically, as part of the table
folder) and rewritten atomically only when options change::

    {"format": "bt_frames.table", "format_version": 1, "name": "orders",
     "columns": [{"name": "ts", "dtype": "Datetime(time_unit='us', time_zone='UTC')"}, ...],
     "schema_ipc": "<base64 Arrow IPC stream of an empty frame: the exact schema>",
     "time_column": "ts" | null, "max_block_rows": 1000000, "row_group_rows": 16384,
     "pandas": null | {...pandas round-trip metadata...}}

``columns`` is for people; ``schema_ipc`` is authoritative (it keeps every
dtype parameter: units, time zones, enum categories, decimal scale).
``format_version`` greater than ``TABLE_FORMAT_VERSION`` refuses to open.

``stats.arrow`` — a **transient** cache of every block's statistics so that
opening a store is one small read instead of one footer read per block, as
SQLite treats its wal-index: it is rebuilt from the Parquet footers if it is
missing, stale or corrupt, and it is never the only copy of anything (each
block's footer holds its own statistics). Layout: one JSON line
``{"format": "bt_frames.stats_cache", "version": 2, "xxh3": "<digest of the rest>"}``,
then an Arrow IPC file holding the *statistics frame* (``stats_frame``): one
row per block with ``block`` (file name), ``first_lsn``, ``last_lsn``,
``part``, ``rows``, ``bytes`` and per column ``min.<c>``, ``max.<c>``,
``null_count.<c>``, ``distinct.<c>``. On open, rows are matched to the block
files on disk by name (a name carries the file's content digest); files
without a row are read from their footer, rows without a file are dropped,
and a writer rewrites the cache if anything differed. Loading it is one read
and one Arrow decode, whatever the number of blocks.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from bt_frames.errors import CorruptionError, UnsupportedFormatError
from bt_frames.storage import blocks as blk
from bt_frames.storage import layout

log = logging.getLogger("bt_frames")

TABLE_FORMAT = "bt_frames.table"
TABLE_FORMAT_VERSION = 1
CACHE_FORMAT = "bt_frames.stats_cache"
CACHE_VERSION = 2  # 1: JSON entries per block; 2: the statistics frame as Arrow IPC


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
            **self.extra,
        }
        return json.dumps(doc, indent=2) + "\n"

    @classmethod
    def load(cls, path: Path) -> TableMeta:
        try:
            doc = json.loads(path.read_text())
        except FileNotFoundError:
            raise
        except (OSError, ValueError) as e:
            raise CorruptionError.at(path, None, f"unreadable table metadata ({e})") from e
        if not isinstance(doc, dict) or doc.get("format") != TABLE_FORMAT:
            raise CorruptionError.at(path, None, "not a bt_frames table.json")
        version = doc.get("format_version")
        if not isinstance(version, int) or isinstance(version, bool):
            raise CorruptionError.at(path, None, f"format_version is {version!r}, not an integer")
        if version > TABLE_FORMAT_VERSION:
            raise UnsupportedFormatError.newer(path, version, TABLE_FORMAT_VERSION)
        try:
            schema = schema_from_b64(doc["schema_ipc"])
            known = {
                "format", "format_version", "name", "columns", "schema_ipc", "time_column",
                "max_block_rows", "row_group_rows", "pandas",
            }  # fmt: skip
            return cls(
                name=doc["name"],
                schema=schema,
                time_column=doc.get("time_column"),
                max_block_rows=int(doc["max_block_rows"]),
                row_group_rows=int(doc["row_group_rows"]),
                pandas=doc.get("pandas"),
                extra={k: v for k, v in doc.items() if k not in known},
            )
        except (KeyError, ValueError, TypeError, pl.exceptions.PolarsError) as e:
            raise CorruptionError.at(path, None, f"bad table metadata ({e})") from e


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
    """One row per block: identity, ``rows``, ``bytes`` and the per-column statistics."""
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
    empty = blk.ColumnStats(0)
    for name, dtype in schema.items():
        stats = [(b.columns or {}).get(name, empty) for b in infos]
        st = _stat_dtype(dtype)
        if st is not None:
            cols[f"min.{name}"] = _typed([s.min for s in stats], dtype).alias(f"min.{name}")
            cols[f"max.{name}"] = _typed([s.max for s in stats], dtype).alias(f"max.{name}")
        cols[f"null_count.{name}"] = pl.Series([s.nulls for s in stats], dtype=pl.Int64)
        if st is not None or isinstance(dtype, (pl.Categorical, pl.Enum)):
            dist = [list(s.distinct) if s.distinct is not None else None for s in stats]
            cols[f"distinct.{name}"] = _typed_lists(dist, dtype)
    return pl.DataFrame([s.alias(n) for n, s in cols.items()])


@dataclass
class CacheLoad:
    blocks: list[blk.BlockInfo]
    stats: pl.DataFrame  # the statistics frame, one row per block of ``blocks``, same order
    from_cache: int  # blocks whose stats came from the cache
    from_footer: int  # blocks whose footer was read
    cache_state: str  # "fresh", "missing", "stale", "corrupt"
    changed: bool  # the cache on disk differs from what was loaded
    listing: frozenset[str] = frozenset()  # the blocks folder as it was listed


def _read_cache(path: Path, expected: pl.Schema) -> tuple[pl.DataFrame | None, str]:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None, "missing"
    try:
        head, _, body = raw.partition(b"\n")
        header = json.loads(head)
        if header.get("format") != CACHE_FORMAT or header.get("version") != CACHE_VERSION:
            return None, "corrupt"
        if blk.hash_bytes(body) != header.get("xxh3"):
            return None, "corrupt"
        frame = pl.read_ipc(io.BytesIO(body))
    except (ValueError, KeyError, TypeError, AttributeError, OSError, pl.exceptions.PolarsError):
        return None, "corrupt"
    if frame.schema != expected or frame["block"].null_count():
        return None, "corrupt"  # written for another schema or by a buggy writer: rebuild
    return frame, "fresh"


def merge_stats(previous: pl.DataFrame | None, infos: Sequence[blk.BlockInfo], schema: pl.Schema) -> pl.DataFrame:
    """The statistics frame of ``infos``: rows of ``previous`` where it has them, footer stats otherwise."""
    names = [b.filename for b in infos]
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
    cached, state = _read_cache(table_dir / layout.STATS_CACHE, stats_frame([], schema).schema)
    known: dict[str, tuple[layout.BlockName, int, int]] = {}
    if cached is not None:
        cols = cached.select("block", "first_lsn", "last_lsn", "part", "nparts", "rows", "bytes").get_columns()
        for n, first, last, part, nparts, rows, size in zip(*(c.to_list() for c in cols), strict=True):
            # the name is the same string, so it parses to these fields (its digest is in it)
            known[n] = (layout.BlockName(first, last, part, nparts, n[-24:-8]), rows, size)
    out: list[blk.BlockInfo | None] = []
    todo: list[tuple[int, Path]] = []
    for n in listing:
        hit = known.get(n)
        if hit is not None:
            out.append(blk.BlockInfo(hit[0], prefix + n, hit[1], hit[2], None))
        elif layout.parse_block_name(n) is not None:
            todo.append((len(out), blocks_dir / n))
            out.append(None)
    if state == "fresh" and len(known) > len(out) - len(todo):  # rows for blocks that are gone
        state = "stale"
    if todo:
        if state == "fresh":
            state = "stale"
        it: Iterable[tuple[int, Path]] = progress(todo, len(todo)) if progress is not None else todo
        for i, path in it:
            out[i] = blk.read_block_info(path)
    infos = sorted((b for b in out if b is not None), key=lambda b: (b.name.first_lsn, b.name.part))
    hits = len(infos) - len(todo)
    if cached is not None and cached.height != hits and state == "fresh":
        state = "stale"  # it lists blocks that are gone
    stats = merge_stats(cached, infos, schema)
    changed = state != "fresh" or cached is None
    if changed:
        log.debug("stats cache of %s was %s: %d blocks read from footers", table_dir, state, len(todo))
    return CacheLoad(infos, stats, hits, len(todo), state, changed, listing)


def write_cache(table_dir: Path, stats: pl.DataFrame) -> None:
    """Write the statistics frame as the cache (not durable: it is only a cache)."""
    buf = io.BytesIO()
    stats.write_ipc(buf, compression="uncompressed")
    body = buf.getvalue()
    head = json.dumps({"format": CACHE_FORMAT, "version": CACHE_VERSION, "xxh3": blk.hash_bytes(body)}).encode()
    layout.atomic_write(table_dir / layout.STATS_CACHE, head + b"\n" + body, durable=False)
