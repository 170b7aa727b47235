"""A store in a bucket: the writer's mirror of its local store, the lease, and the reader's pull.

The engine runs on local files. A writer opened on ``s3://bucket/prefix`` with
``wal_dir=`` keeps a complete local store there (WAL, manifest, blocks: the
local copy is the staging area and a cache) and *publishes* every manifest
version to the bucket; a reader keeps a private temporary folder holding
only what it fetched. This module is the only one that moves files between
the two (through ``objectstore``).

Bucket layout (keys under ``<prefix>/``)::

    bt_frames.json                         the store marker (written once, put-if-absent)
    _lease.json                            the writer's lease (below)
    <table>/table.json                     as in the local store (overwritten when it changes)
    <table>/_manifest/<version>.json       byte for byte the local version files (put-if-absent)
    <table>/blocks/<block name>            byte for byte the local blocks (put-if-absent)
    <table>/blocks/_delta_log/...          the derived Delta log (storage/delta.py)
    <table>/_head.bt                       a reader's open in one GET (below; overwritten: a cache)
    <table>/_manifest/_dropped.json        the tombstone of a dropped table, until its name is created again

Publishing version N (a background thread, in version order, never two at once):

1. upload every block N adds, put-if-absent. An existing object of that name
   is the same block (the name carries the xxh3 of its bytes) if its size
   agrees; otherwise the bucket is damaged: the mirror stops with an error.
2. put ``_manifest/N.json`` if absent -- the commit point in the bucket. If
   it exists with other bytes, another writer has the table (a lost lease):
   the mirror stops and every later ``flush()``/``close()``/``sync()`` raises
   ``MirrorConflictError``; the local store keeps the rows (WAL and blocks).
   A later writer open of that local store refuses, changing nothing, while
   its versions diverge from the bucket's (the message says how to move it
   aside and take the rows from it). Same bytes: our own earlier PUT whose
   response was lost -- published, not a conflict.
3. the Delta log's commits whose ``txn`` is at most N (storage/delta.py writes
   them locally; each is uploaded put-if-absent, after its version, as delta-rs
   itself would commit ``_delta_log/<n>.json``), then the head object. A table
   whose local log was removed (``delta_log=False``, a column Delta cannot
   represent) has its Delta files removed from the bucket too; one whose local
   log was written anew (``rebuild_delta_log``, a damaged log) has the
   bucket's removed before the new commits go up.

So a version is in the bucket only after its blocks, and no reader ever sees
a version naming a block that is not there. A crash between 1 and 2 leaves
blocks no version names: orphans, deleted by the next writer's open when
their names are block names, under ``blocks/`` of a table (a folder with
manifest versions, in the bucket or locally), named by no version and older
than the grace period -- nothing else in the bucket is ever deleted but by a
drop (below), which deletes only what the store made.

"Durable" keeps its local meaning: an append is acknowledged when it is in
the local WAL. It is *published* when its block's version is in the bucket;
``flush()`` and ``close()`` wait for that.

Dropping a table (``drop_table`` on a writer; a job in the mirror's queue, so
after every version of the table queued before it):

1. put the tombstone ``<table>/_manifest/_dropped.json`` (``{"format":
   "bt_frames.dropped", "owner", "time"}``) -- the commit point. From here on
   the table is gone: ``remote_tables`` (a reader's ``store.tables``, a
   writer's open) omits the folder, and a reader's pull of the table finds
   the tombstone in the LIST of ``_manifest/`` it makes anyway (``_`` sorts
   after every version's digits) and has no table. Only then is the local
   copy removed.
2. delete the objects the store made, and nothing else: the head object,
   ``table.json``, the version files under ``_manifest/``, the blocks directly
   under ``blocks/`` (block names), the Delta log's files directly under
   ``blocks/_delta_log/`` (``delta.LOG_FILE`` names), the stats cache -- in
   DeleteObjects batches of up to 1,000 keys, the head, ``table.json``, the
   stats cache and the Delta log first, so no reader (nor another engine)
   finds a table whose files are going. Any other object under the folder stays, and so does the tombstone: it is the
   only memory of the drop, and a writer's open on another disk whose local
   copy of the table the bucket no longer has would otherwise publish that
   copy again (it cannot tell it from versions a crash kept from the bucket).
   That open drops its copy instead.

A writer killed (or a bucket failing) between 1 and 2 leaves the objects: a
writer's open that finds a tombstone finishes the drop (its local copy at
once; 2 queued in the mirror, one LIST of the folder, retried while the
bucket fails: the open does not wait for it) and never takes that folder
for a table.
``create_table`` of a dropped name deletes its tombstone first (refused,
nothing created, if the bucket fails). A table of the same name created after the drop
is published from version 1 (the mirror forgets what it had published); one
cannot be created while a drop of its name waits for the bucket (``create_table``
waits for the mirror, then refuses). A reader that
missed the tombstone (dropped and created again between two refreshes) finds
versions it holds with other bytes in the bucket: it drops its copy and its
Table object, never mixing the two tables' versions (``pull_table``).

``drop_table`` waits for 1 before removing the local copy: if the bucket
fails there, the drop is taken back (its jobs leave the queue; a tombstone
whose PUT response was lost is deleted -- only if its ``owner`` is this
writer's: a fenced writer's drop fails too, and never deletes the tombstone
of the lease holder's drop) and nothing is dropped. It then waits
for 2; if the bucket fails there, it raises, the table stays dropped for
everyone, and the mirror retries 2 in the background.

The lease (``_lease.json``, one per store prefix: the local store the writer
runs on holds every table of the prefix, so one writer per table anywhere is
one writer per store): ``{"owner", "host", "pid", "expires"}``, created
put-if-absent, renewed before it expires with a conditional overwrite
(``If-Match`` on its ETag), released at close by deleting it. A create or
renewal whose response was lost is retried and then finds the object
changed: if it holds this writer's ``owner`` (a random id per open), it is
the writer's own write and the lease is kept. An open finding
a lease that is not expired raises ``StoreLockedError`` naming owner and
expiry, unless its holder is a process of this host that is certainly gone
(``locking.process_alive``: a crashed writer) or a writer this process
closed (whose delete of the lease failed). An expired (or dead) lease
is taken over (``If-Match``), and the taker writes a
version of every table before anything else, so the old writer's next
version PUT fails (the fence).

The head object (``<table>/_head.bt``) lets a reader open a table with one
GET plus one LIST that proves it current::

    b"BTHEAD01" <u32 little-endian header length> <header JSON> <file bytes...>
    header: {"format": "bt_frames.head", "format_version": 1, "version": N,
             "files": [[relative path, length], ...]}

It holds ``table.json``, the stats cache linked to version N and the version
files from N's checkpoint to N, exactly as the writer has them. A reader lists
``_manifest/`` after N: nothing newer means the head is current; otherwise it
fetches the newer versions (and the footers of blocks the cache lacks).
"""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import hashlib
import json
import logging
import os
import re
import socket
import struct
import threading
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bt_frames.errors import BtError, CorruptionError, MirrorConflictError, ObjectStoreError, StoreLockedError
from bt_frames.storage import delta, fs, layout, locking
from bt_frames.storage import manifest as mf
from bt_frames.storage.objectstore import ObjectStore

