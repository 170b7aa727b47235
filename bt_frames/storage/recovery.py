"""Opening a table: check its files against the manifest, load block statistics, replay the WAL.

``recover(table_dir, schema, writer=...)`` returns a ``Recovered``: the live
blocks and their statistics frame, the hot rows replayed from the WAL, the
next LSN and a ``Recovery`` report. It never returns fewer rows than were
committed: every check below either passes or raises ``CorruptionError``
naming the file and the LSN range at stake.

1. Manifest (``manifest.py``). A table without ``_manifest/`` was written
   before manifests existed: its live blocks are resolved from the folder as
   that version did (whole sets of parts; a block whose LSN range lies
   inside a wider block's was superseded by a compaction) and, for a writer,
   version 1 is written with operation ``upgrade`` (``Recovery.upgraded``).
   An incomplete set of parts followed by later LSNs is a lost part
   (corruption); the last one is an append that never finished and is left
   out.
   A reader whose statistics cache is linked to the newest version (see
   catalog.py) takes the state from it instead (``Recovery.manifest_decoded``
   is False) and runs the checks below on the cache's columns; if any of them
   fails, it decodes the manifest, so errors are the same.
   The schema recovered with (``Recovered.schema``) is that of the newest
   schema change the decoded manifest records, when it differs from the
   caller's (``table.json`` not yet rewritten after a crash: manifest.py).
2. Every block the manifest names exists (missing: ``CorruptionError``
   naming it and its LSNs; a read-only reader first retries: it may be
   behind a writer that retired the file). Block LSN ranges are contiguous
   from 1, parts complete. A named file that is truncated or damaged fails
   its digest check before its first read, naming the file.
3. WAL: every segment the manifest names exists; records above the blocks'
   highest LSN are consecutive, starting right after it; and at least up to
   the ``next_lsn`` recorded by the last clean close. A gap is
   ``CorruptionError`` naming the LSNs and the segment.
   A record written under an older schema of the table (a prefix of its
   columns, each of the same or a narrower type: ``evolve.conforms``) is
   widened to the current schema; any other schema is ``CorruptionError``.
4. Leftovers, removed by a writer only when their rows are provably
   elsewhere: a block file the manifest does not name whose LSNs all lie in
   named blocks (superseded) or above them (an unfinished publish, whose
   records the WAL still holds, or an append that never committed); a WAL
   segment whose records all are in blocks; an empty segment after the
   last one named (an unfinished rotation); ``*.tmp`` files. Retired blocks
   past the grace period are deleted unless pinned. Anything else is kept.
5. A torn tail of the last segment (an append never acknowledged) is cut off
   by a writer; a reader ignores it.
"""

from __future__ import annotations

import io
import logging
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from bt_frames.errors import CorruptionError
from bt_frames.storage import blocks as blk
from bt_frames.storage import catalog, evolve, fs, layout, locking, wal
from bt_frames.storage import manifest as mf

log = logging.getLogger("bt_frames")

Progress = Callable[[Iterable[Any], int], Iterable[Any]]
READER_ATTEMPTS = 100  # while the writer keeps moving the manifest; 2 failures without a move: real damage


