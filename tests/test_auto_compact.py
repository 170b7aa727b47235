"""Auto-compaction (bt_frames/_compactor.py): small flushes end in few blocks, and nothing else notices.

Each test compares the table with the model: the plain Polars concatenation of
what was acknowledged. Fault injection goes through the ``bt_frames.storage.fs``
seam (tests/helpers/faultfs.py); the crash test SIGKILLs a real child process.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

import bt_frames as bt
from bt_frames.storage import compaction, fs
from tests.conftest import ORDERS_SCHEMA, make_orders


class _NoSync(fs.FileSystem):
    """No fsync: these tests count blocks, not durability (10,000 flushes fsync'ed take minutes)."""

    def fsync(self, fd: int) -> None:
        pass

    def fdatasync(self, fd: int) -> None:
        pass

    def fsync_dir(self, path: fs.StrPath) -> None:
        pass


class _FailMerges(fs.FileSystem):
    """ENOSPC for every block written by the auto-compaction thread while ``on``."""

    def __init__(self) -> None:
        self.on = True
        self.failed = 0

    def open(self, path: fs.StrPath, flags: int, mode: int = 0o644) -> int:
        if self.on and threading.current_thread().name.startswith("bt_frames-compact") and flags & os.O_CREAT:
            self.failed += 1
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.fspath(path))
        return super().open(path, flags, mode)


@pytest.fixture
def nosync() -> Iterator[None]:
    with fs.use(_NoSync()):
        yield


def _flushes(t: bt.Table, n: int, rows: int = 10, start: int = 0) -> list[pl.DataFrame]:
    frames = []
    for i in range(start, start + n):
        f = make_orders(rows, start=i * rows)
        t.append(f)
        t.flush()
        frames.append(f)
    return frames


def _check_rewrites(t: bt.Table, rows: int) -> None:
    """Fewer than 50 live blocks; the rows and bytes of the merged blocks under 3x the data."""
    t._wait_compacted()
    stats = t.compaction
    assert t.blocks.height < 50, t.blocks.height
    assert stats.rows_rewritten < 3 * rows, stats
    v = t.versions
    auto = v.filter(pl.col("operation") == "compact")
    assert auto.height == stats.merges
    flushed_bytes = sum(b.bytes for b in _published(t))
    assert stats.bytes_rewritten < 3 * flushed_bytes


def _published(t: bt.Table) -> list[object]:
    from bt_frames.storage import manifest as mf

    out = []
    for edit, _state in mf.history(t.path):
        if edit.operation == "publish":
            out += edit.add
    return out


def test_many_small_flushes_leave_few_blocks(store_path: Path, nosync: None) -> None:
    with bt.open(store_path, durability="none") as s:
        t = s.create_table("orders", ORDERS_SCHEMA, time_column="ts", max_block_rows=100_000)
        assert t.auto_compact
        frames = _flushes(t, 600)
        _check_rewrites(t, 6_000)
        assert t.compaction.merges >= 600 // compaction.FANOUT
        assert_frame_equal(t.scan().collect(), pl.concat(frames))
    with bt.open(store_path) as s:
        assert_frame_equal(s["orders"].scan().collect(), pl.concat(frames))
        assert s.verify().ok


# Full size (the 10,000 flushes, ~4 min on 2 cores): BT_FRAMES_FLUSHES=10000. CI runs 1,000 on a real
# table (~40 s); the planner's own test simulates the 10,000 (tests/storage/test_compaction_plan.py).
FLUSHES = int(os.environ.get("BT_FRAMES_FLUSHES", "1000"))


@pytest.mark.slow
def test_ten_thousand_small_flushes(store_path: Path, nosync: None) -> None:
    # without the Delta log: it costs ~30-80 ms per flush on CI's 2 cores (tests/test_delta.py tests it)
    with bt.open(store_path, durability="none", delta_log=False) as s:
        t = s.create_table("orders", ORDERS_SCHEMA, time_column="ts", max_block_rows=100_000)
        frames = _flushes(t, FLUSHES)
        _check_rewrites(t, FLUSHES * 10)
        assert_frame_equal(t.scan().collect(), pl.concat(frames))


