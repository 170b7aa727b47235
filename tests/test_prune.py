"""The pruner: boundary tables per operator and dtype, then soundness properties.

Table-driven cases in the style of Polars' ``test_skip_batch_predicate.py``
and PyIceberg's ``test_evaluator.py``: one block with known values, a
predicate, and whether the block may be skipped. Every case is also checked
against the oracle "skipped => the block has no matching row", so a wrong
expectation cannot hide an unsound pruner.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import polars as pl
import pytest
from polars.testing import assert_frame_equal

import bt_frames as bt
from bt_frames import prune
from bt_frames.storage import blocks as blk
from bt_frames.storage import layout
from bt_frames.table import Snapshot
from tests.conftest import ORDERS_SCHEMA, T0, make_orders

NAN = float("nan")
UTC = ZoneInfo("UTC")
NY = ZoneInfo("America/New_York")


def _block(df: pl.DataFrame, i: int = 0) -> blk.BlockInfo:
    name = layout.BlockName(i + 1, i + 1, 1, 1, "0" * 16)
    return blk.BlockInfo(name, str(name), df.height, 0, blk.compute_stats(df))


def plan_one(values: pl.Series, predicate: pl.Expr) -> prune.PruneReport:
    df = values.alias("x").to_frame()
    return prune.plan(Snapshot((_block(df),), ()), df.schema, predicate, table="t")


def can_skip(values: pl.Series, predicate: pl.Expr) -> bool:
    skipped = plan_one(values, predicate).blocks_pruned == 1
    if skipped:  # the oracle: a skipped block has no matching row
        assert values.alias("x").to_frame().filter(predicate).height == 0, f"unsound: {predicate} on {values}"
    return skipped


x = pl.col("x")

# (values, dtype, predicate, can_skip, why)
CASES: list[tuple[list[Any], pl.DataType, pl.Expr, bool, str]] = [
    # -- integers: boundaries of each comparison
    ([10, 20, 30], pl.Int64(), x < 10, True, "10 is not < 10"),
    ([10, 20, 30], pl.Int64(), x < 11, False, "10 < 11"),
    ([10, 20, 30], pl.Int64(), x <= 10, False, "10 <= 10"),
    ([10, 20, 30], pl.Int64(), x <= 9, True, "min 10 > 9"),
    ([10, 20, 30], pl.Int64(), x > 30, True, "30 is not > 30"),
    ([10, 20, 30], pl.Int64(), x > 29, False, "30 > 29"),
    ([10, 20, 30], pl.Int64(), x >= 30, False, "30 >= 30"),
    ([10, 20, 30], pl.Int64(), x >= 31, True, "max 30 < 31"),
    ([10, 20, 30], pl.Int64(), x == 5, True, "5 below the range"),
    ([10, 20, 30], pl.Int64(), x == 31, True, "31 above the range"),
    ([10, 20, 30], pl.Int64(), x == 15, True, "inside the range but not in the distinct set"),
    ([10, 20, 30], pl.Int64(), x == 20, False, "20 is present"),
    ([10, 10, 10], pl.Int64(), x != 10, True, "every value is 10"),
    ([10, 10, 11], pl.Int64(), x != 10, False, "11 != 10"),
    ([10, 20, 30], pl.Int64(), pl.lit(10) > x, True, "literal on the left: 10 > x never holds"),
    ([10, 20, 30], pl.Int64(), pl.lit(11) > x, False, "literal on the left: 11 > 10"),
    ([10, 20, 30], pl.Int32(), x > 30, True, "Int32 column, dynamic literal"),
    ([10, 20, 30], pl.UInt8(), x > 29, False, "UInt8 column"),
    # -- is_between, every closed mode, at both ends
    ([10, 20, 30], pl.Int64(), x.is_between(30, 40), False, "closed both: 30 is in [30, 40]"),
    ([10, 20, 30], pl.Int64(), x.is_between(30, 40, closed="right"), True, "(30, 40] excludes 30"),
    ([10, 20, 30], pl.Int64(), x.is_between(30, 40, closed="left"), False, "[30, 40) includes 30"),
    ([10, 20, 30], pl.Int64(), x.is_between(30, 40, closed="none"), True, "(30, 40) excludes 30"),
    ([10, 20, 30], pl.Int64(), x.is_between(0, 10), False, "[0, 10] includes 10"),
    ([10, 20, 30], pl.Int64(), x.is_between(0, 10, closed="left"), True, "[0, 10) excludes 10"),
    ([10, 20, 30], pl.Int64(), x.is_between(0, 10, closed="none"), True, "(0, 10) excludes 10"),
    ([10, 20, 30], pl.Int64(), x.is_between(31, 40), True, "entirely above"),
    # -- is_in: range and distinct set
    ([10, 20, 30], pl.Int64(), x.is_in([1, 2, 40]), True, "all values outside [10, 30]"),
    ([10, 20, 30], pl.Int64(), x.is_in([15, 25]), True, "inside the range, not in the distinct set"),
    ([10, 20, 30], pl.Int64(), x.is_in([1, 20]), False, "20 is present"),
    ([10, 20, 30], pl.Int64(), x.is_in([]), True, "empty list matches nothing"),
    ([10, None, 30], pl.Int64(), x.is_in([None, 40]), True, "null in the list does not match null rows"),
    ([10, None, 30], pl.Int64(), x.is_in([None, 40], nulls_equal=True), False, "nulls_equal: null rows match"),
    ([10, 20, 30], pl.Int64(), ~x.is_in([10, 20, 30]), True, "not in: every value is in the list"),
    ([10, 20, 31], pl.Int64(), ~x.is_in([10, 20, 30]), False, "not in: 31 is not in the list"),
    # -- nulls
    ([None, None], pl.Int64(), x.is_null(), False, "all null"),
    ([1, 2], pl.Int64(), x.is_null(), True, "no nulls"),
    ([1, 2], pl.Int64(), x.is_not_null(), False, "no nulls"),
    ([None, None], pl.Int64(), x.is_not_null(), True, "all null"),
    ([None, None], pl.Int64(), x > 0, True, "comparisons are never true on null"),
    ([None, None], pl.Int64(), x != 0, True, "null != 0 is null, not true"),
    ([None, 5], pl.Int64(), x < 5, True, "the non-null value is not < 5"),
    ([None, 5], pl.Int64(), ~(x < 5), False, "~(5 < 5) is true"),
    ([None, 4], pl.Int64(), ~(x < 5), True, "~(4 < 5) is false and ~null is null"),
    ([None, 5], pl.Int64(), x == pl.lit(None), True, "x == null is never true"),
    # -- boolean connectives
    ([10, 20, 30], pl.Int64(), (x < 5) | (x > 40), True, "both sides skip"),
    ([10, 20, 30], pl.Int64(), (x < 5) | (x > 25), False, "the right side might match"),
    ([10, 20, 30], pl.Int64(), (x > 5) & (x > 40), True, "one side of & skips"),
    ([10, 20, 30], pl.Int64(), ~(x > 5), True, "every row is > 5"),
    ([10, 20, 30], pl.Int64(), ~(x > 10), False, "10 is not > 10"),
    ([10, 20, 30], pl.Int64(), ~~(x < 5), True, "double negation"),
    ([10, 20, 30], pl.Int64(), ~((x > 5) | (x < 0)), True, "every row makes the | true"),
    ([10, 20, 30], pl.Int64(), ~((x > 5) & (x < 0)), False, "& of bounds is never all-true"),
    # -- floats: NaN is the largest value and equal to itself in Polars
    ([1.0, 2.0], pl.Float64(), x > 2.0, True, "max 2.0"),
    ([1.0, NAN], pl.Float64(), x > 2.0, False, "NaN > 2.0 is true"),
    ([1.0, NAN], pl.Float64(), x < 1.0, True, "min ignores NaN; NaN < 1.0 is false"),
    ([NAN, NAN], pl.Float64(), x < 1e300, True, "all NaN: nothing is < anything finite"),
    ([NAN, NAN], pl.Float64(), x.is_nan(), False, "is_nan is not understood: keep"),
    ([1.0, 2.0], pl.Float64(), x == NAN, True, "no NaN in the block"),
    ([1.0, NAN], pl.Float64(), x == NAN, False, "NaN == NaN in Polars"),
    ([1.0, 2.0], pl.Float64(), x >= NAN, True, "only NaN is >= NaN"),
    ([1.0, 2.0], pl.Float64(), x < NAN, False, "every number is < NaN"),
    ([-0.0, 0.0], pl.Float64(), x == 0.0, False, "-0.0 == 0.0"),
    ([1.0, math.inf], pl.Float64(), x > 1e308, False, "inf > 1e308"),
    ([1.5, None], pl.Float32(), x > 1.5, True, "Float32 column"),
    # -- strings (range and distinct set)
    (["ADA", "ETH"], pl.String(), x == "BTC", True, "BTC sorts inside [ADA, ETH] but is absent"),
    (["ADA", "BTC", "ETH"], pl.String(), x == "BTC", False, "BTC present"),
    (["ADA", "ETH"], pl.String(), x > "ETH", True, "nothing sorts after ETH"),
    (["ADA", "ETH"], pl.String(), x >= "ETH", False, "ETH >= ETH"),
    (["ADA", "ETH"], pl.String(), x < "ADA", True, "nothing sorts before ADA"),
    (["ADA", "ETH"], pl.String(), x.is_in(["BTC", "SOL"]), True, "distinct set excludes both"),
    (["ADA", "ETH"], pl.String(), x.is_in(["BTC", "ETH"]), False, "ETH present"),
    (["", "a"], pl.String(), x < "", True, "nothing is < the empty string"),
    # -- boolean
    ([True, True], pl.Boolean(), x == False, True, "no False"),  # noqa: E712
    ([True, False], pl.Boolean(), x == False, False, "False present"),  # noqa: E712
    ([True, True], pl.Boolean(), ~x, False, "~column is not understood: keep"),
    # -- temporal
    (
        [dt.date(2024, 1, 1), dt.date(2024, 1, 31)],
        pl.Date(),
        x > dt.date(2024, 1, 31),
        True,
        "date max 2024-01-31",
    ),
    (
        [dt.date(2024, 1, 1), dt.date(2024, 1, 31)],
        pl.Date(),
        x.is_between(dt.date(2023, 12, 1), dt.date(2024, 1, 1)),
        False,
        "upper bound equals min",
    ),
    (
        [dt.datetime(2024, 1, 1, 12, tzinfo=UTC), dt.datetime(2024, 1, 1, 13, tzinfo=UTC)],
        pl.Datetime("us", "UTC"),
        x < dt.datetime(2024, 1, 1, 12, tzinfo=UTC),
        True,
        "UTC column, UTC literal at min",
    ),
    (
        [dt.datetime(2024, 1, 1, 12, tzinfo=UTC), dt.datetime(2024, 1, 1, 13, tzinfo=UTC)],
        pl.Datetime("us", "UTC"),
        x > dt.datetime(2024, 1, 1, 13, tzinfo=UTC),
        True,
        "UTC column, literal at max",
    ),
    (
        [dt.datetime(2024, 1, 1, 12, tzinfo=NY), dt.datetime(2024, 1, 1, 13, tzinfo=NY)],
        pl.Datetime("ns", "America/New_York"),
        x > dt.datetime(2024, 1, 1, 13, tzinfo=NY),
        True,
        "ns unit, New York column, microsecond literal at max",
    ),
    (
        [dt.datetime(2024, 1, 1, 12, tzinfo=NY), dt.datetime(2024, 1, 1, 13, tzinfo=NY)],
        pl.Datetime("ns", "America/New_York"),
        x >= dt.datetime(2024, 1, 1, 13, tzinfo=NY),
        False,
        "ns unit, New York column: 13:00 >= 13:00",
    ),
    (
        [dt.datetime(2024, 1, 1, 12, tzinfo=NY), dt.datetime(2024, 1, 1, 23, tzinfo=NY)],
        pl.Datetime("ms", "America/New_York"),
        x >= dt.date(2024, 1, 2),
        False,
        "Polars compares a date literal as midnight UTC: 23:00 New York is 04:00 UTC on the 2nd",
    ),
    (
        [dt.datetime(2024, 1, 1, 12, tzinfo=NY), dt.datetime(2024, 1, 1, 23, tzinfo=NY)],
        pl.Datetime("ms", "America/New_York"),
        x >= dt.date(2024, 1, 3),
        True,
        "2024-01-03 00:00 UTC is after 23:00 New York on the 1st",
    ),
    (
        [dt.datetime(2024, 1, 1, 12), dt.datetime(2024, 1, 1, 13)],
        pl.Datetime("ms"),
        x == dt.datetime(2024, 1, 1, 12, 30),
        True,
        "naive ms column: inside the range, not in the distinct set",
    ),
    (
        [dt.timedelta(seconds=1), dt.timedelta(seconds=5)],
        pl.Duration("us"),
        x > dt.timedelta(seconds=5),
        True,
        "duration max 5 s",
    ),
    (
        [dt.timedelta(seconds=1), dt.timedelta(seconds=5)],
        pl.Duration("ns"),
        x >= dt.timedelta(seconds=5),
        False,
        "duration 5 s >= 5 s",
    ),
    # -- categorical / enum: distinct sets only
    (["a", "b"], pl.Categorical(), x == "c", True, "c not among the categories in the block"),
    (["a", "b"], pl.Categorical(), x == "b", False, "b present"),
    (["a", "b"], pl.Enum(["a", "b", "c"]), x.is_in(["c"]), True, "enum: c not in the block"),
    # -- not understood: always keep
    ([10, 20, 30], pl.Int64(), (x * 2) > 1000, False, "arithmetic on the column"),
    ([10, 20, 30], pl.Int64(), x > x.mean() + 1000, False, "aggregation on the literal side"),
    ([10, 20, 30], pl.Int64(), x.cast(pl.Float64) > 1000.0, False, "cast of the column"),
    ([10, 20, 30], pl.Int64(), pl.lit(True), False, "a literal predicate"),
]


@pytest.mark.parametrize(
    ("values", "dtype", "predicate", "expected", "why"),
    CASES,
    ids=[f"{i:02d}-{c[4][:40]}" for i, c in enumerate(CASES)],
)
def test_boundary_cases(values: list[Any], dtype: pl.DataType, predicate: pl.Expr, expected: bool, why: str) -> None:
    series = pl.Series("x", values, dtype=dtype)
    assert can_skip(series, predicate) is expected, why


def test_conjunct_named_as_reason() -> None:
    report = plan_one(pl.Series([10, 20, 30]), (x > 0) & (x > 100))
    assert report.blocks_pruned == 1
    assert report.to_frame()["reason"].to_list() == [str(x > 100)]
    assert report.conjuncts == [str(x > 0), str(x > 100)]


def test_not_understood_is_reported_and_kept() -> None:
    report = plan_one(pl.Series([10, 20, 30]), (x * 2) > 1000)
    assert report.blocks_scanned == 1
    assert report.not_understood == [str((x * 2) > 1000)]
    assert "not understood" in repr(report)


def test_literal_of_incomparable_type_keeps_the_block() -> None:
    # Polars cannot compare a string column with a date; the pruner must not raise.
    report = plan_one(pl.Series(["a", "b"]), x > dt.date(2024, 1, 1))
    assert report.blocks_scanned == 1


# -- DNF where= -----------------------------------------------------------------

SCHEMA = pl.Schema({"symbol": pl.String(), "qty": pl.Int64(), "cat": pl.Categorical()})


@pytest.mark.parametrize(
    ("where", "expr"),
    [
        ([("symbol", "==", "BTC")], pl.col("symbol") == "BTC"),
        ([("symbol", "=", "BTC"), ("qty", ">", 100)], (pl.col("symbol") == "BTC") & (pl.col("qty") > 100)),
        (
            [[("symbol", "==", "BTC")], [("qty", "<=", 5)]],
            (pl.col("symbol") == "BTC") | (pl.col("qty") <= 5),
        ),
        ([("qty", "in", [1, 2])], pl.col("qty").is_in([1, 2])),
        ([("qty", "not in", [1, 2])], ~pl.col("qty").is_in([1, 2])),
        ([("qty", "is_null")], pl.col("qty").is_null()),
        ([("qty", "is_not_null")], pl.col("qty").is_not_null()),
        ([("qty", "!=", 3)], pl.col("qty") != 3),
        ([("cat", "in", ["a"])], pl.col("cat").is_in(["a"])),
    ],
)
def test_dnf_filters_mean_what_the_expression_means(where: Any, expr: pl.Expr) -> None:
    df = pl.DataFrame(
        {"symbol": ["BTC", "ETH", None, "BTC"], "qty": [1, 200, 3, None], "cat": ["a", "b", "a", None]},
        schema=SCHEMA,
    )
    got = prune.to_expr(where, SCHEMA)
    assert got is not None
    assert_frame_equal(df.filter(got), df.filter(expr))


@pytest.mark.parametrize(
    ("where", "match"),
    [
        ([("nope", "==", 1)], "no column 'nope'"),
        ([("qty", "~", 1)], "unknown operator '~'"),
        ([("qty", ">")], "needs a value"),
        ("qty > 1", "where= must be a polars expression"),
        ([("qty",)], "expected \\(column, op, value\\)"),
    ],
)
def test_bad_dnf_filters_are_explained(where: Any, match: str) -> None:
    with pytest.raises(bt.BtError, match=match):
        prune.to_expr(where, SCHEMA)


# -- effectiveness on a real table ------------------------------------------------


@pytest.fixture
def fifty_blocks(store: bt.BacktraceStore) -> bt.Table:
    t = store.create_table("orders", ORDERS_SCHEMA, time_column="ts", max_block_rows=200)
    t.append(make_orders(50 * 200))
    return t


def test_narrow_time_window_scans_one_block(fifty_blocks: bt.Table) -> None:
    lo = T0 + dt.timedelta(seconds=1_000)  # rows are one second apart: block 5 holds rows 1000-1199
    where = pl.col("ts").is_between(lo, lo + dt.timedelta(seconds=100))
    report = fifty_blocks.prune(where)
    assert (report.blocks_total, report.blocks_scanned) == (50, 1)
    assert report.rows_avoided == 49 * 200
    assert report.bytes_avoided > 0
    assert fifty_blocks.scan(where).collect().height == 101


def test_symbol_in_some_blocks_prunes_the_others_by_distinct_sets(store: bt.BacktraceStore) -> None:
    t = store.create_table("orders", ORDERS_SCHEMA, time_column="ts", max_block_rows=100)
    # "DOGE" sorts between the other symbols' min and max, so min/max cannot exclude it.
    for i in range(10):
        df = make_orders(100, start=i * 100)
        if i in (3, 7):
            df = df.with_columns(pl.when(pl.col("qty") > 500).then(pl.lit("DOGE")).otherwise("symbol").alias("symbol"))
        t.append(df)
    report = t.prune(pl.col("symbol") == "DOGE")
    assert report.blocks_scanned == 2
    assert set(report.to_frame().filter("scanned")["first_lsn"].to_list()) == {4, 8}
    report_in = t.prune(pl.col("symbol").is_in(["DOGE", "LUNA"]))
    assert report_in.blocks_scanned == 2
    stats = t.blocks
    # min/max alone would have kept every block: DOGE lies inside each block's range
    assert ((stats["min.symbol"] < "DOGE") & (stats["max.symbol"] > "DOGE")).all()


def test_scan_logs_the_prune_summary_at_debug(fifty_blocks: bt.Table, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="bt_frames"):
        fifty_blocks.scan().filter(pl.col("ts") < T0 + dt.timedelta(seconds=10)).collect()
    assert "table 'orders': 49/50 blocks pruned, 1 scanned" in caplog.text


# -- soundness: pruning never changes a result -------------------------------------

INTS = [-3, -1, 0, 1, 2, 5]
FLOATS = [-math.inf, -2.0, -0.0, 0.0, 1.5, 3.0, math.inf, NAN]
STRINGS = ["", "BTC", "ETH", "a", "b", "é"]
TIMES = [dt.datetime(2024, 3, 10, h, tzinfo=NY) for h in (0, 1, 3, 12, 23)]  # spans a DST change
DOMAINS: dict[str, list[Any]] = {"i": INTS, "f": FLOATS, "s": STRINGS, "t": TIMES}
SOUND_SCHEMA = {
    "ts": pl.Datetime("us", "UTC"),
    "i": pl.Int64(),
    "f": pl.Float64(),
    "s": pl.String(),
    "t": pl.Datetime("ms", "America/New_York"),
}


def _frames(draw: Any, st: Any) -> list[pl.DataFrame]:
    frames = []
    start = 0
    for n in draw(st.lists(st.integers(0, 25), min_size=1, max_size=6)):
        cols: dict[str, list[Any]] = {
            "ts": [T0 + dt.timedelta(seconds=start + k) for k in range(n)],
        }
        for c, dom in DOMAINS.items():
            cols[c] = draw(st.lists(st.sampled_from([*dom, None]), min_size=n, max_size=n))
        frames.append(pl.DataFrame(cols, schema=SOUND_SCHEMA))
        start += n
    return frames


def _leaf(draw: Any, st: Any) -> pl.Expr:
    col = draw(st.sampled_from(sorted(DOMAINS)))
    dom = DOMAINS[col]
    c = pl.col(col)
    kind = draw(st.sampled_from(["cmp", "cmp", "cmp", "between", "in", "null"]))
    if kind == "cmp":
        v = pl.lit(draw(st.sampled_from(dom)), dtype=SOUND_SCHEMA[col])
        op = draw(st.sampled_from(["==", "!=", "<", "<=", ">", ">="]))
        flipped = {"<": ">", "<=": ">=", ">": "<", ">=": "<="}.get(op, op)
        if draw(st.booleans()):
            return {"==": c == v, "!=": c != v, "<": c < v, "<=": c <= v, ">": c > v, ">=": c >= v}[op]
        return {"==": v == c, "!=": v != c, "<": v > c, "<=": v >= c, ">": v < c, ">=": v <= c}[flipped]
    if kind == "between":
        lo, hi = draw(st.sampled_from(dom)), draw(st.sampled_from(dom))
        closed = draw(st.sampled_from(["both", "left", "right", "none"]))
        return c.is_between(pl.lit(lo, dtype=SOUND_SCHEMA[col]), pl.lit(hi, dtype=SOUND_SCHEMA[col]), closed=closed)
    if kind == "in":
        values = draw(st.lists(st.sampled_from([*dom, None]), max_size=4))
        return c.is_in(pl.Series(values, dtype=SOUND_SCHEMA[col]).implode(), nulls_equal=draw(st.booleans()))
    return c.is_null() if draw(st.booleans()) else c.is_not_null()


def _predicate(draw: Any, st: Any, depth: int = 0) -> pl.Expr:
    if depth >= 2 or draw(st.integers(0, 2)) == 0:
        return _leaf(draw, st)
    kind = draw(st.sampled_from(["and", "or", "not"]))
    a = _predicate(draw, st, depth + 1)
    if kind == "not":
        return ~a
    b = _predicate(draw, st, depth + 1)
    return a & b if kind == "and" else a | b


def matching(df: pl.DataFrame, p: pl.Expr) -> pl.DataFrame:
    """The rows of ``df`` where ``p`` is true, as ``select`` evaluates it (see the Polars bug test below)."""
    return df.filter(df.select(p).to_series().fill_null(False))


def test_polars_filter_drops_a_row_its_select_keeps() -> None:
    """A Polars 2.1 optimizer bug the soundness test above found: ``filter`` drops a row for which
    ``select`` of the same predicate (and an unoptimised query) says true. bt_frames' scans give
    select's answer, so the oracles here use select. If this test fails, Polars has fixed it."""
    df = pl.DataFrame({"t": [None, 1]}, schema={"t": pl.Int64})
    p = ~(pl.col("t").is_in(pl.Series([5]).implode(), nulls_equal=True) | pl.col("t").is_not_null())
    assert df.select(p).to_series().to_list() == [True, False]  # null is not in [5]: ~(false | false)
    assert df.lazy().filter(p).collect(optimizations=pl.QueryOptFlags.none()).height == 1
    assert df.filter(p).height == 0  # the bug


