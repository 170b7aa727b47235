"""Progress bars (tqdm, on stderr): large appends, compaction, rebuilding the stats cache."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import struct
import subprocess
import sys
import termios
import textwrap
from pathlib import Path

import pytest

import bt_frames as bt
from bt_frames.storage import layout
from bt_frames.table import FOOTER_PROGRESS_MIN
from tests.conftest import ORDERS_SCHEMA, make_orders


def _table(path: Path, *, progress: bool | None, max_block_rows: int = 1_000) -> tuple[bt.BacktraceStore, bt.Table]:
    store = bt.BacktraceStore(path, progress=progress, durability="none")
    return store, store.create_table("orders", ORDERS_SCHEMA, time_column="ts", max_block_rows=max_block_rows)


@pytest.mark.parametrize("progress", [True, False])
def test_large_append_shows_a_bar_only_when_asked(
    store_path: Path, capsys: pytest.CaptureFixture[str], progress: bool
) -> None:
    store, t = _table(store_path, progress=progress)
    try:
        capsys.readouterr()
        t.append(make_orders(3_500))  # 4 parts written straight to blocks
        err = capsys.readouterr().err
        assert (t.cold_rows, len(t.blocks)) == (3_500, 4)
    finally:
        store.close()
    if progress:
        assert "append to orders" in err
        assert "4/4" in err or "0/4" in err
    else:
        assert err == ""


def test_small_appends_never_show_a_bar(store_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store, t = _table(store_path, progress=True)
    try:
        capsys.readouterr()
        t.append(make_orders(10))
        t.append(make_orders(1_000, start=10))  # one part: nothing to show progress of
        assert t.rows == 1_010
    finally:
        store.close()
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("progress", [True, False])
def test_compaction_shows_a_bar_only_when_asked(
    store_path: Path, capsys: pytest.CaptureFixture[str], progress: bool
) -> None:
    store, t = _table(store_path, progress=progress)
    try:
        for i in range(10):
            t.append(make_orders(10, start=10 * i))
            t.flush()
        capsys.readouterr()
        result = t.compact(target_rows=40)
        err = capsys.readouterr().err
    finally:
        store.close()
    assert (result.blocks_before, result.blocks_after, result.merges) == (10, 3, 3)
    assert ("compact orders" in err) is progress
    if not progress:
        assert err == ""


def _many_blocks(path: Path, n: int) -> None:
    store, t = _table(path, progress=False, max_block_rows=10)
    with store:
        for i in range(n):
            t.append(make_orders(10, start=10 * i))
    (path / "orders" / layout.STATS_CACHE).unlink()


@pytest.mark.parametrize(("blocks", "shown"), [(FOOTER_PROGRESS_MIN, True), (5, False)])
def test_rebuilding_the_stats_cache_shows_a_bar_only_for_many_blocks(
    store_path: Path, capsys: pytest.CaptureFixture[str], blocks: int, shown: bool
) -> None:
    _many_blocks(store_path, blocks)
    capsys.readouterr()
    with bt.BacktraceStore(store_path, progress=True) as store:
        t = store.table("orders")
        assert t.recovery.stats_cache == "missing"
        assert t.recovery.blocks_from_footer == blocks
    err = capsys.readouterr().err
    assert ("orders: block stats" in err) is shown
    if not shown:
        assert err == ""


_CHILD = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {root!r})
    import bt_frames as bt
    from tests.conftest import ORDERS_SCHEMA, make_orders
    with bt.BacktraceStore({path!r}, durability="none") as store:  # progress=None: decided by the session
        t = store.create_table("orders", ORDERS_SCHEMA, time_column="ts", max_block_rows=500)
        t.append(make_orders(2_000))
        print("rows", t.rows, flush=True)
    """
)


def _run_with_tty_stderr(tmp_path: Path, env_value: str | None) -> tuple[str, str]:
    """Run a child whose stderr is a real terminal (a pty); return (stdout, what the terminal showed)."""
    env = {k: v for k, v in os.environ.items() if k != "BT_FRAMES_PROGRESS"}
    if env_value is not None:
        env["BT_FRAMES_PROGRESS"] = env_value
    root = str(Path(__file__).resolve().parents[1])
    code = _CHILD.format(root=root, path=str(tmp_path / f"db-{env_value}"))
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # tqdm sizes bars to the terminal
    try:
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=slave, env=env)
        os.close(slave)
        chunks = []
        while True:
            ready, _, _ = select.select([master], [], [], 60)
            if not ready:
                break
            try:
                data = os.read(master, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        out, _ = proc.communicate(timeout=60)
    finally:
        os.close(master)
    tty = b"".join(chunks).decode(errors="replace")
    assert proc.returncode == 0, tty
    return out.decode(), tty


def test_a_terminal_gets_bars_by_default_unless_bt_frames_progress_is_0(tmp_path: Path) -> None:
    out, tty = _run_with_tty_stderr(tmp_path, None)
    assert "rows 2000" in out
    assert "append to orders" in tty
    out, tty = _run_with_tty_stderr(tmp_path, "0")
    assert "rows 2000" in out
    assert tty == ""


def test_no_bar_when_stderr_is_not_a_terminal(store_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    store, t = _table(store_path, progress=None)  # pytest's captured stderr is not a terminal
    try:
        t.append(make_orders(3_000))
    finally:
        store.close()
    assert capfd.readouterr().err == ""
    with bt.BacktraceStore(store_path, read_only=True) as ro:
        assert ro.table("orders").rows == 3_000


def test_importing_ipykernel_is_not_being_in_a_notebook(
    store_path: Path, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: a process that merely imported ipykernel (nbclient does) got bars on a non-terminal."""
    import ipykernel  # noqa: F401

    monkeypatch.delenv("BT_FRAMES_PROGRESS", raising=False)
    store, t = _table(store_path, progress=None)
    try:
        t.append(make_orders(3_000))
    finally:
        store.close()
    assert capfd.readouterr().err == ""


@pytest.mark.notebook
def test_a_jupyter_kernel_turns_bars_on(monkeypatch: pytest.MonkeyPatch) -> None:
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.delenv("BT_FRAMES_PROGRESS", raising=False)
    book = nbformat.v4.new_notebook()
    book.cells.append(nbformat.v4.new_code_cell("from bt_frames.store import _interactive\nprint(_interactive())"))
    NotebookClient(book, timeout=120, kernel_name="python3").execute(env=dict(os.environ))
    assert book.cells[0].outputs[0]["text"].strip() == "True"
