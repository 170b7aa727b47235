"""Regression tests for the defects an adversarial review found (each failed on the code before its fix).

Named by the defect: opening a folder, completeness (the manifest), owned data, exactly-once appends,
disk-full opens, open/close races, hot-buffer consolidation. The machinery that looks for whole classes
of such defects lives in test_power_loss.py, test_io_errors.py, test_file_loss.py, test_differential.py,
test_concurrency.py and test_crash_loop.py.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

import bt_frames as bt
from bt_frames.storage import catalog, fs, hot, layout
from bt_frames.storage import manifest as mf
from tests.conftest import ORDERS_SCHEMA, make_orders
from tests.helpers.procs import listing

FIXTURE = Path(__file__).parent / "fixtures" / "legacy_store_e9cdd8c"


def _files(root: Path) -> dict[str, tuple[int, int]]:
    """The store's files, sizes and mtimes, but the LOCK file (a writer stamps its pid there)."""
    return {k: v for k, v in listing(root).items() if k != layout.LOCK_NAME}


# -- 1. opening a folder never deletes what the store did not create -----------------------------------------------


def test_opening_a_project_folder_refuses_and_deletes_nothing(tmp_path: Path) -> None:
    """Regression: bt.open(".") in a project ran shutil.rmtree on .git/, .venv/, .ipynb_checkpoints/."""
    project = tmp_path / "project"
    for d in (".git/objects", ".venv/bin", ".ipynb_checkpoints"):
        (project / d).mkdir(parents=True)
        (project / d / "keep.txt").write_text("precious")
    (project / "analysis.ipynb").write_text("{}")
    before = listing(project)
    with pytest.raises(bt.BtError) as exc:
        bt.open(project)
    assert str(exc.value) == (
        f"{str(project)!r} is not a bt_frames store and is not empty (it has no bt_frames.json), so bt_frames "
        f"will not write into it. Fix: choose a new or empty folder, e.g. bt.open({str(project / 'db')!r})."
    )
    with pytest.raises(bt.BtError, match="is not a bt_frames store"):
        bt.open(project, read_only=True)
    assert listing(project) == before


def test_a_store_keeps_hidden_folders_it_did_not_make(tmp_path: Path) -> None:
    root = tmp_path / "db"
    with bt.open(root) as s:
        s.append("t", pl.DataFrame({"x": [1]}))
    (root / ".ipynb_checkpoints").mkdir()
    (root / ".ipynb_checkpoints" / "note.txt").write_text("mine")
    (root / ".create-t-zz").mkdir()  # not the store's pattern (8 hex digits): not ours
    leftover = root / ".create-u-0123abcd"  # the store's own: an interrupted create_table
    leftover.mkdir()
    (leftover / "table.json").write_text("{}")
    with bt.open(root) as s:
        assert s["t"].rows == 1
    assert (root / ".ipynb_checkpoints" / "note.txt").read_text() == "mine"
    assert (root / ".create-t-zz").is_dir()
    assert not leftover.exists()


def test_a_new_or_empty_folder_becomes_a_store_with_a_marker(tmp_path: Path) -> None:
    for root in (tmp_path / "new" / "nested", tmp_path / "empty"):
        if root.name == "empty":
            root.mkdir()
        with bt.open(root) as s:
            s.append("t", pl.DataFrame({"x": [1, 2]}))
        marker = root / layout.STORE_MARKER
        assert marker.read_text() == '{"format": "bt_frames.store", "format_version": 1}\n'
        with bt.open(root, read_only=True) as r:
            assert r["t"].rows == 2


def test_a_newer_store_format_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "db"
    bt.open(root).close()
    (root / layout.STORE_MARKER).write_text('{"format": "bt_frames.store", "format_version": 99}\n')
    with pytest.raises(bt.UnsupportedFormatError, match="format 99; this build reads formats <= 1"):
        bt.open(root)


def test_tilde_is_expanded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    with bt.open("~/db") as s:
        assert s.path == tmp_path / "db"
        s.append("t", pl.DataFrame({"x": [1]}))
    assert (tmp_path / "db" / layout.STORE_MARKER).is_file()
    assert not Path("~").exists()


