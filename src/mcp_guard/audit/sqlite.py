"""The SQLite audit backend: one file in WAL mode, written by :class:`SqliteBackend`, read by :class:`SqliteReader`.

Writing (:func:`open_sqlite`, the :class:`~mcp_guard.audit.backend.AuditBackend` of the writer):

* **Durability.** The file runs in WAL mode with ``synchronous=NORMAL``: a commit is in the WAL file
  before :meth:`SqliteBackend.append` returns, so it survives the process being killed; only an OS
  crash or power loss can take back the newest transactions. WAL checkpoints (which fsync) run on a
  second connection every ``checkpoint_interval``, so the writer never waits for one.
* **The chain head** is read when the file opens and then kept in memory. Rows carry explicit
  ``seq`` values, so if another process appended to the file meanwhile, the INSERT collides with its
  rows (or fails SQLITE_BUSY: the other commit invalidated its read snapshot) — the only ways to learn
  of another writer. From then on the backend is *shared*: each batch runs ``BEGIN IMMEDIATE`` (the
  file's write lock, waited for up to ``busy_timeout``), reads the head inside that transaction, chains
  and inserts, and commits — so several processes append one chain, none refused. (Rows deleted from
  the end behind the writer's back leave a gap that ``audit verify`` reports.)
* **One statement per batch.** A batch of a power-of-two size is one multi-row INSERT, which in
  autocommit mode is its own transaction: one trip to the SQLite thread per batch.
* **The inode check.** SQLite keeps writing into a file that was unlinked from under it, so
  :meth:`SqliteBackend.problem` compares the path's inode with the one opened; the writer asks
  before and after every transaction.
* ``busy_timeout`` bounds how long a transaction waits for another process's lock before it fails.
* **Inline first** (:meth:`SqliteBackend.append_now`). A batch is first written on the event loop, by a
  second plain connection with ``busy_timeout`` 0 and no automatic checkpoint: an uncontended WAL
  append of one statement takes tens of microseconds, less than the hop to the aiosqlite thread and
  back it replaces (batches up to 32 rows; a burst's bigger batches are inserted by the thread, in
  parallel with the loop). Whenever it would wait or fails — another process holds the file's lock, the chain
  head is stale, the disk is full, a batch that is not one statement, the checkpointer has fallen
  behind — nothing of it is committed (one statement is its own transaction) and the writer hands the
  same batch to :meth:`SqliteBackend.append`, the thread path, which waits, retries or reports as
  before. Same file, same durability (WAL, ``synchronous=NORMAL``), same single-statement transaction;
  the loop never waits for a lock and never checkpoints (checkpoints stay on the checkpointer's connection); its
  one sync is SQLite's of the WAL header when a write starts the WAL anew after a complete checkpoint
  (``synchronous = NORMAL`` syncs it then; ~0.5 ms, rarer than the state file's).

Reading (:func:`open_sqlite_reader`, an :class:`~mcp_guard.audit.reader.AuditReader` for ``tail``,
``verify`` and ``export``): read-only connections that never hold a transaction open for long; in WAL
mode they neither block the writer nor wait for it.
"""

from __future__ import annotations

import functools
import itertools
import os
import sqlite3
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager, AbstractContextManager, asynccontextmanager, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiosqlite
import anyio
import structlog

from mcp_guard.audit import schema
from mcp_guard.audit.chain import GENESIS, ChainHead, RowBody, chain_rows
from mcp_guard.audit.reader import Filters, where_clause
from mcp_guard.errors import AuditError
from mcp_guard.types import utc_now

if TYPE_CHECKING:
    from mcp_guard.settings import Settings

__all__ = [
    "SqliteBackend",
    "SqliteReader",
    "backend_from_settings",
    "open_sqlite",
    "open_sqlite_reader",
    "reader_from_settings",
]

log = structlog.get_logger("mcp_guard.audit")

