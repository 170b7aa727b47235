"""pytest plugin: run pandas' own IO round-trip tests and keep every frame they write.

Loaded only in the child process that ``collect_frames`` starts (``-p tests.pandas_suite.capture``),
never in the project's own test run. It wraps ``DataFrame.to_parquet``, ``DataFrame.to_feather`` and
``pandas.io.feather_format.to_feather`` (which ``test_feather.py`` imports by name) so that each frame is
pickled, before pandas writes it, into ``$BT_PANDAS_SUITE_OUT/<sha1 of the pickle>.pkl`` (equal frames
are stored once). The wrapped writer then runs as usual, so pandas' tests pass or fail as they always do;
their outcome does not matter here.
"""

from __future__ import annotations

import hashlib
import os
import pickle
from pathlib import Path
from typing import Any

import pandas as pd
import pandas.io.feather_format as feather_format

_OUT = Path(os.environ.get("BT_PANDAS_SUITE_OUT", "."))


def _keep(df: object, source: str) -> None:
    if not isinstance(df, pd.DataFrame):
        return
    try:
        blob = pickle.dumps((df, source), protocol=pickle.HIGHEST_PROTOCOL)
        key = hashlib.sha1(pickle.dumps(df, protocol=pickle.HIGHEST_PROTOCOL)).hexdigest()
    except Exception:  # a frame that cannot be pickled (a lambda in an object column...): not a round-trip case
        return
    path = _OUT / f"{key}.pkl"
    if not path.exists():
        path.write_bytes(blob)


def _wrap(fn: Any, source: str) -> Any:
    def wrapper(df: Any, *args: Any, **kwargs: Any) -> Any:
        _keep(df, source)
        return fn(df, *args, **kwargs)

    wrapper.__wrapped__ = fn  # type: ignore[attr-defined]
    return wrapper


def pytest_configure(config: Any) -> None:
    _OUT.mkdir(parents=True, exist_ok=True)
    pd.DataFrame.to_parquet = _wrap(pd.DataFrame.to_parquet, "to_parquet")  # type: ignore[method-assign]
    pd.DataFrame.to_feather = _wrap(pd.DataFrame.to_feather, "to_feather")  # type: ignore[method-assign]
    feather_format.to_feather = _wrap(feather_format.to_feather, "to_feather")
