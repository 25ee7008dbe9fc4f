"""Bundle history and rollback: every activated bundle revision is kept, and one can be pinned.

What is kept (one :class:`HistoryStore`, chosen like the rest of the shared state: the SQLite file
``[audit] state_path``, or PostgreSQL — the audit DSN's default schema — with ``[audit] backend =
"postgres"``)::

    policy_bundles      revision → the bundle's files (every file the signature covers, .signatures.json
                        and .manifest included), stored once per revision
    policy_activations  one row per activation: revision, time, source (start | reload | rollback),
                        actor (the operator of a rollback; user@host of the process otherwise), bundle dir
    policy_pin          at most one row: the pinned revision, who pinned it and when

**The rule at restart: a pinned revision wins until it is cleared.** ``mcp-guard policy rollback REV``
pins REV; from then on every mcp-guard process on that store loads the pinned revision's files — at
start, at every hot-reload look and on SIGHUP — whatever the bundle directory holds, and logs that the
directory is set aside. ``mcp-guard policy rollback --clear`` removes the pin; the directory rules again
at the next look. So a restart never silently undoes a rollback (the broken bundle usually still sits in
the directory), and nothing edits the directory behind its owner's (or git's) back.

A pinned bundle is written to a private temporary directory and loaded from there by the same loader as
any bundle (:func:`mcp_guard.policy.signing.bundle_loader`): parsed, statically checked, tested, and — with
``[policy.signing]`` — its stored ``.signatures.json`` verified again, so a row written into the store by
someone without the signing key is refused like a tampered directory. The revision is the same as when it
was first active (the same files, the same bytes).

The store is synchronous (sqlite3, psycopg): the proxy calls it in a worker thread under a timeout
(:class:`PinnedSource`, ``record_activation``), the CLI directly. A store that cannot be reached never
stops a bundle from loading: history is a record, not a gate (the audit log's ``policy.load`` rows are
the tamper-evident one).
"""

from __future__ import annotations

import base64
import contextlib
import getpass
import json
import shutil
import socket
import sqlite3
import tempfile
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import anyio
import structlog

from mcp_guard.errors import PolicyError
from mcp_guard.policy.bundle import Bundle
from mcp_guard.settings import Settings
from mcp_guard.types import utc_now

__all__ = [
    "Activation",
    "HistoryStore",
    "Pin",
    "PinnedSource",
    "PostgresHistory",
    "SqliteHistory",
    "activation_for",
    "bundle_snapshot",
    "default_actor",
    "materialize",
    "open_history",
    "record_activation",
]

log = structlog.get_logger("mcp_guard.policy.history")

STORE_TIMEOUT_S = 5.0
"""The longest the proxy waits for the history store (a look for the pin, recording an activation)."""
_MIN_PREFIX = 6


@dataclass(frozen=True, slots=True)
class Activation:
    revision: str
    ts: str
    source: str  # start | reload | rollback
    actor: str | None
    bundle: str | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "revision": self.revision,
            "ts": self.ts,
            "source": self.source,
            "actor": self.actor,
            "bundle": self.bundle,
        }


@dataclass(frozen=True, slots=True)
class Pin:
    revision: str
    ts: str
    actor: str | None


class HistoryStore(Protocol):
    """Bundle revisions, their activations and the pin. Every method may raise :class:`PolicyError`."""

    @property
    def location(self) -> str: ...

    def record(self, activation: Activation, files: Mapping[str, bytes]) -> None:
        """Keep ``files`` under the revision (once) and append the activation."""
        ...

    def activations(self, limit: int | None = None) -> list[Activation]:
        """Newest first."""
        ...

    def files(self, revision: str) -> dict[str, bytes] | None: ...

    def resolve(self, prefix: str) -> str:
        """The one stored revision starting with ``prefix``; PolicyError if none or several."""
        ...

    def pin(self, revision: str | None, actor: str | None) -> None:
        """Pin ``revision`` (None: clear the pin)."""
        ...

    def pinned(self) -> Pin | None: ...

    def close(self) -> None: ...


def default_actor() -> str:
    """Who the process acts as when no operator is named: ``user@host``."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def bundle_snapshot(bundle: Bundle) -> dict[str, bytes]:
    """The files a revision is restored from: what was loaded (the exact text compiled) and every other
    file a signature covers, with ``.signatures.json`` itself."""
    from mcp_guard.policy.signing import SIGNATURES_FILE, bundle_files

    files = {f.rel: f.text.encode("utf-8") for f in bundle.files}
    for name in [*bundle_files(bundle.root), SIGNATURES_FILE]:
        path = bundle.root / name
        if name not in files and path.is_file():
            files[name] = path.read_bytes()
    return files


def materialize(files: Mapping[str, bytes], into: Path) -> Path:
    """Write a stored revision's files under ``into`` (which must not exist); refuses a path that leaves it."""
    into.mkdir(parents=True)
    for name, raw in files.items():
        target = (into / name).resolve()
        if into.resolve() not in target.parents:
            raise PolicyError(f"stored bundle file {name!r} would be written outside its directory")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(raw)
    return into


