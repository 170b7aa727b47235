"""The write-ahead log: segment files of framed, checksummed records.

Every acknowledged append is one record in the WAL of its table before it is
visible anywhere else. A table's WAL is a folder of *segments*,
``wal/<first-lsn>.wal`` (names in :mod:`bt_frames.storage.layout`); every
record in a segment has an LSN >= the LSN in its name.

Segment grammar (all integers little-endian)::

    segment := header record*
    header  := "BTWAL\\0" version:u16                      8 bytes
    record  := magic:u32 length:u32 crc:u32 lsn:u64 payload[length]
               -- 20-byte record header, then the payload

    magic   = 0xB7F0A1E5 (RECORD_MAGIC): marks a record start, so a scan that
              has lost its place can tell records from payload bytes.
    length  = number of payload bytes (< 2**32).
    crc     = CRC-32 (zlib) of length, lsn and payload, i.e. of every byte of
              the record except the magic and the crc itself. A damaged length
              field therefore fails the checksum instead of silently framing
              the wrong bytes.
    lsn     = log sequence number: strictly increasing across the table's WAL.
    payload = one Arrow IPC *stream* (schema + record batches) holding the
              validated, coerced batch exactly as it was acknowledged.

Validity of the record at byte offset ``o`` of a segment of ``size`` bytes:

1. ``o + 20 <= size``                         (the header is complete)
2. magic == RECORD_MAGIC
3. ``o + 20 + length <= size``                (the payload is complete)
4. crc matches
5. lsn > the previous record's lsn and lsn >= the segment's first LSN
6. the payload decodes as an Arrow IPC stream with the table's schema

Replay (``read_segment``) walks records from offset 8. When conditions 1-4
fail at ``o`` it decides between a *torn tail* and *corruption*:

- torn tail: this is the last segment and no valid record (conditions 2-4,
  with an LSN greater than the last good one) starts anywhere after ``o``.
  The same holds for the segment header: a last segment of at most 8 bytes
  whose header is incomplete or not the magic (zeros, on a file system that
  shows unsynced bytes as zeros) is an unfinished creation: the header is
  synced before any record is appended.
  A crash during the final write can only leave such a tail, and its append
  was never acknowledged. A writer truncates the file to ``o``; a read-only
  reader just stops there.
- zero tail: this is the last segment and every byte from ``o`` to the end
  is zero. These are the zeros the writer wrote ahead of its records (below),
  not a torn append: the end of the log, reported as ``zero_tail``, never as
  torn bytes. A record cut short and followed by zeros is not all zeros: a
  torn tail, as above.
- corruption: otherwise. ``CorruptionError`` names the file and ``o``;
  acknowledged data is never dropped silently. A record that passes its
  checksum but breaks 5 or 6 is always corruption. A segment that is not the
  last never ends in zeros (the writer cuts them before the next segment
  exists), so zeros there are corruption too.

Write path (``WalWriter.append``): the header and payload go to the file in
one ``pwritev`` at the valid end (the descriptor has no ``O_APPEND``), then,
by durability policy: ``"fsync"`` — ``fdatasync`` before returning;
``"batch"`` — a background thread syncs every ``BATCH_INTERVAL_S`` (a process
crash loses nothing, the kernel has the bytes; a power loss at most the last
interval); ``"none"`` — left to the OS. A failed write or sync truncates the
file back to the valid end (zeros ahead included), so a failed append leaves
no partial record behind.

Zeros ahead (``"fsync"`` only; PostgreSQL's zero-filled WAL
segments): the last segment is extended by ``ZERO_CHUNK`` bytes of zeros,
written and ``fdatasync``'ed *before* records land there, whenever less
than half a chunk is left after the valid end. A record then overwrites
allocated, already-durable zeros in place, so its ``fdatasync`` changes no
file size or extent: on ext4 it flushes the data without the journal
commit an appending ``fdatasync`` pays. A zeroer thread writes the chunks
(tests run it inline); an append that would reach past the zeros waits
for a chunk in flight, else writes past the end as before. The segment is
cut back to its valid end (``ftruncate`` + ``fsync``) at ``rotate`` before
the next segment is created, and at ``close``; a writer that opens a table
cuts a zero tail left by a crash and zeroes ahead again. Disk usage: the
live segment is up to ``ZERO_CHUNK`` (1 MiB) larger than its records.
Only ``"fsync"``: there every record is durable before the next is written,
so after a power loss the file is its synced records, then at most one
unacknowledged record torn anywhere, then zeros. Under ``"batch"`` several
unsynced records share the file's dirty pages, and writeback of a file whose
size does not change may persist a later page without an earlier one: zeros,
then a valid record -- which a reader must call corruption. Appending keeps
those pages' order tied to the file size, so ``"batch"`` appends as before.

Format version: zero tails did not change the grammar, so ``WAL_VERSION``
stays 1 and segments without zeros read as before. A reader older than zero
tails shows the zeros of a live or crashed writer's last segment as a torn
tail (the 20-byte header check fails on zeros and no valid record follows),
which is the end of the log to it as well: it reads the same records and
its writer cuts the zeros as a torn tail. Nothing acknowledged is lost either way.

Flush order (see ``Table._freeze``): rotate to a new segment
(fsync the old one, create the new one, fsync the directory), write the
block (tmp, fsync, rename, fsync dir), then delete the segments whose records
are all <= the block's last LSN and fsync the directory. A crash between any
two steps leaves records that blocks also hold; replay skips every LSN <= the
highest LSN held by a block, so rows are neither lost nor duplicated.
"""

