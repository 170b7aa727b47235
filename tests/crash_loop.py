"""A SIGKILL crash loop against one store, in the spirit of RocksDB's db_crashtest.py.

Run::

    python tests/crash_loop.py --rounds 1000 [--seed N] [--path DIR] [--keep-going] [--json]

Every round starts a child writer (this file, ``child`` mode) on the same store
folder, which persists across rounds. The child

1. opens the store -- recovering whatever the last kill left -- scans the whole
   table and checks every batch in it (complete, exact, each once, in order)
   and that no temporary file of an earlier process survived the open, then
   prints the batch ids it found (``state``);
2. runs a random mix of appends (mostly small; sometimes a direct-to-blocks
   append of 1-3 blocks, most of them >= 2 * max_block_rows), flushes,
   compactions (different targets), short sleeps that let the background
   block writer interleave, and lifecycle operations on 1-3 whole batches it
   knows are stored (recent ones or any): ``delete`` by an id range
   (``is_between``) or list (``is_in``), ``upsert`` of every row of the
   batches on ``(batch, row)`` with a new ``mark`` value, and
   ``vacuum(older_than=0)`` (the round's ``retired_grace`` decides); prints
   ``try ID`` before and ``ack ID`` after each append returned, and
   ``do KIND {...}`` before and ``did KIND ...`` after each lifecycle
   operation returned;
3. every so often closes the store and opens it again in-process (a clean
   close, then the same check);

and is killed at a random moment: either by this process (a timer, sometimes
before the child even finished recovering) or by itself with a real SIGKILL at
an exact point of the write path, chosen through the file-op seam
(``bt_frames.storage.fs``): e.g. after a block's .tmp is written, after its
rename but before the manifest version naming it, half-way through writing a
manifest version or a WAL record, after a WAL segment was created, after a
compaction's output was renamed, while retired blocks are deleted, during
recovery itself, ... A few rounds exit cleanly instead.

This process keeps the expected state: the batches (and their marks) the last
``state`` line showed, changed by the appends, deletes and upserts acknowledged
since, plus the operation in flight when a child was killed. An append in
flight may be present or absent, completely or not at all (the child checks
completeness); a delete in flight removed every batch it targeted or none; an
upsert in flight marked every batch it targeted or none (the child checks a
batch's mark is the same on all its rows); a batch an acknowledged delete
removed never comes back. Every ``state`` line must equal exactly that. The
durability mode varies per round ("fsync", "batch", "none"): a process kill
loses nothing acknowledged in any of them (only a power loss could cost
"batch"/"none" their last interval), so the check is the same for all three.

Before each round the store folder is copied aside; a failure keeps that copy
(the state the failing child opened) next to the store, and the report names
the round, the seeds, the previous round's kill point and what was missing,
duplicated or resurrected.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import itertools
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

ROOT = Path(__file__).resolve().parents[1]
TABLE = "loop"
SCHEMA = pl.Schema(
    {
        "batch": pl.Int64(),
        "row": pl.Int32(),
        "n": pl.Int32(),  # rows of the batch: a batch is complete when it has n rows numbered 0..n-1
        "ts": pl.Datetime("us", "UTC"),
        "sym": pl.String(),
        "val": pl.Float64(),
        "mark": pl.Int64(),  # null as appended; an upsert of whole batches sets it (one value per upsert)
    }
)
_T0_US = 1_704_067_200_000_000
_SYMS = np.array(["BTC", "ETH", "SOL", "XRP", "ünï", ""])

# Exact kill points: (phase, point). The phase is what the child's main thread
# is doing ("freeze" = any operation of the background block writer thread).
# Points are file operations, matched in FaultFS below.
FAULTS: list[tuple[str, str]] = [
    # the background block writer (a freeze of the hot rows)
    ("freeze", "block-tmp-open"),  # the block's .tmp created, empty
    ("freeze", "block-tmp-partial"),  # half the block's bytes written to the .tmp
    ("freeze", "block-tmp-written"),  # .tmp written and fsynced, not renamed
    ("freeze", "block-renamed"),  # renamed into place, no manifest version names it yet
    ("freeze", "blocks-dir-synced"),  # ... and the directory fsynced
    ("freeze", "manifest-tmp-partial"),  # half of the publishing manifest version written
    ("freeze", "manifest-tmp-written"),  # the version's .tmp complete, not renamed
    ("freeze", "manifest-renamed"),  # the version is in place (committed), WAL segments not deleted
    ("freeze", "wal-unlink"),  # a covered WAL segment deleted
    ("freeze", "cache-tmp-written"),  # the stats cache's .tmp written, not renamed
    # appends: WAL records and rotations
    ("append", "wal-torn-record"),  # part of a WAL record written
    ("append", "wal-record-written"),  # the whole record written, before its fdatasync (fsync mode)
    ("append", "wal-create"),  # a rotation created the new segment, no header yet
    ("append", "wal-dir-synced"),  # the new segment complete and durable, no "rotate" version
    ("append", "manifest-renamed"),  # the "rotate" version committed
    # large appends straight to blocks (multi-part)
    ("big-append", "block-tmp-written"),
    ("big-append", "block-renamed"),  # k-th part renamed: parts before it in place, the rest not
    ("big-append", "manifest-tmp-partial"),
    ("big-append", "manifest-tmp-written"),
    ("big-append", "manifest-renamed"),  # committed, the stats cache not yet rewritten
    # flush
    ("flush", "wal-create"),
    ("flush", "block-renamed"),
    ("flush", "manifest-tmp-written"),
    # compaction
    ("compact", "block-tmp-partial"),
    ("compact", "block-tmp-written"),
    ("compact", "block-renamed"),  # merged output in place, inputs still named by the manifest
    ("compact", "manifest-tmp-written"),
    ("compact", "manifest-renamed"),  # committed: inputs retired
    ("compact", "block-unlink"),  # deleting retired inputs (keep_versions=0, retired_grace=0)
    ("compact", "cache-tmp-written"),
    # close
    ("close", "manifest-tmp-written"),
    ("close", "manifest-renamed"),
    ("close", "block-unlink"),
    # delete of whole batches (freeze the hot rows, rewrite or empty the blocks holding them, one version)
    ("delete", "block-tmp-partial"),
    ("delete", "block-tmp-written"),
    ("delete", "block-renamed"),  # a replacement in place, the version retiring the originals not yet written
    ("delete", "manifest-tmp-partial"),
    ("delete", "manifest-tmp-written"),
    ("delete", "manifest-renamed"),  # committed, the stats cache not yet rewritten
    ("delete", "cache-tmp-written"),
    # upsert of whole batches (every row replaced in place, a marker value set)
    ("upsert", "block-tmp-written"),
    ("upsert", "block-renamed"),
    ("upsert", "manifest-tmp-written"),
    ("upsert", "manifest-renamed"),
    # vacuum (deleting retired blocks, then one version forgetting them)
    ("vacuum", "block-unlink"),
    ("vacuum", "manifest-tmp-written"),
    ("vacuum", "manifest-renamed"),
    # recovery (the open after the previous kill)
    ("open", "any-unlink"),  # removing leftovers: tmp files, uncommitted parts, covered segments
    ("open", "ftruncate"),  # cutting a torn WAL tail
    ("open", "manifest-renamed"),
    ("open", "cache-tmp-written"),
]
# Phases in which the k-th occurrence is worth choosing larger (many occurrences per child).
_MANY = {"wal-torn-record", "wal-record-written"}


# -- batches -----------------------------------------------------------------------------------------------------


def make_frame(ids: Sequence[int], sizes: Sequence[int], marks: Sequence[int | None] | None = None) -> pl.DataFrame:
    """The rows of batches ``ids`` (``sizes`` rows each), in that order; every value a function of (batch, row),
    but ``mark``: the batch's entry of ``marks`` (default: null)."""
    ids_a = np.asarray(ids, dtype=np.int64)
    sizes_a = np.asarray(sizes, dtype=np.int64)
    batch = np.repeat(ids_a, sizes_a)
    starts = np.repeat(np.cumsum(sizes_a) - sizes_a, sizes_a)
    row = np.arange(int(sizes_a.sum()), dtype=np.int64) - starts
    return pl.DataFrame(
        {
            "batch": batch,
            "row": row.astype(np.int32),
            "n": np.repeat(sizes_a, sizes_a).astype(np.int32),
            "ts": pl.Series(_T0_US + batch * 1_000_000 + row, dtype=pl.Int64).cast(pl.Datetime("us", "UTC")),
            "sym": _SYMS[(batch + row) % len(_SYMS)],
            "val": batch.astype(np.float64) + row / 1_000_000,
            "mark": pl.Series([None] * len(ids) if marks is None else list(marks), dtype=pl.Int64).gather(
                np.repeat(np.arange(len(ids_a)), sizes_a)
            ),
        },
        schema=SCHEMA,
    )


