"""storage/catalog.py: table.json (identity, versioned) and stats.json (a transient cache of block statistics).

The cache is only a cache (SQLite's wal-index): missing, stale or corrupt, it is rebuilt from the Parquet footers
and ``table.blocks`` is exactly what the footers say. A read-only open never writes anything, whatever it finds.
"""

from __future__ import annotations

import datetime as dt
import decimal
import io
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import cast

import polars as pl
import pytest
from polars.testing import assert_frame_equal

import bt_frames as bt
from bt_frames.prune import blocks_frame
from bt_frames.storage import blocks as blk
from bt_frames.storage import catalog, layout
from tests.conftest import ORDERS_SCHEMA, make_orders
from tests.helpers import faults
from tests.helpers.procs import listing

SCHEMA = pl.Schema(cast("dict[str, pl.DataType]", ORDERS_SCHEMA))


def build(root: Path, n_blocks: int = 3, rows: int = 30) -> pl.DataFrame:
    frames = []
    with bt.open(root, durability="none") as store:
        t = store.create_table("orders", ORDERS_SCHEMA, time_column="ts", max_block_rows=10_000)
        for i in range(n_blocks):
            frames.append(make_orders(rows, start=i * rows))
            t.append(frames[-1])
            t.flush()
    return pl.concat(frames)


def cache_path(root: Path) -> Path:
    return root / "orders" / layout.STATS_CACHE


def footer_blocks(root: Path) -> pl.DataFrame:
    """``table.blocks`` as it must be: built from the Parquet footers, never from the cache."""
    infos = [blk.read_block_info(p) for _n, p in blk.list_block_files(root / "orders" / layout.BLOCKS_DIR)]
    return blocks_frame(infos, None, SCHEMA)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pl.DataFrame]:
    root = tmp_path_factory.mktemp("catalog") / "db"
    return root, build(root)


def open_and_check(root: Path, *, state: str, from_footer: int, data: pl.DataFrame) -> bt.Recovery:
    """Open as a writer, check the recovery and that blocks/rows equal the footers; return the recovery."""
    with bt.open(root) as store:
        t = store.table("orders")
        rec = t.recovery
        assert (rec.stats_cache, rec.blocks_from_footer) == (state, from_footer)
        assert_frame_equal(t.blocks, footer_blocks(root))
        assert_frame_equal(t.scan().collect(), data)
    with bt.open(root) as store:  # the writer rewrote the cache: the next open reads no footer
        rec2 = store.table("orders").recovery
        assert (rec2.stats_cache, rec2.blocks_from_footer, rec2.blocks_from_cache) == ("fresh", 0, rec.blocks)
    return rec


# -- the cache ---------------------------------------------------------------------------------------------------------


def test_fresh_cache_reads_no_footer(copy: tuple[Path, pl.DataFrame]) -> None:
    root, data = copy
    with bt.open(root, read_only=True) as store:
        t = store.table("orders")
        assert (t.recovery.stats_cache, t.recovery.blocks_from_cache, t.recovery.blocks_from_footer) == ("fresh", 3, 0)
        assert_frame_equal(t.blocks, footer_blocks(root))
        assert_frame_equal(t.scan().collect(), data)


def test_missing_cache_is_rebuilt_from_the_footers(copy: tuple[Path, pl.DataFrame]) -> None:
    root, data = copy
    cache_path(root).unlink()
    open_and_check(root, state="missing", from_footer=3, data=data)
    assert cache_path(root).exists()


def test_cache_missing_a_block_added_behind_its_back_is_stale(tmp_path: Path) -> None:
    root = tmp_path / "db"
    build(root, n_blocks=2)
    old_cache = cache_path(root).read_bytes()
    with bt.open(root) as store:
        t = store.table("orders")
        t.append(make_orders(30, start=60))
        t.flush()
    cache_path(root).write_bytes(old_cache)  # as if the cache write after the flush had been lost
    expected = pl.concat([make_orders(30, start=i * 30) for i in range(3)])
    rec = open_and_check(root, state="stale", from_footer=1, data=expected)
    assert rec.blocks_from_cache == 2


def cache_blocks(root: Path) -> list[str]:
    """The block names the cache on disk has statistics for."""
    _head, body = catalog.split_cache(cache_path(root).read_bytes())
    return pl.read_ipc_stream(io.BytesIO(body))["block"].to_list()


