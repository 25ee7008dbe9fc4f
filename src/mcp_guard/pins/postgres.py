"""The PostgreSQL pin store: tool pins and pending changes in ``[audit] dsn``, shared by every replica.

The same tables and semantics as the SQLite :class:`~mcp_guard.pins.store.PinStore` (``tool_pins``,
``tool_pending``, in the DSN's default schema beside ``audit_events``), so that a tool pinned by one
replica is the approved definition for all of them, and an operator's ``mcp-guard tools approve`` — run
anywhere against the same database — releases a changed tool on every replica at their next listing.

Races between replicas are settled by the database, each in one statement or transaction:

* a first sighting is ``INSERT … ON CONFLICT DO NOTHING RETURNING``: exactly one replica pins it (``new``);
  one that loses the race reads the winner's hash, and records its own definition as pending if it differs;
* a changed definition is recorded pending once (its primary key includes the hash), and only the replica
  whose insert made the row reports ``first_change`` — one ``tool.pin_changed`` row per change, not per replica;
* approving replaces the pin and clears the tool's pending rows in one transaction.

Synchronous (like the SQLite store: calls happen when catalogues change, never per call), on one
autocommit connection that is re-made when the server dropped it. Bounded by the server-side
``statement_timeout`` and ``lock_timeout`` of :func:`mcp_guard.audit.postgres.connect_args` (a slow or
locked server), libpq's ``connect_timeout`` and ``tcp_user_timeout`` (a server gone from the network) —
not against a peer that acknowledges bytes but never answers (a wedged proxy in between): the
synchronous interface has no client-side deadline, as the SQLite store's has none against a wedged disk.
"""

from __future__ import annotations

import json
from typing import Any

import psycopg

from mcp_guard.audit.postgres import connect_args, redact_dsn
from mcp_guard.pins.store import PendingChange, Pin, PinState, reviewed
from mcp_guard.types import utc_now

__all__ = ["PostgresPinStore"]

DEFAULT_TIMEOUT = 5.0
_LOCK_SCHEMA = 0x6D637070  # "mcpp": the (session) lock serialising table creation between replicas

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS tool_pins (
        server TEXT COLLATE "C" NOT NULL, tool TEXT COLLATE "C" NOT NULL, sha256 TEXT NOT NULL,
        definition TEXT NOT NULL, pinned_at TEXT NOT NULL, approved_by TEXT, PRIMARY KEY (server, tool))""",
    """CREATE TABLE IF NOT EXISTS tool_pending (
        server TEXT COLLATE "C" NOT NULL, tool TEXT COLLATE "C" NOT NULL, sha256 TEXT NOT NULL,
        definition TEXT NOT NULL, first_seen TEXT COLLATE "C" NOT NULL, PRIMARY KEY (server, tool, sha256))""",
)
_PIN_FIRST = """
INSERT INTO tool_pins (server, tool, sha256, definition, pinned_at, approved_by)
VALUES (%s, %s, %s, %s, %s, 'first-use')
ON CONFLICT (server, tool) DO NOTHING RETURNING sha256
"""
_ADD_PENDING = """
INSERT INTO tool_pending (server, tool, sha256, definition, first_seen) VALUES (%s, %s, %s, %s, %s)
ON CONFLICT DO NOTHING
"""
_APPROVE = """
INSERT INTO tool_pins (server, tool, sha256, definition, pinned_at, approved_by) VALUES (%s, %s, %s, %s, %s, %s)
ON CONFLICT (server, tool) DO UPDATE SET sha256 = excluded.sha256, definition = excluded.definition,
    pinned_at = excluded.pinned_at, approved_by = excluded.approved_by
