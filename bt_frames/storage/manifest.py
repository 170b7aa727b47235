"""The table manifest: which blocks and WAL segments make up a table, as a sequence of versions.

A table's files are checked against its manifest, never inferred from a
folder listing: a block the manifest names that is missing or damaged is
corruption, and a file it does not name is the leftover of an operation that
never committed. The design follows LevelDB's MANIFEST (a log of
``VersionEdit``s) and Delta Lake's ``_delta_log`` (one JSON file per version
with ``add``/``remove`` actions), so that a later Delta log can be derived
from it version for version.

Layout::

    <table>/_manifest/<version>.json     version = 20 zero-padded digits, from 1

Each file is one JSON object, written once with ``layout.atomic_write``
(tmp file, fsync, rename, fsync of ``_manifest/``) and never changed::

    {"format": "bt_frames.manifest", "format_version": 1,
     "version": N, "time": "2026-11-28T21:00:00.000000Z", "operation": "publish",
     "add": [{"block": "<block file name>", "rows": int, "bytes": int}, ...],
     "remove": ["<block file name>", ...],        # retired: kept for readers, see below
     "forget": ["<block file name>", ...],        # retired files that were deleted
     "wal_add": [first_lsn, ...],                 # WAL segments created (rotation)
     "wal_remove": [first_lsn, ...],              # WAL segments whose records all are in blocks
     "next_lsn": int | null,                      # "close": every LSN below it is committed
     "state": null | {checkpoint, below},
     "info": {...},                               # optional: what the operation did (below)
     "schema": "<catalog.schema_to_b64 of the table's new schema>",  # only in a schema change
     "xxh3": "<xxh3-64 of the canonical JSON of every other key>"}

Operations: ``create``, ``upgrade`` (built from a store written before
manifests existed), ``publish`` (a frozen block), ``append`` (the parts of a
large append), ``compact``, ``rotate`` (a new WAL segment), ``close``,
``purge``, ``adopt``, ``recover``, and the lifecycle operations ``delete``,
``update``, ``upsert``, ``retention``, ``set_options`` and ``vacuum``,
and the schema changes ``add_columns`` and ``widen`` (see below).

``info`` (written only when not empty; older files have none) says what an
operation did, for ``Table.versions``: ``rows_added``, ``rows_removed``,
``lsn`` (the table's last LSN the version includes), ``where`` (a delete's
predicate, as text), ``options``. It is history, never needed to apply a
version. An older reader ignores it (the digest covers it like any key).

Schema changes (``storage/evolve.py``): a version whose edit carries
``schema`` sets the table's schema from then on (the key is absent from every
other version, so their bytes are as before). The newest such schema, and the
version that set it, are part of the state (``schema``/``schema_version``,
carried in checkpoints), so a load knows it whatever checkpoint it starts
from. The version is the commit point of the change; ``table.json`` (which
opening reads first) is rewritten after it. A writer that opens a table whose
``table.json`` disagrees with the state's schema (a crash between the two)
rewrites ``table.json`` from the state; a reader uses the state's schema. So
after a crash at any instant the next open sees the old schema everywhere
(the version was not written) or the new one everywhere.

Checkpoints: version 1 and every version divisible by ``CHECKPOINT_EVERY``
carry the whole state in ``state`` (``{"blocks": [...add entries...],
"retired": [{"block", "version", "time"}], "wal": [...], "next_lsn": int}``)
after applying their own edit (and ``"schema"``/``"schema_version"`` once a
schema change happened), so loading reads the last checkpoint and the
versions after it. Loading checks every version from the checkpoint to the
newest is present and intact (``CorruptionError`` naming the file otherwise).

A reader need not decode any version: the statistics cache records a *link*
to the version whose blocks it lists (``link``/``load_linked``), checked
against the digests of the version files a load would read (see catalog.py).

The commit point of every operation is the rename of its version file (made
durable by the directory fsync before the operation returns). Order of work:

- publish: block written and renamed -> version -> covered WAL segments deleted;
- append of parts: all parts written and renamed -> version;
- compact: merged block -> version (inputs retired) -> nothing deleted yet;
- rotate: new segment created and synced -> version -> appends go to it;
- retired files are deleted when no in-process scan pins them and their
  ``remove`` is older than the store's grace period (so readers in other
  processes that loaded an older version can finish), then forgotten by the
  next version.

A crash between two steps leaves files the newest version does not name;
recovery (``recovery.py``) removes them only when their rows are provably
elsewhere (the WAL, the named blocks) or were never acknowledged.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import operator
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bt_frames.errors import CorruptionError, UnsupportedFormatError
from bt_frames.storage import blocks as blk
from bt_frames.storage import fs, layout
from bt_frames.storage.records import Record

MANIFEST_DIR = "_manifest"
FORMAT = "bt_frames.manifest"
FORMAT_VERSION = 1
CHECKPOINT_EVERY = 64
VERSION_DIGITS = 20


def version_name(version: int) -> str:
    return f"{version:0{VERSION_DIGITS}d}.json"


def parse_version_name(name: str) -> int | None:
    stem, dot, ext = name.partition(".")
    if ext != "json" or not dot or len(stem) != VERSION_DIGITS or not stem.isdigit():
        return None
    return int(stem)


def is_checkpoint(version: int) -> bool:
    return version == 1 or version % CHECKPOINT_EVERY == 0


class BlockEntry(Record):
    """A live block as the manifest knows it: ``BlockEntry(block, rows, bytes)``, immutable.

    ``block`` is the file name in ``blocks/``; it must parse as a block name
    (``ValueError`` otherwise) and is parsed once, here: loading a manifest
    orders, chains and checks thousands of entries by their LSNs. Equal and
    hashed by (block, rows, bytes). A tuple underneath (cheaper to make than a
    frozen dataclass); the layout is private.
    """

    __slots__ = ()
    KEY = NEW_ARGS = 3  # (block, rows, bytes); the parsed name follows

    def __new__(cls, block: str, rows: int, bytes: int) -> BlockEntry:  # noqa: A002 - the JSON key
        name = layout.parse_block_name(block)
        if name is None:
            raise ValueError(f"{block!r} is not a block file name")
        return tuple.__new__(cls, (block, rows, bytes, name))

    @property
    def block(self) -> str:
        b: str = self[0]
        return b

    @property
    def rows(self) -> int:
        r: int = self[1]
        return r

    @property
    def bytes(self) -> int:
        b: int = self[2]
        return b

    @property
    def name(self) -> layout.BlockName:
        n: layout.BlockName = self[3]
        return n

    def __repr__(self) -> str:
        return f"BlockEntry(block={self.block!r}, rows={self.rows!r}, bytes={self.bytes!r})"

    def to_json(self) -> dict[str, Any]:
        return {"block": self.block, "rows": self.rows, "bytes": self.bytes}


def _order(entry: BlockEntry) -> tuple[int, int]:
    """The order of the live blocks: first LSN, then part."""
    name: layout.BlockName = entry[3]
    return (name.first_lsn, name.part)


@dataclass(frozen=True)
class Retired:
    """A block no longer part of the table, kept for readers until the grace period passes."""

    block: str
    version: int
    time: str  # ISO 8601 UTC, when it was retired

    def age_s(self, now: dt.datetime | None = None) -> float:
        now = now or dt.datetime.now(dt.UTC)
        return (now - dt.datetime.fromisoformat(self.time)).total_seconds()


@dataclass
class Edit:
    """One version's change (LevelDB's VersionEdit)."""

    operation: str
    add: list[BlockEntry] = field(default_factory=list)
    remove: list[str] = field(default_factory=list)
    forget: list[str] = field(default_factory=list)
    wal_add: list[int] = field(default_factory=list)
    wal_remove: list[int] = field(default_factory=list)
    next_lsn: int | None = None
    # what the operation did, for ``Table.versions`` (rows added/removed, its LSN, the predicate, options):
    # written only when not empty; never needed to apply the version
    info: dict[str, Any] = field(default_factory=dict)
    schema: str | None = None  # a schema change: the new schema (catalog.schema_to_b64)


@dataclass
class State:
    """What a version says the table is."""

    version: int = 0
    blocks: list[BlockEntry] = field(default_factory=list)  # in LSN order (first LSN, then part)
    retired: list[Retired] = field(default_factory=list)
    wal: list[int] = field(default_factory=list)  # first LSNs of the WAL segments the table needs
    next_lsn: int = 1  # at the last clean close: every LSN below it is committed
    time: str = ""
    # the version that added each live block (its checkpoint's, for those it lists): for error messages,
    # which name the version file behind a block that is missing or does not chain
    added: dict[str, int] = field(default_factory=dict)
    # xxh3 of the bytes of each version file a load reads for this version (its checkpoint, then every
    # version after it), as read or written: what ``link`` records and ``load_linked`` checks
    files: dict[int, str] = field(default_factory=dict)
    schema: str | None = None  # the schema set by the newest schema change (None: the one the table was created with)
    schema_version: int = 0  # the version of that change

    @property
    def block_lsn(self) -> int:
        """The highest LSN held by a block (0: none)."""
        return max((b.name.last_lsn for b in self.blocks), default=0)

    def copy(self) -> State:
        return State(
            self.version,
            list(self.blocks),
            list(self.retired),
            list(self.wal),
            self.next_lsn,
            self.time,
            dict(self.added),
            dict(self.files),
            self.schema,
            self.schema_version,
        )

    def apply(self, edit: Edit, version: int, time: str) -> State:
        """The state after ``edit`` as version ``version`` (this one is left unchanged)."""
        out = self.copy()
        out._apply_in_place(edit, version, time)
        return out

    def _apply_in_place(self, edit: Edit, version: int, time: str) -> None:
        """``apply`` without the copy: for ``load``, whose state no one else sees yet.

        Its cost is that of the edit, not of the state: blocks added after every
        live one (appends, publishes) are appended without sorting the list.
        """
        prev_version = self.version
        self.version, self.time = version, time
        gone = set(edit.remove)
        if gone:
            missing = gone - {b.block for b in self.blocks}
            if missing:
                # a live block of the same LSNs under another name: the version that added it is suspect
                by_lsns = {b.name[:3]: b.block for b in self.blocks}
                others = sorted(
                    {by_lsns[p[:3]] for n in missing if (p := layout.parse_block_name(n)) and p[:3] in by_lsns}
                )
                hint = "".join(
                    f"; the live block of the same LSNs, {o}, was added by version "
                    f"{self.added.get(o, prev_version)} ({version_name(self.added.get(o, prev_version))})"
                    for o in others
                )
                raise ValueError(f"version {version} removes blocks that are not live: {sorted(missing)}{hint}")
            self.blocks = [b for b in self.blocks if b.block not in gone]
            for n in gone:
                self.added.pop(n, None)
            self.retired += [Retired(n, version, time) for n in edit.remove]
        if edit.forget:
            forget = set(edit.forget)
            self.retired = [r for r in self.retired if r.block not in forget]
        if edit.add:
            keys = [_order(b) for b in edit.add]
            if (not self.blocks or _order(self.blocks[-1]) < keys[0]) and all(map(operator.lt, keys, keys[1:])):
                self.blocks = [*self.blocks, *edit.add]  # already in order: the usual case
            else:
                self.blocks = sorted([*self.blocks, *edit.add], key=_order)
            self.added.update((b.block, version) for b in edit.add)
            back = {b.block for b in edit.add}  # a retired file made live again (the same rows rewritten)
            if any(r.block in back for r in self.retired):
                self.retired = [r for r in self.retired if r.block not in back]
        if edit.wal_add or edit.wal_remove:
            self.wal = sorted((set(self.wal) - set(edit.wal_remove)) | set(edit.wal_add))  # a re-created one stays
        if edit.next_lsn is not None:
            self.next_lsn = edit.next_lsn
        if edit.schema is not None:
            self.schema, self.schema_version = edit.schema, version

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "blocks": [b.to_json() for b in self.blocks],
            "retired": [{"block": r.block, "version": r.version, "time": r.time} for r in self.retired],
            "wal": self.wal,
            "next_lsn": self.next_lsn,
        }
        if self.schema is not None:
            doc["schema"], doc["schema_version"] = self.schema, self.schema_version
        return doc

    @classmethod
    def from_json(cls, doc: dict[str, Any], version: int, time: str) -> State:
        blocks = _entries(doc["blocks"])
        return cls(
            version,
            blocks,
            [Retired(str(r["block"]), int(r["version"]), str(r["time"])) for r in doc["retired"]],
            [int(x) for x in doc["wal"]],
            int(doc["next_lsn"]),
            time,
            {b.block: version for b in blocks},
            schema=None if doc.get("schema") is None else str(doc["schema"]),
            schema_version=int(doc.get("schema_version") or 0),
        )

    def named_by(self, table_dir: Path, block: str) -> str:
        """ "manifest version N (<path of the version file that added ``block``>)", for error messages."""
        v = self.added.get(block, self.version)
        return f"manifest version {v} ({manifest_dir(table_dir) / version_name(v)})"


def _entry(d: dict[str, Any]) -> BlockEntry:
    return BlockEntry(str(d["block"]), int(d["rows"]), int(d["bytes"]))  # ValueError for a bad name


def _entries(docs: list[dict[str, Any]]) -> list[BlockEntry]:
    """``[_entry(d) for d in docs]``, names parsed in bulk (the same checks: a version names thousands).

    Anything unusual (a bad name, a field of another type) takes the one-by-one
    path, which raises the same error as always.
    """
    try:
        blocks = list(map(operator.itemgetter("block"), docs))
        rows = list(map(operator.itemgetter("rows"), docs))
        sizes = list(map(operator.itemgetter("bytes"), docs))
        typed = set(map(type, blocks)) == {str} and set(map(type, rows + sizes)) == {int}  # as _entry makes them
    except (KeyError, TypeError):
        typed = False
    names = layout.parse_block_names(blocks) if typed else None
    if names is None:
        return [_entry(d) for d in docs]
    return list(map(tuple.__new__, itertools.repeat(BlockEntry), zip(blocks, rows, sizes, names, strict=True)))


def entry_of(info: blk.BlockInfo) -> BlockEntry:
    return BlockEntry(info.filename, info.rows, info.bytes)


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat()


def _canonical(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def encode(version: int, edit: Edit, time: str, state: State | None) -> bytes:
    doc: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "version": version,
        "time": time,
        "operation": edit.operation,
        "add": [b.to_json() for b in edit.add],
        "remove": edit.remove,
        "forget": edit.forget,
        "wal_add": edit.wal_add,
        "wal_remove": edit.wal_remove,
        "next_lsn": edit.next_lsn,
        "state": state.to_json() if state is not None else None,
    }
    if edit.info:
        doc["info"] = edit.info
    if edit.schema is not None:
        doc["schema"] = edit.schema
    doc["xxh3"] = blk.hash_bytes(_canonical(doc))
    return json.dumps(doc, indent=1).encode() + b"\n"


def decode(path: Path, data: bytes, version: int) -> tuple[Edit, str, dict[str, Any] | None]:
    """(edit, time, checkpoint state or None) of one version file; CorruptionError if it is damaged."""
    try:
        doc = json.loads(data)
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise ValueError("not a bt_frames manifest version")
        fv = doc.get("format_version")
        if isinstance(fv, int) and fv > FORMAT_VERSION:
            raise UnsupportedFormatError.newer(path, fv, FORMAT_VERSION)
        digest = doc.pop("xxh3", None)
        if digest != blk.hash_bytes(_canonical(doc)):
            raise ValueError("checksum mismatch")
        if doc["version"] != version:
            raise ValueError(f"holds version {doc['version']}, its name says {version}")
        edit = Edit(
            str(doc["operation"]),
            _entries(doc["add"]),
            [str(x) for x in doc["remove"]],
            [str(x) for x in doc["forget"]],
            [int(x) for x in doc["wal_add"]],
            [int(x) for x in doc["wal_remove"]],
            None if doc["next_lsn"] is None else int(doc["next_lsn"]),
            dict(doc.get("info") or {}),
            None if doc.get("schema") is None else str(doc["schema"]),
        )
        return edit, str(doc["time"]), doc["state"]
    except UnsupportedFormatError:
        raise
    except (ValueError, KeyError, TypeError) as e:
        raise CorruptionError.at(
            path, None, f"manifest version {version} is damaged ({e}); the table cannot be opened without it"
        ) from e


def manifest_dir(table_dir: Path) -> Path:
    return table_dir / MANIFEST_DIR


def exists(table_dir: Path) -> bool:
    return manifest_dir(table_dir).is_dir()


def list_versions(table_dir: Path) -> list[int]:
    try:
        names = os.listdir(manifest_dir(table_dir))
    except FileNotFoundError:
        return []
    return sorted(v for v in map(parse_version_name, names) if v is not None)


def load(table_dir: Path, upto: int | None = None) -> State:
    """The newest state (or that of version ``upto``): the last checkpoint at or before it, then every
    version after it (all must be intact)."""
    mdir = manifest_dir(table_dir)
    versions = list_versions(table_dir)
    if not versions:
        raise CorruptionError.at(
            mdir, None, "the table's manifest has no versions: its block list is lost (restore from a backup)"
        )
    newest = versions[-1] if upto is None else upto
    start = checkpoint_of(newest)
    present = set(versions)
    state: State | None = None
    digests: dict[int, str] = {}
    for v in range(start, newest + 1):
        path = mdir / version_name(v)
        if v not in present:
            raise CorruptionError.at(path, None, f"manifest version {v} of {newest} is missing")
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise CorruptionError.at(path, None, f"manifest version {v} of {newest} is missing") from None
        edit, time, snap = decode(path, data, v)
        digests[v] = blk.hash_bytes(data)
        try:
            if v == start:
                if snap is None:
                    raise ValueError("a checkpoint version carries no state")
                state = State.from_json(snap, v, time)
            else:
                assert state is not None
                state._apply_in_place(edit, v, time)
        except (ValueError, KeyError, TypeError) as e:
            raise CorruptionError.at(path, None, f"manifest version {v} does not apply ({e})") from e
    assert state is not None
    state.files = digests
    return state


def checkpoint_of(version: int) -> int:
    """The checkpoint a load of ``version`` starts from (the last one at or before it)."""
    return max(v for v in (1, (version // CHECKPOINT_EVERY) * CHECKPOINT_EVERY) if v <= version)


def history(table_dir: Path) -> Iterator[tuple[Edit, State]]:
    """Every version from 1 to the newest, in order: its edit and the state after it.

    The state is one object, changed in place from version to version: read
    what you need from it before asking for the next.
    """
    state = State()
    mdir = manifest_dir(table_dir)
    for v in range(1, (list_versions(table_dir) or [0])[-1] + 1):
        path = mdir / version_name(v)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise CorruptionError.at(path, None, f"manifest version {v} is missing") from None
        edit, time, snap = decode(path, data, v)
        try:
            if v == 1:
                if snap is None:
                    raise ValueError("version 1 carries no state")
                state = State.from_json(snap, v, time)
            else:
                state._apply_in_place(edit, v, time)
        except (ValueError, KeyError, TypeError) as e:
            raise CorruptionError.at(path, None, f"manifest version {v} does not apply ({e})") from e
        yield edit, state


def edits_after(table_dir: Path, after: int, upto: int) -> list[tuple[int, Edit]] | None:
    """(version, edit) of versions ``after + 1`` to ``upto``, or None if one is missing or damaged (for a log
    derived from the manifest, which then starts again from the state: see delta.py)."""
    mdir = manifest_dir(table_dir)
    out = []
    for v in range(after + 1, upto + 1):
        path = mdir / version_name(v)
        try:
            edit, _time, _snap = decode(path, path.read_bytes(), v)
        except (OSError, CorruptionError, UnsupportedFormatError):
            return None
        out.append((v, edit))
    return out


# -- the link from the statistics cache: a reader's open without decoding any version --------------------


def link(state: State) -> dict[str, Any] | None:
    """What a statistics cache of exactly ``state.blocks`` records so that a reader can trust it as the state.

    The version, the xxh3 of every version file a load of it reads (from its checkpoint on), and the
    rest of the state a reader needs (WAL segments, the last clean close), and the digest of its block
    names (``names_digest``), which the reader checks against the cache's rows. ``load_linked`` accepts it
    only while that version is the newest and those files are byte for byte the same, so the state is
    the one a full ``load`` would build. None if the digests of some of those files are not known.
    """
    if state.version < 1 or sorted(state.files) != list(range(checkpoint_of(state.version), state.version + 1)):
        return None
    return {
        "version": state.version,
        "files": {str(v): d for v, d in sorted(state.files.items())},
        "blocks": names_digest([b.block for b in state.blocks]),
        "wal": list(state.wal),
        "next_lsn": state.next_lsn,
        "time": state.time,
    }


def names_digest(names: Sequence[str]) -> str:
    """xxh3 of a list of block names, in order: a link's check that the cache's rows are the state's blocks."""
    return blk.hash_bytes("\n".join(names).encode())


