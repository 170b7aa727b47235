"""HotBuffer: the consolidation as a pure function (``merged``) gives what ``add`` gives, and changes nothing."""

from __future__ import annotations

import polars as pl
from polars.testing import assert_frame_equal

from bt_frames.storage.hot import FANOUT, HotBuffer


def _chunk(i: int) -> pl.DataFrame:
    return pl.DataFrame({"a": [2 * i, 2 * i + 1]})


def test_merged_is_add_without_changing_its_inputs() -> None:
    plain, staged = HotBuffer(), HotBuffer()
    n = FANOUT * FANOUT + 3  # two levels of merges, and a few chunks left over
    for i in range(n):
        plain.add(i + 1, _chunk(i), 10)
        before_chunks, before_levels = list(staged.chunks), list(staged.levels)
        chunks, levels = HotBuffer.merged(staged.chunks, staged.levels, _chunk(i))
        assert staged.chunks == before_chunks  # nothing changed until add_merged
        assert staged.levels == before_levels
        staged.add_merged(i + 1, 2, 10, chunks, levels)
        assert staged.levels == plain.levels
    assert plain.levels == [2, 0, 0, 0]
    assert (staged.rows, staged.records, staged.bytes) == (plain.rows, plain.records, plain.bytes) == (2 * n, n, 10 * n)
    assert (staged.first_lsn, staged.last_lsn) == (1, n)
    assert_frame_equal(pl.concat(staged.chunks), pl.concat(plain.chunks))
    assert_frame_equal(pl.concat(staged.chunks), pl.DataFrame({"a": list(range(2 * n))}))
    frozen = staged.take()
    assert frozen.rows == 2 * n
    assert not staged
    assert staged.chunks == []