def test_a_named_block_removed_behind_the_stores_back_is_corruption_not_fewer_rows(
    copy: tuple[Path, pl.DataFrame],
) -> None:
    """Regression: the cache was called stale and the table silently lost the block's rows."""
    root, _data = copy
    last = blk.list_block_files(root / "orders" / layout.BLOCKS_DIR)[-1][1]
    last.unlink()
    before = sorted(p.name for p in (root / "orders").rglob("*"))
    for kwargs in ({"read_only": True}, {}):
        with bt.open(root, **kwargs) as store, pytest.raises(bt.CorruptionError) as exc:
            store.table("orders")
        assert exc.value.path == last
        assert "LSN 3 (30 rows) are lost unless it is restored" in str(exc.value)
    assert sorted(p.name for p in (root / "orders").rglob("*")) == before  # nothing deleted or rewritten


def test_cache_from_before_a_compaction_is_stale(copy: tuple[Path, pl.DataFrame]) -> None:
    root, data = copy
    old_cache = cache_path(root).read_bytes()
    with bt.open(root, retired_grace=0) as store:  # the inputs are deleted at once
        store.table("orders").set_options(keep_versions=dt.timedelta(0))
        assert store.table("orders").compact(target_rows=100).blocks_after == 1
    cache_path(root).write_bytes(old_cache)  # three rows without files, one file without a row
    open_and_check(root, state="stale", from_footer=1, data=data)
    assert len(cache_blocks(root)) == 1


def _with_body(raw: bytes, body: bytes) -> bytes:
    """``raw``'s header with a correct digest of a new body: only the body's content is wrong."""
    header, _body = catalog.split_cache(raw)
    header["xxh3"] = catalog._cache_digest(body, header["manifest"])
    return catalog.encode_cache(header, body)


def _frame_body(frame: pl.DataFrame) -> bytes:
    buf = io.BytesIO()
    frame.write_ipc_stream(buf)
    return buf.getvalue()


def _cached_frame(raw: bytes) -> pl.DataFrame:
    return pl.read_ipc_stream(io.BytesIO(catalog.split_cache(raw)[1]))


CORRUPTIONS: dict[str, Callable[[bytes], bytes]] = {
    "empty": lambda raw: b"",
    "garbage": lambda raw: b"\x00\xff garbage \x13" * 50,
    "truncated": lambda raw: raw[: len(raw) // 2],
    "header only": lambda raw: raw[len(catalog.split_cache(raw)[1]) :],
    "body byte flipped (bad hash)": lambda raw: raw[:400] + bytes([raw[400] ^ 0x10]) + raw[401:],
    "header byte flipped": lambda raw: raw[:-40] + bytes([raw[-40] ^ 0x10]) + raw[-39:],
    "header length off by one": lambda raw: (
        raw[:-16] + (int.from_bytes(raw[-16:-8], "little") + 1).to_bytes(8, "little") + raw[-8:]
    ),
    "other format": lambda raw: raw.replace(catalog.CACHE_FORMAT.encode(), b"someone.else", 1),
    "newer version": lambda raw: raw.replace(
        f'"version": {catalog.CACHE_VERSION}'.encode(), f'"version": {catalog.CACHE_VERSION + 1}'.encode(), 1
    ),
    "header not an object": lambda raw: (
        catalog.split_cache(raw)[1] + b"[1, 2]" + (6).to_bytes(8, "little") + catalog.CACHE_TRAILER_MAGIC
    ),
    "body not Arrow": lambda raw: _with_body(raw, b"hashed correctly, but not an Arrow IPC file"),
    "frame of another schema": lambda raw: _with_body(raw, _frame_body(_cached_frame(raw).drop("max.price"))),
    "frame with a null block name": lambda raw: _with_body(
        raw, _frame_body(_cached_frame(raw).with_columns(pl.lit(None, dtype=pl.String).alias("block")))
    ),
}


@pytest.mark.parametrize("damage", list(CORRUPTIONS))
def test_corrupt_cache_is_rebuilt_from_the_footers(copy: tuple[Path, pl.DataFrame], damage: str) -> None:
    root, data = copy
    raw = cache_path(root).read_bytes()
    bad = CORRUPTIONS[damage](raw)
    assert bad != raw
    cache_path(root).write_bytes(bad)
    with bt.open(root, read_only=True) as store:  # a reader copes too, and writes nothing
        t = store.table("orders")
        assert t.recovery.stats_cache == "corrupt"
        assert_frame_equal(t.blocks, footer_blocks(root))
    assert cache_path(root).read_bytes() == bad
    open_and_check(root, state="corrupt", from_footer=3, data=data)


# -- read-only opens write nothing -------------------------------------------------------------------------------------


READ_ONLY_SITUATIONS = ["clean", "cache missing", "cache corrupt", "cache stale", "torn WAL tail", "tmp files"]


@pytest.mark.parametrize("situation", READ_ONLY_SITUATIONS)
def test_read_only_open_never_writes_a_file(tmp_path: Path, situation: str) -> None:
    root = tmp_path / "db"
    build(root, n_blocks=2)
    live = tmp_path / "live"
    root.rename(live)
    with bt.open(live, durability="none") as store:
        t = store.table("orders")
        for i in range(3):  # hot rows in the WAL
            t.append(make_orders(4, start=60 + 4 * i))
        # the files of a writer killed now (a clean close would record the last LSN, and a cut-off
        # record would then be a truncated WAL, not a torn tail)
        shutil.copytree(live, root, ignore=shutil.ignore_patterns(layout.LOCK_NAME))
    table_dir = root / "orders"
    if situation == "cache missing":
        cache_path(root).unlink()
    elif situation == "cache corrupt":
        faults.truncate(cache_path(root), 10)
    elif situation == "cache stale":
        first = blk.list_block_files(table_dir / layout.BLOCKS_DIR)[0][1]
        catalog.write_cache(table_dir, catalog.stats_frame([blk.read_block_info(first)], SCHEMA), SCHEMA)
    elif situation == "torn WAL tail":
        (seg,) = (table_dir / layout.WAL_DIR).iterdir()
        faults.truncate(seg, 5)
    elif situation == "tmp files":
        for d in (table_dir, table_dir / layout.BLOCKS_DIR, table_dir / layout.WAL_DIR):
            layout.tmp_path(d / "x").write_bytes(b"left by a crash")
        (root / ".create-orders2-1234abcd").mkdir()
    before = listing(root)
    with bt.open(root, read_only=True) as store:
        assert store.tables == ["orders"]
        t = store.table("orders")
        rows = t.scan().collect().height
        assert rows == (68 if situation == "torn WAL tail" else 72)
        t.blocks  # noqa: B018 - reading the property must not write either
        t.wal_records()
        store.verify()
        store.refresh()
        assert t.rows == rows
    assert listing(root) == before  # same files, sizes and mtimes


# -- table.json --------------------------------------------------------------------------------------------------------


def _set_table_json(root: Path, edit: Callable[[dict[str, object]], None]) -> Path:
    path = root / "orders" / layout.TABLE_JSON
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc))
    return path