"""


class PostgresPinStore:
    """The pin store in a PostgreSQL database (see the module docstring). Opening creates the tables."""

    def __init__(self, dsn: str, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self._dsn = dsn
        self._timeout = timeout
        self.location = redact_dsn(dsn)
        self._conn: psycopg.Connection[Any] | None = None
        try:
            self._create_tables()
        except BaseException:
            self.close()
            raise

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed or self._conn.broken:
            # tcp_user_timeout: a server that vanished from the network (unacknowledged data) fails the call
            # after the timeout instead of blocking the caller until TCP gives up (minutes).
            args = connect_args(self._dsn, self._timeout) | {"tcp_user_timeout": int(self._timeout * 1000)}
            self._conn = psycopg.connect(**args)
        return self._conn

    def _create_tables(self) -> None:
        conn = self._connection()
        key = f"{_LOCK_SCHEMA}, (SELECT oid FROM pg_namespace WHERE nspname = current_schema())::int4"
        conn.execute(f"SELECT pg_advisory_lock({key})")  # concurrent CREATE IF NOT EXISTS can collide
        try:
            with conn.transaction():
                for statement in _SCHEMA:
                    conn.execute(statement)
        finally:
            conn.execute(f"SELECT pg_advisory_unlock({key})")

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def observe(
        self, server: str, tool: str, sha256: str, definition: dict[str, Any], *, trust_new: bool = True
    ) -> PinState:
        conn = self._connection()
        text = _canonical(definition)
        row = conn.execute("SELECT sha256 FROM tool_pins WHERE server = %s AND tool = %s", (server, tool)).fetchone()
        if row is None and trust_new:
            # A tool already awaiting review (seen mid-session earlier, on any replica) is not trusted by a restart.
            pending = conn.execute("SELECT 1 FROM tool_pending WHERE server = %s AND tool = %s", (server, tool))
            trust_new = pending.fetchone() is None
        if row is None and not trust_new:
            cur = conn.execute(_ADD_PENDING, (server, tool, sha256, text, utc_now()))
            return PinState(pinned=False, changed=True, approved_sha256=None, first_change=cur.rowcount == 1)
        if row is None:
            if conn.execute(_PIN_FIRST, (server, tool, sha256, text, utc_now())).fetchone() is not None:
                return PinState(pinned=True, changed=False, approved_sha256=sha256, new=True)
            # another replica pinned it between the read and here: it won the race
            row = conn.execute(
                "SELECT sha256 FROM tool_pins WHERE server = %s AND tool = %s", (server, tool)
            ).fetchone()
        approved = str(row[0]) if row else None
        if approved is None or approved == sha256:  # (None: an approval replaced the row meanwhile — never deleted)
            return PinState(pinned=True, changed=False, approved_sha256=approved or sha256)
        cur = conn.execute(_ADD_PENDING, (server, tool, sha256, text, utc_now()))
        return PinState(pinned=False, changed=True, approved_sha256=approved, first_change=cur.rowcount == 1)

    def approve(self, server: str, tool: str, sha256: str | None = None, *, by: str = "operator") -> Pin:
        conn = self._connection()
        with conn.transaction():
            rows = conn.execute(
                "SELECT sha256, definition FROM tool_pending WHERE server = %s AND tool = %s "
                "ORDER BY first_seen FOR UPDATE",
                (server, tool),
            ).fetchall()
            row = reviewed(server, tool, [(str(r[0]), str(r[1])) for r in rows], sha256)
            now = utc_now()
            conn.execute(_APPROVE, (server, tool, row[0], row[1], now, by))
            conn.execute("DELETE FROM tool_pending WHERE server = %s AND tool = %s", (server, tool))
        return Pin(server, tool, str(row[0]), json.loads(row[1]), now, by)

    def pins(self) -> list[Pin]:
        rows = self._connection().execute(
            "SELECT server, tool, sha256, definition, pinned_at, approved_by FROM tool_pins ORDER BY server, tool"
        )
        return [Pin(r[0], r[1], r[2], json.loads(r[3]), r[4], r[5]) for r in rows]

    def pending(self) -> list[PendingChange]:
        pins = {(p.server, p.tool): p for p in self.pins()}
        rows = self._connection().execute(
            "SELECT server, tool, sha256, definition, first_seen FROM tool_pending ORDER BY server, tool, first_seen"
        )
        return [PendingChange(r[0], r[1], r[2], json.loads(r[3]), r[4], pins.get((r[0], r[1]))) for r in rows]


def _canonical(definition: dict[str, Any]) -> str:
    """The stored text of a definition: the same canonical JSON as the SQLite store's."""
    return json.dumps(definition, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
