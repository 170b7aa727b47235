"""The pytest plugin (``pytest11`` entry point): fixtures available without a conftest, stores closed afterwards,
and ``assert_table_equal``'s explanation in pytest's failure report. Runs inner pytest sessions with pytester."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

import bt_frames as bt

pytest_plugins = ["pytester"]


def _paths(pytester: pytest.Pytester) -> list[Path]:
    return [Path(line) for line in (pytester.path / "stores.txt").read_text().split()]


def _assert_unlocked_with_rows(path: Path, table: str, rows: int) -> None:
    """Opening a writer succeeds only if the inner test's store released the lock; its data is durable."""
    with bt.open(path) as store:
        assert store[table].rows == rows


def test_bt_store_is_available_without_conftest_in_a_fresh_process(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import polars as pl

        def test_store(bt_store, tmp_path):
            assert bt_store.tables == [] and not bt_store.read_only
            assert bt_store.path == tmp_path / "bt_store"
            bt_store.append("t", pl.DataFrame({"x": [1, 2]}))
            with open("stores.txt", "a") as f:
                f.write(f"{bt_store.path}\\n")
        """
    )
    assert not (pytester.path / "conftest.py").exists()
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    [path] = _paths(pytester)
    _assert_unlocked_with_rows(path, "t", 2)


def test_bt_store_is_closed_even_when_the_test_fails(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import polars as pl

        def test_fails(bt_store):
            bt_store.append("t", pl.DataFrame({"x": [1, 2, 3]}))
            with open("stores.txt", "a") as f:
                f.write(f"{bt_store.path}\\n")
            assert False, "deliberate"
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    [path] = _paths(pytester)
    _assert_unlocked_with_rows(path, "t", 3)  # same process: a still-open store would raise StoreLockedError


def test_an_unclosed_store_would_be_detected(tmp_path: Path) -> None:
    """The control for the two tests above: while the first writer is open, another one (here: with other
    options; in another process: any) is refused."""
    first = bt.open(tmp_path / "db")
    with pytest.raises(bt.StoreLockedError, match=r"is already open as a writer in this process"):
        bt.open(tmp_path / "db", durability="none")
    first.close()
    bt.open(tmp_path / "db", durability="none").close()


def test_bt_store_factory_opens_writers_and_readers_and_closes_all(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import polars as pl

        def test_reader_and_writer(bt_store_factory, tmp_path):
            writer = bt_store_factory("db", durability="batch")
            reader = bt_store_factory("db", read_only=True)
            other = bt_store_factory()
            assert writer.path == reader.path == tmp_path / "db" and other.path == tmp_path / "store"
            writer.append("t", pl.DataFrame({"x": [1]}))
            reader.refresh()
            assert reader.tables == ["t"] and reader["t"].rows == 1
            other.append("u", pl.DataFrame({"y": [1.5, 2.5]}))
            with open("stores.txt", "a") as f:
                f.write(f"{writer.path}\\n{other.path}\\n")
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    db, other = _paths(pytester)
    _assert_unlocked_with_rows(db, "t", 1)
    _assert_unlocked_with_rows(other, "u", 2)


def test_assert_table_equal_failure_shows_the_explanation(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import polars as pl
        from bt_frames.testing import assert_table_equal

        def test_mismatch(bt_store):
            bt_store.append("orders", pl.DataFrame({"qty": [1, 2, 3]}))
            assert_table_equal(bt_store["orders"], pl.DataFrame({"qty": [1, 5, 3, 4]}))
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "E *bt_frames.testing.TableAssertionError: table 'orders' differs from the expected frame",
            "E *  rows: 3 in the table, 4 expected",
            "E *  1 of 3 compared rows differ; the first:",
            "E *    row  column  table  expected",
            "E *    1    qty     2      5",
            "E *polars.testing says: DataFrames are different (height (row count) mismatch)",
        ]
    )
    out = result.stdout.str()
    assert "bt_frames/testing.py" not in out  # __tracebackhide__: the report points at the test, not the helper
    assert "test_mismatch" in out


def test_fixtures_are_listed_with_their_docs(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--fixtures", "-p", "no:cacheprovider")
    result.stdout.fnmatch_lines(["*bt_store*", "*A fresh, empty, writable store*", "*bt_store_factory*"])


def test_plugin_fixture_in_this_suite(bt_store: bt.BacktraceStore) -> None:
    bt_store.append("t", pl.DataFrame({"x": [1]}))
    assert bt_store["t"].rows == 1
    assert (bt_store.path / "LOCK").exists()