def test_a_file_path_is_a_bt_error_not_file_exists(tmp_path: Path) -> None:
    f = tmp_path / "data.csv"
    f.write_text("a,b\n")
    for kwargs in ({}, {"read_only": True}):
        with pytest.raises(bt.BtError) as exc:
            bt.open(f, **kwargs)
        assert str(exc.value) == f"{str(f)!r} is a file, not a folder: a store is a folder. Fix: choose another path."
    assert f.read_text() == "a,b\n"


# -- 2. completeness: the manifest, and stores written before it --------------------------------------------------


def _legacy_rows() -> pl.DataFrame:
    """The rows tests/fixtures/make_legacy_store.py appended to 'orders', in order."""
    sizes = [40, 40, 40, 40, 250, 30, 20]
    starts = np.cumsum([0, *sizes[:-1]])
    return pl.concat([make_orders(n, start=int(s)) for n, s in zip(sizes, starts, strict=True)])


def test_a_store_written_before_the_manifest_opens_upgrades_and_keeps_every_row(tmp_path: Path) -> None:
    root = tmp_path / "old"
    shutil.copytree(FIXTURE, root)
    assert not (root / layout.STORE_MARKER).exists()
    with bt.open(root, read_only=True) as reader:  # a reader reads it as it is, writing nothing
        before = listing(root)
        assert_frame_equal(reader["orders"].scan().collect(), _legacy_rows())
        assert reader["orders"].recovery.upgraded
    assert listing(root) == before
    with bt.open(root) as s:
        assert s.upgraded
        t = s["orders"]
        assert t.recovery.upgraded
        assert "upgraded: manifest built from the files" in t.recovery.summary()
        assert_frame_equal(t.scan().collect(), _legacy_rows())
        assert t.blocks["first_lsn"].to_list() == [1, 3, 5, 5, 5]
        assert (t.cold_rows, t.hot_rows) == (410, 50)
        assert_frame_equal(s["notes"].scan().collect(), pl.DataFrame({"k": [1, 2, 3], "text": ["a", "b", None]}))
        t.append(make_orders(5, start=460))
    assert (root / layout.STORE_MARKER).is_file()
    assert mf.list_versions(root / "orders")[0] == 1
    with bt.open(root) as s:  # upgraded once: the second open reads the manifest
        t = s["orders"]
        assert not t.recovery.upgraded
        assert_frame_equal(t.scan().collect(), pl.concat([_legacy_rows(), make_orders(5, start=460)]))
        assert s.verify().ok


def test_an_upgrade_interrupted_before_its_rename_is_redone(tmp_path: Path) -> None:
    root = tmp_path / "old"
    shutil.copytree(FIXTURE, root)
    half = root / "orders" / f"{mf.MANIFEST_DIR}.upgrade.tmp"
    half.mkdir()
    (half / mf.version_name(1)).write_text("{half written")
    with bt.open(root) as s:
        assert s["orders"].recovery.upgraded
        assert_frame_equal(s["orders"].scan().collect(), _legacy_rows())
    assert not half.exists()


def test_one_missing_block_of_five_is_corruption_and_deletes_nothing(tmp_path: Path) -> None:
    """Regression: the table showed 0 rows, verify() said OK, and opening deleted the other four files."""
    root = tmp_path / "db"
    with bt.open(root) as s:
        t = s.create_table("orders", ORDERS_SCHEMA, time_column="ts", max_block_rows=100)
        t.append(make_orders(500))  # one large append: five parts of one LSN
    blocks = sorted((root / "orders" / layout.BLOCKS_DIR).glob("*.parquet"))
    assert len(blocks) == 5
    blocks[2].unlink()
    before = _files(root)
    for kwargs in ({}, {"read_only": True}):
        with bt.open(root, **kwargs) as s, pytest.raises(bt.CorruptionError) as exc:
            s["orders"]
        assert exc.value.path == blocks[2]
        assert "LSN 1 (100 rows) are lost unless it is restored" in str(exc.value)
    assert _files(root) == before
    with bt.open(root, read_only=True) as s:
        report = s.verify()
    assert not report.ok
    assert blocks[2] in [p.path for p in report.problems]


def test_a_missing_wal_segment_is_corruption_naming_its_lsns(tmp_path: Path) -> None:
    root = tmp_path / "db"
    with bt.open(root) as s:
        t = s.create_table("t", {"x": pl.Int64})
        for i in range(3):
            t.append(pl.DataFrame({"x": [i]}))
    (seg,) = (root / "t" / layout.WAL_DIR).iterdir()
    seg.unlink()
    with bt.open(root) as s, pytest.raises(bt.CorruptionError) as exc:
        s["t"]
    assert exc.value.path == seg
    assert "WAL segment named by manifest version" in str(exc.value)
    assert "(LSNs from 1 on) are lost unless it is restored" in str(exc.value)