@dataclass
class Recovery:
    """What opening (or refreshing) a table found and did."""

    blocks: int = 0
    block_rows: int = 0
    manifest_version: int = 0
    upgraded: bool = False  # built the manifest of a store written before manifests existed
    stats_cache: str = "missing"  # fresh / missing / stale / corrupt
    stats_linked: bool = False  # the cache on disk is linked to the manifest version opened (manifest.link)
    manifest_decoded: bool = True  # False: a reader took the state from the linked cache (manifest.load_linked)
    blocks_from_cache: int = 0
    blocks_from_footer: int = 0
    wal_segments: int = 0
    wal_records: int = 0
    records_replayed: int = 0
    rows_replayed: int = 0
    records_skipped: int = 0  # already held by blocks (crash after a flush)
    torn_tail_bytes: int = 0
    incomplete_blocks_removed: int = 0  # parts of an append that never committed
    adopted_blocks: int = 0  # every part of a large append whose manifest version was lost: kept
    superseded_blocks_removed: int = 0  # inputs of a compaction, leftovers of a publish
    retired_blocks_removed: int = 0
    tmp_files_removed: int = 0
    wal_segments_removed: int = 0
    kept_unknown: list[str] = field(default_factory=list)  # files we cannot prove redundant: left alone
    read_only: bool = False  # a reader leaves torn tails and leftovers for the next writer to remove

    def summary(self) -> str:
        removed = "left for the next writer to remove" if self.read_only else "removed"
        parts = [
            f"{self.blocks} blocks ({self.block_rows:,} rows; manifest version {self.manifest_version}; "
            f"stats cache {self.stats_cache}, {self.blocks_from_footer} footers read)",
            f"WAL: {self.wal_segments} segment(s), {self.wal_records} record(s), "
            f"{self.records_replayed} replayed ({self.rows_replayed:,} rows), "
            f"{self.records_skipped} already in blocks",
        ]
        if self.upgraded:
            parts.append("upgraded: manifest built from the files of a store written before manifests existed")
        if self.torn_tail_bytes:
            cut = "ignored (the next writer cuts it off)" if self.read_only else "cut off"
            parts.append(f"torn tail of {self.torn_tail_bytes} bytes {cut} (an unacknowledged append)")
        if self.incomplete_blocks_removed:
            parts.append(f"{self.incomplete_blocks_removed} part(s) of an append that never committed {removed}")
        if self.adopted_blocks:
            kept = "included (the next writer adopts them)" if self.read_only else "adopted"
            parts.append(f"{self.adopted_blocks} part(s) of a large append whose version was not written {kept}")
        if self.superseded_blocks_removed:
            parts.append(f"{self.superseded_blocks_removed} block(s) whose rows are in other files {removed}")
        if self.retired_blocks_removed:
            parts.append(f"{self.retired_blocks_removed} retired block(s) past the grace period removed")
        if self.tmp_files_removed:
            parts.append(f"{self.tmp_files_removed} temporary file(s) removed")
        if self.kept_unknown:
            parts.append(f"kept {len(self.kept_unknown)} file(s) not in the manifest: {', '.join(self.kept_unknown)}")
        return "; ".join(parts)


@dataclass
class Recovered:
    state: mf.State
    manifest: mf.Manifest | None  # the writer's handle
    blocks: Sequence[blk.BlockInfo]  # a list for a writer; for a reader maybe ``blk.CachedBlocks``
    stats: pl.DataFrame
    hot: list[tuple[int, pl.DataFrame, int]]  # (lsn, rows, record bytes) replayed from the WAL
    next_lsn: int
    wal_records: int  # records in the WAL now (incl. those already in blocks)
    wal_bytes: int
    stats_changed: bool  # the stats cache should be rewritten
    wal_writer: wal.WalWriter | None
    report: Recovery
    schema: pl.Schema | None = None  # the schema recovered with: the manifest's, if it differs from the caller's


def decode_payload(path: Path, record: wal.Record, schema: pl.Schema) -> pl.DataFrame:
    try:
        chunk = pl.read_ipc_stream(io.BytesIO(record.payload))
    except Exception as e:
        raise CorruptionError.at(path, record.offset, f"record {record.lsn} payload is not Arrow IPC ({e})") from e
    if chunk.schema != schema:
        try:  # written before a schema change (evolve.py): columns it lacks are null, narrower types widened
            return evolve.conform(chunk, schema)
        except ValueError:
            pass
        raise CorruptionError.at(path, record.offset, f"record {record.lsn} has schema {chunk.schema}, not the table's")
    return chunk


def _lsns(first: int, last: int) -> str:
    return f"LSN {first}" if first == last else f"LSNs {first}-{last}"