def load_linked(table_dir: Path, doc: object) -> State | None:
    """The state ``doc`` (a ``link``) records, without its blocks, if it is that of the newest version; else None.

    Checks what ``load`` checks, without decoding: the newest version is the linked one, and every
    version file from its checkpoint on is present and has the recorded digest (so it is the file the
    writer of the link read or wrote, and is intact). Any doubt is None: the caller then runs ``load``,
    which names what is wrong. The caller fills ``blocks`` from the cache frame the link came with.
    """
    try:
        if not isinstance(doc, dict):
            return None
        version, files = doc["version"], doc["files"]
        if type(version) is not int or not isinstance(files, dict):
            return None
        versions = list_versions(table_dir)
        if not versions or versions[-1] != version:
            return None
        want = {str(v) for v in range(checkpoint_of(version), version + 1)}
        if set(files) != want:
            return None
        mdir = os.fspath(manifest_dir(table_dir))
        digests: dict[int, str] = {}
        for v in range(checkpoint_of(version), version + 1):
            with open(os.path.join(mdir, version_name(v)), "rb") as f:
                digest = blk.hash_bytes(f.read())
            if digest != files[str(v)]:
                return None
            digests[v] = digest
        wal = doc["wal"]
        if not isinstance(wal, list) or any(type(x) is not int for x in wal) or type(doc["next_lsn"]) is not int:
            return None
        return State(version, [], [], sorted(wal), doc["next_lsn"], str(doc["time"]), {}, digests)
    except (OSError, KeyError, TypeError, ValueError):
        return None


