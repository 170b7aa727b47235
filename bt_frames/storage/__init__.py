"""On-disk machinery: paths, the write-ahead log, Parquet blocks, the catalog and locking.

Each on-disk artifact has exactly one owning module whose docstring is its
format specification:

- :mod:`bt_frames.storage.layout` — every path and file name, atomic writes.
- :mod:`bt_frames.storage.wal` — WAL segments and records.
- :mod:`bt_frames.storage.blocks` — Parquet blocks and their key-value metadata.
- :mod:`bt_frames.storage.catalog` — ``table.json`` and the statistics cache.
- :mod:`bt_frames.storage.locking` — the store's ``LOCK`` file.
"""
