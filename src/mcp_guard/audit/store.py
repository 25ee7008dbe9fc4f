"""The audit store: one SQLite file (WAL), one writer task, group commit, a hash chain.

Callers hand :class:`AuditStore` finished :class:`~mcp_guard.types.AuditEvent` values; the writer
task turns them into rows of ``audit_events`` (DESIGN §6)::

    record(event) ──┐                                  ┌─► each record(): its seq, or AuditError
    record(event) ──┼─► bounded queue ─► writer task ──┤   number + hash the batch, then one
    record_nowait ──┘    (queue_max)    ≤ batch_max    └─► multi-row INSERT = one transaction
                                        per transaction

* **Group commit.** While one transaction is in flight new events queue up; the next transaction
  takes all of them (up to ``batch_max``, rounded down to a power of two so that a batch is a
  single INSERT statement). Load makes transactions bigger, not the queue longer. A record() that
  finds the queue full (``queue_max``) waits its turn; a record_nowait() is dropped and counted.
* **Ordering.** :meth:`AuditStore.record` returns only after the transaction holding its event has
  committed. In WAL mode with ``synchronous=NORMAL`` a commit is in the WAL file before ``record``
  returns, so it survives the process being killed; only an OS crash or power loss can take back
  the newest transactions. WAL checkpoints (which fsync) run on a second connection, so the writer
  never waits for one.
* **The chain** (:mod:`mcp_guard.audit.chain`) continues from the newest row, read when the store
  opens and then kept in memory. Rows carry explicit ``seq`` values, so if another process appended
  to the file meanwhile, the INSERT collides with its rows: the writer re-reads the head and
  chains on from there instead of forking the chain. (Rows deleted from the end behind the writer's
  back leave a gap that ``audit verify`` reports.) Callers serialise the row body; the writer only
  numbers and hashes.
* **Failure is loud and bounded.** An event that cannot be committed (disk full, database locked
  by another writer past ``busy_timeout``, file removed or replaced, writer gone) makes ``record``
  raise :class:`~mcp_guard.errors.AuditError` within ``record_timeout``, so the pipeline can deny
  the call. SQLite keeps writing into a file that was unlinked from under it, so the writer compares
  the path's inode with the one it opened before and after every transaction.
"""

from __future__ import annotations

import asyncio
import functools
import math
import os
import sqlite3
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiosqlite
import anyio
import structlog
from anyio.abc import TaskStatus

from mcp_guard.audit import schema
from mcp_guard.audit.chain import (
    GENESIS_HASH,
    canonical_json,
    clean_text,
    fast_json_text,
    json_text,
    row_hash,
)
from mcp_guard.errors import AuditError
from mcp_guard.types import AuditEvent, utc_now

if TYPE_CHECKING:
    from mcp_guard.settings import Settings

__all__ = ["AuditStats", "AuditStore"]

log = structlog.get_logger("mcp_guard.audit")

_INSERT_INTO = f"INSERT INTO audit_events (seq, {', '.join(schema.BODY_COLUMNS)}, prev_hash, hash) VALUES "
_ROW_PARAMS = f"({', '.join('?' for _ in schema.COLUMNS)})"
_MAX_CHUNK = 512  # rows per INSERT: 512 x 18 parameters stays far below SQLite's 32766
_HEAD = "SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1"


@functools.lru_cache(maxsize=32)
def _insert_sql(rows: int) -> str:
    """An INSERT of ``rows`` rows in one statement."""
    return _INSERT_INTO + ", ".join([_ROW_PARAMS] * rows)


async def _read_head(db: aiosqlite.Connection) -> tuple[int, str]:
    rows = list(await db.execute_fetchall(_HEAD))
    return (int(rows[0][0]), str(rows[0][1])) if rows else (0, GENESIS_HASH)


_WAL_BACKSTOP_PAGES = 16384  # the writer checkpoints itself only if the checkpointer falls this far behind