# -- 4. append owns its data --------------------------------------------------------------------------------------


@pytest.mark.parametrize("flush", [False, True])
def test_changing_the_callers_arrays_after_append_changes_nothing(store: bt.BacktraceStore, flush: bool) -> None:
    """Regression: a frame built on numpy arrays was kept as a shallow clone; later writes to the arrays
    showed up in scans and, after a freeze, in the block (while the WAL held the original)."""
    t = store.create_table("t", {"x": pl.Int64, "y": pl.Float64}, max_block_rows=1_000)
    xs, ys = np.arange(10, dtype=np.int64), np.linspace(0, 1, 10)
    df = pl.DataFrame({"x": xs, "y": ys})
    t.append(df)
    expected = pl.DataFrame({"x": np.arange(10, dtype=np.int64), "y": np.linspace(0, 1, 10)})
    xs[:] = -1
    ys[:] = np.nan
    if flush:
        t.flush()
    assert_frame_equal(t.scan().collect(), expected)
    store.close()
    with bt.open(store.path) as again:
        assert_frame_equal(again["t"].scan().collect(), expected)


# -- 5. append returns <=> committed ------------------------------------------------------------------------------


class _FailCreate(fs.FileSystem):
    """Every file creation fails with ENOSPC (a full disk), everything else works."""

    def __init__(self) -> None:
        self.failed = 0

    def open(self, path: fs.StrPath, flags: int, mode: int = 0o644) -> int:
        if flags & os.O_CREAT:
            self.failed += 1
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return super().open(path, flags, mode)


def test_a_full_disk_after_the_commit_point_never_raises_and_heals(store: bt.BacktraceStore) -> None:
    """Regression: ENOSPC while rotating the WAL (after the record's fsync) raised from append, so a retry
    duplicated rows, and left the writer's fd at -1 so that every later append failed."""
    t = store.create_table("orders", ORDERS_SCHEMA, time_column="ts", max_block_rows=100)
    data = make_orders(600)
    t.append(data.slice(0, 60))
    disk = _FailCreate()
    with fs.use(disk):
        for start in range(60, 300, 60):  # crossing max_block_rows: a rotation and a block write, both failing
            assert t.append(data.slice(start, 60)) is not None
        assert disk.failed > 0
        assert not t.health.ok
        assert "No space left on device" in str(t.health)
        assert "\n  health: " in repr(t)
        assert t.health.pending_rows == 300  # every row is past max_block_rows, waiting for a block
        assert_frame_equal(t.scan().collect(), data.head(300))  # every acknowledged row, once
    for start in range(300, 600, 60):  # space again: the table heals by itself
        t.append(data.slice(start, 60))
    t.flush()
    assert t.health.ok
    assert_frame_equal(t.scan().collect(), data)
    store.close()
    with bt.open(store.path) as again:
        assert_frame_equal(again["orders"].scan().collect(), data)
        assert again.verify().ok


# -- 8. a full disk never makes a table impossible to open -------------------------------------------------------


def test_opening_a_large_wal_on_a_full_disk_succeeds_with_the_rows_hot(tmp_path: Path) -> None:
    """Regression: opening froze a large WAL synchronously and rewrote the stats cache unguarded, so a
    full disk made the table impossible to open as a writer."""
    root = tmp_path / "db"
    data = make_orders(300)
    live = tmp_path / "live"
    with bt.open(live) as s:
        t = s.create_table("orders", ORDERS_SCHEMA, time_column="ts", max_block_rows=1_000)
        for start in range(0, 300, 30):
            t.append(data.slice(start, 30))
        shutil.copytree(live, root, ignore=shutil.ignore_patterns(layout.LOCK_NAME))  # a writer killed now
    (root / "orders" / layout.STATS_CACHE).unlink(missing_ok=True)
    meta_path = root / "orders" / layout.TABLE_JSON  # a smaller max_block_rows: the WAL is over the threshold
    meta = catalog.TableMeta.load(meta_path)
    meta.max_block_rows = 100
    meta_path.write_text(meta.to_json())
    disk = _FailCreate()
    with fs.use(disk), bt.open(root) as s:
        t = s["orders"]
        assert_frame_equal(t.scan().collect(), data)
        assert disk.failed > 0
    assert not [p for p in root.rglob("*") if layout.is_tmp(p.name)], "a temp file was left behind"
    with bt.open(root) as s:
        assert_frame_equal(s["orders"].scan().collect(), data)