def test_auto_compact_off_and_set_options(store_path: Path, nosync: None) -> None:
    with bt.open(store_path, durability="none") as s:
        t = s.create_table("orders", ORDERS_SCHEMA, time_column="ts", max_block_rows=100_000, auto_compact=False)
        frames = _flushes(t, 2 * compaction.FANOUT)
        t._wait_compacted()
        assert t.blocks.height == 2 * compaction.FANOUT
        assert t.compaction.merges == 0
        assert not t.compaction.enabled
        t.set_options(auto_compact=True)  # takes effect now: the next plan merges
        t._wait_compacted()
        assert t.blocks.height < 2 * compaction.FANOUT
        assert t.compaction.merges >= 1
        merged = t.compaction.merges
        t.set_options(auto_compact=False)
        frames += _flushes(t, compaction.FANOUT, start=len(frames))
        t._wait_compacted()
        assert t.compaction.merges == merged
        assert_frame_equal(t.scan().collect(), pl.concat(frames))
    with bt.open(store_path) as s:
        assert s["orders"].auto_compact is False


def test_scans_during_background_compaction_equal_the_model(store_path: Path, nosync: None) -> None:
    with bt.open(store_path, durability="none") as s:
        t = s.create_table("orders", ORDERS_SCHEMA, time_column="ts", max_block_rows=100_000)
        acked: list[pl.DataFrame] = []
        lock = threading.Lock()
        stop = threading.Event()
        errors: list[BaseException] = []
        checks = [0]

        def reader() -> None:
            try:
                while not stop.is_set():
                    with lock:
                        before = len(acked)
                    got = t.scan().collect()
                    with lock:
                        after = list(acked)
                    # everything acknowledged before the scan started, in order, nothing else
                    n = got.height
                    want = pl.concat(after) if after else pl.DataFrame(schema=ORDERS_SCHEMA)
                    assert n >= sum(f.height for f in after[:before])
                    assert_frame_equal(got, want.head(n))
                    checks[0] += 1
            except BaseException as e:
                errors.append(e)

        threads = [threading.Thread(target=reader) for _ in range(2)]
        for th in threads:
            th.start()
        try:
            for i in range(300):
                f = make_orders(7, start=i * 7)
                t.append(f)
                with lock:
                    acked.append(f)
                if i % 2:
                    t.flush()
        finally:
            stop.set()
            for th in threads:
                th.join()
        assert not errors, errors[0]
        t._wait_compacted()
        assert t.compaction.merges > 0
        assert checks[0] > 0
        assert_frame_equal(t.scan().collect(), pl.concat(acked))


@pytest.mark.parametrize("op", ["delete", "compact", "update"])
def test_an_operation_racing_a_background_merge_leaves_correct_data(store_path: Path, nosync: None, op: str) -> None:
    with bt.open(store_path, durability="none") as s:
        t = s.create_table("orders", ORDERS_SCHEMA, time_column="ts", max_block_rows=100_000)
        model = pl.concat(_flushes(t, compaction.FANOUT - 1))
        # the next flush makes a run: the background merge races the operation below
        for k in range(5):
            f = make_orders(10, start=(compaction.FANOUT - 1 + k) * 10)
            t.append(f)
            t.flush()
            model = pl.concat([model, f])
            if op == "delete":
                cut = model["ts"][k * 13]
                t.delete(pl.col("ts") == cut)
                model = model.filter(pl.col("ts") != cut)
            elif op == "compact":
                t.compact()
            else:
                new = model.slice(k * 11, 1).with_columns(pl.col("qty") * 0 + k)
                t.update(new)
                ts = new["ts"][0]
                model = model.with_columns(
                    pl.when(pl.col("ts") == ts).then(pl.lit(k, dtype=pl.Int64)).otherwise(pl.col("qty")).alias("qty")
                )
            assert_frame_equal(t.scan().collect(), model)
        t._wait_compacted()
        assert t.compaction.last_error is None
        assert t.health.ok
        assert_frame_equal(t.scan().collect(), model)
    with bt.open(store_path) as s:
        assert_frame_equal(s["orders"].scan().collect(), model)
        assert s.verify().ok


