"""Every acknowledged append survives kill -9 at any instant, exactly once (DESIGN.md §2 Durability/Atomicity).

A child process (tests/helpers/crash_writer.py) appends numbered batches and
prints each batch id only after ``append`` returned; this process SIGKILLs it
and checks the store: every acknowledged batch is present once, complete and
in order; the one batch in flight at the kill is present completely or not at
all; nothing else appears. The same store is then written again by the next
child, so recovered stores are themselves crashed and recovered.
"""

from __future__ import annotations

import random
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

import bt_frames as bt
from tests.helpers.crash_writer import TABLE, batch_size, check_batches, make_batch
from tests.helpers.procs import Child, listing, run_json, tmp_files

pytestmark = pytest.mark.crash


def _write_args(path: Path, durability: str, mbr: int, sizes: str, start: int, *extra: str) -> list[str]:
    return [
        "write",
        "--path",
        str(path),
        "--durability",
        durability,
        "--max-block-rows",
        str(mbr),
        "--sizes",
        sizes,
        "--start",
        str(start),
        *extra,
    ]


def _check_round(ids: list[int], before: list[int], acked: list[int], in_flight: int) -> None:
    """The store after a crash = what it held before + every acked batch (+ perhaps the in-flight one)."""
    assert ids[: len(before)] == before, "batches stored before this round changed"
    new = ids[len(before) :]
    assert new in (acked, [*acked, in_flight]), (
        f"after the kill: acknowledged {acked[:3]}..{acked[-3:]} (in flight {in_flight}), "
        f"store has {new[:3]}..{new[-3:]} ({len(new)} new batches)"
    )


def _recover_and_check(
    path: Path, durability: str, mbr: int, sizes: str, *, read_only: bool
) -> tuple[list[int], bt.Recovery]:
    """Open the crashed store in this process, check every batch and verify()."""
    before = listing(path) if read_only else None
    with bt.BacktraceStore(path, read_only=read_only, durability=durability) as store:
        table = store.table(TABLE)
        ids = check_batches(table.scan().collect(), mbr, sizes)
        report = store.verify()
        assert report.ok, report
        recovery = table.recovery
        print(f"recovered ({'read-only' if read_only else 'writer'}): {recovery.summary()}")  # shown on failure
    if read_only:
        assert listing(path) == before, "a read-only open of a crashed store changed files"
    else:
        assert tmp_files(path) == [], "a writer's open left temporary files behind"
    return ids, recovery


@pytest.mark.parametrize(
    ("durability", "mbr", "rounds"),
    [("fsync", 500, 15), ("batch", 2_000, 15), ("none", 1_000, 15)],
)
def test_kill_9_at_random_moments(tmp_path: Path, durability: str, mbr: int, rounds: int) -> None:
    """SIGKILL a writer at random moments, over and over, on one store, in every durability mode.

    A process crash loses nothing in any mode (the kernel has the bytes);
    only a power loss could cost "batch"/"none" their last interval. With
    small blocks a freeze (block write, WAL rotation and cleanup) is running
    a large part of the time, and about one batch in 25 is at least a block
    big and takes the multi-part direct-to-blocks path.
    """
    rng = random.Random(f"{durability}-{mbr}")
    path = tmp_path / "db"
    sizes = "mixed"
    stored: list[int] = []  # batch ids in the store, in order, after the last check
    next_id = 0
    total_acked = 0
    awaited = 0  # acknowledgements the test waited for before killing (on a loaded machine time alone buys few)
    for rnd in range(rounds):
        child = Child(*_write_args(path, durability, mbr, sizes, next_id), stderr_path=tmp_path / "stderr.txt")
        if rnd and rng.random() < 0.2:
            time.sleep(rng.uniform(0.05, 0.6))  # anywhere: start-up, recovery of the last crash, first appends
        else:
            child.wait_line("open")
            want = rng.randint(1, 10)
            child.wait_for(lambda lines, want=want: sum(ln.lstrip("-").isdigit() for ln in lines) >= want)
            awaited += want
            time.sleep(rng.uniform(0.0, 0.4))
        child.kill()
        acked = child.acked()
        assert acked == list(range(next_id, next_id + len(acked))), "the child acknowledged out of order"
        total_acked += len(acked)
        in_flight = next_id + len(acked)
        last_round = rnd == rounds - 1
        if last_round:  # a fresh process recovers the store and checks it
            out = run_json(
                "check", "--path", str(path), "--durability", durability, "--max-block-rows", str(mbr), "--sizes", sizes
            )
            assert out["verify_ok"], out["verify"]
            _check_round(out["ids"], stored, acked, in_flight)
        read_only = rnd % 2 == 1 and not last_round  # odd rounds: the next child recovers the store itself
        ids, _ = _recover_and_check(path, durability, mbr, sizes, read_only=read_only)
        _check_round(ids, stored, acked, in_flight)
        if last_round:
            assert ids == out["ids"]
        stored = ids
        next_id = in_flight + 1
        if not read_only:  # the recovered store takes appends
            with bt.BacktraceStore(path, durability=durability) as store:
                assert store.table(TABLE).append(make_batch(next_id, mbr, sizes)) is not None
            stored.append(next_id)
            next_id += 1
    assert total_acked >= awaited > rounds, "the children acknowledged fewer appends than the test waited for"
    with bt.BacktraceStore(path, durability=durability) as store:
        table = store.table(TABLE)
        assert check_batches(table.scan().collect(), mbr, sizes) == stored
        assert table.blocks.height > 0
        assert (table.blocks["part"] > 1).any(), "no multi-part direct-to-blocks append was exercised"