# -- 9. table() racing close() ---------------------------------------------------------------------------------


def test_table_racing_close_never_opens_a_table_after_the_lock_is_released(tmp_path: Path) -> None:
    """Regression: store.table() checked "open" before taking the store's lock, so a table could be opened
    after close() released the writer lock, letting a second writer in."""
    root = tmp_path / "db"
    with bt.open(root) as s:
        for i in range(8):
            s.create_table(f"t{i}", {"x": pl.Int64}).append(pl.DataFrame({"x": [i]}))
    for _round in range(20):
        s = bt.open(root)
        opened: list[bt.Table] = []
        errors: list[BaseException] = []

        def open_all(
            store: bt.BacktraceStore = s, opened: list[bt.Table] = opened, errors: list[BaseException] = errors
        ) -> None:
            for i in range(8):
                try:
                    opened.append(store.table(f"t{i}"))
                except bt.StoreClosedError as e:
                    errors.append(e)

        th = threading.Thread(target=open_all)
        th.start()
        s.close()
        th.join()
        assert all(t._closed for t in opened), "a table was opened after the store closed"
        assert len(opened) + len(errors) == 8
    with bt.open(root) as s:
        assert [s[f"t{i}"].rows for i in range(8)] == [1] * 8


def test_close_closes_every_table_even_if_one_fails(tmp_path: Path) -> None:
    root = tmp_path / "db"
    s = bt.open(root)
    a = s.create_table("a", {"x": pl.Int64})
    b = s.create_table("b", {"x": pl.Int64})

    def broken_close() -> None:
        raise OSError(errno.EIO, "Input/output error")

    a.close = broken_close  # type: ignore[method-assign]
    with pytest.raises(OSError, match="Input/output error"):
        s.close()
    assert b._closed
    with bt.open(root) as again:  # the lock was released
        assert again.tables == ["a", "b"]


# -- 11. scans are linear in hot chunks --------------------------------------------------------------------------


def test_many_one_row_appends_leave_few_hot_chunks(store: bt.BacktraceStore) -> None:
    """Regression: one chunk per append and one LazyFrame per chunk made scans quadratic (20,000 one-row
    appends, then select(pl.len()): 71 s). Chunks are consolidated as they arrive."""
    t = store.create_table("t", {"x": pl.Int64}, max_block_rows=1_000_000)
    n = 5_000
    for i in range(n):
        t.append(pl.DataFrame({"x": [i]}))
    chunks = len(t.snapshot().hot)
    assert chunks <= hot.FANOUT * 4, chunks  # O(FANOUT * log_FANOUT n), not n
    assert t.scan().select(pl.len()).collect().item() == n
    assert_frame_equal(t.scan().collect(), pl.DataFrame({"x": range(n)}, schema={"x": pl.Int64}))
    store.close()
    with bt.open(store.path) as again:  # replay consolidates too
        assert len(again["t"].snapshot().hot) <= hot.FANOUT * 4
        assert again["t"].rows == n


# -- found by the adversarial review of this change -----------------------------------------------------------


class _SlowBlockWriter(fs.FileSystem):
    """The block writer's fsyncs take a while (a slow disk): waits on it release the table's lock."""

    def fsync(self, fd: int) -> None:
        if threading.current_thread().name.startswith("bt_frames-freeze"):
            time.sleep(0.4)
        super().fsync(fd)