@dataclass(slots=True)
class AuditStats:
    """Counters for health checks and the benchmark."""

    committed: int = 0  # events committed
    batches: int = 0  # transactions committed
    failed: int = 0  # events whose transaction failed, or that were never written
    dropped: int = 0  # record_nowait events refused (queue full, store broken or closed)
    expired: int = 0  # record() calls that gave up waiting (record_timeout)
    largest_batch: int = 0
    checkpoints: int = 0


@dataclass(slots=True, eq=False)
class _Pending:
    """One event on its way to the database."""

    values: tuple[Any, ...]  # BODY_COLUMNS values, exactly as they will be stored
    body: bytes  # canonical JSON of those values (the hashed body)
    done: asyncio.Future[None] | None  # resolved when committed or failed; None for record_nowait
    deadline: float = math.inf  # when record() stops waiting (time.monotonic() clock)
    seq: int = 0
    error: AuditError | None = None
    abandoned: bool = False  # record() gave up: skip it if it is not written yet


# The order of _values() below; checked against the schema at import.
_VALUE_ORDER = (
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
)
assert _VALUE_ORDER == schema.BODY_COLUMNS, "store._values() is out of step with schema.BODY_COLUMNS"


def _values(
    event: AuditEvent, text: Callable[[str | None], str | None], js: Callable[[Any], str | None]
) -> tuple[Any, ...]:
    """The stored values of ``event``'s row body, in BODY_COLUMNS order."""
    duration = event.duration_ms
    if duration is not None:
        duration = float(duration)
        if not math.isfinite(duration):
            duration = None  # SQLite would store NaN as NULL; hash what is stored
    reasons = event.reasons
    return (
        text(event.event_id),
        text(event.ts),
        text(event.kind),
        text(event.session_id),
        text(event.decision_id),
        text(event.principal),
        text(event.server),
        text(event.tool),
        event.decision,
        None if reasons is None else js(list(reasons)),
        js(event.arguments),
        js(event.result),
        duration,
        text(event.policy_revision),
        js(event.details),
    )


def _same(value: str | None) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return str(value)  # a stray non-text value must not fail the whole batch when bound


def _clean(value: str | None) -> str | None:
    return None if value is None else clean_text(_same(value) or "")


_DECISIONS = frozenset({None, "allow", "deny"})


def _prepare(event: AuditEvent, done: asyncio.Future[None] | None, deadline: float = math.inf) -> _Pending:
    """Turn an event into the exact values its row will hold, and their canonical JSON body."""
    if event.decision not in _DECISIONS:
        raise AuditError(f"audit event {event.kind!r}: decision must be 'allow', 'deny' or None")
    if not (event.kind and event.event_id and event.ts):  # NOT NULL columns: one bad event must
        raise AuditError(f"audit event {event.kind!r}: kind, event_id and ts are required")  # not fail a batch
    try:  # the fast path: plain JSON-able values and valid text
        values = _values(event, _same, fast_json_text)
        body = canonical_json(values)
    except (ValueError, TypeError):  # NaN/Infinity, lone surrogates, odd keys: record them cleaned up
        values = _values(event, _clean, json_text)
        body = canonical_json(values)
    return _Pending(values=values, body=body, done=done, deadline=deadline)


def _file_id(path: Path) -> tuple[int, int]:
    st = os.stat(path)
    return (st.st_dev, st.st_ino)