def _store_with(tmp: Path, frames: list[pl.DataFrame], max_block_rows: int) -> tuple[bt.BacktraceStore, bt.Table]:
    store = bt.BacktraceStore(tmp / "db", durability="none")
    t = store.create_table("x", SOUND_SCHEMA, time_column="ts", max_block_rows=max_block_rows)
    for f in frames:
        t.append(f)
    return store, t


@pytest.mark.hypothesis
def test_pruning_never_changes_results(tmp_path_factory: pytest.TempPathFactory) -> None:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    @settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(data=st.data(), max_block_rows=st.integers(3, 30))
    def check(data: Any, max_block_rows: int) -> None:
        frames = _frames(data.draw, st)
        preds = [_predicate(data.draw, st) for _ in range(4)]
        store, t = _store_with(tmp_path_factory.mktemp("sound"), frames, max_block_rows)
        try:
            everything = pl.concat(frames)
            for p in preds:
                expected = matching(everything, p)
                assert_frame_equal(t.scan().filter(p).collect(), expected)
                assert_frame_equal(t.scan(prune=False).filter(p).collect(), expected)
                assert_frame_equal(t.scan(where=p).collect(), expected)
                report = t.prune(p)
                for blk_info, keep in zip(t.snapshot().blocks, report.to_frame()["scanned"], strict=True):
                    if not keep:  # a pruned block has no matching row
                        assert matching(pl.read_parquet(blk_info.path), p).height == 0
        finally:
            store.close()

    check()


