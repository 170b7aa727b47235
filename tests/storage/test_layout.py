"""storage/layout.py: every name round-trips format -> parse, foreign names parse to None, table names are safe.

LevelDB ``db/filename_test.cc`` style: one table of names that must parse, one of names that must not.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import bt_frames as bt
from bt_frames.storage import layout

# -- WAL segment names -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("lsn", [0, 1, 9, 10, 12345, 10**19, 10**20 - 1])
def test_wal_name_round_trips(lsn: int) -> None:
    name = layout.wal_name(lsn)
    assert len(name) == layout.LSN_DIGITS + len(".wal")
    assert layout.parse_wal_name(name) == lsn


def test_wal_names_sort_by_lsn() -> None:
    lsns = [1, 2, 10, 99, 100, 12345, 10**18]
    assert sorted(layout.wal_name(n) for n in lsns) == [layout.wal_name(n) for n in lsns]


@pytest.mark.parametrize(
    "name",
    [
        "1.wal",  # not zero-padded
        "0000000000000000001.wal",  # 19 digits
        "000000000000000000001.wal",  # 21 digits
        "00000000000000000001.wal.tmp",  # a tmp file
        ".00000000000000000001.wal.123.tmp",  # layout.tmp_path of a segment
        "00000000000000000001.WAL",
        "00000000000000000001.wal ",
        "0000000000000000000a.wal",
        "00000000000000000001.parquet",
        "notes.txt",
        "",
    ],
)
def test_parse_wal_name_ignores_foreign_files(name: str) -> None:
    assert layout.parse_wal_name(name) is None


# -- block names ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "block",
    [
        layout.BlockName(1, 1, 1, 1, "0123456789abcdef"),
        layout.BlockName(5, 17, 1, 1, "ffffffffffffffff"),
        layout.BlockName(42, 42, 3, 7, "0000000000000000"),
        layout.BlockName(0, 10**20 - 1, 12, 12, "a1b2c3d4e5f60789"),
    ],
)
def test_block_name_round_trips(block: layout.BlockName) -> None:
    name = str(block)
    assert name.endswith(".parquet")
    assert layout.parse_block_name(name) == block


def test_part_numbers_are_padded_so_a_listing_sorts_in_append_order() -> None:
    names = [str(layout.BlockName(7, 7, part, 12, "0123456789abcdef")) for part in range(1, 13)]
    assert ".02of12." in names[1]
    assert sorted(names) == names
    assert [layout.parse_block_name(n) for n in names] == [
        layout.BlockName(7, 7, part, 12, "0123456789abcdef") for part in range(1, 13)
    ]


def test_unpadded_part_numbers_of_older_stores_still_parse() -> None:
    # Paths are always taken from the directory listing, so a legacy name opens as the block it is.
    legacy = "00000000000000000007-00000000000000000007.2of12.0123456789abcdef.parquet"
    assert layout.parse_block_name(legacy) == layout.BlockName(7, 7, 2, 12, "0123456789abcdef")


def test_block_names_sort_by_lsn_range() -> None:
    names = [layout.BlockName(f, f + 9, 1, 1, "0" * 16) for f in (1, 11, 101, 1001)]
    assert sorted(str(n) for n in reversed(names)) == [str(n) for n in names]


@pytest.mark.parametrize(
    "name",
    [
        "00000000000000000005-00000000000000000001.1of1.0123456789abcdef.parquet",  # first > last
        "00000000000000000001-00000000000000000005.0of1.0123456789abcdef.parquet",  # part 0
        "00000000000000000001-00000000000000000005.3of2.0123456789abcdef.parquet",  # part > nparts
        "00000000000000000001-00000000000000000005.1of1.0123456789ABCDEF.parquet",  # upper-case digest
        "00000000000000000001-00000000000000000005.1of1.0123456789abcde.parquet",  # 15 hex digits
        "00000000000000000001-00000000000000000005.1of1.0123456789abcdeg.parquet",  # not hex
        "00000000000000000001-00000000000000000005.1of1.0123456789abcdef.parquet.tmp",
        ".00000000000000000001-00000000000000000005.1of1.0123456789abcdef.parquet.77.tmp",
        "1-5.1of1.0123456789abcdef.parquet",
        "00000000000000000001-00000000000000000005.parquet",
        "part-0000.parquet",  # another tool's Parquet file
        "00000000000000000001.wal",
        "",
    ],
)
def test_parse_block_name_ignores_foreign_files(name: str) -> None:
    assert layout.parse_block_name(name) is None


# -- temporary names -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "final",
    [
        layout.TABLE_JSON,
        layout.STATS_CACHE,
        layout.wal_name(7),
        str(layout.BlockName(1, 2, 1, 1, "0123456789abcdef")),
    ],
)
def test_tmp_name_of_every_file_is_recognised_and_never_parses_as_data(tmp_path: Path, final: str) -> None:
    tmp = layout.tmp_path(tmp_path / final)
    assert tmp.parent == tmp_path
    assert tmp.name.startswith(".")  # hidden, never listed as a table/segment/block
    assert str(os.getpid()) in tmp.name  # two processes never share a tmp file
    assert layout.is_tmp(tmp.name)
    assert not layout.is_tmp(final)
    assert layout.parse_wal_name(tmp.name) is None
    assert layout.parse_block_name(tmp.name) is None


# -- table names ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["orders", "a", "_", "0", "ticks_2024.v2", "BTC-USD", "a.b.c", "x" * layout.MAX_TABLE_NAME, "_hidden_not"],
)
def test_valid_table_names_are_accepted(name: str) -> None:
    assert layout.validate_table_name(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        ".",
        "..",
        "../x",
        "a/../b",
        "a..b",  # contains '..'
        "a/b",
        "/abs",
        "a\\b",
        ".hidden",  # leading dot: reserved for tmp/dropped table folders
        "-dash",
        "with space",
        "tab\t",
        "new\nline",
        "nul\x00",
        "ordérs",  # unicode letter
        "表",
        "x" * (layout.MAX_TABLE_NAME + 1),
        "LOCK*",
    ],
)
def test_invalid_table_names_are_rejected(name: str) -> None:
    with pytest.raises(bt.InvalidTableNameError) as exc:
        layout.validate_table_name(name)
    assert isinstance(exc.value, bt.BtError)
    assert isinstance(exc.value, ValueError)
    assert repr(name) in str(exc.value)
    assert "Fix:" in str(exc.value)


@pytest.mark.parametrize("name", [None, 3, b"orders", ["orders"]])
def test_non_string_table_names_are_rejected(name: object) -> None:
    with pytest.raises(bt.InvalidTableNameError):
        layout.validate_table_name(name)


# -- atomic_write ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("durable", [True, False])
def test_atomic_write_creates_then_replaces_and_leaves_no_tmp(tmp_path: Path, durable: bool) -> None:
    target = tmp_path / "table.json"
    layout.atomic_write(target, b"first", durable=durable)
    assert target.read_bytes() == b"first"
    ino = target.stat().st_ino
    layout.atomic_write(target, memoryview(b"second, longer content"), durable=durable)
    assert target.read_bytes() == b"second, longer content"
    assert target.stat().st_ino != ino  # replaced by a rename, never rewritten in place
    layout.atomic_write(target, b"", durable=durable)
    assert target.read_bytes() == b""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["table.json"]


def test_atomic_write_failure_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "table.json"
    layout.atomic_write(target, b"old")
    with pytest.raises(TypeError):
        layout.atomic_write(target, "not bytes")  # type: ignore[arg-type]
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["table.json"]  # the tmp file was removed


def test_atomic_write_over_a_stale_tmp_of_the_same_process(tmp_path: Path) -> None:
    target = tmp_path / "stats.json"
    layout.tmp_path(target).write_bytes(b"left over by a crash, much longer than the new content")
    layout.atomic_write(target, b"new")
    assert target.read_bytes() == b"new"
    assert not layout.tmp_path(target).exists()
