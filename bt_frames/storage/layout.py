"""Every path bt_frames reads or writes is built and parsed here.

Store layout (each table's manifest says which of its files make it up)::

    <store>/
      bt_frames.json                         the store marker: format and version (store.py)
      LOCK                                   exclusive writer lock (see locking.py)
      .create-<table>-<8 hex>/               a table being created (renamed into place)
      .dropped-<table>-<8 hex>/              a table being dropped (renamed out of place)
      <table>/
        table.json                           format version, schema, options (catalog.py)
        _manifest/<version>.json             the table's versions: blocks, WAL segments (manifest.py)
        stats.arrow                          cache of block statistics (catalog.py, transient)
        wal/<first-lsn>.wal                  WAL segments (wal.py)
        blocks/<first>-<last>.<part>of<n>.<xxh3>.parquet   immutable blocks (blocks.py)

Names:

- ``<first-lsn>`` is 20 zero-padded decimal digits, so names sort by LSN.
- A block name carries the LSN range it holds, its part number within a
  multi-part append (``1of1`` for an ordinary block; zero-padded to the
  width of the count, ``02of12``, so that a listing sorts in append order)
  and the xxh3-64 digest (16 hex digits) of the whole file: the checksum
  lives outside the file.
- Temporary files are ``.<name>.<thread>.<pid>.tmp`` beside their target; a writer
  removes them when it opens a table. Temporary and dropped table folders
  match ``TRANSIENT_DIR`` exactly; a writer removes those when it opens a
  store that has the marker -- and no other name: a folder that is not a
  store is never cleaned.

``parse_*`` functions return ``None`` for names that are not ours, so stray
files are ignored rather than fatal.
"""

from __future__ import annotations

import itertools
import operator
import os
import re
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from bt_frames.errors import InvalidTableNameError
from bt_frames.storage import fs

LOCK_NAME = "LOCK"
STORE_MARKER = "bt_frames.json"
TABLE_JSON = "table.json"
STATS_CACHE = "stats.arrow"
WAL_DIR = "wal"
BLOCKS_DIR = "blocks"
TMP_SUFFIX = ".tmp"
LSN_DIGITS = 20

TRANSIENT_DIR = re.compile(r"\.(create|dropped)-([A-Za-z0-9_][A-Za-z0-9_.-]*)-([0-9a-f]{8})")
_TMP_NAME = re.compile(r"\..+\.\d+\.tmp")
_TABLE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
_WAL_NAME = re.compile(r"(\d{20})\.wal")
_BLOCK_NAME = re.compile(r"(\d{20})-(\d{20})\.(\d+)of(\d+)\.([0-9a-f]{16})\.parquet")
BLOCK_DIGEST = slice(-24, -8)  # the 16 hex digits of a block name, taken without parsing it (".<digest>.parquet")
MAX_TABLE_NAME = 128


def validate_table_name(name: object) -> str:
    """Return ``name`` if it is a valid table name, else raise InvalidTableNameError."""
    if not isinstance(name, str) or not _TABLE_NAME.fullmatch(name) or ".." in name or len(name) > MAX_TABLE_NAME:
        raise InvalidTableNameError(
            f"invalid table name {name!r}: names match [A-Za-z0-9_][A-Za-z0-9_.-]*, are at most "
            f"{MAX_TABLE_NAME} characters and never contain '..' (no paths). "
            "Fix: use a name like 'orders' or 'ticks_2024.v2'."
        )
    return name


def wal_name(first_lsn: int) -> str:
    return f"{first_lsn:0{LSN_DIGITS}d}.wal"


def parse_wal_name(name: str) -> int | None:
    m = _WAL_NAME.fullmatch(name)
    return int(m.group(1)) if m else None


class BlockName(NamedTuple):
    """A block file name, parsed (a tuple: it is made once per block on every open)."""

    first_lsn: int
    last_lsn: int
    part: int
    nparts: int
    digest: str

    def __str__(self) -> str:
        return (
            f"{self.first_lsn:0{LSN_DIGITS}d}-{self.last_lsn:0{LSN_DIGITS}d}."
            f"{self.part:0{len(str(self.nparts))}d}of{self.nparts}.{self.digest}.parquet"
        )


def parse_block_name(name: str) -> BlockName | None:
    m = _BLOCK_NAME.fullmatch(name)
    if not m:
        return None
    first, last, part, nparts = map(int, m.group(1, 2, 3, 4))
    if first > last or not 1 <= part <= nparts:
        return None
    return BlockName(first, last, part, nparts, m.group(5))


# ASCII digits only (a third faster); a name with other decimal digits, which parse_block_name
# accepts, makes parse_block_names return None, so its caller parses one by one as before
_BLOCK_LINE = re.compile(_BLOCK_NAME.pattern.join("^$"), re.MULTILINE | re.ASCII)


def parse_block_names(names: Sequence[str]) -> list[BlockName] | None:
    """``parse_block_name`` of every name, in bulk (one regex pass, no Python code per name).

    None if any of them is not a block name: parse them one by one to find which.
    A manifest names thousands of blocks, and a name parsed alone costs ~2 µs.
    """
    if not names:
        return []
    joined = "\n".join(names)
    if joined.count("\n") != len(names) - 1:  # a name holding a newline would pass for two lines
        return None
    found = _BLOCK_LINE.findall(joined)  # anchored at both ends of a line: at most one match per name
    if len(found) != len(names):
        return None
    columns = list(zip(*found, strict=True))
    first, last, part, nparts = (list(map(int, c)) for c in columns[:4])
    if any(map(operator.gt, first, last)) or min(part) < 1 or any(map(operator.gt, part, nparts)):
        return None
    return list(
        map(tuple.__new__, itertools.repeat(BlockName), zip(first, last, part, nparts, columns[4], strict=True))
    )


def tmp_path(path: Path) -> Path:
    """``.<name>.<thread>.<pid>.tmp``: the thread too, as two threads of one process may write the same
    file at once (a block's name is its content: compact() and a background merge of the same rows)."""
    return path.with_name(f".{path.name}.{threading.get_native_id()}.{os.getpid()}{TMP_SUFFIX}")


def is_tmp(name: str) -> bool:
    """A temporary file name made by ``tmp_path`` (and nothing else)."""
    return _TMP_NAME.fullmatch(name) is not None


def transient_dir(kind: str, table: str) -> str:
    """``.create-<table>-<8 hex>`` / ``.dropped-<table>-<8 hex>``: a folder name only the store makes."""
    return f".{kind}-{table}-{os.urandom(4).hex()}"


def is_transient_dir(name: str) -> bool:
    return TRANSIENT_DIR.fullmatch(name) is not None


def fsync_dir(path: Path) -> None:
    """fsync a directory so that creations, renames and unlinks in it are durable."""
    fs.fsync_dir(path)


def atomic_write(path: Path, data: bytes | memoryview, *, durable: bool = True) -> None:
    """Write ``data`` to ``path`` atomically: tmp file, fsync, rename, fsync directory.

    A crash at any point leaves either the old file (or none) or the complete
    new one, plus perhaps a ``*.tmp`` file that the next writer removes. A
    failed write (disk full...) leaves the old file and no tmp file behind.
    """
    tmp = tmp_path(path)
    fs.write_file(tmp, data, durable=durable)
    try:
        fs.replace(tmp, path)
    except BaseException:
        fs.unlink(tmp, missing_ok=True)
        raise
    if durable:
        fsync_dir(path.parent)