from __future__ import annotations

import logging
import os
import struct
import threading
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from bt_frames.errors import BtError, CorruptionError
from bt_frames.storage import fs, layout

Durability = Literal["fsync", "batch", "none"]
DURABILITY_MODES: tuple[str, ...] = ("fsync", "batch", "none")

SEGMENT_MAGIC = b"BTWAL\x00"
WAL_VERSION = 1
SEGMENT_HEADER = struct.Struct("<6sH")
SEGMENT_HEADER_SIZE = SEGMENT_HEADER.size  # 8
RECORD_MAGIC = 0xB7F0A1E5
RECORD_HEADER = struct.Struct("<IIIQ")  # magic, length, crc, lsn
RECORD_HEADER_SIZE = RECORD_HEADER.size  # 20
_LEN = struct.Struct("<I")
_LEN_LSN = struct.Struct("<IQ")  # length then lsn, as the CRC covers them (no padding with "<")
_MAGIC_BYTES = _LEN.pack(RECORD_MAGIC)
MAX_PAYLOAD = 2**32 - 1
BATCH_INTERVAL_S = 0.005
RACE_REREADS = 5  # a reader re-reads a last segment with a gap before a valid record (see read_segment)
ZERO_CHUNK = 1 << 20  # bytes of zeros written (and synced) ahead of the records at a time
ZERO_AHEAD = True  # False: records are appended (no zeros ahead), as before; for comparison (benchmarks)
ZERO_IN_BACKGROUND = True  # False (tests): the zeroing runs inline, after the append that asks for it

log = logging.getLogger("bt_frames")


def record_crc(length: int, lsn: int, payload: bytes | memoryview) -> int:
    """CRC-32 of length (u32), lsn (u64) and payload: two calls, the header fields packed once."""
    return zlib.crc32(payload, zlib.crc32(_LEN_LSN.pack(length, lsn)))


def encode_record(lsn: int, payload: bytes | memoryview) -> bytes:
    """The header of a record (the payload follows it unchanged)."""
    n = len(payload)
    if n > MAX_PAYLOAD:
        raise BtError(f"WAL record of {n} bytes exceeds the {MAX_PAYLOAD}-byte limit; append in chunks")
    return RECORD_HEADER.pack(RECORD_MAGIC, n, record_crc(n, lsn, payload), lsn)


def segment_header() -> bytes:
    return SEGMENT_HEADER.pack(SEGMENT_MAGIC, WAL_VERSION)


@dataclass(frozen=True)
class Record:
    lsn: int
    offset: int
    payload: memoryview


@dataclass
class SegmentScan:
    """What ``read_segment`` found in one segment."""

    path: Path
    first_lsn: int
    records: list[Record]
    valid_end: int  # offset just past the last valid record
    size: int  # file size as read
    zero_tail: int = 0  # bytes after valid_end, all zeros: written ahead by the writer, not a torn append

    @property
    def torn_bytes(self) -> int:
        return self.size - self.valid_end - self.zero_tail