@pytest.mark.hypothesis
def test_dnf_where_equals_the_expression(tmp_path_factory: pytest.TempPathFactory) -> None:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    ops: dict[str, Any] = {
        "==": lambda c, v: c == v,
        "!=": lambda c, v: c != v,
        "<": lambda c, v: c < v,
        "<=": lambda c, v: c <= v,
        ">": lambda c, v: c > v,
        ">=": lambda c, v: c >= v,
        "in": lambda c, v: c.is_in(pl.Series(v, dtype=SOUND_SCHEMA[c.meta.output_name()]).implode()),
        "not in": lambda c, v: ~c.is_in(pl.Series(v, dtype=SOUND_SCHEMA[c.meta.output_name()]).implode()),
    }

    @st.composite
    def term(draw: Any) -> tuple[tuple[Any, ...], pl.Expr]:
        col = draw(st.sampled_from(["i", "s", "f"]))
        op = draw(st.sampled_from([*ops, "is_null", "is_not_null"]))
        c = pl.col(col)
        if op in ("is_null", "is_not_null"):
            return (col, op), (c.is_null() if op == "is_null" else c.is_not_null())
        dom = [v for v in DOMAINS[col] if not (isinstance(v, float) and math.isnan(v))]
        if op in ("in", "not in"):
            values = draw(st.lists(st.sampled_from(dom), max_size=3))
            return (col, op, values), ops[op](c, values)
        v = draw(st.sampled_from(dom))
        return (col, op, v), ops[op](c, pl.lit(v, dtype=SOUND_SCHEMA[col]))

    @settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(
        data=st.data(),
        dnf=st.lists(st.lists(term(), min_size=1, max_size=3), min_size=1, max_size=3),
    )
    def check(data: Any, dnf: list[list[tuple[tuple[Any, ...], pl.Expr]]]) -> None:
        frames = _frames(data.draw, st)
        expr = pl.lit(False)
        for conj in dnf:
            e = pl.lit(True)
            for _, te in conj:
                e = e & te
            expr = expr | e
        where: Any = [[t for t, _ in conj] for conj in dnf]
        if len(where) == 1 and data.draw(st.booleans()):
            where = where[0]  # a flat list of tuples is one conjunction
        store, t = _store_with(tmp_path_factory.mktemp("dnf"), frames, 10)
        try:
            assert_frame_equal(t.scan(where=where).collect(), pl.concat(frames).filter(expr))
        finally:
            store.close()

    check()


