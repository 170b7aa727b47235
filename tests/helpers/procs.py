"""Run tests/helpers/crash_writer.py in a child process and follow what it acknowledges."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

WRITER = Path(__file__).with_name("crash_writer.py")


def listing(root: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under ``root``: relative path -> (size, mtime_ns)."""
    out = {}
    for p in sorted(root.rglob("*")):
        st = p.stat()
        out[str(p.relative_to(root))] = (st.st_size if p.is_file() else 0, st.st_mtime_ns)
    return out


def tmp_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.name.endswith(".tmp"))


class Child:
    """A crash_writer.py process; a thread collects its stdout lines as they arrive."""

    def __init__(self, *args: str, stderr_path: Path) -> None:
        self.stderr_path = stderr_path
        self._stderr = open(stderr_path, "ab")  # noqa: SIM115 - closed in wait()
        self.proc = subprocess.Popen(
            [sys.executable, str(WRITER), *args],
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            env={**os.environ, "BT_FRAMES_PROGRESS": "0"},
        )
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            if not raw.endswith(b"\n"):  # cut off by the kill: not a complete acknowledgement
                break
            with self._cond:
                self.lines.append(raw.decode().strip())
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def wait_for(self, predicate: Any, timeout: float = 60.0) -> None:
        """Block until ``predicate(lines)`` is true; fail if the child exits or the time runs out."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self.lines):
                if not self._thread.is_alive():
                    raise AssertionError(f"child exited ({self.proc.poll()}) before expected output:\n{self.stderr()}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out waiting for child output; got {self.lines[-5:]}")
                self._cond.wait(min(left, 0.5))

    def wait_line(self, prefix: str, timeout: float = 60.0) -> str:
        self.wait_for(lambda lines: any(ln.startswith(prefix) for ln in lines), timeout)
        return next(ln for ln in self.lines if ln.startswith(prefix))

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.wait()

    def wait(self, timeout: float = 60.0) -> int:
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise
        finally:
            self._thread.join(10)
            self._stderr.close()
            if self.proc.stdout is not None:
                self.proc.stdout.close()
        return rc

    def acked(self) -> list[int]:
        """Batch ids the child printed, i.e. whose append() had returned."""
        with self._cond:
            return [int(ln) for ln in self.lines if ln.lstrip("-").isdigit()]

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")[-4000:]


def run_json(*args: str, timeout: float = 120.0) -> dict[str, Any]:
    """Run crash_writer.py to completion and parse the JSON line it prints."""
    out = subprocess.run(
        [sys.executable, str(WRITER), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "BT_FRAMES_PROGRESS": "0"},
        check=False,
    )
    assert out.returncode == 0, f"child failed ({out.returncode}):\n{out.stderr[-4000:]}"
    return json.loads(out.stdout.strip().splitlines()[-1])