def _valid_at(buf: memoryview, o: int, size: int) -> tuple[int, int] | None:
    """(lsn, length) if conditions 1-4 hold at offset o, else None."""
    if o + RECORD_HEADER_SIZE > size:
        return None
    magic, length, crc, lsn = RECORD_HEADER.unpack_from(buf, o)
    if magic != RECORD_MAGIC or o + RECORD_HEADER_SIZE + length > size:
        return None
    payload = buf[o + RECORD_HEADER_SIZE : o + RECORD_HEADER_SIZE + length]
    if record_crc(length, lsn, payload) != crc:
        return None
    return lsn, length


def _valid_record_after(data: bytes, buf: memoryview, start: int, size: int, min_lsn: int) -> int | None:
    """Offset of the first valid record starting after ``start``, if any."""
    pos = data.find(_MAGIC_BYTES, start + 1)
    while pos != -1:
        found = _valid_at(buf, pos, size)
        if found is not None and found[0] >= min_lsn:
            return pos
        pos = data.find(_MAGIC_BYTES, pos + 1)
    return None


def read_segment(path: Path, *, is_last: bool, prev_lsn: int = -1) -> SegmentScan:
    """Read and check every record of one segment (see the module docstring).

    Raises CorruptionError for anything but a torn tail of the last segment.

    A read racing the writer of the last segment may copy a page before a
    record is written in place and a later page after the next record is:
    a gap of zeros before a valid record. Records are written in LSN order,
    so the earlier record was complete before that read ended: the segment is
    read again (up to ``RACE_REREADS`` times) before the gap counts as damage.
    """
    first_lsn = layout.parse_wal_name(path.name)
    if first_lsn is None:  # pragma: no cover - callers only pass our names
        raise ValueError(f"not a WAL segment name: {path}")
    for _ in range(RACE_REREADS if is_last else 0):
        try:
            return _scan_segment(path, path.read_bytes(), first_lsn, is_last=is_last, prev_lsn=prev_lsn, reread=True)
        except _MaybeRaced:
            continue
    return _scan_segment(path, path.read_bytes(), first_lsn, is_last=is_last, prev_lsn=prev_lsn, reread=False)


class _MaybeRaced(Exception):
    """A gap before a valid record in the last segment: maybe a read that raced the writer."""


def _scan_segment(
    path: Path, data: bytes, first_lsn: int, *, is_last: bool, prev_lsn: int, reread: bool
) -> SegmentScan:
    size = len(data)
    buf = memoryview(data)
    if size < SEGMENT_HEADER_SIZE:
        if is_last:  # crash while creating the segment
            return SegmentScan(path, first_lsn, [], 0, size)
        raise CorruptionError.at(path, 0, f"segment header is {size} bytes, expected {SEGMENT_HEADER_SIZE}")
    magic, version = SEGMENT_HEADER.unpack_from(buf, 0)
    if magic != SEGMENT_MAGIC:
        if is_last and size <= SEGMENT_HEADER_SIZE:
            # a crash while creating the segment: its header never reached the disk (a file system may
            # show unsynced bytes as zeros). The header is synced before any record is appended, so a
            # longer segment with a bad header is damage, not an unfinished creation.
            return SegmentScan(path, first_lsn, [], 0, size)
        raise CorruptionError.at(path, 0, "not a bt_frames WAL segment (bad magic)")
    if version > WAL_VERSION:
        from bt_frames.errors import UnsupportedFormatError

        raise UnsupportedFormatError.newer(path, version, WAL_VERSION)
    records: list[Record] = []
    o = SEGMENT_HEADER_SIZE
    last = prev_lsn
    while o < size:
        found = _valid_at(buf, o, size)
        if found is None:
            zeros = size - o if data.count(0, o) == size - o else 0
            if is_last and zeros:
                return SegmentScan(path, first_lsn, records, o, size, zeros)  # the end of the log
            later = _valid_record_after(data, buf, o, size, max(first_lsn, last + 1))
            if is_last and later is None:
                return SegmentScan(path, first_lsn, records, o, size)  # torn tail
            if is_last and reread:
                raise _MaybeRaced
            reason = _describe_bad_record(buf, o, size)
            if later is not None:
                reason += f"; a valid record follows at offset {later}, so this is not a torn tail"
            elif zeros:
                reason += (
                    f"; the {zeros} bytes from here on are zeros, but later segments exist, so this is not the end"
                )
            else:
                reason += "; later segments exist, so this is not a torn tail"
            raise CorruptionError.at(path, o, reason)
        lsn, length = found
        # A record that passes its checksum is acknowledged data: breaking condition 5 is never a torn tail.
        if lsn < first_lsn:
            raise CorruptionError.at(path, o, f"record LSN {lsn} is below the segment's first LSN {first_lsn}")
        if lsn <= last:
            raise CorruptionError.at(path, o, f"record LSN {lsn} is not greater than the previous LSN {last}")
        records.append(Record(lsn, o, buf[o + RECORD_HEADER_SIZE : o + RECORD_HEADER_SIZE + length]))
        last = lsn
        o += RECORD_HEADER_SIZE + length
    return SegmentScan(path, first_lsn, records, o, size)


