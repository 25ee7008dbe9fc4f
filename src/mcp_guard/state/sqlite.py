"""The SQLite :class:`~mcp_guard.state.base.StateStore`: the state file (``[audit] state_path``) shared by every
``mcp-guard`` process on the host.

Tables beside the tool pins (:mod:`mcp_guard.pins.store`), in the same WAL-mode file::

    rate_hits   (key, window_s, ts, hit)   one row per counted hit; primary key (key, window_s, ts, hit)
    rate_counts (key, window_s, n)         n = rows of the bucket in rate_hits, kept in the same transactions
    flows       (id, principal, generation, seen, next_n, version)   one row per flow; seen = its last recorded
                call; version = changes to its calls and labels (bumped by triggers, see _FlowCache)
    flow_labels (flow_id, label, n, origin, latest)         n = recorded calls that added the label
    flow_calls  (flow_id, n, decision_id, call)             the history, at most FlowBounds.history rows

``rate_counts`` makes the admission check O(1) whatever the limit (a bucket of 10⁶ allowed hits is not
scanned per call); expired hits are deleted as the bucket is next used (only when its one read finds
some), so pruning is amortised O(1). A flow costs one indexed read (:meth:`SQLiteState.flow`) and one
small write per recorded call; rows of expired flows are deleted in batches by the writes (at most every
``PURGE_EVERY_S`` seconds). The read is usually served from memory: :class:`_FlowCache` keeps the flows
this store read or wrote, exact because ``PRAGMA data_version`` tells when any other connection has
committed (then each entry is checked against its flow's row and version before it is used). Recording a call
of a cached flow reads nothing more: the check is made under the write lock, where no one else can commit.

Safety with several processes: every write is one ``BEGIN IMMEDIATE`` transaction — a batch
(:meth:`SQLiteState.apply`: a call's flow record and rate-limit admission together, rolled back whole at
the first refusal) or a single op (each of :meth:`SQLiteState.admit`, :meth:`SQLiteState.record_call`, …
is a batch of one). The file's write lock is taken before the first read, so two processes can never
both see room for the last slot. Reads (:meth:`SQLiteState.usage`) are one
snapshot. Before each operation the store checks that the path still names the file it has open
(device and inode): if the file was replaced or removed it re-opens it, so every process counts in the
same file, and a path that can no longer be opened (made a directory, unreadable) is an error rather
than a silent private copy.

Inline first, a worker thread when it would wait. Each operation is one small function over the store's
one connection, under a lock. It first runs **on the event loop** with SQLite's ``busy_timeout`` at 0: an
uncontended transaction on a WAL file takes tens of microseconds, far less than the hop to a worker
thread and back that it used to pay (four per governed call then; two now: the flow read and the batch).
Whenever it would have to *wait* — another
process holds the file's write lock (``SQLITE_BUSY``), an operation of this store is still running in a
thread, the connection must be (re-)opened, or a WAL checkpoint is due — it runs instead in a worker
thread (``anyio.to_thread``), bounded by ``timeout_s``: the wait for the lock, SQLite's busy timeout and
the await all share one deadline. A busy inline attempt has changed nothing (``BEGIN IMMEDIATE`` takes
the lock before the first read; a read snapshot is ended), so the retry in the thread is the same
transaction, with the same all-or-nothing guarantee. On timeout the await gives up
(:class:`~mcp_guard.errors.StateError`) and the thread, if still running, rolls back instead of
committing once past the deadline, so a call reported as failed is (but for a microsecond race) not
counted either.

The loop never checkpoints: the connection's automatic WAL checkpoint is off, and every
``CHECKPOINT_EVERY`` operations one runs in the worker thread followed by a passive checkpoint. What
the loop can still wait on is the page cache (a WAL append without fsync) and one sync: after a checkpoint
has copied the whole WAL back, the next write starts the WAL from its beginning, and SQLite syncs the WAL's
header then (``synchronous = NORMAL`` does) — on the loop when that write is inline (measured with strace: 0.3–0.5
ms, about once per 500 calls of the default bundle). A disk so stalled that a page-cache write blocks would stall
the thread path's callers as well.

Durability: ``synchronous = NORMAL`` in WAL mode — a power loss may forget the last few counted hits
(never admit a call twice); a crash of the process loses nothing.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import threading
import time
from bisect import bisect_right
from collections import OrderedDict
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from functools import partial
from json.encoder import encode_basestring_ascii as _q  # a str as json.dumps writes it (quoted, ASCII-escaped)
from pathlib import Path
from typing import Any, TypeVar

import anyio
import structlog

from mcp_guard.errors import StateError
from mcp_guard.state.base import (
    PURGE_EVERY_S,
    Admission,
    Admit,
    Applied,
    Bucket,
    Flow,
    FlowBounds,
    FlowCall,
    FlowFull,
    FlowRef,
    FlowTicket,
    LabelOrigin,
    Limit,
    OpResult,
    Record,
    Release,
    StateOp,
    Ticket,
    Unrecord,
    buckets_of,
    flow_expired,
    is_refusal,
    retry_after,
    take_back_label,
    too_many_flows,
    too_many_labels,
)
from mcp_guard.state.sqlite_file import use_wal
from mcp_guard.types import new_id

__all__ = ["SQLiteState"]

_T = TypeVar("_T")

log = structlog.get_logger("mcp_guard.state")

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS rate_hits (
        key TEXT NOT NULL, window_s REAL NOT NULL, ts REAL NOT NULL, hit TEXT NOT NULL,
        PRIMARY KEY (key, window_s, ts, hit)) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS rate_counts (
        key TEXT NOT NULL, window_s REAL NOT NULL, n INTEGER NOT NULL,
        PRIMARY KEY (key, window_s)) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS flows (
        id TEXT NOT NULL PRIMARY KEY, principal TEXT NOT NULL, generation TEXT NOT NULL, seen REAL NOT NULL,
        next_n INTEGER NOT NULL, version INTEGER NOT NULL DEFAULT 0) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS flows_by_principal ON flows (principal, seen)",
    "CREATE INDEX IF NOT EXISTS flows_by_seen ON flows (seen)",
    """CREATE TABLE IF NOT EXISTS flow_labels (
        flow_id TEXT NOT NULL, label TEXT NOT NULL, n INTEGER NOT NULL, origin TEXT NOT NULL, latest TEXT NOT NULL,
        PRIMARY KEY (flow_id, label)) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS flow_calls (
        flow_id TEXT NOT NULL, n INTEGER NOT NULL, decision_id TEXT NOT NULL, call TEXT NOT NULL,
        PRIMARY KEY (flow_id, n)) WITHOUT ROWID""",
)
# A flow's version counts every change to its calls and labels, whoever makes it (see _FlowCache): kept by the file
# itself, so another process — an older mcp-guard among them — or any other connection bumps it too.
_VERSION_TRIGGERS = tuple(
    f"""CREATE TRIGGER IF NOT EXISTS {table}_{event.lower()}_bumps_flow AFTER {event} ON {table}
        BEGIN UPDATE flows SET version = version + 1 WHERE id IN ({rows}); END"""
    for table in ("flow_calls", "flow_labels")
    for event, rows in (("INSERT", "NEW.flow_id"), ("UPDATE", "OLD.flow_id, NEW.flow_id"), ("DELETE", "OLD.flow_id"))
)
_PURGE_BATCH = 1000  # expired flows deleted per purge (the rest wait for the next one)
FLOW_CACHE_SIZE = 1024  # flows kept in memory per store (see _FlowCache)
CHECKPOINT_EVERY = 1000  # operations between WAL checkpoints (each run in the worker thread)
_BUSY_CODES = frozenset({5, 6})  # SQLITE_BUSY, SQLITE_LOCKED (primary codes, any extended variant)


class _Wait:
    """The answer of an inline attempt that would have had to wait (see :meth:`SQLiteState._try_inline`)."""


_WAIT = _Wait()  # the file, not this process: another process's lock, a (re-)open — the worker thread waits it out
_HELD = _Wait()  # this store's own operation in the worker thread holds the connection: it ends soon


class _Expired(Exception):
    """The caller's deadline passed inside the worker thread (the transaction is rolled back)."""


