"""The lean lane to a stdio upstream: a forwarded request as one JSON line, its answer matched by id.

Why: forwarding a ``tools/call`` through the SDK's ``ClientSession`` builds a request model, runs the
dispatcher, validates the answer line with pydantic into a ``JSONRPCMessage``, routes it through the
dispatcher's waiters and copies the result through a ``TypeAdapter`` — about 240 µs of CPU per call
(``bench/``). The same request written as one ``json.dumps`` line, and its answer taken off the read
stream by its id with one ``json.loads``, costs a fraction of that. The SDK session stays in charge of
everything else on the same pipes: the handshake, listings, subscriptions, the upstream's own requests
(elicitation, sampling, roots) and their answers, notifications.

**Which requests.** :meth:`UpstreamConnection.request <mcp_guard.upstream.connection.UpstreamConnection.request>`
takes the lane for a request to a handshake-era stdio upstream that wants no progress relay; the rest goes
to the session. Lane ids are short strings (``mcpg:<n>``): the SDK numbers its requests with integers, so the
two never share an id; and short, so that an answer cut off early still shows whose it is (the transport
fails that call at once, :func:`~mcp_guard.upstream.stdio.undecodable_reason`).

**Reading.** The upstream transport's read loop offers each line to the lane first (:meth:`RawLane.claim`):
only a line that contains the id prefix is parsed here, and only an answer whose id the lane is waiting for is
claimed — and handed over in its turn, once the session has taken every message the upstream sent before it (a
log line or progress the upstream wrote before its answer reaches the client while the call is still in flight,
as on the session path); anything else (a line that merely quotes an id, a request from the upstream) goes on to the SDK
session as before. An answer the transport could not decode but whose id it could read reaches the lane as
the transport's own error answer (:meth:`RawLane.offer`), so the call fails at once.

**Cancellation.** A call abandoned before its answer (its deadline, the client's cancel) sends the upstream
``notifications/cancelled`` for its id, as the SDK does for its own requests.

**Deadlines.** A request given a ``timeout`` ends with ``TimeoutError`` when it has not been answered by then. The
lane keeps one timer for all its requests, armed for the earliest deadline it knows and moved only when a request
comes with an earlier one (requests to one upstream share its timeout, so their deadlines only grow): a request
pays for no timer of its own. Why: ``anyio.fail_after`` around each request — a cancel scope, a timer handle in the
loop's heap and their removal — was 60 K instructions of a 2.7 M-instruction call (bench/bench_instructions.py).
The line itself is handed to the transport at once when that needs no wait (``write_nowait``); a write that must
wait for the upstream to read (back-pressure) is bounded by the same deadline under ``anyio.fail_after``.

Errors a lane request raises (the ones the session path raises, so the connection maps both alike)::

    MCPError
     ├── the upstream's own JSON-RPC error answer (code, message, data as sent)
     ├── CONNECTION_CLOSED "Connection closed"  — the upstream went away with the call in flight
     └── PARSE_ERROR (the transport's undecodable answer, marked)  — an answer that is not JSON-RPC
    InvalidAnswer  — valid JSON, but not a JSON-RPC answer (no result object, no well-formed error)
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import math
import types as types_
import typing
from collections.abc import Awaitable, Callable, Container, Mapping
from typing import Any

import anyio
import mcp_types as types
from mcp.shared.exceptions import MCPError
from mcp_types import methods
from mcp_types.version import KNOWN_PROTOCOL_VERSIONS
from pydantic import BaseModel, TypeAdapter

__all__ = ["LANE_ID_PREFIX", "InvalidAnswer", "RawLane", "as_negotiated"]

LANE_ID_PREFIX = "mcpg:"
"""Every lane id starts with this; the read loop's cheap test for "maybe ours" looks for it as a JSON string."""
_MARK = f'"{LANE_ID_PREFIX}'.encode()
_CANCEL_WRITE_S = 1.0  # how long a cancelled call may spend telling the upstream (never blocks the caller long)

_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode


class InvalidAnswer(Exception):
    """The upstream answered a lane request with JSON that is not a JSON-RPC answer (its text withheld)."""


_EXPIRY_SLACK_S = 0.001
"""A deadline this close is due when the lane's timer fires (an event loop may run a timer a clock tick early)."""


class _TimedOut:
    """What a waiter is handed when its deadline passed before its answer came."""


_TIMED_OUT = _TimedOut()
_Answer = Mapping[str, Any] | _TimedOut | None  # None: the upstream went away (CONNECTION_CLOSED)


