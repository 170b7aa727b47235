"""storage/wal.py: framing, the six validity conditions, torn tail vs corruption (LevelDB log_test.cc style).

Each test damages real segment files with tests/helpers/faults.py and checks what ``read_segment`` (the
format level) and ``BacktraceStore`` reopen (the table level) make of it: a torn tail — an append that was
never acknowledged — is cut off by a writer and ignored by a reader; anything else is ``CorruptionError``
naming the file and the byte offset, and nothing is changed.
"""

from __future__ import annotations

import errno
import io
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

import bt_frames as bt
from bt_frames.storage import fs, layout, wal
from tests.helpers import faults
from tests.helpers.procs import listing

# -- building segments -----------------------------------------------------------------------------------------------


def write_segment(wal_dir: Path, payloads: list[bytes], *, first_lsn: int = 1, lsns: list[int] | None = None) -> Path:
    """A segment ``wal/<first_lsn>.wal`` holding one record per payload, written by the engine's WalWriter."""
    wal_dir.mkdir(parents=True, exist_ok=True)
    path = wal_dir / layout.wal_name(first_lsn)
    w = wal.WalWriter(wal_dir, "none", path, create=True)
    try:
        for i, p in enumerate(payloads):
            w.append(lsns[i] if lsns is not None else first_lsn + i, p)
    finally:
        w.close()
    return path


PAYLOADS = [b"first record", b"second record, a little longer", b"third"]


@pytest.fixture
def seg(tmp_path: Path) -> Path:
    return write_segment(tmp_path / "wal", PAYLOADS)


def read_last(path: Path) -> wal.SegmentScan:
    return wal.read_segment(path, is_last=True)


def payloads_of(scan: wal.SegmentScan) -> list[bytes]:
    return [bytes(r.payload) for r in scan.records]


def assert_corrupt_at(exc: pytest.ExceptionInfo[bt.CorruptionError], path: Path, offset: int, why: str) -> None:
    err = exc.value
    assert isinstance(err, bt.BtError)
    assert err.path == path
    assert err.offset == offset
    msg = str(err)
    assert f"{path} at byte offset {offset}" in msg
    assert why in msg
    assert "Nothing was changed" in msg


# -- the undamaged format ----------------------------------------------------------------------------------------------


def test_records_read_back_with_offsets_lsns_and_payloads(seg: Path) -> None:
    spans = faults.record_offsets(seg)
    scan = read_last(seg)
    assert payloads_of(scan) == PAYLOADS
    assert [r.lsn for r in scan.records] == [1, 2, 3]
    assert [r.offset for r in scan.records] == [s.offset for s in spans]
    assert spans[0].offset == wal.SEGMENT_HEADER_SIZE
    assert [s.length for s in spans] == [len(p) for p in PAYLOADS]
    assert scan.valid_end == scan.size == seg.stat().st_size == spans[-1].end
    assert scan.torn_bytes == 0
    assert seg.read_bytes()[: wal.SEGMENT_HEADER_SIZE] == wal.segment_header()


def test_empty_segment_has_only_the_header(tmp_path: Path) -> None:
    path = write_segment(tmp_path / "wal", [])
    assert path.stat().st_size == wal.SEGMENT_HEADER_SIZE
    scan = read_last(path)
    assert scan.records == []
    assert scan.valid_end == wal.SEGMENT_HEADER_SIZE


def test_empty_payload_is_a_valid_record(tmp_path: Path) -> None:
    path = write_segment(tmp_path / "wal", [b"", b"x", b""])
    assert payloads_of(read_last(path)) == [b"", b"x", b""]


def test_crc_covers_length_lsn_and_payload() -> None:
    base = wal.record_crc(5, 7, b"hello")
    assert wal.record_crc(6, 7, b"hello") != base
    assert wal.record_crc(5, 8, b"hello") != base
    assert wal.record_crc(5, 7, b"hellp") != base
    header = wal.encode_record(7, b"hello")
    assert wal.RECORD_HEADER.unpack(header) == (wal.RECORD_MAGIC, 5, base, 7)


