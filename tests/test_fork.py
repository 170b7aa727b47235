"""A forked child of a writer: it shares the parent's lock and WAL descriptors, so it never writes.

``multiprocessing`` with the fork start method, or a plain ``os.fork()``, copies an open
``BacktraceStore`` into the child. Closing that copy (leaving a ``with`` block) must not
truncate the parent's WAL segment, commit a manifest version or release the parent's lock
(``flock`` belongs to the open file, which fork shares); writing from it is refused.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

import bt_frames as bt

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")

SCHEMA = {"x": pl.Int64()}


def _fork(child: object) -> int:
    """Run ``child()`` in a forked child; its exit code (0: it returned, 1: it raised)."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            child()  # type: ignore[operator]
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def _rows(path: Path) -> list[int]:
    with bt.BacktraceStore(path, read_only=True) as store:
        return store.table("t").scan().collect()["x"].to_list()


def test_a_forked_childs_close_leaves_the_parents_wal_lock_and_manifest_alone(tmp_path: Path) -> None:
    path = tmp_path / "db"
    store = bt.BacktraceStore(path)
    t = store.create_table("t", SCHEMA)
    t.append(pl.DataFrame({"x": [0]}))
    versions = sorted(os.listdir(path / "t" / "_manifest"))
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child: waits until the parent has appended, then closes its copy
        try:
            os.close(write_fd)
            os.read(read_fd, 1)
            store.close()
        finally:
            os._exit(0)
    os.close(read_fd)
    for i in range(1, 6):
        t.append(pl.DataFrame({"x": [i]}))  # acknowledged (fsync), written in place into the zeros
    os.write(write_fd, b"x")
    os.close(write_fd)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    # the child's close cut nothing, committed nothing, released nothing
    assert _rows(path) == [0, 1, 2, 3, 4, 5]
    assert sorted(os.listdir(path / "t" / "_manifest")) == versions
    other = subprocess.run(
        [sys.executable, "-c", "import sys, bt_frames as bt; bt.BacktraceStore(sys.argv[1])", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert other.returncode != 0
    assert "StoreLockedError" in other.stderr, other.stderr
    t.append(pl.DataFrame({"x": [6]}))
    store.close()
    assert _rows(path) == list(range(7))


def test_a_forked_child_cannot_write(tmp_path: Path) -> None:
    path = tmp_path / "db"
    with bt.BacktraceStore(path) as store:
        t = store.create_table("t", SCHEMA)
        t.append(pl.DataFrame({"x": [0]}))

        def child() -> None:
            with pytest.raises(bt.BtError, match=r"forked child.*read_only=True"):
                t.append(pl.DataFrame({"x": [99]}))

        assert _fork(child) == 0
        assert t.scan().collect()["x"].to_list() == [0]
        t.append(pl.DataFrame({"x": [1]}))
    assert _rows(path) == [0, 1]


def test_a_forked_child_cannot_create_or_drop_a_table(tmp_path: Path) -> None:
    """The store's own writes too: a child's drop_table would remove the parent's live table."""
    path = tmp_path / "db"
    with bt.BacktraceStore(path) as store:
        store.create_table("t", SCHEMA).append(pl.DataFrame({"x": [0]}))

        def child() -> None:
            with pytest.raises(bt.BtError, match=r"forked child.*read_only=True"):
                store.drop_table("t")
            with pytest.raises(bt.BtError, match=r"forked child.*read_only=True"):
                store.create_table("u", SCHEMA)

        assert _fork(child) == 0
        assert store.tables == ["t"]
        assert not (path / "u").exists()
    assert _rows(path) == [0]
