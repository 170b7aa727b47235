"""Every frame pandas' own IO round-trip tests write, sent through bt_frames instead.

``collect_frames`` runs the installed pandas' ``tests/io/test_parquet.py`` and ``tests/io/test_feather.py``
in a child pytest process with ``tests.pandas_suite.capture`` loaded, which keeps each frame those tests
hand to ``to_parquet``/``to_feather`` (deduplicated by the hash of its pickle). ``issue_frames`` adds the
frames of the round-trip bug report that pandas' own tests of this version do not write (they came from
other pandas versions' tests and a new user's tries). ``check_frame`` runs one frame through every way
into a table -- append, append again, reopen (WAL replay), blocks small enough that the rows land in
Parquet, blocks plus hot rows -- and compares ``table.to_pandas()`` with ``assert_frame_equal`` (and
``attrs``). A frame is

- ``exact``: every scenario gives back exactly what was appended;
- ``refused``: the first append raised a ``BtError`` (nothing written);
- ``wrong``: a scenario gave back something else;
- ``crashed``: any other exception (or a warning).

A refusal is accepted only for the documented reasons in ``REFUSALS`` (decided from the frame itself,
not from the message), and its message must name a fix and never say ``column None``.
"""

from __future__ import annotations

import datetime as dt
import decimal
import hashlib
import os
import pickle
import subprocess
import sys
import tempfile
import uuid
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from dateutil import tz as dateutil_tz

import bt_frames as bt
from bt_frames.errors import BtError, DeltaIncompatibleWarning

REPO = Path(__file__).resolve().parents[2]

# -- the frames ----------------------------------------------------------------------------


def pandas_test_files() -> list[Path]:
    io_tests = Path(pd.__file__).parent / "tests" / "io"
    files = [io_tests / "test_parquet.py", io_tests / "test_feather.py"]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise RuntimeError(f"pandas {pd.__version__} does not ship its IO tests: {', '.join(missing)}")
    return files