def test_newer_table_format_version_is_refused_naming_file_and_versions(copy: tuple[Path, pl.DataFrame]) -> None:
    root, _data = copy
    newer = catalog.TABLE_FORMAT_VERSION + 1
    path = _set_table_json(root, lambda d: d.__setitem__("format_version", newer))
    for kwargs in ({}, {"read_only": True}):
        with bt.open(root, **kwargs) as store, pytest.raises(bt.UnsupportedFormatError) as exc:
            store.table("orders")
        assert isinstance(exc.value, bt.BtError)
        assert str(exc.value) == (
            f"{path} was written by bt_frames format {newer}; this build reads formats <= "
            f"{catalog.TABLE_FORMAT_VERSION}. Upgrade bt_frames (pip install -U bt-frames)."
        )
    with bt.open(root, read_only=True) as store:
        report = store.verify()
    assert [p.path for p in report.problems] == [path]
    assert path.read_text() == json.dumps(json.loads(path.read_text()))  # untouched by the failed opens


@pytest.mark.parametrize(
    ("edit", "why"),
    [
        (lambda d: d.pop("format_version"), "format_version"),
        (lambda d: d.__setitem__("format_version", "1"), "format_version"),
        (lambda d: d.__setitem__("format", "something.else"), "not a bt_frames table.json"),
        (lambda d: d.__setitem__("schema_ipc", "not base64!"), "bad table metadata"),
        (lambda d: d.pop("max_block_rows"), "bad table metadata"),
    ],
)
def test_damaged_table_json_is_corruption(
    copy: tuple[Path, pl.DataFrame], edit: Callable[[dict[str, object]], None], why: str
) -> None:
    root, _data = copy
    path = _set_table_json(root, edit)
    with bt.open(root) as store, pytest.raises(bt.CorruptionError) as exc:
        store.table("orders")
    assert exc.value.path == path
    assert why in str(exc.value)


@pytest.mark.parametrize("raw", [b"", b"{not json", b"[]", b"\xff\xfe"])
def test_unreadable_table_json_is_corruption(copy: tuple[Path, pl.DataFrame], raw: bytes) -> None:
    root, _data = copy
    path = root / "orders" / layout.TABLE_JSON
    path.write_bytes(raw)
    with pytest.raises(bt.CorruptionError) as exc:
        catalog.TableMeta.load(path)
    assert exc.value.path == path
    assert str(path) in str(exc.value)


