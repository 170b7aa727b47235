"""One regression test per class of pandas frame that came back wrong (issue 8; found by tests/pandas_suite).

Each frame goes through an append, a second append and a reopen (WAL replay), and through blocks; it must
come back equal under ``pandas.testing.assert_frame_equal`` -- or, where the class is on the documented
refusal list, be refused with a ``BtError`` that names the column (or "the index") and gives a fix.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

import bt_frames as bt

DATEUTIL = pytest.importorskip("dateutil.tz")


@pytest.fixture
def roundtrip(tmp_path: Path) -> Callable[[pd.DataFrame], pd.DataFrame]:
    """Append ``df`` twice (the second time after a flush: rows in a block and hot), reopen, read."""
    n = iter(range(1000))

    def go(df: pd.DataFrame) -> pd.DataFrame:
        root = tmp_path / f"db{next(n)}"
        with bt.open(root) as s:
            df.bt.append(s, "t")
            s["t"].flush()
            df.bt.append(s, "t")
        with bt.open(root) as s:
            return s["t"].to_pandas()

    return go


def _twice(df: pd.DataFrame) -> pd.DataFrame:
    out = pd.concat([df, df])
    if isinstance(df.index, pd.RangeIndex) and df.index.name is None:
        out = out.reset_index(drop=True)
    out.attrs = dict(df.attrs)
    return out


ZERO_ROW = {
    "Int64": pd.DataFrame({"a": pd.array([], dtype="Int64")}),
    "UInt8": pd.DataFrame({"a": pd.array([], dtype="UInt8")}),
    "boolean": pd.DataFrame({"a": pd.array([], dtype="boolean")}),
    "Float64": pd.DataFrame({"a": pd.array([], dtype="Float64")}),
    "string": pd.DataFrame({"a": pd.array([], dtype="string")}),
    "categorical": pd.DataFrame({"a": pd.Categorical([], categories=["x", "y"], ordered=True)}),
    "named index": pd.DataFrame({"a": pd.array([], dtype="int64")}, index=pd.Index([], dtype="int64", name="k")),
    "integer label": pd.DataFrame({0: pd.array([], dtype="float64")}),
}


@pytest.mark.parametrize("name", list(ZERO_ROW))
def test_zero_row_frames_come_back_as_they_were(tmp_path: Path, name: str) -> None:
    df = ZERO_ROW[name]
    with bt.open(tmp_path / "db") as s:
        assert s.append("t", df) is None
        s["t"].append(df)
    with bt.open(tmp_path / "db") as s:
        pd.testing.assert_frame_equal(s["t"].to_pandas(), df)


ZONES: dict[str, Any] = {
    "+05:30 (not a whole hour)": dt.timezone(dt.timedelta(hours=5, minutes=30)),
    "-03:30": dt.timezone(dt.timedelta(hours=-3, minutes=-30)),
    "named fixed offset": dt.timezone(dt.timedelta(hours=-1), "foo"),
    "dateutil": DATEUTIL.gettz("Europe/Berlin"),
    "zoneinfo": "America/New_York",
}


@pytest.mark.parametrize("name", list(ZONES))
@pytest.mark.parametrize("where", ["column", "index"])
def test_time_zones_come_back_as_the_same_zone_object(
    roundtrip: Callable[[pd.DataFrame], pd.DataFrame], name: str, where: str
) -> None:
    if name == "dateutil" and int(pd.__version__.split(".")[0]) < 3:
        pytest.skip("pandas 2.2 cannot localize to python-dateutil 4's zones (tz_localize fails in pandas itself)")
    ts = pd.date_range("2024-01-01 09:00", periods=4, freq="h", tz=ZONES[name])
    df = pd.DataFrame({"ts": ts, "v": range(4)}) if where == "column" else pd.DataFrame({"v": range(4)}, index=ts)
    pd.testing.assert_frame_equal(roundtrip(df), _twice(df))


def test_categories_keep_their_dtype(roundtrip: Callable[[pd.DataFrame], pd.DataFrame]) -> None:
    df = pd.DataFrame(
        {
            "obj": pd.Categorical(["a", "b", "a"], categories=pd.Index(["a", "b"], dtype=object)),
            "ints": pd.Categorical([1, 2, 1], categories=pd.array([1, 2], dtype="Int64")),
        }
    )
    pd.testing.assert_frame_equal(roundtrip(df), _twice(df))


def test_column_labels_keep_the_string_storage_they_were_written_with(
    roundtrip: Callable[[pd.DataFrame], pd.DataFrame],
) -> None:
    df = pd.DataFrame({"a": [1, 2]})
    df.columns = pd.Index(["a"], dtype=object)
    pd.testing.assert_frame_equal(roundtrip(df), _twice(df))


def test_attrs_are_kept(roundtrip: Callable[[pd.DataFrame], pd.DataFrame]) -> None:
    df = pd.DataFrame({"a": [1, 2]})
    df.attrs = {"source": "exchange A", "version": 3}
    got = roundtrip(df)
    assert got.attrs == {"source": "exchange A", "version": 3}


REFUSED: dict[str, tuple[pd.DataFrame, str]] = {
    "date and int mixed": (pd.DataFrame({"c": [dt.date(2011, 1, 1), 5]}, dtype=object), "column 'c'"),
    "date and int index": (pd.DataFrame({"v": [1, 2]}, index=pd.Index([dt.date(2011, 1, 1), 5])), "the index"),
    "int and float objects": (pd.DataFrame({"c": pd.Series([1, 2.5], dtype=object)}), "column 'c'"),
    "uuid": (pd.DataFrame({"c": [uuid.uuid4(), uuid.uuid4()]}), "column 'c'"),
    "tuples": (pd.DataFrame({"c": [(1, 2), (3, 4)]}), "column 'c'"),
    "sets": (pd.DataFrame({"c": [{1, 2}, {3}]}), "column 'c'"),
    "dicts with other keys": (pd.DataFrame({"c": [{"A": 1}, {"B": 2}]}), "column 'c'"),
}


@pytest.mark.parametrize("name", list(REFUSED))
def test_values_that_would_change_type_are_refused_clearly(tmp_path: Path, name: str) -> None:
    df, names = REFUSED[name]
    with bt.open(tmp_path / "db") as s:
        with pytest.raises(bt.BtError) as exc:
            s.append("t", df)
        msg = str(exc.value)
        assert names in msg, msg
        assert "column None" not in msg
        assert "Fix:" in msg, msg
        assert "t" not in s.tables  # nothing was written
