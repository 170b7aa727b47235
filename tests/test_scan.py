"""scan(): pushdown through Polars' IO-source mechanism, early stops, streaming, snapshots."""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

import bt_frames as bt
from bt_frames import _scan
from bt_frames.errors import SchemaMismatchError
from tests.conftest import ORDERS_SCHEMA, T0, make_orders

ROWS = 10 * 1_000 + 300  # ten blocks of 1,000 rows, 300 hot rows


@pytest.fixture
def filled(orders: bt.Table) -> tuple[bt.Table, pl.DataFrame]:
    data = make_orders(ROWS)
    for start in range(0, ROWS, 500):
        orders.append(data.slice(start, 500))
    assert (len(orders.snapshot().blocks), orders.hot_rows) == (10, 300)
    return orders, data


def test_filter_added_after_scan_is_pushed_down(filled: tuple[bt.Table, pl.DataFrame]) -> None:
    t, data = filled
    window = pl.col("ts") < T0 + dt.timedelta(seconds=1_500)  # rows 0..1499: blocks 1 and 2
    got = t.scan().filter(window).select("ts", "price").collect()
    assert_frame_equal(got, data.filter(window).select("ts", "price"))
    assert t.last_plan is not None
    assert (t.last_plan.blocks_total, t.last_plan.blocks_scanned) == (10, 2)
    # the same plan as where=
    assert t.prune(window).survivors == t.last_plan.survivors


def test_projection_reaches_the_reader(filled: tuple[bt.Table, pl.DataFrame]) -> None:
    t, data = filled
    got = t.scan().select("price", "ts").collect()
    assert_frame_equal(got, data.select("price", "ts"))
    assert t.last_read is not None
    assert sorted(t.last_read.columns or []) == ["price", "ts"]


def test_head_stops_reading_early(filled: tuple[bt.Table, pl.DataFrame]) -> None:
    t, data = filled
    got = t.scan().head(7).collect()
    assert_frame_equal(got, data.head(7))
    assert t.last_read is not None
    assert t.last_read.n_rows == 7
    assert t.last_read.block_rows == 7  # not 10,000
    assert t.last_read.hot_rows == 0


def test_head_after_filter_reads_until_enough_rows(filled: tuple[bt.Table, pl.DataFrame]) -> None:
    t, data = filled
    pred = pl.col("symbol") == "ETH"
    got = t.scan().filter(pred).head(3).collect()
    assert_frame_equal(got, data.filter(pred).head(3))


def test_head_before_filter_limits_first(filled: tuple[bt.Table, pl.DataFrame]) -> None:
    """Polars hands the source both n_rows and the predicate only for head-then-filter: the limit counts
    source rows, and no block may be pruned by a predicate that applies after it."""
    t, data = filled
    eth = pl.col("symbol") == "ETH"
    got = t.scan().head(50).filter(eth).collect()
    assert_frame_equal(got, data.head(50).filter(eth))
    assert 0 < got.height < 50
    assert t.last_read is not None
    assert (t.last_read.n_rows, t.last_read.predicate) == (50, str(eth))
    # the limit ends inside block 2; the predicate matches only rows after it: nothing, not block 2's rows
    late = pl.col("ts") >= T0 + dt.timedelta(seconds=1_500)
    for engine in ("in-memory", "streaming"):
        got = t.scan().head(1_200).filter(late).collect(engine=engine)  # type: ignore[arg-type]
        assert got.height == 0, engine
        assert t.last_plan is not None
        assert t.last_plan.blocks_pruned == 0, "pruned by a predicate that applies after the limit"
        got = t.scan().head(1_200).filter(~late).select("qty").collect(engine=engine)  # type: ignore[arg-type]
        assert_frame_equal(got, data.head(1_200).select("qty"))
    # through the hot rows: the limit reaches past every block
    assert_frame_equal(t.scan().head(10_100).filter(eth).collect(), data.head(10_100).filter(eth))


