"""Plain-text and HTML views of stores and tables (for the REPL and Jupyter)."""

from __future__ import annotations

import html
from typing import TYPE_CHECKING, Any

from bt_frames.prune import _fmt_bytes

if TYPE_CHECKING:
    from bt_frames.store import BacktraceStore
    from bt_frames.table import Table


def table_facts(t: Table) -> dict[str, Any]:
    snap = t.snapshot()
    cold = sum(b.rows for b in snap.blocks)
    w = t.wal_state
    tr = t.time_range()
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
        "time range": tr,
    }


def table_repr(t: Table) -> str:
    if t._closed:
        return f"<bt_frames.Table {t.name!r} (closed)>"
    f = table_facts(t)
    tr = f["time range"]
    lines = [
        f"<bt_frames.Table {t.name!r}: {f['rows']:,} rows ({f['cold rows']:,} in {f['blocks']} block(s), "
        f"{_fmt_bytes(f['block bytes'])}; {f['hot rows']:,} hot), WAL {f['wal records']} record(s) "
        f"/ {_fmt_bytes(f['wal bytes'])}>",
        "  schema: " + ", ".join(f"{n}: {d}" for n, d in t.schema.items()),
    ]
    if tr is not None:
        lines.append(f"  time: {f['time column']} from {tr[0]} to {tr[1]}")
    return "\n".join(lines)


def table_html(t: Table) -> str:
    if t._closed:
        return f"<b>bt_frames.Table</b> <code>{html.escape(t.name)}</code> (closed)"
    f = table_facts(t)
    tr = f["time range"]
    facts = [
        ("rows", f"{f['rows']:,}"),
        ("cold (in blocks)", f"{f['cold rows']:,} in {f['blocks']} block(s), {_fmt_bytes(f['block bytes'])}"),
        ("hot (in memory + WAL)", f"{f['hot rows']:,}"),
        ("WAL", f"{f['wal records']} record(s), {_fmt_bytes(f['wal bytes'])}, {f['wal segments']} segment(s)"),
        ("time range", "-" if tr is None else f"{tr[0]} → {tr[1]} ({f['time column']})"),
    ]
    rows = "".join(f"<tr><th style='text-align:left'>{a}</th><td>{html.escape(b)}</td></tr>" for a, b in facts)
    schema = "".join(
        f"<tr><td><code>{html.escape(n)}</code></td><td>{html.escape(str(d))}</td></tr>" for n, d in t.schema.items()
    )
    return (
        f"<div><b>bt_frames.Table</b> <code>{html.escape(t.name)}</code>"
        f"<table>{rows}</table><details><summary>schema ({len(t.schema)} columns)</summary>"
        f"<table>{schema}</table></details></div>"
    )


def store_repr(s: BacktraceStore) -> str:
    mode = "read-only" if s.read_only else f"writer, durability={s.durability}"
    if s._closed:
        return f"<bt_frames.BacktraceStore {str(s.path)!r} (closed)>"
    names = s.tables
    lines = [f"<bt_frames.BacktraceStore {str(s.path)!r} ({mode}), {len(names)} table(s)>"]
    for n in names:
        t = s.table(n)
        f = table_facts(t)
        lines.append(
            f"  {n}: {f['rows']:,} rows, {f['blocks']} block(s), {f['hot rows']:,} hot, "
            f"WAL {f['wal records']} record(s)"
        )
    return "\n".join(lines)


def store_html(s: BacktraceStore) -> str:
    if s._closed:
        return f"<b>bt_frames.BacktraceStore</b> <code>{html.escape(str(s.path))}</code> (closed)"
    cols = ("table", "rows", "blocks", "bytes", "hot rows", "WAL records", "time range")
    head = "<tr>" + "".join(f"<th>{c}</th>" for c in cols) + "</tr>"
    body = ""
    for n in s.tables:
        f = table_facts(s.table(n))
        tr = f["time range"]
        body += (
            f"<tr><td><code>{html.escape(n)}</code></td><td>{f['rows']:,}</td><td>{f['blocks']}</td>"
            f"<td>{_fmt_bytes(f['block bytes'])}</td><td>{f['hot rows']:,}</td><td>{f['wal records']}</td>"
            f"<td>{'-' if tr is None else html.escape(f'{tr[0]} → {tr[1]}')}</td></tr>"
        )
    mode = "read-only" if s.read_only else f"writer, durability={s.durability}"
    return (
        f"<div><b>bt_frames.BacktraceStore</b> <code>{html.escape(str(s.path))}</code> ({mode})"
        f"<table>{head}{body}</table></div>"
    )
