"""Power-loss simulation on real files (SQLite's crash VFS test6.c, LevelDB's fault_injection_test, ALICE).

``RecordingFS`` is installed with ``fs.use(...)``; it runs every mutating call
for real, in one global order (a lock: the block writer and the batch syncer
are other threads), and after each one snapshots the tree under ``root``:
every directory's entries and every file's bytes, files identified by inode
(a new identity whenever an inode is born: ``O_CREAT`` of a missing path,
``mkdir``, or an inode number the previous snapshot did not have).
The tree is also walked before each call and at each ``mark``: a change
made *without* the seam (``os.rename``, ``Path.unlink``, ``shutil.rmtree``)
shows up there, is modelled like any other change, and is listed by
``Trace.untracked()`` so that seam bypasses get reported.

``PowerLoss(trace)`` then rebuilds what a power loss could leave after every
snapshot ("crash point"), under the conservative POSIX model of
``bt_frames/storage/fs.py``:

- a file's bytes are durable as of its last ``fsync``/``fdatasync``
  (a file never synced is empty); unsynced writes are lost, kept, or kept
  as a prefix: every intermediate write boundary, half of each write (a torn
  write: an appended write keeps the first half of its new bytes; an in-place
  ``pwritev`` over existing bytes, e.g. the zeros a WAL segment is filled with
  ahead of its records, keeps the first half of the changed span and the old
  bytes after it), or the synced bytes followed by zeros up to the current
  size (XFS / ext4 ``data=writeback`` after a crash: size durable, data not).
  "Lost" for an in-place write means the old bytes (the synced zeros);
- a directory's entries are durable as of its last ``fsync_dir``; each later
  change of it (one call's worth: a rename replaces the target and removes the
  source together) may be lost or kept independently of the others and of the
  data, e.g. "rename kept, the renamed file's unsynced data lost".

Per crash point the variants are: everything synced only; everything kept
(= a process crash); renames kept with data lost and vice versa; each pending
directory change alone kept / alone lost / kept with all earlier ones (an
ordered journal); each unsynced file at each of its torn candidates on each
of those bases. Identical trees are deduplicated by content hash; each
distinct tree remembers every (point, variant) that produced it, so a
checker can apply all their expectations to one recovery.

``CrashState.materialize(dest)`` writes a state as a real directory tree.
"""

from __future__ import annotations

import contextlib
import os
import threading
import traceback
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import xxhash

from bt_frames.storage import fs

DIR = "<dir>"  # marker of a directory in a materialisable tree
EMPTY = xxhash.xxh3_128_hexdigest(b"")


def _digest(data: bytes) -> str:
    return xxhash.xxh3_128_hexdigest(data)


@dataclass
class Snap:
    """The tree under the root at one instant."""

    dirs: dict[int, dict[str, int]]  # dir identity -> {name: identity}
    files: dict[int, str]  # file identity -> content digest
    paths: dict[int, str]  # identity -> path relative to the root ("" for the root)


@dataclass
class Event:
    kind: str  # "op" (a call through the seam), "untracked" (a change seen between calls), "mark"
    name: str  # op name, or the mark's label
    detail: str = ""
    thread: str = ""
    ok: bool = True
    error: str | None = None
    target: int | None = None  # identity the op synced (fsync/fdatasync: the file; fsync_dir: the directory)
    snap: int | None = None  # index in Trace.snaps of the tree after this event
    label: Any = None  # the mark's payload
    caller: str = ""  # the engine frame that made the call


@dataclass
class Trace:
    root: Path
    events: list[Event]
    snaps: list[Snap]
    blobs: dict[str, bytes]
    kinds: dict[int, str]  # identity -> "d" / "f"
    root_ident: int

    def ops(self) -> list[Event]:
        return [e for e in self.events if e.kind == "op"]

    def untracked(self) -> list[Event]:
        return [e for e in self.events if e.kind == "untracked"]

    def marks(self) -> list[Event]:
        return [e for e in self.events if e.kind == "mark"]


def _caller() -> str:
    """The innermost bt_frames frame outside storage/fs.py (who made the call)."""
    for fr in reversed(traceback.extract_stack(limit=25)):
        f = fr.filename.replace(os.sep, "/")
        if "/bt_frames/" in f and not f.endswith("storage/fs.py"):
            return f"{f.rsplit('/bt_frames/', 1)[1]}:{fr.lineno} {fr.name}"
    return "?"