def recover(
    table_dir: Path,
    schema: pl.Schema,
    *,
    writer: bool,
    durability: wal.Durability = "fsync",
    grace_s: float = 60.0,
    pinned: Callable[[str], bool] = lambda _n: False,
    progress: Progress | None = None,
    published_only: bool = False,
) -> Recovered:
    # published_only: a reader of a store in a bucket (storage/remote.py): its folder holds the metadata and
    # the blocks fetched so far; the blocks the stats cache describes are in the bucket, and there is no WAL
    rep = Recovery(read_only=not writer)
    if writer:
        _remove_tmp_files(table_dir, rep)
    attempts = 1 if writer else READER_ATTEMPTS
    stable = 0  # failed attempts in a row during which the manifest did not move
    for attempt in range(attempts):
        before = mf.list_versions(table_dir)[-1:]
        try:
            # a reader first trusts a statistics cache linked to the newest manifest version; when anything
            # fails that way, the next attempt decodes the manifest (and its error names what is wrong)
            fast = not writer and attempt == 0
            return _recover_once(
                table_dir, schema, rep, writer, durability, grace_s, pinned, progress, fast=fast,
                published_only=published_only,
            )  # fmt: skip
        except (CorruptionError, FileNotFoundError):
            # a reader raced the writer (a publish deleted a segment, a purge a retired block): look again,
            # unless nothing moved twice in a row -- then the damage is real
            stable = stable + 1 if mf.list_versions(table_dir)[-1:] == before else 0
            if attempt == attempts - 1 or stable >= 2:
                raise
            time.sleep(min(0.05, 0.001 * 2**attempt))
            rep = Recovery(read_only=True)
    raise AssertionError("unreachable")  # pragma: no cover


def _remove_tmp_files(table_dir: Path, rep: Recovery) -> None:
    for d in (table_dir, table_dir / layout.BLOCKS_DIR, table_dir / layout.WAL_DIR, mf.manifest_dir(table_dir)):
        try:
            names = os.listdir(d)
        except FileNotFoundError:
            continue
        for n in names:
            if layout.is_tmp(n):
                fs.unlink(d / n, missing_ok=True)
                rep.tmp_files_removed += 1
    upgrade_tmp = table_dir / UPGRADE_TMP
    if upgrade_tmp.is_dir():
        fs.remove_tree(upgrade_tmp)


UPGRADE_TMP = f"{mf.MANIFEST_DIR}.upgrade.tmp"


@dataclass
class _Named:
    """Step 1-2: the manifest's state and the blocks it names, checked against the folder."""

    state: mf.State
    manifest: mf.Manifest | None  # a writer's handle
    loaded: catalog.CacheLoad
    block_lsn: int  # the highest LSN any named block holds
    named: set[str]  # the named blocks' file names
    linked: bool  # a reader took the state from a cache linked to the newest version
    schema: pl.Schema  # the table's schema: the newest schema change's in the manifest, else the caller's


@dataclass
class _Replayed:
    """Step 3: the WAL's segments and the records above the blocks, in LSN order."""

    scans: list[wal.SegmentScan]
    hot: list[tuple[int, pl.DataFrame, int]]
    wal_first: int | None  # the first LSN above the blocks that the WAL holds
    last_lsn: int  # the last LSN of any record
    next_lsn: int
    records: int
    wal_bytes: int


