"""Plain-text and HTML views of stores and tables (the REPL, Jupyter and ``bt-frames info``).

Every view shows the same facts (``table_facts``): schema, rows (cold in
blocks / hot in memory + WAL), blocks, bytes, WAL segments/records/bytes and
the time range. HTML views escape everything that comes from the user (store
path, table and column names, dtypes, time values). A view never raises: a
table that cannot be opened shows the error instead.
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING, Any

from bt_frames.errors import BtError
from bt_frames.prune import _fmt_bytes

if TYPE_CHECKING:
    from bt_frames._views import StoreView as BacktraceStore
    from bt_frames._views import TableView as Table

_TH = "<th style='text-align:left'>"


def table_facts(t: Table) -> dict[str, Any]:
    snap = t.snapshot()
    cold = sum(b.rows for b in snap.blocks)
    w = t.wal_state
    return {
        "rows": cold + snap.hot_rows,
        "cold rows": cold,
        "hot rows": snap.hot_rows,
        "blocks": len(snap.blocks),
        "block bytes": sum(b.bytes for b in snap.blocks),
        "wal records": w["records"],
        "wal bytes": w["bytes"],
        "wal segments": w["segments"],
        "time column": t.time_column,
        "time range": t.time_range(),
    }


def _time_range(f: dict[str, Any]) -> str:
    tr = f["time range"]
    if f["time column"] is None:
        return "- (no time column)"
    return "- (empty)" if tr is None else f"{tr[0]} → {tr[1]} ({f['time column']})"


def _schema_text(t: Table) -> str:
    return ", ".join(f"{n}: {d}" for n, d in t.schema.items())


# -- a table --------------------------------------------------------------------------


def table_repr(t: Table) -> str:
    if t._closed:
        return f"<bt_frames.Table {t.name!r} ({'dropped' if t._dropped else 'closed'})>"
    f = table_facts(t)
    lines = [
        f"<bt_frames.Table {t.name!r}: {f['rows']:,} rows ({f['cold rows']:,} in {f['blocks']} block(s), "
        f"{_fmt_bytes(f['block bytes'])}; {f['hot rows']:,} hot), WAL {f['wal records']} record(s) "
        f"/ {_fmt_bytes(f['wal bytes'])}>",
        f"  schema: {_schema_text(t)}",
        f"  time: {_time_range(f)}",
    ]
    health = t.health
    if not health.ok:
        lines.append(f"  health: {health}")
    return "\n".join(lines)


def table_report(t: Table) -> str:
    """A multi-line text report of a table (``bt-frames info``)."""
    f = table_facts(t)
    lines = [
        f"table {t.name!r}",
        f"  schema       {_schema_text(t)}",
        f"  rows         {f['rows']:,} ({f['cold rows']:,} cold in blocks, {f['hot rows']:,} hot in memory + WAL)",
        f"  blocks       {f['blocks']} ({_fmt_bytes(f['block bytes'])}, {f['block bytes']:,} bytes), "
        f"max_block_rows={t.max_block_rows:,}",
        f"  WAL          {f['wal segments']} segment(s), {f['wal records']} record(s), {_fmt_bytes(f['wal bytes'])}",
        f"  time range   {_time_range(f)}",
        f"  manifest     version {t.recovery.manifest_version}",
        f"  health       {t.health}",
    ]
    rec = t.recovery
    if rec.torn_tail_bytes:
        lines.append(
            f"  WAL tail     {rec.torn_tail_bytes} torn bytes (an unacknowledged append; the next writer cuts it off)"
        )
    return "\n".join(lines)


def table_html(t: Table) -> str:
    name = html.escape(t.name)
    if t._closed:
        return f"<b>bt_frames.Table</b> <code>{name}</code> ({'dropped' if t._dropped else 'closed'})"
    f = table_facts(t)
    facts = [
        ("rows", f"{f['rows']:,}"),
        ("cold (in blocks)", f"{f['cold rows']:,} in {f['blocks']} block(s), {_fmt_bytes(f['block bytes'])}"),
        ("hot (in memory + WAL)", f"{f['hot rows']:,}"),
        ("WAL", f"{f['wal records']} record(s), {_fmt_bytes(f['wal bytes'])}, {f['wal segments']} segment(s)"),
        ("time range", _time_range(f)),
    ]
    rows = "".join(f"<tr>{_TH}{a}</th><td>{html.escape(b)}</td></tr>" for a, b in facts)
    schema = "".join(
        f"<tr><td><code>{html.escape(n)}</code></td><td>{html.escape(str(d))}</td></tr>" for n, d in t.schema.items()
    )
    return (
        f"<div><b>bt_frames.Table</b> <code>{name}</code>"
        f"<table>{rows}</table><details><summary>schema ({len(t.schema)} columns)</summary>"
        f"<table>{schema}</table></details></div>"
    )


# -- a store ---------------------------------------------------------------------------


def _store_tables(s: BacktraceStore) -> list[tuple[str, dict[str, Any] | None, str]]:
    """(name, facts or None, error message) per table; a table that fails to open is shown, not raised."""
    out: list[tuple[str, dict[str, Any] | None, str]] = []
    for n in s.tables:
        try:
            out.append((n, table_facts(s.table(n)), ""))
        except BtError as e:
            out.append((n, None, str(e)))
    return out


def _mode(s: BacktraceStore) -> str:
    return "read-only" if s.read_only else f"writer, durability={s.durability}"


def store_repr(s: BacktraceStore) -> str:
    if s._closed:
        return f"<bt_frames.BacktraceStore {str(s.path)!r} (closed)>"
    tables = _store_tables(s)
    lines = [f"<bt_frames.BacktraceStore {str(s.path)!r} ({_mode(s)}), {len(tables)} table(s)>"]
    for n, f, err in tables:
        if f is None:
            lines.append(f"  {n}: cannot be opened: {err}")
            continue
        lines.append(
            f"  {n}: {f['rows']:,} rows ({f['cold rows']:,} in {f['blocks']} block(s), "
            f"{_fmt_bytes(f['block bytes'])}; {f['hot rows']:,} hot), WAL {f['wal records']} record(s) "
            f"/ {_fmt_bytes(f['wal bytes'])}; time {_time_range(f)}"
        )
    return "\n".join(lines)


def store_html(s: BacktraceStore) -> str:
    path = html.escape(str(s.path))
    if s._closed:
        return f"<b>bt_frames.BacktraceStore</b> <code>{path}</code> (closed)"
    cols = ("table", "rows", "cold rows", "blocks", "bytes", "hot rows", "WAL records", "WAL bytes", "time range")
    head = "<tr>" + "".join(f"<th>{c}</th>" for c in cols) + "</tr>"
    body = ""
    for n, f, err in _store_tables(s):
        if f is None:
            body += f"<tr><td><code>{html.escape(n)}</code></td><td colspan='{len(cols) - 1}'>"
            body += f"cannot be opened: {html.escape(err)}</td></tr>"
            continue
        cells = [
            f"{f['rows']:,}",
            f"{f['cold rows']:,}",
            f"{f['blocks']}",
            _fmt_bytes(f["block bytes"]),
            f"{f['hot rows']:,}",
            f"{f['wal records']}",
            _fmt_bytes(f["wal bytes"]),
            _time_range(f),
        ]
        body += f"<tr><td><code>{html.escape(n)}</code></td>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells)
        body += "</tr>"
    return (
        f"<div><b>bt_frames.BacktraceStore</b> <code>{path}</code> ({html.escape(_mode(s))})"
        f"<table>{head}{body}</table></div>"
    )