def _encode(files: Mapping[str, bytes]) -> str:
    return json.dumps({k: base64.b64encode(v).decode("ascii") for k, v in sorted(files.items())})


def _decode(text: str) -> dict[str, bytes]:
    return {k: base64.b64decode(v) for k, v in json.loads(text).items()}


def _check_prefix(prefix: str) -> str:
    p = prefix.strip().lower()
    if len(p) < _MIN_PREFIX or any(c not in "0123456789abcdef" for c in p):
        raise PolicyError(f"{prefix!r}: a revision is hex; give at least {_MIN_PREFIX} characters of one")
    return p


def _one(prefix: str, found: list[str], location: str) -> str:
    if not found:
        raise PolicyError(
            f"{location}: no stored bundle revision starts with {prefix!r} (see `mcp-guard policy history`)"
        )
    if len(found) > 1:
        raise PolicyError(f"{location}: {prefix!r} matches {len(found)} revisions; give more characters")
    return found[0]


# ---------------------------------------------------------------------------------------------- SQLite

_SQLITE_DDL = (
    """CREATE TABLE IF NOT EXISTS policy_bundles (
        revision TEXT PRIMARY KEY, files TEXT NOT NULL, stored_at TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS policy_activations (
        seq INTEGER PRIMARY KEY AUTOINCREMENT, revision TEXT NOT NULL, ts TEXT NOT NULL,
        source TEXT NOT NULL, actor TEXT, bundle TEXT)""",
    """CREATE TABLE IF NOT EXISTS policy_pin (
        id INTEGER PRIMARY KEY CHECK (id = 1), revision TEXT NOT NULL, ts TEXT NOT NULL, actor TEXT)""",
)