@dataclass(frozen=True, slots=True)
class _CachedFlow:
    """A flow as this store last read or wrote it: its row's generation, ``seen``, ``next_n`` and ``version``, each
    history call's ``n``."""

    generation: str
    seen: float
    next_n: int
    version: int
    ns: tuple[int, ...]
    flow: Flow

    def plus(self, call: FlowCall, n: int, now: float, keep: int, version: int) -> _CachedFlow:
        """The flow after ``call`` was recorded as number ``n`` — the same rows record_call leaves in the file:
        calls numbered above ``n - keep`` stay, a label not yet present gets ``call`` as its origin — and the
        flow row's ``version`` after it."""
        # The numbers ascend (each call gets the flow's next_n), so what goes is a prefix: one slice, not a walk.
        if keep > 0:
            start = bisect_right(self.ns, n - keep)
            ns, history = (*self.ns[start:], n), (*self.flow.history[start:], call)
        else:
            ns, history = (), ()
        labels = self.flow.labels
        if any(label not in labels for label in call.labels):
            labels = dict(labels)
            for label in call.labels:
                labels.setdefault(label, LabelOrigin.of(call))
        return _CachedFlow(self.generation, now, n + 1, version, ns, Flow(self.flow.id, labels, history))


@dataclass(frozen=True, slots=True)
class _Known:
    """What recording a call must know of its flow: generation, next call number, present label names, and the
    whole flow when it is known exactly (cached, or fresh) — then no read is needed and the cache stays warm."""

    generation: str
    next_n: int
    present: Collection[str]
    whole: _CachedFlow | None
    exists: bool = True  # the flow's row is in the file (False: a fresh flow, its row not yet written)