def test_the_plan_cache_lets_go_of_statistics_a_table_no_longer_uses(tmp_path: Path) -> None:
    """Answers are cached per statistics frame; a table's new blocks replace its frame, and the old
    frame and its answers are freed (a long-running writer must not keep every frame it ever had)."""
    import gc
    import weakref

    with bt.BacktraceStore(tmp_path / "db") as store:
        t = store.create_table("orders", ORDERS_SCHEMA, time_column="ts", max_block_rows=10_000)
        first: weakref.ref[pl.DataFrame] | None = None
        seen: set[int] = set()
        for i in range(12):
            t.append(make_orders(100, start=i * 100))
            t.flush()
            got = t.scan().filter(pl.col("symbol") == "BTC").select(pl.len()).collect().item()
            assert got == t.scan().collect().filter(pl.col("symbol") == "BTC").height
            frame = t._stats_frame
            assert frame is not None
            assert id(frame) in prune._evaluated
            seen.add(id(frame))
            if first is None:
                first = weakref.ref(frame)
        del frame
        gc.collect()
        assert first is not None
        assert first() is None, "the first statistics frame is still alive"
        kept = seen & set(prune._evaluated)
        assert len(kept) <= 2, f"{len(kept)} of this table's {len(seen)} frames' answers kept"


def test_changing_a_reports_counts_changes_no_later_answer(tmp_path: Path) -> None:
    """Reports of one predicate share their answers from metadata; what one hands out is its own."""
    with bt.BacktraceStore(tmp_path / "db") as store:
        t = store.create_table("orders", ORDERS_SCHEMA, time_column="ts", max_block_rows=300)
        t.append(make_orders(1_800))
        pred = pl.col("symbol") == "BTC"
        truth = t.scan().collect().filter(pred).height
        counts = t.prune(pred).matching_list()
        assert sum(n or 0 for n in counts) == truth
        counts[:] = [0] * len(counts)
        assert t.prune(pred).matching_list() != counts
        assert t.scan().filter(pred).select(pl.len()).collect().item() == truth