def test_a_read_of_no_columns_keeps_the_row_count(filled: tuple[bt.Table, pl.DataFrame]) -> None:
    """with_row_index().select("index") pushes an empty projection: the source must still say how many rows."""
    t, data = filled
    got = t.scan().with_row_index().select("index").collect()
    assert t.last_read is not None
    assert t.last_read.columns in ([], ["ts"])  # Polars asks for no column, or the first one (after the hidden one)
    assert_frame_equal(got, data.with_row_index().select("index"))
    eth = pl.col("symbol") == "ETH"
    got = t.scan().filter(eth).with_row_index().select(pl.col("index").max()).collect(engine="streaming")
    assert got.item() == data.filter(eth).height - 1
    batches = list(t.iter_batches(columns=[], batch_size=4_000))
    assert [b.width for b in batches] == [0] * len(batches)
    assert sum(b.height for b in batches) == ROWS


WHOLE_TABLE_PREDICATES = [  # not row by row: a row's answer depends on every row of the table
    pl.col("qty") == pl.col("qty").max(),
    pl.col("price").rank("ordinal") <= 3,
    pl.col("qty").cum_sum() < pl.col("qty").sum() // 3,
    pl.int_range(pl.len()) % 1_001 == 1_000,  # evaluated per block of 1,000 rows: never true
    pl.col("price") > pl.col("price").mean(),
    pl.col("ts") == pl.col("ts").max(),  # the newest row: a hot one
    pl.col("qty").map_batches(lambda s: s.rank("ordinal") <= 2, pl.Boolean),  # Polars cannot serialise it
]


@pytest.mark.parametrize("where", WHOLE_TABLE_PREDICATES, ids=range(len(WHOLE_TABLE_PREDICATES)))
def test_a_predicate_over_the_whole_table_is_applied_to_the_whole_table(
    filled: tuple[bt.Table, pl.DataFrame], where: pl.Expr
) -> None:
    """Every way to read with a filter gives the rows Polars' filter gives over the table as one frame
    (read(), to_pandas(), iter_batches() once evaluated the filter per group of blocks and per hot rows)."""
    t, data = filled
    want = data.filter(where)
    assert 0 < want.height < data.height
    assert_frame_equal(t.read(where), want)
    assert_frame_equal(t.read(where, columns=["price"]), want.select("price"))
    assert_frame_equal(pl.concat(list(t.iter_batches(where, batch_size=7))), want)
    assert_frame_equal(t.scan(where).collect(), want)
    assert_frame_equal(t.scan().filter(where).collect(), want)
    assert t.scan().filter(where).select(pl.len()).collect().item() == want.height
    assert_frame_equal(t.scan().head(5_000).filter(where).collect(), data.head(5_000).filter(where))
    assert len(t.to_pandas(where)) == want.height


def test_head_reaching_into_hot_rows(filled: tuple[bt.Table, pl.DataFrame]) -> None:
    t, data = filled
    got = t.scan().filter(pl.col("ts") >= T0 + dt.timedelta(seconds=9_990)).head(20).collect()
    assert_frame_equal(got, data.slice(9_990, 20))


def test_streaming_engine_gives_the_same_rows(filled: tuple[bt.Table, pl.DataFrame]) -> None:
    t, data = filled
    pred = (pl.col("qty") > 500) & (pl.col("symbol").is_in(["BTC", "SOL"]))
    got = t.scan().filter(pred).select("ts", "qty").collect(engine="streaming")
    assert_frame_equal(got, data.filter(pred).select("ts", "qty"))
    agg = t.scan().group_by("symbol").agg(pl.col("qty").sum()).sort("symbol").collect(engine="streaming")
    assert_frame_equal(agg, data.group_by("symbol").agg(pl.col("qty").sum()).sort("symbol"))


def test_iter_batches_and_rows_stream_in_order(filled: tuple[bt.Table, pl.DataFrame]) -> None:
    t, data = filled
    batches = list(t.iter_batches(batch_size=333))
    assert all(0 < b.height <= 333 for b in batches)
    assert_frame_equal(pl.concat(batches), data)
    where = [("symbol", "==", "XRP")]
    rows = list(t.iter_rows(where, columns=["ts", "qty"]))
    assert rows == data.filter(pl.col("symbol") == "XRP").select("ts", "qty").to_dicts()
    tuples = list(t.iter_rows(columns=["qty"], named=False))
    assert tuples == [(q,) for q in data["qty"]]


def test_empty_table_and_hot_only_table(orders: bt.Table) -> None:
    assert_frame_equal(orders.scan().collect(), pl.DataFrame(schema=ORDERS_SCHEMA))
    assert orders.prune(pl.col("qty") > 1).blocks_total == 0
    df = make_orders(10)
    orders.append(df)
    assert_frame_equal(orders.scan().filter(pl.col("qty") > 500).collect(), df.filter(pl.col("qty") > 500))
    assert orders.last_plan is not None
    assert (orders.last_plan.blocks_total, orders.last_plan.hot_rows) == (0, 10)


