"""store.verify(): check every WAL record and every block, and report (never raise)."""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from bt_frames.errors import BtError, CorruptionError
from bt_frames.storage import blocks as blk
from bt_frames.storage import catalog, layout, wal


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
        lines = [head + (")" if self.ok and not self.torn_tails else "")]
        for p in self.problems:
            lines.append(f"  CORRUPT {p.path}" + (f" @ {p.offset}" if p.offset is not None else "") + f": {p.message}")
        for p in self.torn_tails:
            lines.append(f"  torn tail {p.path} @ {p.offset}: {p.message}")
        if len(lines) > 1:
            lines.append(")")
        return "\n".join(lines)


def verify_store(root: Path) -> VerifyReport:
    rep = VerifyReport(root)
    for entry in sorted(os.listdir(root)):
        tdir = root / entry
        if entry.startswith(".") or not (tdir / layout.TABLE_JSON).is_file():
            continue
        rep.tables += 1
        try:
            meta = catalog.TableMeta.load(tdir / layout.TABLE_JSON)
        except BtError as e:
            rep.problems.append(Problem(tdir / layout.TABLE_JSON, None, str(e)))
            continue
        _verify_wal(tdir / layout.WAL_DIR, meta.schema, rep)
        for _name, path in blk.list_block_files(tdir / layout.BLOCKS_DIR):
            rep.blocks += 1
            rep.block_bytes += path.stat().st_size
            try:
                blk.verify_block(path, force=True)
                info = blk.read_block_info(path, verify=False)
                footer_rows = pl.scan_parquet(path).select(pl.len()).collect().item()
                if footer_rows != info.rows:
                    raise CorruptionError.at(path, None, f"footer has {footer_rows} rows, statistics say {info.rows}")
            except BtError as e:
                rep.problems.append(Problem(path, getattr(e, "offset", None), str(e)))
    return rep


def _verify_wal(wal_dir: Path, schema: pl.Schema, rep: VerifyReport) -> None:
    segs = wal.list_segments(wal_dir)
    prev = -1
    for i, (_first, path) in enumerate(segs):
        rep.wal_segments += 1
        try:
            scan = wal.read_segment(path, is_last=i == len(segs) - 1, prev_lsn=prev)
        except BtError as e:
            rep.problems.append(Problem(path, getattr(e, "offset", None), str(e)))
            continue
        for r in scan.records:
            rep.wal_records += 1
            try:
                df = pl.read_ipc_stream(io.BytesIO(r.payload))
                if df.schema != schema:
                    raise ValueError(f"schema {df.schema} is not the table's")
            except Exception as e:
                rep.problems.append(Problem(path, r.offset, f"record {r.lsn}: bad payload ({e})"))
        if scan.records:
            prev = scan.records[-1].lsn
        if scan.torn_bytes:
            rep.torn_tails.append(
                Problem(path, scan.valid_end, f"{scan.torn_bytes} bytes of an unacknowledged append (cut on open)")
            )