_INSERT_INTO = f"INSERT INTO audit_events (seq, {', '.join(schema.BODY_COLUMNS)}, prev_hash, hash) VALUES "
_ROW_PARAMS = f"({', '.join('?' for _ in schema.COLUMNS)})"
_MAX_CHUNK = 512  # rows per INSERT: 512 x 18 parameters stays far below SQLite's 32766
_HEAD = "SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1"
_WAL_BACKSTOP_BYTES = 64 * 1024 * 1024  # the writer checkpoints itself only if the checkpointer falls this far behind
_PAGE_SIZE = 1024
"""Bytes per page of an audit file made from now on (SQLite's default: 4,096). Every commit appends each page it
changed, whole, to the WAL, and a call commits twice (its decision row before forwarding, its outcome row before
answering), each row beside two index entries; a decision row with a flow's history is ~7.7 KB, an outcome row
~1 KB. Counted with strace on the whole proxy (stdio, default bundle): 41.8 KB appended to the WAL per call with
4 KiB pages, 19.7 KB with 1 KiB pages (in 37.5 writes instead of 20.3), ~30 µs less CPU per call
(`bench/bench_trees.py`). The price is on the reading side, where a long row spans more pages: `audit verify` of
18,619 rows took ~5 % longer (1.33 s against 1.27 s). An existing file keeps the page size it was made with."""
_TRIGGERS = ("audit_events_no_update", "audit_events_no_delete")
_OPEN_RACE_S = 10.0  # how long opening retries a file another process is creating at the same moment
_INLINE_MAX_ROWS = 32  # larger batches go to the thread: their insert then overlaps the loop's work
_INLINE_BACKLOG_ROWS = 50_000  # rows since the last checkpoint past which inline writes stop (see append_now)


@functools.lru_cache(maxsize=32)
def _insert_sql(rows: int) -> str:
    """An INSERT of ``rows`` rows in one statement."""
    return _INSERT_INTO + ", ".join([_ROW_PARAMS] * rows)


def _flat(rows: Sequence[Sequence[Any]]) -> Sequence[Any]:
    """The parameters of a multi-row INSERT: the rows' values one after the other (a lone row is its own tuple)."""
    return rows[0] if len(rows) == 1 else list(itertools.chain.from_iterable(rows))


def _file_id(path: Path) -> tuple[int, int]:
    st = os.stat(path)
    return (st.st_dev, st.st_ino)


