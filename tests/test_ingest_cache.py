"""What the ingest fast paths cache must never change (issue 9 section 5).

- the pandas plan cache (``_pandas._PLANS``): a frame converted by a plan is
  stored exactly as the full conversion stores it, with the same metadata; a
  frame of another structure is converted (and refused) by the full path;
  the caller's arrays are still never aliased by the hot rows;
- ``store.append`` of a table open in this process skips the ``table.json``
  lookup, and stays right across ``drop_table`` and a re-creation.
"""

from __future__ import annotations

import datetime as dt
import io
from collections.abc import Callable

import numpy as np
import pandas as pd
import polars as pl
import pytest
from polars.testing import assert_frame_equal

import bt_frames as bt
from bt_frames import _pandas

N = 6


def _idx(tz: object = "UTC", unit: str = "us", name: str | None = "ts") -> pd.DatetimeIndex:
    return pd.date_range("2024-03-30 22:00", periods=N, freq="h", tz=tz, unit=unit, name=name)  # type: ignore[arg-type]


FRAMES: dict[str, Callable[[], pd.DataFrame]] = {
    "utc index, numbers, str": lambda: pd.DataFrame(
        {"px": np.linspace(1, 2, N), "qty": np.arange(N), "sym": ["a", "b", None, "d", "e", "f"]}, index=_idx()
    ).astype({"sym": "string"}),
    "paris index with DST": lambda: pd.DataFrame({"px": np.arange(N, dtype="float32")}, index=_idx("Europe/Paris")),
    "fixed offset Polars cannot hold": lambda: pd.DataFrame(
        {"px": np.arange(N)}, index=_idx(dt.timezone(dt.timedelta(hours=5, minutes=30)))
    ),
    "tz column and naive column": lambda: pd.DataFrame(
        {
            "a": _idx("America/New_York", "ns", None).to_series(index=pd.RangeIndex(N)),
            "b": pd.Series(pd.date_range("2024-01-01", periods=N, unit="s")),
            "c": pd.Series(pd.to_timedelta(np.arange(N), unit="ms")),
        }
    ),
    "NaN and NaT become nulls": lambda: pd.DataFrame(
        {"x": [1.0, np.nan, 3.0, np.nan, 5.0, 6.0], "t": pd.to_datetime([0, None, 2, 3, None, 5], unit="s")}
    ),
    "nullable extension dtypes": lambda: pd.DataFrame(
        {
            "i": pd.array([1, None, 3, 4, 5, 6], dtype="Int64"),
            "u": pd.array([1, 2, 3, 4, 5, None], dtype="UInt8"),
            "b": pd.array([True, None, False, True, True, False], dtype="boolean"),
            "f": pd.array([0.5, None, 1.5, 2, 3, 4], dtype="Float64"),
        }
    ),
    "string storages": lambda: pd.DataFrame(
        {
            "p": pd.array(list("abcdef"), dtype=pd.StringDtype("python")),
            "a": pd.array(["x", None, "z", "w", "v", "u"], dtype=pd.StringDtype("pyarrow")),
        }
    ),
    "arrow dtype": lambda: pd.DataFrame({"d": pd.array([1, 2, None, 4, 5, 6], dtype="int32[pyarrow]")}),
    "integer labels, named range index": lambda: pd.DataFrame(
        {0: np.arange(N), 1: np.ones(N)}, index=pd.RangeIndex(N, name="row")
    ),
    "bool and uint64": lambda: pd.DataFrame(
        {"b": np.array([True, False] * 3), "u": np.array([2**63 + 1] * N, dtype="uint64")}
    ),
}


@pytest.mark.parametrize("name", list(FRAMES))
def test_a_planned_conversion_stores_what_the_full_conversion_stores(name: str) -> None:
    df = FRAMES[name]()
    _pandas._PLANS.clear()
    full, full_meta = _pandas.from_pandas(df, table="t")  # the full path, which makes the plan
    fast = _pandas.arrow_of(FRAMES[name]())  # a new frame of the same structure
    assert fast is not None, "this structure should have a plan"
    got = pl.from_arrow(fast.table)
    assert isinstance(got, pl.DataFrame)
    assert got.dtypes == fast.dtypes == full.dtypes
    assert_frame_equal(got, full)
    assert fast.meta == full_meta
    assert_frame_equal(pl.read_ipc_stream(io.BytesIO(fast.ipc())), full)  # the WAL payload of a planned append
    planned, planned_meta = _pandas.from_pandas(FRAMES[name](), table="t")
    assert_frame_equal(planned, full)
    assert planned_meta == full_meta