class RecordingFS(fs.FileSystem):
    """Runs every call for real and snapshots the tree under ``root`` around it (see the module doc)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self._lock = threading.RLock()
        self._events: list[Event] = []
        self._snaps: list[Snap] = []
        self._blobs: dict[str, bytes] = {EMPTY: b""}
        self._kinds: dict[int, str] = {}
        self._next_ident = 0
        self._ident_of_ino: dict[int, int] = {}
        self._stat_of: dict[int, tuple[int, int, int]] = {}
        self._digest_of: dict[int, str] = {}
        self._fd_ino: dict[int, int] = {}
        self._root_ident = -1
        self._started = False

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> RecordingFS:
        """Take the initial snapshot: everything there now counts as durable."""
        with self._lock:
            self._snaps.append(self._walk(set(), set()))
            self._root_ident = self._ident_of_ino[os.stat(self.root).st_ino]
            self._started = True
        return self

    def trace(self) -> Trace:
        with self._lock:
            return Trace(
                self.root,
                list(self._events),
                list(self._snaps),
                dict(self._blobs),
                dict(self._kinds),
                self._root_ident,
            )

    def mark(self, label: Any) -> None:
        """Note a workload event ("append 3 acknowledged") at this point of the trace."""
        with self._lock:
            self._catch_up()
            self._events.append(Event("mark", str(label), label=label, thread=threading.current_thread().name))

    # -- snapshots -------------------------------------------------------------

    def _new_ident(self, kind: str) -> int:
        self._next_ident += 1
        self._kinds[self._next_ident] = kind
        return self._next_ident

    def _walk(self, born: set[int], reread: set[int]) -> Snap:
        """Snapshot the tree; ``born``: inode numbers just created (a new identity even if reused)."""
        dirs: dict[int, dict[str, int]] = {}
        files: dict[int, str] = {}
        paths: dict[int, str] = {}
        seen: dict[int, int] = {}

        def ident(ino: int, kind: str) -> int:
            if ino in seen:
                return seen[ino]
            old = self._ident_of_ino.get(ino)
            if old is None or ino in born or self._kinds.get(old) != kind:
                old = self._new_ident(kind)
            seen[ino] = old
            return old

        def visit(path: str, rel: str, me: int) -> None:
            entries: dict[str, int] = {}
            try:
                it = list(os.scandir(path))
            except (FileNotFoundError, NotADirectoryError):
                it = []
            for e in it:
                try:
                    st = e.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                is_dir = e.is_dir(follow_symlinks=False)
                child = ident(st.st_ino, "d" if is_dir else "f")
                entries[e.name] = child
                crel = f"{rel}/{e.name}" if rel else e.name
                paths.setdefault(child, crel)
                if is_dir:
                    visit(e.path, crel, child)
                elif child not in files:
                    key = (st.st_size, st.st_mtime_ns, st.st_ctime_ns)
                    if child in reread or st.st_ino in reread or self._stat_of.get(child) != key:
                        try:
                            with open(e.path, "rb") as f:
                                data = f.read()
                        except FileNotFoundError:
                            continue
                        d = _digest(data)
                        self._blobs.setdefault(d, data)
                        self._stat_of[child] = key
                        self._digest_of[child] = d
                    files[child] = self._digest_of[child]
            dirs[me] = entries

        root_st = os.stat(self.root)
        rid = ident(root_st.st_ino, "d")
        paths[rid] = ""
        visit(os.fspath(self.root), "", rid)
        self._ident_of_ino = seen
        return Snap(dirs, files, paths)

    def _catch_up(self) -> None:
        """A walk before a call / at a mark: record changes made without the seam."""
        if not self._started:
            return
        snap = self._walk(set(), set())
        prev = self._snaps[-1]
        if snap.dirs != prev.dirs or snap.files != prev.files:
            self._snaps.append(snap)
            self._events.append(
                Event(
                    "untracked",
                    "untracked",
                    detail=_describe_diff(prev, snap),
                    thread=threading.current_thread().name,
                    snap=len(self._snaps) - 1,
                    caller=_caller(),
                )
            )

    def _do(
        self,
        name: str,
        detail: str,
        fn: Callable[[], Any],
        *,
        born_path: str | os.PathLike[str] | None = None,
        fd: int | None = None,
        sync_file: bool = False,
        sync_dir: str | os.PathLike[str] | None = None,
    ) -> Any:
        with self._lock:
            if not self._started:
                return fn()
            self._catch_up()
            existed = born_path is not None and os.path.lexists(born_path)
            ev = Event("op", name, detail, threading.current_thread().name, caller=_caller())
            born: set[int] = set()
            reread: set[int] = set()
            try:
                result = fn()
            except BaseException as e:
                ev.ok, ev.error, result = False, f"{type(e).__name__}: {e}", None
                self._record(ev, born, reread)
                raise
            if born_path is not None and not existed:
                with contextlib.suppress(OSError):
                    born.add(os.stat(born_path).st_ino)
            if fd is None and name == "open" and isinstance(result, int):
                fd = result
            ino = None
            if fd is not None:
                with contextlib.suppress(OSError):
                    ino = os.fstat(fd).st_ino
                    reread.add(ino)
            snap = self._record(ev, born, reread)
            if sync_file and ino is not None:
                ev.target = self._ident_of_ino.get(ino)
            if sync_dir is not None:
                with contextlib.suppress(OSError):
                    ev.target = self._ident_of_ino.get(os.stat(sync_dir).st_ino)
            del snap
            return result

    def _record(self, ev: Event, born: set[int], reread: set[int]) -> Snap:
        snap = self._walk(born, reread)
        self._snaps.append(snap)
        ev.snap = len(self._snaps) - 1
        self._events.append(ev)
        return snap

    # -- the calls -------------------------------------------------------------

    def open(self, path: fs.StrPath, flags: int, mode: int = 0o644) -> int:
        if not flags & (os.O_CREAT | os.O_TRUNC):
            return super().open(path, flags, mode)  # changes nothing
        what = "+".join(n for n, f in (("CREAT", os.O_CREAT), ("EXCL", os.O_EXCL), ("TRUNC", os.O_TRUNC)) if flags & f)
        return int(
            self._do(
                "open",
                f"{self._rel(path)} {what}",
                lambda: super(RecordingFS, self).open(path, flags, mode),
                born_path=path if flags & os.O_CREAT else None,
            )
        )

    def write(self, fd: int, data: bytes | memoryview) -> int:
        return int(self._do("write", f"fd {fd}: {len(data)} bytes", lambda: super(RecordingFS, self).write(fd, data),
                            fd=fd))  # fmt: skip

    def pwritev(self, fd: int, buffers: Sequence[bytes | memoryview], offset: int) -> int:
        n = sum(len(b) for b in buffers)
        return int(self._do("pwritev", f"fd {fd}: {n} bytes at {offset}",
                            lambda: super(RecordingFS, self).pwritev(fd, buffers, offset), fd=fd))  # fmt: skip

    def ftruncate(self, fd: int, size: int) -> None:
        self._do("ftruncate", f"fd {fd} to {size}", lambda: super(RecordingFS, self).ftruncate(fd, size), fd=fd)

    def fsync(self, fd: int) -> None:
        self._do("fsync", f"fd {fd}", lambda: super(RecordingFS, self).fsync(fd), fd=fd, sync_file=True)

    def fdatasync(self, fd: int) -> None:
        self._do("fdatasync", f"fd {fd}", lambda: super(RecordingFS, self).fdatasync(fd), fd=fd, sync_file=True)

    def replace(self, src: fs.StrPath, dst: fs.StrPath) -> None:
        self._do("replace", f"{self._rel(src)} -> {self._rel(dst)}", lambda: super(RecordingFS, self).replace(src, dst))

    def unlink(self, path: fs.StrPath) -> None:
        self._do("unlink", self._rel(path), lambda: super(RecordingFS, self).unlink(path))

    def mkdir(self, path: fs.StrPath) -> None:
        self._do("mkdir", self._rel(path), lambda: super(RecordingFS, self).mkdir(path), born_path=path)

    def rmdir(self, path: fs.StrPath) -> None:
        self._do("rmdir", self._rel(path), lambda: super(RecordingFS, self).rmdir(path))

    def fsync_dir(self, path: fs.StrPath) -> None:
        self._do("fsync_dir", self._rel(path), lambda: super(RecordingFS, self).fsync_dir(path), sync_dir=path)

    def _rel(self, path: fs.StrPath) -> str:
        try:
            return os.path.relpath(path, self.root)
        except ValueError:  # pragma: no cover - another drive
            return os.fspath(path)


def _describe_diff(a: Snap, b: Snap) -> str:
    out = []
    for d in sorted(set(a.dirs) | set(b.dirs)):
        ea, eb = a.dirs.get(d, {}), b.dirs.get(d, {})
        base = b.paths.get(d, a.paths.get(d, "?"))
        for n in sorted(set(ea) | set(eb)):
            if ea.get(n) != eb.get(n):
                p = f"{base}/{n}" if base else n
                out.append(f"-{p}" if n not in eb else (f"+{p}" if n not in ea else f"~{p}"))
    for f in sorted(set(a.files) & set(b.files)):
        if a.files[f] != b.files[f]:
            out.append(f"write {b.paths.get(f, '?')}")
    return ", ".join(out[:8]) + (f" (+{len(out) - 8})" if len(out) > 8 else "")


# -- the power-loss model ------------------------------------------------------


@dataclass(frozen=True)
class DirStep:
    """One call's worth of changes to one directory, not yet made durable by fsync_dir."""

    seq: int  # snapshot index it happened at (global order)
    dir: int
    changes: tuple[tuple[str, int | None], ...]  # name -> new identity (None: removed)
    text: str


