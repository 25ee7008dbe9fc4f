"""The readers' seam: what ``audit tail``, ``verify`` and ``export`` need from an audit database.

They run in another process than the proxy and never write. Each gets an :class:`AuditReader` from
:func:`mcp_guard.audit.open_reader` (chosen by ``[audit] backend``) and asks it three things::

    tail     head() ─► rows(filters, last=N) ─► poll head(); rows(after_seq=old, until_seq=new) …
             (a WakingReader sleeps in wait_for_rows() between polls: woken by each commit)
    verify   snapshot(): head(), rows() ─► walk the chain          (+ schema_warnings())
    export   snapshot(): rows(filters) ─► JSON Lines

Rows come back in ``seq`` order as tuples of the *stored* values in ``schema.COLUMNS`` order (JSON
columns as their stored text: verify hashes exactly what is stored); :func:`row_to_dict` decodes one
for display and export. A backend's reader raises :class:`~mcp_guard.errors.AuditError` naming its
:attr:`~AuditReader.location` when the database cannot be read.

This module also holds what every backend's reader shares: :class:`Filters` and :func:`parse_since`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, runtime_checkable

from mcp_guard.audit import schema
from mcp_guard.audit.chain import ChainHead

__all__ = ["AuditReader", "Filters", "WakingReader", "parse_since", "row_to_dict", "where_clause"]

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|d)$")
_UNITS = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}


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


def where_clause(filters: Filters, *, placeholder: str, kind_prefix: str) -> tuple[str, list[Any]]:
    """The SQL WHERE clause of ``filters`` (with leading ``WHERE``, or empty) and its parameters.

    Written once for every SQL backend; the dialect is its ``placeholder`` (``?``, ``%s``) and
    ``kind_prefix``, its "the first N characters of kind equal X" with two placeholders, N then X.
    """
    clauses: list[str] = []
    params: list[Any] = []
    for clause, value in (("ts >=", filters.since), ("seq >", filters.after_seq), ("seq <=", filters.until_seq)):
        if value is not None:
            clauses.append(f"{clause} {placeholder}")
            params.append(value)
    for column, text in (
        ("principal", filters.principal),
        ("server", filters.server),
        ("tool", filters.tool),
        ("decision", filters.decision),
    ):
        if text is not None:
            clauses.append(f"{column} = {placeholder}")
            params.append(text)
    if filters.kinds:
        alternatives = []
        for kind in filters.kinds:
            if kind.endswith("*"):
                alternatives.append(kind_prefix)
                params.extend((len(kind) - 1, kind[:-1]))
            else:
                alternatives.append(f"kind = {placeholder}")
                params.append(kind)
        clauses.append(f"({' OR '.join(alternatives)})")
    return (f" WHERE {' AND '.join(clauses)}" if clauses else ""), params


class AuditReader(Protocol):
    """A read-only view of one audit log. Open one with :func:`mcp_guard.audit.open_reader`."""

    @property
    def location(self) -> str:
        """The database in messages: a file path, a DSN without its password."""
        ...

    def head(self) -> ChainHead | None:
        """The newest row's ``(seq, hash)``; None for an empty log."""
        ...

    def rows(self, filters: Filters | None = None, *, last: int | None = None) -> Iterator[tuple[Any, ...]]:
        """Stored rows matching ``filters`` in ``seq`` order; with ``last``, only the newest ``last``."""
        ...

    def snapshot(self) -> AbstractContextManager[None]:
        """One read transaction: every read inside sees the same rows, even while the proxy writes."""
        ...

    def schema_warnings(self) -> tuple[str, ...]:
        """Signs that someone changed the schema (the append-only triggers are gone); else empty."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class WakingReader(Protocol):
    """A reader that can sleep until the log grows (PostgreSQL: LISTEN/NOTIFY), so ``tail -f`` need
    not poll often: it waits on :meth:`wait_for_rows` and polls only as a safety net."""

    def wait_for_rows(self, timeout: float) -> None:
        """Return when rows may have been committed since the last call, or after ``timeout`` s."""
        ...


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


def _json(text: Any) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except (TypeError, ValueError):
        return text  # not JSON (a tampered row?): show what is there


def row_to_dict(row: Sequence[Any]) -> dict[str, Any]:
    """A stored row as a plain object, JSON columns decoded: the ``--json`` / export form."""
    out = dict(zip(schema.COLUMNS, tuple(row), strict=True))
    for column in schema.JSON_COLUMNS:
        out[column] = _json(out[column])
    return out