def _is_busy(e: sqlite3.OperationalError) -> bool:
    """SQLITE_BUSY / SQLITE_LOCKED: another connection holds or changed the file (not a broken file)."""
    code = getattr(e, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (5, 6)  # SQLITE_BUSY (incl. BUSY_SNAPSHOT), SQLITE_LOCKED
    return "locked" in str(e) or "busy" in str(e)


async def _read_head(db: aiosqlite.Connection) -> ChainHead:
    rows = list(await db.execute_fetchall(_HEAD))
    return ChainHead(int(rows[0][0]), str(rows[0][1])) if rows else GENESIS


# ---------------------------------------------------------------------------------------------- writing


class SqliteBackend:
    """An open audit file the writer appends to. Create one with :func:`open_sqlite`."""

    def __init__(
        self, db: aiosqlite.Connection, path: Path, head: ChainHead, fast: sqlite3.Connection | None = None
    ) -> None:
        self._db = db
        self._fast = fast  # the inline connection (append_now); None: every batch goes through the thread
        self.path = path
        self._head = head  # the newest committed row, as far as this connection knows
        # True once another process was seen writing this file: then every batch takes the write lock
        # first and reads the head inside its transaction (_insert_locked).
        self._shared = False
        self._file_id = _file_id(path)
        self.appended = 0  # rows committed through this backend (paces the checkpointer)
        self.checkpoints = 0
        self._checkpointed_at = 0  # `appended` at the last successful checkpoint
        self.inline_batches = 0  # batches committed by append_now (the benchmark and tests read it)
        self.inline_declined = 0  # batches append_now tried and handed to append (locked, stale head, full…)

    @property
    def location(self) -> str:
        return str(self.path)

    async def read_head(self) -> ChainHead:
        try:
            return await _read_head(self._db)
        except (sqlite3.Error, ValueError) as e:
            raise AuditError(f"{self.path}: cannot read the chain head: {e}") from None

    async def append(self, batch: Sequence[RowBody]) -> int:
        try:
            if not self._shared:
                try:
                    return await self._insert(batch)
                except (sqlite3.IntegrityError, sqlite3.OperationalError) as e:
                    if isinstance(e, sqlite3.OperationalError) and not _is_busy(e):
                        raise
                    # Another process appends to this file: our head is stale (IntegrityError on seq), or
                    # its commit invalidated our read snapshot (SQLITE_BUSY). From now on every batch is
                    # chained under the file's write lock.
                    await self._rollback()
                    self._shared = True
                    log.warning("audit.foreign_writer", path=str(self.path), head_seq=self._head.seq)
            return await self._insert_locked(batch)
        except (sqlite3.Error, OSError, ValueError) as e:  # ValueError: aiosqlite "Connection closed"
            await self._rollback()
            raise AuditError(f"{self.path}: audit write failed: {e}") from None

    async def _insert_locked(self, batch: Sequence[RowBody]) -> int:
        """The several-writers path: ``BEGIN IMMEDIATE`` takes the file's write lock (waiting up to
        ``busy_timeout`` for another process's transaction), the head is read inside the transaction, and
        the batch is numbered, chained and inserted before ``COMMIT`` lets the next writer in."""
        await self._db.execute("BEGIN IMMEDIATE")
        self._head = await _read_head(self._db)
        rows, head = chain_rows(self._head, batch)
        first = self._head.seq + 1
        await self._insert_chunks(rows)
        await self._db.execute("COMMIT")
        self._head = head
        self.appended += len(rows)
        return first

    def append_now(self, batch: Sequence[RowBody]) -> int | None:
        """Commit ``batch`` on the calling thread without waiting: its first ``seq``, or None when it was not
        committed (nothing of it stored) and :meth:`append` must take it — see the module docstring.

        Only a small batch of one statement (a power-of-two size up to ``_INLINE_MAX_ROWS``): in autocommit
        mode that statement is its whole transaction, so a failure leaves nothing behind; and a big batch
        (a burst) is better inserted by the thread, in parallel with the loop's work (sqlite3 releases the
        GIL), than on the loop — the thread hop is small against it. Declines while the WAL
        checkpointer is far behind, so that the thread connection's automatic checkpoint (the backstop)
        gets its turn instead of the loop."""
        fast = self._fast
        size = len(batch)
        if fast is None or size & (size - 1) or size > _INLINE_MAX_ROWS:
            return None
        if self.appended - self._checkpointed_at > _INLINE_BACKLOG_ROWS:
            return None
        first = self._head.seq + 1
        rows, head = chain_rows(self._head, batch)
        try:
            fast.execute(_insert_sql(size), _flat(rows))
        except sqlite3.Error:
            if fast.in_transaction:  # not expected for one autocommit statement; never leave one open
                fast.rollback()
            self.inline_declined += 1
            return None
        self._head = head
        self.appended += size
        self.inline_batches += 1
        return first

    def problem(self) -> str | None:
        """None if ``path`` still names the file that was opened; else what happened to it.

        One ``stat`` of the path (a few µs); the writer asks before and after every transaction — with one row
        per transaction (a lone call), twice a row. Kept so on purpose: before, because a transaction written
        into a replaced file appends to the ``-wal`` the new file at the path may share; after, because the rows
        of a transaction during which the file went are gone with it. No cheaper call answers the same question:
        ``fstat`` of the open file sees an unlink or a rename *over* it (no links left) but not a rotation by
        rename (``mv audit.db audit.db.1``: still linked), and a directory's mtime ticks on a coarse clock (two
        changes in one tick look like none) and does not change when the directory itself is renamed."""
        try:
            current = _file_id(self.path)
        except FileNotFoundError:
            return f"{self.path}: audit database file was removed"
        except OSError as e:
            return f"{self.path}: audit database file cannot be checked: {e.strerror or e}"
        if current != self._file_id:
            return f"{self.path}: audit database file was replaced by another file"
        return None

    async def _insert(self, batch: Sequence[RowBody]) -> int:
        """One transaction: number, chain and insert ``batch``; the head moves only on commit."""
        first = self._head.seq + 1
        rows, head = chain_rows(self._head, batch)
        # Multi-row INSERTs: binding a whole chunk is one C loop and executing it one GIL release,
        # where executemany() takes the GIL back for every row and convoys behind a busy event
        # loop. A batch of one power-of-two size (what the writer aims for) is a single statement,
        # and in autocommit mode a single statement is its own transaction: one trip to the SQLite
        # thread per batch. Other sizes go in power-of-two chunks (few distinct, cached statements)
        # inside an explicit transaction.
        size = len(rows)
        if size & (size - 1) == 0 and size <= _MAX_CHUNK:
            await self._db.execute(_insert_sql(size), _flat(rows))
        else:
            await self._db.execute("BEGIN IMMEDIATE")
            await self._insert_chunks(rows)
            await self._db.execute("COMMIT")
        self._head = head
        self.appended += len(rows)
        return first

    async def _insert_chunks(self, rows: Sequence[Sequence[Any]]) -> None:
        """Insert chained ``rows`` in power-of-two chunks (few distinct, cached statements), inside the caller's
        transaction."""
        start = 0
        while start < len(rows):
            size = min(1 << ((len(rows) - start).bit_length() - 1), _MAX_CHUNK)
            chunk = rows[start : start + size]
            await self._db.execute(_insert_sql(size), _flat(chunk))
            start += size

    async def _rollback(self) -> None:
        try:
            if self._db.in_transaction:
                await self._db.execute("ROLLBACK")
        except (sqlite3.Error, ValueError) as e:
            log.error("audit.rollback_failed", error=str(e))

    async def _run_checkpointer(self, busy_timeout: float, interval: float) -> None:
        # PASSIVE checkpoints on their own connection: the fsyncs happen off the writer's path, and
        # a checkpoint never blocks the writer or a reader. Failures only let the WAL grow (the
        # writer's own autocheckpoint is the backstop), so they are logged, not raised.
        try:
            with anyio.CancelScope(shield=True):  # a half-made connection would outlive the loop
                cp = await aiosqlite.connect(self.path, isolation_level=None, timeout=busy_timeout)
        except sqlite3.Error as e:
            log.warning("audit.checkpointer_failed", error=str(e))
            return
        try:
            await cp.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
            appended = self.appended
            while True:
                await anyio.sleep(interval)
                if self.appended == appended:
                    continue
                appended = self.appended
                try:
                    await cp.execute_fetchall("PRAGMA wal_checkpoint(PASSIVE)")
                    self.checkpoints += 1
                    self._checkpointed_at = appended
                except sqlite3.Error as e:
                    log.warning("audit.checkpoint_failed", error=str(e))
        finally:
            with anyio.CancelScope(shield=True):
                await cp.close()


@asynccontextmanager
async def open_sqlite(
    path: str | Path, *, busy_timeout: float = 1.0, checkpoint_interval: float = 1.0, inline: bool = True
) -> AsyncIterator[SqliteBackend]:
    """Open (create, migrate) the audit file at ``path``; checkpoint its WAL until the block ends.

    ``busy_timeout`` (s) is how long a transaction waits for another process's lock before it
    fails; ``checkpoint_interval`` (s) paces the background WAL checkpoints; ``inline`` False writes
    every batch through the aiosqlite thread (no :meth:`SqliteBackend.append_now`). Raises
    :class:`AuditError` if ``path`` cannot be opened as an audit database.
    """
    p = Path(path)
    db = await _connect(p, busy_timeout)
    fast: sqlite3.Connection | None = None
    try:
        fast = _connect_inline(p) if inline else None
        backend = SqliteBackend(db, p, await _read_head(db), fast)
        async with anyio.create_task_group() as tg:
            tg.start_soon(backend._run_checkpointer, busy_timeout, checkpoint_interval)
            try:
                yield backend
            finally:
                tg.cancel_scope.cancel()
    finally:
        if fast is not None:
            fast.close()
        with anyio.CancelScope(shield=True):
            await db.close()


def _connect_inline(path: Path) -> sqlite3.Connection:
    """The connection :meth:`SqliteBackend.append_now` writes with: never waits for a lock (busy_timeout 0),
    never checkpoints (the checkpointer's connection does), the same durability as the thread's."""
    try:
        fast = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=0.0)
        fast.execute("PRAGMA busy_timeout = 0")
        fast.execute("PRAGMA synchronous = NORMAL")
        fast.execute("PRAGMA wal_autocheckpoint = 0")
    except sqlite3.Error as e:
        raise AuditError(f"{path}: cannot open the audit database: {e}") from None
    return fast