class SqliteHistory:
    """The history in the state file. Reads of a file (or tables) that do not exist yet find nothing and
    create nothing: only a write creates the tables."""

    def __init__(self, path: Path, *, timeout: float = STORE_TIMEOUT_S) -> None:
        self._path = path
        self._timeout = timeout

    @property
    def location(self) -> str:
        return str(self._path)

    def _connect(self, *, write: bool) -> sqlite3.Connection | None:
        if not write and not self._path.exists():
            return None
        try:
            db = sqlite3.connect(self._path, timeout=self._timeout, isolation_level=None)
            if write:
                for statement in _SQLITE_DDL:
                    db.execute(statement)
            return db
        except sqlite3.Error as e:
            raise PolicyError(f"{self._path}: bundle history unavailable: {e}") from None

    def _read(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        db = self._connect(write=False)
        if db is None:
            return []
        try:
            return db.execute(sql, params).fetchall()
        except sqlite3.Error as e:  # (DatabaseError too: a state file that is not a database)
            if "no such table" in str(e):
                return []
            raise PolicyError(f"{self._path}: bundle history unavailable: {e}") from None
        finally:
            db.close()

    def _write(self, statements: list[tuple[str, tuple[Any, ...]]]) -> None:
        db = self._connect(write=True)
        assert db is not None
        try:
            db.execute("BEGIN IMMEDIATE")
            for sql, params in statements:
                db.execute(sql, params)
            db.execute("COMMIT")
        except sqlite3.Error as e:
            raise PolicyError(f"{self._path}: bundle history unavailable: {e}") from None
        finally:
            db.close()

    def record(self, activation: Activation, files: Mapping[str, bytes]) -> None:
        a = activation
        self._write(
            [
                (
                    "INSERT OR IGNORE INTO policy_bundles (revision, files, stored_at) VALUES (?, ?, ?)",
                    (a.revision, _encode(files), a.ts),
                ),
                (
                    "INSERT INTO policy_activations (revision, ts, source, actor, bundle) VALUES (?, ?, ?, ?, ?)",
                    (a.revision, a.ts, a.source, a.actor, a.bundle),
                ),
            ]
        )

    def activations(self, limit: int | None = None) -> list[Activation]:
        sql = "SELECT revision, ts, source, actor, bundle FROM policy_activations ORDER BY seq DESC"
        rows = self._read(sql + (" LIMIT ?" if limit else ""), (limit,) if limit else ())
        return [Activation(*r) for r in rows]

    def files(self, revision: str) -> dict[str, bytes] | None:
        rows = self._read("SELECT files FROM policy_bundles WHERE revision = ?", (revision,))
        return _decode(rows[0][0]) if rows else None

    def resolve(self, prefix: str) -> str:
        p = _check_prefix(prefix)
        rows = self._read("SELECT revision FROM policy_bundles WHERE substr(revision, 1, ?) = ?", (len(p), p))
        return _one(prefix, [r[0] for r in rows], self.location)

    def pin(self, revision: str | None, actor: str | None) -> None:
        if revision is None:
            self._write([("DELETE FROM policy_pin", ())])
        else:
            self._write(
                [
                    (
                        "INSERT OR REPLACE INTO policy_pin (id, revision, ts, actor) VALUES (1, ?, ?, ?)",
                        (revision, utc_now(), actor),
                    )
                ]
            )

    def pinned(self) -> Pin | None:
        rows = self._read("SELECT revision, ts, actor FROM policy_pin WHERE id = 1")
        return Pin(*rows[0]) if rows else None

    def close(self) -> None:
        return None


# ---------------------------------------------------------------------------------------------- PostgreSQL

_PG_DDL = (
    """CREATE TABLE IF NOT EXISTS policy_bundles (
        revision text PRIMARY KEY, files text NOT NULL, stored_at text NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS policy_activations (
        seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, revision text NOT NULL, ts text NOT NULL,
        source text NOT NULL, actor text, bundle text)""",
    """CREATE TABLE IF NOT EXISTS policy_pin (
        id int PRIMARY KEY CHECK (id = 1), revision text NOT NULL, ts text NOT NULL, actor text)""",
)


class PostgresHistory:
    """The history in the audit database's default schema (``[audit] backend = "postgres"``): one history
    and one pin for every replica. One connection, kept between calls (a proxy looks for the pin every
    second), opened on first use and dropped on any connection error (the next call opens a new one);
    calls are serialised by a lock (the proxy's worker threads, the CLI)."""

    def __init__(self, dsn: str, *, timeout: float = STORE_TIMEOUT_S) -> None:
        self._dsn = dsn
        self._timeout = timeout
        self._conn: Any = None
        self._lock = threading.Lock()

    @property
    def location(self) -> str:
        from mcp_guard.audit.postgres import redact_dsn

        return redact_dsn(self._dsn)

    def _connection(self) -> Any:
        import psycopg

        if self._conn is None or self._conn.closed:
            conn = psycopg.connect(self._dsn, connect_timeout=max(1, int(self._timeout)), autocommit=True)
            conn.execute(f"SET statement_timeout = {int(self._timeout * 1000)}")
            self._conn = conn
        return self._conn

    def _run(self, statements: list[tuple[str, tuple[Any, ...]]], *, write: bool) -> list[tuple[Any, ...]]:
        import psycopg

        with self._lock:
            try:
                conn = self._connection()
                rows: list[tuple[Any, ...]] = []
                with conn.transaction():
                    if write:
                        for ddl in _PG_DDL:
                            conn.execute(ddl)
                    for sql, params in statements:
                        cur = conn.execute(sql, params)
                        if cur.description is not None:
                            rows = list(cur.fetchall())
                return rows
            except psycopg.errors.UndefinedTable:
                return []  # nothing written yet (the transaction was rolled back; the connection stays usable)
            except psycopg.Error as e:
                if isinstance(e, psycopg.OperationalError):
                    self.close_quietly()
                raise PolicyError(f"{self.location}: bundle history unavailable: {str(e).strip()}") from None

    def close_quietly(self) -> None:
        import psycopg

        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error, OSError):  # closing a broken connection: nothing to report
                conn.close()

    def record(self, activation: Activation, files: Mapping[str, bytes]) -> None:
        a = activation
        self._run(
            [
                (
                    "INSERT INTO policy_bundles (revision, files, stored_at) VALUES (%s, %s, %s) "
                    "ON CONFLICT (revision) DO NOTHING",
                    (a.revision, _encode(files), a.ts),
                ),
                (
                    "INSERT INTO policy_activations (revision, ts, source, actor, bundle) VALUES (%s, %s, %s, %s, %s)",
                    (a.revision, a.ts, a.source, a.actor, a.bundle),
                ),
            ],
            write=True,
        )

    def activations(self, limit: int | None = None) -> list[Activation]:
        sql = "SELECT revision, ts, source, actor, bundle FROM policy_activations ORDER BY seq DESC"
        rows = self._run([(sql + (" LIMIT %s" if limit else ""), (limit,) if limit else ())], write=False)
        return [Activation(*r) for r in rows]

    def files(self, revision: str) -> dict[str, bytes] | None:
        rows = self._run([("SELECT files FROM policy_bundles WHERE revision = %s", (revision,))], write=False)
        return _decode(rows[0][0]) if rows else None

    def resolve(self, prefix: str) -> str:
        p = _check_prefix(prefix)
        rows = self._run(
            [("SELECT revision FROM policy_bundles WHERE left(revision, %s) = %s", (len(p), p))], write=False
        )
        return _one(prefix, [r[0] for r in rows], self.location)

    def pin(self, revision: str | None, actor: str | None) -> None:
        if revision is None:
            self._run([("DELETE FROM policy_pin", ())], write=True)
        else:
            self._run(
                [
                    (
                        "INSERT INTO policy_pin (id, revision, ts, actor) VALUES (1, %s, %s, %s) ON CONFLICT (id) "
                        "DO UPDATE SET revision = excluded.revision, ts = excluded.ts, actor = excluded.actor",
                        (revision, utc_now(), actor),
                    )
                ],
                write=True,
            )

    def pinned(self) -> Pin | None:
        rows = self._run([("SELECT revision, ts, actor FROM policy_pin WHERE id = 1", ())], write=False)
        return Pin(*rows[0]) if rows else None

    def close(self) -> None:
        with self._lock:
            self.close_quietly()


