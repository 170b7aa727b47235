"""storage/wal.py: zeros written ahead of the records (records written in place), as a reader and a crash see them.

The contract (wal.py's docstring): the last segment may end in zeros that the
writer synced ahead of its records; a reader takes "all zeros after the last
valid record" for the end of the log, not a torn tail. A torn record followed
by zeros is still a torn tail. A segment that is not the last, or one its
writer closed, ends at its last record.
"""

from __future__ import annotations

import errno
import os
import shutil
import threading
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

import bt_frames as bt
from bt_frames.storage import fs, layout, wal
from tests.helpers import faults
from tests.helpers.faultfs import FaultFS

CHUNK = 16 << 10


def open_writer(d: Path, *, durability: wal.Durability = "fsync", first: int = 1) -> wal.WalWriter:
    d.mkdir(parents=True, exist_ok=True)
    return wal.WalWriter(d, durability, d / layout.wal_name(first), create=True)


def payloads(scan: wal.SegmentScan) -> list[bytes]:
    return [bytes(r.payload) for r in scan.records]


def test_open_segment_ends_in_synced_zeros_that_are_not_a_torn_tail(tmp_path: Path) -> None:
    w = open_writer(tmp_path)
    try:
        for i in range(5):
            w.append(i + 1, b"record %d" % i)
        size = w.path.stat().st_size
        assert size >= w.size + CHUNK // 2  # zeros ahead of the records
        assert w.path.read_bytes()[w.size :] == bytes(size - w.size)
        scan = wal.read_segment(w.path, is_last=True)
        assert payloads(scan) == [b"record %d" % i for i in range(5)]
        assert (scan.valid_end, scan.zero_tail, scan.torn_bytes) == (w.size, size - w.size, 0)
    finally:
        w.close()


@pytest.mark.parametrize("background", [False, True])
def test_close_and_rotate_leave_no_zero_tail(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, background: bool) -> None:
    monkeypatch.setattr(wal, "ZERO_IN_BACKGROUND", background)
    w = open_writer(tmp_path)
    for i in range(1, 200):
        w.append(i, bytes([i % 251 + 1]) * 300)  # crosses several chunk ends
        if i % 70 == 0:
            old = w.path
            w.rotate(i + 1)
            assert old.stat().st_size == wal.read_segment(old, is_last=False).valid_end
    end = w.size
    w.close()
    assert w.path.stat().st_size == end
    scans = list(wal.scan_wal(tmp_path))
    assert all(s.zero_tail == 0 and s.torn_bytes == 0 and s.size == s.valid_end for s in scans)
    assert [r.lsn for s in scans for r in s.records] == list(range(1, 200))


@pytest.mark.parametrize("durability", ["none", "batch"])
def test_only_fsync_durability_writes_zeros_ahead(tmp_path: Path, durability: wal.Durability) -> None:
    """ "none" syncs nothing; under "batch" unsynced records share pages whose writeback order a
    fixed-size file does not constrain (zeros, then a valid record, after a power loss): appended."""
    w = open_writer(tmp_path, durability=durability)
    for i in range(50):
        w.append(i + 1, b"x" * 1000)
    assert w.path.stat().st_size == w.size
    w.close()
    w = open_writer(tmp_path / "fsync", durability="fsync")
    w.append(1, b"x")
    assert w.path.stat().st_size > w.size  # the contrast: "fsync" writes ahead
    w.close()


def test_torn_record_over_zeros_is_still_a_torn_tail(tmp_path: Path) -> None:
    w = open_writer(tmp_path)
    for i in range(3):
        w.append(i + 1, b"payload %d" % i * 10)
    last_off = wal.read_segment(w.path, is_last=True).records[-1].offset
    end = w.size
    snapshot = w.path.read_bytes()  # what a process crash leaves: records, then zeros
    w.close()
    seg = tmp_path / "copy.wal"
    for cut in range(last_off + 1, end):
        # the last record's first bytes reached the disk, the rest of it still zeros
        data = snapshot[:cut] + bytes(len(snapshot) - cut)
        p = tmp_path / layout.wal_name(1)
        p.write_bytes(data)
        scan = wal.read_segment(p, is_last=True)
        assert len(scan.records) == 2, cut
        assert (scan.valid_end, scan.zero_tail, scan.torn_bytes) == (last_off, 0, len(data) - last_off), cut
    del seg


