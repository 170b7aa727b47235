"""A reader's open from a statistics cache linked to the newest manifest version (catalog/manifest ``link``).

The writer records in the cache the manifest version whose blocks its rows are, with the xxh3 of every
version file a load of that version reads. A reader that finds the link current takes the state from the
cache and decodes no version. Whatever is off -- a newer version, a changed or missing version file, a
missing block, a damaged or older cache -- it decodes the manifest as before: same errors, never fewer rows.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

import bt_frames as bt
from bt_frames.storage import blocks as blk
from bt_frames.storage import catalog, layout
from bt_frames.storage import manifest as mf
from tests.conftest import ORDERS_SCHEMA, make_orders
from tests.helpers.procs import listing


def build(root: Path, n_blocks: int = 3, rows: int = 30) -> pl.DataFrame:
    frames = []
    with bt.open(root, durability="none") as store:
        t = store.create_table("orders", ORDERS_SCHEMA, time_column="ts", max_block_rows=10_000)
        for i in range(n_blocks):
            frames.append(make_orders(rows, start=i * rows))
            t.append(frames[-1])
            t.flush()
    return pl.concat(frames)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pl.DataFrame]:
    root = tmp_path_factory.mktemp("linked") / "db"
    return root, build(root)


def table_dir(root: Path) -> Path:
    return root / "orders"


def cache_path(root: Path) -> Path:
    return table_dir(root) / layout.STATS_CACHE


def header(root: Path) -> dict[str, object]:
    return catalog.split_cache(cache_path(root).read_bytes())[0]


def read(root: Path) -> tuple[bt.Recovery, pl.DataFrame, pl.DataFrame]:
    """A read-only open: its recovery report, every row, and ``table.blocks``."""
    with bt.open(root, read_only=True) as store:
        t = store.table("orders")
        return t.recovery, t.scan().collect(), t.blocks


def test_a_writer_links_the_cache_and_a_reader_decodes_no_manifest_version(
    copy: tuple[Path, pl.DataFrame], monkeypatch: pytest.MonkeyPatch
) -> None:
    root, data = copy
    link = header(root)["manifest"]
    assert isinstance(link, dict)
    versions = mf.list_versions(table_dir(root))
    assert link["version"] == versions[-1]
    start = mf.checkpoint_of(versions[-1])
    assert link["files"] == {
        str(v): blk.hash_bytes((mf.manifest_dir(table_dir(root)) / mf.version_name(v)).read_bytes())
        for v in range(start, versions[-1] + 1)
    }
    decoded: list[Path] = []
    real_decode = mf.decode
    monkeypatch.setattr(mf, "decode", lambda path, *a: decoded.append(path) or real_decode(path, *a))
    rec, rows, blocks = read(root)
    assert decoded == []  # not one version file decoded
    assert (rec.manifest_decoded, rec.stats_linked, rec.stats_cache) == (False, True, "fresh")
    assert (rec.blocks, rec.block_rows, rec.manifest_version) == (3, 90, versions[-1])
    assert_frame_equal(rows, data)
    # the same table as a reader that decodes the manifest sees
    monkeypatch.setattr(catalog, "load_linked", lambda *_a: None)
    slow, slow_rows, slow_blocks = read(root)
    assert slow.manifest_decoded
    assert len(decoded) == versions[-1] - start + 1
    assert_frame_equal(slow_rows, rows)
    assert_frame_equal(slow_blocks, blocks)
    assert (slow.blocks, slow.block_rows, slow.manifest_version) == (rec.blocks, rec.block_rows, rec.manifest_version)


def test_the_close_relinks_the_cache_to_its_version(copy: tuple[Path, pl.DataFrame]) -> None:
    """A close that records the last LSN commits a version that changes no block: the cache follows it."""
    root, data = copy
    with bt.open(root, durability="none") as store:
        store.table("orders").append(make_orders(5, start=90))  # hot rows: the close records a new next_lsn
        before = mf.list_versions(table_dir(root))[-1]
    after = mf.list_versions(table_dir(root))[-1]
    assert after == before + 1
    link = header(root)["manifest"]
    assert isinstance(link, dict)
    assert link["version"] == after
    rec, rows, _blocks = read(root)
    assert not rec.manifest_decoded
    assert_frame_equal(rows, pl.concat([data, make_orders(5, start=90)]))


def test_a_cache_linked_to_an_older_version_is_not_trusted(copy: tuple[Path, pl.DataFrame]) -> None:
    """The cache write after a publish was lost (it is not durable): the reader decodes the manifest."""
    root, data = copy
    old = cache_path(root).read_bytes()
    with bt.open(root) as store:
        t = store.table("orders")
        t.append(make_orders(30, start=90))
        t.flush()
    cache_path(root).write_bytes(old)
    rec, rows, _blocks = read(root)
    assert rec.manifest_decoded
    assert not rec.stats_linked
    assert rec.stats_cache == "stale"
    assert rec.blocks == 4
    assert_frame_equal(rows, pl.concat([data, make_orders(30, start=90)]))  # never fewer rows


def test_a_version_file_that_changed_since_the_link_is_decoded(copy: tuple[Path, pl.DataFrame]) -> None:
    """Same version number, other bytes (rewritten by hand, or another table's): the link does not hold."""
    root, data = copy
    newest = mf.manifest_dir(table_dir(root)) / mf.version_name(mf.list_versions(table_dir(root))[-1])
    doc = json.loads(newest.read_bytes())
    doc["time"] = "2000-01-01T00:00:00+00:00"  # a valid version, with its checksum made again
    doc.pop("xxh3")
    doc["xxh3"] = blk.hash_bytes(mf._canonical(doc))
    newest.write_bytes(json.dumps(doc, indent=1).encode() + b"\n")
    rec, rows, _blocks = read(root)
    assert rec.manifest_decoded
    assert_frame_equal(rows, data)


def test_a_damaged_version_file_is_corruption_naming_it_despite_the_link(copy: tuple[Path, pl.DataFrame]) -> None:
    root, _data = copy
    newest = mf.manifest_dir(table_dir(root)) / mf.version_name(mf.list_versions(table_dir(root))[-1])
    raw = newest.read_bytes()
    newest.write_bytes(raw.replace(b'"operation": "', b'"operation": "X', 1))
    before = listing(root)
    with bt.open(root, read_only=True) as store, pytest.raises(bt.CorruptionError) as exc:
        store.table("orders")
    assert exc.value.path == newest
    assert "is damaged" in str(exc.value)
    assert listing(root) == before  # a reader writes nothing


def test_a_missing_version_file_is_corruption_naming_it_despite_the_link(copy: tuple[Path, pl.DataFrame]) -> None:
    root, _data = copy
    versions = mf.list_versions(table_dir(root))
    start = mf.checkpoint_of(versions[-1])
    assert versions[-1] > start  # a version between the checkpoint and the newest
    gone = mf.manifest_dir(table_dir(root)) / mf.version_name(start + 1)
    gone.unlink()
    with bt.open(root, read_only=True) as store, pytest.raises(bt.CorruptionError) as exc:
        store.table("orders")
    assert exc.value.path == gone
    assert "is missing" in str(exc.value)


def test_a_missing_block_is_corruption_naming_it_despite_the_link(copy: tuple[Path, pl.DataFrame]) -> None:
    root, _data = copy
    assert isinstance(header(root)["manifest"], dict)
    last = blk.list_block_files(table_dir(root) / layout.BLOCKS_DIR)[-1][1]
    last.unlink()
    before = listing(root)
    with bt.open(root, read_only=True) as store, pytest.raises(bt.CorruptionError) as exc:
        store.table("orders")
    assert exc.value.path == last
    assert "LSN 3 (30 rows) are lost unless it is restored" in str(exc.value)
    assert "added by manifest version" in str(exc.value)
    assert listing(root) == before


def test_a_link_edited_without_its_checksum_makes_the_cache_corrupt(copy: tuple[Path, pl.DataFrame]) -> None:
    """The link is covered by the cache's digest: a changed next_lsn (or WAL list) is never trusted."""
    root, data = copy
    doc, body = catalog.split_cache(cache_path(root).read_bytes())
    doc["manifest"]["next_lsn"] = 1
    cache_path(root).write_bytes(catalog.encode_cache(doc, body))
    rec, rows, _blocks = read(root)
    assert (rec.stats_cache, rec.manifest_decoded) == ("corrupt", True)
    assert_frame_equal(rows, data)


def test_a_link_naming_other_versions_is_not_trusted(copy: tuple[Path, pl.DataFrame]) -> None:
    """A well-formed link whose file list is not exactly the load window (checksum made again)."""
    root, data = copy
    doc, body = catalog.split_cache(cache_path(root).read_bytes())
    link = doc["manifest"]
    assert isinstance(link, dict)
    link["files"] = {k: v for k, v in link["files"].items() if k != str(link["version"])}
    doc["xxh3"] = catalog._cache_digest(body, link)
    cache_path(root).write_bytes(catalog.encode_cache(doc, body))
    rec, rows, _blocks = read(root)
    assert (rec.stats_cache, rec.manifest_decoded) == ("fresh", True)
    assert_frame_equal(rows, data)


def test_a_version_4_cache_is_still_read_and_a_writer_links_it(copy: tuple[Path, pl.DataFrame]) -> None:
    """Caches written before the link: used for the statistics, the manifest decoded; a writer rewrites it."""
    root, data = copy
    _doc, body = catalog.split_cache(cache_path(root).read_bytes())
    schema = catalog.TableMeta.load(table_dir(root) / layout.TABLE_JSON).schema
    v4 = {
        "format": catalog.CACHE_FORMAT,
        "version": 4,
        "schema": catalog._schema_key_v4(schema),
        "xxh3": blk.hash_bytes(body),
    }
    cache_path(root).write_bytes(json.dumps(v4).encode() + b"\n" + body)  # the layout of version 4
    before = listing(root)
    rec, rows, _blocks = read(root)
    assert (rec.stats_cache, rec.blocks_from_footer, rec.manifest_decoded, rec.stats_linked) == (
        "fresh",
        0,
        True,
        False,
    )
    assert_frame_equal(rows, data)
    assert listing(root) == before  # the reader left the old cache as it was
    with bt.open(root) as store:
        assert store.table("orders").recovery.blocks_from_footer == 0
    assert header(root)["version"] == catalog.CACHE_VERSION
    rec2, rows2, _blocks = read(root)
    assert not rec2.manifest_decoded
    assert_frame_equal(rows2, data)


def test_a_link_whose_blocks_are_not_the_cache_rows_is_not_trusted(tmp_path: Path) -> None:
    """A (buggy) writer links a frame to a state whose blocks are not exactly its rows: the reader sees it."""
    root = tmp_path / "db"
    data = build(root, n_blocks=2)
    td = table_dir(root)
    frame = pl.read_ipc_stream(io.BytesIO(catalog.split_cache(cache_path(root).read_bytes())[1]))
    schema = catalog.TableMeta.load(td / layout.TABLE_JSON).schema
    catalog.write_cache(td, frame.head(1), schema, mf.link(mf.load(td)))  # one row, the link of two blocks
    before = listing(root)
    rec, rows, _blocks = read(root)
    assert (rec.blocks, rec.manifest_decoded, rec.stats_cache) == (2, True, "stale")
    assert_frame_equal(rows, data)  # never fewer rows
    assert listing(root) == before
    with bt.open(root) as store:  # a writer's open rewrites the cache, linked to what it holds
        assert store.table("orders").recovery.stats_cache == "stale"
    rec2, rows2, _blocks = read(root)
    assert (rec2.blocks, rec2.manifest_decoded) == (2, False)
    assert_frame_equal(rows2, data)


def test_cached_blocks_equal_the_block_infos_and_are_made_only_when_used(copy: tuple[Path, pl.DataFrame]) -> None:
    root, _data = copy
    with bt.open(root, read_only=True) as store:
        t = store.table("orders")
        blocks = t.snapshot().blocks
        assert isinstance(blocks, blk.CachedBlocks)
        assert blocks._made == [None, None, None]  # nothing made by the open or the snapshot
        last = blocks[-1]
        assert blocks._made[:2] == [None, None]
        assert last is blocks[2]  # made once
        footers = tuple(blk.read_block_info(p) for _n, p in blk.list_block_files(table_dir(root) / "blocks"))
        assert blocks == footers
        assert footers == blocks
        assert blocks != footers[:2]
        assert blocks[0:2] == footers[:2]
        assert [b.name for b in blocks] == [b.name for b in footers]
        assert [b.path for b in blocks] == [b.path for b in footers]
        assert hash(blocks) == hash(footers)
        assert blocks.filenames == [b.filename for b in footers]
        assert blocks.total_rows == 90
        with pytest.raises(IndexError):
            blocks[3]


def test_a_pruned_scan_of_a_linked_reader_makes_only_the_survivors(tmp_path: Path) -> None:
    root = tmp_path / "db"
    data = build(root, n_blocks=6, rows=10)
    with bt.open(root, read_only=True) as store:
        t = store.table("orders")
        assert not t.recovery.manifest_decoded
        ts = data["ts"]
        got = t.scan().filter(pl.col("ts") >= ts[35], pl.col("ts") <= ts[44]).collect()
        assert_frame_equal(got, data.slice(35, 10))
        made = t.snapshot().blocks._made  # type: ignore[attr-defined]
        assert [m is not None for m in made] == [False, False, False, True, True, False]
        assert_frame_equal(t.scan().collect(), data)  # and a full scan reads them all