def test_filter_matching_nothing_returns_an_empty_typed_frame(filled: tuple[bt.Table, pl.DataFrame]) -> None:
    t, _ = filled
    got = t.scan().filter(pl.col("qty") > 10**9).collect()
    assert got.height == 0
    assert got.schema == pl.Schema(ORDERS_SCHEMA)
    assert t.last_plan is not None
    assert t.last_plan.blocks_scanned == 0


def test_a_collect_sees_the_state_when_it_started(filled: tuple[bt.Table, pl.DataFrame]) -> None:
    t, data = filled
    it = t.iter_batches(batch_size=100)
    first = next(it)
    extra = make_orders(2_000, start=ROWS)
    t.append(extra)  # freezes a block and adds hot rows while the read is half-way
    rest = list(it)
    assert_frame_equal(pl.concat([first, *rest]), data)
    assert_frame_equal(t.scan().collect(), pl.concat([data, extra]))


def test_concurrent_appends_are_seen_whole_or_not_at_all(orders: bt.Table) -> None:
    batches = [make_orders(137, start=i * 137) for i in range(60)]
    done = threading.Event()

    def writer() -> None:
        for b in batches:
            orders.append(b)
        done.set()

    thread = threading.Thread(target=writer)
    thread.start()
    seen = 0
    while not done.is_set() or seen < len(batches):
        got = orders.scan().collect()
        assert got.height % 137 == 0, "a partial append is visible"
        n = got.height // 137
        assert n >= seen, "a later collect saw fewer appends"
        if n:
            assert_frame_equal(got, pl.concat(batches[:n]))
        seen = n
    thread.join()


@pytest.fixture
def filled_no_grace(store_path: Path) -> Iterator[tuple[bt.Table, pl.DataFrame]]:
    """As ``filled``, in a store that deletes retired blocks as soon as no scan here reads them."""
    with bt.open(store_path, retired_grace=0) as store:
        t = store.create_table(
            "orders", ORDERS_SCHEMA, time_column="ts", max_block_rows=1_000, keep_versions=dt.timedelta(0)
        )
        data = make_orders(ROWS)
        for start in range(0, ROWS, 500):
            t.append(data.slice(start, 500))
        yield t, data


def test_compaction_does_not_delete_blocks_under_a_running_read(
    filled_no_grace: tuple[bt.Table, pl.DataFrame],
) -> None:
    t, data = filled_no_grace
    it = t.iter_batches(batch_size=100)
    first = next(it)
    old = [b.path for b in t.snapshot().blocks]
    result = t.compact(target_rows=20_000, min_rows=5_000)
    assert result.blocks_after == 1
    assert all(p.exists() for p in old), "a block the read still needs was deleted"
    rest = list(it)
    assert_frame_equal(pl.concat([first, *rest]), data)
    assert not any(p.exists() for p in old), "retired blocks outlived the read"
    assert_frame_equal(t.scan().collect(), data)


def test_abandoned_read_releases_its_blocks(filled_no_grace: tuple[bt.Table, pl.DataFrame]) -> None:
    t, _ = filled_no_grace
    it = t.iter_batches(batch_size=100)
    next(it)
    old = [b.path for b in t.snapshot().blocks]
    t.compact(target_rows=20_000, min_rows=5_000)
    it.close()  # the user stops iterating
    del it
    assert not any(p.exists() for p in old)


def test_scan_after_close_is_an_error(store_path: Path) -> None:
    store = bt.BacktraceStore(store_path)
    t = store.create_table("orders", ORDERS_SCHEMA, time_column="ts")
    store.close()
    with pytest.raises(bt.StoreClosedError):
        t.scan()


def test_explain_names_the_table(filled: tuple[bt.Table, pl.DataFrame]) -> None:
    t, _ = filled
    plan = t.scan().filter(pl.col("qty") > 3).select("ts").explain()
    assert "bt_frames" in plan
    assert "orders" in plan