class _FlowCache:
    """The flows this process read or wrote, each checked against its row in the file once another connection has
    written the file.

    Why it is exact: ``PRAGMA data_version`` changes whenever another connection (another process, the pin store)
    commits to the file, and only then; every write of this store's own connection updates or drops the entries it
    touches after it committed. So while the version is the one an entry was taken or last checked at, the entry
    is what the file holds. At a different version the entry is checked before it is used: its flow's row —
    ``generation``, ``seen``, ``next_n`` and ``version`` — read again (one indexed row) and compared. Every change
    to a flow's calls or labels bumps its ``version`` (triggers of the file, so whoever writes), the others are
    the row's own fields; the entry and those four were read in one snapshot (or written in one transaction). So
    equal fields mean the entry is still what the file holds, and a different or missing row drops it.

    Why per entry (before, a different version dropped every entry): with ``run --workers N`` on one file another
    worker commits between any two calls, so every flow read missed and re-read its history — and every decision
    row re-encoded it. Expiry is still checked against the clock on every read. Bounded: least recently used
    entries beyond ``size`` are dropped (0 turns the cache off). Used only under the store's lock."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._entries: OrderedDict[str, _CachedFlow] = OrderedDict()
        self._checked: dict[str, int] = {}  # flow id → the data_version its entry was taken or last checked at
        self._version: int | None = None
        self.kept = 0  # entries checked against their row after another connection's commit, and still exact

    def get(self, db: sqlite3.Cursor, flow_id: str) -> _CachedFlow | None:
        if self._size <= 0:
            return None
        version = int(db.execute("PRAGMA data_version").fetchone()[0])
        self._version = version
        entry = self._entries.get(flow_id)
        if entry is None:
            return None
        if self._checked[flow_id] != version:
            if _flow_row(db, flow_id) != (entry.generation, entry.seen, entry.next_n, entry.version):
                self.drop(flow_id)
                return None
            self._checked[flow_id] = version
            self.kept += 1
        self._entries.move_to_end(flow_id)
        return entry

    def put(self, flow_id: str, entry: _CachedFlow) -> None:
        if self._size <= 0 or self._version is None:
            return
        self._entries[flow_id] = entry
        self._checked[flow_id] = self._version
        self._entries.move_to_end(flow_id)
        while len(self._entries) > self._size:
            gone, _ = self._entries.popitem(last=False)
            del self._checked[gone]

    def drop(self, flow_id: str) -> None:
        self._entries.pop(flow_id, None)
        self._checked.pop(flow_id, None)

    def clear(self) -> None:
        self._entries.clear()
        self._checked.clear()
        self._version = None


class SQLiteState:
    """The state store in one SQLite file. ``clock`` (wall-clock seconds) is injectable for tests."""

    def __init__(
        self,
        path: str | Path,
        *,
        timeout_s: float = 1.0,
        clock: Callable[[], float] = time.time,
        flows: FlowBounds | None = None,
        inline: bool = True,
        flow_cache: int = FLOW_CACHE_SIZE,
    ) -> None:
        self.path = Path(path)
        self._file = str(self.path)  # what os.stat is given before every operation (no Path → str each time)
        self.timeout_s = timeout_s
        self._clock = clock
        self.bounds = flows or FlowBounds()
        self._purged = 0.0
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._cur: sqlite3.Cursor | None = None  # the one cursor every operation runs its statements on
        self._ident: tuple[int, int] | None = None
        self._busy_ms = -1  # the connection's busy_timeout as last set (-1: unknown)
        self._inline = inline  # False: every operation in the worker thread (tests of the thread path)
        self._since_checkpoint = 0
        self._thread_done: anyio.Event | None = None  # set when the operation now in the worker thread returns
        self.stats = {"inline": 0, "thread": 0, "busy": 0, "checkpoints": 0, "flow_hits": 0, "waited": 0}
        self._flows = _FlowCache(flow_cache)
        # the task whose batch ran at once in this turn of the event loop (apply: group commit); None: none did
        self._turn_task: asyncio.Task[Any] | None = None
        self._group: _Group | None = None  # the batches waiting for the next group transaction
        self._group_tasks: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Open the file (creating it and its tables); StateError if it cannot be."""
        await self._run(lambda _db, _deadline: None, "open")

    async def aclose(self) -> None:
        if self._group_tasks:  # a group on its way: its callers get their answers before the file closes
            await asyncio.wait(set(self._group_tasks))
        with self._lock:
            self._close()

    def _close(self) -> None:
        if self._db is not None:
            self._db.close()
        self._db, self._cur, self._ident, self._busy_ms = None, None, None, -1
        self._flows.clear()

    def _connection(self) -> sqlite3.Cursor:
        """The open connection's cursor, re-opened if the path no longer names the file it has open.

        One cursor for every statement: ``Connection.execute`` makes (and registers) a new cursor per statement.
        Every statement's rows are read to the end (one row, ``fetchall``, or iterated out) before the next is
        run, so sharing it never holds a read snapshot open past the statement."""
        if self._cur is not None and self._ident == _identity(self._file):
            return self._cur
        self._close()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            use_wal(db)
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA wal_autocheckpoint=0")  # checkpoints run in the thread (_locked), never inline
            for stmt in _SCHEMA:
                db.execute(stmt)
            _add_flow_versions(db)
        except BaseException:
            db.close()
            raise
        self._db, self._cur, self._ident = db, db.cursor(), _identity(self._file)
        return self._cur

    # ------------------------------------------------------------------ running one operation
    async def _run(self, op: Callable[[sqlite3.Cursor, float], _T], what: _Said) -> _T:
        """``op`` inline when it can finish without waiting, else in the worker thread (bounded by ``timeout_s``).

        Every CHECKPOINT_EVERY operations one runs in the thread, and the checkpoint after it. An attempt that
        meets this store's own operation in the thread (it holds the connection, or it is the one that will
        checkpoint) waits on the loop for it to return and tries inline again. It used to follow it into the
        thread, and under steady concurrent load the operations arriving meanwhile kept finding the connection
        held: the store stayed on the thread path, several thread hops per call.

        The common case — inline at the first attempt — enters no timeout scope (it cannot wait)."""
        value: _T | _Wait = _WAIT  # not inline, or the file makes it wait: the thread waits it out
        if self._inline:
            if self._since_checkpoint < CHECKPOINT_EVERY:
                value = self._try_inline(op, what)
                if not isinstance(value, _Wait):
                    return value
            else:
                value = _HELD  # a checkpoint is due: the operation in the thread (if any) runs it; wait for that one
        try:
            with anyio.fail_after(self.timeout_s):
                while value is _HELD:
                    done = self._thread_done
                    if done is None:
                        break  # none of ours in the thread (an abandoned one may still hold it): queue behind
                    self.stats["waited"] += 1
                    await done.wait()
                    if self._since_checkpoint < CHECKPOINT_EVERY:
                        value = self._try_inline(op, what)
                        if not isinstance(value, _Wait):
                            return value
                return await self._in_thread(op, what)
        except TimeoutError:
            raise self._timed_out(what) from None

    async def _in_thread(self, op: Callable[[sqlite3.Cursor, float], _T], what: _Said) -> _T:
        """``op`` in the worker thread (:meth:`_locked`); inline attempts meanwhile wait for it (:meth:`_run`)."""
        done = self._thread_done = anyio.Event()
        try:
            deadline = time.monotonic() + self.timeout_s
            return await anyio.to_thread.run_sync(self._locked, op, deadline, what, abandon_on_cancel=True)
        finally:
            done.set()
            if self._thread_done is done:
                self._thread_done = None

    def _try_inline(self, op: Callable[[sqlite3.Cursor, float], _T], what: _Said) -> _T | _Wait:
        """Run ``op`` on the event loop if it can finish without waiting: its value; else :data:`_WAIT`
        with nothing changed, and the caller runs it in the worker thread.

        It would wait when this store's lock is held (an operation still in a thread), when the
        connection must be (re-)opened, or when another process holds the file's lock (SQLITE_BUSY
        at busy_timeout 0: the attempt is rolled back). Any other error is the operation's answer."""
        if not self._lock.acquire(blocking=False):
            return _HELD
        try:
            db = self._cur
            if db is None or self._ident != _identity(self._file):
                return _WAIT
            if self._busy_ms != 0:
                db.execute("PRAGMA busy_timeout = 0")
                self._busy_ms = 0
            try:
                value = op(db, time.monotonic() + self.timeout_s)
            except sqlite3.OperationalError as e:
                if (getattr(e, "sqlite_errorcode", 0) & 0xFF) not in _BUSY_CODES:
                    raise
                if db.connection.in_transaction:
                    db.execute("ROLLBACK")
                self.stats["busy"] += 1
                return _WAIT
            self._since_checkpoint += 1
            self.stats["inline"] += 1
            return value
        except _Expired:
            raise self._timed_out(what) from None
        except (sqlite3.Error, OSError) as e:
            raise self._failed(e, what) from e
        finally:
            self._lock.release()

    def _locked(self, op: Callable[[sqlite3.Cursor, float], _T], deadline: float, what: _Said) -> _T:
        if not self._lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
            raise self._error(what, "busy", "busy")
        try:
            db = self._connection()
            self._busy_ms = max(1, int((deadline - time.monotonic()) * 1000))
            db.execute(f"PRAGMA busy_timeout = {self._busy_ms}")
            value = op(db, deadline)
            self.stats["thread"] += 1
            self._checkpoint(db)
            return value
        except _Expired:
            raise self._timed_out(what) from None
        except (sqlite3.Error, OSError) as e:
            raise self._failed(e, what) from e
        finally:
            self._lock.release()

    def _checkpoint(self, db: sqlite3.Cursor) -> None:
        """Every CHECKPOINT_EVERY operations (in the thread, after an operation): copy the WAL back into the
        file. PASSIVE: it never waits for readers or writers; a failure only lets the WAL grow until the next."""
        self._since_checkpoint += 1
        if self._since_checkpoint < CHECKPOINT_EVERY:
            return
        self._since_checkpoint = 0
        try:
            db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            self.stats["checkpoints"] += 1
        except sqlite3.Error as e:
            log.warning("state.checkpoint_failed", path=str(self.path), error=str(e))

    def _failed(self, e: sqlite3.Error | OSError, what: _Said) -> StateError:
        self._close()  # re-open next time: the file may have been repaired or replaced
        return self._error(what, str(e), e.strerror if isinstance(e, OSError) and e.strerror else str(e))

    def _timed_out(self, what: _Said) -> StateError:
        cause = f"no answer within {self.timeout_s * 1000:.0f} ms"
        return self._error(what, cause, cause)

    def _error(self, what: _Said, problem: str, cause: str) -> StateError:
        """The StateError of an operation: ``the state store PATH cannot WHAT: PROBLEM`` (``cause``: for clients)."""
        return StateError(f"the state store {self.path} cannot {_said(what)}: {problem}", cause=cause)

    # ------------------------------------------------------------------ writes: one batch, one transaction
    async def apply(self, ops: Sequence[StateOp]) -> Applied:
        """``ops`` in one ``BEGIN IMMEDIATE`` transaction, in order; the first refusal rolls it all back.

        The clock is read once, under the write lock. Flow-cache updates wait for the COMMIT (a rolled-back
        batch leaves the cache as the file is). An error rolls back too (StateError: nothing was kept).

        Group commit: the first batch of a turn of the event loop runs at once, as it always did (a lone call pays
        nothing, nor a caller applying several batches in a row); batches other tasks bring in the same turn —
        concurrent calls — share one transaction, run by one task on the next turn, each inside a savepoint of its
        own (:meth:`_apply_group`): a refusal or an error rolls back only its batch, and one COMMIT writes the
        pages they share once. A grouped batch, like one abandoned in the worker thread, may still be applied when
        its caller is cancelled while it waits."""
        if not ops:
            return Applied(())
        group, task = self._group, asyncio.current_task()
        if group is None and (self._turn_task is None or self._turn_task is task):  # alone, or the same caller again
            if self._turn_task is None:
                asyncio.get_running_loop().call_soon(self._end_turn)
            self._turn_task = task
            return await self._apply_one(ops)
        if group is None:
            group = self._group = _Group()
            task = asyncio.get_running_loop().create_task(self._apply_group(group))
            self._group_tasks.add(task)
            task.add_done_callback(self._group_tasks.discard)
        return await group.join(ops)

    def _end_turn(self) -> None:
        self._turn_task = None

    async def _apply_one(self, ops: Sequence[StateOp]) -> Applied:
        """One batch in its own transaction (:meth:`apply`)."""

        def op(db: sqlite3.Cursor, deadline: float) -> Applied:
            committed: list[Callable[[], None]] = []  # cache updates, run once the batch has committed
            with _immediate(db, deadline) as tx:
                now = self._clock()  # read under the write lock: hit times follow commit order
                results = self._batch(db, ops, now, committed)
                if not results.committed:
                    tx.roll_back()
                    return results
            for update in committed:
                update()
            return results

        return await self._run(op, partial(_what, ops))  # named only if it fails

    async def _apply_group(self, group: _Group) -> None:
        """The batches that joined ``group`` until now, in one ``BEGIN IMMEDIATE``, each in a savepoint: a refused
        batch (or one that failed) is rolled back to its savepoint alone. The flow cache follows each batch as it
        is released — a later batch of the group may record into the same flow and must see it — and is emptied
        if the COMMIT does not happen (the cache may then be ahead of the file; empty, it is exact again)."""
        self._group = None  # from here on, new batches start a new group
        batches = group.batches

        def op(db: sqlite3.Cursor, deadline: float) -> list[Applied | StateError]:
            outcomes: list[Applied | StateError] = []
            done = False
            try:
                with _immediate(db, deadline):
                    now = self._clock()  # read under the write lock: hit times follow commit order
                    for ops in batches:
                        outcomes.append(self._in_savepoint(db, ops, now))
                done = True
            finally:
                if not done:
                    self._flows.clear()
            return outcomes

        try:
            outcomes = await self._run(op, partial(_what, batches[0]))
        except Exception as e:  # the whole group failed (StateError): every caller gets it
            group.fail(e)
            return
        except BaseException:  # cancelled (the loop is closing): the callers fail closed
            group.fail(StateError(f"the state store {self.path} closed", cause="closed"))
            raise
        group.settle(outcomes)

    def _in_savepoint(self, db: sqlite3.Cursor, ops: Sequence[StateOp], now: float) -> Applied | StateError:
        """One batch of a group inside ``SAVEPOINT``: its results, or the StateError that rolled it back alone."""
        committed: list[Callable[[], None]] = []
        db.execute("SAVEPOINT batch")
        try:
            results = self._batch(db, ops, now, committed)
            if not results.committed:
                db.execute("ROLLBACK TO batch")
                committed.clear()
        except sqlite3.Error as e:
            db.execute("ROLLBACK TO batch")
            db.execute("RELEASE batch")
            return self._error(_what(ops), str(e), str(e))
        db.execute("RELEASE batch")
        for update in committed:  # this batch's cache updates, before the next batch reads the cache
            update()
        return results

    def _batch(
        self, db: sqlite3.Cursor, ops: Sequence[StateOp], now: float, committed: list[Callable[[], None]]
    ) -> Applied:
        """``ops`` in order inside the caller's transaction, up to the first refusal (the caller rolls back then:
        ``committed`` is False)."""
        results: list[OpResult] = []
        for one in ops:
            results.append(self._op(db, one, now, committed))
            if is_refusal(results[-1]):
                break
        return Applied(tuple(results))

    def _op(self, db: sqlite3.Cursor, op: StateOp, now: float, committed: list[Callable[[], None]]) -> OpResult:
        if isinstance(op, Admit):
            return _admit(db, op.limits, now)
        if isinstance(op, Record):
            return self._record(db, op.ref, op.call, now, committed)
        if isinstance(op, Release):
            _release(db, op.ticket)
            return None
        self._unrecord(db, op.ticket)
        return None

    async def admit(self, limits: Sequence[Limit]) -> Admission:
        result = (await self.apply([Admit(tuple(limits))])).results[0]
        assert isinstance(result, Admission)
        return result

    async def release(self, ticket: Ticket) -> None:
        await self.apply([Release(ticket)])

    async def record_call(self, ref: FlowRef, call: FlowCall) -> FlowTicket | FlowFull:
        result = (await self.apply([Record(ref, call)])).results[0]
        assert isinstance(result, FlowTicket | FlowFull)
        return result

    async def unrecord_call(self, ticket: FlowTicket) -> None:
        await self.apply([Unrecord(ticket)])

    # ------------------------------------------------------------------ reads
    async def usage(self, buckets: Sequence[Bucket]) -> dict[Bucket, int]:
        def op(db: sqlite3.Cursor, _deadline: float) -> dict[Bucket, int]:
            if len(buckets) == 1:  # one statement is one snapshot already: no BEGIN … COMMIT around it
                return {buckets[0]: _live_count(db, buckets[0], self._clock())}
            db.execute("BEGIN")  # one read snapshot for every bucket
            try:
                now = self._clock()
                return {b: _live_count(db, b, now) for b in buckets}
            finally:
                db.execute("COMMIT")

        return await self._run(op, "read usage")

    async def flow(self, flow_id: str) -> Flow:
        def op(db: sqlite3.Cursor, _deadline: float) -> Flow:
            cached = self._flows.get(db, flow_id)
            if cached is not None:
                self.stats["flow_hits"] += 1
                return Flow(flow_id) if flow_expired(cached.seen, self._clock(), self.bounds) else cached.flow
            db.execute("BEGIN")  # one read snapshot
            try:
                row = _flow_row(db, flow_id)
                if row is None or flow_expired(row[1], self._clock(), self.bounds):
                    return Flow(flow_id)
                labels = {
                    str(label): LabelOrigin.from_json(json.loads(origin))
                    for label, origin in db.execute(
                        "SELECT label, origin FROM flow_labels WHERE flow_id=?", (flow_id,)
                    ).fetchall()
                }
                ns, history = _history_with_ns(db, flow_id)
                flow = Flow(flow_id, labels, history)
                self._flows.put(flow_id, _CachedFlow(*row, ns, flow))
                return flow
            finally:
                db.execute("COMMIT")

        return await self._run(op, "read the flow")

    # ------------------------------------------------------------------ the ops (inside the batch's transaction)
    def _record(
        self, db: sqlite3.Cursor, ref: FlowRef, call: FlowCall, now: float, committed: list[Callable[[], None]]
    ) -> FlowTicket | FlowFull:
        """Record ``call`` in its flow. Under the write lock the flow cache is exact (no other connection can
        commit; ``data_version`` says whether one did since), so a cached live flow needs no read at all."""
        bounds = self.bounds
        self._purge(db, now)
        cached = self._flows.get(db, ref.id)
        if cached is not None and flow_expired(cached.seen, now, bounds):
            cached = None
        known = _Known(cached.generation, cached.next_n, cached.flow.labels.keys(), cached) if cached else None
        if known is None:
            read = self._read_for_record(db, ref, now)
            if isinstance(read, FlowFull):
                return read
            known = read
        labels = list(dict.fromkeys(call.labels))
        present = known.present
        full = too_many_labels(len(present), sum(1 for x in labels if x not in present), bounds)
        if full is not None:
            return full
        generation, n, whole = known.generation, known.next_n, known.whole
        _write_call(db, ref.id, call, n, bounds.history, whole)
        if labels:
            origin = _origin_json(call)
            for label in labels:
                if label in present:
                    db.execute(
                        "UPDATE flow_labels SET n = n + 1, latest = ? WHERE flow_id=? AND label=?",
                        (origin, ref.id, label),
                    )
                else:
                    db.execute(
                        "INSERT INTO flow_labels (flow_id, label, n, origin, latest) VALUES (?, ?, 1, ?, ?)",
                        (ref.id, label, origin, origin),
                    )
        # Last, so that the version it returns counts this call's own changes (the triggers have run).
        version = _write_flow_row(db, ref, generation, now, n, known.exists)
        # Once committed: the whole flow plus this call is what the file holds; a flow not wholly known is dropped.
        after = whole.plus(call, n, now, bounds.history, version) if whole is not None else None
        committed.append(partial(self._cache_put, ref.id, after))
        return FlowTicket(ref.id, generation, call)

    def _read_for_record(self, db: sqlite3.Cursor, ref: FlowRef, now: float) -> _Known | FlowFull:
        """The flow as :meth:`_record` needs it when the cache does not hold it: a fresh one (the old rows of an
        expired one deleted) unless its principal has too many; else its row and the names of its labels."""
        bounds = self.bounds
        row = _flow_row(db, ref.id)
        if row is None or flow_expired(row[1], now, bounds):
            _delete_flows(db, [ref.id])
            live = db.execute(
                "SELECT count(*) FROM flows WHERE principal=? AND seen > ?", (ref.principal, now - bounds.idle_s)
            ).fetchone()[0]
            full = too_many_flows(ref.principal, int(live), bounds)
            if full is not None:
                return full
            generation = new_id()
            fresh = _CachedFlow(generation, now, 0, 0, (), Flow(ref.id))  # wholly known: nothing recorded yet
            return _Known(generation, 0, (), fresh, exists=False)
        present = {str(r[0]) for r in db.execute("SELECT label FROM flow_labels WHERE flow_id=?", (ref.id,))}
        return _Known(row[0], row[2], present, None)

    def _cache_put(self, flow_id: str, entry: _CachedFlow | None) -> None:
        if entry is None:
            self._flows.drop(flow_id)
        else:
            self._flows.put(flow_id, entry)

    def _unrecord(self, db: sqlite3.Cursor, ticket: FlowTicket) -> None:
        self._flows.drop(ticket.flow_id)  # rare: the next read goes to the file
        row = db.execute("SELECT generation FROM flows WHERE id=?", (ticket.flow_id,)).fetchone()
        if row is None or row[0] != ticket.generation:
            return
        gone = ticket.call.decision_id
        db.execute("DELETE FROM flow_calls WHERE flow_id=? AND decision_id=?", (ticket.flow_id, gone))
        history: list[FlowCall] | None = None
        for label in dict.fromkeys(ticket.call.labels):
            have = db.execute(
                "SELECT n, origin, latest FROM flow_labels WHERE flow_id=? AND label=?", (ticket.flow_id, label)
            ).fetchone()
            if have is None:
                continue
            if int(have[0]) <= 1:
                db.execute("DELETE FROM flow_labels WHERE flow_id=? AND label=?", (ticket.flow_id, label))
                continue
            if history is None:
                history = list(_history(db, ticket.flow_id))
            n, origin, latest = take_back_label(
                int(have[0]),
                LabelOrigin.from_json(json.loads(have[1])),
                LabelOrigin.from_json(json.loads(have[2])),
                gone,
                history,
                label,
            )
            db.execute(
                "UPDATE flow_labels SET n = ?, origin = ?, latest = ? WHERE flow_id=? AND label=?",
                (n, json.dumps(origin.to_policy()), json.dumps(latest.to_policy()), ticket.flow_id, label),
            )

    def _purge(self, db: sqlite3.Cursor, now: float) -> None:
        """Delete a batch of expired flows (inside a write transaction, at most every PURGE_EVERY_S seconds —
        or at the next write again while batches come back full, so a backlog drains faster than flows can
        be created: each write creates at most one)."""
        if now - self._purged < PURGE_EVERY_S:
            return
        expired = [
            str(r[0])
            for r in db.execute(
                "SELECT id FROM flows WHERE seen <= ? LIMIT ?", (now - self.bounds.idle_s, _PURGE_BATCH)
            ).fetchall()
        ]
        _delete_flows(db, expired)
        self._purged = now if len(expired) < _PURGE_BATCH else 0.0


