"""The PostgreSQL audit backend: table ``audit_events`` in the DSN's default schema, one chain for every replica.

Writing (:func:`open_postgres`, the :class:`~mcp_guard.audit.backend.AuditBackend` of the writer)::

    append(batch) ── round trip 1 ──► BEGIN; pg_advisory_xact_lock(chain); SELECT the head row
                  ◄── head (seq, hash) as of now: every earlier writer has committed or is waiting
                  chain_rows(head, batch)            number + hash here, the same code as SQLite
                  ── round trip 2 ──► INSERT the rows (one statement: a binary array per column, unnested)
                  ── round trip 3 ──► COMMIT: durable (synchronous_commit), lock released,
                                      the NOTIFY trigger wakes every ``audit tail -f``

* **One chain across replicas.** The chain head is read and ``seq`` assigned *inside* the transaction
  that holds the chain's advisory lock (keyed by the table's OID, so two schemas keep two chains), so
  any number of mcp-guard processes on one DSN append to a single chain: ``prev_hash`` links the rows
  in ``seq`` order (docs/architecture.md §6). A transaction that commits is visible before its lock is released,
  so the next lock holder always reads the true head.
* **Bounded.** :meth:`PostgresBackend.append` waits at most ``timeout`` to connect, lock and insert,
  and another ``timeout`` for the COMMIT (client side; the server's ``statement_timeout`` and
  ``lock_timeout`` match it, and its ``idle_in_transaction_session_timeout`` cuts off a replica that
  hangs holding the chain lock). A PostgreSQL that is down or hangs fails the batch with
  :class:`AuditError` — the writer's ``record_timeout`` bounds each caller's wait sooner, and the
  pipeline denies with ``audit_unavailable`` — the connection is dropped, and the next batch
  connects again: the writer carries on once the server is back.
* **Ambiguous commits.** If the connection breaks (or the COMMIT times out) after COMMIT was sent,
  the batch is reported failed although its rows may be stored: a call may be denied with its
  decision row present. The other way round — a call answered without its row — cannot happen.
* **Append-only in the database.** A statement-level trigger refuses UPDATE, DELETE and TRUNCATE on
  ``audit_events`` for every role, the owner included (dropping the trigger needs the table's owner:
  run mcp-guard as a role that is not — see the README). The hash chain makes what slips past evident.
* **Values as stored.** Columns hold exactly what the SQLite backend stores (JSON columns as their
  canonical *text*, not ``jsonb``, which would re-format it and break the hashes; text columns in the
  ``"C"`` collation so ``--since`` compares like SQLite), so a log verifies and exports the same on
  both, and :mod:`mcp_guard.audit.migrate` can copy rows over unchanged.

Schema versions live in ``audit_schema_version``; opening applies missing steps of :data:`MIGRATIONS`
under a migration lock, each in its own transaction, and refuses a schema newer than this mcp-guard.
A role without CREATE on the schema can run mcp-guard once the schema is current.

Reading (:func:`open_postgres_reader`, an :class:`~mcp_guard.audit.reader.AuditReader`): a synchronous
connection; :meth:`~PostgresReader.snapshot` is one ``REPEATABLE READ, READ ONLY`` transaction, rows
stream through a server-side cursor, and :meth:`~PostgresReader.wait_for_rows` sleeps on ``LISTEN``
(a second connection) until the next commit or a timeout — ``audit tail -f`` wakes on NOTIFY and polls
as a safety net.

The DSN's password never appears in a message: :func:`redact_dsn` is what :attr:`location` shows.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager, AbstractContextManager, asynccontextmanager, contextmanager
from typing import TYPE_CHECKING, Any

import anyio
import psycopg
import structlog
from psycopg import conninfo, pq

from mcp_guard.audit import schema
from mcp_guard.audit.chain import GENESIS, ChainHead, RowBody, chain_rows
from mcp_guard.audit.reader import Filters, where_clause
from mcp_guard.errors import AuditError, ConfigError
from mcp_guard.types import utc_now

if TYPE_CHECKING:
    from mcp_guard.settings import Settings

__all__ = [
    "CHANNEL",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "PostgresBackend",
    "PostgresReader",
    "backend_from_settings",
    "chain_lock_sql",
    "check_dsn",
    "connect_args",
    "open_postgres",
    "open_postgres_reader",
    "reader_from_settings",
    "redact_dsn",
]

log = structlog.get_logger("mcp_guard.audit")

CHANNEL = "mcp_guard_audit"  # NOTIFY channel; the payload is the schema the rows went to
DEFAULT_TIMEOUT = 5.0  # s: each append (connect included), and the server-side statement/lock timeouts
_LOCK_CHAIN = 0x6D637067  # "mcpg": first key of the chain lock; the second is audit_events' OID
_LOCK_MIGRATE = 0x6D63706D  # "mcpm": first key of the schema-migration lock; the second is the schema's OID
_HEAD = "SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1"
_TRIGGERS = ("audit_events_append_only", "audit_events_notify")


# ---------------------------------------------------------------------------------------------- schema


_TEXT = 'TEXT COLLATE "C"'  # byte order, like SQLite: ts compares as the stored text

_V1 = schema.Migration(  # the PostgreSQL spelling of SQLite's version 1
    version=1,
    description="audit_events: append-only hash-chained log with lookup indexes",
    statements=(
        f"""
        CREATE TABLE audit_events (
            seq             BIGINT PRIMARY KEY,
            event_id        {_TEXT} NOT NULL,
            ts              {_TEXT} NOT NULL,
            kind            {_TEXT} NOT NULL,
            session_id      {_TEXT},
            decision_id     {_TEXT},
            principal       {_TEXT},
            server          {_TEXT},
            tool            {_TEXT},
            decision        {_TEXT} CHECK (decision IN ('allow', 'deny')),
            reasons         TEXT,
            arguments       TEXT,
            result          TEXT,
            duration_ms     DOUBLE PRECISION,
            policy_revision {_TEXT},
            details         TEXT,
            prev_hash       {_TEXT} NOT NULL,
            hash            {_TEXT} NOT NULL
        )
        """,
        # The same few indexes as SQLite, for the same reason: each one is paid on every insert.
        "CREATE INDEX audit_events_ts ON audit_events (ts)",
        "CREATE INDEX audit_events_session_id ON audit_events (session_id)",
        """
        CREATE FUNCTION audit_events_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'audit_events is append-only: % is not allowed', TG_OP
                USING ERRCODE = 'insufficient_privilege';
        END
        $$
        """,
        # Statement-level, so an UPDATE or DELETE that matches no row is refused too.
        """
        CREATE TRIGGER audit_events_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON audit_events
        FOR EACH STATEMENT EXECUTE FUNCTION audit_events_refuse()
        """,
        f"""
        CREATE FUNCTION audit_events_notify() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('{CHANNEL}', TG_TABLE_SCHEMA);
            RETURN NULL;
        END
        $$
        """,
        """
        CREATE TRIGGER audit_events_notify AFTER INSERT ON audit_events
        FOR EACH STATEMENT EXECUTE FUNCTION audit_events_notify()
        """,
    ),
)

MIGRATIONS: tuple[schema.Migration, ...] = (_V1,)
SCHEMA_VERSION: int = MIGRATIONS[-1].version

_CREATE_VERSION_TABLE = """
CREATE TABLE audit_schema_version (
    version     INTEGER PRIMARY KEY,
    description TEXT NOT NULL,
    applied_at  TEXT NOT NULL
)
"""


# ---------------------------------------------------------------------------------------------- the DSN


def redact_dsn(dsn: str) -> str:
    """``dsn`` for messages: ``postgresql://user@host:port/dbname``, never the password."""
    try:
        params = conninfo.conninfo_to_dict(dsn)
    except psycopg.Error:
        return "postgresql://(unparsable DSN)"
    user = params.get("user")
    host = params.get("host") or params.get("hostaddr") or "localhost"
    port = params.get("port")
    where = f"{host}:{port}" if port else str(host)
    return f"postgresql://{f'{user}@' if user else ''}{where}/{params.get('dbname') or ''}"