# -- validity condition 1: the header is complete ------------------------------------------------------------------


@pytest.mark.parametrize("keep", [1, 4, 12, wal.RECORD_HEADER_SIZE - 1])
def test_cond1_incomplete_header_at_the_end_is_a_torn_tail(seg: Path, keep: int) -> None:
    last = faults.record_offsets(seg)[-1]
    faults.truncate_to(seg, last.offset + keep)
    scan = read_last(seg)
    assert payloads_of(scan) == PAYLOADS[:-1]
    assert scan.valid_end == last.offset
    assert scan.torn_bytes == keep


def test_cond1_incomplete_header_in_a_non_last_segment_is_corruption(seg: Path) -> None:
    last = faults.record_offsets(seg)[-1]
    faults.truncate_to(seg, last.offset + 7)
    with pytest.raises(bt.CorruptionError) as exc:
        wal.read_segment(seg, is_last=False)
    assert_corrupt_at(exc, seg, last.offset, "record header cut short (7 of 20 bytes)")
    assert "later segments exist" in str(exc.value)


def test_incomplete_segment_header_of_the_last_segment_is_a_torn_create(tmp_path: Path) -> None:
    path = write_segment(tmp_path / "wal", [])
    faults.truncate_to(path, 5)
    scan = read_last(path)
    assert scan.records == []
    assert scan.valid_end == 0
    with pytest.raises(bt.CorruptionError) as exc:
        wal.read_segment(path, is_last=False)
    assert_corrupt_at(exc, path, 0, "segment header is 5 bytes, expected 8")


def test_bad_segment_magic_is_corruption_even_in_the_last_segment(seg: Path) -> None:
    faults.flip_byte(seg, 0)
    with pytest.raises(bt.CorruptionError) as exc:
        read_last(seg)
    assert_corrupt_at(exc, seg, 0, "not a bt_frames WAL segment (bad magic)")


def test_newer_segment_version_is_refused(seg: Path) -> None:
    faults.overwrite(seg, len(wal.SEGMENT_MAGIC), wal.SEGMENT_HEADER.pack(b"", wal.WAL_VERSION + 1)[-2:])
    with pytest.raises(bt.UnsupportedFormatError, match=rf"format {wal.WAL_VERSION + 1}; this build reads"):
        read_last(seg)


# -- validity condition 2: the record magic ------------------------------------------------------------------------


def test_cond2_bad_magic_in_the_middle_is_corruption(seg: Path) -> None:
    mid = faults.record_offsets(seg)[1]
    faults.overwrite(seg, mid.magic_offset, b"\0\0\0\0")
    with pytest.raises(bt.CorruptionError) as exc:
        read_last(seg)
    assert_corrupt_at(exc, seg, mid.offset, "bad record magic 0x00000000")
    assert f"a valid record follows at offset {mid.end}" in str(exc.value)


def test_cond2_bad_magic_of_the_last_record_is_a_torn_tail(seg: Path) -> None:
    last = faults.record_offsets(seg)[-1]
    faults.flip_byte(seg, last.magic_offset + 2)
    scan = read_last(seg)
    assert payloads_of(scan) == PAYLOADS[:-1]
    assert scan.valid_end == last.offset


# -- validity condition 3: the payload is complete -----------------------------------------------------------------


@pytest.mark.parametrize("cut", [1, 5])
def test_cond3_payload_cut_short_at_the_end_is_a_torn_tail(seg: Path, cut: int) -> None:
    last = faults.record_offsets(seg)[-1]
    faults.truncate(seg, cut)
    scan = read_last(seg)
    assert payloads_of(scan) == PAYLOADS[:-1]
    assert scan.valid_end == last.offset
    assert scan.torn_bytes == last.end - cut - last.offset


def test_cond3_length_past_the_end_in_the_middle_is_corruption(seg: Path) -> None:
    mid = faults.record_offsets(seg)[1]
    faults.overwrite(seg, mid.length_offset, wal._LEN.pack(10_000))
    size = seg.stat().st_size
    with pytest.raises(bt.CorruptionError) as exc:
        read_last(seg)
    assert_corrupt_at(exc, seg, mid.offset, f"record length 10000 runs past the end of the file ({size} bytes)")
    assert "not a torn tail" in str(exc.value)