def _recover_once(
    table_dir: Path,
    schema: pl.Schema,
    rep: Recovery,
    writer: bool,
    durability: wal.Durability,
    grace_s: float,
    pinned: Callable[[str], bool],
    progress: Progress | None,
    *,
    fast: bool = False,
    published_only: bool = False,
) -> Recovered:
    blocks_dir = table_dir / layout.BLOCKS_DIR
    listing = set(os.listdir(blocks_dir)) if blocks_dir.is_dir() else set()
    cache = catalog.read_cache(table_dir / layout.STATS_CACHE, schema)
    if published_only and cache[0] is not None:  # described by the cache: in the bucket, fetched when read
        listing |= set(cache[0].get_column("block").to_list())
    found = _named_blocks(table_dir, schema, rep, writer, listing, cache, fast, progress)
    state, loaded = found.state, found.loaded
    schema = found.schema
    infos = loaded.blocks
    if published_only:
        log_ = _Replayed([], [], None, 0, found.block_lsn + 1, 0, 0)
    else:
        log_ = _replay(table_dir, schema, rep, state, listing, found.block_lsn)
    next_lsn = log_.next_lsn

    if not writer:
        # A crashed writer's complete part set is in the view the next writer will commit. Parts whose
        # writer still runs are in flight (its commit may yet fail and remove them), and parts that do not
        # name their writer (written before writers were recorded) cannot be told apart: left out.
        adopted = _adopt_parts(blocks_dir, listing, found.named, next_lsn)
        writers = [blk.block_writer(b.path) for b in adopted]
        if adopted and all(w is not None and not locking.process_alive(w) for w in writers):
            rep.adopted_blocks = len(adopted)
            infos = [*infos, *adopted]
            loaded.stats = catalog.merge_stats(loaded.stats, infos, schema)
            next_lsn += 1
            rep.blocks, rep.block_rows = len(infos), sum(b.rows for b in infos)
        rep.stats_linked = found.linked or (cache[2] is not None and cache[2] == mf.link(state))
        return Recovered(
            state, None, infos, loaded.stats, log_.hot, next_lsn, log_.records, log_.wal_bytes, False, None, rep, schema
        )
    manifest = found.manifest
    assert manifest is not None
    # 4./5. a writer makes the files match the manifest
    block_lsn = found.block_lsn
    adopted = _adopt_parts(blocks_dir, listing, found.named, next_lsn)
    if adopted:  # a large append whose parts are all durable, its version not: it happened (not acknowledged)
        state = manifest.commit(mf.Edit("adopt", add=[mf.entry_of(b) for b in adopted]))
        rep.adopted_blocks = len(adopted)
        infos = [*infos, *adopted]
        loaded.stats = catalog.merge_stats(loaded.stats, infos, schema)
        block_lsn = next_lsn
        next_lsn += 1
        listing -= {b.filename for b in adopted}
        rep.blocks, rep.block_rows = len(infos), sum(b.rows for b in infos)
    edit = mf.Edit("recover")
    _remove_leftover_blocks(blocks_dir, listing, state, log_, block_lsn, next_lsn, grace_s, pinned, rep, edit)
    writer_, keep = _settle_segments(table_dir, state, log_, block_lsn, next_lsn, durability, rep, edit)
    if edit.forget or edit.wal_add or edit.wal_remove:
        try:
            manifest.commit(edit)
        except BaseException:
            writer_.close()
            raise
    rep.stats_linked = cache[2] is not None and cache[2] == mf.link(manifest.state)
    return Recovered(
        manifest.state,
        manifest,
        infos,
        loaded.stats,
        log_.hot,
        next_lsn,
        sum(len(s.records) for s in keep),
        sum(wal.RECORD_HEADER_SIZE + len(r.payload) for s in keep for r in s.records),
        loaded.changed or bool(adopted),
        writer_,
        rep,
        schema,
    )


def _named_blocks(
    table_dir: Path,
    schema: pl.Schema,
    rep: Recovery,
    writer: bool,
    listing: set[str],
    cache: tuple[pl.DataFrame | None, str, dict[str, Any] | None],
    fast: bool,
    progress: Progress | None,
) -> _Named:
    """Steps 1-2: the manifest's state (a writer upgrades a store without one), its blocks present, chained
    and of the rows it says, and their statistics (from the cache where it has them)."""
    blocks_dir = table_dir / layout.BLOCKS_DIR
    manifest: mf.Manifest | None = None
    linked = catalog.load_linked(table_dir, cache) if fast and mf.exists(table_dir) else None
    if linked is not None and not (listing.issuperset(linked.files) and _chain_is_whole_columns(*linked.lsns)):
        linked = None  # a block is missing or the chain is broken: decode the manifest, whose error says which
    if linked is not None:
        # a reader whose cache is linked to the newest manifest version: no version decoded, no
        # per-block entry made (the checks above ran on the frame's columns)
        state, loaded = linked.state, linked.loaded
        rep.manifest_decoded = False
        block_lsn = max(linked.lsns[1], default=0)
        named = set(linked.files)
        rep.block_rows = sum(linked.rows)
    else:
        if mf.exists(table_dir):
            state = mf.load(table_dir)
        else:
            state = _legacy_state(table_dir, schema, listing, progress)
            rep.upgraded = True
            if writer:
                manifest = _write_upgrade(table_dir, state)
                state = manifest.state
        if writer and manifest is None:
            manifest = mf.Manifest(table_dir, state)
        if state.schema is not None:  # the manifest's schema wins over table.json's (a crash between them)
            newest = catalog.schema_from_b64(state.schema)
            if newest != schema:
                schema = newest
                cache = catalog.read_cache(table_dir / layout.STATS_CACHE, schema)

        # 2. named blocks exist (one listing of the folder, not a stat() per block) and chain
        names = [e.block for e in state.blocks]
        for e in () if listing.issuperset(names) else state.blocks:
            if e.block not in listing:
                bn = e.name
                raise CorruptionError.at(
                    blocks_dir / e.block,
                    None,
                    f"block file named by manifest version {state.version} is missing (it was added by "
                    f"{state.named_by(table_dir, e.block)}): the table's {_lsns(bn.first_lsn, bn.last_lsn)} "
                    f"({e.rows:,} rows) are lost unless it is restored",
                )
        _check_block_chain(blocks_dir, state)
        loaded = catalog.load_named(table_dir, names, schema, progress=progress, cache=cache[:2])
        if len(loaded.blocks) != len(state.blocks) or [b.rows for b in loaded.blocks] != [e.rows for e in state.blocks]:
            for info, e in zip(loaded.blocks, state.blocks, strict=True):
                if info.rows != e.rows:
                    raise CorruptionError.at(
                        info.path, None, f"holds {info.rows} rows, manifest version {state.version} says {e.rows}"
                    )
        block_lsn = state.block_lsn
        named = set(names)
        rep.block_rows = sum(b.rows for b in loaded.blocks)
    rep.manifest_version = state.version
    rep.stats_cache = loaded.cache_state
    rep.blocks_from_cache = loaded.from_cache
    rep.blocks_from_footer = loaded.from_footer
    rep.blocks = len(loaded.blocks)
    return _Named(state, manifest, loaded, block_lsn, named, linked is not None, schema)


