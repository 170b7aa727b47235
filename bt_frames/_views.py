"""What the presentation modules (``_display``, ``_plot``) and the scan need of a table and a store.

Structural types (``typing.Protocol``): ``Table`` and ``BacktraceStore`` satisfy
them without importing this module's users, so the layers stay one-way --
``table`` and ``store`` import ``_scan``/``_display``/``_plot``, never the reverse.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import polars as pl

from bt_frames.storage import blocks as blk
from bt_frames.storage.recovery import Recovery
from bt_frames.storage.snapshot import Snapshot


class TableView(Protocol):
    """A table as views and scans see it."""

    _closed: bool
    _dropped: bool

    @property
    def name(self) -> str: ...
    @property
    def path(self) -> Path: ...
    @property
    def schema(self) -> pl.Schema: ...
    @property
    def time_column(self) -> str | None: ...
    @property
    def max_block_rows(self) -> int: ...
    @property
    def read_only(self) -> bool: ...
    @property
    def health(self) -> Any: ...
    @property
    def wal_state(self) -> dict[str, Any]: ...

    recovery: Recovery

    def snapshot(self) -> Snapshot: ...
    def time_range(self) -> tuple[Any, Any] | None: ...


class ScanSource(TableView, Protocol):
    """A table as ``_scan`` reads it: pinned snapshots, and a record of what each read did."""

    def _snapshot(self, *, pin: bool, as_of: int | None = None) -> Snapshot: ...
    def _repin(self, token: int, blocks: Sequence[blk.BlockInfo]) -> int: ...

    def _unpin(self, token: int | None) -> None: ...
    def _record_scan(self, report: Any, read: Any) -> None: ...
    def refresh(self) -> None: ...


class StoreView(Protocol):
    """A store as views see it."""

    _closed: bool

    @property
    def path(self) -> Path: ...
    @property
    def read_only(self) -> bool: ...
    @property
    def durability(self) -> str: ...
    @property
    def tables(self) -> list[str]: ...

    def table(self, name: str) -> Any: ...
