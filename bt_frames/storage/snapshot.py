"""``Snapshot``: an immutable view of a table -- its blocks and hot chunks as of one instant.

A scan plans and reads one snapshot, so one ``collect()`` sees one
consistent state. Its blocks are pinned by the table while the scan runs
(``Table._snapshot(pin=True)``), so a compaction in the same process retires
them without deleting the files under the read.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import polars as pl

from bt_frames.storage import blocks as blk


@dataclass(frozen=True)
class Snapshot:
    blocks: Sequence[blk.BlockInfo]  # a tuple, or a reader's immutable blk.CachedBlocks
    hot: tuple[pl.DataFrame, ...]
    stats: pl.DataFrame | None = field(default=None, compare=False)
    pin: int | None = field(default=None, compare=False)  # the token of its pin (Table._snapshot(pin=True))
    schema: pl.Schema | None = field(default=None, compare=False)  # the table's columns (what every read gives)
    # the schema changed since the table was created: blocks may hold an older schema (storage/evolve.py)
    evolved: bool = field(default=False, compare=False)
    # a reader of a store in a bucket: brings the blocks a read needs into the local folder (storage/remote.py)
    fetch: Callable[[Sequence[blk.BlockInfo]], None] | None = field(default=None, compare=False)

    @property
    def hot_rows(self) -> int:
        return sum(c.height for c in self.hot)
