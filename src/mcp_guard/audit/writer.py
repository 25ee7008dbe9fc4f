"""The group-commit writer: one task turns queued events into batched transactions of a backend.

Callers hand :class:`AuditWriter` finished :class:`~mcp_guard.types.AuditEvent` values; the writer
task hands batches of them to an :class:`~mcp_guard.audit.backend.AuditBackend`, which numbers,
hashes and commits each batch in one transaction (docs/architecture.md §6)::

    record(event) ──┐                                  ┌─► each record(): its seq, or AuditError
    record(event) ──┼─► bounded queue ─► writer task ──┤
    record_nowait ──┘    (queue_max)    ≤ batch_max    └─► backend.append(batch) = one transaction
                                        per transaction

Nothing here knows which database is behind the backend. The guarantees:

* **Group commit.** While one transaction is in flight new events queue up; the next transaction
  takes all of them (up to ``batch_max``, rounded down to a power of two so that a backend can
  write a batch as a single statement). Load makes transactions bigger, not the queue longer. A
  backend that can commit on the loop without waiting (:class:`~mcp_guard.audit.backend.InlineAppend`,
  SQLite) is offered each batch first: no thread hop, and one writer wake-up per batch, not per event —
  events recorded while the writer waits for its turn on the loop form the next batch. A lone
  record() — the writer idle, nothing queued, no load — commits its own row the same way in the
  caller's task (:meth:`AuditWriter._commit_now`), skipping the future and the writer's wake-up. A
  record() that finds the queue full (``queue_max``) waits its turn; a record_nowait() is dropped
  and counted.
* **Ordering.** :meth:`AuditWriter.record` returns only after the transaction holding its event has
  committed (how durable a commit is, is the backend's to say: see :mod:`mcp_guard.audit.sqlite`).
  The pipeline relies on it: the decision row is committed before a call is forwarded, the outcome
  row before the client is answered.
* **Serialising is the caller's.** :meth:`~AuditWriter.record` turns the event into its stored
  values and their canonical JSON body (the hashed part) before it queues it, so the writer's
  serial path only numbers, hashes and inserts. An event that cannot be stored is refused at the
  door, never in the middle of a batch.
* **Failure is loud and bounded.** An event that cannot be committed (disk full, database locked by
  another writer, file removed or replaced, writer gone) makes ``record`` raise
  :class:`~mcp_guard.errors.AuditError` within ``record_timeout``, so the pipeline can deny the
  call. A failed transaction fails only its batch (the next may succeed); a backend that reports a
  :meth:`~mcp_guard.audit.backend.AuditBackend.problem` (its file is gone) or a bug in the writer
  breaks the writer for good: every later ``record`` raises at once.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio
import structlog
from anyio.abc import TaskStatus

from mcp_guard.audit import schema
from mcp_guard.audit.backend import AuditBackend, InlineAppend
from mcp_guard.audit.chain import (
    EncodedJson,
    canonical_json,
    canonical_json_quoted_last,
    clean_text,
    fast_json_text,
    json_text,
)
from mcp_guard.errors import AuditError
from mcp_guard.types import AuditEvent

__all__ = ["AuditStats", "AuditWriter"]

log = structlog.get_logger("mcp_guard.audit")

CLOSED = "audit store is closed"


@dataclass(slots=True)
class AuditStats:
    """Counters for health checks and the benchmark."""

    committed: int = 0  # events committed
    batches: int = 0  # transactions committed
    failed: int = 0  # events whose transaction failed, or that were never written
    dropped: int = 0  # record_nowait events refused (queue full, store broken or closed)
    expired: int = 0  # record() calls that gave up waiting (record_timeout)
    largest_batch: int = 0


@dataclass(slots=True, eq=False)
class _Pending:
    """One event on its way to the database (a :class:`~mcp_guard.audit.chain.RowBody`)."""

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
assert _VALUE_ORDER == schema.BODY_COLUMNS, "writer._values() is out of step with schema.BODY_COLUMNS"


def _texts(event: AuditEvent) -> tuple[Any, ...]:
    """The event's text columns as given, in BODY_COLUMNS order (``policy_revision`` last)."""
    return (
        event.event_id,
        event.ts,
        event.kind,
        event.session_id,
        event.decision_id,
        event.principal,
        event.server,
        event.tool,
        event.policy_revision,
    )