def check_dsn(dsn: str) -> None:
    """ValueError (naming no part of ``dsn``) unless libpq can parse it as a connection string."""
    try:
        conninfo.conninfo_to_dict(dsn)
    except psycopg.Error:
        raise ValueError("not a PostgreSQL connection string (expected postgresql://user@host:port/dbname)") from None


def connect_args(dsn: str, timeout: float, *, writer: bool = True) -> dict[str, Any]:
    """Keyword arguments for ``psycopg.[Async]Connection.connect`` bounding the waits by ``timeout``.

    Connecting and lock waits are bounded always. For the ``writer`` the server also cuts off any
    statement after ``timeout`` and a transaction left idle for twice as long (a replica that hung
    holding the chain lock); readers (a verify or an export into a slow pipe) are not cut off.
    Keepalives notice a vanished server. Options already in ``dsn`` (a search_path) are kept and win.
    """
    ms = max(int(timeout * 1000), 1)
    ours = f"-c lock_timeout={ms}"
    if writer:
        ours += f" -c statement_timeout={ms} -c idle_in_transaction_session_timeout={2 * ms}"
    theirs = conninfo.conninfo_to_dict(dsn).get("options")
    return {
        "conninfo": dsn,
        "autocommit": True,
        "connect_timeout": max(int(timeout + 0.999), 1),  # libpq counts whole seconds (at least 2 in effect)
        "options": f"{ours} {theirs}" if theirs else ours,
        "application_name": "mcp-guard",
        "keepalives": 1,
        "keepalives_idle": 5,
        "keepalives_interval": 2,
        "keepalives_count": 3,
    }