# -- validity condition 4: the CRC ------------------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["crc", "lsn", "payload_first", "payload_last"])
def test_cond4_checksum_mismatch_in_the_middle_is_corruption(seg: Path, field: str) -> None:
    mid = faults.record_offsets(seg)[1]
    offset = {
        "crc": mid.crc_offset,
        "lsn": mid.lsn_offset,
        "payload_first": mid.payload_offset,
        "payload_last": mid.end - 1,
    }[field]
    faults.flip_byte(seg, offset, 0x01)
    with pytest.raises(bt.CorruptionError) as exc:
        read_last(seg)
    assert_corrupt_at(exc, seg, mid.offset, "CRC mismatch in record")
    assert f"a valid record follows at offset {mid.end}" in str(exc.value)


def test_cond4_checksum_mismatch_in_the_last_record_is_a_torn_tail(seg: Path) -> None:
    # A crash may leave a record whose bytes were allocated but never written: indistinguishable from a
    # bad checksum with nothing valid after it, and that append was never acknowledged.
    last = faults.record_offsets(seg)[-1]
    faults.overwrite(seg, last.payload_offset, b"\0" * last.length)
    scan = read_last(seg)
    assert payloads_of(scan) == PAYLOADS[:-1]
    assert scan.valid_end == last.offset


@pytest.mark.parametrize("new_length", ["shorter", "longer"])
def test_damaged_length_of_a_non_final_record_is_corruption_not_a_tail(tmp_path: Path, new_length: str) -> None:
    path = write_segment(tmp_path / "wal", [b"a" * 30, b"b" * 30, b"c" * 30, b"d" * 30])
    second = faults.record_offsets(path)[1]
    length = second.length - 3 if new_length == "shorter" else second.length + 3  # still inside the file
    faults.overwrite(path, second.length_offset, wal._LEN.pack(length))
    with pytest.raises(bt.CorruptionError) as exc:
        read_last(path)
    assert_corrupt_at(exc, path, second.offset, f"CRC mismatch in record (length {length}, lsn 2)")
    assert f"a valid record follows at offset {second.end}" in str(exc.value)


# -- validity condition 5: LSNs increase ------------------------------------------------------------------------------


def test_cond5_repeated_lsn_in_a_segment_is_corruption(tmp_path: Path) -> None:
    path = write_segment(tmp_path / "wal", [b"a", b"b", b"c"], lsns=[1, 2, 2])
    third = faults.record_offsets(path)[2]
    with pytest.raises(bt.CorruptionError) as exc:
        read_last(path)
    assert_corrupt_at(exc, path, third.offset, "record LSN 2 is not greater than the previous LSN 2")


def test_cond5_decreasing_lsn_in_the_middle_is_corruption(tmp_path: Path) -> None:
    path = write_segment(tmp_path / "wal", [b"a", b"b", b"c"], lsns=[5, 3, 9], first_lsn=1)
    second = faults.record_offsets(path)[1]
    with pytest.raises(bt.CorruptionError) as exc:
        read_last(path)
    assert_corrupt_at(exc, path, second.offset, "record LSN 3 is not greater than the previous LSN 5")


@pytest.mark.parametrize("position", ["only", "last", "middle"])
def test_cond5_lsn_below_the_segment_name_is_corruption_never_a_tail(tmp_path: Path, position: str) -> None:
    # The record passes its checksum: it is not a torn write, so it must never be cut off silently.
    lsns = {"only": [7], "last": [10, 11, 7], "middle": [10, 7, 11]}[position]
    path = write_segment(tmp_path / "wal", [b"x"] * len(lsns), first_lsn=10, lsns=lsns)
    bad = faults.record_offsets(path)[lsns.index(7)]
    with pytest.raises(bt.CorruptionError) as exc:
        read_last(path)
    assert_corrupt_at(exc, path, bad.offset, "record LSN 7")