def _values(event: AuditEvent, texts: Sequence[Any], js: Callable[[Any], str | None]) -> tuple[Any, ...]:
    """The stored values of ``event``'s row body, in BODY_COLUMNS order, its text columns ``texts`` as stored
    (:func:`_texts`, each made storable by the caller)."""
    duration = event.duration_ms
    if duration is not None:
        duration = float(duration)
        if not math.isfinite(duration):
            duration = None  # a database would store NaN as NULL (or refuse it): hash what is stored
    reasons = event.reasons
    event_id, ts, kind, session_id, decision_id, principal, server, tool, revision = texts
    return (
        event_id,
        ts,
        kind,
        session_id,
        decision_id,
        principal,
        server,
        tool,
        event.decision,
        None if reasons is None else _reasons_text(reasons),
        js(event.arguments),
        js(event.result),
        duration,
        revision,
        js(event.details),
    )


_REASONS: dict[tuple[str, ...], str | None] = {}
_REASONS_MAX = 1024


def _reasons_text(reasons: tuple[str, ...]) -> str | None:
    """The stored ``reasons`` column (:func:`json_text` of the list), remembered by value.

    A bundle gives the same few reason tuples over and over (an allow's grant, a deny's rule), so their text is
    made once. Only tuples of strings are remembered: ``(1,)``, ``(1.0,)`` and ``(True,)`` are one key but three
    texts."""
    try:
        text = _REASONS.get(reasons)
    except TypeError:  # an unhashable member: not a reason anyone gave, but stored all the same
        text = None
    if text is not None:
        return text
    text = json_text(list(reasons))
    if type(reasons) is tuple and all(isinstance(r, str) for r in reasons):
        if len(_REASONS) >= _REASONS_MAX:
            _REASONS.clear()
        _REASONS[reasons] = text
    return text


def _plain_texts(texts: tuple[Any, ...]) -> tuple[Any, ...]:
    """``texts`` as :func:`_same` stores each, checked at once: one join (which refuses anything that is not text)
    and one search for NUL, where ``_same`` was a call per column (nine a row). A column that is not text takes the
    per-column path, which stores its ``str``; NUL raises ValueError as there (the caller then cleans the row)."""
    try:
        joined = "".join([t for t in texts if t is not None])
    except TypeError:
        return tuple(map(_same, texts))
    if "\x00" in joined:  # PostgreSQL text cannot hold NUL (see _same)
        raise ValueError("NUL in a text column")
    return texts


def _same(value: str | None) -> str | None:
    if value is None or isinstance(value, str):
        if value and "\x00" in value:  # PostgreSQL text cannot hold NUL: one such value would fail
            raise ValueError("NUL in a text column")  # its whole batch there; _clean escapes it
        return value
    return _same(str(value))  # a stray non-text value must not fail the whole batch when bound


def _clean(value: str | None) -> str | None:
    if value is None:
        return None
    return clean_text(value if isinstance(value, str) else str(value)).replace("\x00", "\\x00")


_DECISIONS = frozenset({None, "allow", "deny"})


def _prepare(event: AuditEvent, done: asyncio.Future[None] | None = None, deadline: float = math.inf) -> _Pending:
    """Turn an event into the exact values its row will hold, and their canonical JSON body."""
    if event.decision not in _DECISIONS:
        raise AuditError(f"audit event {event.kind!r}: decision must be 'allow', 'deny' or None")
    if not (event.kind and event.event_id and event.ts):  # NOT NULL columns: one bad event must
        raise AuditError(f"audit event {event.kind!r}: kind, event_id and ts are required")  # not fail a batch
    try:  # the fast path: plain JSON-able values and valid text
        values = _values(event, _plain_texts(_texts(event)), fast_json_text)
        details = event.details
        quoted = details.quoted if type(details) is EncodedJson else None  # its text's literal, made in pieces
        body = canonical_json(values) if quoted is None else canonical_json_quoted_last(values, quoted)
    except (ValueError, TypeError):  # NaN/Infinity, lone surrogates, odd keys: record them cleaned up
        values = _values(event, tuple(map(_clean, _texts(event))), json_text)
        body = canonical_json(values)
    return _Pending(values=values, body=body, done=done, deadline=deadline)


