"""Shared fixtures of the storage tests.

A module that builds a store once defines ``pristine`` (module-scoped: the store's root and
the rows it holds); ``copy`` gives each test its own byte-for-byte copy to damage.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import polars as pl
import pytest


@pytest.fixture
def copy(pristine: tuple[Path, pl.DataFrame], tmp_path: Path) -> tuple[Path, pl.DataFrame]:
    """A byte-for-byte copy of the pristine store at a new path: no block of it was verified in this process."""
    root, data = pristine
    dest = tmp_path / "db"
    shutil.copytree(root, dest)
    return dest, data
