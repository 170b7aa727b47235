"""pandas' own IO round-trip tests, with bt_frames as the storage (see roundtrip.py for the rules).

Every frame the installed pandas' tests/io/test_parquet.py and test_feather.py write (plus the frames of
the round-trip bug report) goes through append, append again, reopen and small blocks; each must come
back exactly (``assert_frame_equal`` and ``attrs``) or be refused for a documented reason with a message
that says how to fix it. Marked slow: it runs pandas' IO tests in a child pytest (~30 s) and bt_frames
over ~130 frames (~40 s).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.pandas_suite import roundtrip


@pytest.mark.slow
def test_every_frame_pandas_io_tests_write_round_trips(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    results = roundtrip.run_all(tmp_path)
    waiting = not roundtrip.empty_append_keeps_pandas_meta()
    with capsys.disabled():
        print("\n" + roundtrip.summary(results))
        if waiting:
            n = sum(1 for r in results if r.status == "wrong" and r.df is not None and len(r.df) == 0)
            print(f"{n} zero-row frame(s) wrong, waiting for bt_frames/table.py (see empty_append_keeps_pandas_meta)")
    found = roundtrip.problems(results, waiting=waiting)
    assert not found, f"{len(found)} frame(s) not round-tripped:\n\n" + "\n\n".join(p[:1500] for p in found)
