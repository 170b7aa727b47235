"""The test machinery itself: the power-loss simulator and the fault-injecting file system.

Hand-written sequences of ``bt_frames.storage.fs`` calls on real files, and
what a power loss may leave after them (tests/helpers/powerloss.py).
"""

from __future__ import annotations

import errno
import os
import threading
from pathlib import Path

import pytest

from bt_frames.storage import fs
from tests.helpers.faultfs import FaultFS
from tests.helpers.powerloss import PowerLoss, RecordingFS

W = os.O_WRONLY | os.O_CREAT
Outcome = dict[str, bytes | None]  # path -> bytes (None: a directory)


def _record(root: Path, body: object) -> PowerLoss:
    root.mkdir(exist_ok=True)
    rec = RecordingFS(root)
    with fs.use(rec):
        rec.start()
        body()  # type: ignore[operator]
    return PowerLoss(rec.trace())


def _outcomes(sim: PowerLoss, point: int = -1) -> list[Outcome]:
    """Distinct trees a power loss may leave at one crash point (default: after the last call)."""
    return [st.files(sim.blobs) for st in sim.states([sim.points[point]]).values()]


def _write(path: Path, data: bytes, *, sync: bool) -> None:
    fd = fs.open_fd(path, W | os.O_TRUNC)
    fs.write_all(fd, data)
    if sync:
        fs.fsync(fd)
    fs.close(fd)


def test_unsynced_file_is_absent_or_empty(tmp_path: Path) -> None:
    root = tmp_path / "r"
    sim = _record(root, lambda: _write(root / "a", b"hello", sync=False))
    outs = _outcomes(sim)
    got = {o.get("a", "absent") for o in outs}
    assert "absent" in got
    assert b"" in got
    assert b"hello" in got  # or everything kept (a process crash)
    assert all(v in ("absent", b"", b"hello", b"he", b"\0" * 5) for v in got), got
    assert sim.points[0]
    assert _outcomes(sim, 0) == [{}]


def test_fsynced_file_without_dir_fsync_may_vanish(tmp_path: Path) -> None:
    root = tmp_path / "r"
    sim = _record(root, lambda: _write(root / "a", b"hello", sync=True))
    got = {o.get("a", "absent") for o in _outcomes(sim)}
    assert got == {"absent", b"hello"}


def test_file_and_dir_synced_is_durable(tmp_path: Path) -> None:
    root = tmp_path / "r"

    def body() -> None:
        _write(root / "a", b"hello", sync=True)
        fs.fsync_dir(root)

    sim = _record(root, body)
    assert _outcomes(sim) == [{"a": b"hello"}]


def test_append_after_sync_is_kept_lost_or_torn(tmp_path: Path) -> None:
    root = tmp_path / "r"

    def body() -> None:
        _write(root / "log", b"AAAA", sync=True)
        fs.fsync_dir(root)
        fd = fs.open_fd(root / "log", os.O_WRONLY | os.O_APPEND)
        fs.write_all(fd, b"BBBBBBBB")
        fs.close(fd)

    sim = _record(root, body)
    got = {o["log"] for o in _outcomes(sim)}
    assert got == {b"AAAA", b"AAAABBBBBBBB", b"AAAABBBB", b"AAAA" + b"\0" * 8}


def test_in_place_write_over_synced_zeros_is_kept_lost_or_torn(tmp_path: Path) -> None:
    # the WAL's records written into zeros synced ahead: lost means the zeros, torn keeps zeros after a half
    root = tmp_path / "r"

    def body() -> None:
        _write(root / "log", b"AAAA" + bytes(12), sync=True)
        fs.fsync_dir(root)
        fd = fs.open_fd(root / "log", os.O_WRONLY)
        fs.pwritev_all(fd, [b"BBBB", b"CCCC"], 4)
        fs.close(fd)

    sim = _record(root, body)
    got = {o["log"] for o in _outcomes(sim)}
    assert got == {b"AAAA" + bytes(12), b"AAAABBBBCCCC" + bytes(4), b"AAAABBBB" + bytes(8)}


def test_in_place_write_after_an_unsynced_one_tears_only_the_last(tmp_path: Path) -> None:
    root = tmp_path / "r"

    def body() -> None:
        _write(root / "log", bytes(16), sync=True)
        fs.fsync_dir(root)
        fd = fs.open_fd(root / "log", os.O_WRONLY)
        fs.pwritev_all(fd, [b"AAAA"], 0)
        fs.pwritev_all(fd, [b"BBBB"], 4)
        fs.close(fd)

    sim = _record(root, body)
    got = {o["log"] for o in _outcomes(sim)}
    # in order: a later write is never kept without the earlier one (the model's prefix guarantee)
    assert got == {bytes(16), b"AAAA" + bytes(12), b"AA" + bytes(14), b"AAAABBBB" + bytes(8), b"AAAABB" + bytes(10)}


def test_rename_without_dir_fsync_may_be_lost(tmp_path: Path) -> None:
    root = tmp_path / "r"
    (root).mkdir()
    (root / "a").write_bytes(b"data")  # before recording: durable

    sim = _record(root, lambda: fs.replace(root / "a", root / "b"))
    outs = _outcomes(sim)
    assert {"a": b"data"} in outs
    assert {"b": b"data"} in outs
    assert len(outs) == 2  # a rename is atomic within its directory: never both, never neither