def test_an_io_error_in_a_background_merge_is_reported_not_raised_and_retried(
    store_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bt_frames import _compactor

    monkeypatch.setattr(_compactor, "RETRY_INTERVAL_S", 0.0)
    faults = _FailMerges()
    with bt.open(store_path, durability="none") as s, fs.use(faults):
        t = s.create_table("orders", ORDERS_SCHEMA, time_column="ts", max_block_rows=100_000)
        frames = _flushes(t, compaction.FANOUT)  # appends and flushes never raise
        t._wait_compacted()
        assert faults.failed >= 1
        assert t.compaction.merges == 0
        assert t.compaction.last_error is not None
        assert "No space left" in t.compaction.last_error
        h = t.health
        assert not h.ok
        assert any("auto-compaction" in p for p in h.problems)
        assert t.blocks.height == compaction.FANOUT
        assert not list((t.path / "blocks").glob("*.tmp"))
        faults.on = False
        frames += _flushes(t, 1, start=len(frames))  # the next publish retries
        t._wait_compacted()
        assert t.compaction.merges >= 1
        assert t.compaction.last_error is None
        assert t.health.ok
        assert_frame_equal(t.scan().collect(), pl.concat(frames))


def test_close_waits_for_a_running_merge_and_a_closed_table_never_compacts(store_path: Path) -> None:
    s = bt.open(store_path, durability="none")
    t = s.create_table("orders", ORDERS_SCHEMA, time_column="ts", max_block_rows=100_000)
    frames = _flushes(t, compaction.FANOUT)
    s.close()  # may interrupt the merge; never leaves it half done
    assert not t.compaction.running
    files = sorted(p.name for p in (t.path / "blocks").iterdir())
    t._compactor.kick()
    assert not t.compaction.running
    assert sorted(p.name for p in (t.path / "blocks").iterdir()) == files
    with bt.open(store_path) as s2:
        assert_frame_equal(s2["orders"].scan().collect(), pl.concat(frames))
        assert s2.verify().ok


_CHILD = textwrap.dedent(
    """
    import os, signal, sys, threading
    import bt_frames as bt
    from bt_frames.storage import blocks as blk
    from tests.conftest import ORDERS_SCHEMA, make_orders

    real = blk.write_block
    def write_block(*a, **k):  # a merge dies after writing its block, before its manifest version
        out = real(*a, **k)
        if threading.current_thread().name.startswith("bt_frames-compact") and os.environ.get("DIE") == "after":
            os.kill(os.getpid(), signal.SIGKILL)
        return out
    blk.write_block = write_block
    import bt_frames._compactor as c
    c.blk.write_block = write_block

    s = bt.open(sys.argv[1], durability="fsync")
    t = s.create_table("orders", ORDERS_SCHEMA, time_column="ts", max_block_rows=100_000)
    start = t.rows // 10
    for i in range(start, start + 1000):
        t.append(make_orders(10, start=i * 10))
        print(i, flush=True)
        t.flush()
    """
)


@pytest.mark.parametrize("die", ["after", "random"])
def test_sigkill_during_background_compaction_keeps_every_acknowledged_row_once(
    store_path: Path, tmp_path: Path, die: str
) -> None:
    script = tmp_path / "child.py"
    script.write_text(_CHILD)
    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": root, "BT_FRAMES_PROGRESS": "0", "DIE": die}
    acked = -1
    for rnd in range(3):
        with subprocess.Popen(
            [sys.executable, str(script), str(store_path)], stdout=subprocess.PIPE, env=env, cwd=root
        ) as proc:
            assert proc.stdout is not None
            for lines, raw in enumerate(proc.stdout, 1):
                if not raw.endswith(b"\n"):
                    break
                acked = int(raw)
                if die == "random" and lines == 40 + 17 * rnd:  # merges run all the time: kill somewhere
                    proc.send_signal(signal.SIGKILL)
            proc.wait()
        assert proc.returncode == -signal.SIGKILL
        with bt.open(store_path) as s:
            got = s["orders"].scan().collect()
            n = got.height // 10
            assert n in (acked + 1, acked + 2)  # every acknowledged append, perhaps the one in flight
            assert_frame_equal(got, pl.concat([make_orders(10, start=i * 10) for i in range(n)]))
            assert s.verify().ok
