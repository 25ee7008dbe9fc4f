"""The audit trail over the admin API: a live stream of committed events, one event with its linked rows, the chain.

Routes (beside :mod:`mcp_guard.frontend.admin`'s; viewer or operator)::

    GET /admin/api/events[?principal=&server=&tool=&decision=&kind=&since=&last=N]
        text/event-stream: the newest ``last`` (default 100, at most 1000) matching events, then each new one as
        it commits. One SSE message per event: ``id: <seq>``, ``event: audit``, ``data: <the event as JSON>``
        (the ``audit tail --json`` form). ``kind`` is a comma list whose entries may end in ``*``; ``since`` is
        ``10m``/``2h``/an RFC3339 time, as for ``audit tail``. A reconnecting EventSource sends ``Last-Event-ID``
        and resumes after it (no backlog then). A comment line every :data:`HEARTBEAT_S` keeps proxies from
        closing an idle stream; ``event: problem`` says the log could not be read (the stream goes on trying).
    GET /admin/api/events/{seq}      one event, and ``linked``: the rows with the same ``decision_id`` (the
                                     decision, its outcome, the approval steps) within :data:`LINK_WINDOW` rows
    GET /admin/api/chain             ``audit verify`` of the log: ok, rows, head seq and hash, first bad row

**How the stream follows the log** — the ``audit tail -f`` way (:mod:`mcp_guard.audit.tail`): the backlog is read
up to the head seen at that moment and following resumes after it, so a burst in between is neither skipped nor
sent twice; each later read takes ``(cursor, new head]``, and rows the filters skip still move the cursor. What
wakes a read is this process's audit writer committing (``committed()`` changes — no database round trip while
nothing happens) or, every :data:`SAFETY_S`, nothing at all: rows committed by another replica or by the CLI
still arrive. Every read opens a read-only :class:`~mcp_guard.audit.AuditReader` in a worker thread, reads at most
:data:`BATCH` rows and closes it (a SQLite connection belongs to its thread; PostgreSQL gets no idle connection per
browser tab), bounded by :data:`READ_TIMEOUT_S`.

**Bounded and disconnect-safe.** At most ``[console] max_event_streams`` streams at once (503 beyond); the slot is
given back when the response ends however it ends (client gone, server shutting down), because the response
itself releases it, not the generator — which may never start if the client leaves at once.
"""

from __future__ import annotations

import functools
import json
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from typing import Any, Final, TypeVar

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from mcp_guard.audit import AuditReader, Filters, parse_since, row_to_dict
from mcp_guard.audit.verify import VerifyResult, verify_chain
from mcp_guard.errors import AuditError
from mcp_guard.frontend.admin import PREFIX, AdminAuth, Need, error_response

__all__ = ["BATCH", "HEARTBEAT_S", "LINK_WINDOW", "AdminEvents", "filters_of"]

POLL_S: Final = 0.1  # how often a stream looks at the in-process commit counter (no I/O)
SAFETY_S: Final = 2.0  # a stream reads the log at least this often (rows from other processes)
HEARTBEAT_S: Final = 15.0
READ_TIMEOUT_S: Final = 10.0
BATCH: Final = 500  # rows per read
DEFAULT_LAST: Final = 100
MAX_LAST: Final = 1000
LINK_WINDOW: Final = 2000  # rows either side of an event searched for its linked rows

T = TypeVar("T")
OpenReader = Callable[[], AbstractContextManager[AuditReader]]


def filters_of(request: Request) -> Filters:
    """The ``audit tail`` filters of a query string. ValueError (with a readable message) for a bad ``since``."""
    q = request.query_params
    since = q.get("since")
    kinds = tuple(k.strip() for k in q.get("kind", "").split(",") if k.strip())
    return Filters(
        since=parse_since(since) if since else None,
        principal=q.get("principal") or None,
        server=q.get("server") or None,
        tool=q.get("tool") or None,
        decision=q.get("decision") or None,
        kinds=kinds,
    )


def _last_of(request: Request) -> int:
    raw = request.query_params.get("last")
    if raw is None:
        return DEFAULT_LAST
    if not raw.isdigit() or int(raw) > MAX_LAST:
        raise ValueError(f"last must be a whole number from 0 to {MAX_LAST}")
    return int(raw)