@dataclass
class CrashPoint:
    """What is durable and what is real just after snapshot ``snap`` (event ``event``)."""

    snap: int
    event: int  # index in Trace.events
    durable_dirs: dict[int, dict[str, int]]
    durable_files: dict[int, str]
    steps: list[DirStep]  # pending directory changes, in order
    versions: dict[int, list[str]]  # file -> digests after each unsynced change, oldest first
    current_files: dict[int, str]  # last content seen of every file
    current_dirs: dict[int, dict[str, int]]


@dataclass
class Origin:
    point: int  # index of the crash point (= snapshot index)
    event: int
    variant: str


@dataclass
class CrashState:
    """One distinct on-disk tree a power loss can leave, and every (point, variant) that leaves it."""

    key: str
    tree: dict[str, str]  # relative path -> DIR or content digest
    origins: list[Origin] = field(default_factory=list)

    def materialize(self, dest: Path, blobs: dict[str, bytes]) -> Path:
        dest.mkdir(parents=True, exist_ok=False)
        for rel, what in sorted(self.tree.items()):
            p = dest / rel
            if what == DIR:
                p.mkdir(parents=True, exist_ok=True)
            else:
                p.parent.mkdir(parents=True, exist_ok=True)
                p.write_bytes(blobs[what])
        return dest

    def files(self, blobs: dict[str, bytes]) -> dict[str, bytes | None]:
        """relative path -> bytes (None for a directory): for tests of the simulator."""
        return {p: (None if d == DIR else blobs[d]) for p, d in self.tree.items()}