def _brief(error: BaseException) -> str:
    """A psycopg error as one line (libpq messages span lines)."""
    text = " ".join(str(error).split())
    return text or type(error).__name__


def chain_lock_sql(table_oid: int) -> str:
    """The statement that takes the chain lock of the ``audit_events`` table with OID ``table_oid``."""
    return f"SELECT pg_advisory_xact_lock({_LOCK_CHAIN}, {_int4(table_oid)})"


def _int4(oid: int) -> int:
    return oid - (1 << 32) if oid >= 1 << 31 else oid  # OIDs are unsigned; lock keys are int4


# ---------------------------------------------------------------------------------------------- writing


_COLUMN_TYPES = {"seq": "bigint", "duration_ms": "float8"}  # the others are text
_INSERT = (
    f"INSERT INTO audit_events ({', '.join(schema.COLUMNS)}) SELECT * FROM unnest("
    + ", ".join(f"%b::{_COLUMN_TYPES.get(c, 'text')}[]" for c in schema.COLUMNS)
    + ")"
)


async def _migrate(conn: psycopg.AsyncConnection[Any], location: str) -> int:
    """Bring the schema up to :data:`SCHEMA_VERSION`; return the version.

    Replicas starting together apply each step once: the migration lock is a *session* lock taken
    before each step's transaction begins, so that transaction starts after the previous holder
    committed and sees its tables (a transaction begun before the wait could still hold stale
    catalog lookups).
    """
    row = await (await conn.execute("SELECT current_schema()")).fetchone()
    if row is None or row[0] is None:
        raise AuditError(f"{location}: no schema to create the audit tables in (check the role's search_path)")
    key = f"{_LOCK_MIGRATE}, (SELECT oid FROM pg_namespace WHERE nspname = current_schema())::int4"
    version = 0
    for step in MIGRATIONS:
        await conn.execute(f"SELECT pg_advisory_lock({key})")
        try:
            async with conn.transaction():
                version = await _apply(conn, step, location)
        finally:
            if not conn.closed and not conn.broken:
                await conn.execute(f"SELECT pg_advisory_unlock({key})")
    return version


async def _apply(conn: psycopg.AsyncConnection[Any], step: schema.Migration, location: str) -> int:
    """Apply ``step`` unless the schema has it already; return the schema's version."""
    version = await _version(conn)
    if version > SCHEMA_VERSION:
        raise AuditError(
            f"{location}: audit schema has version {version}, newer than this mcp-guard understands "
            f"({SCHEMA_VERSION}); upgrade mcp-guard or use another database"
        )
    if version >= step.version:
        return version
    if version == 0 and await _exists(conn, "audit_events"):
        raise AuditError(f"{location}: a table audit_events exists that mcp-guard did not create")
    if not await _exists(conn, "audit_schema_version"):
        await conn.execute(_CREATE_VERSION_TABLE)
    for statement in step.statements:
        await conn.execute(statement)
    await conn.execute(
        "INSERT INTO audit_schema_version (version, description, applied_at) VALUES (%s, %s, %s)",
        (step.version, step.description, utc_now()),
    )
    return step.version


async def _exists(conn: psycopg.AsyncConnection[Any], table: str) -> bool:
    row = await (await conn.execute("SELECT to_regclass(%s)", (table,))).fetchone()
    return row is not None and row[0] is not None


