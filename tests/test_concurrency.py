"""Housekeeping never breaks a reader: scans run while the writer appends, flushes and compacts.

Contract: blocks retired by a compaction outlive every reader that can still
reference them. Scans in the writer's process pin their snapshot's blocks
before the table lock is released; retired files are kept for the store's
``retired_grace``; a read-only reader (another process) whose block was
deleted anyway refreshes and restarts once, transparently.

Every stress table holds rows ``id = 0, 1, 2, ...`` appended in order in
batches of random sizes (``v = id / 2`` to catch mixed-up columns), so a
correct scan returns exactly ``id = 0..k-1`` where ``k`` is the total after
some whole append: one the writer had acknowledged before the scan started at
the least, and at most one it had started before the scan ended (an append is
committed, and visible, a moment before its call returns).

The stress tests are ``slow``; each runs ``STRESS_S`` seconds (about 12 s, so
the file takes about 40 s in CI); ``BT_FRAMES_STRESS_FULL=1`` makes it 120 s,
``BT_FRAMES_STRESS_SECONDS`` sets it.
"""

from __future__ import annotations

import bisect
import datetime as dt
import json
import logging
import os
import random
import subprocess
import sys
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

import bt_frames as bt
from bt_frames import _scan
from tests.conftest import MACHINERY_REPORT
from tests.helpers.conc_reader import check_prefix

SCHEMA = {"id": pl.Int64, "v": pl.Float64}
READER = Path(__file__).parent / "helpers" / "conc_reader.py"
STRESS_S = float(os.environ.get("BT_FRAMES_STRESS_SECONDS") or (120 if os.environ.get("BT_FRAMES_STRESS_FULL") else 12))


def rows(start: int, n: int) -> pl.DataFrame:
    ids = np.arange(start, start + n, dtype=np.int64)
    return pl.DataFrame({"id": ids, "v": ids / 2}, schema=SCHEMA)


def _fill(store: bt.BacktraceStore, n: int = 5_000, step: int = 250) -> tuple[bt.Table, pl.DataFrame]:
    t = store.create_table("t", SCHEMA, max_block_rows=1_000, keep_versions=dt.timedelta(0))
    for start in range(0, n, step):
        t.append(rows(start, step))
    t.flush()
    return t, rows(0, n)


# -- regressions ---------------------------------------------------------------