MAX_TORN = 6  # torn candidates per unsynced file and crash point


class PowerLoss:
    """Every crash point of a trace and the distinct trees a power loss can leave there."""

    def __init__(self, trace: Trace) -> None:
        self.trace = trace
        self.blobs = dict(trace.blobs)
        self.points: list[CrashPoint] = list(self._points())
        self.variants_built = 0

    def _points(self) -> Iterator[CrashPoint]:
        t = self.trace
        s0 = t.snaps[0]
        durable_dirs = {d: dict(e) for d, e in s0.dirs.items()}
        durable_files = dict(s0.files)
        current_dirs = {d: dict(e) for d, e in s0.dirs.items()}
        current_files = dict(s0.files)
        steps: list[DirStep] = []
        versions: dict[int, list[str]] = {}
        prev = s0
        self.paths: dict[int, str] = dict(s0.paths)
        yield CrashPoint(0, -1, _copy(durable_dirs), dict(durable_files), [], {}, dict(current_files),
                         _copy(current_dirs))  # fmt: skip
        for i, ev in enumerate(t.events):
            if ev.snap is None:
                continue
            snap = t.snaps[ev.snap]
            self.paths.update(snap.paths)
            for d in set(prev.dirs) | set(snap.dirs):
                if d not in snap.dirs:
                    continue  # removed: its parent's step says so; its entries stay as last seen
                a, b = current_dirs.get(d, {}), snap.dirs[d]
                if a != b:
                    ch = tuple((n, b.get(n)) for n in sorted(set(a) | set(b)) if a.get(n) != b.get(n))
                    steps.append(DirStep(ev.snap, d, ch, _step_text(self.paths.get(d, "?"), a, ch)))
                    current_dirs[d] = dict(b)
                durable_dirs.setdefault(d, {})  # a directory born now: nothing in it is durable
            for f, dg in snap.files.items():
                durable_files.setdefault(f, EMPTY)  # a file born now: none of its bytes are durable
                if current_files.get(f) != dg:
                    current_files[f] = dg
                    versions.setdefault(f, []).append(dg)
            if ev.kind == "op" and ev.ok and ev.target is not None:
                if ev.name in ("fsync", "fdatasync") and ev.target in snap.files:
                    durable_files[ev.target] = snap.files[ev.target]
                    versions.pop(ev.target, None)
                elif ev.name == "fsync_dir" and ev.target in snap.dirs:
                    durable_dirs[ev.target] = dict(snap.dirs[ev.target])
                    steps = [s for s in steps if s.dir != ev.target]
            prev = snap
            yield CrashPoint(ev.snap, i, _copy(durable_dirs), dict(durable_files), list(steps),
                             {f: list(v) for f, v in versions.items()}, dict(current_files),
                             _copy(current_dirs))  # fmt: skip

    # -- trees ---------------------------------------------------------------

    def tree(
        self,
        pt: CrashPoint,
        include: Callable[[DirStep], bool],
        data: Callable[[int], str],
    ) -> dict[str, str]:
        """The tree with pending directory changes ``include``d and each file's bytes ``data(file)``."""
        by_dir: dict[int, list[DirStep]] = {}
        for s in pt.steps:
            by_dir.setdefault(s.dir, []).append(s)
        out: dict[str, str] = {}

        def entries(d: int) -> dict[str, int]:
            e = dict(pt.durable_dirs.get(d, {}))
            for s in by_dir.get(d, ()):
                if include(s):
                    for n, tgt in s.changes:
                        if tgt is None:
                            e.pop(n, None)
                        else:
                            e[n] = tgt
            return e

        def visit(d: int, prefix: str, stack: frozenset[int]) -> None:
            for name, child in sorted(entries(d).items()):
                p = prefix + name
                if self.trace.kinds.get(child) == "d":
                    out[p] = DIR
                    if child not in stack:
                        visit(child, p + "/", stack | {child})
                else:
                    out[p] = data(child)

        visit(self.trace.root_ident, "", frozenset({self.trace.root_ident}))
        return out

    def torn(self, pt: CrashPoint, f: int) -> list[tuple[str, str]]:
        """(label, digest) of the states an unsynced file may be left in, other than fully synced/current."""
        d0 = pt.durable_files.get(f, EMPTY)
        vs = pt.versions.get(f, [])
        out: list[tuple[str, str]] = []
        prev = self.blobs[d0]
        for j, dg in enumerate(vs):
            cur = self.blobs[dg]
            if j < len(vs) - 1:
                out.append((f"after write {j + 1}/{len(vs)}", dg))
            half = _torn_between(prev, cur)
            if half is not None:
                out.append((f"write {j + 1}/{len(vs)} torn", self._blob(half)))
            prev = cur
        cur = self.blobs[pt.current_files.get(f, d0)]
        synced = self.blobs[d0]
        if len(cur) > len(synced):
            tail = synced + b"\0" * (len(cur) - len(synced)) if cur.startswith(synced) else b"\0" * len(cur)
            out.append(("zero-filled", self._blob(tail)))
        if len(out) > MAX_TORN:  # keep the first, the last and evenly spaced ones between
            idx = sorted({round(i * (len(out) - 1) / (MAX_TORN - 1)) for i in range(MAX_TORN)})
            out = [out[i] for i in idx]
        return out

    def _blob(self, data: bytes) -> str:
        d = _digest(data)
        self.blobs.setdefault(d, data)
        return d

    def variants(self, pt: CrashPoint) -> Iterator[tuple[str, dict[str, str]]]:
        """(label, tree) of every variant considered at this point (not deduplicated)."""

        def synced(f: int) -> str:
            return pt.durable_files.get(f, EMPTY)

        def current(f: int) -> str:
            return pt.current_files.get(f, synced(f))

        def none(_s: DirStep) -> bool:
            return False

        def every(_s: DirStep) -> bool:
            return True

        yield "synced only", self.tree(pt, none, synced)
        yield "all kept (= process crash)", self.tree(pt, every, current)
        yield "dir changes kept, unsynced data lost", self.tree(pt, every, synced)
        yield "unsynced data kept, dir changes lost", self.tree(pt, none, current)
        for s in pt.steps:
            for dname, dfun in (("data lost", synced), ("data kept", current)):
                yield f"only [{s.text}] kept, {dname}", self.tree(pt, lambda x, s=s: x == s, dfun)
                yield f"all but [{s.text}] kept, {dname}", self.tree(pt, lambda x, s=s: x != s, dfun)
                yield f"up to [{s.text}] kept, {dname}", self.tree(pt, lambda x, s=s: x.seq <= s.seq, dfun)
        for f in sorted(pt.versions):
            if current(f) == synced(f):
                continue
            path = self.paths.get(f, f"#{f}")
            for tlabel, dg in [("lost", synced(f)), ("kept", current(f)), *self.torn(pt, f)]:
                for bname, inc, base in (
                    ("synced only", none, synced),
                    ("all kept", every, current),
                    ("dir changes kept, data lost", every, synced),
                ):
                    yield (
                        f"{bname}; {path}: unsynced bytes {tlabel}",
                        self.tree(pt, inc, lambda x, f=f, dg=dg, base=base: dg if x == f else base(x)),
                    )

    def states(self, points: Iterable[CrashPoint] | None = None) -> dict[str, CrashState]:
        """Distinct trees (by content hash) over the given points (default: all)."""
        out: dict[str, CrashState] = {}
        for pt in self.points if points is None else points:
            for label, tree in self.variants(pt):
                self.variants_built += 1
                key = tree_key(tree)
                st = out.get(key)
                if st is None:
                    st = out[key] = CrashState(key, tree)
                if not any(o.point == pt.snap and o.variant == label for o in st.origins):
                    st.origins.append(Origin(pt.snap, pt.event, label))
        return out

    def describe_point(self, pt: CrashPoint) -> str:
        if pt.event < 0:
            return "before any call"
        ev = self.trace.events[pt.event]
        n = sum(1 for e in self.trace.events[: pt.event + 1] if e.kind == "op")
        if ev.kind == "untracked":
            return f"after op #{n} + untracked change [{ev.detail}] ({ev.caller})"
        status = "" if ev.ok else f" FAILED {ev.error}"
        return f"after op #{n} {ev.name} {ev.detail}{status} ({ev.caller}, thread {ev.thread})"


