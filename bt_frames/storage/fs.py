"""Every file-system call that changes a store goes through this module.

Contract: the storage layer never calls ``os.write``/``fsync``/``rename``/
``unlink``/``mkdir`` (or ``shutil``) directly for a store's files; it calls the
functions here. They delegate to one :class:`FileSystem` object, the real one
unless a test installed another with :func:`use`. This is LevelDB's ``Env``
and SQLite's VFS: the seam where the test suite records every mutating call
(to rebuild the states a power loss could leave) or fails the k-th one (to
check that a failed call commits nothing). Reads are not routed here: they
change nothing a crash could lose.

The operations and their durability, as the power-loss model in
``tests/helpers/powerloss.py`` assumes (a conservative POSIX reading):

- ``write``/``pwritev``/``ftruncate`` change a file's bytes in the page cache;
  only ``fsync``/``fdatasync`` of that file make them durable.
- ``open`` with ``O_CREAT``, ``replace``/``rename``, ``unlink``, ``mkdir`` and
  ``rmdir`` change a directory; only ``fsync_dir`` of that directory makes the
  change durable. Until then a power loss may keep or lose it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

StrPath = str | os.PathLike[str]


class FileSystem:
    """The real file system (``os``). Subclasses in tests override and call ``super()``."""

    def open(self, path: StrPath, flags: int, mode: int = 0o644) -> int:
        return os.open(path, flags, mode)

    def close(self, fd: int) -> None:
        os.close(fd)

    def write(self, fd: int, data: bytes | memoryview) -> int:
        return os.write(fd, data)

    def pwritev(self, fd: int, buffers: Sequence[bytes | memoryview], offset: int) -> int:
        return os.pwritev(fd, buffers, offset)

    def ftruncate(self, fd: int, size: int) -> None:
        os.ftruncate(fd, size)

    def fsync(self, fd: int) -> None:
        os.fsync(fd)

    def fdatasync(self, fd: int) -> None:
        os.fdatasync(fd)

    def replace(self, src: StrPath, dst: StrPath) -> None:
        os.replace(src, dst)

    def unlink(self, path: StrPath) -> None:
        os.unlink(path)

    def mkdir(self, path: StrPath) -> None:
        os.mkdir(path)

    def rmdir(self, path: StrPath) -> None:
        os.rmdir(path)

    def fsync_dir(self, path: StrPath) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


_fs: FileSystem = FileSystem()


def current() -> FileSystem:
    return _fs


@contextlib.contextmanager
def use(fs: FileSystem) -> Iterator[FileSystem]:
    """Route every store file operation through ``fs`` inside the ``with`` block (tests)."""
    global _fs
    old, _fs = _fs, fs
    try:
        yield fs
    finally:
        _fs = old


# -- the calls the storage layer makes -----------------------------------------


def open_fd(path: StrPath, flags: int, mode: int = 0o644) -> int:
    return _fs.open(path, flags, mode)


def close(fd: int) -> None:
    _fs.close(fd)


def write_all(fd: int, data: bytes | memoryview) -> None:
    """Write every byte of ``data`` (looping over short writes)."""
    view = memoryview(data)
    while view:
        view = view[_fs.write(fd, view) :]


def pwritev_all(fd: int, buffers: Sequence[bytes | memoryview], offset: int) -> None:
    """Write every byte of ``buffers`` at ``offset`` (the file offset is not used or moved; no ``O_APPEND``)."""
    want = sum(len(b) for b in buffers)
    n = _fs.pwritev(fd, buffers, offset)
    if n != want:  # short write: finish it (or fail with the error that stopped it)
        rest = memoryview(b"".join(bytes(b) for b in buffers))[n:]
        while rest:
            k = _fs.pwritev(fd, [rest], offset + n)
            n += k
            rest = rest[k:]


def ftruncate(fd: int, size: int) -> None:
    _fs.ftruncate(fd, size)


def fsync(fd: int) -> None:
    _fs.fsync(fd)


def fdatasync(fd: int) -> None:
    _fs.fdatasync(fd)


def replace(src: StrPath, dst: StrPath) -> None:
    _fs.replace(src, dst)


def unlink(path: StrPath, *, missing_ok: bool = False) -> None:
    try:
        _fs.unlink(path)
    except FileNotFoundError:
        if not missing_ok:
            raise


def mkdir(path: StrPath, *, exist_ok: bool = False) -> None:
    try:
        _fs.mkdir(path)
    except FileExistsError:
        if not (exist_ok and os.path.isdir(path)):
            raise


def fsync_dir(path: StrPath) -> None:
    _fs.fsync_dir(path)


def remove_tree(path: StrPath) -> None:
    """Remove a folder the store created, bottom-up, through the seam (``shutil.rmtree`` is not)."""
    root = Path(path)
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for n in filenames:
            unlink(os.path.join(dirpath, n), missing_ok=True)
        for n in dirnames:
            full = os.path.join(dirpath, n)
            if os.path.islink(full):
                unlink(full, missing_ok=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    _fs.rmdir(full)
    with contextlib.suppress(FileNotFoundError):
        _fs.rmdir(root)


def write_file(path: Path, data: bytes | memoryview, *, durable: bool = True) -> None:
    """Create (or truncate) ``path`` and write ``data``; fsync it if ``durable``. Removes it on failure."""
    fd = open_fd(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        try:
            write_all(fd, data)
            if durable:
                fsync(fd)
        finally:
            close(fd)
    except BaseException:
        with contextlib.suppress(OSError):
            unlink(path, missing_ok=True)
        raise
