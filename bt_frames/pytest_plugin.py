"""pytest plugin, registered through the ``pytest11`` entry point: fixtures for tests that use bt_frames.

Installed with bt_frames, so any test can ask for them without a conftest::

    def test_orders(bt_store):
        bt_store.append("orders", df)
        assert_table_equal(bt_store["orders"], df)

    def test_reader_sees_writer(bt_store_factory):
        writer = bt_store_factory("db")
        reader = bt_store_factory("db", read_only=True)

Every store is closed when the test ends (WAL synced, writer lock released),
so files can be inspected or the store reopened in the same test session.
Importing this plugin does not import pandas.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bt_frames.store import BacktraceStore

__all__ = ["bt_store", "bt_store_factory"]

StoreFactory = Callable[..., BacktraceStore]


@pytest.fixture
def bt_store(tmp_path: Path) -> Iterator[BacktraceStore]:
    """A fresh, empty, writable store in ``tmp_path / "bt_store"``; closed (lock released) after the test.

    Examples
    --------
    >>> def test_append(bt_store):  # doctest: +SKIP
    ...     bt_store.append("orders", df)
    ...     assert bt_store["orders"].rows == len(df)
    """
    store = BacktraceStore(tmp_path / "bt_store")
    try:
        yield store
    finally:
        store.close()


@pytest.fixture
def bt_store_factory(tmp_path: Path) -> Iterator[StoreFactory]:
    """Open stores in ``tmp_path``: ``factory(name="store", **kwargs)``; all are closed after the test.

    ``name`` is the store's folder under ``tmp_path``; keyword arguments go to
    :class:`~bt_frames.BacktraceStore` (``read_only=True``, ``durability=...``).
    Calling it again with the same name opens the same folder (e.g. a reader
    next to a writer, or a writer again after ``store.close()``).

    Examples
    --------
    >>> def test_reader(bt_store_factory):  # doctest: +SKIP
    ...     writer = bt_store_factory("db", durability="none")
    ...     reader = bt_store_factory("db", read_only=True)
    """
    opened: list[BacktraceStore] = []

    def factory(name: str = "store", **kwargs: Any) -> BacktraceStore:
        store = BacktraceStore(tmp_path / name, **kwargs)
        opened.append(store)
        return store

    try:
        yield factory
    finally:
        errors: list[BaseException] = []
        for store in reversed(opened):
            try:
                store.close()
            except Exception as e:  # close every store, then report the first failure
                errors.append(e)
        if errors:
            raise errors[0]
