"""``table.json`` (a table's identity) and ``stats.json`` (the statistics cache).

``table.json`` — written once at creation (atomically, as part of the table
folder) and rewritten atomically only when options change::

    {"format": "bt_frames.table", "format_version": 1, "name": "orders",
     "columns": [{"name": "ts", "dtype": "Datetime(time_unit='us', time_zone='UTC')"}, ...],
     "schema_ipc": "<base64 Arrow IPC stream of an empty frame: the exact schema>",
     "time_column": "ts" | null, "max_block_rows": 1000000, "row_group_rows": 131072,
     "pandas": null | {...pandas round-trip metadata...}}

``columns`` is for people; ``schema_ipc`` is authoritative (it keeps every
dtype parameter: units, time zones, enum categories, decimal scale).
``format_version`` greater than ``TABLE_FORMAT_VERSION`` refuses to open.

``stats.json`` — a **transient** cache of every block's statistics so that
opening a store is one small read instead of one footer read per block, as
SQLite treats its wal-index: it is rebuilt from the Parquet footers if it is
missing, stale or corrupt, and it is never the only copy of anything. Layout:
two lines, ``{"format": "bt_frames.stats_cache", "version": 1,
"xxh3": "<digest of line 2>"}`` then a JSON list of
``{"name": <block file name>, "bytes": int, "stats": <bt_frames.stats doc>}``.
On open, entries are matched to the block files on disk by name and size;
files without a (valid) entry are read from their footer, entries without a
file are dropped, and a writer rewrites the cache if anything differed.
"""

from __future__ import annotations

import base64
import io
import json
import logging
from collections.abc import Callable, Iterable
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
CACHE_VERSION = 1


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
        if not isinstance(version, int) or version > TABLE_FORMAT_VERSION:
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


@dataclass
class CacheLoad:
    blocks: list[blk.BlockInfo]
    from_cache: int  # blocks whose stats came from the cache
    from_footer: int  # blocks whose footer was read
    cache_state: str  # "fresh", "missing", "stale", "corrupt"
    changed: bool  # the cache on disk differs from what was loaded


def _read_cache(path: Path) -> tuple[dict[str, tuple[int, dict[str, Any]]] | None, str]:
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
        entries = json.loads(body)
        return {e["name"]: (int(e["bytes"]), e["stats"]) for e in entries}, "fresh"
    except (ValueError, KeyError, TypeError, AttributeError):
        return None, "corrupt"


def load_blocks(
    table_dir: Path,
    *,
    progress: Callable[[Iterable[Any], int], Iterable[Any]] | None = None,
) -> CacheLoad:
    """Every block of a table, stats from the cache where it is valid."""
    files = blk.list_block_files(table_dir / layout.BLOCKS_DIR)
    cache, state = _read_cache(table_dir / layout.STATS_CACHE)
    out: list[blk.BlockInfo] = []
    todo: list[tuple[int, layout.BlockName, Path]] = []
    n_cached = 0
    for i, (name, path) in enumerate(files):
        entry = cache.get(path.name) if cache is not None else None
        if entry is not None:
            size, doc = entry
            try:
                cols = {c: blk.ColumnStats.from_json(d) for c, d in doc["columns"].items()}
                out.append(blk.BlockInfo(name, path, int(doc["rows"]), size, cols))
                n_cached += 1
                continue
            except (KeyError, ValueError, TypeError):
                state = "corrupt"
        todo.append((i, name, path))
        out.append(None)  # type: ignore[arg-type]  # filled below
    if todo:
        if state == "fresh":
            state = "stale"
        it: Iterable[Any] = todo
        if progress is not None:
            it = progress(todo, len(todo))
        for i, _name, path in it:
            out[i] = blk.read_block_info(path)
    # sizes: a cached entry whose file changed size is stale (the digest check catches the rest)
    for i, info in enumerate(out):
        try:
            actual = info.path.stat().st_size
        except FileNotFoundError:
            continue
        if actual != info.bytes:
            out[i] = blk.read_block_info(info.path)
            state = "stale"
    changed = bool(todo) or cache is None or len(cache) != len(files) or state != "fresh"
    if changed:
        log.debug("stats cache of %s was %s: %d blocks read from footers", table_dir, state, len(todo))
    return CacheLoad(out, n_cached, len(todo), state, changed)


def write_cache(table_dir: Path, infos: list[blk.BlockInfo]) -> None:
    body = json.dumps(
        [{"name": i.path.name, "bytes": i.bytes, "stats": i.stats_json()} for i in infos],
        allow_nan=True,
        separators=(",", ":"),
    ).encode()
    head = json.dumps({"format": CACHE_FORMAT, "version": CACHE_VERSION, "xxh3": blk.hash_bytes(body)}).encode()
    layout.atomic_write(table_dir / layout.STATS_CACHE, head + b"\n" + body, durable=False)