@pytest.mark.parametrize("name", list(FRAMES))
def test_planned_appends_round_trip(tmp_path: object, name: str) -> None:
    _pandas._PLANS.clear()
    df = FRAMES[name]()
    with bt.open(tmp_path) as s:  # type: ignore[arg-type]
        for _ in range(3):  # the first makes the plan, the others use it
            FRAMES[name]().bt.append(s, "t")
        assert s["t"].rows == 3 * N
    with bt.open(tmp_path) as s:  # type: ignore[arg-type]
        back = s["t"].to_pandas()
    want = pd.concat([df, df, df])
    if isinstance(df.index, pd.RangeIndex) and df.index.name is None:
        want = want.reset_index(drop=True)
    if name == "paris index with DST":
        want.index.freq = None  # the repeated hours leave the grid
    pd.testing.assert_frame_equal(back, want)


def test_structures_without_a_plan_take_the_full_path() -> None:
    _pandas._PLANS.clear()
    frames = [
        pd.DataFrame({"o": ["a", "b"]}, dtype=object),  # object: per-value checks
        pd.DataFrame({"c": pd.Categorical(["a", "b"])}),
        pd.DataFrame({"x": [1, 2]}).set_axis(pd.MultiIndex.from_tuples([(1, 2), (3, 4)])),
    ]
    with_attrs = pd.DataFrame({"x": [1.0]})
    with_attrs.attrs = {"source": "test"}
    for df in [*frames, with_attrs]:
        _pandas.from_pandas(df, table="t")
        assert _pandas.arrow_of(df) is None


def test_a_frame_of_other_dtypes_after_a_planned_one_gets_the_full_checks(tmp_path: object) -> None:
    _pandas._PLANS.clear()

    def frame(px: object) -> pd.DataFrame:
        return pd.DataFrame({"px": px, "qty": np.arange(N)}, index=_idx())

    with bt.open(tmp_path) as s:  # type: ignore[arg-type]
        frame(np.linspace(0, 1, N)).bt.append(s, "t")
        frame(np.linspace(1, 2, N)).bt.append(s, "t")  # planned
        with pytest.raises(bt.SchemaMismatchError, match="px"):
            frame([str(i) for i in range(N)]).bt.append(s, "t")  # str into a float column
        with pytest.raises(bt.SchemaMismatchError, match="qty"):
            pd.DataFrame({"px": np.ones(N), "qty": np.ones(N) / 3}, index=_idx()).bt.append(s, "t")
        with pytest.raises(bt.SchemaMismatchError, match="extra"):
            frame(np.ones(N)).assign(extra=1).bt.append(s, "t")
        nat = frame(np.ones(N))
        nat.index = nat.index.insert(0, pd.NaT)[:N]
        with pytest.raises(bt.SchemaMismatchError, match="null"):  # a null in the time column
            nat.bt.append(s, "t")
        frame(np.arange(N, dtype="int32")).bt.append(s, "t")  # int32 into float64: widened
        assert s["t"].rows == 3 * N
        assert s["t"].read().get_column("px").to_list()[-N:] == [float(i) for i in range(N)]


def test_the_pandas_metadata_stored_is_not_the_shared_plan(tmp_path: object) -> None:
    _pandas._PLANS.clear()
    df = pd.DataFrame({"px": np.ones(N)}, index=_idx())
    _pandas.from_pandas(df, table="warm")  # a plan exists before the table's first pandas append
    fast = _pandas.arrow_of(df)
    assert fast is not None
    with bt.open(tmp_path) as s:  # type: ignore[arg-type]
        df.bt.append(s, "t")
        stored = s["t"]._meta.pandas
        assert stored == fast.meta
        assert stored is not fast.meta