# ---------------------------------------------------------------------- SQL helpers (inside the thread)
class _immediate:
    """``BEGIN IMMEDIATE`` … ``COMMIT`` (rolled back on error, when the caller's deadline has passed, or when the
    body asked for it with :meth:`roll_back`)."""

    def __init__(self, db: sqlite3.Cursor, deadline: float) -> None:
        self._db, self._deadline = db, deadline
        self._keep = True

    def __enter__(self) -> _immediate:
        self._db.execute("BEGIN IMMEDIATE")
        return self

    def roll_back(self) -> None:
        """End the transaction with ROLLBACK: nothing it wrote is kept (a refused batch)."""
        self._keep = False

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None and self._keep and time.monotonic() <= self._deadline:
            self._db.execute("COMMIT")
            return
        self._db.execute("ROLLBACK")
        if exc_type is None and self._keep:
            raise _Expired


class _Group:
    """Batches of one group transaction (:meth:`SQLiteState._apply_group`), each with its caller's future."""

    __slots__ = ("batches", "futures")

    def __init__(self) -> None:
        self.batches: list[Sequence[StateOp]] = []
        self.futures: list[asyncio.Future[Applied]] = []

    async def join(self, ops: Sequence[StateOp]) -> Applied:
        future: asyncio.Future[Applied] = asyncio.get_running_loop().create_future()
        self.batches.append(ops)
        self.futures.append(future)
        return await future  # cancelled: the batch may still be applied (as one abandoned in the thread may)

    def settle(self, outcomes: list[Applied | StateError]) -> None:
        for future, outcome in zip(self.futures, outcomes, strict=True):
            if future.done():
                continue
            if isinstance(outcome, StateError):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)

    def fail(self, error: Exception) -> None:
        for future in self.futures:
            if not future.done():
                future.set_exception(error)