def test_cond5_lsn_not_above_the_previous_segment_is_corruption(tmp_path: Path) -> None:
    wal_dir = tmp_path / "wal"
    write_segment(wal_dir, [b"a", b"b", b"c"], first_lsn=1)
    second = write_segment(wal_dir, [b"d", b"e"], first_lsn=3)  # LSN 3 again
    with pytest.raises(bt.CorruptionError) as exc:
        list(wal.scan_wal(wal_dir))
    assert_corrupt_at(exc, second, wal.SEGMENT_HEADER_SIZE, "record LSN 3 is not greater than the previous LSN 3")


def test_scan_wal_reads_segments_in_lsn_order_and_ignores_foreign_files(tmp_path: Path) -> None:
    wal_dir = tmp_path / "wal"
    write_segment(wal_dir, [b"c", b"d"], first_lsn=10)
    write_segment(wal_dir, [b"a", b"b"], first_lsn=2)
    (wal_dir / "README").write_text("not a segment")
    (wal_dir / ".00000000000000000099.wal.1.tmp").write_bytes(b"junk")
    scans = list(wal.scan_wal(wal_dir))
    assert [s.first_lsn for s in scans] == [2, 10]
    assert [r.lsn for s in scans for r in s.records] == [2, 3, 10, 11]
    assert [p for s in scans for p in payloads_of(s)] == [b"a", b"b", b"c", b"d"]


# -- a damaged non-last segment ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["truncated", "flipped"])
def test_damage_in_a_non_last_segment_is_corruption(tmp_path: Path, damage: str) -> None:
    wal_dir = tmp_path / "wal"
    first = write_segment(wal_dir, PAYLOADS, first_lsn=1)
    write_segment(wal_dir, [b"later"], first_lsn=4)
    last = faults.record_offsets(first)[-1]
    if damage == "truncated":
        faults.truncate(first, 2)
    else:
        faults.flip_byte(first, last.end - 1)
    with pytest.raises(bt.CorruptionError) as exc:
        list(wal.scan_wal(wal_dir))
    assert_corrupt_at(exc, first, last.offset, "later segments exist, so this is not a torn tail")


# -- torn tail at every byte offset ------------------------------------------------------------------------------------


def test_torn_tail_at_every_offset_inside_the_last_record(seg: Path) -> None:
    pristine = seg.read_bytes()
    last = faults.record_offsets(seg)[-1]
    for cut in range(last.offset + 1, last.end):
        seg.write_bytes(pristine[:cut])
        scan = read_last(seg)
        assert payloads_of(scan) == PAYLOADS[:-1], cut
        assert (scan.valid_end, scan.torn_bytes) == (last.offset, cut - last.offset), cut
        with pytest.raises(bt.CorruptionError) as exc:
            wal.read_segment(seg, is_last=False)
        assert exc.value.offset == last.offset


# -- the same cases through a store ------------------------------------------------------------------------------------

SMALL = {"ts": pl.Int64}


def small_store(root: Path, n: int) -> tuple[Path, pl.DataFrame]:
    """A store whose table 't' holds ``n`` one-row appends, all in the WAL; returns (segment, rows).

    The files are those of a writer killed after its last append (copied while it is open): a clean close
    records the last LSN in the manifest, after which a cut-off record is a truncated WAL, not a torn tail.
    """
    live = root.with_name(root.name + ".live")
    with bt.open(live, durability="none") as store:
        t = store.create_table("t", SMALL, time_column="ts")
        for i in range(n):
            t.append(pl.DataFrame({"ts": [i]}))
        shutil.copytree(live, root, ignore=shutil.ignore_patterns(layout.LOCK_NAME))
    (path,) = (root / "t" / layout.WAL_DIR).iterdir()
    return path, pl.DataFrame({"ts": list(range(n))})


