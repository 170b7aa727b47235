"""``PinSet``: which block files running reads use, so housekeeping never deletes them under a read.

A read pins the blocks of its snapshot before the table's lock is released
(LevelDB's ``Version::Ref``), narrows the pin to the blocks its plan keeps,
and releases it when it ends (``Version::Unref``). A retired block file is
deleted only when no pin holds it.

Pinning costs O(1) whatever the number of blocks: a pin holds the
snapshot's tuple of blocks itself, and only :meth:`PinSet.holds` -- asked
when retired files are purged, which is rare -- looks inside the pins.
The caller serialises every call (the table's lock).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from bt_frames.storage import blocks as blk


class PinSet:
    def __init__(self) -> None:
        self._held: dict[int, Sequence[blk.BlockInfo]] = {}
        self._tokens = itertools.count(1)
        self._names: frozenset[str] | None = frozenset()  # the pinned file names, or None: to be recomputed

    def pin(self, blocks: Sequence[blk.BlockInfo]) -> int:
        """Pin ``blocks`` (kept as given: pass an immutable sequence); the token releases them."""
        token = next(self._tokens)
        self._held[token] = blocks
        if blocks:
            self._names = None
        return token

    def unpin(self, token: int) -> bool:
        """Release one pin; True if it held any block (a retired file may now be free to delete)."""
        blocks = self._held.pop(token, None)
        if blocks:
            self._names = None
            return True
        return False

    def holds(self, filename: str) -> bool:
        """Whether any running read pins the block file ``filename``."""
        if self._names is None:
            self._names = frozenset(b.filename for blocks in self._held.values() for b in blocks)
        return filename in self._names

    def __len__(self) -> int:
        return len(self._held)