def _resume_after(request: Request) -> int | None:
    raw = request.headers.get("last-event-id") or request.query_params.get("after")
    return int(raw) if raw is not None and raw.isdigit() else None


def _message(row: tuple[Any, ...]) -> bytes:
    event = row_to_dict(row)
    data = json.dumps(event, ensure_ascii=False, sort_keys=True, default=str)
    return f"id: {event['seq']}\nevent: audit\ndata: {data}\n\n".encode()


def _problem(text: str) -> bytes:
    return f"event: problem\ndata: {json.dumps({'error': text})}\n\n".encode()


class _EventStream(StreamingResponse):
    """A streaming response that gives its stream slot back when it ends, whether or not its body ever ran."""

    def __init__(self, body: AsyncIterator[bytes], release: Callable[[], None]) -> None:
        super().__init__(
            body,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )
        self._release = release

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._release()


@dataclass
class _ChainCache:
    head_seq: int | None = None
    result: VerifyResult | None = None
    lock: anyio.Lock = field(default_factory=anyio.Lock)


@dataclass
class AdminEvents:
    """The events and chain routes over the audit log ``open_reader`` opens (read-only, per read)."""

    auth: AdminAuth
    open_reader: OpenReader
    committed: Callable[[], int]  # this process's committed-event counter: a change means new rows
    max_streams: int = 16
    _streams: int = field(default=0, init=False)
    _chain: _ChainCache = field(default_factory=_ChainCache, init=False)

    def routes(self) -> list[Route]:
        return [
            Route(f"{PREFIX}/events", self.events, methods=["GET"]),
            Route(f"{PREFIX}/events/{{seq:int}}", self.event, methods=["GET"]),
            Route(f"{PREFIX}/chain", self.chain, methods=["GET"]),
        ]

    @property
    def open_streams(self) -> int:
        return self._streams

    async def _read(self, work: Callable[[AuditReader], T]) -> T:
        """``work`` on a freshly opened reader, in a worker thread, within :data:`READ_TIMEOUT_S`."""

        def run() -> T:
            with self.open_reader() as reader:
                return work(reader)

        with anyio.fail_after(READ_TIMEOUT_S):
            return await anyio.to_thread.run_sync(run, abandon_on_cancel=True)

    # ------------------------------------------------------------------ the stream
    async def events(self, request: Request) -> Response:
        who = await self.auth.require(request, Need.READ)
        if isinstance(who, Response):
            return who
        try:
            filters, last = filters_of(request), _last_of(request)
        except ValueError as e:
            return error_response(400, str(e))
        if self._streams >= self.max_streams:
            return error_response(503, f"too many event streams open (at most {self.max_streams}); try again later")
        self._streams += 1
        return _EventStream(self._follow(filters, last, _resume_after(request)), self._release)

    def _release(self) -> None:
        self._streams -= 1

    async def _follow(self, filters: Filters, last: int, after: int | None) -> AsyncIterator[bytes]:
        """The stream's messages: the backlog, then each batch the log grows by (module docstring), until the
        client leaves (the response cancels this generator) — never ending on its own, a read failure included."""
        cursor: int | None = None
        behind = False
        while cursor is None:  # the backlog, once the log can be read
            try:
                cursor, rows, behind = await self._read(lambda r: _backlog(r, filters, last, after))
            except (AuditError, TimeoutError) as e:
                yield _problem(_why(e))
                await anyio.sleep(SAFETY_S)
                continue
            for row in rows:
                yield _message(row)
        position: int = cursor
        seen, idle, quiet = self.committed(), SAFETY_S if behind else 0.0, 0.0
        while True:
            await anyio.sleep(POLL_S)
            idle, quiet = idle + POLL_S, quiet + POLL_S
            now = self.committed()
            if now == seen and idle < SAFETY_S:
                if quiet >= HEARTBEAT_S:
                    quiet = 0.0
                    yield b": keep-alive\n\n"
                continue
            seen, idle = now, 0.0
            try:
                position, rows, behind = await self._read(functools.partial(_after, filters=filters, cursor=position))
            except (AuditError, TimeoutError) as e:
                yield _problem(_why(e))
                continue
            if behind:  # more than a batch committed: read on at the next tick
                idle = SAFETY_S
            for row in rows:
                quiet = 0.0
                yield _message(row)

    # ------------------------------------------------------------------ one event
    async def event(self, request: Request) -> Response:
        who = await self.auth.require(request, Need.READ)
        if isinstance(who, Response):
            return who
        seq: int = request.path_params["seq"]
        try:
            found = await self._read(lambda r: _with_linked(r, seq))
        except (AuditError, TimeoutError) as e:
            return error_response(503, _why(e))
        if found is None:
            return error_response(404, f"no audit event #{seq}")
        event, linked = found
        return JSONResponse({"event": event, "linked": linked, "linked_window": LINK_WINDOW})

    # ------------------------------------------------------------------ the chain
    async def chain(self, request: Request) -> Response:
        who = await self.auth.require(request, Need.READ)
        if isinstance(who, Response):
            return who
        try:
            result = await self._verified()
        except (AuditError, TimeoutError) as e:
            return error_response(503, _why(e))
        return JSONResponse(
            {
                "ok": result.ok,
                "rows": result.rows,
                "head_seq": result.head_seq,
                "head_hash": result.head_hash,
                "bad_seq": result.bad_seq,
                "problem": result.problem,
                "last_good_seq": result.last_good_seq,
                "warnings": list(result.warnings),
            }
        )

    async def _verified(self) -> VerifyResult:
        """``verify_chain`` of the log; one walk at a time, and none again while the head has not moved."""
        cache = self._chain
        async with cache.lock:
            head = await self._read(lambda r: h.seq if (h := r.head()) else None)
            if cache.result is None or head != cache.head_seq or not cache.result.ok:
                cache.result = await self._read(verify_chain)
                cache.head_seq = cache.result.head_seq
            return cache.result