def backend_from_settings(settings: Settings) -> AbstractAsyncContextManager[SqliteBackend]:
    """:func:`open_sqlite` on ``[audit] path``, resolved against the config file's directory."""
    return open_sqlite(settings.resolve_path(settings.audit.path))


async def _connect(path: Path, busy_timeout: float) -> aiosqlite.Connection:
    """Open ``path`` in WAL mode (creating its directory) and migrate its schema.

    Processes started together on one file (``run --workers N``) race for it: switching a new file to WAL and
    creating its schema take locks SQLite refuses at once ("database is locked") rather than waiting out the
    busy timeout. Such a refusal is retried with a growing pause for :data:`_OPEN_RACE_S`; any other error, or a
    lock held longer than that, is the start-up error it always was."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise AuditError(f"{path}: cannot create the audit directory: {e.strerror or e}") from None
    deadline = time.monotonic() + _OPEN_RACE_S
    pause = 0.02
    while True:
        try:
            return await _connect_once(path, busy_timeout)
        except _Locked as e:
            if time.monotonic() + pause > deadline:
                raise AuditError(f"{path}: cannot open the audit database: {e}") from None
            await anyio.sleep(pause)
            pause = min(pause * 2, 0.5)


class _Locked(Exception):
    """Opening the file met another process's lock (see :func:`_connect`)."""


