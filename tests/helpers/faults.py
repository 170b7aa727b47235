"""Byte-level fault injection on real files (LevelDB log_test.cc's ShrinkSize / IncrementByte).

Every helper works on a file in place and returns what it changed, so a test
can say exactly which byte it damaged. ``record_offsets`` parses a WAL segment
with the engine's own constants (``bt_frames.storage.wal``) instead of
re-hardcoding the format.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from bt_frames.storage import wal


def truncate(path: Path, n_bytes_to_remove: int) -> int:
    """Cut the last ``n_bytes_to_remove`` bytes off ``path``; return the new size."""
    size = path.stat().st_size
    if not 0 <= n_bytes_to_remove <= size:
        raise ValueError(f"cannot remove {n_bytes_to_remove} bytes from {path} ({size} bytes)")
    return truncate_to(path, size - n_bytes_to_remove)


def truncate_to(path: Path, size: int) -> int:
    """Truncate ``path`` to exactly ``size`` bytes (which must not grow it); return ``size``."""
    if not 0 <= size <= path.stat().st_size:
        raise ValueError(f"truncate_to({size}) would grow {path} ({path.stat().st_size} bytes)")
    os.truncate(path, size)
    return size


def flip_byte(path: Path, offset: int, mask: int = 0xFF) -> tuple[int, int]:
    """XOR the byte at ``offset`` (negative: from the end) with ``mask``; return (old, new)."""
    if not 0 < mask <= 0xFF:
        raise ValueError(f"mask must be 1..255, not {mask}")
    size = path.stat().st_size
    pos = offset + size if offset < 0 else offset
    if not 0 <= pos < size:
        raise ValueError(f"offset {offset} is outside {path} ({size} bytes)")
    with open(path, "r+b") as f:
        f.seek(pos)
        old = f.read(1)[0]
        new = old ^ mask
        f.seek(pos)
        f.write(bytes([new]))
    return old, new


def overwrite(path: Path, offset: int, data: bytes) -> bytes:
    """Write ``data`` over the bytes at ``offset`` (never past the end); return the bytes replaced."""
    size = path.stat().st_size
    if not 0 <= offset <= offset + len(data) <= size:
        raise ValueError(f"overwrite of {len(data)} bytes at {offset} runs outside {path} ({size} bytes)")
    with open(path, "r+b") as f:
        f.seek(offset)
        old = f.read(len(data))
        f.seek(offset)
        f.write(data)
    return old


@dataclass(frozen=True)
class RecordSpan:
    """Where one framed record of a WAL segment lies."""

    offset: int  # first byte of the record header (the magic)
    lsn: int
    length: int  # payload bytes

    @property
    def magic_offset(self) -> int:
        return self.offset

    @property
    def length_offset(self) -> int:
        return self.offset + 4

    @property
    def crc_offset(self) -> int:
        return self.offset + 8

    @property
    def lsn_offset(self) -> int:
        return self.offset + 12

    @property
    def payload_offset(self) -> int:
        return self.offset + wal.RECORD_HEADER_SIZE

    @property
    def end(self) -> int:
        return self.payload_offset + self.length


def record_offsets(segment_path: Path) -> list[RecordSpan]:
    """Every complete record of an *undamaged* segment, parsed with wal.py's constants.

    Stops at the first incomplete header or payload; does not check CRCs (this
    is a test tool to aim damage, not a reader).
    """
    data = segment_path.read_bytes()
    if len(data) < wal.SEGMENT_HEADER_SIZE:
        return []
    magic, _version = wal.SEGMENT_HEADER.unpack_from(data, 0)
    if magic != wal.SEGMENT_MAGIC:
        raise ValueError(f"{segment_path} is not a WAL segment")
    out: list[RecordSpan] = []
    o = wal.SEGMENT_HEADER_SIZE
    while o + wal.RECORD_HEADER_SIZE <= len(data):
        rmagic, length, _crc, lsn = wal.RECORD_HEADER.unpack_from(data, o)
        if rmagic != wal.RECORD_MAGIC or o + wal.RECORD_HEADER_SIZE + length > len(data):
            break
        out.append(RecordSpan(o, lsn, length))
        o += wal.RECORD_HEADER_SIZE + length
    return out