class AuditWriter:
    """The append-only, hash-chained audit log as callers see it: ``record`` and ``record_nowait``.

    Get one from :func:`mcp_guard.audit.open_sink` (or run one over a backend with :meth:`running`)::

        async with open_sink(settings) as sink:
            seq = await sink.record(event)     # returns after the commit; AuditError if it cannot
            sink.record_nowait(other_event)    # fire and forget; never raises

    Leaving the block commits every queued event (bounded by ``close_timeout``).
    """

    def __init__(
        self,
        backend: AuditBackend,
        *,
        batch_max: int = 256,
        queue_max: int = 10_000,
        record_timeout: float = 5.0,
        close_timeout: float = 10.0,
    ) -> None:
        if batch_max < 1 or queue_max < 1:
            raise ValueError("batch_max and queue_max must be positive")
        self.backend = backend
        # Offered every batch first (a commit on the loop, no thread hop); None: always backend.append.
        self._append_now = backend.append_now if isinstance(backend, InlineAppend) else None
        self._thread_next = False  # the next batch skips append_now (record() just saw it decline)
        self._inline_turn = False  # a record() committed its own row in this pass of the loop (see _alone)
        self._grouping = False  # the writer's last batch held several rows: load, so rows share transactions
        self._batch_max = batch_max
        self._queue_max = queue_max
        self._record_timeout = record_timeout
        self._close_timeout = close_timeout
        self._queue: deque[_Pending] = deque()
        self._inflight: list[_Pending] = []
        self._wakeup = anyio.Event()  # set to wake an idle writer
        self._writer_idle = False
        # Events of record() calls that found the queue full, first come first served: the writer
        # moves them into the queue as it makes room. Their callers simply wait for the commit
        # (the watchdog bounds the wait), so a full queue costs no extra task wake-ups.
        self._overflow: deque[_Pending] = deque()
        self._closing = False
        self._broken: str | None = None  # set when the writer can never write again
        self._last_error: str | None = None  # the latest failed transaction; cleared by a success
        self._writer_done = anyio.Event()
        self._writer_scope = anyio.CancelScope()
        self._watchdog_scope = anyio.CancelScope()
        self.stats = AuditStats()

    @classmethod
    @asynccontextmanager
    async def running(
        cls,
        backend: AuditBackend,
        *,
        batch_max: int = 256,
        queue_max: int = 10_000,
        record_timeout: float = 5.0,
        close_timeout: float = 10.0,
    ) -> AsyncIterator[AuditWriter]:
        """Run a writer over the open ``backend`` for the duration of the block.

        ``batch_max`` caps the events per transaction and ``queue_max`` the events waiting for the
        writer; ``record_timeout`` (s) bounds every :meth:`record`; ``close_timeout`` (s) bounds the
        final flush when the block ends.
        """
        writer = cls(
            backend,
            batch_max=batch_max,
            queue_max=queue_max,
            record_timeout=record_timeout,
            close_timeout=close_timeout,
        )
        async with anyio.create_task_group() as tg:
            await tg.start(writer._run_writer)
            tg.start_soon(writer._run_watchdog)
            try:
                yield writer
            finally:
                with anyio.CancelScope(shield=True):
                    await writer.aclose()

    # ------------------------------------------------------------------ the API

    @property
    def healthy(self) -> bool:
        """True while the writer runs, the backend can write and the last transaction committed."""
        return self.problem is None

    @property
    def problem(self) -> str | None:
        """Why the writer is not healthy; None when it is."""
        if self._broken is not None:
            return self._broken
        if self._closing or self._writer_done.is_set():
            return CLOSED
        return self._last_error or self.backend.problem()

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
        try:
            pending = _prepare(event, None)
        except AuditError:
            raise
        except Exception as e:  # an event that cannot be serialised must not pass unrecorded
            raise AuditError(f"audit event {event.kind!r} cannot be serialised: {e}") from e
        loop = asyncio.get_running_loop()
        if self._alone() and self._append_now is not None:
            self._inline_turn = True  # the other record() calls of this loop pass group up in the queue
            loop.call_soon(self._end_inline_turn)
            seq = self._commit_now(pending)
            if seq is not None:
                return seq
        # A bare future rather than anyio.Event: a third of the per-event cost of record() at
        # saturation, and aiosqlite ties the SQLite backend to asyncio anyway.
        pending.done = loop.create_future()
        pending.deadline = time.monotonic() + self._record_timeout  # cheaper than anyio.current_time()
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

    def _alone(self) -> bool:
        """Whether a record() may commit its row itself (:meth:`_commit_now`): the writer is idle with nothing
        queued, no other record() did so in this pass of the event loop, and the writer's last batch was a lone
        row. Under concurrent load rows keep going through the queue, where they share transactions (group
        commit); one commit per row would cost more than the wake-ups it saves."""
        return (
            self._writer_idle
            and not self._inline_turn
            and not self._grouping
            and not self._queue
            and not self._overflow
        )

    def _end_inline_turn(self) -> None:
        self._inline_turn = False

    def _commit_now(self, pending: _Pending) -> int | None:
        """Commit ``pending`` in the caller's task, as the writer would commit a batch of one: its ``seq``, or None
        when the backend declined (nothing committed; the event then takes the queue, like any other).

        Only while the writer is idle with nothing queued (so no batch is in flight and none is due: the row
        takes its place in the order of ``record`` calls as it would through the queue) and only through the
        backend's :meth:`~mcp_guard.audit.backend.InlineAppend.append_now`, which never waits. The same checks
        as :meth:`_commit` — the backend's problem before and after the write — and the same outcome: the seq once
        committed, else an :class:`AuditError`. Why: a row of a lone call otherwise pays a future, a wake-up of
        the writer task and two passes of the event loop: about as much CPU as its insert."""
        append_now = self._append_now
        assert append_now is not None
        self._raise_if_gone()
        try:
            first = append_now((pending,))
        except Exception as e:  # a bug in the backend: as in the writer task, the writer stops for good
            self._broken = f"audit writer failed: {type(e).__name__}: {e}"
            log.exception("audit.writer_failed")
            self.stats.failed += 1
            raise AuditError(self._broken) from e
        if first is None:  # it would have waited (a lock, a stale head…): the thread path takes this row next
            self._thread_next = True
            return None
        pending.seq = first
        self._raise_if_gone()  # removed while the row was written: it went with the file
        self._committed(1)
        return first

    def _raise_if_gone(self) -> None:
        """:meth:`_commit_now`'s check of the backend, before and after its write: a file that went breaks the
        writer for good (as in :meth:`_commit`) and fails this row."""
        gone = self.backend.problem()
        if gone is not None:
            self._break(gone)
            self.stats.failed += 1
            raise AuditError(gone)

    def _committed(self, rows: int) -> None:
        """The bookkeeping of every committed transaction, inline or not: ``rows`` rows in one batch."""
        self._last_error = None
        self._grouping = rows > 1
        stats = self.stats
        stats.committed += rows
        stats.batches += 1
        stats.largest_batch = max(stats.largest_batch, rows)

    def record_nowait(self, event: AuditEvent) -> None:
        """Queue ``event`` without waiting. Never raises: a refused event is logged and counted."""
        problem = self._broken or (CLOSED if self._closing else None)
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
        self._watchdog_scope.cancel()

    # ------------------------------------------------------------------ internals

    def _raise_if_unwritable(self) -> None:
        if self._broken is not None:
            raise AuditError(self._broken)
        if self._closing or self._writer_done.is_set():
            raise AuditError(CLOSED)

    def _enqueue(self, pending: _Pending) -> None:
        self._queue.append(pending)
        if self._writer_idle:
            self._writer_idle = False
            self._wakeup.set()

    def _break(self, problem: str) -> None:
        """The backend can never write again: remember why, so every later call fails at once."""
        if self._broken is None:
            self._broken = problem
            log.error("audit.store_broken", problem=problem, location=self.backend.location)

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
        two so that a backend can write the batch as one statement."""
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
        """One batch through the backend; each waiter learns its seq or its error."""
        if self._broken is None:
            gone = self.backend.problem()
            if gone is not None:
                self._break(gone)
        if self._broken is not None:
            self._fail(batch, self._broken)
            return
        try:
            # Not inline again straight after record() found it declined: it would decline once more.
            inline_ok = self._append_now is not None and not self._thread_next
            self._thread_next = False
            first = self._append_now(batch) if inline_ok and self._append_now is not None else None
            inline = first is not None
            if first is None:
                first = await self.backend.append(batch)
        except AuditError as e:  # nothing of the batch committed
            gone = self.backend.problem()
            if gone is not None:
                self._break(gone)
            problem = gone or str(e)
            self._last_error = problem
            log.error("audit.write_failed", problem=problem, events=len(batch))
            self._fail(batch, problem)
            return
        gone = self.backend.problem()
        if gone is not None:  # removed while the batch was written: its rows went with the file
            self._break(gone)
            self._fail(batch, gone)
            return
        self._committed(len(batch))
        for i, p in enumerate(batch):
            p.seq = first + i
            if p.done is not None and not p.done.done():
                p.done.set_result(None)
        if inline:  # an inline commit did not yield: let the woken callers (and new events) in before the next
            await anyio.lowlevel.checkpoint()

    async def _run_watchdog(self) -> None:
        """Expire record() calls past their deadline, whatever the backend is stuck on."""
        with self._watchdog_scope:
            tick = min(0.05, self._record_timeout / 4)
            while not self._writer_done.is_set():
                await anyio.sleep(tick)
                self._expire(time.monotonic())

    def _expire(self, now: float) -> None:
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
