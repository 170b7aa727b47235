#!/usr/bin/env python3
"""Project tasks that need nothing but python3: a virtual environment in .venv, then the job.

python3 dev.py demo      # ingest, crash-free close, reopen, query; prints what the engine did
python3 dev.py test      # the whole test suite (what CI runs), incl. slow, crash and notebook tests,
                         # one pytest-xdist worker per core (`-n 0` runs it in one process)
python3 dev.py test -m "not slow"   # extra arguments go to pytest
python3 dev.py lint      # ruff check, ruff format --check, mypy
python3 dev.py bench     # benchmarks/ingest.py and benchmarks/query.py --quick
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PY = BIN / "python"
STAMP = VENV / ".bt_frames-installed"


def ensure_venv() -> None:
    want = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if PY.exists() and STAMP.exists() and STAMP.read_text() == want:
        return
    if not PY.exists():
        print(f"creating {VENV} ...", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    print("installing bt_frames (editable) with its dev extra ...", flush=True)
    run([str(PY), "-m", "pip", "install", "-q", "--upgrade", "pip"])
    run([str(PY), "-m", "pip", "install", "-q", "-e", f"{ROOT}[dev]"])
    STAMP.write_text(want)


def run(cmd: list[str]) -> None:
    r = subprocess.run(cmd, cwd=ROOT)
    if r.returncode:
        sys.exit(r.returncode)


def main(argv: list[str]) -> None:
    task, rest = (argv[0], argv[1:]) if argv else ("help", [])
    if task in ("help", "-h", "--help"):
        print(__doc__)
        return
    ensure_venv()
    if task == "demo":
        run([str(PY), "-m", "bt_frames", "demo", *(rest or ["demo_db"])])
    elif task == "test":
        # One pytest-xdist worker per core; a test file's own arguments (e.g. `-n 0`) come later and win.
        run([str(PY), "-m", "pytest", "-n", "auto", "--dist", "worksteal", *rest])
    elif task == "lint":
        run([str(BIN / "ruff"), "check", "."])
        run([str(BIN / "ruff"), "format", "--check", "."])
        run([str(BIN / "mypy"), "bt_frames"])
    elif task == "bench":
        run([str(PY), "benchmarks/ingest.py", *rest])
        run([str(PY), "benchmarks/query.py", "--quick", *rest])
    else:
        sys.exit(f"unknown task {task!r}; try: python3 dev.py help")


if __name__ == "__main__":
    main(sys.argv[1:])