def test_zero_tail_of_a_segment_that_is_not_the_last_is_corruption(tmp_path: Path) -> None:
    w = open_writer(tmp_path)
    w.append(1, b"one")
    data = w.path.read_bytes()
    w.close()
    first = tmp_path / layout.wal_name(1)
    first.write_bytes(data)  # a zero tail left on a finished segment
    with pytest.raises(bt.CorruptionError, match="bytes from here on are zeros, but later segments exist"):
        wal.read_segment(first, is_last=False)


class _Calls(fs.FileSystem):
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, int]] = []  # (op, path, size of the old segment at that moment)

    def _note(self, op: str, what: str, fd: int | None = None) -> None:
        self.calls.append((op, what, os.fstat(fd).st_size if fd is not None else -1))

    def open(self, path: fs.StrPath, flags: int, mode: int = 0o644) -> int:
        if flags & os.O_CREAT:
            self._note("create", os.path.basename(path))
        return super().open(path, flags, mode)

    def ftruncate(self, fd: int, size: int) -> None:
        super().ftruncate(fd, size)
        self._note("ftruncate", os.readlink(f"/proc/self/fd/{fd}"), fd)

    def fsync(self, fd: int) -> None:
        super().fsync(fd)
        self._note("fsync", os.readlink(f"/proc/self/fd/{fd}"), fd)


def test_rotation_cuts_the_zero_tail_and_syncs_it_before_the_next_segment_exists(tmp_path: Path) -> None:
    w = open_writer(tmp_path)
    w.append(1, b"one")
    w.append(2, b"two")
    old, end = w.path, w.size
    assert old.stat().st_size > end
    rec = _Calls()
    with fs.use(rec):
        w.rotate(3)
    w.close()
    ops = [(op, os.path.basename(p), size) for op, p, size in rec.calls]
    create = ops.index(("create", layout.wal_name(3), -1))
    assert ops[:create] == [("ftruncate", old.name, end), ("fsync", old.name, end)]


def test_failed_in_place_append_leaves_no_partial_record(tmp_path: Path) -> None:
    for kind in ("write", "fsync"):
        d = tmp_path / kind
        w = open_writer(d)
        w.append(1, b"one")
        fault = FaultFS(kind, 1, errno.EIO)
        with fs.use(fault), pytest.raises(OSError, match="Input/output error"):
            w.append(2, b"two" * 50)
        assert fault.injected is not None
        assert "wal.py" in fault.injected.caller
        assert w.path.stat().st_size == w.size  # cut back to the last record (the zeros too)
        scan = wal.read_segment(w.path, is_last=True)
        assert payloads(scan) == [b"one"]
        assert scan.torn_bytes == 0
        w.append(2, b"two")  # the same LSN again: the failed one is not in the WAL
        w.append(3, b"three" * 2000)  # and zeroing ahead resumes
        assert w.path.stat().st_size > w.size
        w.close()
        assert payloads(wal.read_segment(w.path, is_last=True)) == [b"one", b"two", b"three" * 2000]


class _FailZeros(fs.FileSystem):
    failed = 0

    def pwritev(self, fd: int, buffers: list[bytes | memoryview], offset: int) -> int:  # type: ignore[override]
        if sum(len(b) for b in buffers) == CHUNK and not self.failed:
            self.failed += 1
            raise OSError(errno.ENOSPC, "No space left on device")
        return super().pwritev(fd, buffers, offset)


def test_failed_zeroing_only_stops_writing_ahead(tmp_path: Path) -> None:
    w = open_writer(tmp_path)  # the first chunk of zeros is written on open: the next one fails
    fault = _FailZeros()
    with fs.use(fault):
        for i in range(1, 60):
            w.append(i, bytes(1) + b"x" * 599)  # the records run past the end of the zeros: appended
    assert fault.failed == 1
    assert w.path.stat().st_size == w.size  # no zeros ahead any more
    w.rotate(60)  # a new segment zeroes ahead again
    w.append(60, b"y")
    assert w.path.stat().st_size > w.size
    w.close()
    lsns = [r.lsn for s in wal.scan_wal(tmp_path) for r in s.records]
    assert lsns == list(range(1, 61))