class AuditStore:
    """The append-only, hash-chained audit log. Create one with :meth:`open` (or :meth:`from_settings`)::

        async with AuditStore.open(settings.resolve_path(settings.audit.path),
                                   batch_max=settings.audit.batch_max,
                                   queue_max=settings.audit.queue_max) as store:
            seq = await store.record(event)     # returns after the commit; AuditError if it cannot
            store.record_nowait(other_event)    # fire and forget; never raises

    Leaving the block commits every queued event (bounded by ``close_timeout``) and closes the file.
    """

    def __init__(
        self,
        db: aiosqlite.Connection,
        path: Path,
        head: tuple[int, str],
        *,
        batch_max: int,
        queue_max: int,
        record_timeout: float,
        close_timeout: float,
        checkpoint_interval: float,
    ) -> None:
        self._db = db
        self.path = path
        self._head = head  # (seq, hash) of the newest committed row
        self._batch_max = batch_max
        self._queue_max = queue_max
        self._record_timeout = record_timeout
        self._close_timeout = close_timeout
        self._checkpoint_interval = checkpoint_interval
        self._queue: deque[_Pending] = deque()
        self._inflight: list[_Pending] = []
        self._wakeup = anyio.Event()  # set to wake an idle writer
        self._writer_idle = False
        # Events of record() calls that found the queue full, first come first served: the writer
        # moves them into the queue as it makes room. Their callers simply wait for the commit
        # (the watchdog bounds the wait), so a full queue costs no extra task wake-ups.
        self._overflow: deque[_Pending] = deque()
        self._file_id = _file_id(path)
        self._closing = False
        self._broken: str | None = None  # set when the store can never write again
        self._last_error: str | None = None  # the latest failed transaction; cleared by a success
        self._writer_done = anyio.Event()
        self._writer_scope = anyio.CancelScope()
        self._helpers_scope = anyio.CancelScope()
        self.stats = AuditStats()

    # ------------------------------------------------------------------ construction

    @classmethod
    @asynccontextmanager
    async def open(
        cls,
        path: str | Path,
        *,
        batch_max: int = 256,
        queue_max: int = 10_000,
        busy_timeout: float = 1.0,
        record_timeout: float = 5.0,
        close_timeout: float = 10.0,
        checkpoint_interval: float = 1.0,
    ) -> AsyncIterator[AuditStore]:
        """Open (create, migrate) the audit database at ``path``; run its writer inside the block.

        ``batch_max`` caps the events per transaction and ``queue_max`` the events waiting for the
        writer. ``busy_timeout`` (s) is how long a transaction waits for another process's lock
        before it fails; ``record_timeout`` (s) bounds every :meth:`record`; ``close_timeout`` (s)
        bounds the final flush; ``checkpoint_interval`` (s) paces the background WAL checkpoints.
        Raises :class:`AuditError` if ``path`` cannot be opened as an audit database.
        """
        if batch_max < 1 or queue_max < 1:
            raise ValueError("batch_max and queue_max must be positive")
        p = Path(path)
        db = await _connect(p, busy_timeout)
        try:
            store = cls(
                db,
                p,
                await _read_head(db),
                batch_max=batch_max,
                queue_max=queue_max,
                record_timeout=record_timeout,
                close_timeout=close_timeout,
                checkpoint_interval=checkpoint_interval,
            )
            async with anyio.create_task_group() as tg:
                await tg.start(store._run_writer)
                tg.start_soon(store._run_helpers, busy_timeout)
                try:
                    yield store
                finally:
                    with anyio.CancelScope(shield=True):
                        await store.aclose()
        finally:
            with anyio.CancelScope(shield=True):
                await db.close()

    @classmethod
    def from_settings(cls, settings: Settings) -> AbstractAsyncContextManager[AuditStore]:
        """:meth:`open` on ``[audit] path`` (resolved against the config file), ``batch_max``, ``queue_max``."""
        return cls.open(
            settings.resolve_path(settings.audit.path),
            batch_max=settings.audit.batch_max,
            queue_max=settings.audit.queue_max,
        )

    # ------------------------------------------------------------------ the API

    @property
    def healthy(self) -> bool:
        """True while the writer runs, the file is the one opened and the last transaction committed."""
        return self.problem is None

    @property
    def problem(self) -> str | None:
        """Why the store is not healthy; None when it is."""
        if self._broken is not None:
            return self._broken
        if self._closing or self._writer_done.is_set():
            return "audit store is closed"
        return self._last_error or self._check_file()

    @property
    def queued(self) -> int:
        """Events waiting for the writer (not counting the transaction in flight)."""
        return len(self._queue) + len(self._overflow)

    async def record(self, event: AuditEvent) -> int:
        """Write ``event``; return its ``seq`` once the transaction holding it has committed.

        Raises :class:`AuditError` if it cannot be committed — at the latest ``record_timeout``
        seconds after the call (plus one watchdog tick). If the caller is cancelled the event is
        still written.
        """
        self._raise_if_unwritable()
        deadline = time.monotonic() + self._record_timeout  # cheaper than anyio.current_time()
        try:
            # A bare future rather than anyio.Event: a third of the per-event cost of record() at
            # saturation, and aiosqlite ties the store to asyncio anyway.
            pending = _prepare(event, asyncio.get_running_loop().create_future(), deadline)
        except AuditError:
            raise
        except Exception as e:  # an event that cannot be serialised must not pass unrecorded
            raise AuditError(f"audit event {event.kind!r} cannot be serialised: {e}") from e
        if self._overflow or len(self._queue) >= self._queue_max:
            self._overflow.append(pending)
        else:
            self._enqueue(pending)
        done = pending.done
        assert done is not None
        await done  # if the caller is cancelled, so is this future; the event is still written
        if pending.error is not None:
            raise pending.error
        return pending.seq

    def record_nowait(self, event: AuditEvent) -> None:
        """Queue ``event`` without waiting. Never raises: a refused event is logged and counted."""
        problem = self._broken or ("audit store is closed" if self._closing else None)
        if problem is None and len(self._queue) >= self._queue_max:
            problem = f"audit queue is full ({self._queue_max} events)"
        if problem is None:
            try:
                self._enqueue(_prepare(event, None))
                return
            except Exception as e:  # a side-channel event must never break its caller
                problem = f"audit event cannot be serialised: {e}"
        self.stats.dropped += 1
        dropped = self.stats.dropped
        if dropped & (dropped - 1) == 0:  # 1st, 2nd, 4th, 8th… drop: loud, without flooding the log
            log.error("audit.event_dropped", kind=event.kind, event_id=event.event_id, problem=problem, dropped=dropped)

    async def aclose(self) -> None:
        """Refuse new events, commit the queued ones (within ``close_timeout``), stop the writer."""
        self._closing = True
        self._wakeup.set()
        with anyio.move_on_after(self._close_timeout):
            await self._writer_done.wait()
        if not self._writer_done.is_set():
            log.error("audit.close_timeout", timeout=self._close_timeout, queued=len(self._queue))
            self._writer_scope.cancel()
            await self._writer_done.wait()
        self._helpers_scope.cancel()

    # ------------------------------------------------------------------ internals

    def _raise_if_unwritable(self) -> None:
        if self._broken is not None:
            raise AuditError(self._broken)
        if self._closing or self._writer_done.is_set():
            raise AuditError("audit store is closed")

    def _enqueue(self, pending: _Pending) -> None:
        self._queue.append(pending)
        if self._writer_idle:
            self._writer_idle = False
            self._wakeup.set()

    def _check_file(self) -> str | None:
        """None if ``path`` still names the file the store opened; else what happened to it."""
        try:
            current = _file_id(self.path)
        except FileNotFoundError:
            return f"{self.path}: audit database file was removed"
        except OSError as e:
            return f"{self.path}: audit database file cannot be checked: {e.strerror or e}"
        if current != self._file_id:
            return f"{self.path}: audit database file was replaced by another file"
        return None

    def _fail(self, batch: Iterable[_Pending], reason: str) -> None:
        error = AuditError(reason)
        for p in batch:
            if p.done is None:
                self.stats.failed += 1
            elif not p.done.done():
                self.stats.failed += 1
                p.error = error
                p.done.set_result(None)

    def _take_batch(self) -> list[_Pending]:
        """The next events to commit: as many as wait, up to batch_max, rounded down to a power of
        two so that the batch is one INSERT statement (see _insert)."""
        batch: list[_Pending] = []
        queue = self._queue
        want = min(self._batch_max, len(queue))
        want = 1 << (want.bit_length() - 1) if want else 0
        while queue and len(batch) < want:
            p = queue.popleft()
            if not p.abandoned:
                batch.append(p)
        overflow = self._overflow
        while overflow and len(queue) < self._queue_max:
            p = overflow.popleft()
            if not p.abandoned:
                queue.append(p)
        return batch

    async def _run_writer(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        try:
            with self._writer_scope:
                task_status.started()
                while True:
                    if not self._queue:
                        if self._closing:
                            break
                        self._wakeup = anyio.Event()
                        self._writer_idle = True
                        await self._wakeup.wait()
                        self._writer_idle = False
                        continue
                    self._inflight = self._take_batch()
                    if self._inflight:
                        await self._commit(self._inflight)
                    self._inflight = []
        except Exception as e:  # top of the writer task: report, fail the waiters, keep the app up
            self._broken = f"audit writer failed: {type(e).__name__}: {e}"
            log.exception("audit.writer_failed")
        finally:
            reason = self._broken or "audit store closed before this event was written"
            self._fail(self._inflight, reason)
            self._fail(self._queue, reason)
            self._fail(self._overflow, reason)
            self._queue.clear()
            self._overflow.clear()
            self._writer_done.set()

    async def _commit(self, batch: list[_Pending]) -> None:
        if self._broken is None:
            problem = self._check_file()
            if problem is not None:
                self._broken = problem
                log.error("audit.store_broken", problem=problem)
        if self._broken is not None:
            self._fail(batch, self._broken)
            return
        try:
            await self._insert(batch)
        except sqlite3.IntegrityError:
            # Our idea of the chain head is stale: another process appended to this file. Continue
            # the chain from the real head rather than fork it (once; twice means something else).
            await self._rollback()
            log.warning("audit.foreign_writer", path=str(self.path), head_seq=self._head[0])
            try:
                self._head = await _read_head(self._db)
                await self._insert(batch)
            except (sqlite3.Error, OSError, ValueError) as e:
                await self._write_failed(batch, e)
                return
        except (sqlite3.Error, OSError, ValueError) as e:  # ValueError: aiosqlite "Connection closed"
            await self._write_failed(batch, e)
            return
        gone = self._check_file()
        if gone is not None:  # removed while the batch was written: its rows went with the file
            self._broken = gone
            log.error("audit.store_broken", problem=gone)
            self._fail(batch, gone)
            return
        self._last_error = None
        self.stats.committed += len(batch)
        self.stats.batches += 1
        self.stats.largest_batch = max(self.stats.largest_batch, len(batch))
        for p in batch:
            if p.done is not None and not p.done.done():
                p.done.set_result(None)

    async def _insert(self, batch: list[_Pending]) -> None:
        """One transaction: number, chain and insert ``batch``; the head moves only on commit."""
        seq, prev = self._head
        rows = []
        for p in batch:
            seq += 1
            h = row_hash(prev, seq, p.body)
            rows.append((seq, *p.values, prev, h))
            p.seq, prev = seq, h
        # Multi-row INSERTs: binding a whole chunk is one C loop and executing it one GIL release,
        # where executemany() takes the GIL back for every row and convoys behind a busy event
        # loop. A batch of one power-of-two size (what _take_batch aims for) is a single statement,
        # and in autocommit mode a single statement is its own transaction: one trip to the SQLite
        # thread per batch. Other sizes go in power-of-two chunks (few distinct, cached statements)
        # inside an explicit transaction.
        size = len(rows)
        if size & (size - 1) == 0 and size <= _MAX_CHUNK:
            await self._db.execute(_insert_sql(size), [v for row in rows for v in row])
        else:
            await self._db.execute("BEGIN IMMEDIATE")
            start = 0
            while start < len(rows):
                size = min(1 << ((len(rows) - start).bit_length() - 1), _MAX_CHUNK)
                chunk = rows[start : start + size]
                await self._db.execute(_insert_sql(size), [v for row in chunk for v in row])
                start += size
            await self._db.execute("COMMIT")
        self._head = (seq, prev)

    async def _write_failed(self, batch: list[_Pending], e: Exception) -> None:
        await self._rollback()
        gone = self._check_file()
        if gone is not None:
            self._broken = gone
        problem = gone or f"{self.path}: audit write failed: {e}"
        self._last_error = problem
        log.error("audit.write_failed", problem=problem, events=len(batch))
        self._fail(batch, problem)

    async def _rollback(self) -> None:
        try:
            if self._db.in_transaction:
                await self._db.execute("ROLLBACK")
        except (sqlite3.Error, ValueError) as e:
            log.error("audit.rollback_failed", error=str(e))

    async def _run_helpers(self, busy_timeout: float) -> None:
        """The watchdog (expires record() calls past their deadline) and the WAL checkpointer."""
        with self._helpers_scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._run_watchdog)
                tg.start_soon(self._run_checkpointer, busy_timeout)

    async def _run_watchdog(self) -> None:
        tick = min(0.05, self._record_timeout / 4)
        while not self._writer_done.is_set():
            await anyio.sleep(tick)
            now = time.monotonic()
            expired = [p for p in self._inflight if p.deadline <= now]
            for waiting in (self._queue, self._overflow):
                for p in waiting:  # record() deadlines grow along a queue: stop at the first live one
                    if p.done is None or p.done.done():
                        continue
                    if p.deadline > now:
                        break
                    expired.append(p)
            for p in expired:
                if p.done is not None and not p.done.done():
                    p.abandoned = True
                    p.error = AuditError(
                        f"audit store did not commit within {self._record_timeout:g}s"
                        + (f" ({self._last_error})" if self._last_error else "")
                    )
                    p.done.set_result(None)
                    self.stats.expired += 1

    async def _run_checkpointer(self, busy_timeout: float) -> None:
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
            committed = self.stats.committed
            while True:
                await anyio.sleep(self._checkpoint_interval)
                if self.stats.committed == committed:
                    continue
                committed = self.stats.committed
                try:
                    await cp.execute_fetchall("PRAGMA wal_checkpoint(PASSIVE)")
                    self.stats.checkpoints += 1
                except sqlite3.Error as e:
                    log.warning("audit.checkpoint_failed", error=str(e))
        finally:
            with anyio.CancelScope(shield=True):
                await cp.close()