async def _version(conn: psycopg.AsyncConnection[Any]) -> int:
    if not await _exists(conn, "audit_schema_version"):
        return 0
    row = await (await conn.execute("SELECT max(version) FROM audit_schema_version")).fetchone()
    return int(row[0]) if row and row[0] is not None else 0


class PostgresBackend:
    """An open PostgreSQL audit log the writer appends to. Create one with :func:`open_postgres`."""

    def __init__(self, dsn: str, *, timeout: float, table_oid: int, conn: psycopg.AsyncConnection[Any]) -> None:
        self._dsn = dsn
        self._timeout = timeout
        self._conn: psycopg.AsyncConnection[Any] | None = conn
        # One simple-protocol query: three statements, one round trip (the lock before the head
        # read, and the head read in its own statement, so it sees every commit made before the lock).
        self._lock_and_head = f"BEGIN; {chain_lock_sql(table_oid)}; {_HEAD}"
        self.location = redact_dsn(dsn)
        self.appended = 0  # rows committed through this backend
        self.reconnects = 0

    async def read_head(self) -> ChainHead:
        try:
            with anyio.fail_after(self._timeout):
                conn = await self._connection()
                row = await (await conn.execute(_HEAD)).fetchone()
        except (psycopg.Error, TimeoutError, OSError) as e:
            await self._drop()
            raise AuditError(f"{self.location}: cannot read the chain head: {_why(e, self._timeout)}") from None
        return ChainHead(int(row[0]), str(row[1])) if row else GENESIS

    async def append(self, batch: Sequence[RowBody]) -> int:
        try:
            return await self._append(batch)
        except (psycopg.Error, TimeoutError, OSError) as e:
            await self._drop()  # its state is unknown: the next batch starts on a new connection
            raise AuditError(f"{self.location}: audit write failed: {_why(e, self._timeout)}") from None

    def problem(self) -> str | None:
        # Nothing here breaks a PostgreSQL log for good: a server that is down or a dropped table
        # fails each batch (append), and the writer recovers when the next one commits.
        return None

    async def _append(self, batch: Sequence[RowBody]) -> int:
        """One transaction under the chain lock: head, number + hash, insert, commit.

        Two time budgets: one up to the insert (connecting and the lock wait are where a sick
        server makes us wait), and a fresh one for the COMMIT, so that a commit is not given up
        on just because the lock took most of the first — which would report a batch failed that
        may well be stored.
        """
        if not batch:
            return (await self.read_head()).seq + 1
        with anyio.fail_after(self._timeout):
            conn = await self._connection()
            cur = conn.cursor()
            await cur.execute(self._lock_and_head, prepare=False)
            cur.nextset()  # past BEGIN and the lock to the head
            cur.nextset()
            row = await cur.fetchone()
            head = ChainHead(int(row[0]), str(row[1])) if row else GENESIS
            rows, _ = chain_rows(head, batch)
            # One statement of fixed text for any batch size (parsed and prepared once): a
            # column-wise array per column, unnested into rows.
            await cur.execute(_INSERT, [list(column) for column in zip(*rows, strict=True)])
        with anyio.fail_after(self._timeout):
            await cur.execute("COMMIT")
        self.appended += len(rows)
        return head.seq + 1

    async def _connection(self) -> psycopg.AsyncConnection[Any]:
        conn = self._conn
        if conn is None or conn.closed or conn.broken:
            await self._drop()
            conn = await psycopg.AsyncConnection.connect(**connect_args(self._dsn, self._timeout))
            self._conn = conn
            self.reconnects += 1
            log.info("audit.pg_reconnected", location=self.location, reconnects=self.reconnects)
        return conn

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with anyio.CancelScope(shield=True), anyio.move_on_after(1.0):
                await conn.close()

    async def aclose(self) -> None:
        await self._drop()


def _why(error: BaseException, timeout: float) -> str:
    if isinstance(error, TimeoutError):
        return f"no answer within {timeout:g}s"
    return _brief(error)