_Said = str | Callable[[], str]  # what an operation does, for its StateError (a batch's is put into words only then)


def _said(what: _Said) -> str:
    return what if isinstance(what, str) else what()


def _what(ops: Sequence[StateOp]) -> str:
    """What a batch does, for the StateError naming it: ``cannot count this call and record …``."""
    return " and ".join(dict.fromkeys(_WHAT[type(op)] for op in ops))


_WHAT: dict[type, str] = {
    Admit: "count this call",
    Release: "take back a counted call",
    Record: "record the call in its flow",
    Unrecord: "take a call back from its flow",
}


def _admit(db: sqlite3.Cursor, limits: Sequence[Limit], now: float) -> Admission:
    """Count one hit in every limit's bucket iff all have room (inside the batch's write transaction)."""
    pruned = {b: _prune(db, b, now) for b in buckets_of(limits)}
    counts = {b: n for b, (n, _stored) in pruned.items()}
    full = tuple(lim for lim in limits if counts[lim.bucket] >= lim.limit)
    if full:
        wait = max(retry_after(_nth_oldest(db, f.bucket, counts[f.bucket] - f.limit), f.window_s, now) for f in full)
        return Admission(False, counts, full, wait)
    hit = new_id()
    for (key, window_s), (n, stored) in pruned.items():
        db.execute("INSERT INTO rate_hits (key, window_s, ts, hit) VALUES (?, ?, ?, ?)", (key, window_s, now, hit))
        _set_count(db, (key, window_s), n + 1, stored)
    return Admission(True, {b: n + 1 for b, n in counts.items()}, ticket=Ticket(hit, now, tuple(counts)))


