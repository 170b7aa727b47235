"""bt_frames: a durable, embedded store for time-ordered dataframes.

Appends (pandas, Polars, Arrow) go through a write-ahead log into an
in-memory hot buffer, which is frozen into immutable Parquet blocks; queries
are Polars LazyFrames that skip blocks using cached statistics.

>>> import bt_frames as bt                        # doctest: +SKIP
>>> store = bt.open("trading_db")                 # doctest: +SKIP
>>> store.append("orders", df)                    # doctest: +SKIP
>>> store["orders"].scan().filter(pl.col("symbol") == "BTC").collect()  # doctest: +SKIP
"""

from __future__ import annotations

from bt_frames.errors import (
    BtError,
    BtWarning,
    CorruptionError,
    DeltaIncompatibleWarning,
    InvalidTableNameError,
    MirrorConflictError,
    MissingOptionalDependencyError,
    ObjectStoreError,
    ReadOnlyError,
    SchemaMismatchError,
    StorageIOError,
    StoreClosedError,
    StoreLockedError,
    TableDroppedError,
    TableExistsError,
    TableNotFoundError,
    UnsupportedFormatError,
    UnsupportedInputError,
)
from bt_frames.prune import PruneReport
from bt_frames.store import BacktraceStore, open
from bt_frames.table import Recovery, Table
from bt_frames.verify import VerifyReport

__version__ = "0.1.0"

from bt_frames import _accessors

_accessors.install()  # df.bt: Polars now; pandas when it is imported (bt_frames never imports pandas)

__all__ = [
    "BacktraceStore",
    "BtError",
    "BtWarning",
    "CorruptionError",
    "DeltaIncompatibleWarning",
    "InvalidTableNameError",
    "MirrorConflictError",
    "MissingOptionalDependencyError",
    "ObjectStoreError",
    "PruneReport",
    "ReadOnlyError",
    "Recovery",
    "SchemaMismatchError",
    "StorageIOError",
    "StoreClosedError",
    "StoreLockedError",
    "Table",
    "TableDroppedError",
    "TableExistsError",
    "TableNotFoundError",
    "UnsupportedFormatError",
    "UnsupportedInputError",
    "VerifyReport",
    "__version__",
    "open",
]