def _replay(
    table_dir: Path, schema: pl.Schema, rep: Recovery, state: mf.State, listing: set[str], block_lsn: int
) -> _Replayed:
    """Step 3: every segment the manifest names is there; the records above ``block_lsn`` continue the
    blocks' LSNs without a gap and are decoded; nothing committed before the last close is missing."""
    wal_dir = table_dir / layout.WAL_DIR
    scans = list(wal.scan_wal(wal_dir))
    on_disk = {s.first_lsn for s in scans}
    for i, first in enumerate(state.wal):
        if first not in on_disk:
            nxt = state.wal[i + 1] - 1 if i + 1 < len(state.wal) else None
            span = f"LSNs {first}-{nxt}" if nxt is not None else f"LSNs from {first} on"
            raise CorruptionError.at(
                wal_dir / layout.wal_name(first),
                None,
                f"WAL segment named by manifest version {state.version} is missing: the acknowledged "
                f"appends it held ({span}) are lost unless it is restored"
                + _lost_version_hint(table_dir, listing, state, first, nxt),
            )
    hot: list[tuple[int, pl.DataFrame, int]] = []
    wal_first: int | None = None
    expect = block_lsn + 1
    records = wal_bytes = 0
    last_lsn = 0
    for scan in scans:
        if scan.first_lsn - 1 > max(block_lsn, last_lsn):  # a segment starts past every LSN seen so far
            gap = max(block_lsn, last_lsn) + 1
            raise CorruptionError.at(
                scan.path,
                None,
                f"{_lsns(gap, scan.first_lsn - 1)} are in no block and no WAL record before this segment: "
                "the end of the previous segment, or a segment, is missing",
            )
        for r in scan.records:
            records += 1
            size = wal.RECORD_HEADER_SIZE + len(r.payload)
            wal_bytes += size
            last_lsn = r.lsn
            if r.lsn <= block_lsn:
                rep.records_skipped += 1
                continue
            if r.lsn != expect:
                raise CorruptionError.at(
                    scan.path,
                    r.offset,
                    f"{_lsns(expect, r.lsn - 1)} are in no block and no WAL record before record {r.lsn}: "
                    "a WAL segment or block is missing"
                    + _lost_version_hint(table_dir, listing, state, expect, r.lsn - 1),
                )
            expect = r.lsn + 1
            if wal_first is None:
                wal_first = r.lsn
            chunk = decode_payload(scan.path, r, schema)
            hot.append((r.lsn, chunk, size))
            rep.records_replayed += 1
            rep.rows_replayed += chunk.height
    rep.wal_segments = len(scans)
    rep.wal_records = records
    last_seg_first = scans[-1].first_lsn if scans else 1
    next_lsn = max(block_lsn, last_lsn, last_seg_first - 1) + 1
    if next_lsn < state.next_lsn:
        where = scans[-1].path if scans else wal_dir
        raise CorruptionError.at(
            where,
            None,
            f"{_lsns(next_lsn, state.next_lsn - 1)}, committed before the table was last closed, are in no "
            "block and no WAL record: the end of the WAL was truncated or removed"
            + _lost_version_hint(table_dir, listing, state, next_lsn, state.next_lsn - 1),
        )
    if scans and scans[-1].torn_bytes:
        rep.torn_tail_bytes = scans[-1].torn_bytes
    return _Replayed(scans, hot, wal_first, last_lsn, next_lsn, records, wal_bytes)


