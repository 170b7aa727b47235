"""The auto-compaction planner (bt_frames/storage/compaction.py): a pure function of the block list."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from bt_frames.storage import compaction as c


def test_ten_thousand_small_flushes_leave_few_blocks_and_rewrite_under_3x() -> None:
    live, rewritten = c.simulate([10] * 10_000, 100_000)
    assert sum(live) == 100_000
    assert len(live) < 50, len(live)
    assert rewritten < 3 * 100_000, rewritten / 100_000
    assert all(r <= 100_000 for r in live)


def test_mixed_and_heavy_tailed_flush_sizes_do_not_stall() -> None:
    r = random.Random(1)
    sizes = [r.randint(1, 50) for _ in range(10_000)]
    live, rewritten = c.simulate(sizes, 100_000)
    assert len(live) < 50
    assert rewritten < 3 * sum(sizes)
    r = random.Random(2)
    sizes = [int(r.paretovariate(1.2) * 5) for _ in range(10_000)]
    live, rewritten = c.simulate(sizes, 100_000)
    assert len(live) < 150
    assert rewritten < 3 * sum(sizes)


def test_equal_blocks_merge_fanout_at_a_time() -> None:
    f = c.FANOUT
    assert c.plan([(10, 1, 1)] * (f - 1), 100_000) == []
    assert c.plan([(10, 1, 1)] * f, 100_000) == [range(0, f)]


def test_full_blocks_and_parts_are_left_alone() -> None:
    full = (50_000, 1, 1)
    assert c.plan([full] * 100, 100_000) == []
    parts = [(10, p, 3) for p in (1, 2, 3)]
    assert c.plan(parts * 30, 100_000) == []


def test_empty_blocks_are_folded_into_an_adjacent_run() -> None:
    f = c.FANOUT
    blocks = [(10, 1, 1)] * (f // 2) + [(0, 1, 1)] + [(10, 1, 1)] * (f - f // 2) + [(0, 1, 1), (0, 1, 1)]
    assert c.plan(blocks, 100_000) == [range(0, len(blocks))]
    assert c.plan([(50_000, 1, 1), (0, 1, 1), (0, 1, 1), (50_000, 1, 1)], 100_000) == [range(1, 3)]
    assert c.plan([(50_000, 1, 1), (0, 1, 1), (50_000, 1, 1)], 100_000) == []


def test_a_merge_never_exceeds_max_block_rows() -> None:
    runs = c.plan([(30, 1, 1)] * 10, 100)
    assert runs
    assert all(30 * len(r) <= 100 for r in runs)


block = st.one_of(
    st.tuples(st.integers(0, 3_000), st.just(1), st.just(1)),
    st.integers(2, 4).flatmap(lambda n: st.tuples(st.integers(0, 500), st.integers(1, n), st.just(n))),
)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(block, max_size=300),
    st.integers(1, 20_000),
    st.integers(2, 30),
)
def test_any_plan_is_adjacent_disjoint_small_enough_and_splits_no_parts(
    blocks: list[tuple[int, int, int]], max_block_rows: int, fanout: int
) -> None:
    runs = c.plan(blocks, max_block_rows, fanout)
    seen: set[int] = set()
    for run in runs:
        assert run.step == 1
        assert len(run) >= 2
        assert 0 <= run.start < run.stop <= len(blocks)
        assert seen.isdisjoint(run)
        seen.update(run)
        assert sum(blocks[i][0] for i in run) <= max_block_rows
        assert all(blocks[i][2] == 1 for i in run), "a part of a multi-part append was merged"
        assert all(blocks[i][0] < c.full_rows(max_block_rows) for i in run), "a full block was merged"