def check_frame(df: pl.DataFrame) -> tuple[list[int], dict[int, int]]:
    """The batch ids in ``df``, in order, and the marks of the marked ones; AssertionError unless each batch is
    there once, complete and exact (its mark the same on every row)."""
    assert df.schema == SCHEMA, f"schema {df.schema}"
    if df.height == 0:
        return [], {}
    runs = df.select(pl.col("batch").rle()).unnest("batch")
    ids = runs.get_column("value").to_list()
    lens = runs.get_column("len").to_list()
    if len(set(ids)) != len(ids):
        seen: set[int] = set()
        dup = sorted({i for i in ids if i in seen or seen.add(i)})  # type: ignore[func-returns-value]
        raise AssertionError(f"batches in more than one place (duplicated or interleaved): {dup[:10]}")
    bad_order = [(a, b) for a, b in itertools.pairwise(ids) if a >= b]
    assert not bad_order, f"batches out of append order: {bad_order[:5]}"
    starts = np.cumsum([0, *lens[:-1]])
    ns = df.get_column("n").gather(starts).to_list()
    partial = [(i, got, want) for i, got, want in zip(ids, lens, ns, strict=True) if got != want]
    assert not partial, f"partial batches (id, rows found, rows appended): {partial[:10]}"
    marks = df.get_column("mark").gather(starts).to_list()
    torn = df.select(pl.col("batch"), pl.col("mark").ne_missing(pl.col("mark").first().over("batch")).alias("bad"))
    torn_ids = torn.filter("bad").get_column("batch").unique(maintain_order=True).to_list()
    assert not torn_ids, f"batches upserted in part (rows of one batch with different marks): {torn_ids[:10]}"
    expected = make_frame(ids, lens, marks)
    if not df.equals(expected, null_equal=True):
        both = df.with_row_index("i").join(expected.with_row_index("i"), on="i", suffix="_want")
        bad = both.filter(pl.any_horizontal(pl.col(c).ne_missing(pl.col(f"{c}_want")) for c in SCHEMA))
        raise AssertionError(f"row contents differ from what was appended:\n{bad.head(5)}")
    return ids, {i: m for i, m in zip(ids, marks, strict=True) if m is not None}


