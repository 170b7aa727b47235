"""pytest plugin (registered through the ``pytest11`` entry point): the ``bt_store`` fixture."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bt_frames.store import BacktraceStore


@pytest.fixture
def bt_store(tmp_path: Path) -> Iterator[BacktraceStore]:
    """A fresh, empty store in ``tmp_path``; closed (lock released) after the test."""
    store = BacktraceStore(tmp_path / "bt_store")
    yield store
    store.close()