def test_store_cuts_a_torn_tail_at_every_offset_of_the_last_record(tmp_path: Path) -> None:
    root = tmp_path / "db"
    path, rows = small_store(root, 3)
    pristine = path.read_bytes()
    last = faults.record_offsets(path)[-1]
    assert last.length > 100  # a real Arrow IPC payload
    for cut in range(last.offset + 1, last.end):
        path.write_bytes(pristine[:cut])
        torn = cut - last.offset
        with bt.open(root, read_only=True) as reader:  # a reader sees the tail and leaves it alone
            t = reader.table("t")
            assert_frame_equal(t.scan().collect(), rows.head(2))
            assert t.recovery.torn_tail_bytes == torn
            assert f"torn tail of {torn} bytes ignored (the next writer cuts it off)" in t.recovery.summary()
        assert path.read_bytes() == pristine[:cut], cut
        with bt.open(root, durability="none") as store:  # a writer cuts it off
            t = store.table("t")
            assert_frame_equal(t.scan().collect(), rows.head(2))
            assert t.recovery.torn_tail_bytes == torn
            assert t.recovery.records_replayed == 2
            assert f"torn tail of {torn} bytes cut off" in t.recovery.summary()
        assert path.read_bytes() == pristine[: last.offset], cut


def test_wal_records_shows_the_torn_tail_to_a_reader(tmp_path: Path) -> None:
    root = tmp_path / "db"
    path, _rows = small_store(root, 3)
    spans = faults.record_offsets(path)
    faults.truncate(path, 11)
    with bt.open(root, read_only=True) as reader:
        records = reader.table("t").wal_records()
    assert records.select("offset", "lsn", "bytes", "rows", "status").rows() == [
        (spans[0].offset, 1, spans[0].end - spans[0].offset, 1, "record"),
        (spans[1].offset, 2, spans[1].end - spans[1].offset, 1, "record"),
        (spans[2].offset, None, spans[2].end - spans[2].offset - 11, None, "torn tail"),
    ]
    assert set(records["segment"]) == {path.name}


def test_store_appends_after_a_cut_tail_and_replays_them_in_order(tmp_path: Path) -> None:
    root = tmp_path / "db"
    path, rows = small_store(root, 3)
    faults.truncate(path, 9)
    with bt.open(root) as store:
        t = store.table("t")
        assert t.append(pl.DataFrame({"ts": [99]})) == 3  # the cut record's LSN is reused: it was never acked
        expected = pl.concat([rows.head(2), pl.DataFrame({"ts": [99]})])
        assert_frame_equal(t.scan().collect(), expected)
    with bt.open(root) as store:
        t = store.table("t")
        assert t.recovery.torn_tail_bytes == 0
        assert_frame_equal(t.scan().collect(), expected)
        assert [r.lsn for r in faults.record_offsets(path)] == [1, 2, 3]


def test_store_refuses_a_corrupt_record_in_the_middle_and_changes_nothing(tmp_path: Path) -> None:
    root = tmp_path / "db"
    path, _rows = small_store(root, 4)
    mid = faults.record_offsets(path)[1]
    faults.flip_byte(path, mid.payload_offset + 40)
    before = listing(root)
    for kwargs in ({}, {"read_only": True}):
        with bt.open(root, **kwargs) as store, pytest.raises(bt.CorruptionError) as exc:
            store.table("t")
        assert_corrupt_at(exc, path, mid.offset, "CRC mismatch in record")
        assert f"python -m bt_frames verify {root}" in str(exc.value)
    after = listing(root)
    assert {k: v for k, v in after.items() if k != "LOCK"} == {k: v for k, v in before.items() if k != "LOCK"}


def test_store_refuses_a_damaged_length_followed_by_valid_records(tmp_path: Path) -> None:
    root = tmp_path / "db"
    path, _rows = small_store(root, 4)
    second = faults.record_offsets(path)[1]
    faults.overwrite(path, second.length_offset, wal._LEN.pack(second.length - 8))
    size = path.stat().st_size
    with bt.open(root) as store, pytest.raises(bt.CorruptionError) as exc:
        store.table("t")
    assert_corrupt_at(exc, path, second.offset, "CRC mismatch")
    assert path.stat().st_size == size