@pytest.mark.parametrize("kind", ["large", "small"])
def test_an_append_waiting_for_the_block_writer_never_commits_after_close(tmp_path: Path, kind: str) -> None:
    """An append that waited for the block writer (which releases the lock) while another thread closed the
    store resumed and committed after the close; a new writer's append at the same LSN was then lost."""
    root = tmp_path / "db"
    with fs.use(_SlowBlockWriter()):
        s = bt.open(root)
        t = s.create_table("t", {"x": pl.Int64}, max_block_rows=10)
        t.append(pl.DataFrame({"x": list(range(9))}))
        t.append(pl.DataFrame({"x": [100, 101]}))  # 11 hot rows: handed to the (slow) block writer
        result: dict[str, object] = {}

        def append() -> None:
            try:
                if kind == "large":
                    result["lsn"] = t.append(pl.DataFrame({"x": list(range(25))}))
                else:
                    for i in range(12):  # back-pressure waits for the writer
                        t.append(pl.DataFrame({"x": [i] * 4}))
                    result["lsn"] = "all"
            except bt.BtError as e:
                result["error"] = e

        closer = threading.Thread(target=s.close)
        closer.start()
        time.sleep(0.1)
        appender = threading.Thread(target=append)
        appender.start()
        closer.join()
        appender.join()
    versions = sorted((root / "t" / mf.MANIFEST_DIR).iterdir())
    last = json.loads(versions[-1].read_text())["operation"]
    assert last == "close", f"a version was committed after the close: {last}"
    with bt.open(root) as again:
        rows = again["t"].rows
        again["t"].append(pl.DataFrame({"x": [777]}))
    with bt.open(root) as again:
        assert again["t"].rows == rows + 1
        assert 777 in again["t"].scan().collect()["x"].to_list()
    if "error" in result:
        assert isinstance(result["error"], bt.StoreClosedError)


class _NoBlocks(fs.FileSystem):
    """Creating any file in a blocks/ folder fails (a full disk for blocks only): the WAL keeps segments."""

    def open(self, path: fs.StrPath, flags: int, mode: int = 0o644) -> int:
        if flags & os.O_CREAT and Path(path).parent.name == layout.BLOCKS_DIR:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return super().open(path, flags, mode)


def test_a_gap_at_the_end_of_a_non_last_wal_segment_is_corruption(tmp_path: Path) -> None:
    """Records cut off the end of a segment that is not the last one are acknowledged appends, not a torn
    tail: recovery accepted the gap and opened the table with fewer rows."""
    from tests.helpers import faults

    root = tmp_path / "db"
    with fs.use(_NoBlocks()), bt.open(root) as s:
        t = s.create_table("t", {"x": pl.Int64}, max_block_rows=3)
        for i in range(5):  # the fourth append rotates the WAL: segment 1 holds LSNs 1-3, segment 4 the rest
            t.append(pl.DataFrame({"x": [i]}))
        assert not t.health.ok
        segs = sorted((root / "t" / layout.WAL_DIR).iterdir())
    assert [p.name for p in segs][:2] == [layout.wal_name(1), layout.wal_name(4)]
    last = faults.record_offsets(segs[0])[-1]
    faults.truncate_to(segs[0], last.offset)  # LSN 3 is gone
    before = _files(root)
    with bt.open(root) as s, pytest.raises(bt.CorruptionError) as exc:
        s["t"]
    assert exc.value.path == segs[1]
    assert "LSN 3 are in no block and no WAL record before this segment" in str(exc.value)
    assert _files(root) == before


def test_a_foreign_tmp_file_makes_a_folder_foreign_not_empty(tmp_path: Path) -> None:
    """A folder holding only a user's '.report.2024.tmp' was taken for an empty store and the file deleted."""
    d = tmp_path / "reports"
    d.mkdir()
    (d / ".report.2024.tmp").write_text("mine")
    with pytest.raises(bt.BtError, match="is not a bt_frames store and is not empty"):
        bt.open(d)
    assert (d / ".report.2024.tmp").read_text() == "mine"


def test_a_segment_removed_and_added_in_one_version_stays_named() -> None:
    state = mf.State(wal=[5]).apply(mf.Edit("recover", wal_remove=[5], wal_add=[5]), 2, "t")
    assert state.wal == [5]


def test_counts_on_blocks_written_before_value_counts_read_the_blocks(tmp_path: Path) -> None:
    """Blocks of stats v1 have distinct sets and no counts: a count reads them (it crashed in review)."""
    import shutil

    shutil.copytree(Path(__file__).parent / "fixtures" / "legacy_store_e9cdd8c", tmp_path / "db")
    with bt.open(tmp_path / "db") as store:
        t = store["orders"]
        full = t.scan(prune=False).collect()
        for p in [pl.col("symbol") == "ADA", pl.col("qty") > 500, pl.col("symbol").is_in(["ADA", "BTC"])]:
            assert t.scan().filter(p).select(pl.len()).collect().item() == full.filter(p).height
            assert "verdicts:" in repr(t.prune(p))
            assert t.prune(p).to_frame().height == len(t.snapshot().blocks)