EVERY_DTYPE: dict[str, pl.DataType] = {
    "i8": pl.Int8(),
    "i16": pl.Int16(),
    "i32": pl.Int32(),
    "i64": pl.Int64(),
    "i128": pl.Int128(),
    "u8": pl.UInt8(),
    "u16": pl.UInt16(),
    "u32": pl.UInt32(),
    "u64": pl.UInt64(),
    "f32": pl.Float32(),
    "f64": pl.Float64(),
    "bool": pl.Boolean(),
    "str": pl.String(),
    "bin": pl.Binary(),
    "date": pl.Date(),
    "time": pl.Time(),
    "dt_ns_naive": pl.Datetime("ns"),
    "dt_us_utc": pl.Datetime("us", "UTC"),
    "dt_ms_ny": pl.Datetime("ms", "America/New_York"),
    "dur_ns": pl.Duration("ns"),
    "dur_ms": pl.Duration("ms"),
    "dec": pl.Decimal(18, 4),
    "dec_wide": pl.Decimal(38, 0),
    "cat": pl.Categorical(),
    "enum": pl.Enum(["lo", "mid", "hi", "ü"]),
    "list_i64": pl.List(pl.Int64),
    "list_list_str": pl.List(pl.List(pl.String)),
    "array": pl.Array(pl.Float64, 3),
    "struct": pl.Struct({"a": pl.Int32, "b": pl.Datetime("us", "UTC"), "c": pl.List(pl.Enum(["x", "y"]))}),
}


def test_table_json_round_trips_every_dtype(tmp_path: Path) -> None:
    schema = pl.Schema(EVERY_DTYPE)
    meta = catalog.TableMeta("all_types", schema, "dt_us_utc", 500, 100, pandas=None, extra={"future_key": [1, 2]})
    path = tmp_path / layout.TABLE_JSON
    path.write_text(meta.to_json())
    back = catalog.TableMeta.load(path)
    assert back.schema == schema
    assert list(back.schema.items()) == list(schema.items())  # order and every parameter
    assert (back.name, back.time_column, back.max_block_rows, back.row_group_rows) == (
        "all_types",
        "dt_us_utc",
        500,
        100,
    )
    assert back.extra == {"future_key": [1, 2]}  # unknown keys survive a rewrite
    doc = json.loads(path.read_text())
    assert doc["format_version"] == catalog.TABLE_FORMAT_VERSION
    assert [c["name"] for c in doc["columns"]] == list(EVERY_DTYPE)
    assert [c["dtype"] for c in doc["columns"]] == [str(d) for d in EVERY_DTYPE.values()]
    assert back.to_json() == meta.to_json()


def test_store_reopens_a_table_of_every_dtype_with_the_exact_schema(tmp_path: Path) -> None:
    root = tmp_path / "db"
    schema = pl.Schema(EVERY_DTYPE)
    with bt.open(root) as store:
        t = store.create_table("all_types", schema, time_column="dt_us_utc")
        assert t.schema == schema
        row = {
            "i8": -1, "i16": 2, "i32": 3, "i64": 4, "i128": 5, "u8": 6, "u16": 7, "u32": 8, "u64": 9,
            "f32": 1.5, "f64": 2.5, "bool": True, "str": "s", "bin": b"b", "date": dt.date(2024, 1, 2),
            "time": dt.time(1, 2, 3), "dt_ns_naive": dt.datetime(2024, 1, 1),
            "dt_us_utc": dt.datetime(2024, 1, 1, tzinfo=dt.UTC), "dt_ms_ny": dt.datetime(2024, 1, 1, tzinfo=dt.UTC),
            "dur_ns": dt.timedelta(seconds=1), "dur_ms": dt.timedelta(milliseconds=5),
            "dec": decimal.Decimal("1.2500"), "dec_wide": decimal.Decimal(10) ** 30, "cat": "c", "enum": "mid",
            "list_i64": [1, 2], "list_list_str": [["a"], []], "array": [1.0, 2.0, 3.0],
            "struct": {"a": 1, "b": dt.datetime(2024, 1, 1, tzinfo=dt.UTC), "c": ["y"]},
        }  # fmt: skip
        df = pl.DataFrame([row], schema=schema)
        t.append(df)
    with bt.open(root) as store:
        t = store.table("all_types")
        assert t.schema == schema
        assert t.time_column == "dt_us_utc"
        assert_frame_equal(t.scan().collect(), df)
        assert store.create_table("all_types", schema, time_column="dt_us_utc") is t  # same schema: opened


def test_stats_schema_is_the_schema_stats_frame_builds() -> None:
    """The cache is checked against stats_schema() (cheap) instead of an empty stats_frame() (slow)."""
    schema = pl.Schema(EVERY_DTYPE)
    assert catalog.stats_schema(schema) == catalog.stats_frame([], schema).schema