def _remove_leftover_blocks(
    blocks_dir: Path,
    listing: set[str],
    state: mf.State,
    log_: _Replayed,
    block_lsn: int,
    next_lsn: int,
    grace_s: float,
    pinned: Callable[[str], bool],
    rep: Recovery,
    edit: mf.Edit,
) -> None:
    """Step 4 (a writer): delete block files the manifest does not name once their rows are provably
    elsewhere (named blocks, the WAL) or were never acknowledged, and retired ones past the grace period."""
    named = {e.block for e in state.blocks}  # after an adoption
    retired = {r.block: r for r in state.retired}
    removed_any = False
    for n in sorted(listing):
        parsed = layout.parse_block_name(n)
        if parsed is None or n in named:
            continue
        gone = retired.get(n)
        if gone is not None:
            if gone.age_s() >= grace_s and not pinned(n):
                fs.unlink(blocks_dir / n, missing_ok=True)
                edit.forget.append(n)
                rep.retired_blocks_removed += 1
                removed_any = True
            continue
        in_wal = log_.wal_first is not None and log_.wal_first <= parsed.first_lsn and parsed.last_lsn <= log_.last_lsn
        if parsed.last_lsn <= block_lsn or (parsed.first_lsn > block_lsn and in_wal):
            rep.superseded_blocks_removed += 1  # its rows are in named blocks, or still in the WAL
        elif parsed.first_lsn == parsed.last_lsn == next_lsn:
            rep.incomplete_blocks_removed += 1  # the next LSN: an append that never committed
        else:
            rep.kept_unknown.append(n)
            continue
        fs.unlink(blocks_dir / n, missing_ok=True)
        removed_any = True
    edit.forget += [n for n in retired if n not in listing]
    if removed_any:
        layout.fsync_dir(blocks_dir)


def _settle_segments(
    table_dir: Path,
    state: mf.State,
    log_: _Replayed,
    block_lsn: int,
    next_lsn: int,
    durability: wal.Durability,
    rep: Recovery,
    edit: mf.Edit,
) -> tuple[wal.WalWriter, list[wal.SegmentScan]]:
    """Step 5 (a writer): cut the last segment's torn or zero tail, delete segments whose records are all
    in blocks, and open the WAL writer on the last segment (or a new one); the segments kept."""
    wal_dir = table_dir / layout.WAL_DIR
    scans = log_.scans
    if scans and (scans[-1].torn_bytes or scans[-1].zero_tail):  # the writer zeroes ahead again from the valid end
        seg = scans[-1]
        fd = fs.open_fd(seg.path, os.O_WRONLY)
        try:
            fs.ftruncate(fd, seg.valid_end)
            fs.fsync(fd)
        finally:
            fs.close(fd)
        if seg.torn_bytes:
            log.info("%s: cut a torn WAL tail of %d bytes from %s", table_dir.name, seg.torn_bytes, seg.path)
    named_wal = set(state.wal)
    keep: list[wal.SegmentScan] = []
    for i, s in enumerate(scans):
        is_last = i == len(scans) - 1
        covered = not s.records or s.records[-1].lsn <= block_lsn
        if (covered and not is_last) or (is_last and not s.records and s.first_lsn not in named_wal and keep):
            fs.unlink(s.path)
            rep.wal_segments_removed += 1
            if s.first_lsn in named_wal:
                edit.wal_remove.append(s.first_lsn)
            continue
        keep.append(s)
        if s.first_lsn not in named_wal:
            edit.wal_add.append(s.first_lsn)
    if rep.wal_segments_removed:
        layout.fsync_dir(wal_dir)
    last = keep[-1] if keep else None
    if last is not None and last.size >= wal.SEGMENT_HEADER_SIZE and last.valid_end >= wal.SEGMENT_HEADER_SIZE:
        return wal.WalWriter(wal_dir, durability, last.path, create=False), keep
    if last is not None:  # a crash while creating the segment: header incomplete
        fs.unlink(last.path)
        if last.first_lsn in named_wal:
            edit.wal_remove.append(last.first_lsn)
        else:
            edit.wal_add = [x for x in edit.wal_add if x != last.first_lsn]
    path = wal_dir / layout.wal_name(next_lsn)
    writer_ = wal.WalWriter(wal_dir, durability, path, create=True)
    edit.wal_add.append(next_lsn)
    return writer_, keep