class _Waiter:
    __slots__ = ("deadline", "future")

    def __init__(self, future: asyncio.Future[_Answer], deadline: float) -> None:
        self.future = future  # a bare future, not anyio.Event: the lane runs on the asyncio loop of its transport
        self.deadline = deadline  # the loop's clock; inf: no deadline

    @property
    def unanswered(self) -> bool:
        """Whether the upstream still owes this request an answer (pending, given up, or past its deadline)."""
        f = self.future
        return not f.done() or f.cancelled() or isinstance(f.result(), _TimedOut)

    def settle(self, answer: _Answer) -> None:
        if not self.future.done():  # a cancelled caller's future is done already
            self.future.set_result(answer)


class RawLane:
    """Requests written as raw lines by ``write``; answers handed over by the transport's read loop.

    ``write_nowait`` (optional) hands a line to the transport when that needs no wait: True when it did, False
    when nothing was written and ``write`` must take the line (see Deadlines in the module docstring)."""

    def __init__(
        self, write: Callable[[bytes], Awaitable[None]], write_nowait: Callable[[bytes], bool] | None = None
    ) -> None:
        self._write = write
        self._write_nowait = write_nowait
        self._waiting: dict[str, _Waiter] = {}
        self._next = 0
        self._closed = False
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf  # when the timer fires (the loop's clock); inf: not armed
        self.requests = 0  # requests sent through the lane (tests and the benchmark read it)

    # ------------------------------------------------------------------ the read loop's side
    def claim(self, line: bytes) -> Mapping[str, Any] | None:
        """The parsed answer if ``line`` answers a waiting lane request (not handed over yet: the transport
        hands it over in its turn, after the messages read before it, with :meth:`offer`); else None."""
        if not self._waiting or _MARK not in line:
            return None
        try:
            message = json.loads(line)
        except (ValueError, RecursionError):
            return None  # the session path parses it again and reports it
        if not isinstance(message, dict) or "method" in message or message.get("id") not in self._waiting:
            return None
        return message

    def offer(self, message: Mapping[str, Any]) -> bool:
        """Hand over an answer (already parsed); False if its id is not one the lane waits for."""
        rid = message.get("id")
        if type(rid) is not str or "method" in message:
            return False
        waiter = self._waiting.pop(rid, None)
        if waiter is None:
            return False
        waiter.settle(message)
        return True

    @property
    def waiting_ids(self) -> Container[object]:
        """The ids of the requests waiting for an answer."""
        return self._waiting

    def close(self) -> None:
        """The upstream is gone: every waiting request ends with CONNECTION_CLOSED; no new one is sent."""
        self._closed = True
        waiting, self._waiting = self._waiting, {}
        for waiter in waiting.values():
            waiter.settle(None)
        self._disarm()

    # ------------------------------------------------------------------ the caller's side
    async def request(
        self, method: str, params: Mapping[str, Any] | None, timeout: float | None = None
    ) -> dict[str, Any]:
        """Send one request and wait for its answer's ``result`` (see the module docstring for errors);
        ``TimeoutError`` when it is not answered within ``timeout`` seconds (None: no deadline of its own)."""
        if self._closed:
            raise _closed()
        self._next += 1
        rid = f"{LANE_ID_PREFIX}{self._next}"
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": rid, "method": method}
        if params is not None:
            message["params"] = params
        line = _encode(message)
        loop = asyncio.get_running_loop()
        deadline = math.inf if timeout is None else loop.time() + timeout
        waiter = _Waiter(loop.create_future(), deadline)
        self._waiting[rid] = waiter
        self.requests += 1
        if deadline < self._timer_at:
            self._arm(loop, deadline)
        try:
            if self._write_nowait is None or not self._write_nowait(line):
                await self._bounded_write(line, deadline - loop.time())
            answer = await waiter.future
        except BaseException:
            self._waiting.pop(rid, None)
            if waiter.unanswered:  # not if it was answered or the upstream went away meanwhile
                await self._cancelled(rid)
            raise
        if isinstance(answer, _TimedOut):  # the timer took it off the waiting list
            await self._cancelled(rid)
            raise TimeoutError
        return _result(answer)

    async def _bounded_write(self, line: bytes, within: float) -> None:
        """``write`` the line, waiting at most ``within`` seconds (inf: unbounded) for the upstream to read."""
        if within == math.inf:
            await self._write(line)
            return
        with anyio.fail_after(max(within, 0.0)):
            await self._write(line)

    # ------------------------------------------------------------------ the deadlines
    def _arm(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        """(Re)arm the lane's one timer for ``when``."""
        self._disarm()
        self._timer_at = when
        self._timer = loop.call_at(when, self._expire, loop)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = math.inf

    def _expire(self, loop: asyncio.AbstractEventLoop) -> None:
        """The timer fired: every request past its deadline ends (``TimeoutError``); the timer is armed again
        for the earliest deadline still waiting, if any."""
        self._timer = None
        self._timer_at = math.inf
        due = loop.time() + _EXPIRY_SLACK_S
        for rid, waiter in list(self._waiting.items()):
            if waiter.deadline <= due:
                del self._waiting[rid]
                waiter.settle(_TIMED_OUT)
        earliest = min((w.deadline for w in self._waiting.values()), default=math.inf)
        if earliest < math.inf:
            self._arm(loop, earliest)

    async def _cancelled(self, rid: str) -> None:
        """Tell the upstream a request is abandoned (best effort, shielded and bounded)."""
        note = {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": rid}}
        # The upstream may be gone already; the call is over either way.
        with anyio.CancelScope(shield=True), anyio.move_on_after(_CANCEL_WRITE_S), contextlib.suppress(Exception):
            await self._write(_encode(note))


def _encode(message: Mapping[str, Any]) -> bytes:
    try:
        return (_dumps(message) + "\n").encode()
    except ValueError:  # NaN/Infinity in the arguments: written as Python's json writes them by default
        return (json.dumps(message, separators=(",", ":"), ensure_ascii=False) + "\n").encode()


def _closed() -> MCPError:
    return MCPError(code=types.CONNECTION_CLOSED, message="Connection closed")


def _result(answer: Mapping[str, Any] | None) -> dict[str, Any]:
    """The answer's result, or the error it carries raised as the session path raises it."""
    if answer is None:
        raise _closed()
    if answer.get("jsonrpc") != "2.0":
        raise InvalidAnswer("no jsonrpc 2.0 marker")
    if "result" in answer:
        result = answer["result"]
        if isinstance(result, dict) and "error" not in answer:
            return result
        raise InvalidAnswer("the result is not an object")
    error = answer.get("error")
    if isinstance(error, dict) and type(error.get("code")) is int and isinstance(error.get("message"), str):
        raise MCPError(code=error["code"], message=error["message"], data=error.get("data"))
    raise InvalidAnswer("neither a result nor a well-formed error")


def as_negotiated(method: str, version: str, result: dict[str, Any]) -> dict[str, Any]:
    """``result`` held to the negotiated protocol version, as the SDK session holds its own results: it must
    validate as that version's result for ``method`` (pydantic ``ValidationError`` if not; a method the version
    does not know is let through), and keys only a later revision declares are dropped (they are outside the
    negotiated contract)."""
    check = _validator(method, version)
    if check is None:
        return result
    check(result)
    later = _later_keys(method, version)
    if later.isdisjoint(result):
        return result
    return {k: v for k, v in result.items() if k not in later}


@functools.cache
def _validator(method: str, version: str) -> Callable[[dict[str, Any]], object] | None:
    """What ``mcp_types.methods.validate_server_result`` checks a ``method`` result of ``version`` with (its surface
    model, by alias), made once; None for a method the version does not know. That function also dumps the
    validated model and drops the dump — a second pass over the whole result, a quarter of the lane's pydantic work
    on a small result, more on a large one (tests/upstream/test_raw_lane.py holds the two to the same verdicts).
    ``ValueError`` for a version mcp_types does not know, as there."""
    if version not in KNOWN_PROTOCOL_VERSIONS:
        raise ValueError(f"version must be a known protocol version, got {version!r}")
    target = methods.SERVER_RESULTS.get((method, version))
    if target is None:
        return None
    adapter: TypeAdapter[Any] = TypeAdapter(target)  # type: ignore[arg-type]  # a model or a union of models
    return functools.partial(adapter.validate_python, by_name=False)


@functools.cache
def _later_keys(method: str, version: str) -> frozenset[str]:
    """Result keys a revision after ``version`` declares for ``method`` and ``version`` does not."""
    if version not in KNOWN_PROTOCOL_VERSIONS:
        return frozenset()
    own = _keys(methods.SERVER_RESULTS.get((method, version)))
    newer = KNOWN_PROTOCOL_VERSIONS[KNOWN_PROTOCOL_VERSIONS.index(version) + 1 :]
    return frozenset().union(*(_keys(methods.SERVER_RESULTS.get((method, v))) for v in newer)) - own


def _keys(target: Any) -> frozenset[str]:
    members = typing.get_args(target) if isinstance(target, types_.UnionType) else (target,)
    return frozenset(
        field.alias or name
        for model in members
        if isinstance(model, type) and issubclass(model, BaseModel)
        for name, field in model.model_fields.items()
    )
