"""Docs are checked by tests: the CLI is in the README with a working --help; the API and errors have docstrings."""

from __future__ import annotations

import inspect
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import bt_frames as bt
from bt_frames import __main__ as cli
from bt_frames import errors

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _subcommands() -> list[str]:
    parser = cli.build_parser()
    [action] = [a for a in parser._actions if a.dest == "command"]
    return sorted(action.choices)  # type: ignore[arg-type]


def test_public_subcommands_are_exactly_those_the_parser_has() -> None:
    public = [c for c in _subcommands() if not c.startswith("_")]
    assert sorted(cli.COMMANDS) == public


@pytest.mark.parametrize("command", cli.COMMANDS)
def test_every_subcommand_is_in_the_readme(command: str) -> None:
    assert re.search(rf"(python -m bt_frames|bt-frames) {command}\b", README), command


@pytest.mark.parametrize("command", cli.COMMANDS)
def test_every_subcommand_has_a_working_help(command: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "bt_frames", command, "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "COLUMNS": "100"},
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"usage: bt-frames {command} ")
    assert "PATH" in out.stdout
    parser = cli.build_parser()
    [action] = [a for a in parser._actions if a.dest == "command"]
    assert action.choices[command].description  # type: ignore[index]


def test_top_level_help_lists_every_public_subcommand() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "bt_frames", "--help"], capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 0
    for command in cli.COMMANDS:
        assert re.search(rf"^\s+{command}\s+\S", out.stdout, re.M), command


@pytest.mark.parametrize("name", [n for n in bt.__all__ if not n.startswith("__")])
def test_every_public_name_has_a_docstring(name: str) -> None:
    obj = getattr(bt, name)
    doc = obj.__doc__  # a class's own docstring (not inherited)
    assert (doc or "").strip(), f"bt_frames.{name} has no docstring"


def test_version_matches_pyproject() -> None:
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert bt.__version__ == meta["project"]["version"]


ERROR_CLASSES = [
    obj
    for _, obj in inspect.getmembers(errors, inspect.isclass)
    if issubclass(obj, BaseException) and not issubclass(obj, Warning) and obj.__module__ == errors.__name__
]
WARNING_CLASSES = [
    obj
    for _, obj in inspect.getmembers(errors, inspect.isclass)
    if issubclass(obj, Warning) and obj.__module__ == errors.__name__
]


@pytest.mark.parametrize("cls", WARNING_CLASSES, ids=lambda c: c.__name__)
def test_every_warning_is_exported_and_derives_from_bt_warning(cls: type[Warning]) -> None:
    assert cls.__name__ in errors.__all__
    assert getattr(bt, cls.__name__) is cls
    assert issubclass(cls, errors.BtWarning)
    assert (cls.__doc__ or "").strip()


def test_every_error_is_exported() -> None:
    assert len(ERROR_CLASSES) >= 10
    for cls in ERROR_CLASSES:
        assert cls.__name__ in errors.__all__, cls.__name__
        assert getattr(bt, cls.__name__) is cls, cls.__name__


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda c: c.__name__)
def test_every_error_has_a_docstring_with_an_example(cls: type[BaseException]) -> None:
    doc = cls.__doc__ or ""
    assert doc.strip(), f"{cls.__name__} has no docstring"
    assert ">>> " in doc, f"{cls.__name__}'s docstring has no example (a >>> line)"
    assert issubclass(cls, errors.BtError)


def test_readme_keeps_the_two_commands_first_and_shows_the_demo_output() -> None:
    assert README.startswith("```bash\npython3 dev.py demo ")
    first_block = README.split("```")[1]
    assert "python3 dev.py test" in first_block
    assert "What the demo prints" in README
    demo = README.split("What the demo prints", 1)[1].split("```", 2)[1]
    assert re.search(r"Recovered \d+ acknowledged appends, 0 lost", demo)
    assert "blocks pruned" in demo