# -- crashes while blocks are written ---------------------------------------------------------------------------


def _run_until_fault(path: Path, tmp_path: Path, sizes: str, mbr: int, fault: str) -> tuple[list[int], int]:
    child = Child(*_write_args(path, "fsync", mbr, sizes, 0, "--die-at", fault), stderr_path=tmp_path / "stderr.txt")
    try:
        rc = child.wait(timeout=60)
    except Exception:
        child.kill()
        raise
    assert rc == -signal.SIGKILL, f"the fault {fault} did not fire (exit code {rc}):\n{child.stderr()}"
    acked = child.acked()
    return acked, len(acked)


@pytest.mark.parametrize(
    ("sizes", "fault", "expect"),
    [
        # A freeze: the WAL was rotated, the block's .tmp is written but not renamed into place.
        ("small", "rename-block:3", {"tmp_files_removed": 1, "records_skipped": 0}),
        # A freeze: the block is in place, its manifest version is not written: the block is not part of the
        # table (its rows are replayed from the WAL) and is removed.
        ("small", "renamed-block:3", {"superseded_blocks_removed": 1, "records_skipped": 0}),
        # A freeze: the WAL was rotated, no block written -> replay reads two segments.
        ("small", "rotated:2", {"records_skipped": 0, "wal_segments": 2}),
        # The stats cache's .tmp is written, not renamed: the cache is stale, its .tmp must not linger.
        ("small", "rename-cache:2", {"stats_cache": "stale", "tmp_files_removed": 1}),
        # A 3-part append (2nd batch): part 1 renamed, part 2 still .tmp -> both removed, batch absent.
        ("big", "rename-block:5", {"tmp_files_removed": 1, "incomplete_blocks_removed": 1, "absent": True}),
        # A 3-part append: parts 1-2 renamed, part 3 not written -> removed, batch absent.
        ("big", "renamed-block:5", {"tmp_files_removed": 0, "incomplete_blocks_removed": 2, "absent": True}),
        # Every part renamed (each durable), the manifest version not written: not acknowledged, but complete
        # and intact, so recovery adopts it -- as it keeps a durable WAL record of an unacknowledged append.
        ("big", "renamed-block:6", {"incomplete_blocks_removed": 0, "adopted_blocks": 3, "present": True}),
    ],
)
def test_kill_at_each_step_of_a_block_write(tmp_path: Path, sizes: str, fault: str, expect: dict[str, object]) -> None:
    """The child SIGKILLs itself at a chosen step of a freeze or multi-part append; recovery cleans up exactly."""
    mbr = 2_000
    path = tmp_path / "db"
    if sizes == "big":  # every batch is 2.5 blocks: a 3-part direct-to-blocks append
        sizes_mode, mbr = "freeze", 400
        acked, in_flight = _run_big(path, tmp_path, fault, mbr)
    else:
        sizes_mode = sizes
        acked, in_flight = _run_until_fault(path, tmp_path, sizes, mbr, fault)
    leftovers = tmp_files(path)
    # A reader first: it changes nothing and sees exactly what the next writer will commit.
    with bt.BacktraceStore(path, read_only=True) as store:
        seen = check_batches(store.table(TABLE).scan().collect(), mbr, sizes_mode)
    assert tmp_files(path) == leftovers
    with bt.BacktraceStore(path) as store:
        table = store.table(TABLE)
        rec = table.recovery
        ids = check_batches(table.scan().collect(), mbr, sizes_mode)
        assert ids == seen, "the read-only view differed from what the writer recovered"
        _check_round(ids, [], acked, in_flight)
        assert store.verify().ok
        assert tmp_files(path) == [], f"left behind after recovery (before: {leftovers})"
        for key, want in expect.items():
            if key == "absent":
                assert in_flight not in ids
            elif key == "present":
                assert ids[-1] == in_flight
            elif want == "+":
                assert getattr(rec, key) > 0, rec
            else:
                assert getattr(rec, key) == want, rec
        # The recovered store takes more appends, and a second open finds nothing left to repair.
        more = make_batch(in_flight + 1, mbr, sizes_mode)
        table.append(more)
        ids.append(in_flight + 1)
    with bt.BacktraceStore(path, read_only=True) as store:
        table = store.table(TABLE)
        assert check_batches(table.scan().collect(), mbr, sizes_mode) == ids
        rec = table.recovery
        assert (rec.tmp_files_removed, rec.incomplete_blocks_removed, rec.torn_tail_bytes) == (0, 0, 0)


