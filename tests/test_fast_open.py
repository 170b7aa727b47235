"""The shortcuts that make opening a many-block store cheap (issue 9 §4) keep every guarantee.

Each test here targets one shortcut that could hide a defect: a lazily
imported dependency, a folder listing instead of per-file checks, statistics
taken from the cache frame instead of per-block objects.
"""

from __future__ import annotations

import copy
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

import bt_frames as bt
from bt_frames.storage import blocks as blk
from bt_frames.storage import layout as bt_layout
from bt_frames.storage import manifest as mf
from tests.conftest import ORDERS_SCHEMA, make_orders

ROOT = Path(__file__).resolve().parents[1]


def _child(code: str, *args: str) -> dict[str, object]:
    """Run ``code`` in a fresh interpreter (this checkout first on the path); its last stdout line is JSON."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr
    out: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


def _small_store(path: Path, appends: int = 3) -> None:
    with bt.BacktraceStore(path) as s:
        t = s.create_table("orders", ORDERS_SCHEMA, time_column="ts", max_block_rows=10)
        for i in range(appends):
            t.append(make_orders(10, start=10 * i))
        t.flush()


def test_a_reader_process_never_imports_filelock(store_path: Path) -> None:
    """Readers take no lock, so opening read-only and scanning must not import ``filelock``
    (test_locking.py checks that writers still lock)."""
    _small_store(store_path)
    out = _child(
        "import sys, json, bt_frames as bt\n"
        "s = bt.open(sys.argv[1], read_only=True)\n"
        "n = s['orders'].scan().collect().height\n"
        "after_read = 'filelock' in sys.modules\n"
        "s.close()\n"
        "w = bt.open(sys.argv[1])\n"
        "locked = 'filelock' in sys.modules\n"
        "w.close()\n"
        "print(json.dumps({'rows': n, 'after_read': after_read, 'writer_imports': locked}))",
        str(store_path),
    )
    assert out == {"rows": 30, "after_read": False, "writer_imports": True}


def test_scan_result_is_unchanged_by_the_fast_paths(store_path: Path) -> None:
    """Sanity anchor for the tests below: a read-only open of a many-block table reads what was appended."""
    _small_store(store_path, appends=12)
    with bt.BacktraceStore(store_path, read_only=True) as s:
        t = s["orders"]
        assert t.recovery.blocks == 12
        got = t.scan().filter(pl.col("qty") > 0).collect()
        assert got.equals(pl.concat([make_orders(10, start=10 * i) for i in range(12)]))


# -- per-block objects built in bulk ------------------------------------------------------------------------------


def test_block_infos_built_from_the_cache_frame_equal_those_read_from_footers(store_path: Path) -> None:
    """The bulk path (names, LSNs, parts, rows, bytes from the stats frame's columns) gives the very
    BlockInfos that parsing the names and reading the footers gives."""
    _small_store(store_path, appends=12)
    with bt.BacktraceStore(store_path, read_only=True) as s:
        t = s["orders"]
        assert t.recovery.stats_cache == "fresh"
        assert t.recovery.blocks_from_footer == 0
        cached = list(t._blocks)
    (store_path / "orders" / "stats.arrow").unlink()
    with bt.BacktraceStore(store_path, read_only=True) as s:
        t = s["orders"]
        assert t.recovery.blocks_from_footer == 12
        footer = list(t._blocks)
    assert cached == footer
    for c, f in zip(cached, footer, strict=True):
        assert (c.name, c.file, c.filename, c.rows, c.bytes) == (f.name, f.file, f.filename, f.rows, f.bytes)
        assert c.name == bt_layout.parse_block_name(c.filename)
        assert c.path == Path(f.file)
        assert c.path.is_file()
        assert c.columns is None
        assert f.columns is not None


def test_block_info_is_immutable_and_equal_by_identity_fields_only(tmp_path: Path) -> None:
    df = make_orders(5)
    name = bt_layout.BlockName(1, 1, 1, 1, "0123456789abcdef")
    a = blk.BlockInfo(name, tmp_path / str(name), 5, 100, blk.compute_stats(df))
    b = blk.BlockInfo(name, str(tmp_path / str(name)), 5, 100, None)
    assert isinstance(a.file, str)
    assert a.file == b.file
    assert a.filename == str(name)
    assert a.path == tmp_path / str(name)
    assert a == b
    assert hash(a) == hash(b)
    assert a != blk.BlockInfo(name, b.file, 6, 100, None)
    assert a != (name, b.file, 5, 100, None, str(name))  # not equal to a bare tuple
    with pytest.raises(AttributeError):
        a.rows = 6  # type: ignore[misc]
    assert copy.copy(a) == a
    assert pickle.loads(pickle.dumps(b)) == b
    assert blk.BlockInfo.of_cached(name, str(tmp_path) + os.sep, str(name), 5, 100) == b
    many = blk.BlockInfo.of_cached_many([name], str(tmp_path) + os.sep, [str(name)], [5], [100])
    assert many == [b]
    assert many[0].columns is None
    assert many[0].filename == str(name)


def test_block_entry_validates_once_and_apply_keeps_lsn_order() -> None:
    with pytest.raises(ValueError, match="not a block file name"):
        mf.BlockEntry("not-a-block.parquet", 1, 1)
    with pytest.raises(ValueError, match="not a block file name"):
        mf.BlockEntry(str(bt_layout.BlockName(5, 4, 1, 1, "0" * 16)), 1, 1)  # first LSN after the last

    def e(first: int, last: int, part: int = 1, nparts: int = 1) -> mf.BlockEntry:
        return mf.BlockEntry(str(bt_layout.BlockName(first, last, part, nparts, f"{first:016x}")), 10, 100)

    s1 = mf.State().apply(mf.Edit("append", add=[e(1, 1), e(2, 2)]), 1, "t")
    s2 = s1.apply(mf.Edit("append", add=[e(3, 3, 1, 2), e(3, 3, 2, 2)]), 2, "t")  # in order: appended
    assert [b.name[:3] for b in s2.blocks] == [(1, 1, 1), (2, 2, 1), (3, 3, 1), (3, 3, 2)]
    assert [b.name[:3] for b in s1.blocks] == [(1, 1, 1), (2, 2, 1)]  # apply left s1 alone
    # a compaction: its output lands before later blocks, so the list is sorted, not appended to
    s3 = s2.apply(mf.Edit("compact", add=[e(1, 2)], remove=[s2.blocks[0].block, s2.blocks[1].block]), 3, "t")
    assert [b.name[:3] for b in s3.blocks] == [(1, 2, 1), (3, 3, 1), (3, 3, 2)]
    # an edit whose own entries are out of order is sorted too
    s4 = s3.apply(mf.Edit("append", add=[e(4, 4, 2, 2), e(4, 4, 1, 2)]), 4, "t")
    assert [b.name[:3] for b in s4.blocks][-2:] == [(4, 4, 1), (4, 4, 2)]
    assert s4.added[s4.blocks[-1].block] == 4
    assert s4.block_lsn == 4
    assert e(1, 1) == e(1, 1)
    assert hash(e(1, 1)) == hash(e(1, 1))
    assert e(1, 1) != e(2, 2)


# -- checks that stayed, on the faster path ----------------------------------------------------------------------


@pytest.mark.parametrize("read_only", [True, False])
def test_a_missing_named_block_of_many_is_corruption_at_open(store_path: Path, read_only: bool) -> None:
    _small_store(store_path, appends=40)
    blocks = sorted((store_path / "orders" / "blocks").glob("*.parquet"))  # not the Delta log's folder
    assert len(blocks) == 40
    victim = blocks[17]
    victim.unlink()
    with pytest.raises(bt.CorruptionError) as info:
        bt.BacktraceStore(store_path, read_only=read_only)["orders"]
    assert victim.name in str(info.value)
    assert "is missing" in str(info.value)
    assert sorted((store_path / "orders" / "blocks").glob("*.parquet")) == blocks[:17] + blocks[18:]  # none deleted


def test_a_manifest_row_count_that_disagrees_with_the_cache_is_corruption(store_path: Path) -> None:
    """Rows are compared as whole lists now; a single differing block must still be caught and named."""
    _small_store(store_path, appends=5)
    from bt_frames.storage import catalog

    stats_path = store_path / "orders" / "stats.arrow"
    cache, state = catalog._read_cache(stats_path, bt.BacktraceStore(store_path, read_only=True)["orders"].schema)
    assert cache is not None
    assert state == "fresh"
    catalog.write_cache(
        store_path / "orders",
        cache.with_columns(pl.when(pl.int_range(pl.len()) == 3).then(7).otherwise(pl.col("rows")).alias("rows")),
        bt.BacktraceStore(store_path, read_only=True)["orders"].schema,
    )
    with pytest.raises(bt.CorruptionError) as info:
        bt.BacktraceStore(store_path, read_only=True)["orders"]
    assert "holds 7 rows" in str(info.value)
    assert cache["block"][3] in str(info.value)


def _bn(first: int, last: int, part: int = 1, nparts: int = 1) -> str:
    return str(bt_layout.BlockName(first, last, part, nparts, f"{first:016x}"))


BAD_NAMES = {
    "empty": "",
    "junk before": "x" + _bn(1, 1),
    "junk after": _bn(1, 1) + ".bak",
    "two names in one": _bn(1, 1) + "\n" + _bn(2, 2),
    "trailing newline": _bn(1, 1) + "\n",
    "part 0": _bn(1, 1).replace(".1of1.", ".0of1."),
    "part above count": _bn(1, 1).replace(".1of1.", ".3of2."),
    "first after last": _bn(1, 1).replace("-00000000000000000001.", "-00000000000000000000.", 1),
    "upper-case digest": _bn(10, 10).upper().replace("OF", "of").replace(".PARQUET", ".parquet"),
    "tmp file": f".{_bn(1, 1)}.123.tmp",
}


@pytest.mark.parametrize("bad", list(BAD_NAMES))
def test_bulk_name_parsing_rejects_exactly_what_parsing_one_by_one_rejects(bad: str) -> None:
    good = [_bn(1, 1), _bn(2, 5), _bn(6, 6, 1, 12), _bn(6, 6, 12, 12)]
    assert bt_layout.parse_block_names(good) == [bt_layout.parse_block_name(n) for n in good]
    assert bt_layout.parse_block_names([]) == []
    name = BAD_NAMES[bad]
    assert bt_layout.parse_block_name(name) is None
    for at in range(len(good) + 1):
        assert bt_layout.parse_block_names([*good[:at], name, *good[at:]]) is None


def test_names_the_bulk_parser_declines_still_parse_one_by_one() -> None:
    """Decimal digits other than ASCII ones parse one by one (as they always did); the bulk path declines them."""
    arabic = str.maketrans("0123456789", "".join(map(chr, range(0x660, 0x66A))))
    odd = _bn(3, 3)[:20].translate(arabic) + _bn(3, 3)[20:]
    assert bt_layout.parse_block_name(odd) == bt_layout.BlockName(3, 3, 1, 1, f"{3:016x}")
    assert bt_layout.parse_block_names([_bn(1, 2), odd]) is None
    docs = [{"block": n, "rows": 1, "bytes": 2} for n in (_bn(1, 2), odd)]
    assert mf._entries(docs) == [mf._entry(d) for d in docs]
    assert [e.name for e in mf._entries(docs)] == [bt_layout.parse_block_name(d["block"]) for d in docs]


def test_a_bad_entry_in_a_big_manifest_version_is_corruption_naming_the_version(store_path: Path) -> None:
    """The bulk path falls back to one-by-one parsing, which raises the precise error, for any odd entry."""
    _small_store(store_path, appends=3)
    mdir = store_path / "orders" / mf.MANIFEST_DIR
    with bt.BacktraceStore(store_path, read_only=True) as s:
        assert s["orders"].recovery.blocks == 3
    for entry, expect in [
        ({"block": "nonsense.parquet", "rows": 10, "bytes": 1}, "is not a block file name"),
        ({"block": _bn(1, 1).replace(".1of1.", ".2of1."), "rows": 10, "bytes": 1}, "is not a block file name"),
        ({"block": _bn(1, 1), "rows": "ten", "bytes": 1}, "invalid literal"),
        ({"rows": 10, "bytes": 1}, "'block'"),
    ]:
        newest = max(mdir.iterdir())
        backup = newest.read_bytes()
        doc = json.loads(backup)
        doc["add"] = [*doc["add"], entry]  # a version file that is intact but says something impossible
        doc.pop("xxh3")
        doc["xxh3"] = blk.hash_bytes(mf._canonical(doc))
        newest.write_text(json.dumps(doc))
        with pytest.raises(bt.CorruptionError) as info:
            bt.BacktraceStore(store_path, read_only=True)["orders"]
        assert newest.name in str(info.value)
        assert expect in str(info.value)
        newest.write_bytes(backup)


def _loop_says_whole(monkeypatch: pytest.MonkeyPatch, state: mf.State) -> bool:
    from bt_frames.storage import recovery

    with monkeypatch.context() as m:
        m.setattr(recovery, "_chain_is_whole", lambda _names: False)  # the checking loop alone
        try:
            recovery._check_block_chain(Path("/nonexistent/blocks"), state)
        except bt.CorruptionError:
            return False
    return True


def test_the_one_pass_chain_check_never_passes_what_the_loop_rejects(monkeypatch: pytest.MonkeyPatch) -> None:
    """Random block lists, whole and damaged: whenever the fast check says whole, the loop agrees; and a
    whole chain takes the fast path (else it would be no shortcut)."""
    import random

    from bt_frames.storage import recovery

    rng = random.Random(9)
    for trial in range(400):
        sets, lsn = [], 1
        for _ in range(rng.randint(0, 6)):
            width, nparts = rng.choice([0, 0, 2]), rng.choice([1, 1, 3])
            sets.append([(lsn, lsn + width, p, nparts) for p in range(1, nparts + 1)])
            lsn += width + 1
        rows = [r for s in sets for r in s]
        if trial % 2 and rows:  # damage it: drop, repeat, shift or re-count one entry
            i = rng.randrange(len(rows))
            f, la, p, n = rows[i]
            rows[i : i + 1] = rng.choice(
                [[], [rows[i], rows[i]], [(f + 1, la + 1, p, n)], [(f, la + 1, p, n)], [(f, la, p, n + 1)]]
            )
        names = [bt_layout.BlockName(f, la, p, n, f"{f:016x}") for f, la, p, n in rows if f <= la and p <= n]
        state = mf.State(blocks=[mf.BlockEntry(str(b), 1, 1) for b in names])
        fast = recovery._chain_is_whole(names)
        whole = _loop_says_whole(monkeypatch, state)
        assert not fast or whole, rows
        if trial % 2 == 0:
            assert fast, rows
            assert whole, rows