def ipc_payload(value: int) -> bytes:
    """The payload the engine writes for a one-row append to table 't'."""
    buf = io.BytesIO()
    pl.DataFrame({"ts": [value]}).write_ipc_stream(buf)
    return buf.getvalue()


def _extra_segment(root: Path, first_lsn: int, values: list[int]) -> Path:
    """A second WAL segment for table 't' (what a crash between a rotate and a flush leaves behind)."""
    return write_segment(root / "t" / layout.WAL_DIR, [ipc_payload(v) for v in values], first_lsn=first_lsn)


def test_store_replays_several_segments_and_refuses_damage_in_a_non_last_one(tmp_path: Path) -> None:
    root = tmp_path / "db"
    first, rows = small_store(root, 3)
    _extra_segment(root, 4, [3, 4])
    with bt.open(root, read_only=True) as reader:
        t = reader.table("t")
        assert t.recovery.wal_segments == 2
        assert_frame_equal(t.scan().collect(), pl.DataFrame({"ts": [0, 1, 2, 3, 4]}))
    size = faults.truncate(first, 1)
    for kwargs in ({}, {"read_only": True}):
        with bt.open(root, **kwargs) as store, pytest.raises(bt.CorruptionError) as exc:
            store.table("t")
        assert exc.value.path == first
        assert "later segments exist" in str(exc.value)
    assert first.stat().st_size == size  # nothing was cut
    assert len(rows) == 3


# -- validity condition 6: the payload is the table's Arrow IPC --------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "why"),
    [
        (b"definitely not arrow", "payload is not Arrow IPC"),
        (None, "has schema"),  # a valid IPC stream of another schema
    ],
)
def test_cond6_record_with_a_good_checksum_but_a_bad_payload_is_corruption(
    tmp_path: Path, payload: bytes | None, why: str
) -> None:
    root = tmp_path / "db"
    path, _rows = small_store(root, 2)
    if payload is None:
        buf = io.BytesIO()
        pl.DataFrame({"other": ["x"]}).write_ipc_stream(buf)
        payload = buf.getvalue()
    w = wal.WalWriter(path.parent, "none", path, create=False)
    w.append(3, payload)
    w.append(4, ipc_payload(4))  # a good record after it: the bad one is acknowledged data
    w.close()
    bad = faults.record_offsets(path)[2]
    for kwargs in ({}, {"read_only": True}):
        with bt.open(root, **kwargs) as store, pytest.raises(bt.CorruptionError) as exc:
            store.table("t")
        assert_corrupt_at(exc, path, bad.offset, f"record 3 {why}")
    with bt.open(root, read_only=True) as reader:
        report = reader.verify()
    assert not report.ok
    assert [(p.path, p.offset) for p in report.problems] == [(path, bad.offset)]


# -- verify() on the WAL -----------------------------------------------------------------------------------------------


def test_verify_reports_a_torn_tail_as_benign_and_mid_corruption_as_a_problem(tmp_path: Path) -> None:
    root = tmp_path / "db"
    path, _rows = small_store(root, 3)
    spans = faults.record_offsets(path)
    faults.truncate(path, 3)
    with bt.open(root, read_only=True) as reader:
        report = reader.verify()
    assert report.ok
    assert report.wal_records == 2
    assert [(p.path, p.offset) for p in report.torn_tails] == [(path, spans[-1].offset)]
    faults.flip_byte(path, spans[0].payload_offset)
    with bt.open(root, read_only=True) as reader:
        report = reader.verify()
    assert not report.ok
    assert [(p.path, p.offset) for p in report.problems] == [(path, spans[0].offset)]
    assert "CORRUPT" in repr(report)


# -- property: framing survives any truncation point ------------------------------------------------------------------