def _release(db: sqlite3.Cursor, ticket: Ticket) -> None:
    for key, window_s in ticket.buckets:
        cur = db.execute(
            "DELETE FROM rate_hits WHERE key=? AND window_s=? AND ts=? AND hit=?",
            (key, window_s, ticket.ts, ticket.hit),
        )
        if cur.rowcount:
            db.execute(
                "UPDATE rate_counts SET n = max(n - ?, 0) WHERE key=? AND window_s=?", (cur.rowcount, key, window_s)
            )


def _history_with_ns(db: sqlite3.Cursor, flow_id: str) -> tuple[tuple[int, ...], tuple[FlowCall, ...]]:
    """The flow's history and each call's ``n`` (numbers can have gaps where a call was taken back)."""
    rows = db.execute("SELECT n, call FROM flow_calls WHERE flow_id=? ORDER BY n", (flow_id,)).fetchall()
    docs = json.loads("[" + ",".join(r[1] for r in rows) + "]")
    return tuple(int(r[0]) for r in rows), tuple(FlowCall.from_json(d) for d in docs)


def _history(db: sqlite3.Cursor, flow_id: str) -> tuple[FlowCall, ...]:
    return _history_with_ns(db, flow_id)[1]


def _flow_row(db: sqlite3.Cursor, flow_id: str) -> tuple[str, float, int, int] | None:
    """The flow's row as the cache keeps it — ``generation``, ``seen``, ``next_n``, ``version`` — or None."""
    row = db.execute("SELECT generation, seen, next_n, version FROM flows WHERE id=?", (flow_id,)).fetchone()
    return None if row is None else (str(row[0]), float(row[1]), int(row[2]), int(row[3]))


