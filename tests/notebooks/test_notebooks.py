"""The notebooks run top to bottom (so they never rot) and print what they promise."""

from __future__ import annotations

import os
import re
from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"

# key lines each notebook must print (regular expressions)
EXPECTED = {
    "01_quickstart.ipynb": [r"60,000 rows: \d[\d,]* in blocks, \d[\d,]* hot", r"blocks pruned", r"round trip OK"],
    "02_crash_recovery.ipynb": [
        r"writer killed by signal 9 after \d+ acknowledged appends",
        r"torn tail",
        r"Recovered \d+ acknowledged appends, 0 lost",
    ],
    "03_columnar_vs_rows.ipynb": [r"columnar read \d+% of the bytes", r"column store .* faster"],
    "04_pruning.ipynb": [
        r"scanned 1 of 50 blocks",
        r"min/max alone would scan 50 of 50 blocks",
        r"with distinct sets: scanned 3 of 50 blocks",
        r"verdicts: 0 none, 50 some, 0 all; 50/50 blocks answered from metadata",
        r"ETH orders: 50 of 50 blocks answered from metadata, 0 rows read from block files -- rows counted "
        r"without reading a byte",
        r"ts >= 101 h: 36 blocks none, 13 all, 1 some",
        r"identical \d+ rows",
    ],
    "05_lifecycle.ipynb": [
        r"deleted 23,400 rows: 7 blocks replaced, 1 read \(6 retired unread\), 41 untouched",
        r"update: 3,600 rows replaced by 3,600; blocks read: 0, 1 replaced",
        r"upsert: 3 rows replaced, 2 new; 3 blocks read, 3 replaced",
        r"venue added in version \d+ \(no block rewritten\): 3 rows on XNAS; 44 of 45 blocks skipped unread",
        r"version \d+ \(before the delete\): 172,800 rows; now: 149,405 rows",
        r"hour 10's prices summed as of .* \(before the update\): 90,221,288.25; now: 91,123,501.43",
        r"vacuum freed [\d,]+ bytes: \d+ retired block files deleted",
        r"as_of after vacuum: table 'orders': version \d+ needs block .* which was deleted by vacuum",
        r"retention 24 h: 63,004 rows dropped in \d+ version\(s\); the table now spans 01-02 00:00 to 01-03 00:00",
    ],
    "06_scale_out.ipynb": [
        r"to_dask: 6 partitions = 6 surviving blocks of 16",
        r"whole table: 17 partitions = 16 blocks \+ 1 of hot rows",
        r"known divisions: True",
        r"one hour of day 2: 1 partition\(s\) of 6 read",
        r"Dask groupby equals Polars: True",
        r"to_dask\(\)\.compute\(\) equals to_pandas\(\): True",
        r"DuckDB read_parquet over the file list: 518,400 rows; to_dask: 518,400 rows",
        r"pl\.scan_delta equals scan\(\): True \(1,387,400 rows\)",
        r"DuckDB delta_scan equals scan\(\): True",
    ],
}


def _text(cell: nbformat.NotebookNode) -> str:
    parts = []
    for out in cell.get("outputs", []):
        if out.get("output_type") == "stream":
            parts.append(out.get("text", ""))
        elif "data" in out:
            parts.append(out["data"].get("text/plain", ""))
    return "".join(parts)


def test_every_notebook_is_tested() -> None:
    assert sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_committed_without_outputs(name: str) -> None:
    book = nbformat.read(NOTEBOOKS / name, as_version=4)
    for cell in book.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{name}: outputs committed; strip them"
            assert cell.execution_count is None, f"{name}: execution counts committed; strip them"


@pytest.mark.notebook
@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_notebook_runs_and_prints_its_story(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from nbclient import NotebookClient

    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("BT_FRAMES_PROGRESS", "0")
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the notebooks' tempfile.mkdtemp() lands in tmp_path
    monkeypatch.setenv("PYTHONWARNINGS", "error::DeprecationWarning:bt_frames")
    book = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = NotebookClient(book, timeout=240, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    client.execute(env=dict(os.environ))
    printed = "\n".join(_text(c) for c in book.cells if c.cell_type == "code")
    for pattern in EXPECTED[name]:
        assert re.search(pattern, printed), f"{name} did not print {pattern!r}; it printed:\n{printed[-3000:]}"