@pytest.mark.hypothesis
@settings(max_examples=60, deadline=None)
@given(
    payloads=st.lists(st.binary(max_size=40), max_size=8),
    first_lsn=st.integers(1, 2**40),
    gaps=st.lists(st.integers(1, 5), min_size=8, max_size=8),
    cut_fraction=st.floats(0, 1),
)
def test_any_truncation_reads_back_a_prefix_cut_at_a_record_boundary(
    payloads: list[bytes], first_lsn: int, gaps: list[int], cut_fraction: float
) -> None:
    lsns = [first_lsn + sum(gaps[:i]) for i in range(len(payloads))]
    with tempfile.TemporaryDirectory() as d:
        path = write_segment(Path(d) / "wal", payloads, first_lsn=first_lsn, lsns=lsns)
        spans = faults.record_offsets(path)
        full = path.stat().st_size
        cut = round(cut_fraction * full)
        faults.truncate_to(path, cut)
        scan = read_last(path)
    k = sum(1 for s in spans if s.end <= cut)
    assert [r.lsn for r in scan.records] == lsns[:k]
    assert payloads_of(scan) == payloads[:k]
    boundary = spans[k - 1].end if k else (wal.SEGMENT_HEADER_SIZE if cut >= wal.SEGMENT_HEADER_SIZE else 0)
    assert scan.valid_end == boundary
    assert scan.torn_bytes == cut - boundary


# -- durability modes --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("durability", wal.DURABILITY_MODES)
def test_every_durability_mode_writes_readable_records(tmp_path: Path, durability: str) -> None:
    root = tmp_path / "db"
    frames = [pl.DataFrame({"ts": [i, i + 100]}) for i in range(3)]
    with bt.open(root, durability=durability) as store:
        t = store.create_table("t", SMALL, time_column="ts")
        assert [t.append(f) for f in frames] == [1, 2, 3]
        assert t.wal_state["durability"] == durability
        # readable by another reader while the writer is still open
        scans = list(wal.scan_wal(root / "t" / layout.WAL_DIR))
        assert [r.lsn for s in scans for r in s.records] == [1, 2, 3]
        with bt.open(root, read_only=True) as reader:
            assert_frame_equal(reader.table("t").scan().collect(), pl.concat(frames))
    with bt.open(root) as store:
        assert_frame_equal(store.table("t").scan().collect(), pl.concat(frames))


def _syncers() -> list[threading.Thread]:
    return [th for th in threading.enumerate() if th.name == "bt_frames-wal-sync"]


def test_batch_mode_syncs_in_the_background_and_its_thread_stops_on_close(tmp_path: Path) -> None:
    before = len(_syncers())
    w = wal.WalWriter(tmp_path, "batch", tmp_path / layout.wal_name(1), create=True)
    assert w._syncer is not None
    assert w._syncer.is_alive()
    assert len(_syncers()) == before + 1
    w.append(1, b"payload")
    deadline = time.monotonic() + 5
    while w.unsynced and time.monotonic() < deadline:
        time.sleep(wal.BATCH_INTERVAL_S)
    assert w.unsynced == 0  # the group sync ran
    w.close()
    assert not w._syncer.is_alive()
    assert len(_syncers()) == before
    assert payloads_of(read_last(tmp_path / layout.wal_name(1))) == [b"payload"]


def test_batch_store_close_stops_every_sync_thread(tmp_path: Path) -> None:
    before = len(_syncers())
    store = bt.open(tmp_path / "db", durability="batch")
    for name in ("a", "b"):
        store.create_table(name, SMALL, time_column="ts").append(pl.DataFrame({"ts": [1]}))
    assert len(_syncers()) == before + 2
    store.close()
    assert len(_syncers()) == before


def test_fsync_and_none_modes_start_no_thread(tmp_path: Path) -> None:
    before = len(_syncers())
    for mode in ("fsync", "none"):
        w = wal.WalWriter(tmp_path, mode, tmp_path / layout.wal_name(len(mode)), create=True)
        assert w._syncer is None
        w.append(1, b"x")
        w.close()
    assert len(_syncers()) == before


def test_unknown_durability_is_refused(tmp_path: Path) -> None:
    with pytest.raises(bt.BtError, match="durability must be one of 'fsync', 'batch', 'none', not 'always'"):
        bt.open(tmp_path / "db", durability="always")
    assert not (tmp_path / "db").exists()