log = logging.getLogger("bt_frames")

LEASE = "_lease.json"
TOMBSTONE = "_dropped.json"  # <table>/_manifest/_dropped.json: the table is being dropped
TOMBSTONE_FORMAT = "bt_frames.dropped"
HEAD = "_head.bt"
HEAD_MAGIC = b"BTHEAD01"
HEAD_FORMAT = "bt_frames.head"
HEAD_FORMAT_VERSION = 1
DEFAULT_LEASE_S = 60.0
ORPHAN_GRACE_S = 3600.0
RETRY_MIN_S, RETRY_MAX_S = 0.5, 30.0  # the mirror's back-off while the bucket cannot be reached

DELTA_LOG = delta.LOG_DIR
LAST_CHECKPOINT = "_last_checkpoint"
_DELTA_COMMIT = re.compile(r"\d{20}\.json")


def _delta_txn(data: bytes, table: str) -> int | None:
    """The manifest version a Delta commit of ours records (its ``txn`` action), or None."""
    for line in data.splitlines():
        try:
            action = json.loads(line)
        except ValueError:
            return None
        txn = action.get("txn") if isinstance(action, dict) else None
        if isinstance(txn, dict) and txn.get("appId") == f"bt_frames:{table}":
            v = txn.get("version")
            return v if isinstance(v, int) else None
    return None


def table_key(table: str, *parts: str) -> str:
    return "/".join([table, *parts])


def version_key(table: str, version: int) -> str:
    return table_key(table, mf.MANIFEST_DIR, mf.version_name(version))


def block_key(table: str, block: str) -> str:
    return table_key(table, layout.BLOCKS_DIR, block)


def _versions_prefix(table: str) -> str:
    return table_key(table, mf.MANIFEST_DIR) + "/"


def remote_versions(obj: ObjectStore, table: str, after: int = 0) -> list[int]:
    """The version numbers in the bucket's ``<table>/_manifest/``, ascending (those above ``after``)."""
    prefix = _versions_prefix(table)
    start = version_key(table, after) if after else None
    out = []
    for e in obj.list(prefix, start):
        v = mf.parse_version_name(e.key.rpartition("/")[2])
        if v is not None and v > after:
            out.append(v)
    return sorted(out)


def tombstone_key(table: str) -> str:
    return table_key(table, mf.MANIFEST_DIR, TOMBSTONE)


def tombstone_owner(obj: ObjectStore, table: str) -> str | None:
    """The ``owner`` (a writer's lease id) in ``table``'s tombstone; None if there is none (or unreadable)."""
    raw = obj.get(tombstone_key(table))
    try:
        owner = json.loads(raw)["owner"] if raw is not None else None
    except (ValueError, TypeError, KeyError):
        return None
    return owner if isinstance(owner, str) else None


def remote_tables(obj: ObjectStore) -> list[str]:
    """Tables in the bucket: the folders under the prefix with a table's name and a ``table.json``, as a
    local store's, and no tombstone (one LIST with a delimiter, then a HEAD or two per such folder, eight
    at a time). A folder someone else keeps under the prefix is no table; one whose ``table.json`` is not
    published yet (a table being created) is not one yet; one being dropped is not one any more."""
    return remote_folders(obj)[0]


