"""The audit database schema (docs/architecture.md §6) and its migrations.

The database holds two tables:

``schema_version``
    one row per applied migration (``version``, ``description``, ``applied_at``).

``audit_events``
    the append-only, hash-chained event log. Columns are exactly docs/architecture.md §6 plus ``details``, a JSON
    column for kind-specific extras (client info, old/new tool hashes, error text). JSON columns
    (``reasons``, ``arguments``, ``result``, ``details``) hold canonical JSON text (sorted keys, no
    whitespace). Triggers make UPDATE and DELETE abort, so the table is append-only in the database
    too, not just in mcp-guard's code. (Someone with write access to the file can still drop the
    triggers; the hash chain is what makes such tampering *evident*.)

Migrations are an ordered list of :class:`Migration` steps. Opening a database applies every step whose
version is above the recorded one, each in its own transaction; a database written by a newer
mcp-guard (a version above :data:`SCHEMA_VERSION`) is refused.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

import aiosqlite

from mcp_guard.errors import AuditError

__all__ = [
    "BODY_COLUMNS",
    "COLUMNS",
    "INSERT_SQL",
    "JSON_COLUMNS",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "Migration",
    "current_version",
    "migrate",
]

# Column order of audit_events (also the order of INSERT parameters).
COLUMNS: tuple[str, ...] = (
    "seq",
    "event_id",
    "ts",
    "kind",
    "session_id",
    "decision_id",
    "principal",
    "server",
    "tool",
    "decision",
    "reasons",
    "arguments",
    "result",
    "duration_ms",
    "policy_revision",
    "details",
    "prev_hash",
    "hash",
)

# Columns that hold JSON text.
JSON_COLUMNS: frozenset[str] = frozenset({"reasons", "arguments", "result", "details"})

# The columns of a row's hashed JSON body (mcp_guard.audit.chain): all but seq, prev_hash and hash,
# which enter the hash directly.
BODY_COLUMNS: tuple[str, ...] = tuple(c for c in COLUMNS if c not in ("seq", "prev_hash", "hash"))

INSERT_SQL = f"INSERT INTO audit_events ({', '.join(COLUMNS)}) VALUES ({', '.join('?' for _ in COLUMNS)})"


@dataclass(frozen=True, slots=True)
class Migration:
    """One schema step: run ``statements`` in a transaction, then record ``version``."""

    version: int
    description: str
    statements: tuple[str, ...]


_V1 = Migration(
    version=1,
    description="audit_events: append-only hash-chained log with lookup indexes",
    statements=(
        """
        CREATE TABLE audit_events (
            seq             INTEGER PRIMARY KEY,
            event_id        TEXT NOT NULL,
            ts              TEXT NOT NULL,
            kind            TEXT NOT NULL,
            session_id      TEXT,
            decision_id     TEXT,
            principal       TEXT,
            server          TEXT,
            tool            TEXT,
            decision        TEXT CHECK (decision IN ('allow', 'deny')),
            reasons         TEXT,
            arguments       TEXT,
            result          TEXT,
            duration_ms     REAL,
            policy_revision TEXT,
            details         TEXT,
            prev_hash       TEXT NOT NULL,
            hash            TEXT NOT NULL
        )
        """,
        # Few indexes on purpose: each one is paid on every insert, and an index over random values
        # (decision_id, event_id are uuid4) costs the writer about 5x its throughput. ts serves
        # --since; session_id values arrive clustered, so its index is cheap. Other filters scan
        # backwards from the newest row, which is what tail and forensics mostly want.
        "CREATE INDEX audit_events_ts ON audit_events (ts)",
        "CREATE INDEX audit_events_session_id ON audit_events (session_id)",
        """
        CREATE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events
        BEGIN SELECT RAISE(ABORT, 'audit_events is append-only: UPDATE is not allowed'); END
        """,
        """
        CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events
        BEGIN SELECT RAISE(ABORT, 'audit_events is append-only: DELETE is not allowed'); END
        """,
    ),
)

MIGRATIONS: tuple[Migration, ...] = (_V1,)
SCHEMA_VERSION: int = MIGRATIONS[-1].version

CREATE_VERSION_TABLE = """
CREATE TABLE IF NOT EXISTS schema_version (
    version     INTEGER PRIMARY KEY,
    description TEXT NOT NULL,
    applied_at  TEXT NOT NULL
)
"""


def current_version(conn: sqlite3.Connection) -> int:
    """The schema version recorded in a (synchronous, possibly read-only) connection; 0 if none."""
    try:
        row = conn.execute("SELECT max(version) FROM schema_version").fetchone()
    except sqlite3.OperationalError:
        return 0
    return int(row[0]) if row and row[0] is not None else 0


async def migrate(db: aiosqlite.Connection, *, path: str, now: str) -> int:
    """Bring ``db`` (opened in autocommit mode) up to :data:`SCHEMA_VERSION`; return the version.

    Each step runs in its own ``BEGIN IMMEDIATE`` transaction that re-reads the version first, so two
    processes opening the same new file cannot both apply a step.
    """
    await db.execute(CREATE_VERSION_TABLE)
    version = 0
    for step in MIGRATIONS:
        await db.execute("BEGIN IMMEDIATE")
        try:
            rows = list(await db.execute_fetchall("SELECT max(version) FROM schema_version"))
            version = int(rows[0][0]) if rows and rows[0][0] is not None else 0
            if version > SCHEMA_VERSION:
                raise AuditError(
                    f"{path}: audit database has schema version {version}, newer than this mcp-guard "
                    f"understands ({SCHEMA_VERSION}); upgrade mcp-guard or use another file"
                )
            if version >= step.version:
                await db.execute("ROLLBACK")
                continue
            for statement in step.statements:
                await db.execute(statement)
            await db.execute(
                "INSERT INTO schema_version (version, description, applied_at) VALUES (?, ?, ?)",
                (step.version, step.description, now),
            )
            await db.execute("COMMIT")
            version = step.version
        except BaseException:
            if db.in_transaction:
                await db.execute("ROLLBACK")
            raise
    return version
