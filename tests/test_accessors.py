"""``df.bt`` for pandas and Polars: same semantics as ``store.append``, and registered without importing pandas.

The import-order tests run in fresh interpreters (``-W error``): bt_frames before pandas, pandas before
bt_frames, a pandas submodule first, both imported concurrently from two threads, bt_frames imported
*while* pandas is initialising, and a reload of the accessor module (no duplicate-registration warning).
"""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import polars as pl
import pytest

import bt_frames as bt
from bt_frames._accessors import PandasBtAccessor, PolarsBtNamespace
from bt_frames.testing import assert_table_equal
from tests.conftest import FRAME_CONSTRUCTORS, ORDERS_SCHEMA, make_orders

ROOT = Path(__file__).resolve().parents[1]


def _run(code: str, *args: str) -> str:
    """Run ``code`` in a fresh interpreter with warnings as errors; its stdout (stderr shown on failure)."""
    proc = subprocess.run(
        [sys.executable, "-W", "error", *args, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


# -- registration, in fresh interpreters ---------------------------------------------------


def test_import_registers_polars_namespace_and_does_not_import_pandas() -> None:
    out = _run(
        """
        import sys
        import bt_frames, polars as pl
        from bt_frames._accessors import PolarsBtNamespace, _PandasImportHook
        assert "pandas" not in sys.modules, sorted(m for m in sys.modules if m.startswith("pandas"))
        assert pl.DataFrame.bt is PolarsBtNamespace
        print(sum(isinstance(f, _PandasImportHook) for f in sys.meta_path))
        """
    )
    assert out.split() == ["1"]  # one finder waits for pandas


def test_counts_and_delete_of_a_polars_only_process_do_not_import_pandas(tmp_path: Path) -> None:
    """Answering a count from the value counts (``bt_frames/_counts.py``) must not import pandas: Arrow's
    ``pa.array(ndarray)``/``fill_null``/``to_numpy`` did, costing the first delete of a process 0.3-0.6 s."""
    out = _run(
        f"""
        import datetime as dt, sys
        import polars as pl, bt_frames as bt
        t = bt.open({str(tmp_path / "db")!r}).create_table(
            "t", {{"ts": pl.Datetime("us", "UTC"), "sym": pl.String, "q": pl.Int64}}, time_column="ts",
            max_block_rows=4)
        t0 = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
        t.append(pl.DataFrame({{"ts": [t0 + dt.timedelta(seconds=i) for i in range(10)], "sym": list("ABABABABAB"),
                                "q": list(range(10))}}))
        t.flush()
        print(t.scan().filter(pl.col("sym") == "A").select(pl.len()).collect().item())
        print(t.delete(pl.col("sym").is_in(["B"])), len(t))
        assert "pandas" not in sys.modules, sorted(m for m in sys.modules if m.startswith("pandas"))
        """
    )
    assert out.split() == ["5", "5", "5"]


def test_importtime_has_no_pandas() -> None:
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import bt_frames"], capture_output=True, text=True, cwd=ROOT
    )
    assert proc.returncode == 0, proc.stderr
    rows = [line.split("|") for line in proc.stderr.splitlines() if line.startswith("import time:")][1:]
    modules = {r[2].strip() for r in rows}
    assert "bt_frames" in modules
    assert "polars" in modules
    assert not {m for m in modules if m == "pandas" or m.startswith("pandas.")}
    cumulative_us = {r[2].strip(): int(r[1]) for r in rows}
    print(f"import bt_frames: {cumulative_us['bt_frames'] / 1000:.0f} ms cumulative")  # shown with -s


@pytest.mark.parametrize(
    "first",
    ["import bt_frames\nimport pandas as pd", "import pandas as pd\nimport bt_frames",
     "import bt_frames\nfrom pandas.api.types import is_integer\nimport pandas as pd"],
    ids=["bt_frames_first", "pandas_first", "pandas_submodule_first"],
)  # fmt: skip
def test_pandas_accessor_exists_whatever_the_import_order(first: str, tmp_path: Path) -> None:
    out = _run(
        first
        + f"""
import sys
from bt_frames._accessors import PandasBtAccessor, _PandasImportHook
assert pd.DataFrame.bt is PandasBtAccessor
assert not any(isinstance(f, _PandasImportHook) for f in sys.meta_path)  # the finder removed itself
with bt_frames.open({str(tmp_path / "db")!r}) as store:
    print(pd.DataFrame({{"x": [1, 2]}}).bt.append(store, "t"), store["t"].rows)
"""
    )
    assert out.split() == ["1", "2"]


def test_concurrent_imports_from_two_threads() -> None:
    out = _run(
        """
        import threading
        barrier = threading.Barrier(2)

        def imp(name):
            barrier.wait()
            __import__(name)

        threads = [threading.Thread(target=imp, args=(m,)) for m in ("pandas", "bt_frames")]
        for t in threads: t.start()
        for t in threads: t.join()
        import time, pandas as pd
        from bt_frames._accessors import PandasBtAccessor
        deadline = time.monotonic() + 10
        while getattr(pd.DataFrame, "bt", None) is not PandasBtAccessor and time.monotonic() < deadline:
            time.sleep(0.01)
        print(pd.DataFrame.bt is PandasBtAccessor)
        """
    )
    assert out.split() == ["True"]


def test_bt_frames_imported_while_pandas_initialises() -> None:
    # A finder that imports bt_frames as soon as pandas' __init__ imports pandas.core: pandas is then in
    # sys.modules but half-initialised, so bt_frames must wait for it rather than register at once.
    out = _run(
        """
        import sys, time

        class ImportBtFramesDuringPandas:
            def find_spec(self, name, path=None, target=None):
                if name == "pandas.core" and "bt_frames" not in sys.modules:
                    import bt_frames
                    assert sys.modules["pandas"].__spec__._initializing
                return None

        sys.meta_path.insert(0, ImportBtFramesDuringPandas())
        import pandas as pd
        from bt_frames._accessors import PandasBtAccessor
        deadline = time.monotonic() + 10
        while getattr(pd.DataFrame, "bt", None) is not PandasBtAccessor and time.monotonic() < deadline:
            time.sleep(0.01)
        print("bt_frames" in sys.modules, pd.DataFrame.bt is PandasBtAccessor)
        """
    )
    assert out.split() == ["True", "True"]


def test_registration_is_idempotent_even_after_a_reload() -> None:
    out = _run(
        """
        import importlib, warnings
        import pandas as pd, polars as pl
        import bt_frames
        from bt_frames import _accessors
        first_pd, first_pl = pd.DataFrame.bt, pl.DataFrame.bt
        _accessors.install(); _accessors.install()
        assert _accessors.register_pandas_accessor()
        importlib.reload(_accessors)  # a fresh module: registers again, must not warn about overriding
        _accessors.install()
        print(pd.DataFrame.bt is first_pd, pl.DataFrame.bt is first_pl)
        """
    )
    assert out.split() == ["True", "True"]


def test_foreign_bt_accessor_is_left_alone() -> None:
    out = _run(
        """
        import logging
        import pandas as pd
        logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=__import__("sys").stdout)

        @pd.api.extensions.register_dataframe_accessor("bt")
        class Other:
            def __init__(self, df): pass

        import bt_frames
        print(pd.DataFrame.bt is Other)
        """
    )
    assert "pd.DataFrame.bt is taken by" in out
    assert out.split()[-1] == "True"


# -- semantics: same as store.append -----------------------------------------------------------

ACCESSOR_INPUTS = {k: FRAME_CONSTRUCTORS[k] for k in ("polars", "pandas", "pandas[pyarrow]")}


@pytest.mark.parametrize("kind", list(ACCESSOR_INPUTS))
def test_accessor_appends_like_store_append(bt_store: bt.BacktraceStore, kind: str) -> None:
    make: Callable[[pl.DataFrame], Any] = ACCESSOR_INPUTS[kind]
    frames = [make_orders(50, start=i * 50) for i in range(3)]
    lsns = [make(f).bt.append(bt_store, "orders", max_block_rows=60) for f in frames]
    assert lsns == [1, 2, 3]
    t = bt_store["orders"]
    assert t.time_column == "ts"
    assert t.max_block_rows == 60
    assert t.schema == pl.Schema(ORDERS_SCHEMA)
    assert t.rows == 150
    assert t.cold_rows == 100
    assert_table_equal(t, pl.concat(frames))
    # the same through store.append, into a twin table
    for f in frames:
        bt_store.append("twin", make(f), max_block_rows=60)
    assert bt_store["twin"].blocks["rows"].to_list() == t.blocks["rows"].to_list()


def test_accessor_classes_are_the_registered_ones() -> None:
    assert pd.DataFrame.bt is PandasBtAccessor
    assert pl.DataFrame.bt is PolarsBtNamespace
    assert isinstance(pd.DataFrame({"x": [1]}).bt, PandasBtAccessor)
    assert isinstance(pl.DataFrame({"x": [1]}).bt, PolarsBtNamespace)


def test_accessor_with_a_table_and_time_column(bt_store: bt.BacktraceStore) -> None:
    df = pl.DataFrame({"a": [dt.datetime(2024, 1, 1)], "b": [dt.datetime(2024, 1, 2)], "x": [1]})
    assert df.bt.append(bt_store, "t", time_column="b") == 1
    t = bt_store["t"]
    assert t.time_column == "b"
    assert df.bt.append(t) == 2
    assert pd.DataFrame(df.to_pandas()).bt.append(t, "t") == 3
    assert t.rows == 3
    assert pl.DataFrame(schema=df.schema).bt.append(t) is None  # an empty frame: nothing appended


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda s: pl.DataFrame({"x": [1]}).bt.append(s), r"df.bt.append\(store, name\): name the table"),
        (lambda s: pl.DataFrame({"x": [1]}).bt.append("db", "t"), r"expects a bt_frames.BacktraceStore .* not a str"),
        (lambda s: pd.DataFrame({"x": [1]}).bt.append(s["t"], "other"), r"the table is 't'; pass the store"),
    ],
    ids=["no_name", "path_not_store", "table_and_other_name"],
)
def test_accessor_misuse_is_a_clear_bt_error(
    bt_store: bt.BacktraceStore, call: Callable[[bt.BacktraceStore], Any], message: str
) -> None:
    bt_store.append("t", pl.DataFrame({"x": [0]}))
    with pytest.raises(bt.UnsupportedInputError, match=message):
        call(bt_store)
    assert bt_store["t"].rows == 1
    assert bt_store.tables == ["t"]


def test_accessor_bad_frame_raises_like_store_append_and_writes_nothing(bt_store: bt.BacktraceStore) -> None:
    pd.DataFrame({"x": [1]}).bt.append(bt_store, "t")
    with pytest.raises(bt.SchemaMismatchError, match=r"table 't': the frame does not match the table schema"):
        pd.DataFrame({"y": [1.5]}).bt.append(bt_store, "t")
    with pytest.raises(bt.ReadOnlyError):
        pd.DataFrame({"x": [2]}).bt.append(bt.open(bt_store.path, read_only=True), "t")
    assert bt_store["t"].rows == 1