def collect_frames(out: Path) -> list[tuple[str, pd.DataFrame]]:
    """Run pandas' IO round-trip tests in a child pytest with the capture plugin; the frames they wrote."""
    out.mkdir(parents=True, exist_ok=True)
    ini = out / "pytest.ini"
    ini.write_text("[pytest]\n")  # not the project's config: pandas' tests have their own markers and warnings
    env = {
        **os.environ,
        "BT_PANDAS_SUITE_OUT": str(out / "frames"),
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    cmd = [sys.executable, "-m", "pytest", "-q", "-c", str(ini), "--rootdir", str(out), "-p", "no:cacheprovider"]
    cmd += ["-p", "tests.pandas_suite.capture", "-m", "not network and not single_cpu", "-W", "ignore"]
    proc = subprocess.run([*cmd, *map(str, pandas_test_files())], env=env, capture_output=True, text=True, check=False)
    frames = []
    for path in sorted((out / "frames").glob("*.pkl")):
        df, source = pickle.loads(path.read_bytes())
        frames.append((f"{source}:{path.stem[:10]}", df))
    if not frames:
        raise RuntimeError(f"pandas' IO tests wrote no frames:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return frames


def _frames_of_the_issue() -> Iterator[tuple[str, pd.DataFrame]]:
    yield "empty-no-columns", pd.DataFrame(index=[], columns=[])
    for dtype in ["int64", "Int64", "UInt8", "boolean", "bool", "float64", "Float64", "object", "str",
                  "string", "category", "datetime64[ns]", "datetime64[us, UTC]", "timedelta64[ns]"]:  # fmt: skip
        yield f"empty-{dtype}", pd.DataFrame({"value": pd.Series([], dtype=dtype)})
    yield "empty-category-ordered", pd.DataFrame({"c": pd.Categorical([], categories=["b", "a"], ordered=True)})
    yield "empty-int-label", pd.DataFrame({0: pd.Series([], dtype="int64")})
    yield "empty-named-index", pd.DataFrame({"v": pd.Series([], dtype="float64")}, index=pd.Index([], name="k"))
    yield (
        "empty-datetime-index",
        pd.DataFrame(
            {"v": pd.Series([], dtype="int64")}, index=pd.DatetimeIndex([], name="ts", dtype="datetime64[ns, UTC]")
        ),
    )
    d = dt.date(2011, 1, 1)
    yield "object-date-int", pd.DataFrame({"a": pd.Series([d, 5], dtype=object)})
    yield "object-index-date-int", pd.DataFrame({"a": [1, 2]}, index=pd.Index([d, 5], dtype=object))
    yield "object-dates", pd.DataFrame({"a": pd.Series([d, dt.date(2011, 1, 2)], dtype=object)})
    times = pd.date_range("2024-01-01", periods=3, freq="h", unit="ns")
    for name, zone in [
        ("+05:30", dt.timezone(dt.timedelta(hours=5, minutes=30))),
        ("+05:45", dt.timezone(dt.timedelta(hours=5, minutes=45))),
        ("-03:30", dt.timezone(-dt.timedelta(hours=3, minutes=30))),
        ("+02:00", dt.timezone(dt.timedelta(hours=2))),
        ("named-foo", dt.timezone(dt.timedelta(hours=-1), "foo")),
        ("dateutil-NY", dateutil_tz.gettz("America/New_York")),
        ("dateutil-utc", dateutil_tz.tzutc()),
        ("pytz-like-str", "Asia/Kolkata"),
        ("dt.UTC", dt.UTC),
    ]:
        try:
            stamps = times.tz_localize(zone)
        except Exception:  # e.g. pandas 2.2 with a dateutil it does not support: not a frame a user can make
            continue
        yield f"tz-index-{name}", pd.DataFrame({"v": [1, 2, 3]}, index=stamps)
        yield f"tz-column-{name}", pd.DataFrame({"t": stamps, "v": [1, 2, 3]})
    yield (
        "category-object-cats",
        pd.DataFrame({"c": pd.Categorical(["a", "b", "a"], categories=pd.Index(["a", "b"], dtype=object))}),
    )
    yield (
        "category-Int64-cats",
        pd.DataFrame({"c": pd.Categorical([1, 2, 1], categories=pd.Index([1, 2], dtype="Int64"))}),
    )
    yield "columns-object-index", pd.DataFrame([[1, 2]], columns=pd.Index(["a", "b"], dtype=object))
    yield "columns-python-string", pd.DataFrame([[1, 2]], columns=pd.Index(["a", "b"], dtype="string[python]"))
    yield "uuid", pd.DataFrame({"id": [uuid.UUID(int=1), uuid.UUID(int=2)]})
    yield "dicts", pd.DataFrame({"d": [{"a": 1}, {"b": 2}]})
    yield "tuples", pd.DataFrame({"t": [(1, 2), (3, 4)]})
    yield "sets", pd.DataFrame({"s": [{1, 2}, {3}]})
    yield "lists", pd.DataFrame({"l": [[1, 2], [3]]})
    yield "object-int-float", pd.DataFrame({"x": pd.Series([1, 2.5], dtype=object)})
    yield "object-decimal", pd.DataFrame({"x": [decimal.Decimal("1.5"), decimal.Decimal("2.25")]})
    yield "object-bytes", pd.DataFrame({"x": [b"a", b"bc"]})
    attrs = pd.DataFrame({"a": [1, 2]})
    attrs.attrs = {"test_attribute": 1, "source": "sensor"}
    yield "attrs", attrs
    yield "freq-index", pd.DataFrame({"v": [1, 2, 3]}, index=pd.date_range("2024-01-01", periods=3, freq="D"))


def issue_frames() -> list[tuple[str, pd.DataFrame]]:
    return [(f"issue:{name}", df) for name, df in _frames_of_the_issue()]


def dedupe(frames: list[tuple[str, pd.DataFrame]]) -> list[tuple[str, pd.DataFrame]]:
    seen: set[str] = set()
    out = []
    for name, df in frames:
        try:
            key = hashlib.sha1(pickle.dumps(df, protocol=pickle.HIGHEST_PROTOCOL)).hexdigest()
        except Exception:
            key = name
        if key not in seen:
            seen.add(key)
            out.append((name, df))
    return out


# -- documented refusals -------------------------------------------------------------------


def _levels(df: pd.DataFrame) -> list[Any]:
    idx = df.index
    return [idx.get_level_values(i) for i in range(idx.nlevels)] if not _default_index(df) else []


def _object_kinds(values: Any) -> set[type]:
    return {type(v) for v in pd.Series(values, dtype=object).dropna()}


# Python objects Arrow would give back as something else (UUID as bytes, tuples and sets as lists, ...)
_NOT_THEMSELVES = (uuid.UUID, dict, tuple, set, frozenset)


def _mixed(values: Any) -> bool:
    kinds = _object_kinds(values)
    return len(kinds) > 1 or any(issubclass(k, _NOT_THEMSELVES) for k in kinds)


def refusal_reason(df: pd.DataFrame) -> str | None:
    """Why bt_frames may refuse ``df`` (the documented list), or None when it must store it."""
    if isinstance(df.columns, pd.MultiIndex):
        return "MultiIndex columns"
    if len(df.columns) == 0:
        return "a frame with no columns"
    if df.columns.has_duplicates:
        return "duplicate column labels"
    if any(not isinstance(c, (str, int, float, bool, np.integer, np.floating, np.bool_)) for c in df.columns):
        return "non-string column labels"
    arrays = [*(_levels(df)), *(df.iloc[:, i] for i in range(df.shape[1]))]
    for values in arrays:
        if isinstance(values.dtype, (pd.PeriodDtype, pd.IntervalDtype)):
            return "period and interval dtypes"
        if isinstance(values.dtype, pd.SparseDtype) or values.dtype.kind == "c":
            return "sparse and complex dtypes"
    for values in arrays:
        if values.dtype == object and _mixed(values):
            return "mixed-type object columns (or Python objects Arrow cannot hold as themselves)"
    return None


# -- the scenarios -------------------------------------------------------------------------


def _default_index(df: pd.DataFrame) -> bool:
    return isinstance(df.index, pd.RangeIndex) and df.index.name is None


def expected_once(df: pd.DataFrame) -> pd.DataFrame:
    return df.reset_index(drop=True) if _default_index(df) else df


def expected_twice(df: pd.DataFrame) -> pd.DataFrame:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = pd.concat([df, df], ignore_index=_default_index(df))
    if list(out.dtypes) != list(df.dtypes):  # pandas' concat of empty/all-NA frames may change dtypes: keep them
        out = out.astype(df.dtypes.to_dict())
    out.attrs = dict(df.attrs)
    return out


def _compare(what: str, actual: pd.DataFrame, expected: pd.DataFrame) -> None:
    try:
        pd.testing.assert_frame_equal(actual, expected)
    except AssertionError as e:
        raise AssertionError(f"{what}: {e}") from None
    if actual.attrs != expected.attrs:
        raise AssertionError(f"{what}: attrs {actual.attrs!r} != {expected.attrs!r}")


def _scenarios(df: pd.DataFrame, root: Path) -> Iterator[tuple[str, Callable[[], None]]]:
    once, twice = expected_once(df), expected_twice(df)

    def append_once() -> None:
        with bt.open(root / "once") as store:
            store.append("t", df)
            _compare("append once", store["t"].to_pandas(), once)
        with bt.open(root / "once") as store:
            _compare("append once, reopened", store["t"].to_pandas(), once)

    def append_twice() -> None:
        with bt.open(root / "twice") as store:
            store.append("t", df)
            df.bt.append(store, "t")
            _compare("append twice", store["t"].to_pandas(), twice)
        with bt.open(root / "twice") as store:  # the rows come back from the WAL
            _compare("append twice, reopened", store["t"].to_pandas(), twice)

    def blocks() -> None:
        with bt.open(root / "blocks") as store:
            store.append("t", df, max_block_rows=2)
            store.append("t", df)
            store.flush()
            _compare("blocks of 2 rows", store["t"].to_pandas(), twice)
        with bt.open(root / "blocks") as store:
            _compare("blocks of 2 rows, reopened", store["t"].to_pandas(), twice)

    def blocks_and_hot() -> None:
        with bt.open(root / "mixed") as store:
            store.append("t", df, max_block_rows=max(2, len(df) + 1))
            store.append("t", df)  # more than a block: the first rows freeze, the rest stay hot
            _compare("a block and hot rows", store["t"].to_pandas(), twice)

    yield "once", append_once
    yield "twice", append_twice
    yield "blocks", blocks
    yield "blocks+hot", blocks_and_hot


@dataclass
class Result:
    name: str
    status: str  # exact / refused / wrong / crashed
    detail: str = ""
    reason: str | None = None  # the documented reason a refusal is allowed (None: not allowed)
    df: pd.DataFrame | None = field(default=None, repr=False)


def check_frame(name: str, df: pd.DataFrame) -> Result:
    reason = refusal_reason(df)
    with tempfile.TemporaryDirectory(prefix="bt-pdsuite-") as tmp:
        for i, (scenario, run) in enumerate(_scenarios(df, Path(tmp))):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("error")
                    # said once at create_table, by design: a table of datetime64[ns] or unsigned columns has no
                    # Delta log (README "Reading a table with other engines"); the round trip is unaffected
                    warnings.simplefilter("ignore", DeltaIncompatibleWarning)
                    run()
            except BtError as e:
                if i == 0:
                    return Result(name, "refused", f"{type(e).__name__}: {e}", reason, df)
                return Result(name, "crashed", f"{scenario}: refused only here: {type(e).__name__}: {e}", df=df)
            except AssertionError as e:
                return Result(name, "wrong", str(e)[:1500], df=df)
            except Exception as e:
                return Result(name, "crashed", f"{scenario}: {type(e).__name__}: {e}"[:1500], df=df)
    return Result(name, "exact", df=df)


def empty_append_keeps_pandas_meta() -> bool:
    """Whether ``Table.append`` records the pandas metadata of a zero-row first append.

    bt_frames/table.py returns from a zero-row append before it records the pandas metadata, so an empty
    table made from pandas reads back with Polars' own dtypes. Only that file can fix it (the metadata
    must be set before the ``df.height == 0`` return); until it does, the zero-row frames are reported
    as ``wrong (waiting for table.py)`` and do not fail the suite. Once it does, they count like any other.
    """
    with tempfile.TemporaryDirectory(prefix="bt-pdsuite-") as tmp, bt.open(tmp) as store:
        store.append("t", pd.DataFrame({"v": pd.Series([], dtype="Int64")}))
        return str(store["t"].to_pandas()["v"].dtype) == "Int64"


def problems(results: list[Result], *, waiting: bool | None = None) -> list[str]:
    """Every result the suite fails on: wrong, crashed, undocumented refusals, refusals without a fix."""
    if waiting is None:
        waiting = not empty_append_keeps_pandas_meta()
    out = []
    for r in results:
        if waiting and r.status == "wrong" and r.df is not None and len(r.df) == 0:
            continue
        if r.status in ("wrong", "crashed"):
            out.append(f"{r.status.upper()} {r.name}: {r.detail}")
        elif r.status == "refused":
            if r.reason is None:
                out.append(f"UNDOCUMENTED REFUSAL {r.name}: {r.detail}")
            elif "column None" in r.detail or "Fix:" not in r.detail:
                out.append(f"UNCLEAR REFUSAL {r.name} ({r.reason}): {r.detail}")
    return out


def summary(results: list[Result]) -> str:
    counts = Counter(r.status for r in results)
    line = ", ".join(f"{k} {counts.get(k, 0)}" for k in ("exact", "refused", "wrong", "crashed"))
    reasons = Counter(r.reason for r in results if r.status == "refused")
    why = "; ".join(f"{k or 'UNDOCUMENTED'}: {v}" for k, v in reasons.most_common())
    return f"pandas {pd.__version__}: {len(results)} distinct frames: {line}" + (f" (refused: {why})" if why else "")


def run_all(work: Path) -> list[Result]:
    frames = dedupe([*collect_frames(work / "capture"), *issue_frames()])
    return [check_frame(name, df) for name, df in frames]


if __name__ == "__main__":  # python -m tests.pandas_suite.roundtrip [-v]: the counts and every problem
    with tempfile.TemporaryDirectory() as work:
        results = run_all(Path(work))
    if "-v" in sys.argv:
        for r in results:
            print(f"{r.status:8} {r.name}: {r.detail[:300]}")
    for p in problems(results, waiting=False):
        print(p[:2000], end="\n\n")
    print(summary(results))
    if not empty_append_keeps_pandas_meta():
        print("zero-row frames: waiting for bt_frames/table.py to record a zero-row first append's pandas metadata")
