"""Reading the audit database from another process: read-only connections, filters, row decoding.

Readers never write and never hold a transaction open for long; in WAL mode they do not block the
writer (nor it them). ``tail``, ``export`` and ``verify`` are built on these helpers.
"""

from __future__ import annotations

import json
import re
import sqlite3
import urllib.parse
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from mcp_guard.audit import schema
from mcp_guard.errors import AuditError

__all__ = ["Filters", "connect_readonly", "iter_rows", "parse_since", "row_to_dict"]

_SELECT = f"SELECT {', '.join(schema.COLUMNS)} FROM audit_events"
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|d)$")
_UNITS = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}


def connect_readonly(path: str | Path) -> sqlite3.Connection:
    """A read-only connection to the audit database at ``path`` (AuditError if there is none)."""
    p = Path(path)
    if not p.is_file():
        raise AuditError(f"{p}: no audit database here (is [audit] path right? has the proxy run?)")
    uri = f"file:{urllib.parse.quote(str(p.resolve()))}?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True, timeout=5.0)
        conn.execute("PRAGMA busy_timeout = 5000")
        version = schema.current_version(conn)
    except sqlite3.Error as e:
        raise AuditError(f"{p}: cannot read the audit database: {e}") from None
    if version == 0:
        conn.close()
        raise AuditError(f"{p}: not an mcp-guard audit database (no schema_version table)")
    if version > schema.SCHEMA_VERSION:
        conn.close()
        raise AuditError(
            f"{p}: audit database has schema version {version}, newer than this mcp-guard understands "
            f"({schema.SCHEMA_VERSION})"
        )
    return conn


def parse_since(text: str, *, now: datetime | None = None) -> str:
    """``10m``/``2h``/``30s``/``1d`` ago, or an RFC3339 time, as a stored-form UTC timestamp.

    Stored timestamps look like ``2026-11-25T06:31:00.123456Z``, so they compare as strings.
    Raises ValueError with a readable message for anything else.
    """
    text = text.strip()
    m = _DURATION.match(text)
    if m:
        when = (now or datetime.now(UTC)) - timedelta(seconds=float(m.group(1)) * _UNITS[m.group(2)])
    else:
        try:
            when = datetime.fromisoformat(text.replace("z", "Z").replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(
                f"--since {text!r}: expected a duration like 30s, 10m, 2h, 1d or an RFC3339 time"
            ) from None
        if when.tzinfo is None:
            raise ValueError(f"--since {text!r}: an RFC3339 time needs a UTC offset (e.g. Z or +02:00)")
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True, slots=True)
class Filters:
    """Which rows to read. Empty fields match everything; ``kinds`` entries may end in ``*``."""

    since: str | None = None  # stored-form timestamp (parse_since)
    after_seq: int | None = None  # rows with seq > after_seq
    until_seq: int | None = None  # rows with seq <= until_seq
    principal: str | None = None
    server: str | None = None
    tool: str | None = None
    decision: str | None = None
    kinds: tuple[str, ...] = ()

    def where(self) -> tuple[str, list[Any]]:
        """The SQL WHERE clause (with leading ``WHERE``, or empty) and its parameters."""
        clauses: list[str] = []
        params: list[Any] = []
        if self.since is not None:
            clauses.append("ts >= ?")
            params.append(self.since)
        if self.after_seq is not None:
            clauses.append("seq > ?")
            params.append(self.after_seq)
        if self.until_seq is not None:
            clauses.append("seq <= ?")
            params.append(self.until_seq)
        for column in ("principal", "server", "tool", "decision"):
            value = getattr(self, column)
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        if self.kinds:
            alternatives = []
            for kind in self.kinds:
                if kind.endswith("*"):
                    alternatives.append("substr(kind, 1, ?) = ?")
                    params.extend((len(kind) - 1, kind[:-1]))
                else:
                    alternatives.append("kind = ?")
                    params.append(kind)
            clauses.append(f"({' OR '.join(alternatives)})")
        return (f" WHERE {' AND '.join(clauses)}" if clauses else ""), params


def iter_rows(
    conn: sqlite3.Connection, filters: Filters = Filters(), *, last: int | None = None
) -> Iterator[sqlite3.Row]:
    """Matching rows in ``seq`` order; with ``last``, only the newest ``last`` of them."""
    where, params = filters.where()
    conn.row_factory = sqlite3.Row
    if last is not None:
        sql = f"SELECT * FROM ({_SELECT}{where} ORDER BY seq DESC LIMIT ?) ORDER BY seq"
        params = [*params, max(last, 0)]
    else:
        sql = f"{_SELECT}{where} ORDER BY seq"
    try:
        yield from conn.execute(sql, params)
    except sqlite3.Error as e:
        raise AuditError(f"cannot read the audit database: {e}") from None


def _json(text: Any) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except (TypeError, ValueError):
        return text  # not JSON (a tampered row?): show what is there


def row_to_dict(row: sqlite3.Row | Sequence[Any]) -> dict[str, Any]:
    """A row as a plain object, JSON columns decoded: the ``--json`` / export form."""
    out = dict(zip(schema.COLUMNS, tuple(row), strict=True))
    for column in schema.JSON_COLUMNS:
        out[column] = _json(out[column])
    return out