def _common_prefix(a: bytes, b: bytes) -> int:
    """Length of the longest common prefix (binary search over slice compares: fast on megabytes)."""
    va, vb = memoryview(a), memoryview(b)
    lo, hi = 0, min(len(a), len(b))
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if va[:mid] == vb[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _common_suffix(a: bytes, b: bytes, limit: int) -> int:
    """Length of the longest common suffix, at most ``limit``."""
    va, vb = memoryview(a), memoryview(b)
    lo, hi = 0, min(len(a), len(b), limit)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if va[len(a) - mid :] == vb[len(b) - mid :]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _torn_between(prev: bytes, cur: bytes) -> bytes | None:
    """The file half-way through the change ``prev`` -> ``cur`` (a torn write), or None if none applies.

    An append (``cur`` extends ``prev``) keeps the first half of the new bytes; an in-place overwrite (a
    ``pwritev`` into zeros written ahead, maybe running past the end) keeps the first half of the changed
    span and the old bytes after it. A change that shrinks the file (a truncation) is not torn.
    """
    if len(cur) < len(prev):
        return None
    a = _common_prefix(prev, cur)
    e = len(cur) if len(cur) > len(prev) else len(cur) - _common_suffix(prev, cur, len(cur) - a)
    if e - a < 2:
        return None
    mid = a + (e - a) // 2
    return cur[:mid] + prev[mid:]


def tree_key(tree: dict[str, str]) -> str:
    return _digest("\n".join(f"{p}\0{d}" for p, d in sorted(tree.items())).encode())


def _copy(d: dict[int, dict[str, int]]) -> dict[int, dict[str, int]]:
    return {k: dict(v) for k, v in d.items()}


def _step_text(dpath: str, before: dict[str, int], ch: tuple[tuple[str, int | None], ...]) -> str:
    pre = f"{dpath}/" if dpath else ""
    removed = {n for n, t in ch if t is None}
    added = {n: t for n, t in ch if t is not None}
    parts = []
    for n, t in sorted(added.items()):
        src = next((r for r in removed if before.get(r) == t), None)
        if src is not None:
            removed.discard(src)
            parts.append(f"rename {pre}{src} -> {n}")
        elif n in before:
            parts.append(f"replace {pre}{n}")
        else:
            parts.append(f"create {pre}{n}")
    parts += [f"remove {pre}{n}" for n in sorted(removed)]
    return "; ".join(parts)