class Manifest:
    """The writer's handle: the current state and ``commit(edit)`` of the next version."""

    def __init__(self, table_dir: Path, state: State) -> None:
        self.table_dir = table_dir
        self.state = state

    @classmethod
    def create(
        cls, table_dir: Path, state: State | None = None, *, operation: str = "create", into: Path | None = None
    ) -> Manifest:
        """Write version 1, a checkpoint of ``state`` (empty by default), into ``into``
        (default: a new ``<table_dir>/_manifest/``; an upgrade writes a temporary folder and renames it)."""
        directory = into if into is not None else manifest_dir(table_dir)
        fs.mkdir(directory, exist_ok=True)
        layout.fsync_dir(directory.parent)
        base = state or State()
        edit = Edit(operation, add=list(base.blocks), wal_add=list(base.wal), next_lsn=base.next_lsn)
        time = _now()
        first = State().apply(edit, 1, time)
        data = encode(1, edit, time, first)
        first.files = {1: blk.hash_bytes(data)}
        layout.atomic_write(directory / version_name(1), data)
        return cls(table_dir, first)

    def commit(self, edit: Edit) -> State:
        """Write the next version; the commit point of ``edit`` is the rename of its file.

        Raises (nothing committed) if the file cannot be written or renamed. A
        failure to fsync the folder *after* the rename does not raise: the
        version is visible to every reader and to recovery after a process
        crash, so it is committed; ``unsynced`` stays True (and the caller
        keeps everything a power loss could still need: covered WAL segments,
        retired blocks) until a later commit or ``sync()`` makes it durable.
        """
        v = self.state.version + 1
        time = _now()
        new = self.state.apply(edit, v, time)
        path = manifest_dir(self.table_dir) / version_name(v)
        if path.exists():  # put-if-absent: one writer per table
            raise CorruptionError.at(path, None, f"manifest version {v} already exists: another writer?")
        tmp = layout.tmp_path(path)
        data = encode(v, edit, time, new if is_checkpoint(v) else None)
        new.files = ({} if is_checkpoint(v) else new.files) | {v: blk.hash_bytes(data)}
        fs.write_file(tmp, data)
        try:
            fs.replace(tmp, path)
        except BaseException:
            fs.unlink(tmp, missing_ok=True)
            raise
        self.state = new
        self.unsynced = True
        self.sync()
        return new

    unsynced = False

    def sync(self) -> bool:
        """fsync ``_manifest/`` if a version is not yet durable; True when every version is."""
        if self.unsynced:
            try:
                layout.fsync_dir(manifest_dir(self.table_dir))
            except OSError:
                return False
            self.unsynced = False
        return True


def legacy_state(blocks: Sequence[blk.BlockInfo], wal_segments: Iterable[int], next_lsn: int) -> State:
    """The state of a table written before manifests existed (its live blocks, as resolved by recovery)."""
    return State(0, [entry_of(b) for b in blocks], [], sorted(wal_segments), next_lsn)