def _write_flow_row(db: sqlite3.Cursor, ref: FlowRef, generation: str, now: float, n: int, exists: bool) -> int:
    """The flow's row once its call number ``n`` is recorded: ``seen`` now, ``next_n`` n + 1; its ``version`` after
    it. A row known to be in the file (a cached flow, or one just read) is updated in place: one search of the
    table, where an upsert first tries the insert. Should it be missing after all, the upsert writes it as before."""
    if exists:
        row = db.execute(
            "UPDATE flows SET seen = ?, next_n = ? WHERE id=? RETURNING version", (now, n + 1, ref.id)
        ).fetchone()
        if row is not None:
            return int(row[0])
    row = db.execute(
        "INSERT INTO flows (id, principal, generation, seen, next_n) VALUES (?, ?, ?, ?, ?) "
        "ON CONFLICT (id) DO UPDATE SET seen = excluded.seen, next_n = excluded.next_n RETURNING version",
        (ref.id, ref.principal, generation, now, n + 1),
    ).fetchone()
    return int(row[0])


def _write_call(db: sqlite3.Cursor, flow_id: str, call: FlowCall, n: int, keep: int, whole: _CachedFlow | None) -> None:
    """Add ``call`` to the flow's history as number ``n``; the calls numbered ``n - keep`` or below leave it.

    When the flow is wholly known its numbers say what leaves without a look: nothing (the insert alone), or
    exactly the oldest call — a long flow's steady state — whose row then becomes the new call's (one UPDATE
    instead of an INSERT and a DELETE; the file ends the same). Otherwise, or should that row be missing after
    all, the insert and a range delete."""
    text, cutoff = _call_json(call), n - keep
    ns = whole.ns if whole is not None and keep > 0 else None  # None: what leaves is not known
    if ns and ns[0] <= cutoff and (len(ns) == 1 or ns[1] > cutoff):
        moved = db.execute(
            "UPDATE flow_calls SET n = ?, decision_id = ?, call = ? WHERE flow_id=? AND n=?",
            (n, call.decision_id, text, flow_id, ns[0]),
        )
        if moved.rowcount:
            return
    db.execute(
        "INSERT INTO flow_calls (flow_id, n, decision_id, call) VALUES (?, ?, ?, ?)",
        (flow_id, n, call.decision_id, text),
    )
    if ns is None or (ns and ns[0] <= cutoff):
        db.execute("DELETE FROM flow_calls WHERE flow_id=? AND n <= ?", (flow_id, cutoff))