def test_writer_after_rotate_continues_in_the_new_segment(tmp_path: Path) -> None:
    w = wal.WalWriter(tmp_path, "none", tmp_path / layout.wal_name(1), create=True)
    w.append(1, b"a")
    w.append(2, b"b")
    new = w.rotate(3)
    assert new == tmp_path / layout.wal_name(3)
    assert w.size == wal.SEGMENT_HEADER_SIZE
    w.append(3, b"c")
    w.close()
    scans = list(wal.scan_wal(tmp_path))
    assert [(s.path.name, payloads_of(s)) for s in scans] == [
        (layout.wal_name(1), [b"a", b"b"]),
        (layout.wal_name(3), [b"c"]),
    ]


def test_copy_of_a_store_with_a_torn_tail_recovers_identically(tmp_path: Path) -> None:
    # Recovery depends only on the files: a byte-for-byte copy recovers the same rows.
    root = tmp_path / "db"
    _path, rows = small_store(root, 5)
    faults.truncate(next((root / "t" / layout.WAL_DIR).iterdir()), 1)
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    for r in (root, copy):
        with bt.open(r) as store:
            assert_frame_equal(store.table("t").scan().collect(), rows.head(4))


class _SlowSync(fs.FileSystem):
    """fdatasync that, the first time, waits until the test has written another record."""

    def __init__(self) -> None:
        self.in_sync = threading.Event()
        self.release = threading.Event()
        self.synced_sizes: list[int] = []

    def fdatasync(self, fd: int) -> None:
        if threading.current_thread().name != "bt_frames-wal-sync":  # an append's or the zeroer's sync
            super().fdatasync(fd)
            return
        # the end of the records (the zeros written ahead of them do not count)
        size = len(Path(f"/proc/self/fd/{fd}").read_bytes().rstrip(b"\0"))
        if not self.in_sync.is_set():
            self.in_sync.set()
            assert self.release.wait(10)
        super().fdatasync(fd)
        self.synced_sizes.append(size)


def test_batch_record_written_during_a_sync_is_synced_without_another_append(tmp_path: Path) -> None:
    """Regression: the dirty flag was cleared after fdatasync returned, losing a record written meanwhile."""
    slow = _SlowSync()
    with fs.use(slow):
        w = wal.WalWriter(tmp_path, "batch", tmp_path / layout.wal_name(1), create=True)
        try:
            w.append(1, b"first")
            assert slow.in_sync.wait(10)  # the syncer is inside fdatasync (for record 1)
            w.append(2, b"second")  # an append does not wait for the group sync
            end = w.size
            slow.release.set()
            deadline = time.monotonic() + 5
            while (not slow.synced_sizes or slow.synced_sizes[-1] < end) and time.monotonic() < deadline:
                time.sleep(wal.BATCH_INTERVAL_S)
            assert slow.synced_sizes[-1] == end, "record 2 was never synced"
            assert w.unsynced == 0
        finally:
            slow.release.set()
            w.close()


class _FailCreate(fs.FileSystem):
    def open(self, path: fs.StrPath, flags: int, mode: int = 0o644) -> int:
        if flags & os.O_CREAT:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return super().open(path, flags, mode)


def test_failed_rotation_keeps_the_writer_appending_to_the_current_segment(tmp_path: Path) -> None:
    """Regression: ENOSPC while creating the next segment left the fd at -1: every later append failed."""
    w = wal.WalWriter(tmp_path, "fsync", tmp_path / layout.wal_name(1), create=True)
    try:
        w.append(1, b"one")
        with fs.use(_FailCreate()), pytest.raises(OSError, match="No space"):
            w.rotate(2)
        assert w.path == tmp_path / layout.wal_name(1)
        assert not (tmp_path / layout.wal_name(2)).exists()
        w.append(2, b"two")
        w.rotate(3)
        w.append(3, b"three")
    finally:
        w.close()
    assert payloads_of(wal.read_segment(tmp_path / layout.wal_name(1), is_last=False)) == [b"one", b"two"]
    assert payloads_of(read_last(tmp_path / layout.wal_name(3))) == [b"three"]
