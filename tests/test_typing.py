"""Users' type checkers see bt_frames' annotations (PEP 561: the ``py.typed`` marker ships in the package).

Without ``bt_frames/py.typed`` mypy treats the installed package as untyped: every ``bt.*`` is ``Any``
and wrong calls pass silently. The test installs this checkout the way ``pip install -e .`` with
hatchling does -- a ``.pth`` line naming the source folder, in a throwaway environment's
site-packages -- and runs mypy on a user script against it.
"""

from __future__ import annotations

import os
import re
import site
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest

import bt_frames

pytest.importorskip("mypy")

REPO = Path(bt_frames.__file__).resolve().parents[1]  # the checkout under test (not whichever copy pip installed)

USER_SCRIPT = textwrap.dedent(
    """
    import polars as pl

    import bt_frames as bt

    store = bt.BacktraceStore("db", durability="none")
    table = store.create_table("orders", {"ts": pl.Datetime("us", "UTC"), "x": pl.Int64}, time_column="ts")
    reveal_type(store)
    reveal_type(table)
    reveal_type(table.append(pl.DataFrame()))
    bt.BacktraceStore("db", durability="sometimes")  # WRONG: durability
    bt.BacktraceStore(42)  # WRONG: path
    store.create_table("orders", max_block_rows="many")  # WRONG: max_block_rows
    rows: str = table.rows  # WRONG: rows
    """
)


def _editable_env(root: Path) -> Path:
    """A throwaway environment where bt_frames is installed as hatchling's editable install does it.

    Its site-packages has one ``.pth`` line naming the checkout (what ``_editable_impl_bt_frames.pth`` holds)
    and one naming this interpreter's site-packages (for polars, pandas-stubs, ...). Returns its python.
    """
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True, timeout=120)
    python = root / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.strip()
    ours = [sysconfig.get_path("purelib"), *site.getsitepackages()]
    Path(purelib, "_editable_impl_bt_frames.pth").write_text(f"{REPO}\n")
    Path(purelib, "zz_outer_site_packages.pth").write_text("".join(f"{p}\n" for p in dict.fromkeys(ours)))
    return python


@pytest.mark.timeout(300)
def test_mypy_checks_user_code_against_bt_frames_annotations(tmp_path: Path) -> None:
    assert (REPO / "bt_frames" / "py.typed").is_file(), "bt_frames/py.typed is missing: PEP 561 marker"
    python = _editable_env(tmp_path / "env")
    found = subprocess.run(
        [str(python), "-c", "import bt_frames; print(bt_frames.__file__)"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        cwd=tmp_path,
    ).stdout.strip()
    assert Path(found).resolve().parent == REPO / "bt_frames"  # the throwaway env imports this checkout

    config = tmp_path / "mypy.ini"
    config.write_text("[mypy]\n")  # the user's defaults, not this repo's settings
    script = tmp_path / "user.py"
    script.write_text(USER_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MYPYPATH")}  # only the .pth finds it
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--python-executable",
            str(python),
            "--cache-dir",
            str(tmp_path / "mypy_cache"),
            "--config-file",
            str(config),
            "--hide-error-context",
            "--no-pretty",
            str(script.name),
        ],
        capture_output=True,
        text=True,
        timeout=280,
        cwd=tmp_path,
        env=env,
        check=False,
    )
    report = out.stdout + out.stderr
    assert "import-untyped" not in report, f"mypy ignored bt_frames' annotations:\n{report}"
    assert "missing library stubs or py.typed" not in report, report

    wrong = [i for i, line in enumerate(USER_SCRIPT.splitlines(), start=1) if "# WRONG" in line]
    errors = [int(m[1]) for m in re.finditer(r"^user\.py:(\d+): error:", report, re.MULTILINE)]
    assert errors == wrong, report  # each wrong use reported once, no right one
    assert re.search(
        r'Argument "durability" to "BacktraceStore" has incompatible type "Literal\[.sometimes.\]"', report
    )
    assert re.search(r'Argument 1 to "BacktraceStore" has incompatible type "int"', report), report
    revealed = re.findall(r'Revealed type is "([^"]+)"', report)
    assert revealed[:2] == ["bt_frames.store.BacktraceStore", "bt_frames.table.Table"], report
    assert re.fullmatch(r"(builtins\.)?int \| None|Union\[builtins\.int, None\]", revealed[2]), report
    assert out.returncode == 1, report  # errors found (2 would be a crash or a usage error)