async def _connect_once(path: Path, busy_timeout: float) -> aiosqlite.Connection:
    started = time.monotonic()
    try:
        # Autocommit (isolation_level None): the backend opens its transactions itself, and a batch
        # written by one statement needs none. Shielded: a half-made connection would outlive the loop.
        with anyio.CancelScope(shield=True):
            db = await aiosqlite.connect(path, isolation_level=None, timeout=busy_timeout)
    except sqlite3.Error as e:
        raise AuditError(f"{path}: cannot open the audit database: {e}") from None
    try:
        await db.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
        await db.execute(f"PRAGMA page_size = {_PAGE_SIZE}")  # taken only by a new, empty file
        mode = list(await db.execute_fetchall("PRAGMA journal_mode = WAL"))
        if not mode or str(mode[0][0]).lower() != "wal":
            raise AuditError(f"{path}: the audit database cannot use WAL journaling (got {mode!r})")
        await db.execute("PRAGMA synchronous = NORMAL")
        page_size = int(next(iter(await db.execute_fetchall("PRAGMA page_size")))[0])
        await db.execute(f"PRAGMA wal_autocheckpoint = {_WAL_BACKSTOP_BYTES // page_size}")
        await db.execute("PRAGMA journal_size_limit = 67108864")  # a burst's WAL shrinks back to 64 MiB
        version = await schema.migrate(db, path=str(path), now=utc_now())
    except BaseException as e:
        with anyio.CancelScope(shield=True):
            await db.close()
        if isinstance(e, sqlite3.OperationalError) and "locked" in str(e):
            raise _Locked(str(e)) from None
        if isinstance(e, sqlite3.Error):
            raise AuditError(f"{path}: cannot open the audit database: {e}") from None
        raise
    log.debug("audit.opened", path=str(path), schema_version=version, ms=round((time.monotonic() - started) * 1000, 1))
    return db


# ---------------------------------------------------------------------------------------------- reading

_SELECT = f"SELECT {', '.join(schema.COLUMNS)} FROM audit_events"


def _where(filters: Filters) -> tuple[str, list[Any]]:
    return where_clause(filters, placeholder="?", kind_prefix="substr(kind, 1, ?) = ?")