def _call_json(call: FlowCall) -> str:
    """``json.dumps(call.to_json())`` — the same text, written directly (a third of the cost: no dict, no
    encoder built per call). tests/state/test_state_batches.py holds it to json.dumps, awkward strings included."""
    labels = ", ".join(map(_q, call.labels))
    return (
        f'{{"server": {_q(call.server)}, "tool": {_q(call.tool)}, "action": {_q(call.action)}, '
        f'"decision": {_q(call.decision)}, "labels": [{labels}], "decision_id": {_q(call.decision_id)}, '
        f'"time": {_q(call.time)}}}'
    )


def _origin_json(call: FlowCall) -> str:
    """``json.dumps(LabelOrigin.of(call).to_policy())``, written directly like :func:`_call_json`."""
    return (
        f'{{"decision_id": {_q(call.decision_id)}, "server": {_q(call.server)}, "tool": {_q(call.tool)}, '
        f'"time": {_q(call.time)}}}'
    )


def _add_flow_versions(db: sqlite3.Connection) -> None:
    """Give a state file made before flow versions existed its ``flows.version`` column (0 for every flow), and
    any file the triggers that keep it. Two processes opening one old file at once may both try the column: the
    second finds it there."""
    if not any(row[1] == "version" for row in db.execute("PRAGMA table_info(flows)")):
        try:
            db.execute("ALTER TABLE flows ADD COLUMN version INTEGER NOT NULL DEFAULT 0")
        except sqlite3.OperationalError as e:
            if "duplicate column" not in str(e):
                raise
    for stmt in _VERSION_TRIGGERS:
        db.execute(stmt)


def _delete_flows(db: sqlite3.Cursor, ids: Sequence[str]) -> None:
    for flow_id in ids:  # the flow's row first: the version triggers then find no row to bump
        db.execute("DELETE FROM flows WHERE id=?", (flow_id,))
        db.execute("DELETE FROM flow_calls WHERE flow_id=?", (flow_id,))
        db.execute("DELETE FROM flow_labels WHERE flow_id=?", (flow_id,))


def _identity(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_dev, st.st_ino)


def _prune(db: sqlite3.Cursor, bucket: Bucket, now: float) -> tuple[int, bool]:
    """The bucket's count of hits in the window, and whether its count row exists; the hits that left the window
    are deleted only when there are some — the one read says how many (an indexed range, like the delete). The
    stored count is left to the caller: an admitted hit writes it once, counted in (:func:`_admit`), and a refusal
    rolls the batch back (the delete with it) — one write a call, not two."""
    key, window_s = bucket
    n, gone = db.execute(
        "SELECT (SELECT n FROM rate_counts WHERE key=?1 AND window_s=?2),"
        " (SELECT count(*) FROM rate_hits WHERE key=?1 AND window_s=?2 AND ts <= ?3)",
        (key, window_s, now - window_s),
    ).fetchone()
    stored = n is not None
    n = int(n) if stored else 0
    if not gone:
        return max(0, n), stored
    pruned = db.execute("DELETE FROM rate_hits WHERE key=? AND window_s=? AND ts <= ?", (key, window_s, now - window_s))
    return max(0, n - pruned.rowcount), stored


def _set_count(db: sqlite3.Cursor, bucket: Bucket, n: int, stored: bool) -> None:
    """Store the bucket's count: an UPDATE of the row the admission read (one search of the table, where an
    upsert first tries the insert), the upsert for a bucket's first hit."""
    if stored and db.execute("UPDATE rate_counts SET n = ? WHERE key=? AND window_s=?", (n, *bucket)).rowcount:
        return
    db.execute(
        "INSERT INTO rate_counts (key, window_s, n) VALUES (?, ?, ?) "
        "ON CONFLICT (key, window_s) DO UPDATE SET n = excluded.n",
        (*bucket, n),
    )


def _nth_oldest(db: sqlite3.Cursor, bucket: Bucket, n: int) -> float:
    """The time of the bucket's ``n``-th oldest hit (0 = oldest); the hit whose expiry makes room."""
    row = db.execute(
        "SELECT ts FROM rate_hits WHERE key=? AND window_s=? ORDER BY ts LIMIT 1 OFFSET ?", (*bucket, max(0, n))
    ).fetchone()
    return float(row[0]) if row else 0.0


def _live_count(db: sqlite3.Cursor, bucket: Bucket, now: float) -> int:
    """Hits in the window now: the bucket's count less its expired hits not yet pruned (one statement)."""
    row = db.execute(
        "SELECT coalesce((SELECT n FROM rate_counts WHERE key=?1 AND window_s=?2), 0)"
        " - (SELECT count(*) FROM rate_hits WHERE key=?1 AND window_s=?2 AND ts <= ?3)",
        (*bucket, now - bucket[1]),
    ).fetchone()
    return max(0, int(row[0]))