def _describe_bad_record(buf: memoryview, o: int, size: int) -> str:
    if o + RECORD_HEADER_SIZE > size:
        return f"record header cut short ({size - o} of {RECORD_HEADER_SIZE} bytes)"
    magic, length, _crc, lsn = RECORD_HEADER.unpack_from(buf, o)
    if magic != RECORD_MAGIC:
        return f"bad record magic 0x{magic:08x}"
    if o + RECORD_HEADER_SIZE + length > size:
        return f"record length {length} runs past the end of the file ({size} bytes)"
    return f"CRC mismatch in record (length {length}, lsn {lsn})"


def list_segments(wal_dir: Path) -> list[tuple[int, Path]]:
    """(first_lsn, path) of every segment, in LSN order; foreign files ignored."""
    out = []
    try:
        names = os.listdir(wal_dir)
    except FileNotFoundError:
        return []
    for name in names:
        lsn = layout.parse_wal_name(name)
        if lsn is not None:
            out.append((lsn, wal_dir / name))
    out.sort()
    return out


def scan_wal(wal_dir: Path) -> Iterator[SegmentScan]:
    """Read every segment in order, checking LSN order across segments."""
    segs = list_segments(wal_dir)
    prev = -1
    for i, (_first, path) in enumerate(segs):
        scan = read_segment(path, is_last=i == len(segs) - 1, prev_lsn=prev)
        if scan.records:
            prev = scan.records[-1].lsn
        yield scan


def create_segment(path: Path) -> None:
    """Create an empty segment (its header, synced; the folder synced too), as a table's first."""
    fs.close(WalWriter._open(path, create=True))