@pytest.mark.parametrize("flush", [False, True])
def test_changing_the_callers_pandas_arrays_after_append_changes_nothing(tmp_path: object, flush: bool) -> None:
    _pandas._PLANS.clear()
    ts = np.datetime64("2024-01-01", "us") + np.arange(N).astype("timedelta64[s]")
    with bt.open(tmp_path) as s:  # type: ignore[arg-type]
        t = s.create_table(
            "t", {"ts": pl.Datetime("us", "UTC"), "x": pl.Int64, "y": pl.Float64}, time_column="ts", max_block_rows=1000
        )
        arrays = []
        for _ in range(3):  # the first through the full path, the others through the plan
            xs, ys = np.arange(N, dtype=np.int64), np.linspace(0, 1, N)
            arrays.append((xs, ys))
            idx = pd.DatetimeIndex(ts, name="ts").tz_localize("UTC")
            t.append(pd.DataFrame({"x": xs, "y": ys}, index=idx, copy=False))
        for xs, ys in arrays:
            xs[:] = -1
            ys[:] = np.nan
        if flush:
            t.flush()
        got = t.read()
        assert got.get_column("x").to_list() == list(range(N)) * 3
        assert got.get_column("y").to_list() == list(np.linspace(0, 1, N)) * 3


def test_store_append_after_drop_and_recreate_with_another_schema(tmp_path: object) -> None:
    with bt.open(tmp_path) as s:  # type: ignore[arg-type]
        s.append("t", pl.DataFrame({"a": [1, 2]}))
        first = s["t"]
        s.append("t", pl.DataFrame({"a": [3]}))
        s.drop_table("t")
        with pytest.raises(bt.TableDroppedError):
            first.append(pl.DataFrame({"a": [4]}))
        s.append("t", pl.DataFrame({"b": ["x"], "c": [1.5]}))  # created anew from this frame
        assert s["t"] is not first
        assert s["t"].schema == pl.Schema({"b": pl.String, "c": pl.Float64})
        s.append("t", pl.DataFrame({"b": ["y"], "c": [2.5]}))
        with pytest.raises(bt.SchemaMismatchError):
            s.append("t", pl.DataFrame({"a": [5]}))
        s.create_table("u", {"a": pl.Int64})
        s.drop_table("u")
        s.create_table("u", {"z": pl.String})
        s.append("u", pl.DataFrame({"z": ["ok"]}))
        assert s["u"].read().to_dict(as_series=False) == {"z": ["ok"]}
    with bt.open(tmp_path) as s:  # type: ignore[arg-type]
        assert s["t"].read().to_dict(as_series=False) == {"b": ["x", "y"], "c": [1.5, 2.5]}


def test_store_append_with_creation_options_still_checks_them(tmp_path: object) -> None:
    with bt.open(tmp_path) as s:  # type: ignore[arg-type]
        s.append("t", pl.DataFrame({"a": [1]}), max_block_rows=10)
        s.append("t", pl.DataFrame({"a": [2]}))
        with pytest.raises(bt.SchemaMismatchError):
            s.append("t", pl.DataFrame({"a": [3]}), max_block_rows=20)
        assert s["t"].rows == 2


@pytest.mark.parametrize("before", [0.005, 0.002, 0.0005])
def test_the_block_writer_gives_the_switch_interval_back(tmp_path: object, before: float) -> None:
    """While a block is written the GIL switch interval is at most 1 ms (appenders get the GIL back sooner);
    afterwards it is what it was."""
    import sys
    import threading

    from bt_frames.storage import writer

    seen: list[float] = []
    old = sys.getswitchinterval()
    sys.setswitchinterval(before)
    try:
        with bt.open(tmp_path) as s:  # type: ignore[arg-type]
            t = s.create_table("t", {"a": pl.Int64}, max_block_rows=10)
            real = t._write_run

            def spy(*args: object) -> object:
                assert threading.current_thread().name.startswith("bt_frames-freeze")
                seen.append(sys.getswitchinterval())
                return real(*args)  # type: ignore[arg-type]

            t._writer._write = spy
            for i in range(6):  # 5 rows each: the hot buffer hands 10 rows at a time to the block writer
                t.append(pl.DataFrame({"a": list(range(i * 5, i * 5 + 5))}))
            t.flush()
            assert t.cold_rows == 30
        assert seen
        assert all(x == min(before, writer.WRITER_SWITCH_INTERVAL_S) for x in seen)
        assert sys.getswitchinterval() == pytest.approx(before)
    finally:
        sys.setswitchinterval(old)