def open_history(settings: Settings) -> HistoryStore:
    """The history store of this configuration (module docstring): PostgreSQL with the postgres audit backend,
    else the SQLite state file. Opening connects to nothing: the first call does."""
    if settings.audit.backend == "postgres" and settings.audit.dsn:
        return PostgresHistory(settings.audit.dsn)
    return SqliteHistory(settings.resolve_path(settings.audit.state_path))


# ---------------------------------------------------------------------------------------------- the proxy's side


class PinnedSource:
    """Where the proxy's bundle comes from: the bundle directory, or a pinned revision's files.

    :meth:`refresh` (awaited at start and before every reload look) reads the pin in a worker thread and, when
    it names a new revision, writes its files to a private temporary directory; :meth:`root_for` then answers
    that directory instead of the configured one. A store that cannot answer keeps the last answer (logged).
    """

    def __init__(self, store: HistoryStore) -> None:
        self._store = store
        self._tmp = Path(tempfile.mkdtemp(prefix="mcp-guard-pinned-"))
        self.pin: Pin | None = None
        self._dir: Path | None = None

    @property
    def store(self) -> HistoryStore:
        return self._store

    def root_for(self, root: Path) -> Path:
        return self._dir if self._dir is not None and self.pin is not None else root

    async def refresh(self) -> None:
        try:
            with anyio.fail_after(STORE_TIMEOUT_S):
                await anyio.to_thread.run_sync(self._refresh_sync, abandon_on_cancel=True)
        except (PolicyError, TimeoutError, OSError) as e:
            log.warning("policy.pin_unavailable", store=self._store.location, error=str(e) or type(e).__name__)

    def _refresh_sync(self) -> None:
        pin = self._store.pinned()
        if pin is None:
            if self.pin is not None:
                log.info("policy.pin_cleared", revision=self.pin.revision)
            self.pin, self._dir = None, None
            return
        if self.pin is not None and pin.revision == self.pin.revision and self._dir is not None:
            return
        files = self._store.files(pin.revision)
        if files is None:
            raise PolicyError(f"{self._store.location}: pinned revision {pin.revision} has no stored files")
        target = self._tmp / pin.revision
        if target.exists():
            shutil.rmtree(target)
        self._dir = materialize(files, target)
        self.pin = pin
        log.warning(
            "policy.pinned",
            revision=pin.revision,
            pinned_by=pin.actor,
            pinned_at=pin.ts,
            note="the bundle directory is set aside until `mcp-guard policy rollback --clear`",
        )

    def close(self) -> None:
        shutil.rmtree(self._tmp, ignore_errors=True)


async def record_activation(store: HistoryStore, bundle: Bundle, activation: Activation) -> None:
    """Keep an activated bundle in the history (worker thread, bounded); a failure is logged, never raised."""
    try:
        files = bundle_snapshot(bundle)
        with anyio.fail_after(STORE_TIMEOUT_S):
            await anyio.to_thread.run_sync(store.record, activation, files, abandon_on_cancel=True)
    except (PolicyError, TimeoutError, OSError) as e:
        log.error("policy.history_unavailable", store=store.location, revision=bundle.revision, error=str(e))


def activation_for(bundle: Bundle, source: PinnedSource, when: str, directory: str) -> Activation:
    """The history row for ``bundle`` becoming active ``when`` (``start`` or ``reload``): a reload to the pinned
    revision is a ``rollback`` by whoever pinned it; anything else is this process's user."""
    pin = source.pin
    if pin is not None and pin.revision == bundle.revision:
        kind = "rollback" if when == "reload" else when
        return Activation(bundle.revision, utc_now(), kind, pin.actor, f"pinned {bundle.revision[:12]}")
    return Activation(bundle.revision, utc_now(), when, default_actor(), directory)