class WalWriter:
    """Appends records to the current (last) segment of one table's WAL.

    Thread safety: ``append``, ``rotate`` and ``close`` are called under the
    table's lock; the ``"batch"`` syncer thread only calls ``sync``. Batch
    durability counts records: ``_written`` grows under ``_fd_lock`` after
    each record, and a sync makes durable what was written when it started
    (``_synced``), so a record written during a sync is synced by the next
    one -- never left unsynced until some later append or close.

    Zeros ahead (``"fsync"`` only): bytes ``[_size, _alloc)`` of the
    current segment are zeros already synced; a record that fits there is
    written in place. The zeroer (a thread, or inline when
    ``ZERO_IN_BACKGROUND`` is false) writes the next ``ZERO_CHUNK`` at
    ``_alloc`` *without* the lock once less than half a chunk is left;
    while it runs (``_zeroing``) an append that would reach past ``_alloc``,
    a failed append's cleanup, ``rotate`` and ``close`` wait for it, so its
    range never overlaps a record and its fd stays open.
    """

    def __init__(self, wal_dir: Path, durability: Durability, current: Path, *, create: bool) -> None:
        self.wal_dir = wal_dir
        self.durability = durability
        self.path = current
        self._pid = os.getpid()  # a forked child has this writer's memory, not its threads or its right to write
        self._fd_lock = threading.Lock()
        self._zeroed = threading.Condition(self._fd_lock)  # notified when the zeroer finishes a chunk
        self._sync_lock = threading.Lock()  # one sync at a time
        self._fd = self._open(current, create=create)
        # The valid end: a writer opens a segment that recovery cut back to its last record (torn or zero tail).
        self._size = os.fstat(self._fd).st_size
        self._alloc = self._size  # [_size, _alloc): zeros, synced
        self._zeroing = False
        self._zero_ahead = ZERO_AHEAD and durability == "fsync"  # per segment: off after a zeroing failure
        self._written = 0  # records written (all segments), and how many of them a sync made durable
        self._synced = 0
        self.records_written = 0
        self.bytes_written = 0
        self._stop = threading.Event()
        self._want_zeros = threading.Event()
        self._syncer: threading.Thread | None = None
        self._zeroer: threading.Thread | None = None
        if durability == "batch":
            self._syncer = threading.Thread(target=self._sync_loop, name="bt_frames-wal-sync", daemon=True)
            self._syncer.start()
        if self._zero_ahead and ZERO_IN_BACKGROUND:
            self._zeroer = threading.Thread(target=self._zero_loop, name="bt_frames-wal-zero", daemon=True)
            self._zeroer.start()
        self._request_zeros(self._zero_needed())

    @staticmethod
    def _open(path: Path, *, create: bool) -> int:
        # No O_APPEND: records are written with pwritev at the valid end (Linux pwrite ignores the offset
        # on an O_APPEND descriptor).
        if create:
            fd = fs.open_fd(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
            try:
                fs.pwritev_all(fd, [segment_header()], 0)
                fs.fsync(fd)
                layout.fsync_dir(path.parent)
            except BaseException:
                fs.close(fd)
                fs.unlink(path, missing_ok=True)
                raise
            return fd
        return fs.open_fd(path, os.O_WRONLY)

    @property
    def size(self) -> int:
        """The segment's valid end: its header and records (the zeros ahead of them excluded)."""
        return self._size

    @property
    def unsynced(self) -> int:
        """Records written but not yet synced ("batch"; 0 in the other modes once they return)."""
        return self._written - self._synced

    def append(self, lsn: int, payload: bytes | memoryview, *, before_sync: Callable[[], object] | None = None) -> None:
        """Write one record; return once it is durable under the policy.

        Raises only if the record is not in the WAL: a failed write or sync
        cuts the file back to its previous valid end (the zeros ahead too;
        they are written again later). ``before_sync`` (``"fsync"`` mode) is
        called once the record is written, just before the sync: the caller
        starts work there that runs while the sync waits for the disk.
        """
        self._check_process()
        header = encode_record(lsn, payload)
        want = len(header) + len(payload)
        with self._fd_lock:
            end = self._size + want
            while self._zeroing and end > self._alloc:  # the record would reach into the zeros being written
                self._zeroed.wait()
            try:
                fs.pwritev_all(self._fd, [header, payload], self._size)
                if self.durability == "fsync":
                    if before_sync is not None:
                        before_sync()
                    fs.fdatasync(self._fd)
            except BaseException:
                # Leave no partial record behind: the append was not acknowledged.
                self._cut_back()
                raise
            self._size = end
            self._alloc = max(self._alloc, end)
            self._written += 1
            if self.durability != "batch":
                self._synced = self._written
            zero = self._zero_needed()
        self.records_written += 1
        self.bytes_written += want
        self._request_zeros(zero)

    def _cut_back(self) -> None:
        """After a failed append (under the lock): truncate to the valid end (zeros ahead included)."""
        try:
            self._cut_zeros()
        except OSError:  # pragma: no cover - nothing better to do
            pass

    # -- zeros ahead -----------------------------------------------------------

    def _zero_needed(self) -> bool:
        """(under the lock) Is it time to write the next chunk of zeros?"""
        return self._zero_ahead and not self._zeroing and self._fd >= 0 and self._alloc - self._size < ZERO_CHUNK // 2

    def _request_zeros(self, needed: bool) -> None:
        if not needed:
            return
        if self._zeroer is not None:
            self._want_zeros.set()
        else:
            self._write_zeros()

    def _zero_loop(self) -> None:
        while True:
            self._want_zeros.wait()
            self._want_zeros.clear()
            if self._stop.is_set():
                return
            self._write_zeros()

    def _write_zeros(self) -> None:
        """Write and sync the next ZERO_CHUNK of zeros at ``_alloc`` (the lock is not held while writing).

        A failure only costs speed: zeroing stops for this segment and records
        are appended past its end, as without zeros ahead.
        """
        with self._fd_lock:
            if not self._zero_needed():
                return
            path, start = self.path, self._alloc
            self._zeroing = True
        ok = False
        try:
            # Its own descriptor: Linux reports a writeback error once per open file description, and the
            # sync here also flushes the appender's pages; on a shared one it could take the error meant
            # for an append, whose own fdatasync would then succeed. Here both are told.
            fd = fs.open_fd(path, os.O_WRONLY)
            try:
                fs.pwritev_all(fd, [_zeros()], start)
                fs.fdatasync(fd)
            finally:
                fs.close(fd)
            ok = True
        except OSError as e:
            log.warning("%s: writing zeros ahead of the WAL records failed (%s); appending instead", self.path, e)
        finally:
            with self._fd_lock:
                self._zeroing = False
                if ok:
                    self._alloc = max(self._alloc, start + ZERO_CHUNK)
                else:
                    self._zero_ahead = False
                self._zeroed.notify_all()

    def _cut_zeros(self) -> None:
        """(under the lock) Truncate whatever follows the last record (zeros ahead, a failed append's
        bytes): a finished segment ends at a record."""
        while self._zeroing:
            self._zeroed.wait()
        if os.fstat(self._fd).st_size != self._size:
            self._alloc = self._size
            fs.ftruncate(self._fd, self._size)

    # -- sync, rotate, close ---------------------------------------------------

    def sync(self) -> None:
        """Make every record written so far durable (appends go on meanwhile: the fd lock is not held)."""
        with self._sync_lock:
            with self._fd_lock:
                fd, target = self._fd, self._written
            if fd < 0 or target == self._synced:
                return
            fs.fdatasync(fd)  # a rotate/close in between has synced and closed fd: EBADF, retried next tick
            with self._fd_lock:
                self._synced = max(self._synced, target)

    def _sync_loop(self) -> None:
        while not self._stop.wait(BATCH_INTERVAL_S):
            if self._written != self._synced:
                try:
                    self.sync()
                except OSError:  # retried on the next tick; close() syncs too
                    pass

    def rotate(self, next_lsn: int) -> Path:
        """Make the current segment durable, ending at its last record, and start ``wal/<next_lsn>.wal``.

        The zeros after the last record are cut off and the cut synced before
        the next segment exists: a reader takes the bad tail of a segment that
        is not the last for corruption. If anything fails (disk full) the
        writer keeps appending to the current segment, as if ``rotate`` had
        not been called.
        """
        self._check_process()
        new_path = self.wal_dir / layout.wal_name(next_lsn)
        with self._fd_lock:
            self._cut_zeros()
            fs.fsync(self._fd)
            self._synced = max(self._synced, self._written)
            new_fd = self._open(new_path, create=True)
            old, self._fd = self._fd, new_fd
            self.path = new_path
            self._size = self._alloc = SEGMENT_HEADER_SIZE
            self._zero_ahead = ZERO_AHEAD and self.durability == "fsync"
            zero = self._zero_needed()
        try:
            fs.close(old)
        except OSError:  # pragma: no cover - the data is already synced
            pass
        self._request_zeros(zero)
        return new_path

    def _check_process(self) -> None:
        if os.getpid() != self._pid:
            raise BtError(
                f"WAL {self.wal_dir}: this writer belongs to process {self._pid}; a forked child (process "
                f"{os.getpid()}) cannot write to it. Open the store in the child instead (read_only=True while "
                "the parent writes)."
            )

    def abandon(self) -> None:
        """In a forked child: let go of the descriptor and nothing else (no cut, no sync, no wait): the
        segment, its zeros and its records belong to the parent, which goes on writing them."""
        fd, self._fd = self._fd, -1
        if fd >= 0:
            try:
                os.close(fd)  # the child's copy only
            except OSError:  # pragma: no cover
                pass

    def close(self) -> None:
        """Sync and close; the segment ends at its last record (its zeros ahead are cut off)."""
        if os.getpid() != self._pid:  # a forked child closing its copy: never truncate the parent's segment
            self.abandon()
            return
        self._stop.set()
        self._want_zeros.set()
        if self._syncer is not None:
            self._syncer.join()
        if self._zeroer is not None:
            self._zeroer.join()
        with self._fd_lock:
            if self._zeroer is not None:
                # The zeroer is gone. At interpreter exit (a store closed by its finaliser) Python ends a
                # daemon thread where it stands, skipping its clean-up: a chunk it was writing is never
                # marked done, and waiting for it would hang the exit. The cut below truncates it anyway.
                self._zeroing = False
            if self._fd >= 0:
                try:
                    self._cut_zeros()
                    fs.fsync(self._fd)
                    self._synced = max(self._synced, self._written)
                finally:
                    fs.close(self._fd)
                    self._fd = -1


_ZEROS: list[bytes] = []


def _zeros() -> bytes:
    """ZERO_CHUNK zero bytes (one buffer, reused while the size stays the same)."""
    if not _ZEROS or len(_ZEROS[0]) != ZERO_CHUNK:
        _ZEROS[:] = [bytes(ZERO_CHUNK)]
    return _ZEROS[0]