class SqliteReader:
    """A read-only view of an audit file (an :class:`~mcp_guard.audit.reader.AuditReader`)."""

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self._conn = conn
        self.path = path

    @property
    def location(self) -> str:
        return str(self.path)

    def head(self) -> ChainHead | None:
        row = self._execute(_HEAD).fetchone()
        return ChainHead(int(row[0]), str(row[1])) if row else None

    def rows(self, filters: Filters | None = None, *, last: int | None = None) -> Iterator[tuple[Any, ...]]:
        where, params = _where(filters or Filters())
        if last is not None:
            sql = f"SELECT * FROM ({_SELECT}{where} ORDER BY seq DESC LIMIT ?) ORDER BY seq"
            params = [*params, max(last, 0)]
        else:
            sql = f"{_SELECT}{where} ORDER BY seq"
        try:
            yield from self._conn.execute(sql, params)
        except sqlite3.Error as e:
            raise AuditError(f"{self.path}: cannot read the audit database: {e}") from None

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        """One read transaction: every read inside sees the same rows, even while the proxy writes."""
        self._execute("BEGIN")
        try:
            yield
        finally:
            if self._conn.in_transaction:
                self._conn.rollback()

    def schema_warnings(self) -> tuple[str, ...]:
        try:
            names = {r[0] for r in self._conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")}
        except sqlite3.Error:
            return ()
        missing = [t for t in _TRIGGERS if t not in names]
        if missing:
            return (f"append-only trigger(s) missing: {', '.join(missing)} — someone changed the schema",)
        return ()

    def close(self) -> None:
        self._conn.close()

    def _execute(self, sql: str) -> sqlite3.Cursor:
        try:
            return self._conn.execute(sql)
        except sqlite3.Error as e:
            raise AuditError(f"{self.path}: cannot read the audit database: {e}") from None


def _connect_readonly(path: Path) -> sqlite3.Connection:
    """A read-only connection to the audit database at ``path`` (AuditError if there is none)."""
    if not path.is_file():
        raise AuditError(f"{path}: no audit database here (is [audit] path right? has the proxy run?)")
    uri = f"file:{urllib.parse.quote(str(path.resolve()))}?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True, timeout=5.0)
        conn.execute("PRAGMA busy_timeout = 5000")
        version = schema.current_version(conn)
    except sqlite3.Error as e:
        raise AuditError(f"{path}: cannot read the audit database: {e}") from None
    if version == 0:
        conn.close()
        raise AuditError(f"{path}: not an mcp-guard audit database (no schema_version table)")
    if version > schema.SCHEMA_VERSION:
        conn.close()
        raise AuditError(
            f"{path}: audit database has schema version {version}, newer than this mcp-guard understands "
            f"({schema.SCHEMA_VERSION})"
        )
    return conn


def _wait_and_connect(path: Path, sleep: Callable[[float], None], *, schema_grace: float = 10.0) -> sqlite3.Connection:
    """Wait for the proxy to create the database, and (briefly) for its schema."""
    while not path.is_file():
        sleep(0.2)
    deadline = time.monotonic() + schema_grace
    while True:
        try:
            return _connect_readonly(path)
        except AuditError:
            if time.monotonic() >= deadline:  # not a database being created: not ours at all
                raise
            sleep(0.1)


@contextmanager
def open_sqlite_reader(
    path: str | Path, *, wait: bool = False, sleep: Callable[[float], None] = time.sleep
) -> Iterator[SqliteReader]:
    """A read-only :class:`SqliteReader` of the audit file at ``path``, closed when the block ends.

    Raises :class:`AuditError` if there is no audit database at ``path``; with ``wait`` it waits for
    one to appear instead (``audit tail -f`` started before the proxy).
    """
    p = Path(path)
    conn = _wait_and_connect(p, sleep) if wait else _connect_readonly(p)
    reader = SqliteReader(conn, p)
    try:
        yield reader
    finally:
        reader.close()


def reader_from_settings(settings: Settings, *, wait: bool = False) -> AbstractContextManager[SqliteReader]:
    """:func:`open_sqlite_reader` on ``[audit] path``, resolved against the config file's directory."""
    return open_sqlite_reader(settings.resolve_path(settings.audit.path), wait=wait)
