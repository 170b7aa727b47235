"""store.verify(): check every table's files against its manifest, every WAL record and block, and report.

Never raises and never writes. Per table: ``table.json``; the manifest (every
version from the last checkpoint intact); every block it names exists, has
the size and row count the manifest recorded and matches the digest in its
name; every WAL record's checksum and payload; and, through a read-only
recovery, the continuity of LSNs across blocks and the WAL. Files the
manifest does not name are listed as ``leftovers`` (an unfinished operation's
files; the next writer removes those whose rows are provably elsewhere).
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from bt_frames.errors import BtError, CorruptionError
from bt_frames.storage import blocks as blk
from bt_frames.storage import catalog, evolve, layout, recovery, wal
from bt_frames.storage import manifest as mf


@dataclass(frozen=True)
class Problem:
    path: Path
    offset: int | None
    message: str


@dataclass
class VerifyReport:
    """What ``verify()`` checked and what it found wrong."""

    store: Path
    tables: int = 0
    wal_segments: int = 0
    wal_records: int = 0
    blocks: int = 0
    block_bytes: int = 0
    torn_tails: list[Problem] = field(default_factory=list)  # unacknowledged writes: not errors
    problems: list[Problem] = field(default_factory=list)
    leftovers: list[Problem] = field(default_factory=list)  # files no manifest version names: not errors

    @property
    def ok(self) -> bool:
        return not self.problems

    def __bool__(self) -> bool:
        return self.ok

    def __repr__(self) -> str:
        head = (
            f"VerifyReport({'OK' if self.ok else 'CORRUPT'}: {self.tables} table(s), {self.wal_segments} WAL "
            f"segment(s) with {self.wal_records} record(s), {self.blocks} block(s) "
            f"({self.block_bytes:,} bytes) checked"
        )
        lines = [head + (")" if self.ok and not self.torn_tails and not self.leftovers else "")]
        for p in self.problems:
            lines.append(f"  CORRUPT {p.path}" + (f" @ {p.offset}" if p.offset is not None else "") + f": {p.message}")
        for p in self.torn_tails:
            lines.append(f"  torn tail {p.path} @ {p.offset}: {p.message}")
        for p in self.leftovers:
            lines.append(f"  leftover {p.path}: {p.message}")
        if len(lines) > 1:
            lines.append(")")
        return "\n".join(lines)


def verify_store(root: Path) -> VerifyReport:
    rep = VerifyReport(root)
    for entry in sorted(os.listdir(root)):
        tdir = root / entry
        if entry.startswith("."):
            continue
        lost = catalog.lost_table_json(tdir)
        if lost is not None:  # a table without its table.json: its data cannot be checked against a schema
            rep.tables += 1
            rep.problems.append(Problem(lost.path, None, str(lost)))
            continue
        if not (tdir / layout.TABLE_JSON).is_file():
            continue
        rep.tables += 1
        try:
            meta = catalog.TableMeta.load(tdir / layout.TABLE_JSON)
        except BtError as e:
            rep.problems.append(Problem(tdir / layout.TABLE_JSON, None, str(e)))
            continue
        schema = meta.schema
        if meta.schema_version or mf.exists(tdir):  # the manifest's newest schema change wins (manifest.py)
            try:
                newest = mf.load(tdir).schema
            except (BtError, OSError):
                newest = None  # reported by the recovery below
            if newest is not None:
                schema = catalog.schema_from_b64(newest)
        _verify_wal(tdir / layout.WAL_DIR, schema, rep)
        _verify_blocks(tdir, rep)
        try:  # continuity of LSNs across blocks and WAL, as an open checks it (retrying while a writer moves)
            recovery.recover(tdir, meta.schema, writer=False)
        except OSError as e:
            rep.problems.append(Problem(tdir, None, f"could not be read: {e}"))
        except BtError as e:
            path = getattr(e, "path", tdir)
            if not any(p.path == path for p in rep.problems):
                rep.problems.append(Problem(Path(path), getattr(e, "offset", None), str(e)))
    return rep


def _verify_blocks(tdir: Path, rep: VerifyReport) -> None:
    blocks_dir = tdir / layout.BLOCKS_DIR
    on_disk = {p.name: p for _n, p in blk.list_block_files(blocks_dir)}
    state: mf.State | None = None
    if mf.exists(tdir):
        try:
            state = mf.load(tdir)
        except BtError as e:
            rep.problems.append(Problem(Path(getattr(e, "path", mf.manifest_dir(tdir))), None, str(e)))
            return
        named: dict[str, mf.BlockEntry | None] = {e.block: e for e in state.blocks}
        retired = {r.block for r in state.retired}
    else:  # written before manifests existed: every block file counts (the next writer builds the manifest)
        named = {n: None for n in on_disk}
        retired = set()
    for n, p in on_disk.items():
        if n not in named and n not in retired:
            rep.leftovers.append(Problem(p, None, "not named by the table's manifest (an unfinished operation's file)"))
    for n, entry in named.items():
        path = blocks_dir / n
        rep.blocks += 1
        try:
            if n not in on_disk:
                by = state.named_by(tdir, n) if state is not None else "the manifest"
                raise CorruptionError.at(path, None, f"block file named by {by} is missing")
            size = path.stat().st_size
            rep.block_bytes += size
            if entry is not None and size != entry.bytes:
                raise CorruptionError.at(path, None, f"is {size} bytes, the manifest recorded {entry.bytes}")
            blk.verify_block(path, force=True)
            info = blk.read_block_info(path, verify=False)
            footer_rows = pl.scan_parquet(path).select(pl.len()).collect().item()
            if footer_rows != info.rows or (entry is not None and entry.rows != info.rows):
                raise CorruptionError.at(
                    path,
                    None,
                    f"footer has {footer_rows} rows, statistics {info.rows}, manifest {entry and entry.rows}",
                )
        except BtError as err:
            rep.problems.append(Problem(path, getattr(err, "offset", None), str(err)))


def _verify_wal(wal_dir: Path, schema: pl.Schema, rep: VerifyReport) -> None:
    segs = wal.list_segments(wal_dir)
    prev = -1
    for i, (_first, path) in enumerate(segs):
        rep.wal_segments += 1
        try:
            scan = wal.read_segment(path, is_last=i == len(segs) - 1, prev_lsn=prev)
        except FileNotFoundError:  # a writer's publish removed it meanwhile: its records are in a block
            rep.wal_segments -= 1
            continue
        except BtError as e:
            rep.problems.append(Problem(path, getattr(e, "offset", None), str(e)))
            continue
        for r in scan.records:
            rep.wal_records += 1
            try:
                df = pl.read_ipc_stream(io.BytesIO(r.payload))
                if df.schema != schema and not evolve.conforms(df.schema, schema):  # older schemas are read too
                    raise ValueError(f"schema {df.schema} is not the table's")
            except Exception as e:
                rep.problems.append(Problem(path, r.offset, f"record {r.lsn}: bad payload ({e})"))
        if scan.records:
            prev = scan.records[-1].lsn
        if scan.torn_bytes:
            rep.torn_tails.append(
                Problem(path, scan.valid_end, f"{scan.torn_bytes} bytes of an unacknowledged append (cut on open)")
            )