def remote_folders(obj: ObjectStore) -> tuple[list[str], list[str]]:
    """(tables, dropped): ``remote_tables``, and the table folders holding a tombstone (drops a writer
    has to finish)."""
    from concurrent.futures import ThreadPoolExecutor

    names = []
    for name in obj.folders(""):
        try:
            names.append(layout.validate_table_name(name))
        except BtError:
            continue
    if not names:
        return [], []

    def kind(name: str) -> str:
        if obj.head(tombstone_key(name)) is not None:
            return "dropped"
        return "table" if obj.head(table_key(name, layout.TABLE_JSON)) is not None else ""

    with ThreadPoolExecutor(max_workers=min(8, len(names)), thread_name_prefix="bt_frames-list") as pool:
        found = list(pool.map(kind, names))
    pairs = list(zip(names, found, strict=True))
    return [n for n, k in pairs if k == "table"], [n for n, k in pairs if k == "dropped"]


def delete_table_objects(obj: ObjectStore, table: str) -> int:
    """Step 2 of a drop (module docstring): delete the objects the store made under ``<table>/`` but the
    tombstone, which stays; return how many. Anything else under the folder is left where it is.

    In DeleteObjects batches (one request per 1,000 keys), in this order: the head object, ``table.json``,
    the stats cache and the Delta log (so neither a bt_frames reader nor another engine finds a table
    whose files are going), then the versions and the blocks."""
    versions, blocks = _versions_prefix(table), table_key(table, layout.BLOCKS_DIR) + "/"
    log_dir = blocks + DELTA_LOG + "/"
    first = [table_key(table, HEAD), table_key(table, layout.TABLE_JSON), table_key(table, layout.STATS_CACHE)]
    then: list[str] = []
    for e in list(obj.list(table + "/", None)):
        if e.key.startswith(log_dir):
            if delta.LOG_FILE.fullmatch(e.key[len(log_dir) :]) is not None:
                first.append(e.key)
        elif e.key.startswith(versions):
            if mf.parse_version_name(e.key[len(versions) :]) is not None:
                then.append(e.key)  # (the tombstone, in the same folder, is no version name: it stays)
        elif e.key.startswith(blocks) and layout.parse_block_name(e.key[len(blocks) :]) is not None:
            then.append(e.key)
    obj.delete_many(first)
    obj.delete_many(then)
    return len(first) - 3 + len(then)


# -- the lease ---------------------------------------------------------------

# owners of leases this process released (closed writers): one still in the bucket (its delete failed) is free
_RELEASED: set[str] = set()


class Lease:
    """The writer's lease on a store prefix (see the module docstring)."""

    def __init__(self, obj: ObjectStore, seconds: float = DEFAULT_LEASE_S) -> None:
        self.obj = obj
        self.seconds = float(seconds)
        self.owner = uuid.uuid4().hex
        self.etag: str | None = None
        self.taken_over = False  # the lease was another writer's, expired: fence every table
        self.lost: BtError | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _doc(self) -> bytes:
        expires = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=self.seconds)
        doc = {
            "owner": self.owner,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "process": locking.process_tag(),  # host/pid/start: a writer on this host can tell it is gone
            "expires": expires.isoformat(timespec="milliseconds"),
        }
        return json.dumps(doc).encode()

    def acquire(self) -> None:
        if self.obj.put_if_absent(LEASE, self._doc()):
            head = self.obj.head(LEASE)
            self.etag = head.etag if head is not None else None
        else:
            got = self.obj.get_with_etag(LEASE)
            if got is None:  # released in between: try once more
                if not self.obj.put_if_absent(LEASE, self._doc()):
                    raise self._locked(None)
                head = self.obj.head(LEASE)
                self.etag = head.etag if head is not None else None
            elif _parse_lease(got[0]).get("owner") == self.owner:  # our own create, its response lost
                self.etag = got[1]
            else:
                data, etag = got
                held = _parse_lease(data)
                expires = held.get("expires")
                try:
                    when = dt.datetime.fromisoformat(str(expires))
                except ValueError:
                    when = dt.datetime.min.replace(tzinfo=dt.UTC)
                process = held.get("process")
                gone = isinstance(process, str) and not locking.process_alive(process)  # crashed, on this host
                gone = gone or held.get("owner") in _RELEASED  # closed here, its delete failed
                if when > dt.datetime.now(dt.UTC) and not gone:
                    raise self._locked(held)
                new = None if etag is None else self.obj.put_if_match(LEASE, self._doc(), etag)
                if new is None:
                    raise self._locked(held)
                self.etag = new
                self.taken_over = True
                log.warning("%s: took over the expired lease of %s", self.obj.uri, _who(held))
        self._thread = threading.Thread(target=self._renew_loop, name="bt_frames-lease", daemon=True)
        self._thread.start()

    def _locked(self, held: dict[str, Any] | None) -> StoreLockedError:
        who = _who(held) if held else "another writer"
        until = f" until {held.get('expires')}" if held else ""
        return StoreLockedError(
            f"store {self.obj.uri!r} has a writer: {who} holds its lease ({self.obj.url(LEASE)}){until}. "
            "Fix: close that writer, wait for the lease to expire, or open with read_only=True."
        )

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.seconds / 3):
            try:
                self.renew()
            except BtError as e:
                log.warning("%s: renewing the lease failed (%s); retried", self.obj.uri, e)

    def renew(self) -> None:
        if self.lost is not None or self.etag is None:
            return
        new = self.obj.put_if_match(LEASE, self._doc(), self.etag)
        if new is None:  # changed since our last write -- unless by this very renewal, whose response was lost
            got = self.obj.get_with_etag(LEASE)
            if got is not None and got[1] is not None and _parse_lease(got[0]).get("owner") == self.owner:
                self.etag = got[1]
                return
            self.lost = MirrorConflictError(
                f"store {self.obj.uri!r}: this writer lost its lease ({self.obj.url(LEASE)} changed: another "
                "writer took it over); nothing more is published. The local store keeps every acknowledged row. "
                "Fix: close this store; reopen it when the other writer is gone."
            )
            self._stop.set()
        else:
            self.etag = new

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        _RELEASED.add(self.owner)  # before the delete, which may fail: this process no longer holds it
        if self.lost is None and self.etag is not None:
            got = self.obj.get_with_etag(LEASE)
            if got is not None and got[1] == self.etag:
                self.obj.delete(LEASE)
        self.etag = None