_MEMORY_CHILD = """
import sys, threading, time
import psutil
import polars as pl
import bt_frames as bt

store = bt.BacktraceStore(sys.argv[1], read_only=True)
t = store["orders"]
mode = sys.argv[2]
proc = psutil.Process()
base = proc.memory_info().rss
peak = base
done = threading.Event()

def sample():  # resident memory while the read runs, every millisecond
    global peak
    while not done.is_set():
        peak = max(peak, proc.memory_info().rss)
        time.sleep(0.001)

sampler = threading.Thread(target=sample)
sampler.start()
if mode == "iter_batches":
    total = sum(int(b["qty"].sum()) for b in t.iter_batches(batch_size=50_000))
elif mode == "streaming":
    total = int(t.scan().select(pl.col("qty").sum()).collect(engine="streaming").item())
else:
    df = t.to_polars()
    total = int(df["qty"].sum())
done.set()
sampler.join()
print(total, peak - base)
"""


@pytest.mark.slow
def test_streaming_reads_use_bounded_memory(tmp_path: Path) -> None:
    import subprocess
    import sys

    store = bt.BacktraceStore(tmp_path / "db", durability="none")
    t = store.create_table("orders", ORDERS_SCHEMA, time_column="ts", max_block_rows=100_000)
    n = 4_000_000
    for start in range(0, n, 500_000):
        t.append(make_orders(500_000, start=start))
    expected = int(t.scan().select(pl.col("qty").sum()).collect().item())
    store.close()
    growth = {}
    for mode in ("full", "iter_batches", "streaming"):
        out = subprocess.run(
            [sys.executable, "-c", _MEMORY_CHILD, str(tmp_path / "db"), mode],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        assert int(out[0]) == expected
        growth[mode] = int(out[1])
    data_bytes = n * (8 + 8 + 8 + 3 + 4)  # ts, price, qty, ~3-byte symbols + offsets
    assert growth["full"] > 0.8 * data_bytes, growth  # the baseline really holds the table
    assert growth["iter_batches"] < 0.4 * growth["full"], growth
    assert growth["streaming"] < 0.4 * growth["full"], growth


def test_a_pruned_block_is_never_opened(filled: tuple[bt.Table, pl.DataFrame]) -> None:
    """Pruning happens on cached statistics only: a damaged block that a query prunes is not even read."""
    from bt_frames.storage import blocks as blk
    from tests.helpers.faults import flip_byte

    t, data = filled
    last = t.snapshot().blocks[-1]  # rows 9,000-9,999
    flip_byte(last.path, last.bytes // 2)
    blk._verified.clear()  # as in a fresh process: nothing verified yet
    early = pl.col("ts") < T0 + dt.timedelta(seconds=1_000)
    assert_frame_equal(t.scan().filter(early).collect(), data.filter(early))
    assert t.last_plan is not None
    assert last not in t.last_plan.survivors
    with pytest.raises(bt.CorruptionError, match=last.path.name):
        t.scan().filter(pl.col("ts") >= T0 + dt.timedelta(seconds=9_500)).collect()


# -- height-only reads and answers from statistics (see bt_frames/_scan.py) -----------------------------------------


def test_polars_asks_for_the_hidden_column_when_a_query_needs_only_the_height(
    filled: tuple[bt.Table, pl.DataFrame],
) -> None:
    """The behaviour of Polars the height-only reads rest on. If a Polars release changes it, this test
    fails (and counts stay right, only slower: see the tests below)."""
    t, data = filled
    for engine in ("in-memory", "streaming"):
        assert t.scan().select(pl.len()).collect(engine=engine).item() == ROWS
        assert t.last_read is not None
        assert t.last_read.columns == [_scan.HEIGHT]
        eth = pl.col("symbol") == "ETH"
        assert t.scan().filter(eth).select(pl.len()).collect(engine=engine).item() == data.filter(eth).height
        assert t.last_read.columns == [_scan.HEIGHT, "symbol"]  # the hidden column + the predicate's
        got = t.scan().filter(eth).select(pl.col("symbol").len()).collect(engine=engine).item()
        assert got == data.filter(eth).height
        assert t.last_read.columns == [_scan.HEIGHT, "symbol"]
        # a query that needs a column's values never gets the hidden column
        t.scan().filter(eth).select(pl.col("symbol").first()).collect(engine=engine)
        assert t.last_read.columns == ["symbol"]
    assert _scan.HEIGHT not in t.scan().collect_schema()


def test_counts_are_answered_from_statistics_without_opening_a_block(filled: tuple[bt.Table, pl.DataFrame]) -> None:
    t, data = filled
    blocks = len(t.snapshot().blocks)
    assert t.scan().select(pl.len()).collect().item() == ROWS
    assert t.last_read is not None
    assert (t.last_read.blocks_from_metadata, t.last_read.block_rows, t.last_read.hot_rows) == (blocks, 0, 300)
    for pred in [
        pl.col("symbol") == "ETH",
        pl.col("symbol").is_in(["SOL"]),
        pl.col("symbol").is_null(),
        pl.col("price").is_null(),
    ]:
        got = t.scan().filter(pred).select(pl.len()).collect().item()
        assert got == data.filter(pred).height, pred
        assert t.last_read.blocks_from_metadata == t.last_read.blocks, pred
        assert t.last_read.block_rows == 0, pred  # not a row read from a block
    # the same answers through where= and DNF tuples, which push the same predicate down
    n = t.scan(where=[("symbol", "==", "BTC")]).select(pl.len()).collect().item()
    assert n == data.filter(pl.col("symbol") == "BTC").height
    assert t.last_read.block_rows == 0
    # two values of the column: counted, but the rows (in an unknown order) must be read
    both = pl.col("symbol").is_in(["ETH", "BTC"])
    assert t.scan().filter(both).select(pl.len()).collect().item() == data.filter(both).height
    assert t.last_read.blocks_from_metadata == 0
    report = t.prune(both)
    assert report.blocks_counted == blocks
    assert report.rows_counted == data.head(10_000).filter(both).height


def test_a_time_window_count_reads_only_the_time_column(filled: tuple[bt.Table, pl.DataFrame]) -> None:
    t, _data = filled
    window = (pl.col("ts") >= T0 + dt.timedelta(seconds=1_500)) & (pl.col("ts") < T0 + dt.timedelta(seconds=4_000))
    for engine in ("in-memory", "streaming"):
        assert t.scan().filter(window).select(pl.len()).collect(engine=engine).item() == 2_500
        assert t.last_read is not None
        assert t.last_read.columns == [_scan.HEIGHT, "ts"]
        # blocks 3 and 4 lie inside the window: read (for their ts values) without the predicate
        assert t.last_read.blocks_unfiltered == 2


def test_counts_stay_right_without_the_hidden_column(store: bt.BacktraceStore) -> None:
    """A table with a column of the hidden column's name goes without the shortcut: same answers."""
    schema = {"ts": pl.Int64, _scan.HEIGHT: pl.String}
    t = store.create_table("odd", schema, time_column="ts", max_block_rows=100)
    data = pl.DataFrame({"ts": range(350), _scan.HEIGHT: ["a", "b", None, "a", "c"] * 70}, schema=schema)
    t.append(data)
    for engine in ("in-memory", "streaming"):
        assert t.scan().select(pl.len()).collect(engine=engine).item() == 350
        pred = pl.col(_scan.HEIGHT) == "a"
        assert t.scan().filter(pred).select(pl.len()).collect(engine=engine).item() == 140
        assert_frame_equal(t.scan().filter(pred).collect(engine=engine), data.filter(pred))
    assert t.last_read is not None
    assert t.last_read.blocks_from_metadata == 0


def test_prune_false_never_uses_verdicts_or_counts(filled: tuple[bt.Table, pl.DataFrame]) -> None:
    t, data = filled
    window = pl.col("ts") >= T0 + dt.timedelta(seconds=1_500)
    assert_frame_equal(t.scan(prune=False).filter(window).collect(), data.filter(window))
    assert t.last_read is not None
    assert t.last_read.blocks_unfiltered == 0
    eth = pl.col("symbol") == "ETH"
    assert t.scan(prune=False).filter(eth).select(pl.len()).collect().item() == data.filter(eth).height
    assert t.last_read.blocks_from_metadata == 0


def test_eager_readers_plan_once_and_read_in_one_polars_query(filled: tuple[bt.Table, pl.DataFrame]) -> None:
    t, data = filled
    window = pl.col("ts") >= T0 + dt.timedelta(seconds=1_500)
    scans = t.scans
    got = t.read(window, columns=["price", "ts"])
    assert_frame_equal(got, data.filter(window).select("price", "ts"))
    assert t.scans == scans + 1  # one plan
    assert t.last_read is not None
    assert t.last_read.batches == 1  # one frame from one query, not a stream through the IO plugin
    assert t.last_read.blocks_unfiltered == 8  # blocks 3..10 hold only rows in the window
    assert_frame_equal(t.to_polars(), data)
    assert t.last_read.batches == 1
    empty = t.read(pl.col("ts") < T0, columns=["qty"])
    assert empty.schema == pl.Schema({"qty": pl.Int64})
    assert empty.height == 0
    with pytest.raises(SchemaMismatchError, match="no column"):
        t.read(columns=["nope"])
    with pytest.raises(bt.BtError, match="more than once"):
        t.read(columns=["qty", "qty"])


def test_blocks_already_verified_are_read_in_one_group(filled: tuple[bt.Table, pl.DataFrame]) -> None:
    """Groups exist so that a cold block is hashed just before it is read; verified blocks need none."""
    from bt_frames.storage import blocks as blk

    t, _ = filled
    blocks = t.snapshot().blocks
    some = [_scan._prune.SOME] * len(blocks)
    for b in blocks:
        blk.verify_block(b.path)
    assert all(blk.is_verified(b.file) for b in blocks)
    assert [len(g) for g, _ in _scan._groups(blocks, some, 2_500, unverified_only=True)] == [10]
    assert [len(g) for g, _ in _scan._groups(blocks, some, 2_500)] == [2, 2, 2, 2, 2]
    verdicts = [_scan._prune.ALL] * 3 + some[3:]
    assert [(len(g), v) for g, v in _scan._groups(blocks, verdicts, 2_500, unverified_only=True)] == [
        (3, "all"),
        (7, "some"),
    ]
    # a block file replaced behind the store's back is no longer "verified": it is hashed again
    path = blocks[0].path
    data = path.read_bytes()
    path.unlink()
    path.write_bytes(data)
    assert not blk.is_verified(blocks[0].file)


def test_rows_built_from_statistics_hold_the_true_values(store: bt.BacktraceStore) -> None:
    """Large counted blocks are built from shared chunks: the frame Polars gets is still the real rows."""
    n = _scan.REPEAT_CHUNK * 2 + 17
    t = store.create_table("big", {"ts": pl.Int64, "sym": pl.String}, time_column="ts", max_block_rows=n)
    data = pl.DataFrame({"ts": range(n), "sym": ["ETH"] * (n - 5) + ["BTC"] * 5})
    t.append(data)
    t.flush()
    eth = pl.col("sym") == "ETH"
    for engine in ("in-memory", "streaming"):
        got = t.scan().filter(eth).select(pl.len(), pl.col("sym").len().alias("n")).collect(engine=engine)
        assert got.row(0) == (n - 5, n - 5)
        assert t.last_read is not None
        assert t.last_read.blocks_from_metadata == 1
    # the same frame, taken whole, as the source yields it
    col = _scan._constant("sym", "ETH", pl.String(), n - 5)
    assert col.len() == n - 5
    assert col.n_chunks() > 1
    assert col.equals(data.filter(eth).get_column("sym"))


# -- found by an adversarial review: eager readers pass the user's expression before Polars coerces it ------------


def test_a_finer_unit_literal_is_left_to_polars_in_every_reader(store: bt.BacktraceStore) -> None:
    schema = {"ts": pl.Int64, "du": pl.Duration("ms"), "i": pl.Int64}
    t = store.create_table("units", schema, time_column="ts", max_block_rows=4)
    data = pl.DataFrame(
        {"ts": [1, 2, 3, 4], "du": [dt.timedelta(milliseconds=1)] * 4, "i": [5, 6, 7, 8]}, schema=schema
    )
    t.append(data)
    t.flush()
    for p in [
        pl.col("du").is_in([dt.timedelta(microseconds=1500)]),
        ~pl.col("du").is_in([dt.timedelta(microseconds=1500)]),
        pl.col("du") == dt.timedelta(microseconds=1500),
        ~pl.col("i").is_between(10, None),
        ~pl.col("i").is_between(None, 1),
    ]:
        expected = data.filter(data.select(p).to_series().fill_null(False))  # (p.fill_null: another answer)
        assert_frame_equal(t.scan().filter(p).collect(), expected)
        assert_frame_equal(t.read(p), expected)
        assert_frame_equal(
            pl.concat(list(t.iter_batches(p)), how="vertical") if expected.height else expected, expected
        )
        assert t.scan().filter(p).select(pl.len()).collect().item() == expected.height