@asynccontextmanager
async def open_postgres(dsn: str, *, timeout: float = DEFAULT_TIMEOUT) -> AsyncIterator[PostgresBackend]:
    """Connect to ``dsn``, create or migrate the audit schema, and yield the backend until the block ends.

    ``timeout`` (s) bounds connecting and every later append. Raises :class:`AuditError` (naming the
    DSN without its password) if the database cannot be reached or holds a schema this mcp-guard
    cannot use.
    """
    location = redact_dsn(dsn)
    started = time.monotonic()
    conn: psycopg.AsyncConnection[Any] | None = None
    try:
        with anyio.fail_after(max(timeout, 10.0)):  # the first migration creates tables: allow it time
            conn = await psycopg.AsyncConnection.connect(**connect_args(dsn, timeout))
            version = await _migrate(conn, location)
            row = await (await conn.execute("SELECT 'audit_events'::regclass::oid::bigint")).fetchone()
            assert row is not None
            table_oid = int(row[0])
    except (psycopg.Error, TimeoutError, OSError) as e:
        if conn is not None:
            with anyio.CancelScope(shield=True), anyio.move_on_after(1.0):
                await conn.close()
        raise AuditError(f"{location}: cannot open the audit database: {_why(e, timeout)}") from None
    except BaseException:
        if conn is not None:
            with anyio.CancelScope(shield=True), anyio.move_on_after(1.0):
                await conn.close()
        raise
    backend = PostgresBackend(dsn, timeout=timeout, table_oid=table_oid, conn=conn)
    log.debug(
        "audit.opened", location=location, schema_version=version, ms=round((time.monotonic() - started) * 1000, 1)
    )
    try:
        yield backend
    finally:
        await backend.aclose()


def backend_from_settings(settings: Settings) -> AbstractAsyncContextManager[PostgresBackend]:
    """:func:`open_postgres` on ``[audit] dsn``."""
    return open_postgres(_dsn(settings))


def _dsn(settings: Settings) -> str:
    """``[audit] dsn``, checked: a config error naming the file and key (never the DSN) unless libpq parses it."""
    dsn = settings.audit.dsn
    if not dsn:  # the settings model requires it with backend = "postgres"; this is the backstop
        raise AuditError('[audit] dsn is required with backend = "postgres"')
    try:
        check_dsn(dsn)
    except ValueError as e:
        raise ConfigError(str(e), file=settings.source, key="audit.dsn") from None
    return dsn


# ---------------------------------------------------------------------------------------------- reading

_SELECT = f"SELECT {', '.join(schema.COLUMNS)} FROM audit_events"
_ITERSIZE = 2000  # rows per server-side cursor fetch


def _where(filters: Filters) -> tuple[str, list[Any]]:
    return where_clause(filters, placeholder="%s", kind_prefix="left(kind, %s) = %s")