def _lost_version_hint(table_dir: Path, listing: set[str], state: mf.State, first: int, last: int | None) -> str:
    """When block files no version names hold LSNs ``first..last`` (None: no end) that are missing, say so.

    A publish or append writes its blocks, then its manifest version; it deletes WAL segments only
    after that version is durable. So rows that are in such blocks and in no WAL record mean the
    version that named the blocks is gone: the error names the file it had.
    """
    named = {e.block for e in state.blocks} | {r.block for r in state.retired}
    hits = []
    for n in sorted(listing):
        p = layout.parse_block_name(n)
        if p is not None and n not in named and p.last_lsn >= first and (last is None or p.first_lsn <= last):
            hits.append(n)
    if not hits:
        return ""
    lost = mf.manifest_dir(table_dir) / mf.version_name(state.version + 1)
    return (
        f"; block file(s) {', '.join(hits)}, which no manifest version names, hold these LSNs: manifest version "
        f"{state.version + 1} ({lost}), which named them, is probably missing or was removed"
    )


def _adopt_parts(blocks_dir: Path, listing: set[str], named: set[str], next_lsn: int) -> list[blk.BlockInfo]:
    """The parts of a large append at ``next_lsn`` that no version names, if every part is there and intact.

    Each part was fsynced and renamed before the append's manifest version was
    written; a crash (or a power loss of that version) in between leaves them.
    The append was not acknowledged, so either outcome is allowed: like a
    durable WAL record of an unacknowledged append, it is kept -- exactly once.
    Only parts that name their writer (``blk.KEY_WRITER``) are adopted: a large
    append writes it, and nothing else does -- a lifecycle operation's block
    at the next LSN (an upsert's new rows) is one piece of an operation whose
    other pieces only its version names, so without the version it is removed.
    ``named``: the blocks the manifest names.
    """
    parts = [
        (p, n)
        for n in listing
        if n not in named and (p := layout.parse_block_name(n)) is not None and p.first_lsn == p.last_lsn == next_lsn
    ]
    if not parts or {p.nparts for p, _n in parts} != {parts[0][0].nparts}:
        return []
    if sorted(p.part for p, _n in parts) != list(range(1, parts[0][0].nparts + 1)):
        return []
    try:
        infos = [blk.read_block_info(blocks_dir / n) for _p, n in sorted(parts)]  # digests checked
    except CorruptionError:
        return []
    return infos if all(blk.block_writer(b.path) is not None for b in infos) else []


def _chain_is_whole(names: Sequence[layout.BlockName]) -> bool:
    """``_chain_is_whole_columns`` of parsed names."""
    if not names:
        return True
    first, last, part, nparts, _digest = zip(*names, strict=True)
    return _chain_is_whole_columns(first, last, part, nparts)


def _chain_is_whole_columns(
    first: Sequence[int], last: Sequence[int], part: Sequence[int], nparts: Sequence[int]
) -> bool:
    """True when the blocks certainly chain (what ``_check_block_chain`` checks), in one pass over columns.

    Each block either starts a set (part 1) right after the previous set ended
    (its last part, LSN after the previous last LSN) or continues its set (same
    LSNs and count, the next part); the first starts at LSN 1 and the last ends
    its set. False says nothing: the checking loop then finds what is wrong.
    """
    if not first:
        return True
    if first[0] != 1 or part[0] != 1 or part[-1] != nparts[-1]:
        return False
    cur = zip(first[1:], last[1:], part[1:], nparts[1:], strict=True)
    prev = zip(first[:-1], last[:-1], part[:-1], nparts[:-1], strict=True)
    return all(
        (f == pl + 1 and pp == pn) if p == 1 else (f == pf and l_ == pl and n == pn and p == pp + 1)
        for (f, l_, p, n), (pf, pl, pp, pn) in zip(cur, prev, strict=True)
    )


