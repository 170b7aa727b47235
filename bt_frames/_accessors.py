"""``df.bt``: the pandas accessor and the Polars namespace, registered without importing pandas.

``import bt_frames`` registers the Polars namespace at once (Polars is
imported anyway). pandas is *not* imported by bt_frames (it costs several
hundred milliseconds), so the pandas accessor is registered lazily:

1. pandas already imported (and finished initialising): register now;
2. pandas not imported yet: put a finder at the front of ``sys.meta_path``.
   When ``pandas`` is imported, the finder asks the other finders for the
   real spec and wraps that spec's loader so that, right after pandas'
   ``__init__`` has run, the accessor is registered; the finder then removes
   itself. Nothing else about the import changes (same spec, same loader);
3. pandas half-imported (``import bt_frames`` ran while another thread, or
   pandas' own ``__init__``, was importing pandas): a daemon thread waits for
   that import to finish, then registers.

Registration is idempotent and thread-safe (one lock; a flag), and never
replaces a ``bt`` accessor that another library registered. This module is
the top layer of the package: it uses the store and tables, and nothing
below it imports it (``bt_frames/__init__`` calls :func:`install`).
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

import polars as pl

from bt_frames.errors import UnsupportedInputError

if TYPE_CHECKING:
    from types import ModuleType

    import pandas as pd

    from bt_frames.store import BacktraceStore
    from bt_frames.table import SchemaMode, Table

__all__ = ["PandasBtAccessor", "PolarsBtNamespace", "install", "register_pandas_accessor"]

log = logging.getLogger("bt_frames")

NAME = "bt"
_lock = threading.RLock()
_pandas_registered = False
_polars_registered = False


def _append(
    data: object,
    store: BacktraceStore | Table,
    name: str | None,
    time_column: str | None,
    options: dict[str, Any],
    schema_mode: SchemaMode = "strict",
) -> int | None:
    from bt_frames.store import BacktraceStore
    from bt_frames.table import Table

    if isinstance(store, Table):
        if name is not None and name != store.name:
            raise UnsupportedInputError(
                f"df.bt.append(table, {name!r}): the table is {store.name!r}; pass the store to append to "
                f"another table (df.bt.append(store, {name!r}))."
            )
        if time_column is not None or options:
            return store.store.append(store.name, data, time_column=time_column, schema_mode=schema_mode, **options)
        return store.append(data, schema_mode=schema_mode)
    if isinstance(store, BacktraceStore):
        if name is None:
            raise UnsupportedInputError("df.bt.append(store, name): name the table, e.g. df.bt.append(store, 'orders')")
        return store.append(name, data, time_column=time_column, schema_mode=schema_mode, **options)
    raise UnsupportedInputError(
        f"df.bt.append expects a bt_frames.BacktraceStore (or a Table), not a {type(store).__qualname__}; "
        "open one with bt.open(path)."
    )


class _BtMethods:
    _df: Any

    def append(
        self,
        store: BacktraceStore | Table,
        name: str | None = None,
        *,
        time_column: str | None = None,
        schema_mode: SchemaMode = "strict",
        **options: Any,
    ) -> int | None:
        """Append this frame to table ``name`` of ``store``; same as ``store.append(name, df, ...)``.

        Parameters
        ----------
        store
            An open, writable :class:`~bt_frames.BacktraceStore`; or a
            :class:`~bt_frames.Table`, and then ``name`` may be left out.
        name
            The table. It is created from this frame's schema if it does not
            exist yet.
        time_column
            Only used when the table is created: defaults to a pandas
            ``DatetimeIndex`` or the first datetime/date column.
        schema_mode
            ``"strict"`` (default) or ``"merge"``: let the frame add columns and
            widen types losslessly (see :meth:`~bt_frames.Table.append`).
        **options
            Creation options of :meth:`~bt_frames.BacktraceStore.create_table`
            (e.g. ``max_block_rows``); ignored when the table exists.

        Returns
        -------
        int or None
            The LSN of the append (``None`` for an empty frame), as
            ``store.append`` returns.

        Examples
        --------
        >>> import bt_frames as bt  # registers df.bt for Polars now, for pandas when it is imported
        >>> df.bt.append(store, "orders")  # doctest: +SKIP
        1
        >>> df.bt.append(store["orders"])  # doctest: +SKIP
        2
        """
        return _append(self._df, store, name, time_column, options, schema_mode)


class PolarsBtNamespace(_BtMethods):
    """``pl.DataFrame.bt``: bt_frames methods on a Polars frame (see :meth:`append`)."""

    def __init__(self, df: pl.DataFrame) -> None:
        self._df = df


class PandasBtAccessor(_BtMethods):
    """``pd.DataFrame.bt``: bt_frames methods on a pandas frame (see :meth:`append`)."""

    def __init__(self, df: pd.DataFrame) -> None:
        self._df = df


def _ours(obj: object, cls: type) -> bool:
    """``obj`` is ``cls`` or the same class from an earlier import of this module (a reload)."""
    return isinstance(obj, type) and (obj is cls or (obj.__module__, obj.__qualname__) == (__name__, cls.__qualname__))


def _register_polars() -> None:
    global _polars_registered
    with _lock:
        if _polars_registered:
            return
        existing = getattr(pl.DataFrame, NAME, None)
        if existing is None:
            pl.api.register_dataframe_namespace(NAME)(PolarsBtNamespace)
        elif not _ours(existing, PolarsBtNamespace):
            log.warning("pl.DataFrame.%s is taken by %r; bt_frames' namespace is not registered", NAME, existing)
        _polars_registered = True


def _initializing(module: ModuleType) -> bool:
    spec = getattr(module, "__spec__", None)
    return bool(getattr(spec, "_initializing", False))


def register_pandas_accessor(*, _module_ready: bool = False) -> bool:
    """Register ``pd.DataFrame.bt`` if pandas is imported; True once registered. Idempotent, thread-safe."""
    global _pandas_registered
    with _lock:
        if _pandas_registered:
            return True
        pd = sys.modules.get("pandas")
        if pd is None or (_initializing(pd) and not _module_ready):
            return False
        existing = pd.DataFrame.__dict__.get(NAME)
        accessor = getattr(existing, "_accessor", existing)
        if existing is None:
            pd.api.extensions.register_dataframe_accessor(NAME)(PandasBtAccessor)
        elif not _ours(accessor, PandasBtAccessor):
            log.warning("pd.DataFrame.%s is taken by %r; bt_frames' accessor is not registered", NAME, accessor)
        _pandas_registered = True
        _remove_hook()
        return True


class _PandasImportHook:
    """A ``sys.meta_path`` finder that only watches for ``pandas`` (see the module docstring)."""

    def __init__(self) -> None:
        self._busy = threading.local()

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname != "pandas" or getattr(self._busy, "on", False):
            return None
        self._busy.on = True
        try:
            spec = None
            for finder in list(sys.meta_path):
                find = getattr(finder, "find_spec", None)
                if finder is self or find is None:
                    continue
                spec = find(fullname, path, target)
                if spec is not None:
                    break
        finally:
            self._busy.on = False
        loader = getattr(spec, "loader", None)
        if loader is None or not hasattr(loader, "exec_module"):
            return spec  # cannot watch it; bt_frames' own pandas code paths register instead
        original = loader.exec_module

        def exec_module(module: ModuleType) -> None:
            original(module)
            if module.__name__ == "pandas":  # a loader may be shared (zipimport): wait for pandas itself
                if loader.__dict__.get("exec_module") is exec_module:
                    del loader.exec_module  # back to the class's method
                register_pandas_accessor(_module_ready=True)

        try:
            loader.exec_module = exec_module
        except (AttributeError, TypeError):  # a loader with __slots__: nothing to wrap
            pass
        return spec

    def __repr__(self) -> str:
        return "<bt_frames: registers pd.DataFrame.bt when pandas is imported>"


_hook: _PandasImportHook | None = None


def _remove_hook() -> None:
    global _hook
    with _lock:
        if _hook is not None:
            try:
                sys.meta_path.remove(_hook)
            except ValueError:
                pass
            _hook = None


def _wait_for_pandas(timeout: float = 300.0) -> None:
    """Another import of pandas is under way: register when it is done (or give up if it failed)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pd = sys.modules.get("pandas")
        if pd is None:  # that import failed; a later one goes through the finder again
            return
        if not _initializing(pd):
            register_pandas_accessor()
            return
        time.sleep(0.005)


def install() -> None:
    """Register the Polars namespace, and the pandas accessor now or when pandas is imported."""
    global _hook
    _register_polars()
    with _lock:
        if register_pandas_accessor():
            return
        if _hook is None:
            _hook = _PandasImportHook()
            sys.meta_path.insert(0, _hook)
        pd = sys.modules.get("pandas")
        if pd is not None and _initializing(pd):
            threading.Thread(target=_wait_for_pandas, name="bt_frames-pandas-accessor", daemon=True).start()
