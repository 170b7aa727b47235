"""Child process of tests/test_lifecycle_crash.py: run lifecycle ops on a store until killed.

Usage::

    lifecycle_child.py --path DB --ops OPS.json --start K [--die-at N | --die-at N:half | --die-at after]
                       [--count-calls] [--pause S]

Opens the store (recovering it), prints ``open``, then for each op of the JSON
list from index K prints ``try I``, runs it (tests/helpers/lifecycle_ops.py)
and prints ``ack I`` once it returned; then closes the store and prints
``done``. ``--die-at N`` SIGKILLs this process right before the N-th
file-system call (through the ``bt_frames.storage.fs`` seam) of op K;
``N:half`` writes half of that call's bytes first if it is a write;
``after`` kills it once op K returned, before its ``ack``.
``--count-calls`` prints ``calls N`` (the calls op K made) before its ack.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bt_frames.storage import fs
from tests.helpers import lifecycle_ops as lo


def _die() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(10)  # pragma: no cover


class KillFS(fs.FileSystem):
    """Counts the calls made while ``active``; dies before the ``at``-th (``half``: a write half done)."""

    def __init__(self, at: int | None, half: bool) -> None:
        self.at, self.half = at, half
        self.active = False
        self.calls = 0

    def _hit(self) -> bool:
        if not self.active:
            return False
        self.calls += 1
        return self.calls == self.at

    def open(self, path: Any, flags: int, mode: int = 0o644) -> int:
        if self._hit():
            _die()
        return super().open(path, flags, mode)

    def write(self, fd: int, data: Any) -> int:
        if self._hit():
            if self.half and len(data) > 1:
                super().write(fd, data[: len(data) // 2])
            _die()
        return super().write(fd, data)

    def pwritev(self, fd: int, buffers: Sequence[Any], offset: int) -> int:
        if self._hit():
            if self.half:
                data = b"".join(bytes(b) for b in buffers)
                if len(data) > 1:
                    super().pwritev(fd, [data[: len(data) // 2]], offset)
            _die()
        return super().pwritev(fd, buffers, offset)

    def ftruncate(self, fd: int, size: int) -> None:
        if self._hit():
            _die()
        super().ftruncate(fd, size)

    def fsync(self, fd: int) -> None:
        if self._hit():
            _die()
        super().fsync(fd)

    def fdatasync(self, fd: int) -> None:
        if self._hit():
            _die()
        super().fdatasync(fd)

    def replace(self, src: Any, dst: Any) -> None:
        if self._hit():
            _die()
        super().replace(src, dst)

    def unlink(self, path: Any) -> None:
        if self._hit():
            _die()
        super().unlink(path)

    def mkdir(self, path: Any) -> None:
        if self._hit():
            _die()
        super().mkdir(path)

    def rmdir(self, path: Any) -> None:
        if self._hit():
            _die()
        super().rmdir(path)

    def fsync_dir(self, path: Any) -> None:
        if self._hit():
            _die()
        super().fsync_dir(path)


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--path", required=True)
    p.add_argument("--ops", required=True)
    p.add_argument("--start", type=int, default=0)
    p.add_argument("--die-at", default=None)
    p.add_argument("--count-calls", action="store_true")
    p.add_argument("--pause", type=float, default=0.0)
    args = p.parse_args(argv)
    import bt_frames as bt
    from bt_frames.storage import wal

    wal.ZERO_IN_BACKGROUND = False  # no zeroer thread: the op's calls come in the same order every run
    ops = json.loads(Path(args.ops).read_text())
    after = args.die_at == "after"
    at, half = None, False
    if args.die_at and not after:
        n, _, mode = args.die_at.partition(":")
        at, half = int(n), mode == "half"
    kfs = KillFS(at, half)
    with fs.use(kfs):
        store = bt.open(args.path, retired_grace=0, delta_log=False)  # as tests/test_lifecycle_crash.py OPEN
        t = store.table(lo.TABLE)
        print("open", flush=True)
        for i in range(args.start, len(ops)):
            print(f"try {i}", flush=True)
            kfs.active = i == args.start and (at is not None or args.count_calls)
            lo.run(t, ops[i])
            kfs.active = False
            if i == args.start and after:
                _die()
            if i == args.start and args.count_calls:
                print(f"calls {kfs.calls}", flush=True)
            print(f"ack {i}", flush=True)
            if args.pause:
                time.sleep(args.pause)
        store.close()
    print("done", flush=True)


if __name__ == "__main__":
    main()