def marks_json(marks: dict[int, int]) -> list[list[Any]]:
    """``{batch: mark}`` as ``[[mark, ranges of its batches], ...]`` (a mark is one upsert's: a few batches)."""
    by: dict[int, list[int]] = {}
    for i, m in sorted(marks.items()):
        by.setdefault(m, []).append(i)
    return [[m, to_ranges(ids)] for m, ids in sorted(by.items())]


def marks_from_json(doc: Sequence[Sequence[Any]]) -> dict[int, int]:
    return {i: int(m) for m, ranges in doc for i in from_ranges(ranges)}


def to_ranges(ids: Sequence[int]) -> list[list[int]]:
    out: list[list[int]] = []
    for i in ids:
        if out and out[-1][1] + 1 == i:
            out[-1][1] = i
        else:
            out.append([i, i])
    return out


def from_ranges(ranges: Sequence[Sequence[int]]) -> list[int]:
    return [i for a, b in ranges for i in range(a, b + 1)]


# -- the child ---------------------------------------------------------------------------------------------------

_OUT = threading.Lock()
_KEEP: list[Any] = []
_PHASE = "start"


def emit(line: str) -> None:
    with _OUT:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


@contextmanager
def phase(name: str) -> Iterator[None]:
    global _PHASE
    old, _PHASE = _PHASE, name
    try:
        yield
    finally:
        _PHASE = old


def _die(label: str) -> None:
    with _OUT:
        sys.stdout.write(f"fault {label}\n")
        sys.stdout.flush()
        os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(10)  # pragma: no cover - the signal is delivered first