def _why(e: Exception) -> str:
    return str(e) if isinstance(e, AuditError) else f"the audit log did not answer within {READ_TIMEOUT_S:g} s"


def _head(reader: AuditReader) -> int:
    head = reader.head()
    return head.seq if head else 0


_Read = tuple[int, list[tuple[Any, ...]], bool]  # the new cursor, the rows, whether rows are left beyond it


def _backlog(reader: AuditReader, filters: Filters, last: int, after: int | None) -> _Read:
    """The head now and the rows up to it to send first: the newest ``last``, or (resuming) those after ``after``."""
    with reader.snapshot():
        head = _head(reader)
        if after is not None:
            return _batch(reader, filters, after, head)
        return head, list(reader.rows(replace(filters, until_seq=head), last=last)) if last else [], False


def _after(reader: AuditReader, filters: Filters, cursor: int) -> _Read:
    with reader.snapshot():
        return _batch(reader, filters, cursor, _head(reader))


def _batch(reader: AuditReader, filters: Filters, cursor: int, head: int) -> _Read:
    """Rows in ``(cursor, head]`` matching ``filters``, at most :data:`BATCH` seqs of them."""
    until = min(head, cursor + BATCH)
    if until <= cursor:
        return cursor, [], False
    return until, list(reader.rows(replace(filters, after_seq=cursor, until_seq=until))), until < head


def _rows_near(reader: AuditReader, seq: int) -> Iterator[dict[str, Any]]:
    yield from (
        row_to_dict(r) for r in reader.rows(Filters(after_seq=seq - LINK_WINDOW - 1, until_seq=seq + LINK_WINDOW))
    )


def _with_linked(reader: AuditReader, seq: int) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
    """Event ``seq`` and the rows near it that share its ``decision_id`` (None: no such event)."""
    with reader.snapshot():
        rows = list(reader.rows(Filters(after_seq=seq - 1, until_seq=seq)))
        if not rows:
            return None
        event = row_to_dict(rows[0])
        decision_id = event.get("decision_id")
        if not decision_id:
            return event, []
        linked = [r for r in _rows_near(reader, seq) if r["decision_id"] == decision_id and r["seq"] != seq]
        return event, linked