def _check_block_chain(blocks_dir: Path, state: mf.State) -> None:
    """Block sets are whole (parts 1..n of one LSN range) and their ranges chain from LSN 1."""
    if _chain_is_whole([e.name for e in state.blocks]):
        return
    prev_last = 0
    i, entries = 0, state.blocks
    while i < len(entries):
        head = entries[i].name
        if head.first_lsn != prev_last + 1:
            raise CorruptionError.at(
                blocks_dir / entries[i].block,
                None,
                f"manifest version {state.version}: {_lsns(prev_last + 1, head.first_lsn - 1)} are in no block "
                f"before this one (added by {state.named_by(blocks_dir.parent, entries[i].block)})",
            )
        for j in range(head.nparts):
            if i + j >= len(entries) or (entries[i + j].name.first_lsn, entries[i + j].name.part) != (
                head.first_lsn,
                j + 1,
            ):
                raise CorruptionError.at(
                    blocks_dir / entries[i].block,
                    None,
                    f"manifest version {state.version}: part {j + 1} of {head.nparts} of "
                    f"{_lsns(head.first_lsn, head.last_lsn)} is not named (the set was added by "
                    f"{state.named_by(blocks_dir.parent, entries[i].block)})",
                )
        prev_last = head.last_lsn
        i += head.nparts


# -- stores written before manifests existed -------------------------------------


def _legacy_state(table_dir: Path, schema: pl.Schema, listing: set[str], progress: Progress | None) -> mf.State:
    """Resolve the live blocks from the folder, as bt_frames did before the manifest."""
    loaded = catalog.load_blocks(table_dir, schema, progress=progress)
    live, incomplete, _superseded = resolve_legacy(loaded.blocks)
    segs = wal.list_segments(table_dir / layout.WAL_DIR)
    later_lsn = max([b.last_lsn for b in live] + [first for first, _p in segs[1:]] + [_last_wal_lsn(segs)], default=0)
    for b in incomplete:
        if b.last_lsn < later_lsn:  # later appends were acknowledged after it: a part was lost
            raise CorruptionError.at(
                b.path,
                None,
                f"a part of the {b.name.nparts}-part append of {_lsns(b.first_lsn, b.last_lsn)} is missing, and "
                "later appends exist: its rows are lost unless the missing part is restored",
            )
    return mf.legacy_state(live, [first for first, _p in segs], 1)


def _last_wal_lsn(segs: Sequence[tuple[int, Path]]) -> int:
    if not segs:
        return 0
    try:
        scan = wal.read_segment(segs[-1][1], is_last=True)
    except CorruptionError:
        return segs[-1][0]
    return scan.records[-1].lsn if scan.records else 0


def _write_upgrade(table_dir: Path, state: mf.State) -> mf.Manifest:
    """Write version 1 in a temporary folder, then rename it into place: the upgrade happens once, or not."""
    tmp = table_dir / UPGRADE_TMP
    if tmp.exists():
        fs.remove_tree(tmp)
    m = mf.Manifest.create(table_dir, state, operation="upgrade", into=tmp)
    fs.replace(tmp, mf.manifest_dir(table_dir))
    layout.fsync_dir(table_dir)
    return m


def resolve_legacy(
    infos: Sequence[blk.BlockInfo],
) -> tuple[list[blk.BlockInfo], list[blk.BlockInfo], list[blk.BlockInfo]]:
    """(live blocks, parts of unfinished multi-part appends, blocks superseded by compaction)."""
    by_set: dict[tuple[int, int, int], list[blk.BlockInfo]] = {}
    for b in infos:
        by_set.setdefault((b.first_lsn, b.last_lsn, b.name.nparts), []).append(b)
    complete: list[blk.BlockInfo] = []
    incomplete: list[blk.BlockInfo] = []
    for (_f, _l, nparts), members in by_set.items():
        if len({m.name.part for m in members}) == nparts:
            complete.extend(members)
        else:
            incomplete.extend(members)
    # A compaction wrote its output before deleting its inputs: a block whose
    # range lies inside a wider block's range is superseded.
    ranges = sorted({(b.first_lsn, b.last_lsn) for b in complete}, key=lambda r: (r[0], -r[1]))
    keep: set[tuple[int, int]] = set()
    reach = -1
    for r in ranges:
        if r[1] <= reach:
            continue
        keep.add(r)
        reach = r[1]
    live = [b for b in complete if (b.first_lsn, b.last_lsn) in keep]
    superseded = [b for b in complete if (b.first_lsn, b.last_lsn) not in keep]
    live.sort(key=lambda b: (b.first_lsn, b.name.part))
    return live, incomplete, superseded