def test_snapshot_taken_just_before_a_compaction_still_reads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The old race, in one process: the scan takes its snapshot, a compaction retires and (grace 0)
    deletes its blocks, then the scan reads them. The snapshot's pins keep the files until the read ends."""
    with bt.open(tmp_path / "db", retired_grace=0) as store:
        t, data = _fill(store)
        old = [b.path for b in t.snapshot().blocks]
        assert len(old) == 5
        plan = _scan._prune.plan
        compacted: list[bt.CompactResult] = []

        def compact_then_plan(*args: object, **kwargs: object) -> object:
            if not compacted:  # between _snapshot(pin=True) and the first read
                compacted.append(t.compact(target_rows=10_000, min_rows=5_000))
                assert all(p.exists() for p in old), "a compaction deleted blocks a started scan will read"
            return plan(*args, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(_scan._prune, "plan", compact_then_plan)
        assert_frame_equal(t.scan().collect(), data)
        assert compacted[0].blocks_after == 1
        assert not any(p.exists() for p in old), "retired blocks outlived the scan that pinned them"
        monkeypatch.undo()
        assert_frame_equal(t.scan().collect(), data)


def test_lazyframe_built_before_a_compaction_reads_after_it(tmp_path: Path) -> None:
    with bt.open(tmp_path / "db", retired_grace=0) as store:
        t, data = _fill(store)
        lf = t.scan().filter(pl.col("id") >= 10)
        t.compact(target_rows=10_000, min_rows=5_000)
        assert_frame_equal(lf.collect(), data.filter(pl.col("id") >= 10))


READS: dict[str, Callable[[bt.Table], pl.DataFrame]] = {
    "collect": lambda t: t.scan().collect(),
    "filter": lambda t: t.scan(where=pl.col("id") >= 4_000).collect(),
    "len_where": lambda t: t.scan().filter(pl.col("id") >= 10).select(pl.len()).collect(),  # reads column id
    "iter_batches": lambda t: pl.concat(list(t.iter_batches(batch_size=300))),
    "row_index": lambda t: t.scan().with_row_index().select("index").collect(),
    "head": lambda t: t.scan().head(10).collect(),
}


@pytest.mark.parametrize("kind", sorted(READS))
def test_read_only_reader_refreshes_once_when_its_blocks_were_compacted_away(
    tmp_path: Path, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The writer (another store object: as good as another process) compacts with retired_grace=0, so the
    reader's blocks are deleted at once; its next scan refreshes and reads the new blocks transparently."""
    with bt.open(tmp_path / "db", retired_grace=0) as writer, bt.open(tmp_path / "db", read_only=True) as ro:
        t, _data = _fill(writer)
        rt = ro["t"]
        old = [b.path for b in rt.snapshot().blocks]
        t.append(rows(5_000, 100))  # hot in the writer: the reader sees it only after a refresh
        t.compact(target_rows=10_000, min_rows=5_000)
        assert not any(p.exists() for p in old)
        with caplog.at_level(logging.INFO, logger="bt_frames"):
            got = READS[kind](rt)
        assert "refreshing and reading again" in caplog.text
        expected = READS[kind](t)
        assert_frame_equal(got, expected)
        if kind == "collect":
            assert_frame_equal(got, rows(0, 5_100))  # the refresh also brought the newer append
        assert [b.path for b in rt.snapshot().blocks] == [b.path for b in t.snapshot().blocks]


def test_a_count_answered_from_statistics_needs_no_file_and_no_refresh(tmp_path: Path) -> None:
    """select(pl.len()) reads no block, so the files the writer deleted do not matter: the count is the
    reader's snapshot's (as of opening, like every read-only read before a refresh)."""
    with bt.open(tmp_path / "db", retired_grace=0) as writer, bt.open(tmp_path / "db", read_only=True) as ro:
        t, data = _fill(writer)
        rt = ro["t"]
        old = [b.path for b in rt.snapshot().blocks]
        t.append(rows(5_000, 100))
        t.compact(target_rows=10_000, min_rows=5_000)
        assert not any(p.exists() for p in old)
        assert rt.scan().select(pl.len()).collect().item() == data.height  # no refresh: its own snapshot
        assert rt.last_read is not None
        assert rt.last_read.blocks_from_metadata == len(old)
        assert [b.path for b in rt.snapshot().blocks] == old
        rt.refresh()
        assert rt.scan().select(pl.len()).collect().item() == data.height + 100
    assert data.height == 5_000


def test_read_only_reader_raises_corruption_when_the_block_is_still_missing_after_the_refresh(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with bt.open(tmp_path / "db", retired_grace=0) as writer, bt.open(tmp_path / "db", read_only=True) as ro:
        t, _ = _fill(writer)
        rt = ro["t"]
        t.compact(target_rows=10_000, min_rows=5_000)
        refreshes: list[None] = []
        monkeypatch.setattr(rt, "refresh", lambda: refreshes.append(None))  # a refresh that sees nothing new
        with pytest.raises(bt.CorruptionError, match="block file is missing"):
            rt.scan().collect()
        assert len(refreshes) == 1, "retried more than once"


def test_read_only_reader_restarts_again_when_the_writer_deletes_the_refreshed_blocks_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With retired_grace=0 the writer can delete the refreshed snapshot's blocks before the restarted read
    opens them: a different block is missing, so the refresh did its job and the read restarts once more."""
    with bt.open(tmp_path / "db", retired_grace=0) as writer, bt.open(tmp_path / "db", read_only=True) as ro:
        t, _ = _fill(writer)
        rt = ro["t"]
        t.compact(target_rows=10_000, min_rows=5_000)
        refresh = rt.refresh
        calls: list[None] = []

        def refresh_then_writer_compacts_again() -> None:
            refresh()
            calls.append(None)
            if len(calls) == 1:  # the writer moves on between our refresh and our read
                t.append(rows(5_000, 100))
                t.flush()
                assert t.compact(target_rows=10_000, min_rows=6_000).merges == 1  # the block just loaded: gone

        monkeypatch.setattr(rt, "refresh", refresh_then_writer_compacts_again)
        assert_frame_equal(rt.scan().collect(), rows(0, 5_100))
        assert len(calls) == 2


def test_read_only_read_that_already_returned_rows_asks_for_a_retry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A block deleted after the read returned rows: restarting would return them twice, so it says to retry."""
    monkeypatch.setattr(_scan, "EAGER_ROWS", 0)  # stream...
    monkeypatch.setattr(_scan, "GROUP_ROWS", 1)  # ...one block at a time, each opened when reached
    monkeypatch.setattr(_scan.blk, "is_verified", lambda path: False)  # (as blocks not yet verified are)
    with bt.open(tmp_path / "db", retired_grace=0) as writer, bt.open(tmp_path / "db", read_only=True) as ro:
        t, data = _fill(writer)
        rt = ro["t"]
        it = rt.iter_batches(batch_size=100)
        first = next(it)
        check_prefix(first)
        t.compact(target_rows=10_000, min_rows=5_000)
        with pytest.raises(bt.BtError, match="Retry the read") as e:
            list(it)
        assert not isinstance(e.value, bt.CorruptionError)
        assert_frame_equal(pl.concat(list(rt.iter_batches(batch_size=100))), data)  # the retry works


def test_writer_process_reads_never_refresh(tmp_path: Path) -> None:
    """In the writer's process pins, not refreshes, keep the files: a scan there is never restarted."""
    with bt.open(tmp_path / "db", retired_grace=0) as store:
        t, data = _fill(store)
        it = t.iter_batches(batch_size=100)
        next(it)
        t.compact(target_rows=10_000, min_rows=5_000)
        assert sum(b.height for b in it) == data.height - 100


# -- stress: threads of the writer's process -------------------------------------


class Acks:
    """The writer's running totals: ``started`` (before each append call) and ``acked`` (after it returned)."""

    def __init__(self) -> None:
        self.started: list[int] = [0]
        self.acked = 0

    def check(self, what: str, n: int, lo: int, hi: int, count: Callable[[int], int] = lambda k: k) -> None:
        """``n`` (``count(k)`` for the total ``k`` seen) must fit an append total ``k`` with ``lo <= k <= hi``."""
        i, j = bisect.bisect_left(self.started, lo), bisect.bisect_right(self.started, hi)
        if not any(count(k) == n for k in self.started[i:j]):
            raise AssertionError(f"{what}: saw {n}, which fits no append total in [{lo}, {hi}]")


def _scan_loop(
    t: bt.Table, acks: Acks, stop: threading.Event, seed: int, stats: Counter[str], errors: list[str]
) -> None:
    rng = random.Random(seed)
    while not stop.is_set():
        kind = rng.choice(["full", "mod3", "len", "partial", "head", "where"])
        lo = acks.acked
        try:
            if kind == "full":
                df = t.scan().collect()
                check_prefix(df)
                acks.check(kind, df.height, lo, acks.started[-1])
            elif kind == "mod3":
                df = t.scan().filter(pl.col("id") % 3 == 0).collect()
                assert np.array_equal(df["id"].to_numpy(), np.arange(0, 3 * df.height, 3)), "not 0, 3, 6, ..."
                acks.check(kind, df.height, lo, acks.started[-1], lambda k: (k + 2) // 3)
            elif kind == "len":
                n = int(t.scan().select(pl.len()).collect().item())
                acks.check(kind, n, lo, acks.started[-1])
            elif kind == "head":
                df = t.scan().head(500).collect()
                check_prefix(df)
                acks.check(kind, df.height, lo, acks.started[-1], lambda k: min(k, 500))
            elif kind == "where":
                first = lo // 2
                df = t.scan(where=pl.col("id") >= first).select("id").collect()
                ids = df["id"].to_numpy()
                assert np.array_equal(ids, np.arange(first, first + len(ids))), "not a contiguous range"
                acks.check(kind, len(ids) + first, lo, acks.started[-1])
            else:
                it = t.iter_batches(batch_size=rng.choice([64, 700, 5_000]))
                seen = 0
                for batch in it:
                    check_prefix(batch, seen)
                    seen += batch.height
                    if rng.random() < 0.3:
                        break
                    time.sleep(rng.choice([0, 0.001]))  # the writer compacts meanwhile
                if rng.random() < 0.5:
                    it.close()
                del it  # the other half is abandoned half-read
                assert seen <= acks.started[-1]
            stats[kind] += 1
        except Exception:
            errors.append(f"{kind}: {traceback.format_exc()}")


def _write_loop(t: bt.Table, acks: Acks, seconds: float, seed: int) -> Counter[str]:
    rng = random.Random(seed)
    ops: Counter[str] = Counter()
    total = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        n = 2_500 if rng.random() < 0.02 else rng.randint(1, 300)  # now and then straight to blocks, in parts
        acks.started.append(total + n)
        t.append(rows(total, n))
        total += n
        acks.acked = total
        ops["append"] += 1
        r = rng.random()
        if r < 0.1:
            t.flush()
            ops["flush"] += 1
        elif r < 0.2:
            res = t.compact(target_rows=40_000, min_rows=20_000)
            ops["compact"] += 1
            ops["merges"] += res.merges
    return ops


@pytest.mark.slow
@pytest.mark.parametrize("grace", [60, 0])
def test_scans_in_threads_while_the_writer_appends_flushes_and_compacts(tmp_path: Path, grace: float) -> None:
    with bt.open(tmp_path / "db", retired_grace=grace, durability="none") as store:
        t = store.create_table("t", SCHEMA, max_block_rows=1_000, keep_versions=dt.timedelta(0))
        acks = Acks()
        stop = threading.Event()
        stats: Counter[str] = Counter()
        errors: list[str] = []
        threads = [
            threading.Thread(target=_scan_loop, args=(t, acks, stop, i, stats, errors), daemon=True) for i in range(4)
        ]
        for th in threads:
            th.start()
        try:
            ops = _write_loop(t, acks, STRESS_S / 2, seed=grace)
        finally:
            stop.set()
            for th in threads:
                th.join(60)
        assert not any(th.is_alive() for th in threads)
        check_prefix(t.scan().collect())
        assert t.rows == acks.acked
        line = (f"in-process, retired_grace={grace}: {sum(stats.values())} scans {dict(stats)}, "
                f"{len(errors)} failed; writer {dict(ops)}, {acks.acked:,} rows")  # fmt: skip
        print("\n" + line)
        MACHINERY_REPORT.append(line)
        assert not errors, f"{len(errors)} of {sum(stats.values()) + len(errors)} scans failed:\n" + "\n".join(
            errors[:3]
        )
        assert ops["merges"] > 0
        assert sum(stats.values()) > 100
    with bt.open(tmp_path / "db") as again:  # and the files left behind make a clean table
        check_prefix(again["t"].scan().collect())
        assert again["t"].rows == acks.acked


# -- stress: read-only readers in other processes -------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("grace", [2.0, 0.0])
def test_read_only_processes_scan_while_the_writer_compacts(tmp_path: Path, grace: float) -> None:
    """Readers in other processes refresh and scan while the writer appends, flushes and compacts.

    With a grace period longer than a read (2 s here; 60 s by default) no scan may fail. With none (0 s,
    the worst case: retired blocks vanish under the readers) a reader refreshes and restarts by itself,
    but the writer can delete even the refreshed blocks before they are read, again and again; then the
    read fails with a clear BtError (measured: 3 of 1,541 scans in 120 s) -- never with wrong rows.
    """
    path = tmp_path / "db"
    stop = tmp_path / "stop"
    started: list[tuple[float, int]] = [(0.0, 0)]  # (monotonic time before the append call, total after it)
    acked: list[tuple[float, int]] = [(0.0, 0)]  # (monotonic time after it returned, total)
    with bt.open(path, retired_grace=grace, durability="none") as store:
        t = store.create_table("t", SCHEMA, max_block_rows=1_000, keep_versions=dt.timedelta(0))
        t.append(rows(0, 10))
        t.flush()
        started.append((time.monotonic(), 10))
        acked.append((time.monotonic(), 10))
        root = str(Path(__file__).resolve().parents[1])  # the children import this checkout's bt_frames
        env = {
            **os.environ,
            "BT_FRAMES_PROGRESS": "0",
            "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]),
        }
        outs = [tmp_path / f"reader{i}.jsonl" for i in range(3)]
        procs = []
        for i, out in enumerate(outs):
            with open(out, "wb") as f, open(tmp_path / f"reader{i}.err", "wb") as err:
                procs.append(
                    subprocess.Popen(
                        [sys.executable, str(READER), str(path), "t", str(stop), str(i)], stdout=f, stderr=err, env=env
                    )
                )
        rng = random.Random(7)
        total = 10
        ops: Counter[str] = Counter()
        try:
            deadline = time.monotonic() + STRESS_S
            while time.monotonic() < deadline:
                n = 2_500 if rng.random() < 0.02 else rng.randint(1, 300)
                started.append((time.monotonic(), total + n))
                t.append(rows(total, n))
                total += n
                acked.append((time.monotonic(), total))
                ops["append"] += 1
                r = rng.random()
                if r < 0.15:
                    t.flush()
                    ops["flush"] += 1
                elif r < 0.3:
                    ops["merges"] += t.compact(target_rows=40_000, min_rows=20_000).merges
                    ops["compact"] += 1
                if any(p.poll() is not None for p in procs):
                    break
        finally:
            stop.touch()
            codes = [p.wait(120) for p in procs]
    errs = [(tmp_path / f"reader{i}.err").read_text(errors="replace")[-3000:] for i in range(len(procs))]
    assert codes == [0] * len(procs), errs

    started_t = [s[0] for s in started]
    acked_t = [a[0] for a in acked]
    kinds: Counter[str] = Counter()
    failures: list[str] = []
    retries = refused = 0
    for out in outs:
        for line in out.read_text().splitlines():
            rec = json.loads(line)
            kinds[rec["kind"]] += 1
            retries += rec["retries"]
            if rec["error"] is not None:
                last = rec["error"].strip().splitlines()[-1]
                if grace > 0 or not last.startswith(("bt_frames.errors.CorruptionError:", "bt_frames.errors.BtError:")):
                    failures.append(rec["error"])
                else:
                    refused += 1
                continue
            lo = acked[bisect.bisect_left(acked_t, rec["t0"]) - 1][1]  # acknowledged before its refresh()
            hi = started[bisect.bisect_right(started_t, rec["t1"]) - 1][1]  # started before the scan ended
            totals = [k for _t, k in started if lo <= k <= hi]
            n = rec["n"]
            fits = {
                "full": n in totals,
                "len": n in totals,
                "mod3": any((k + 2) // 3 == n for k in totals),
                "head": any(min(k, 777) == n for k in totals),
                "partial": n <= hi,
            }[rec["kind"]]
            if not fits:
                failures.append(f"{rec['kind']} saw {n}, which fits no append total in [{lo}, {hi}]")
    scans = sum(kinds.values())
    line = (f"read-only processes, retired_grace={grace}: {scans} scans {dict(kinds)}, {len(failures)} failed, "
            f"{refused} refused with a BtError, {retries} transparent refreshes; writer {dict(ops)}, "
            f"{total:,} rows")  # fmt: skip
    print("\n" + line)
    MACHINERY_REPORT.append(line)
    assert not failures, f"{len(failures)} of {scans} scans failed:\n" + "\n".join(failures[:3])
    assert refused <= max(3, scans // 100)
    assert scans > 50
    assert ops["merges"] > 0