def _parse_lease(data: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(data)
        return doc if isinstance(doc, dict) else {}
    except ValueError:
        return {}


def _who(held: dict[str, Any] | None) -> str:
    if not held:
        return "another writer"
    return f"owner {held.get('owner')} (host {held.get('host')}, pid {held.get('pid')})"


# -- the writer's mirror -----------------------------------------------------


@dataclass
class _Job:
    table: str
    table_dir: Path
    version: int
    kind: str = "publish"  # "head": the stats cache linked to ``version`` was written; "delta": the Delta log;
    # "tombstone", "drop": the steps of dropping the table


@dataclass
class Mirror:
    """Publishes local manifest versions to the bucket in a background thread (module docstring)."""

    obj: ObjectStore
    lease: Lease | None = None
    failed: BtError | None = None
    published: dict[str, int] = field(default_factory=dict)  # table -> newest version in the bucket
    delta_done: dict[str, set[str]] = field(default_factory=dict)  # table -> Delta log files in the bucket
    delta_reset: set[str] = field(default_factory=set)  # tables whose local log was written anew (rebuilt)
    table_json: dict[str, bytes] = field(default_factory=dict)  # table -> the table.json the bucket has
    _queue: list[_Job] = field(default_factory=list)
    _cond: threading.Condition = field(default_factory=threading.Condition)
    _busy: bool = False
    retrying: ObjectStoreError | None = None  # the last failure to reach the bucket, while a job waits to retry
    _backoff: float = 0.0
    _failures: int = 0
    _closed: bool = False
    _thread: threading.Thread | None = None
    dropping: set[str] = field(default_factory=set)  # tables whose drop is queued or under way
    tombstoned: set[str] = field(default_factory=set)  # ... whose tombstone is in the bucket
    tombstones: set[str] = field(default_factory=set)  # dropped tables whose tombstone stays (not created again)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="bt_frames-mirror", daemon=True)
        self._thread.start()

    def enqueue(self, table: str, table_dir: Path, version: int) -> None:
        """Publish ``table``'s local versions up to ``version`` (called after each local commit; never blocks)."""
        with self._cond:
            self._queue.append(_Job(table, table_dir, version))
            self._cond.notify_all()

    def cache_written(self, table: str, table_dir: Path, version: int) -> None:
        """The local stats cache is now linked to ``version``: upload the head once that version is published."""
        with self._cond:
            self._queue.append(_Job(table, table_dir, version, "head"))
            self._cond.notify_all()

    def delta_written(self, table: str, table_dir: Path, *, reset: bool = False) -> None:
        """The local Delta log has new commits: upload those whose manifest versions are published.
        ``reset``: the local log was removed and written anew (its commits start again at 0), so the
        bucket's, whose names the new commits reuse, is removed first."""
        with self._cond:
            if reset:
                self.delta_reset.add(table)
            self._queue.append(_Job(table, table_dir, 0, "delta"))
            self._cond.notify_all()

    def drop(self, table: str, *, tombstone: bool) -> None:
        """Queue a drop of ``table`` (module docstring), after every job queued before: its tombstone
        (``tombstone=True``, step 1), or the deletion of its objects and then of the tombstone (step 2)."""
        with self._cond:
            self.dropping.add(table)
            self._queue.append(_Job(table, Path(), 0, "tombstone" if tombstone else "drop"))
            self._cond.notify_all()

    def cancel_drop(self, table: str) -> bool:
        """Take a drop of ``table`` whose tombstone is not in the bucket yet out of the queue (the bucket
        failed): True if nothing of it was done."""
        with self._cond:
            if table in self.tombstoned:
                return False
            self._queue = [j for j in self._queue if not (j.table == table and j.kind in ("tombstone", "drop"))]
            self.dropping.discard(table)
            return True

    def put_tombstone(self, table: str) -> None:
        doc = {
            "format": TOMBSTONE_FORMAT,
            "owner": self.lease.owner if self.lease is not None else None,
            "time": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
        }
        self.obj.put(tombstone_key(table), json.dumps(doc).encode())
        with self._cond:
            self.tombstoned.add(table)
        _test_pause_in_drop("tombstone", table)

    def finish_drop(self, table: str) -> None:
        """Step 2 of a drop; then the table is new to this mirror (a table created under its name is
        published from version 1)."""
        _test_pause_in_drop("delete", table)
        delete_table_objects(self.obj, table)
        with self._cond:
            self.tombstones.add(table)
            self.published.pop(table, None)
            self.delta_done.pop(table, None)
            self.delta_reset.discard(table)
            self.table_json.pop(table, None)
            self.tombstoned.discard(table)
            self.dropping.discard(table)

    def clear_tombstone(self, table: str) -> None:
        """Delete the tombstone of a dropped table before a table of its name is created (module docstring)."""
        self.obj.delete(tombstone_key(table))
        with self._cond:
            self.tombstones.discard(table)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if not self._queue:
                    return
                job = self._queue.pop(0)
                self._busy = True
            try:
                if self.failed is None and job.kind == "head":
                    if self.published.get(job.table, 0) == job.version:
                        self.put_head(job.table, job.table_dir, job.version)
                elif self.failed is None and job.kind == "delta":
                    self.put_delta_log(job.table, job.table_dir)
                elif self.failed is None and job.kind == "tombstone":
                    self.put_tombstone(job.table)
                elif self.failed is None and job.kind == "drop":
                    self.finish_drop(job.table)
                elif self.failed is None:
                    self.publish(job.table, job.table_dir, job.version)
                self.retrying = None
            except ObjectStoreError as e:  # the bucket cannot be reached: not a conflict; the job is retried
                with self._cond:
                    self._queue.insert(0, job)
                    self.retrying = e
                    self._failures += 1
                    self._backoff = min(RETRY_MAX_S, max(RETRY_MIN_S, self._backoff * 2))
                    self._busy = False
                    self._cond.notify_all()
                    log.warning("%s: publishing table %r failed (%s); retried in %.0f s", self.obj.uri, job.table, e,
                                self._backoff)  # fmt: skip
                    if self._closed:  # the store is closing: the next writer's open publishes the rest
                        return
                    self._cond.wait(self._backoff)  # wait() or close() wakes it: then it tries again at once
                continue
            except BtError as e:
                self.failed = e
                log.error("%s: publishing table %r stopped: %s", self.obj.uri, job.table, e)
            except Exception as e:  # pragma: no cover - a bug: keep it, never kill the thread silently
                self.failed = BtError(f"{self.obj.uri}: publishing table {job.table!r} failed: {e}")
                log.exception("publishing failed")
            with self._cond:
                self._busy = False
                self._backoff = 0.0
                self._cond.notify_all()

    def wait(self) -> None:
        """Until every queued version is in the bucket; raises the error that stopped publishing, or an
        ``ObjectStoreError`` when the bucket cannot be reached (publishing is retried in the background)."""
        with self._cond:
            seen = self._failures
            self._cond.notify_all()  # a job backing off after a failure tries again now
            while (self._queue or self._busy) and self.failed is None and self._failures == seen:
                self._cond.wait()
            retrying = self.retrying if self._failures != seen else None
        self.check()
        if retrying is not None:
            raise ObjectStoreError(
                f"{self.obj.uri}: not everything is published yet ({retrying}); the rows are durable in the "
                "local WAL and publishing is retried in the background (and at the next open)."
            ) from retrying

    def check(self) -> None:
        if self.lease is not None and self.lease.lost is not None and self.failed is None:
            self.failed = self.lease.lost
        if self.failed is not None:
            raise self.failed

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join()

    # the work ----------------------------------------------------------------

    def publish(self, table: str, table_dir: Path, upto: int) -> None:
        """Publish the local versions of ``table`` above the bucket's newest, up to ``upto``."""
        done = self.published.get(table)
        if done is None:
            have = remote_versions(self.obj, table)
            done = have[-1] if have else 0
        meta = _read(table_dir / layout.TABLE_JSON)
        if self.table_json.get(table) != meta:  # new, or rewritten (a schema change, pandas metadata)
            key = table_key(table, layout.TABLE_JSON)
            if self.obj.get(key) != meta:
                self.obj.put(key, meta)
            self.table_json[table] = meta
        for v in range(done + 1, upto + 1):
            self.publish_version(table, table_dir, v)
            self.published[table] = v
        if upto > done:
            self.put_delta_log(table, table_dir)
            self.put_head(table, table_dir, upto)

    def publish_version(self, table: str, table_dir: Path, v: int) -> None:
        path = mf.manifest_dir(table_dir) / mf.version_name(v)
        data = _read(path)
        edit, _time, _state = mf.decode(path, data, v)
        for e in edit.add:
            self.upload_block(table, table_dir / layout.BLOCKS_DIR / e.block, e.block, e.bytes)
        forget = edit.forget
        hook = os.environ.get("BT_FRAMES_TEST_PAUSE_BEFORE_VERSION_PUT")
        if hook:  # tests: a seam between the block uploads and the version's PUT (a child killed there)
            Path(hook).write_text(str(v))
            threading.Event().wait(3600)
        key = version_key(table, v)
        if not self.obj.put_if_absent(key, data):
            there = self.obj.get(key)
            if there != data:  # not our own PUT whose response was lost: another writer's version
                raise MirrorConflictError(
                    f"table {table!r}: version {v} already exists in the bucket ({self.obj.url(key)}) with "
                    "different contents: another writer published it (this writer lost its lease). Nothing "
                    "more is published; the local store (wal_dir) keeps every acknowledged row. Fix: close this "
                    "store; the rows the bucket lacks can be read from the local store with read_only=True."
                )
        if forget:  # retired, kept for the grace period, deleted by the writer: now in the bucket too --
            # unless the version makes that name live again (the same rows rewritten: the same file, new bytes
            # on the local disk, the old ones still in the bucket, which the upload above took for them)
            live = {b.block for b in mf.load(table_dir, upto=v).blocks}
            for name in forget:
                if name not in live:
                    self.obj.delete(block_key(table, name))

    def upload_block(self, table: str, path: Path, name: str, size: int) -> None:
        key = block_key(table, name)
        try:
            data = _read(path)
        except BtError:
            log.warning("table %r: block %s is gone locally before it was published", table, name)
            return
        if not self.obj.put_if_absent(key, data):
            there = self.obj.head(key)
            if there is not None and there.size != len(data):
                raise CorruptionError.at(
                    Path(self.obj.url(key)), None,
                    f"the bucket holds {there.size} bytes under this block's name, the block has {len(data)}: "
                    "the bucket copy is damaged. Fix: delete that object; the next flush uploads it again",
                )  # fmt: skip

    def put_head(self, table: str, table_dir: Path, version: int) -> None:
        """Upload the head object of ``version`` if the local stats cache is linked to it (else leave it)."""
        try:
            files = head_files(table_dir, version)
        except (BtError, OSError, ValueError) as e:
            log.debug("table %r: no head for version %d (%s)", table, version, e)
            return
        if files is not None:
            self.obj.put(table_key(table, HEAD), encode_head(version, files))

    def put_delta_log(self, table: str, table_dir: Path) -> None:
        """Upload the local Delta log's commits (put-if-absent, in order) whose ``txn`` version is published,
        with their checkpoints. Derived, never on the durability path: a failure is logged, and the next
        call carries on where the bucket's log ends."""
        try:
            self._put_delta_log(table, table_dir)
        except (BtError, OSError, ValueError) as e:
            log.warning("table %r: publishing the Delta log failed (%s); retried after the next version", table, e)

    def _put_delta_log(self, table: str, table_dir: Path) -> None:
        local = table_dir / layout.BLOCKS_DIR / DELTA_LOG
        prefix = table_key(table, layout.BLOCKS_DIR, DELTA_LOG) + "/"
        done = self.delta_done.get(table)
        if done is None or table in self.delta_reset:
            done = self.delta_done[table] = {e.key[len(prefix) :] for e in self.obj.list(prefix, None)}
        try:
            names = sorted(os.listdir(local))
        except FileNotFoundError:  # the table has no log (delta_log=False, a type Delta cannot represent)
            names = None
        if names is None or table in self.delta_reset:
            # no log, or a new one whose commit names the bucket's old log holds: the bucket's goes (a stale
            # log would show other engines old rows); readers see no log until the new commits are up
            for name in sorted(done):
                if delta.LOG_FILE.fullmatch(name):
                    self.obj.delete(prefix + name)
                    done.discard(name)
            self.delta_reset.discard(table)
        if names is None:
            return
        published = self.published.get(table, 0)
        commits = sorted((n for n in names if _DELTA_COMMIT.fullmatch(n)), key=lambda n: int(n.split(".")[0]))
        for name in commits:
            if name in done:
                continue
            data = _read(local / name)
            txn = _delta_txn(data, table)
            if txn is None or txn > published:
                break  # it names blocks of a version the bucket does not have yet
            if not self.obj.put_if_absent(prefix + name, data) and self.obj.get(prefix + name) != data:
                log.warning("table %r: the bucket's Delta log has another commit %s; left as it is", table, name)
                break
            done.add(name)
            number = name.split(".")[0]
            for extra in names:  # its checkpoint
                if extra.startswith(number + ".checkpoint") and extra not in done:
                    self.obj.put_if_absent(prefix + extra, _read(local / extra))
                    done.add(extra)
                    if LAST_CHECKPOINT in names:
                        self.obj.put(prefix + LAST_CHECKPOINT, _read(local / LAST_CHECKPOINT))

    # orphans -------------------------------------------------------------------

    def remove_orphans(self, table: str, named: Iterable[str], *, grace_s: float | None = None) -> int:
        """Delete blocks under ``<table>/blocks/`` that no version names, older than ``grace_s``: the
        uploads of versions that never made it into the bucket. Only block names; nothing else."""
        keep = set(named)
        grace_s = ORPHAN_GRACE_S if grace_s is None else grace_s
        now = dt.datetime.now(dt.UTC)
        n = 0
        for e in list(self.obj.list(table_key(table, layout.BLOCKS_DIR) + "/", None)):
            name = e.key.rpartition("/")[2]
            rest = e.key[len(table_key(table, layout.BLOCKS_DIR)) + 1 :]
            if rest != name or layout.parse_block_name(name) is None or name in keep:
                continue
            if (now - e.modified).total_seconds() < grace_s:
                continue
            self.obj.delete(e.key)
            n += 1
        return n


def _test_pause_in_drop(step: str, table: str) -> None:
    """Tests: ``BT_FRAMES_TEST_PAUSE_IN_DROP=<step>:<path>`` stops a drop at ``step`` ("tombstone": just
    after the tombstone's PUT; "delete": before the objects' deletion), writing ``path`` first (a child
    killed there)."""
    hook = os.environ.get("BT_FRAMES_TEST_PAUSE_IN_DROP")
    if hook and hook.partition(":")[0] == step:
        Path(hook.partition(":")[2]).write_text(table)
        threading.Event().wait(3600)


# -- the head object ---------------------------------------------------------


def head_files(table_dir: Path, version: int) -> list[tuple[str, bytes]] | None:
    """``table.json``, the stats cache and the version files from ``version``'s checkpoint on, if the
    cache is linked to exactly ``version``; None otherwise."""
    from bt_frames.storage import catalog

    cache = _read(table_dir / layout.STATS_CACHE)
    header, _body = catalog.split_cache(cache)
    link = header.get("manifest")
    if not isinstance(link, dict) or link.get("version") != version:
        return None
    files = [(layout.TABLE_JSON, _read(table_dir / layout.TABLE_JSON)), (layout.STATS_CACHE, cache)]
    for v in range(mf.checkpoint_of(version), version + 1):
        rel = f"{mf.MANIFEST_DIR}/{mf.version_name(v)}"
        files.append((rel, _read(table_dir / rel)))
    return files


def encode_head(version: int, files: list[tuple[str, bytes]]) -> bytes:
    header = json.dumps(
        {
            "format": HEAD_FORMAT,
            "format_version": HEAD_FORMAT_VERSION,
            "version": version,
            "files": [[name, len(data)] for name, data in files],
        }
    ).encode()
    return b"".join([HEAD_MAGIC, struct.pack("<I", len(header)), header, *(d for _n, d in files)])


def decode_head(data: bytes) -> tuple[int, list[tuple[str, bytes]]] | None:
    """(version, files) of a head object; None if it is not one this build reads (then the reader loads
    the manifest version by version)."""
    try:
        if not data.startswith(HEAD_MAGIC):
            return None
        (n,) = struct.unpack_from("<I", data, len(HEAD_MAGIC))
        start = len(HEAD_MAGIC) + 4
        header = json.loads(data[start : start + n])
        if header.get("format") != HEAD_FORMAT or header.get("format_version") != HEAD_FORMAT_VERSION:
            return None
        pos = start + n
        files = []
        for name, size in header["files"]:
            if not isinstance(name, str) or ".." in name or name.startswith("/"):
                return None
            files.append((name, data[pos : pos + size]))
            pos += size
        if pos != len(data):
            return None
        return int(header["version"]), files
    except (ValueError, KeyError, TypeError, struct.error):
        return None


# -- pulling a table from the bucket -------------------------------------------


def pull_table(
    obj: ObjectStore, table: str, table_dir: Path, *, blocks: bool, recreated: list[str] | None = None
) -> int:
    """Bring ``table``'s metadata from the bucket into ``table_dir`` (created if missing); return the
    bucket's newest version (0: no table; a reader's ``table_dir`` is then removed, so that a table
    dropped since -- a tombstone, or no version left -- is gone here too). A reader whose table has no
    head object (a store written before heads) keeps what it holds if the bucket has its newest version.

    A table dropped and created again numbers its versions from 1 again: a reader that missed the
    tombstone finds versions it holds with other bytes in the bucket (the head's, or the newest it
    holds when there is no head). It then starts ``table_dir`` afresh, never building the new table
    on the old one's files, and appends ``table`` to ``recreated``.

    A reader (``blocks=False``) gets the head object and the versions after it (one GET and one LIST
    when the head is current) and fetches blocks when a scan needs them; blocks whose statistics the
    cache lacks are fetched now (their footers are read). A writer (``blocks=True``) gets every
    version file it lacks and every block of the newest state.
    """
    fs.mkdir(table_dir, exist_ok=True)
    fs.mkdir(mf.manifest_dir(table_dir), exist_ok=True)
    fs.mkdir(table_dir / layout.BLOCKS_DIR, exist_ok=True)
    fs.mkdir(table_dir / layout.WAL_DIR, exist_ok=True)
    have = set(mf.list_versions(table_dir))
    after = 0
    if blocks:
        newer = remote_versions(obj, table)
    else:
        # the head (one GET) and the versions after the newest one known here (one LIST), at the same time
        known = max(have, default=0)
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            listing = pool.submit(obj.list_first, _versions_prefix(table), version_key(table, known) if known else None)
            raw = obj.get(table_key(table, HEAD))
            listed, complete = listing.result()
        got = decode_head(raw) if raw is not None else None
        held = _held_version(obj, table, table_dir, known, got[1] if got is not None else None) if known else 0
        if held is None:
            fs.remove_tree(table_dir)  # the table was dropped and created again: nothing of the old one is kept
            if recreated is not None:
                recreated.append(table)
            return pull_table(obj, table, table_dir, blocks=False)
        if got is not None:
            after, files = got
            for name, data in files:
                _write(table_dir / name, data)
                v = mf.parse_version_name(name.rpartition("/")[2]) if name.startswith(mf.MANIFEST_DIR) else None
                if v is not None:
                    have.add(v)
        else:  # no head: what this reader holds is current up to its newest version, if the bucket has that
            after = held
        seen = sorted(v for e in listed if (v := mf.parse_version_name(e.key.rpartition("/")[2])) is not None)
        dropped = any(e.key == tombstone_key(table) for e in listed)  # it sorts after every version
        if not complete:  # more than a page of versions: the rest after the last one listed
            seen += remote_versions(obj, table, max(after, seen[-1] if seen else 0))
            dropped = obj.head(tombstone_key(table)) is not None
        newer = [v for v in seen if v > after]
        if dropped or (not after and not newer):  # no such table (any more): nothing of it is kept here
            fs.remove_tree(table_dir)
            return 0
    if not after and not newer:
        return 0
    if not (table_dir / layout.TABLE_JSON).exists() or blocks:
        meta = obj.get(table_key(table, layout.TABLE_JSON))
        if meta is None:
            raise CorruptionError.at(Path(obj.url(table_key(table, layout.TABLE_JSON))), None, "missing")
        _write(table_dir / layout.TABLE_JSON, meta)
    newest = newer[-1] if newer else after
    need = [v for v in range(mf.checkpoint_of(newest), newest + 1) if v not in have]
    if blocks:
        need = [v for v in range(1, newest + 1) if v not in have]
    for v in need:
        body = obj.get(version_key(table, v))
        if body is None:
            raise CorruptionError.at(
                Path(obj.url(version_key(table, v))), None,
                f"manifest version {v} of table {table!r} is missing from the bucket (version {newest} exists)",
            )  # fmt: skip
        _write(mf.manifest_dir(table_dir) / mf.version_name(v), body)
    for v in sorted(set(mf.list_versions(table_dir)) - set(range(1, newest + 1))):  # a reader's stale future
        if not blocks:
            fs.unlink(mf.manifest_dir(table_dir) / mf.version_name(v), missing_ok=True)
    if blocks:
        pull_delta_log(obj, table, table_dir)
    if blocks or newer:
        state = mf.load(table_dir, upto=newest)
        cached = _cached_blocks(table_dir) if not blocks else set()
        for e in state.blocks:
            local = table_dir / layout.BLOCKS_DIR / e.block
            if e.block not in cached and not local.exists():
                fetch_block(obj, table, local)
    return newest


def pull_delta_log(obj: ObjectStore, table: str, table_dir: Path) -> None:
    """Make the local Delta log the bucket's (a writer taking the bucket's versions: its log continues that one)."""
    local = table_dir / layout.BLOCKS_DIR / DELTA_LOG
    prefix = table_key(table, layout.BLOCKS_DIR, DELTA_LOG) + "/"
    there = {e.key[len(prefix) :] for e in obj.list(prefix, None)}
    if local.is_dir():
        fs.remove_tree(local)
    for name in sorted(there):
        if "/" in name or name.startswith("."):
            continue
        data = obj.get(prefix + name)
        if data is not None:
            _write(local / name, data)


def _held_version(
    obj: ObjectStore, table: str, table_dir: Path, known: int, files: list[tuple[str, bytes]] | None
) -> int | None:
    """Whether the manifest versions a reader holds in ``table_dir`` (the newest: ``known``) are the bucket's.
    With a head (``files``): None if a version it carries has other bytes here (the table was created
    again), else 0. Without one, version ``known`` (one GET): ``known`` if the bucket has it with the same
    bytes, None if with other bytes, 0 if not at all (the table is gone, or has fewer versions now)."""
    if files is None:
        there = obj.get(version_key(table, known))
        if there is None:
            return 0
        return known if there == _read(mf.manifest_dir(table_dir) / mf.version_name(known)) else None
    for name, data in files:
        version = mf.parse_version_name(name.rpartition("/")[2]) if name.startswith(mf.MANIFEST_DIR) else None
        if version is not None and (table_dir / name).is_file() and _read(table_dir / name) != data:
            return None
    return 0


def _cached_blocks(table_dir: Path) -> set[str]:
    import polars as pl

    from bt_frames.storage import catalog

    try:
        _h, body = catalog.split_cache(_read(table_dir / layout.STATS_CACHE))
        import io

        return set(pl.read_ipc_stream(io.BytesIO(body)).get_column("block").to_list())
    except Exception:
        return set()


def fetch_block(obj: ObjectStore, table: str, local: Path) -> None:
    """Download one block (one GET) into ``local``, checked against the digest its name carries."""
    from bt_frames.storage import blocks as blk

    key = block_key(table, local.name)
    data = obj.get(key)
    if data is None:
        raise CorruptionError.at(Path(obj.url(key)), None, "a block a manifest version names is missing in the bucket")
    if blk.hash_bytes(data) != local.name[layout.BLOCK_DIGEST]:
        raise CorruptionError.at(Path(obj.url(key)), None, "the block's bytes do not match the digest in its name")
    layout.atomic_write(local, data, durable=False)


def _read(path: Path) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise BtError(f"{path}: cannot be read for publishing ({e})") from e


def _write(path: Path, data: bytes) -> None:
    fs.mkdir(path.parent, exist_ok=True)
    layout.atomic_write(path, data, durable=False)


def md5_etag(data: bytes) -> str:
    return '"' + hashlib.md5(data, usedforsecurity=False).hexdigest() + '"'


__all__ = ["Lease", "Mirror", "pull_table"]
