"""pandas in and out (imported only when pandas data is seen or asked for)."""

from __future__ import annotations

from typing import Any

import pandas as pd
import polars as pl


def from_pandas(df: pd.DataFrame, *, table: str) -> tuple[pl.DataFrame, dict[str, Any]]:
    idx = df.index
    meta: dict[str, Any] = {"columns": {str(c): str(t) for c, t in df.dtypes.items()}}
    if isinstance(idx, pd.RangeIndex) and idx.start == 0 and idx.step == 1 and idx.name is None:
        meta["index"] = {"kind": "range"}
        frame = df
    else:
        name = idx.name if idx.name is not None else "index"
        meta["index"] = {"kind": "column", "column": str(name), "name": idx.name}
        frame = df.reset_index(names=str(name))
    return pl.from_pandas(frame), meta


def to_pandas(df: pl.DataFrame, meta: dict[str, Any] | None) -> pd.DataFrame:
    out = df.to_pandas()
    if meta and meta.get("index", {}).get("kind") == "column":
        col = meta["index"]["column"]
        out = out.set_index(col)
        out.index.name = meta["index"]["name"]
    return out
