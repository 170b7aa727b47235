"""The auto-compaction policy: which runs of adjacent blocks to merge (a pure function of the block list).

Contract of :func:`plan`:

- Input: the live blocks in table order, each as ``(rows, part, nparts)``,
  and the table's ``max_block_rows``. Output: runs (``range`` of positions)
  of adjacent blocks, disjoint, each to be merged into one block, cheapest
  first. Nothing else is read; the same input gives the same plan.
- A run never holds more than ``max_block_rows`` rows and never holds a
  part of a multi-part append (``nparts > 1``: the parts of one LSN stay as
  the append wrote them, as ``Table.compact`` does). A *full* block (at least
  half of ``max_block_rows`` rows) is never an input: it is as big as a
  merge would make it. A run has at least two blocks.
- Empty blocks (0 rows, left by deletes; their LSN range keeps the chain of
  LSNs whole) are folded into an adjacent run, and a stretch of two or more
  of them is merged into one empty block (cheap: no row is rewritten).

The policy is size-tiered (Cassandra's STCS, RocksDB's universal
compaction) with fanout ``F``. A block's tier is ``floor(log_F(rows))``.
For t = 0, 1, ... the blocks of tier <= t are scanned in windows of
adjacent blocks, left to right; a window is merged when

- its rows reach ``F`` times its largest block (the size-ratio rule: blocks
  of equal size merge ``F`` at a time into a block of the next tier), or
- it holds at least ``F * (t + 1)`` non-empty blocks and ``F**(t+1)`` rows
  (the fallback for mixed sizes, where a large block among small ones would
  stall the ratio rule; with equal sizes no tier holds ``F`` blocks, so
  the tiers below t hold fewer than ``F * t`` and it never fires early), or
- it is full (at least half of ``max_block_rows``) and the next block
  would take it past ``max_block_rows``.

Every rule makes a block bigger than each of its inputs by a factor of F
or into the next tier (or a full block), so a row is rewritten at most
about ``log_F(max_block_rows / flush rows) + 1`` times: that is the write
amplification. Lower tiers are planned first: the cheapest runs come first.

``FANOUT`` (``F``) = 24, from :func:`simulate` (``tests/storage/test_compaction_plan.py``):

====================================  ===========  ==============
max_block_rows=100_000                 live blocks  rows rewritten
====================================  ===========  ==============
10,000 flushes of 10 rows                       41           1.98x
10,000 flushes of 1-50 rows                     32           2.59x
10,000 heavy-tailed (5 x Pareto 1.2)            85           1.32x
100,000 flushes of 10 rows                      50           2.88x
====================================  ===========  ==============

F=16 rewrites 2.8x-3.7x (more tiers); F=32 leaves 49-358 blocks.
"""

from __future__ import annotations

from collections.abc import Sequence

FANOUT = 24


def tier(rows: int, fanout: int = FANOUT) -> int:
    """``floor(log_fanout(rows))`` for ``rows >= 1`` (-1 for an empty block)."""
    if rows <= 0:
        return -1
    t, bound = 0, fanout
    while rows >= bound:
        t += 1
        bound *= fanout
    return t


def full_rows(max_block_rows: int) -> int:
    """Blocks of at least this many rows are full: never merged."""
    return max(1, max_block_rows // 2)


def plan(blocks: Sequence[tuple[int, int, int]], max_block_rows: int, fanout: int = FANOUT) -> list[range]:
    """The runs of adjacent blocks to merge (see the module docstring): ``blocks`` are ``(rows, part, nparts)``."""
    if fanout < 2:
        raise ValueError(f"fanout must be at least 2, not {fanout}")
    n = len(blocks)
    full = full_rows(max_block_rows)
    rows = [b[0] for b in blocks]
    eligible = [b[2] == 1 and b[0] < full for b in blocks]
    tiers = [tier(r, fanout) for r in rows]
    taken = [False] * n
    runs: list[range] = []

    def emit(start: int, stop: int) -> None:
        runs.append(range(start, stop))
        for k in range(start, stop):
            taken[k] = True

    top = max((t for t, ok in zip(tiers, eligible, strict=True) if ok), default=-1)
    for t in range(top + 1):
        need = fanout ** (t + 1)
        i = 0
        while i < n:
            if not (eligible[i] and not taken[i] and tiers[i] <= t):
                i += 1
                continue
            start, acc, count, biggest = i, 0, 0, 0  # a window [start, j) of blocks of tier <= t
            j = i
            while j < n and eligible[j] and not taken[j] and tiers[j] <= t:
                r = rows[j]
                if acc + r > max_block_rows:  # the window cannot grow: merge it if it is full, else drop its start
                    if count >= 2 and acc >= full:
                        emit(start, j)
                        start, acc, count, biggest = j, 0, 0, 0
                    else:
                        while acc + r > max_block_rows:
                            acc -= rows[start]
                            count -= rows[start] > 0
                            start += 1
                        biggest = max(rows[start:j], default=0)
                acc += r
                count += r > 0
                biggest = max(biggest, r)
                j += 1
                if count >= 2 and (acc >= fanout * biggest or (count >= fanout * (t + 1) and acc >= need)):
                    while j < n and eligible[j] and not taken[j] and rows[j] == 0:
                        j += 1  # fold the empty blocks that follow
                    emit(start, j)
                    start, acc, count, biggest = j, 0, 0, 0
            i = j
    i = 0
    while i < n:  # stretches of empty blocks no run took
        j = i
        while j < n and eligible[j] and not taken[j] and rows[j] == 0:
            j += 1
        if j - i >= 2:
            runs.append(range(i, j))
        i = max(j, i + 1)
    return runs


def simulate(flushes: Sequence[int], max_block_rows: int, fanout: int = FANOUT) -> tuple[list[int], int]:
    """Blocks of ``flushes`` rows published one by one, each followed by merging every planned run until
    none is left: (the final blocks' rows, rows rewritten). For tests and for choosing ``FANOUT``."""
    live: list[int] = []
    rewritten = 0
    for f in flushes:
        live.append(f)
        while runs := plan([(r, 1, 1) for r in live], max_block_rows, fanout):
            run = runs[0]
            merged = sum(live[run.start : run.stop])
            rewritten += merged
            live[run.start : run.stop] = [merged]
    return live, rewritten