def _make_fault_fs(spec: str) -> Any:
    """A FileSystem that SIGKILLs this process at the k-th file operation matching ``phase/point:k``."""
    from bt_frames.storage import fs, layout, wal

    where, _, k_str = spec.partition(":")
    want_phase, _, want_point = where.partition("/")
    k = int(k_str)

    def kind(path: object) -> str:
        p = os.fspath(path)  # type: ignore[call-overload]
        name = os.path.basename(p)
        parent = os.path.basename(os.path.dirname(p))
        if layout.is_tmp(name):
            name = name[1:].rsplit(".", 2)[0]  # .<target>.<pid>.tmp -> <target>
        if name.endswith(".parquet"):
            return "block"
        if name.endswith(".wal"):
            return "wal"
        if parent == "_manifest" and name.endswith(".json"):
            return "manifest"
        if name == layout.STATS_CACHE:
            return "cache"
        return "other"

    class FaultFS(fs.FileSystem):
        def __init__(self) -> None:
            self.seen = 0
            self.fds: dict[int, str] = {}

        def hit(self, point: str) -> bool:
            if point != want_point:
                return False
            ph = _PHASE if threading.current_thread() is threading.main_thread() else "freeze"
            if want_phase not in ("any", ph):
                return False
            self.seen += 1
            return self.seen == k

        def open(self, path: Any, flags: int, mode: int = 0o644) -> int:
            fd = super().open(path, flags, mode)
            self.fds[fd] = os.fspath(path)
            if flags & os.O_CREAT:
                kd = kind(path)
                if kd == "wal" and self.hit("wal-create"):
                    _die(spec)
                if kd == "block" and self.hit("block-tmp-open"):
                    _die(spec)
            return fd

        def close(self, fd: int) -> None:
            self.fds.pop(fd, None)
            super().close(fd)

        def write(self, fd: int, data: bytes | memoryview) -> int:
            kd = kind(self.fds.get(fd, ""))
            if kd in ("block", "manifest") and self.hit(f"{kd}-tmp-partial"):
                super().write(fd, data[: max(1, len(data) // 2)])
                _die(spec)
            return super().write(fd, data)

        def pwritev(self, fd: int, buffers: Sequence[bytes | memoryview], offset: int) -> int:
            # a WAL record (written in place, at its offset), not the segment header or zeros written ahead
            is_record = kind(self.fds.get(fd, "")) == "wal" and bytes(buffers[0][:4]) == wal._MAGIC_BYTES
            if is_record and self.hit("wal-torn-record"):
                data = b"".join(bytes(b) for b in buffers)
                super().pwritev(fd, [data[: random.randint(1, len(data) - 1)]], offset)
                _die(spec)
            n = super().pwritev(fd, buffers, offset)
            if is_record and self.hit("wal-record-written"):
                _die(spec)
            return n

        def ftruncate(self, fd: int, size: int) -> None:
            super().ftruncate(fd, size)
            if self.hit("ftruncate"):
                _die(spec)

        def replace(self, src: Any, dst: Any) -> None:
            kd = kind(dst)
            if self.hit(f"{kd}-tmp-written"):
                _die(spec)
            super().replace(src, dst)
            if self.hit(f"{kd}-renamed"):
                _die(spec)

        def unlink(self, path: Any) -> None:
            super().unlink(path)
            if self.hit(f"{kind(path)}-unlink") or self.hit("any-unlink"):
                _die(spec)

        def fsync_dir(self, path: Any) -> None:
            super().fsync_dir(path)
            if self.hit(f"{os.path.basename(os.fspath(path))}-dir-synced"):
                _die(spec)

    return FaultFS()


def _open_and_check(args: argparse.Namespace, rng: random.Random, *, verify: bool) -> tuple[Any, Any, dict[int, int]]:
    """Open (recover) and check the store, print its ``state``; the store, the table and {batch id: rows}."""
    import bt_frames as bt
    from bt_frames.storage import layout

    with phase("open"):
        # Without the Delta log (derived, never on the durability path; tests/test_delta.py kills a writer
        # between a version and its Delta commit): its commits would halve the appends a round makes.
        store = bt.BacktraceStore(
            args.path, durability=args.durability, retired_grace=args.retired_grace, delta_log=False
        )
        # keep_versions=0: retired blocks go once the round's retired_grace has passed (0 or 60 s), so compaction
        # and close delete files (their faults fire) and, in 60 s rounds, vacuum still finds some to delete
        table = store.create_table(
            TABLE, SCHEMA, time_column="ts", max_block_rows=args.max_block_rows, keep_versions=dt.timedelta(0)
        )
    me = f".{os.getpid()}.tmp"
    left = [str(p) for p in Path(args.path).rglob("*") if layout.is_tmp(p.name) and not p.name.endswith(me)]
    df = table.scan().collect()
    try:
        ids, marks = check_frame(df)
        assert not left, f"temporary files of an earlier process survived the writer's open: {left}"
        if verify:
            report = store.verify()
            assert report.ok, f"store.verify() failed: {report!r}"
    except AssertionError as e:
        emit("FAIL " + json.dumps({"error": str(e), "recovery": dataclasses.asdict(table.recovery)}))
        sys.exit(3)
    rec = {k: v for k, v in dataclasses.asdict(table.recovery).items() if isinstance(v, int) and v}
    blocks = table.blocks
    parts = int((blocks["nparts"] > 1).sum()) if blocks.height and "nparts" in blocks.columns else 0
    state = {"ranges": to_ranges(ids), "marks": marks_json(marks), "rows": df.height, "blocks": blocks.height,
             "parts": parts, "recovery": rec}  # fmt: skip
    emit("state " + json.dumps(state))
    sizes = df.get_column("batch").value_counts().rows() if df.height else []
    return store, table, {int(i): int(n) for i, n in sizes}


def _targets(rng: random.Random, known: dict[int, int], *, consecutive: bool) -> list[int]:
    """1-3 batches the child knows are stored: recent ones (maybe still hot) or any; consecutive or scattered."""
    ids = sorted(known)
    pool = ids[-20:] if rng.random() < 0.5 else ids
    k = rng.randint(1, min(3, len(pool)))
    if consecutive:
        i = rng.randrange(len(pool) - k + 1)
        return pool[i : i + k]
    return sorted(rng.sample(pool, k))


def _child_fail(error: str) -> None:
    emit("FAIL " + json.dumps({"error": error}))
    sys.exit(3)


def child(args: argparse.Namespace) -> None:
    """One round's writer: open + check, then random work until killed (or ``--ops`` ops, then a clean exit)."""
    from bt_frames.storage import fs

    rng = random.Random(args.seed)
    if args.fault:  # for the life of the process (keep a reference: a collected context manager resets it)
        _KEEP.append(fs.use(_make_fault_fs(args.fault)))
        _KEEP[-1].__enter__()
    fault_phase = args.fault.partition("/")[0] if args.fault else ""
    mbr = args.max_block_rows
    p_big = 0.3 if fault_phase == "big-append" else 0.02
    weights = {
        "append": 80,
        "flush": 20 if fault_phase == "flush" else 3,
        "compact": 25 if fault_phase == "compact" else 3,
        "delete": 25 if fault_phase == "delete" else 2,
        "upsert": 25 if fault_phase == "upsert" else 1,
        "vacuum": 25 if fault_phase == "vacuum" else 1,
        "sleep": 6,
    }
    ops, w = list(weights), list(weights.values())
    short = fault_phase in ("close", "open")
    next_id = args.start
    done = 0
    parent = os.getppid()
    store, table, known = _open_and_check(args, rng, verify=args.verify)  # known: batch id -> rows, as stored
    while True:
        session = rng.randint(3, 25) if short else rng.randint(10, 200)
        for _ in range(session):
            if os.getppid() != parent:  # the loop is gone (interrupted): do not write on forever
                os._exit(0)
            op = rng.choices(ops, w)[0]
            if op in ("delete", "upsert") and not known:
                op = "append"
            if op == "append":
                big = rng.random() < p_big
                if big:
                    n = rng.randint(mbr, 2 * mbr - 1) if rng.random() < 0.25 else rng.randint(2 * mbr, 3 * mbr)
                else:
                    n = rng.randint(1, max(1, mbr // 8))
                df = make_frame([next_id], [n])
                emit(f"try {next_id}")
                with phase("big-append" if big else "append"):
                    table.append(df)
                emit(f"ack {next_id}")
                known[next_id] = n
                next_id += 1
            elif op == "delete":  # whole batches, by an id range or a list; "did" only once delete() returned
                by_range = rng.random() < 0.5  # the range covers consecutive stored batches (and gaps: none stored)
                ids = _targets(rng, known, consecutive=by_range or rng.random() < 0.5)
                where = pl.col("batch").is_between(ids[0], ids[-1]) if by_range else pl.col("batch").is_in(ids)
                emit("do delete " + json.dumps({"ids": ids, "by": "range" if by_range else "list"}))
                with phase("delete"):
                    got = table.delete(where)
                want = sum(known[i] for i in ids)
                if got != want:
                    _child_fail(f"delete of batches {ids} removed {got} rows, not {want}")
                emit(f"did delete {got}")
                for i in ids:
                    del known[i]
            elif op == "upsert":  # every row of whole batches, on (batch, row), with a new mark
                ids = _targets(rng, known, consecutive=rng.random() < 0.5)
                mark = next_id  # marks come from the id counter: unique across rounds
                next_id += 1
                df = make_frame(ids, [known[i] for i in ids], [mark] * len(ids))
                emit("do upsert " + json.dumps({"ids": ids, "mark": mark}))
                with phase("upsert"):
                    change = table.upsert(df, on=["batch", "row"])
                if (change.rows_added, change.rows_removed) != (df.height, df.height):
                    _child_fail(f"upsert of batches {ids} ({df.height} rows) reported {change}")
                emit(f"did upsert {change.version}")
            elif op == "vacuum":  # older_than=0: the store's retired_grace decides; rows unchanged
                emit("do vacuum {}")
                with phase("vacuum"):
                    freed = table.vacuum(older_than=0)
                emit(f"did vacuum {freed}")
            elif op == "flush":
                emit("op flush")
                with phase("flush"):
                    table.flush()
            elif op == "compact":
                emit("op compact")
                target = rng.choice([None, 4 * mbr, 16 * mbr])
                with phase("compact"):
                    table.compact(target_rows=target)
            else:
                emit("op sleep")
                time.sleep(rng.uniform(0.0, 0.03))
            done += 1
            if args.ops is not None and done >= args.ops:
                emit("op close")
                with phase("close"):
                    store.close()
                emit("done")
                return
        emit("op close")
        with phase("close"):
            store.close()
        emit("op reopen")
        store, table, known = _open_and_check(args, rng, verify=False)


# -- the parent --------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Report:
    rounds: int = 0
    seed: int = 0
    kills: Counter[str] = dataclasses.field(default_factory=Counter)  # kind -> count
    points: Counter[str] = dataclasses.field(default_factory=Counter)  # kind:point -> count
    clean_exits: int = 0
    appends_acked: int = 0
    in_flight: int = 0  # killed during an append
    in_flight_kept: int = 0
    in_flight_dropped: int = 0
    ops_acked: Counter[str] = dataclasses.field(default_factory=Counter)  # delete/upsert/vacuum returned
    batches_deleted: int = 0  # by acknowledged deletes
    batches_upserted: int = 0  # by acknowledged upserts
    vacuum_bytes: int = 0  # freed by acknowledged vacuums
    ops_in_flight: Counter[str] = dataclasses.field(default_factory=Counter)  # "delete applied", ... after a kill
    rows_verified: int = 0
    recoveries: int = 0
    repairs: Counter[str] = dataclasses.field(default_factory=Counter)  # recovery counters, summed
    durability: Counter[str] = dataclasses.field(default_factory=Counter)
    failures: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    final_batches: int = 0
    final_rows: int = 0
    final_blocks: int = 0
    final_parts: int = 0
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        # not dataclasses.asdict: it rebuilds a Counter from (key, count) pairs, counting the pairs
        return {f.name: (dict(v) if isinstance(v := getattr(self, f.name), Counter) else v)
                for f in dataclasses.fields(self)}  # fmt: skip

    def text(self) -> str:
        lines = [
            f"crash loop: {self.rounds} rounds, seed {self.seed}, {self.seconds:.0f} s "
            f"({self.seconds / max(1, self.rounds):.2f} s/round)",
            f"kills: {sum(self.kills.values())} ({', '.join(f'{k} {v}' for k, v in sorted(self.kills.items()))}); "
            f"clean exits: {self.clean_exits}",
            f"durability: {', '.join(f'{k} {v}' for k, v in sorted(self.durability.items()))}",
            "kills by point:",
            *(f"  {k:<40} {v}" for k, v in sorted(self.points.items())),
            f"appends acknowledged: {self.appends_acked:,}; killed in flight: {self.in_flight} "
            f"(present after recovery {self.in_flight_kept}, absent {self.in_flight_dropped})",
            f"lifecycle ops acknowledged: {', '.join(f'{k} {v}' for k, v in sorted(self.ops_acked.items())) or 'none'}"
            f" ({self.batches_deleted:,} batches deleted, {self.batches_upserted:,} upserted, "
            f"{self.vacuum_bytes:,} bytes vacuumed); killed in flight: "
            f"{', '.join(f'{k} {v}' for k, v in sorted(self.ops_in_flight.items())) or 'none'}",
            f"recoveries checked: {self.recoveries:,}; rows verified: {self.rows_verified:,}",
            "recovery work (summed): " + ", ".join(f"{k} {v:,}" for k, v in sorted(self.repairs.items())),
            f"final store: {self.final_batches:,} batches, {self.final_rows:,} rows, {self.final_blocks} blocks "
            f"({self.final_parts} multi-part)",
            f"failures: {len(self.failures)}",
            *(f"  {json.dumps(f)}" for f in self.failures),
        ]
        return "\n".join(lines)


class _Proc:
    """A child process whose stdout lines a thread collects as they arrive (a cut-off last line is dropped)."""

    def __init__(self, argv: list[str], stderr_path: Path) -> None:
        self._err = open(stderr_path, "wb")  # noqa: SIM115 - closed in wait()
        env = {**os.environ, "BT_FRAMES_PROGRESS": "0"}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=self._err, env=env)
        self.lines: list[str] = []
        self.cond = threading.Condition()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            if not raw.endswith(b"\n"):
                break
            with self.cond:
                self.lines.append(raw.decode().rstrip("\n"))
                self.cond.notify_all()
        with self.cond:
            self.cond.notify_all()

    def wait_line(self, prefix: str, timeout: float) -> bool:
        """True once a line starts with ``prefix``; False if the child exited or the time ran out first."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while not any(ln.startswith(prefix) for ln in self.lines):
                left = deadline - time.monotonic()
                if left <= 0 or not self.thread.is_alive():
                    return False
                self.cond.wait(min(left, 0.2))
        return True

    def kill(self) -> bool:
        """SIGKILL the child if it still runs; True if this call killed it."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            return True
        return False

    def wait(self, timeout: float) -> int | None:
        try:
            rc: int | None = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            rc = None
        if rc is None:
            self.proc.kill()
            self.proc.wait()
        self.thread.join(10)
        self._err.close()
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        return rc


class Loop:
    def __init__(
        self,
        path: Path,
        *,
        seed: int,
        max_block_rows: int = 256,
        keep_going: bool = False,
        snapshots: bool = True,
        pace: float = 1.0,
        log: Any = None,
    ) -> None:
        self.path = path
        self.pace = pace  # scales how long a child runs before a timer kill (and the fault fallback)
        self.seed = seed
        self.mbr = max_block_rows
        self.keep_going = keep_going
        self.snapshots = snapshots
        self.log = log
        self.report = Report(seed=seed)
        # The model: the batches that must be stored ({id: mark or None}: the last state, plus the appends,
        # deletes and upserts acknowledged since), the operations killed in flight since (each may have
        # happened or not, wholly), and every batch an acknowledged delete removed (never to come back).
        self.present: dict[int, int | None] = {}
        self.pending: list[dict[str, Any]] = []  # {"kind": "append", "id": i} or {"kind": "delete"/"upsert", ...}
        self.deleted: set[int] = set()
        self.next_id = 0
        self.last_kill = "none (fresh store)"

    def _say(self, msg: str) -> None:
        if self.log is not None:
            print(msg, file=self.log, flush=True)

    def _fail(self, rnd: int, what: str, **detail: Any) -> None:
        entry = {"round": rnd, "seed": self.seed, "previous_kill": self.last_kill, "failure": what, **detail}
        if self.snapshots and (self.path.parent / "pre-round").exists():
            keep = self.path.parent / f"failure-round-{rnd}"
            shutil.rmtree(keep, ignore_errors=True)
            shutil.copytree(self.path.parent / "pre-round", keep)
            entry["store_before_round"] = str(keep)
        self.report.failures.append(entry)
        self._say(f"FAILURE {json.dumps(entry)}")

    def _check_state(self, rnd: int, state: dict[str, Any], **ctx: Any) -> bool:
        """Compare a state line with the model; resolve the operations in flight; True if it matched.

        A batch the model holds must be there with its mark; an append killed in flight may be there
        (unmarked) or not; a delete killed in flight removed all the batches it targeted or none; an upsert
        killed in flight marked all of them or none. Nothing else may be there.
        """
        marks = marks_from_json(state.get("marks", []))
        got: dict[int, int | None] = {i: marks.get(i) for i in from_ranges(state["ranges"])}
        self.report.recoveries += 1
        self.report.rows_verified += state["rows"]
        self.report.repairs.update(state.get("recovery", {}))
        expect = self.present
        loose: set[int] = set()  # batches whose fate an operation in flight decides
        bad: list[tuple[str, dict[str, Any]]] = []
        for op in self.pending:
            kind = op["kind"]
            if kind == "append":
                i = op["id"]
                loose.add(i)
                kept = i in got
                self.report.in_flight_kept += kept
                self.report.in_flight_dropped += not kept
                if kept and got[i] is not None:
                    bad.append(("a batch appended in flight came back marked", {"batch": i, "mark": got[i]}))
                continue
            ids = op["ids"]
            loose.update(ids)
            there = [i for i in ids if i in got]
            if kind == "delete":
                if there and len(there) != len(ids):
                    gone = [i for i in ids if i not in got]
                    detail = {**op, "kept": there, "removed": gone}
                    bad.append(("a delete killed in flight removed part of its batches", detail))
                self.report.ops_in_flight["delete applied" if not there else "delete not applied"] += 1
                wrong = [(i, got[i], expect.get(i)) for i in there if got[i] != expect.get(i)]
            else:
                if len(there) != len(ids):
                    detail = {**op, "missing": sorted(set(ids) - set(got))}
                    bad.append(("an upsert killed in flight lost batches", detail))
                new = [i for i in there if got[i] == op["mark"]]
                if new and len(new) != len(ids):
                    bad.append(("an upsert killed in flight marked part of its batches", {**op, "marked": new}))
                self.report.ops_in_flight["upsert applied" if new else "upsert not applied"] += 1
                wrong = [(i, got[i], expect.get(i)) for i in there if got[i] not in (op["mark"], expect.get(i))]
            if wrong:
                bad.append(("marks of batches an operation in flight targeted changed otherwise",
                            {**op, "batch_found_model": wrong[:10]}))  # fmt: skip
        missing = sorted(i for i in expect if i not in got and i not in loose)
        unexpected = sorted(i for i in got if i not in expect and i not in loose)
        back = [i for i in unexpected if i in self.deleted]
        wrong_marks = [(i, got[i], m) for i, m in expect.items() if i in got and i not in loose and got[i] != m]
        if missing:
            bad.append(("acknowledged batches missing", {"missing": missing[:20]}))
        if back:
            bad.append(("batches an acknowledged delete removed came back", {"resurrected": back[:20]}))
        if len(unexpected) > len(back):
            never = [i for i in unexpected if i not in self.deleted]
            bad.append(("batches never acknowledged nor in flight appeared", {"unexpected": never[:20]}))
        if wrong_marks:
            bad.append(("batches with marks other than the model's (batch, found, model)", {"marks": wrong_marks[:20]}))
        for what, detail in bad:
            self._fail(rnd, what, **detail, in_flight=self.pending, **ctx)
        self.present, self.pending = got, []
        return not bad

    def round(self, rnd: int) -> bool:
        """One round; False if it found a failure that ends the loop."""
        rng = random.Random(f"{self.seed}-{rnd}")
        durability = rng.choice(["fsync", "batch", "none"])
        grace = 0.0 if rng.random() < 0.35 else 60.0
        r = rng.random()
        mode = "fault" if r < 0.45 else "timer" if r < 0.95 else "clean"
        fault = None
        if mode == "fault":
            ph, point = rng.choice(FAULTS)
            k = rng.randint(1, 40) if point in _MANY else rng.randint(1, 3)
            fault = f"{ph}/{point}:{k}"
        child_seed = rng.randrange(2**32)
        verify = rng.random() < 0.1
        argv = [
            sys.executable,
            str(Path(__file__).resolve()),
            "child",
            "--path",
            str(self.path),
            "--durability",
            durability,
            "--retired-grace",
            str(grace),
            "--max-block-rows",
            str(self.mbr),
            "--start",
            str(self.next_id),
            "--seed",
            str(child_seed),
        ]
        if fault:
            argv += ["--fault", fault]
        if mode == "clean":
            argv += ["--ops", str(rng.randint(5, 60))]
        if verify:
            argv.append("--verify")
        self.report.durability[durability] += 1
        ctx = {"durability": durability, "retired_grace": grace, "mode": mode, "fault": fault,
               "child_seed": child_seed, "cmd": " ".join(argv[1:])}  # fmt: skip
        if self.snapshots and self.path.exists():
            snap = self.path.parent / "pre-round"
            shutil.rmtree(snap, ignore_errors=True)
            shutil.copytree(self.path, snap)
        stderr_path = self.path.parent / "child-stderr.txt"
        proc = _Proc(argv, stderr_path)
        killed = False
        hung = False
        if mode == "timer" and rng.random() < 0.15:  # anywhere: start-up, recovery, the first appends
            time.sleep(rng.uniform(0.05, 1.6) * max(self.pace, 0.8))
            killed = proc.kill()
        elif not proc.wait_line("state", timeout=120):
            hung = proc.proc.poll() is None
        elif mode == "timer":
            time.sleep(rng.uniform(0.0, 0.8) * self.pace)
            killed = proc.kill()
        elif mode == "fault":  # the fault may never be reached: then a timer kill
            try:
                proc.proc.wait(rng.uniform(1.0, 2.0) * self.pace)
            except subprocess.TimeoutExpired:
                killed = proc.kill()
        rc = proc.wait(timeout=120)
        if rc is None:
            hung = True
        lines = list(proc.lines)
        stderr = stderr_path.read_text(errors="replace")[-3000:]
        # Replay the child's output against the model.
        tried: int | None = None
        doing: dict[str, Any] | None = None  # a delete, upsert or vacuum printed ("do") and not returned ("did")
        fired = None
        last_op = "start-up/recovery"
        for ln in lines:
            kind, _, rest = ln.partition(" ")
            if kind == "state":
                if not self._check_state(rnd, json.loads(rest), **ctx) and not self.keep_going:
                    return False
                last_op = "idle"
            elif kind == "try":
                tried = int(rest)
                last_op = "append"
                self.next_id = max(self.next_id, tried + 1)
            elif kind == "ack":
                if tried != int(rest):
                    self._fail(rnd, f"child acknowledged {rest} while {tried} was in flight", **ctx)
                self.present[int(rest)] = None
                self.report.appends_acked += 1
                tried = None
                last_op = "idle"
            elif kind == "do":
                op_kind, _, doc = rest.partition(" ")
                doing = {"kind": op_kind, **json.loads(doc)}
                last_op = op_kind
                if "mark" in doing:
                    self.next_id = max(self.next_id, doing["mark"] + 1)
            elif kind == "did":
                op_kind = rest.partition(" ")[0]
                if doing is None or doing["kind"] != op_kind:
                    self._fail(rnd, f"child acknowledged a {op_kind} while {doing} was in flight", **ctx)
                    return False
                if op_kind == "delete":
                    for i in doing["ids"]:
                        self.present.pop(i, None)
                    self.deleted.update(doing["ids"])
                    self.report.batches_deleted += len(doing["ids"])
                elif op_kind == "upsert":
                    for i in doing["ids"]:
                        self.present[i] = doing["mark"]
                    self.report.batches_upserted += len(doing["ids"])
                elif op_kind == "vacuum":
                    self.report.vacuum_bytes += int(rest.partition(" ")[2])
                self.report.ops_acked[op_kind] += 1
                doing = None
                last_op = "idle"
            elif kind == "op":
                last_op = rest
            elif kind == "fault":
                fired = rest
            elif kind == "FAIL":
                self._fail(rnd, "the child's check failed", detail=json.loads(rest), **ctx)
                return False
        if tried is not None:
            self.pending.append({"kind": "append", "id": tried})
            self.report.in_flight += 1
        if doing is not None and doing["kind"] in ("delete", "upsert"):
            self.pending.append(doing)
        elif doing is not None:  # a vacuum changes no row: the next state must match the model as it is
            self.report.ops_in_flight[doing["kind"]] += 1
        self.report.rounds += 1
        if hung:
            self._fail(rnd, "child hung (no progress for 120 s)", last_lines=lines[-5:], stderr=stderr, **ctx)
            return self.keep_going
        if rc == -signal.SIGKILL and fired:
            ph_point = fired.rpartition(":")[0]
            self.report.kills["fault"] += 1
            self.report.points[f"fault {ph_point}"] += 1
            self.last_kill = f"fault {fired}"
        elif rc == -signal.SIGKILL and killed:
            kind = "timer" if mode == "timer" else "fallback-timer"
            self.report.kills[kind] += 1
            self.report.points[f"{kind} during {last_op}"] += 1
            self.last_kill = f"{kind} during {last_op}"
        elif rc == 0 and lines and lines[-1] == "done":
            self.report.clean_exits += 1
            self.last_kill = "clean exit"
        else:
            self._fail(rnd, f"child exited with {rc}", last_lines=lines[-5:], stderr=stderr, **ctx)
            return self.keep_going
        return True

    def final_check(self) -> None:
        """This process opens the store as the writer once more, checks it and compares with the model."""
        import bt_frames as bt

        with bt.BacktraceStore(self.path) as store:
            table = store.table(TABLE)
            df = table.scan().collect()
            try:
                ids, marks = check_frame(df)
                report = store.verify()
                assert report.ok, repr(report)
            except AssertionError as e:
                self._fail(self.report.rounds, "final check failed", error=str(e))
                return
            blocks = table.blocks
            state = {"ranges": to_ranges(ids), "marks": marks_json(marks), "rows": df.height}
            self._check_state(self.report.rounds, state, mode="final check")
            self.report.final_batches = len(ids)
            self.report.final_rows = df.height
            self.report.final_blocks = blocks.height
            self.report.final_parts = int((blocks["nparts"] > 1).sum()) if "nparts" in blocks.columns else 0


def _progress(loop: Loop, rnd: int, t0: float) -> None:
    if (rnd + 1) % 50 == 0:
        r = loop.report
        loop._say(
            f"round {rnd + 1}: {r.appends_acked:,} acked, {len(loop.present):,} batches stored, "
            f"{sum(r.kills.values())} kills, {len(r.failures)} failures, {time.monotonic() - t0:.0f} s"
        )


def run_loop(
    rounds: int,
    *,
    seed: int,
    path: Path,
    max_block_rows: int = 256,
    keep_going: bool = False,
    pace: float = 1.0,
    minutes: float | None = None,
    log: Any = None,
) -> Report:
    """Run ``rounds`` crash rounds on the store at ``path`` (created if missing) and return the report.

    With ``minutes``, or on Ctrl-C, fewer: the report counts the rounds run.
    """
    path.mkdir(parents=True, exist_ok=True)
    store = path / "store"
    loop = Loop(store, seed=seed, max_block_rows=max_block_rows, keep_going=keep_going, pace=pace, log=log)
    t0 = time.monotonic()
    try:
        for rnd in range(rounds):
            if minutes is not None and time.monotonic() - t0 > 60 * minutes:
                loop._say(f"time budget of {minutes} min reached after {rnd} rounds")
                break
            if not loop.round(rnd):
                break
            _progress(loop, rnd, t0)
    except KeyboardInterrupt:
        loop._say(f"interrupted in round {loop.report.rounds}")
    if not loop.report.failures or keep_going:
        loop.final_check()
    loop.report.seconds = time.monotonic() - t0
    return loop.report


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="mode")
    c = sub.add_parser("child", help="one round's writer (started by the loop)")
    c.add_argument("--path", required=True)
    c.add_argument("--durability", default="fsync", choices=["fsync", "batch", "none"])
    c.add_argument("--retired-grace", type=float, default=60.0)
    c.add_argument("--max-block-rows", type=int, default=256)
    c.add_argument("--start", type=int, default=0)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--fault", default=None, help="phase/point:k, e.g. compact/block-renamed:1")
    c.add_argument("--ops", type=int, default=None, help="close and exit after this many operations")
    c.add_argument("--verify", action="store_true")
    p.add_argument("--rounds", type=int, default=1000)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--path", default=None, help="working folder (default: a new temporary folder, kept)")
    p.add_argument("--max-block-rows", type=int, default=256)
    p.add_argument("--keep-going", action="store_true", help="go on after a failure (re-synchronising)")
    p.add_argument("--pace", type=float, default=1.0, help="scale the time a child runs before a timer kill")
    p.add_argument("--minutes", type=float, default=None, help="stop starting rounds after this long")
    p.add_argument("--json", action="store_true", help="also print the report as one JSON line")
    args = p.parse_args(argv)
    if args.mode == "child":
        child(args)
        return 0
    seed = args.seed if args.seed is not None else random.randrange(2**31)
    path = Path(args.path) if args.path else Path(tempfile.mkdtemp(prefix="bt_frames-crash-loop-"))
    print(f"crash loop: {args.rounds} rounds, seed {seed}, folder {path}", flush=True)
    report = run_loop(args.rounds, seed=seed, path=path, max_block_rows=args.max_block_rows,
                      keep_going=args.keep_going, pace=args.pace, minutes=args.minutes, log=sys.stdout)  # fmt: skip
    print(report.text())
    if args.json:
        print(json.dumps(report.to_json()))
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