async def _connect(path: Path, busy_timeout: float) -> aiosqlite.Connection:
    """Open ``path`` in WAL mode (creating its directory) and migrate its schema."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise AuditError(f"{path}: cannot create the audit directory: {e.strerror or e}") from None
    started = time.monotonic()
    try:
        # Autocommit (isolation_level None): the store opens its transactions itself, and a batch
        # written by one statement needs none. Shielded: a half-made connection would outlive the loop.
        with anyio.CancelScope(shield=True):
            db = await aiosqlite.connect(path, isolation_level=None, timeout=busy_timeout)
    except sqlite3.Error as e:
        raise AuditError(f"{path}: cannot open the audit database: {e}") from None
    try:
        await db.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
        mode = list(await db.execute_fetchall("PRAGMA journal_mode = WAL"))
        if not mode or str(mode[0][0]).lower() != "wal":
            raise AuditError(f"{path}: the audit database cannot use WAL journaling (got {mode!r})")
        await db.execute("PRAGMA synchronous = NORMAL")
        await db.execute(f"PRAGMA wal_autocheckpoint = {_WAL_BACKSTOP_PAGES}")
        await db.execute("PRAGMA journal_size_limit = 67108864")  # a burst's WAL shrinks back to 64 MiB
        version = await schema.migrate(db, path=str(path), now=utc_now())
    except BaseException as e:
        with anyio.CancelScope(shield=True):
            await db.close()
        if isinstance(e, sqlite3.Error):
            raise AuditError(f"{path}: cannot open the audit database: {e}") from None
        raise
    log.debug("audit.opened", path=str(path), schema_version=version, ms=round((time.monotonic() - started) * 1000, 1))
    return db
