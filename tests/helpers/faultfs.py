"""Fail the k-th file-system call of one kind (LevelDB's FaultInjectionTestEnv, SQLite's test_vfs).

``FaultFS(kind, k, errno)`` counts the calls of each kind that reach the
``bt_frames.storage.fs`` seam and makes the k-th call of ``kind`` raise
``OSError(errno)`` *without doing anything*; every other call (before and
after) runs normally, so a test sees one transient fault. ``FaultFS()``
(no kind) only counts: a dry run tells how many calls of each kind a
workload makes. ``injected`` says which call failed and who made it.
"""

from __future__ import annotations

import os
import threading
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from bt_frames.storage import fs
from tests.helpers.powerloss import _caller

# kind -> the FileSystem methods it covers
KINDS: dict[str, tuple[str, ...]] = {
    "create": ("open",),  # open with O_CREAT
    "write": ("write", "pwritev"),
    "ftruncate": ("ftruncate",),
    "fsync": ("fsync", "fdatasync"),
    "replace": ("replace",),
    "unlink": ("unlink",),
    "mkdir": ("mkdir",),
    "rmdir": ("rmdir",),
    "fsync_dir": ("fsync_dir",),
}


@dataclass(frozen=True)
class Injected:
    kind: str
    k: int
    call: str  # "write fd 7 (wal/0000...1.wal)"
    thread: str
    caller: str  # the innermost bt_frames frame outside fs.py

    def __str__(self) -> str:
        return f"{self.kind} #{self.k}: {self.call} from {self.caller} [thread {self.thread}]"


def _fd_path(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return f"fd {fd}"


class FaultFS(fs.FileSystem):
    def __init__(self, kind: str | None = None, k: int = 0, err: int = 0, *, root: str | None = None) -> None:
        if kind is not None and kind not in KINDS:
            raise ValueError(f"unknown kind {kind!r}; one of {', '.join(KINDS)}")
        self.kind, self.k, self.err = kind, k, err
        self.root = root
        self.counts: Counter[str] = Counter()
        self.injected: Injected | None = None
        self._lock = threading.Lock()

    def _rel(self, p: str) -> str:
        return os.path.relpath(p, self.root) if self.root else p

    def _check(self, kind: str, what: str) -> None:
        with self._lock:
            self.counts[kind] += 1
            n = self.counts[kind]
            if kind != self.kind or n != self.k:
                return
            self.injected = Injected(kind, n, what, threading.current_thread().name, _caller())
        raise OSError(self.err, os.strerror(self.err), what)

    def open(self, path: fs.StrPath, flags: int, mode: int = 0o644) -> int:
        if flags & os.O_CREAT:
            self._check("create", f"open(O_CREAT) {self._rel(os.fspath(path))}")
        return super().open(path, flags, mode)

    def write(self, fd: int, data: bytes | memoryview) -> int:
        self._check("write", f"write {len(data)} bytes to {self._rel(_fd_path(fd))}")
        return super().write(fd, data)

    def pwritev(self, fd: int, buffers: Sequence[bytes | memoryview], offset: int) -> int:
        n = sum(len(b) for b in buffers)
        self._check("write", f"pwritev {n} bytes at {offset} to {self._rel(_fd_path(fd))}")
        return super().pwritev(fd, buffers, offset)

    def ftruncate(self, fd: int, size: int) -> None:
        self._check("ftruncate", f"ftruncate {self._rel(_fd_path(fd))} to {size}")
        super().ftruncate(fd, size)

    def fsync(self, fd: int) -> None:
        self._check("fsync", f"fsync {self._rel(_fd_path(fd))}")
        super().fsync(fd)

    def fdatasync(self, fd: int) -> None:
        self._check("fsync", f"fdatasync {self._rel(_fd_path(fd))}")
        super().fdatasync(fd)

    def replace(self, src: fs.StrPath, dst: fs.StrPath) -> None:
        self._check("replace", f"replace {self._rel(os.fspath(src))} -> {self._rel(os.fspath(dst))}")
        super().replace(src, dst)

    def unlink(self, path: fs.StrPath) -> None:
        self._check("unlink", f"unlink {self._rel(os.fspath(path))}")
        super().unlink(path)

    def mkdir(self, path: fs.StrPath) -> None:
        self._check("mkdir", f"mkdir {self._rel(os.fspath(path))}")
        super().mkdir(path)

    def rmdir(self, path: fs.StrPath) -> None:
        self._check("rmdir", f"rmdir {self._rel(os.fspath(path))}")
        super().rmdir(path)

    def fsync_dir(self, path: fs.StrPath) -> None:
        self._check("fsync_dir", f"fsync_dir {self._rel(os.fspath(path))}")
        super().fsync_dir(path)
