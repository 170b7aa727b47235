"""storage/blocks.py: block integrity (xxh3 in the name), key-value metadata, statistics vs the data.

A block is checked against the digest in its name before its first read in a process. The per-process memo of
verified files (``blocks._verified``) would hide damage done after a read in *this* process, so damage tests
work on a fresh copy of the store (new paths, never verified) or clear the memo.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from polars.testing import assert_frame_equal

import bt_frames as bt
from bt_frames.storage import blocks as blk
from bt_frames.storage import layout
from tests.conftest import ORDERS_SCHEMA, make_orders
from tests.helpers import faults


@pytest.fixture
def fresh_verify_memo() -> Iterator[None]:
    """Forget which blocks this process verified (as a new process would), and again afterwards."""
    with blk._verified_lock:
        saved = dict(blk._verified)
        blk._verified.clear()
    yield
    with blk._verified_lock:
        blk._verified.clear()
        blk._verified.update(saved)


def build_store(root: Path, n_blocks: int = 3, rows: int = 40) -> pl.DataFrame:
    """A store with table 'orders' holding ``n_blocks`` flushed blocks of ``rows`` rows and 5 hot rows."""
    frames = []
    with bt.open(root, durability="none") as store:
        t = store.create_table("orders", ORDERS_SCHEMA, time_column="ts", max_block_rows=10_000)
        for i in range(n_blocks):
            frames.append(make_orders(rows, start=i * rows))
            t.append(frames[-1])
            t.flush()
        frames.append(make_orders(5, start=n_blocks * rows))
        t.append(frames[-1])
    return pl.concat(frames)


def block_paths(root: Path) -> list[Path]:
    return [p for _n, p in blk.list_block_files(root / "orders" / layout.BLOCKS_DIR)]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pl.DataFrame]:
    root = tmp_path_factory.mktemp("pristine") / "db"
    return root, build_store(root)


# -- flipped bytes -----------------------------------------------------------------------------------------------------

WHERE = {
    "header magic": lambda size: 0,
    "first page": lambda size: 4,
    "middle": lambda size: size // 2,
    "footer metadata": lambda size: size - 40,
    "footer length": lambda size: size - 6,
    "trailing magic": lambda size: size - 1,
}


@pytest.mark.parametrize("where", list(WHERE))
def test_flipped_byte_anywhere_fails_the_first_read_naming_the_file(
    copy: tuple[Path, pl.DataFrame], where: str
) -> None:
    root, data = copy
    victim = block_paths(root)[1]
    offset = WHERE[where](victim.stat().st_size)
    faults.flip_byte(victim, offset)
    with bt.open(root, read_only=True) as store:
        t = store.table("orders")  # stats come from the cache: opening reads no block
        assert t.recovery.stats_cache == "fresh"
        with pytest.raises(bt.CorruptionError) as exc:
            t.scan().collect()
        # a scan that prunes the damaged block away never touches it
        assert_frame_equal(t.scan().filter(pl.col("ts") < data["ts"][40]).collect(), data.head(40))
    err = exc.value
    assert isinstance(err, bt.BtError)
    assert err.path == victim
    assert err.offset is None
    msg = str(err)
    assert str(victim) in msg
    assert f"does not match {layout.parse_block_name(victim.name).digest} recorded in the file name" in msg  # type: ignore[union-attr]
    assert f"python -m bt_frames verify {root}" in msg  # the hint names the store


def test_flipped_byte_without_a_stats_cache_fails_at_open(copy: tuple[Path, pl.DataFrame]) -> None:
    root, _data = copy
    victim = block_paths(root)[0]
    (root / "orders" / layout.STATS_CACHE).unlink()
    faults.flip_byte(victim, victim.stat().st_size // 3)
    for kwargs in ({"read_only": True}, {}):
        with bt.open(root, **kwargs) as store, pytest.raises(bt.CorruptionError) as exc:
            store.table("orders")  # footers are read, so every block is verified first
        assert exc.value.path == victim
    assert not (root / "orders" / layout.STATS_CACHE).exists()  # the failed open wrote nothing


def test_every_read_path_verifies(copy: tuple[Path, pl.DataFrame]) -> None:
    root, _data = copy
    faults.flip_byte(block_paths(root)[2], 100)
    with bt.open(root, read_only=True) as store:
        t = store.table("orders")
        for read in (
            lambda: t.scan().collect(),
            lambda: t.scan().select("price").collect(),
            lambda: t.to_pandas(),
            lambda: list(t.iter_batches(batch_size=7)),
            lambda: list(t.iter_rows()),
        ):
            with pytest.raises(bt.CorruptionError):
                read()


def test_memo_is_per_path_and_cleared_memo_reverifies(
    pristine: tuple[Path, pl.DataFrame], tmp_path: Path, fresh_verify_memo: None
) -> None:
    root, data = pristine
    with bt.open(root, read_only=True) as store:
        assert_frame_equal(store.table("orders").scan().collect(), data)
    assert {str(p) for p in block_paths(root)} <= set(blk._verified)
    blk._verified.clear()
    victim = block_paths(root)[0]
    dest = tmp_path / victim.name
    shutil.copy2(victim, dest)
    faults.flip_byte(dest, 10)
    with pytest.raises(bt.CorruptionError):
        blk.verify_block(dest)
    assert str(dest) not in blk._verified  # a failed check is not remembered
    with pytest.raises(bt.CorruptionError):
        blk.verify_block(dest)
    blk.verify_block(victim)  # the original is fine
    assert str(victim) in blk._verified


def test_force_rehashes_even_a_remembered_block(copy: tuple[Path, pl.DataFrame]) -> None:
    root, _data = copy
    victim = block_paths(root)[0]
    blk.verify_block(victim)
    key = blk._verified[str(victim)]
    faults.flip_byte(victim, 50)
    blk._verified[str(victim)] = blk._file_key(victim)  # pretend the memo was not invalidated
    blk.verify_block(victim)  # the memo answers
    with pytest.raises(bt.CorruptionError):
        blk.verify_block(victim, force=True)
    assert key[0] == blk._file_key(victim)[0]  # same inode: damaged in place


def test_verify_reports_the_bad_block_and_does_not_raise(copy: tuple[Path, pl.DataFrame]) -> None:
    root, _data = copy
    paths = block_paths(root)
    faults.flip_byte(paths[1], paths[1].stat().st_size // 2)
    with bt.open(root, read_only=True) as store:
        report = store.verify()
    assert not report.ok
    assert not bool(report)
    assert report.blocks == 3
    assert report.block_bytes == sum(p.stat().st_size for p in paths)
    assert [(p.path, p.offset) for p in report.problems] == [(paths[1], None)]
    assert "does not match" in report.problems[0].message
    assert f"CORRUPT {paths[1]}" in repr(report)


def test_verify_of_a_clean_store_is_ok(copy: tuple[Path, pl.DataFrame]) -> None:
    root, _data = copy
    with bt.open(root) as store:
        report = store.verify()
    assert report.ok
    assert (report.tables, report.blocks, report.wal_records) == (1, 3, 1)
    assert report.problems == []
    assert report.torn_tails == []


# -- names and footers -------------------------------------------------------------------------------------------------


def test_block_renamed_to_another_digest_is_corruption(copy: tuple[Path, pl.DataFrame]) -> None:
    root, _data = copy
    victim = block_paths(root)[1]
    name = layout.parse_block_name(victim.name)
    assert name is not None
    wrong = layout.BlockName(name.first_lsn, name.last_lsn, name.part, name.nparts, "0123456789abcdef")
    renamed = victim.with_name(str(wrong))
    victim.rename(renamed)
    with pytest.raises(bt.CorruptionError) as exc:
        blk.verify_block(renamed)
    assert exc.value.path == renamed
    assert "does not match 0123456789abcdef recorded in the file name" in str(exc.value)
    for kwargs in ({"read_only": True}, {}):  # the manifest names the original file: it is missing
        with bt.open(root, **kwargs) as store, pytest.raises(bt.CorruptionError) as exc:
            store.table("orders")
        assert exc.value.path == victim
        assert "block file named by manifest version" in str(exc.value)
        assert "LSN 2 (40 rows) are lost unless it is restored" in str(exc.value)
    assert renamed.exists()  # a file the manifest does not name, whose rows are not elsewhere: never deleted
    with bt.open(root, read_only=True) as store:
        report = store.verify()
        assert [p.path for p in report.problems] == [victim]
        assert [p.path for p in report.leftovers] == [renamed]


def test_verify_block_refuses_foreign_and_missing_files(tmp_path: Path) -> None:
    foreign = tmp_path / "data.parquet"
    pl.DataFrame({"a": [1]}).write_parquet(foreign)
    with pytest.raises(bt.CorruptionError, match="not a bt_frames block file name"):
        blk.verify_block(foreign)
    missing = tmp_path / str(layout.BlockName(1, 1, 1, 1, "0" * 16))
    with pytest.raises(bt.CorruptionError, match="block file is missing") as exc:
        blk.verify_block(missing)
    assert exc.value.path == missing


def _hand_made_block(blocks_dir: Path, first: int, last: int, metadata: dict[str, str]) -> Path:
    """A Parquet file with the given key-value metadata, named correctly (right digest) for its bytes."""
    import io

    buf = io.BytesIO()
    make_orders(3).write_parquet(buf, metadata=metadata)
    data = buf.getvalue()
    path = blocks_dir / str(layout.BlockName(first, last, 1, 1, blk.hash_bytes(data)))
    path.write_bytes(data)
    return path


def _stats_doc(df: pl.DataFrame) -> str:
    stats = blk.compute_stats(df)
    return json.dumps({"version": 1, "rows": df.height, "columns": {c: s.to_json() for c, s in stats.items()}})


def test_newer_block_format_version_is_refused(copy: tuple[Path, pl.DataFrame]) -> None:
    root, _data = copy
    blocks_dir = root / "orders" / layout.BLOCKS_DIR
    meta = {
        blk.KEY_VERSION: str(blk.BLOCK_FORMAT_VERSION + 1),
        blk.KEY_LSN: "1000-1000",
        blk.KEY_PART: "1/1",
        blk.KEY_STATS: _stats_doc(make_orders(3)),
    }
    path = _hand_made_block(blocks_dir, 1000, 1000, meta)
    with pytest.raises(bt.UnsupportedFormatError) as exc:
        blk.read_block_info(path)
    msg = str(exc.value)
    assert isinstance(exc.value, bt.BtError)
    assert str(path) in msg
    assert f"format {blk.BLOCK_FORMAT_VERSION + 1}; this build reads formats <= {blk.BLOCK_FORMAT_VERSION}" in msg
    assert "Upgrade bt_frames" in msg
    # A file no manifest version names, whose LSNs are neither in a block nor in the WAL nor the next one:
    # not read, not deleted (the store cannot prove it redundant), listed in the report.
    with bt.open(root) as store:
        t = store.table("orders")
        assert t.recovery.kept_unknown == [path.name]
        assert_frame_equal(t.scan().collect(), _data)
    assert path.exists()


@pytest.mark.parametrize(
    ("meta", "why"),
    [
        ({}, "Parquet footer lacks bt_frames metadata"),
        ({blk.KEY_VERSION: "1"}, "Parquet footer lacks bt_frames metadata"),
        (
            {blk.KEY_VERSION: "1", blk.KEY_LSN: "7-9", blk.KEY_STATS: "{}"},
            "LSN range '7-9' in the footer disagrees with the name",
        ),
        (
            {blk.KEY_VERSION: "1", blk.KEY_LSN: "1000-1000", blk.KEY_STATS: "not json"},
            "bad statistics in the Parquet footer",
        ),
        (
            {blk.KEY_VERSION: "1", blk.KEY_LSN: "1000-1000", blk.KEY_STATS: '{"rows": 3}'},
            "bad statistics in the Parquet footer",
        ),
    ],
)
def test_bad_footer_metadata_is_corruption(tmp_path: Path, meta: dict[str, str], why: str) -> None:
    path = _hand_made_block(tmp_path, 1000, 1000, meta)
    with pytest.raises(bt.CorruptionError) as exc:
        blk.read_block_info(path)
    assert exc.value.path == path
    assert why in str(exc.value)


def test_truncated_block_with_a_matching_name_is_an_unreadable_footer(tmp_path: Path) -> None:
    import io

    buf = io.BytesIO()
    make_orders(3).write_parquet(buf)
    data = buf.getvalue()[:-10]  # the name's digest is of these bytes, so only the footer check can catch it
    path = tmp_path / str(layout.BlockName(1, 1, 1, 1, blk.hash_bytes(data)))
    path.write_bytes(data)
    with pytest.raises(bt.CorruptionError, match="unreadable Parquet footer") as exc:
        blk.read_block_info(path)
    assert exc.value.path == path


# -- key-value metadata ------------------------------------------------------------------------------------------------


def test_block_metadata_holds_version_lsn_range_part_and_stats(pristine: tuple[Path, pl.DataFrame]) -> None:
    root, _data = pristine
    paths = block_paths(root)
    assert [(n.first_lsn, n.last_lsn) for n, _p in blk.list_block_files(root / "orders" / layout.BLOCKS_DIR)] == [
        (1, 1),
        (2, 2),
        (3, 3),
    ]
    for p in paths:
        name = layout.parse_block_name(p.name)
        assert name is not None
        meta = pl.read_parquet_metadata(p)
        assert meta[blk.KEY_VERSION] == str(blk.BLOCK_FORMAT_VERSION)
        assert meta[blk.KEY_LSN] == f"{name.first_lsn}-{name.last_lsn}"
        assert meta[blk.KEY_PART] == "1/1"
        doc = json.loads(meta[blk.KEY_STATS])
        assert doc["version"] == blk.STATS_VERSION
        assert doc["rows"] == pl.read_parquet(p).height == 40
        assert set(doc["columns"]) == set(ORDERS_SCHEMA)
        assert blk.hash_file(p) == name.digest
        assert p.stat().st_size == blk.read_block_info(p).bytes


def test_multi_part_append_records_each_part(tmp_path: Path) -> None:
    root = tmp_path / "db"
    with bt.open(root, durability="none") as store:
        t = store.create_table("orders", ORDERS_SCHEMA, time_column="ts", max_block_rows=10)
        t.append(make_orders(25))
    parts = [(n, pl.read_parquet_metadata(p)) for n, p in blk.list_block_files(root / "orders" / layout.BLOCKS_DIR)]
    assert [(n.first_lsn, n.last_lsn, n.part, n.nparts) for n, _m in parts] == [(1, 1, i, 3) for i in (1, 2, 3)]
    assert [m[blk.KEY_PART] for _n, m in parts] == ["1/3", "2/3", "3/3"]
    assert [json.loads(m[blk.KEY_STATS])["rows"] for _n, m in parts] == [10, 10, 5]


def test_write_block_leaves_no_tmp_and_publish_false_leaves_only_the_tmp(tmp_path: Path) -> None:
    df = make_orders(12)
    info = blk.write_block(tmp_path, df, first_lsn=4, last_lsn=6, row_group_rows=5)
    assert sorted(p.name for p in tmp_path.iterdir()) == [info.path.name]
    assert info.rows == 12
    assert info.bytes == info.path.stat().st_size
    assert_frame_equal(pl.read_parquet(info.path), df)
    assert pl.read_parquet_schema(info.path) == df.schema
    pending = blk.write_block(tmp_path, df, first_lsn=7, last_lsn=7, row_group_rows=5, publish=False)
    assert not pending.path.exists()
    assert blk.pending_path(pending).exists()
    blk.publish_block(blk.pending_path(pending), pending.path)
    blk.verify_block(pending.path, force=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([info.path.name, pending.path.name])


# -- statistics match the data -----------------------------------------------------------------------------------------


def _expected(s: pl.Series) -> dict[str, Any]:
    """What the statistics of one column must say, computed from the column read back from the file."""
    nulls = s.null_count()
    dtype = s.dtype
    prunable = (dtype.is_numeric() and not isinstance(dtype, pl.Decimal)) or isinstance(
        dtype, (pl.String, pl.Boolean, pl.Date, pl.Datetime, pl.Duration, pl.Time, pl.Categorical, pl.Enum)
    )
    if not prunable or nulls == len(s):
        return {"nulls": nulls, "min": None, "max": None}
    phys = s.cast(pl.String) if isinstance(dtype, (pl.Categorical, pl.Enum)) else s.to_physical()
    if dtype.is_float():
        finite = phys.drop_nulls().drop_nans()
        has_nan = bool(phys.is_nan().any())
        return {
            "nulls": nulls,
            "min": finite.min() if len(finite) else math.nan,
            "max": math.nan if has_nan else finite.max(),
        }
    return {"nulls": nulls, "min": phys.min(), "max": phys.max()}


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return bool(a == b)


STATS_FRAMES = {
    "orders": lambda: make_orders(50),
    "floats with nan and null": lambda: pl.DataFrame(
        {
            "f": [1.5, None, float("nan"), -2.0, float("inf")],
            "g": pl.Series([0.5, 0.25, None, 1.0, 2.0], dtype=pl.Float32),
        }
    ),
    "all nan": lambda: pl.DataFrame({"f": [float("nan"), None, float("nan")]}),
    "all null": lambda: pl.DataFrame(
        {"i": pl.Series([None, None], dtype=pl.Int32), "s": pl.Series([None, None], dtype=pl.String)}
    ),
    "ints and bools": lambda: pl.DataFrame(
        {
            "i8": pl.Series([-128, 127, None], dtype=pl.Int8),
            "u64": pl.Series([0, 2**64 - 1, 5], dtype=pl.UInt64),
            "b": [True, None, False],
        }
    ),
    "strings and categories": lambda: pl.DataFrame(
        {
            "s": ["b", "a", None, "ä", ""],
            "c": pl.Series(["x", "y", "x", None, "z"], dtype=pl.Categorical),
            "e": pl.Series(["lo", "hi", "lo", "hi", None], dtype=pl.Enum(["lo", "hi"])),
        }
    ),
    "temporal": lambda: pl.DataFrame(
        {
            "d": pl.Series([19000, 18000, None], dtype=pl.Int32).cast(pl.Date),
            "t": pl.Series([3, 1, 2], dtype=pl.Int64).cast(pl.Datetime("ns", "Europe/Paris")),
            "dur": pl.Series([5, None, -5], dtype=pl.Int64).cast(pl.Duration("ms")),
            "tod": pl.Series([10**9, 0, None], dtype=pl.Int64).cast(pl.Time),
        }
    ),
    "not prunable": lambda: pl.DataFrame(
        {
            "dec": pl.Series(["1.50", "2.25", None]).cast(pl.Decimal(10, 2)),
            "bin": [b"\x00", b"\xff", None],
            "lst": [[1, 2], None, []],
            "st": [{"a": 1}, {"a": None}, None],
        }
    ),
}


@pytest.mark.parametrize("frame", list(STATS_FRAMES))
def test_stats_match_the_data_read_back_from_the_block(tmp_path: Path, frame: str) -> None:
    df = STATS_FRAMES[frame]()
    info = blk.write_block(tmp_path, df, first_lsn=1, last_lsn=1, row_group_rows=2)
    back = pl.read_parquet(info.path)
    assert_frame_equal(back, df)
    footer = blk.read_block_info(info.path)
    assert footer.rows == info.rows == df.height
    assert info.columns is not None
    assert footer.columns is not None
    for name in df.columns:
        want = _expected(back.get_column(name))
        for got in (info.columns[name], footer.columns[name]):  # as written, and as read from the footer
            assert got.nulls == want["nulls"], name
            assert _same(got.min, want["min"]), (name, got.min, want["min"])
            assert _same(got.max, want["max"]), (name, got.max, want["max"])
        d = footer.columns[name].distinct
        if d is not None:
            col = back.get_column(name)
            col = col.cast(pl.String) if isinstance(col.dtype, (pl.Categorical, pl.Enum)) else col.to_physical()
            assert list(d) == sorted(col.drop_nulls().unique().to_list()), name


def test_float_nan_makes_max_nan_and_min_stays_finite() -> None:
    stats = blk.compute_stats(pl.DataFrame({"f": [3.0, float("nan"), -1.0, None]}))["f"]
    assert stats.min == -1.0
    assert math.isnan(stats.max)
    assert stats.nulls == 1
    assert stats.distinct is None  # never for floats


def test_distinct_set_is_kept_only_up_to_the_limit() -> None:
    few = blk.compute_stats(pl.DataFrame({"i": list(range(blk.DISTINCT_LIMIT)) * 2}))["i"]
    many = blk.compute_stats(pl.DataFrame({"i": list(range(blk.DISTINCT_LIMIT + 1))}))["i"]
    assert few.distinct == tuple(range(blk.DISTINCT_LIMIT))
    assert many.distinct is None
    assert (many.min, many.max) == (0, blk.DISTINCT_LIMIT)


def test_table_blocks_frame_shows_the_footer_stats(pristine: tuple[Path, pl.DataFrame]) -> None:
    root, data = pristine
    with bt.open(root, read_only=True) as store:
        frame = store.table("orders").blocks
    assert frame.height == 3
    assert frame["rows"].to_list() == [40, 40, 40]
    assert frame["path"].to_list() == [str(p) for p in block_paths(root)]
    for i, p in enumerate(block_paths(root)):
        back = pl.read_parquet(p)
        assert_frame_equal(back, data.slice(i * 40, 40))
        assert frame["min.qty"][i] == back["qty"].min()
        assert frame["max.price"][i] == back["price"].max()
        assert frame["min.ts"][i] == back["ts"].min()
        assert frame["null_count.symbol"][i] == 0