def test_a_live_writers_parts_in_flight_are_not_shown_a_crashed_writers_are(tmp_path: Path) -> None:
    """Parts renamed before their version: shown once their writer is gone, never while it runs.

    Whether a writer holds the store's lock says nothing here: a new writer that has not opened the
    table yet must not make a reader hide parts it showed (a refresh never goes back in time).
    """
    from bt_frames.storage import blocks as blk
    from bt_frames.storage import locking

    mbr = 400
    path = tmp_path / "db"
    acked, in_flight = _run_big(path, tmp_path, "renamed-block:6", mbr)
    with bt.BacktraceStore(path, read_only=True) as readers:
        reader = readers.table(TABLE)
        assert check_batches(reader.scan().collect(), mbr, "freeze") == [*acked, in_flight]
        assert reader.recovery.adopted_blocks == 3
        assert "included (the next writer adopts them)" in reader.recovery.summary()
        with bt.BacktraceStore(path) as store:  # a writer holds the lock, the table not yet open
            reader.refresh()
            assert check_batches(reader.scan().collect(), mbr, "freeze") == [*acked, in_flight]
            table = store.table(TABLE)  # adopts
            assert table.recovery.adopted_blocks == 3
            assert check_batches(table.scan().collect(), mbr, "freeze") == [*acked, in_flight]
            reader.refresh()
            assert check_batches(reader.scan().collect(), mbr, "freeze") == [*acked, in_flight]
            lsn, rows = table._next_lsn, table.rows

    # parts as a writer in the middle of a large append leaves them: this process is that writer
    batch = make_batch(in_flight + 1, mbr, "freeze")
    blocks_dir = path / TABLE / "blocks"

    def write_parts(writer: str) -> list[Path]:
        nparts = -(-batch.height // mbr)
        return [
            blk.write_block(
                blocks_dir, batch.slice(i * mbr, mbr), first_lsn=lsn, last_lsn=lsn, part=i + 1, nparts=nparts,
                row_group_rows=1024, writer=writer,
            ).path
            for i in range(nparts)
        ]  # fmt: skip

    parts = write_parts(locking.process_tag())
    assert len(parts) > 1
    with bt.BacktraceStore(path, read_only=True) as readers:
        reader = readers.table(TABLE)
        assert reader.rows == rows, "a live writer's parts in flight were shown"
        assert reader.recovery.adopted_blocks == 0
    for p in parts:
        p.unlink()
    gone = subprocess.run(["sh", "-c", "cat /proc/self/stat"], capture_output=True, text=True, check=True)
    dead = f"{socket.gethostname()}/{gone.stdout.split()[0]}/{gone.stdout.rsplit(')', 1)[1].split()[19]}"
    assert not locking.process_alive(dead)
    write_parts(dead)
    with bt.BacktraceStore(path, read_only=True) as readers:
        reader = readers.table(TABLE)
        assert reader.rows == rows + batch.height
        assert reader.recovery.adopted_blocks == len(parts)
    with bt.BacktraceStore(path) as store:
        table = store.table(TABLE)
        assert table.recovery.adopted_blocks == len(parts)
        assert check_batches(table.scan().collect(), mbr, "freeze") == [*acked, in_flight, in_flight + 1]


def _run_big(path: Path, tmp_path: Path, fault: str, mbr: int) -> tuple[list[int], int]:
    """Start where three batches in a row are 2-3 blocks big: each append writes 3 parts (renames 1-3, 4-6)."""
    start = next(
        i for i in range(10_000) if all(2 * mbr < batch_size(j, mbr, "freeze") <= 3 * mbr for j in (i, i + 1, i + 2))
    )
    child = Child(*_write_args(path, "fsync", mbr, "freeze", start, "--die-at", fault), stderr_path=tmp_path / "e")
    rc = child.wait(timeout=60)
    assert rc == -signal.SIGKILL, f"the fault {fault} did not fire (exit code {rc}):\n{child.stderr()}"
    acked = child.acked()
    assert acked == list(range(start, start + len(acked)))
    return acked, start + len(acked)


@pytest.mark.parametrize("durability", ["fsync", "none"])
def test_kill_9_while_blocks_are_written(tmp_path: Path, durability: str) -> None:
    """Random kills of a child whose every other append freezes a block or writes a multi-part append."""
    rng = random.Random(durability)
    mbr, sizes = 5_000, "freeze"
    path = tmp_path / "db"
    stored: list[int] = []
    next_id = 0
    for _ in range(8):
        child = Child(*_write_args(path, durability, mbr, sizes, next_id), stderr_path=tmp_path / "stderr.txt")
        child.wait_line("open")
        time.sleep(rng.uniform(0.05, 0.5))
        child.kill()
        acked = child.acked()
        in_flight = next_id + len(acked)
        ids, _ = _recover_and_check(path, durability, mbr, sizes, read_only=False)
        _check_round(ids, stored, acked, in_flight)
        stored, next_id = ids, in_flight + 1
    with bt.BacktraceStore(path, read_only=True) as store:
        blocks = store.table(TABLE).blocks
        assert blocks.height >= 6