def test_reader_racing_the_writer_never_sees_corruption(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(wal, "ZERO_IN_BACKGROUND", True)  # the zeroer thread races the appends too
    w = open_writer(tmp_path, durability="fsync")
    stop = threading.Event()
    errors: list[BaseException] = []
    seen = [0]

    def read() -> None:
        while not stop.is_set():
            try:
                lsns = [r.lsn for s in wal.scan_wal(tmp_path) for r in s.records]
            except FileNotFoundError:  # a segment deleted between listing and reading (not here, but allowed)
                continue
            except BaseException as e:
                errors.append(e)
                return
            if lsns != list(range(lsns[0] if lsns else 1, (lsns[-1] + 1) if lsns else 1)):
                errors.append(AssertionError(f"LSNs out of order: {lsns[:5]}..."))
                return
            seen[0] = max(seen[0], len(lsns))

    readers = [threading.Thread(target=read) for _ in range(2)]
    for t in readers:
        t.start()
    try:
        for i in range(1, 1500):
            w.append(i, bytes([i % 255 + 1]) * (50 + i % 900))
            if i % 300 == 0:
                w.rotate(i + 1)
    finally:
        stop.set()
        for t in readers:
            t.join()
        w.close()
    assert not errors, str(errors[0])
    assert seen[0] > 0
    assert [r.lsn for s in wal.scan_wal(tmp_path) for r in s.records] == list(range(1, 1500))


def _store_with_zero_tail(root: Path, n: int) -> tuple[Path, pl.DataFrame]:
    """A store whose writer 'crashed' (its files copied while open): the last segment ends in zeros."""
    live = root.parent / (root.name + "-live")
    store = bt.open(live)
    t = store.create_table("t", {"ts": pl.Int64}, max_block_rows=10_000)
    for i in range(n):
        t.append(pl.DataFrame({"ts": [i]}))
    shutil.copytree(live, root, ignore=shutil.ignore_patterns("LOCK"))
    store.close()
    (seg,) = (root / "t" / layout.WAL_DIR).iterdir()
    return seg, pl.DataFrame({"ts": list(range(n))})


def test_store_reopens_a_zero_tail_as_the_end_of_the_log_and_zeroes_ahead_again(tmp_path: Path) -> None:
    root = tmp_path / "db"
    seg, rows = _store_with_zero_tail(root, 5)
    scan = wal.read_segment(seg, is_last=True)
    assert scan.zero_tail > 0
    assert scan.torn_bytes == 0
    with bt.open(root, read_only=True) as reader:
        t = reader.table("t")
        assert t.recovery.torn_tail_bytes == 0
        assert "torn" not in t.recovery.summary()
        assert_frame_equal(t.scan().collect(), rows)
    assert seg.stat().st_size == scan.size  # a reader changes nothing
    with bt.open(root) as store:
        t = store.table("t")
        assert t.recovery.torn_tail_bytes == 0
        assert_frame_equal(t.scan().collect(), rows)
        assert seg.stat().st_size > scan.valid_end  # cut to the records, then zeros ahead again
        t.append(pl.DataFrame({"ts": [5]}))
    assert seg.stat().st_size == wal.read_segment(seg, is_last=True).valid_end  # closed: no zero tail
    assert [r.lsn for r in faults.record_offsets(seg)] == [1, 2, 3, 4, 5, 6]


class _Descriptors(fs.FileSystem):
    """Records which descriptor each positional write and each fdatasync went to."""

    def __init__(self) -> None:
        self.writes: list[tuple[int, bool]] = []  # (fd, all zeros)
        self.syncs: list[int] = []

    def pwritev(self, fd: int, buffers: list[bytes | memoryview], offset: int) -> int:  # type: ignore[override]
        self.writes.append((fd, all(not any(bytes(b)) for b in buffers)))
        return super().pwritev(fd, buffers, offset)

    def fdatasync(self, fd: int) -> None:
        self.syncs.append(fd)
        super().fdatasync(fd)


def test_the_zeros_are_written_and_synced_through_a_descriptor_of_their_own(tmp_path: Path) -> None:
    """Linux reports a writeback error once per open file description; the zeroer's sync also flushes
    the appender's pages, so on a shared descriptor it could take an append's error and the append's own
    fdatasync would succeed. With a descriptor of its own, both are told."""
    calls = _Descriptors()
    with fs.use(calls):
        w = open_writer(tmp_path)
        for i in range(200):
            w.append(i + 1, b"r" * 4000)
        record_fd = w._fd
        w.close()
    zero_fds = {fd for fd, zeros in calls.writes if zeros}
    assert zero_fds, "no zeros were written ahead"
    assert record_fd not in zero_fds
    assert {fd for fd, zeros in calls.writes if not zeros} == {record_fd}
    assert any(fd in zero_fds for fd in calls.syncs)  # each chunk synced through its own descriptor