def test_rename_kept_but_unsynced_data_lost(tmp_path: Path) -> None:
    """The classic bug: write tmp, rename over the target without fsync of tmp -> an empty target."""
    root = tmp_path / "r"
    root.mkdir()
    (root / "f").write_bytes(b"old")

    def body() -> None:
        _write(root / "f.tmp", b"new", sync=False)
        fs.replace(root / "f.tmp", root / "f")

    sim = _record(root, body)
    got = {o.get("f") for o in _outcomes(sim)}
    assert b"" in got  # the rename survived, the data did not
    assert {b"old", b"new"} <= got


def test_atomic_write_gives_old_or_new(tmp_path: Path) -> None:
    root = tmp_path / "r"
    root.mkdir()
    (root / "f").write_bytes(b"old")

    def body() -> None:
        _write(root / "f.tmp", b"new contents", sync=True)
        fs.replace(root / "f.tmp", root / "f")
        fs.fsync_dir(root)

    sim = _record(root, body)
    for i in range(len(sim.points)):
        for o in _outcomes(sim, i):
            assert o.get("f") in (b"old", b"new contents"), (i, o)
    assert _outcomes(sim) == [{"f": b"new contents"}]  # after the directory fsync: only new
    before_rename = sim.points[-3]
    assert {o["f"] for o in _outcomes(sim, sim.points.index(before_rename))} == {b"old"}


def test_mkdir_needs_parent_fsync_and_contents_need_own(tmp_path: Path) -> None:
    root = tmp_path / "r"

    def body() -> None:
        fs.mkdir(root / "d")
        _write(root / "d" / "x", b"1", sync=True)
        fs.fsync_dir(root / "d")

    sim = _record(root, body)
    outs = _outcomes(sim)
    assert {} in outs  # d itself never made durable in root
    assert {"d": None, "d/x": b"1"} in outs
    assert all(o.get("d/x", b"1") == b"1" for o in outs)  # x is durable inside d whenever d survives


def test_changes_made_without_the_seam_are_modelled_and_listed(tmp_path: Path) -> None:
    root = tmp_path / "r"
    root.mkdir()
    rec = RecordingFS(root)
    with fs.use(rec):
        rec.start()
        os.mkdir(root / "sneaky")  # not through fs
        rec.mark("after sneaky mkdir")
        fs.fsync_dir(root)
    trace = rec.trace()
    assert [e.detail for e in trace.untracked()] == ["+sneaky"]
    sim = PowerLoss(trace)
    assert _outcomes(sim) == [{"sneaky": None}]  # made durable by the fsync_dir
    assert {} in _outcomes(sim, 1)  # before it: may be lost


def test_inode_reuse_is_a_new_file(tmp_path: Path) -> None:
    """A new file that gets a freed inode number must not inherit the old file's durable bytes."""
    root = tmp_path / "r"

    def body() -> None:
        for i in range(3):
            _write(root / f"t{i}", b"x" * (i + 1), sync=True)
            fs.fsync_dir(root)
            fs.unlink(root / f"t{i}")
            fs.fsync_dir(root)
        _write(root / "new", b"fresh", sync=False)

    sim = _record(root, body)
    assert {o.get("new", "absent") for o in _outcomes(sim)} <= {"absent", b"", b"fresh", b"fr", b"\0" * 5}


def test_concurrent_calls_are_recorded_in_one_order(tmp_path: Path) -> None:
    root = tmp_path / "r"

    def worker(i: int) -> None:
        for j in range(5):
            _write(root / f"w{i}-{j}", b"z", sync=True)

    def body() -> None:
        ts = [threading.Thread(target=worker, args=(i,)) for i in range(3)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()

    sim = _record(root, body)
    ops = sim.trace.ops()
    assert len(ops) == 3 * 5 * 3  # open, write, fsync each
    assert len(sim.points) == len(sim.trace.snaps)


# -- FaultFS -------------------------------------------------------------------


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EIO])
def test_faultfs_fails_only_the_kth_call_of_its_kind(tmp_path: Path, err: int) -> None:
    ffs = FaultFS("fsync", 2, err)
    with fs.use(ffs):
        _write(tmp_path / "a", b"1", sync=True)
        with pytest.raises(OSError, match=os.strerror(err)) as e:
            _write(tmp_path / "b", b"2", sync=True)
        assert e.value.errno == err
        _write(tmp_path / "c", b"3", sync=True)  # the fault is gone
    assert ffs.counts["fsync"] == 3
    assert ffs.counts["write"] == 3
    assert ffs.counts["create"] == 3
    assert ffs.injected is not None
    assert ffs.injected.k == 2
    assert "fsync" in ffs.injected.call


def test_faultfs_failed_call_does_nothing(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"x")
    with fs.use(FaultFS("replace", 1, errno.EIO)), pytest.raises(OSError, match="Input/output"):
        fs.replace(tmp_path / "a", tmp_path / "b")
    assert (tmp_path / "a").exists()
    assert not (tmp_path / "b").exists()
    with fs.use(FaultFS("create", 1, errno.ENOSPC)), pytest.raises(OSError, match="No space"):
        fs.open_fd(tmp_path / "c", W)
    assert not (tmp_path / "c").exists()