class PostgresReader:
    """A read-only view of a PostgreSQL audit log (an :class:`~mcp_guard.audit.reader.AuditReader`)."""

    def __init__(self, conn: psycopg.Connection[Any], dsn: str, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self._conn = conn
        self._dsn = dsn
        self._timeout = timeout
        self._listener: psycopg.Connection[Any] | None = None
        self._schema: str | None = None
        self.location = redact_dsn(dsn)

    def head(self) -> ChainHead | None:
        with self._reading():
            row = self._conn.execute(_HEAD).fetchone()
        return ChainHead(int(row[0]), str(row[1])) if row else None

    def rows(self, filters: Filters | None = None, *, last: int | None = None) -> Iterator[tuple[Any, ...]]:
        where, params = _where(filters or Filters())
        if last is not None:
            sql = f"SELECT * FROM ({_SELECT}{where} ORDER BY seq DESC LIMIT %s) AS newest ORDER BY seq"
            params = [*params, max(last, 0)]
        else:
            sql = f"{_SELECT}{where} ORDER BY seq"
        # A server-side cursor streams a log of any size; it lives in a transaction (the snapshot's,
        # or one of its own).
        name = f"audit_rows_{uuid.uuid4().hex[:12]}"
        with self._reading(), self._transaction(), self._conn.cursor(name=name) as cur:
            cur.itersize = _ITERSIZE
            cur.execute(sql, params)
            yield from cur

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        """One ``REPEATABLE READ, READ ONLY`` transaction: every read inside sees the same rows."""
        with self._reading(), self._conn.transaction():
            yield

    def schema_warnings(self) -> tuple[str, ...]:
        try:
            found = {
                str(name): str(enabled)
                for name, enabled in self._conn.execute(
                    "SELECT tgname, tgenabled FROM pg_trigger WHERE tgrelid = 'audit_events'::regclass"
                )
            }
        except psycopg.Error:
            return ()
        missing = [t for t in _TRIGGERS if t not in found]
        disabled = [t for t in _TRIGGERS if found.get(t) == "D"]
        warnings = []
        if missing:
            warnings.append(f"append-only trigger(s) missing: {', '.join(missing)} — someone changed the schema")
        if disabled:
            warnings.append(f"trigger(s) disabled: {', '.join(disabled)} — someone changed the schema")
        return tuple(warnings)

    def wait_for_rows(self, timeout: float) -> None:
        """Return when rows may have been committed since the last call (a NOTIFY), or after ``timeout`` s.

        The first call starts listening and returns at once (a commit since the caller's last read
        would otherwise be missed); a wake-up for another schema's log is ignored.
        """
        try:
            if self._listener is None or self._listener.closed:
                self._listener = psycopg.connect(**connect_args(self._dsn, self._timeout, writer=False))
                self._listener.execute(f"LISTEN {CHANNEL}")
                row = self._listener.execute("SELECT current_schema()").fetchone()
                self._schema = str(row[0]) if row else None
                return
            deadline = time.monotonic() + timeout
            while (left := deadline - time.monotonic()) > 0:
                for note in self._listener.notifies(timeout=left, stop_after=1):
                    if note.payload == self._schema:
                        return
        except psycopg.Error as e:
            self._close_listener()
            raise AuditError(f"{self.location}: cannot follow the audit log: {_brief(e)}") from None

    def close(self) -> None:
        self._close_listener()
        self._conn.close()

    def _close_listener(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        if self._conn.info.transaction_status == pq.TransactionStatus.IDLE:
            with self._conn.transaction():
                yield
        else:
            yield

    @contextmanager
    def _reading(self) -> Iterator[None]:
        try:
            yield
        except psycopg.Error as e:
            raise AuditError(f"{self.location}: cannot read the audit database: {_brief(e)}") from None


def _connect_readonly(dsn: str, timeout: float) -> psycopg.Connection[Any]:
    """A read-only connection to the audit log at ``dsn`` (AuditError if there is none)."""
    location = redact_dsn(dsn)
    try:
        conn = psycopg.connect(**connect_args(dsn, timeout, writer=False))
    except psycopg.Error as e:
        raise AuditError(f"{location}: cannot connect to the audit database: {_brief(e)}") from None
    try:
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        conn.read_only = True
        row = conn.execute("SELECT to_regclass('audit_schema_version'), to_regclass('audit_events')").fetchone()
        if row is None or row[0] is None or row[1] is None:
            raise AuditError(f"{location}: no mcp-guard audit log in this database (has the proxy run?)")
        version_row = conn.execute("SELECT max(version) FROM audit_schema_version").fetchone()
        version = int(version_row[0]) if version_row and version_row[0] is not None else 0
        if version > SCHEMA_VERSION:
            raise AuditError(
                f"{location}: audit schema has version {version}, newer than this mcp-guard understands "
                f"({SCHEMA_VERSION})"
            )
    except psycopg.Error as e:
        conn.close()
        raise AuditError(f"{location}: cannot read the audit database: {_brief(e)}") from None
    except BaseException:
        conn.close()
        raise
    return conn


@contextmanager
def open_postgres_reader(
    dsn: str,
    *,
    wait: bool = False,
    timeout: float = DEFAULT_TIMEOUT,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[PostgresReader]:
    """A read-only :class:`PostgresReader` of the audit log at ``dsn``, closed when the block ends.

    Raises :class:`AuditError` if the database cannot be reached or holds no audit log; with ``wait``
    it waits for the log to be created instead (``audit tail -f`` started before the proxy).
    """
    while True:
        try:
            conn = _connect_readonly(dsn, timeout)
            break
        except AuditError as e:
            if not wait or "no mcp-guard audit log" not in str(e):
                raise
            sleep(0.2)
    reader = PostgresReader(conn, dsn, timeout=timeout)
    try:
        yield reader
    finally:
        reader.close()


def reader_from_settings(settings: Settings, *, wait: bool = False) -> AbstractContextManager[PostgresReader]:
    """:func:`open_postgres_reader` on ``[audit] dsn``."""
    return open_postgres_reader(_dsn(settings), wait=wait)
