"""An asyncio-native stdio transport for upstream MCP servers.

Differs from the SDK's ``stdio_client`` where a proxy needs it to:

* the child gets a *minimal* environment (a few safe variables) plus what the config gives it —
  never the proxy's own environment, which may hold other upstreams' credentials;
* a line longer than ``max_line_bytes`` is discarded (bounded memory) and, like a line that does not
  parse, fails the request it answers at once when its id can be read (:func:`undecodable_reason`);
* the child's stderr is forwarded to our structured log, line by line, through a scrubber, and its
  last lines are kept (:class:`StderrTail`) so ``mcp-guard check`` can say *why* a child failed
  (``No module named …``) rather than only that its connection closed;
* ``exited`` tells the owner when (and with what code) the child died, so in-flight calls can fail
  fast and the upstream can be restarted.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import signal
import sys
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from subprocess import PIPE
from typing import Any

import anyio
import mcp_types as types
import structlog
from anyio.abc import Process
from mcp.shared.message import SessionMessage

from mcp_guard.lineid import ID_SCAN_CHARS, top_level_id
from mcp_guard.secrets.describe import describe_invalid
from mcp_guard.streams import LineReadStream, LineWriteStream, encode_line
from mcp_guard.upstream.raw_lane import RawLane

__all__ = [
    "MINIMAL_ENV_VARS",
    "STDERR_TAIL_LINES",
    "ChildExit",
    "StderrTail",
    "minimal_environment",
    "open_stdio_transport",
    "undecodable_reason",
]

log = structlog.get_logger("mcp_guard.upstream")

# What a child may inherit from the proxy's environment without being told to.
MINIMAL_ENV_VARS = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "TZ", "SYSTEMROOT", "USER", "LOGNAME", "TERM")
STDERR_TAIL_LINES = 20
_STDERR_LINE_MAX = 2000  # characters of one stderr line kept (log and tail)
_STDERR_DRAIN_S = 1.0  # after the child is gone, how long its last stderr output may take to arrive


class StderrTail(deque[str]):
    """The last :data:`STDERR_TAIL_LINES` lines a child wrote to stderr, already scrubbed of secrets.

    One per upstream, kept across restarts: the lines before a crash are what explains it.
    """

    def __init__(self, maxlen: int = STDERR_TAIL_LINES) -> None:
        super().__init__(maxlen=maxlen)


def minimal_environment(extra: Mapping[str, str] = {}, passthrough: Sequence[str] = ()) -> dict[str, str]:
    """The child's environment: safe basics, explicitly passed-through names, then ``extra``."""
    env = {k: v for k in (*MINIMAL_ENV_VARS, *passthrough) if (v := os.environ.get(k)) is not None}
    env.update(extra)
    return env


@dataclass
class ChildExit:
    """Filled in when the child process exits."""

    event: anyio.Event = field(default_factory=anyio.Event)
    returncode: int | None = None


@asynccontextmanager
async def open_stdio_transport(
    command: str,
    args: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: str | None = None,
    max_line_bytes: int = 16 * 1024 * 1024,
    name: str = "upstream",
    scrub: Callable[[str], str] = lambda s: s,
    stderr_tail: StderrTail | None = None,
) -> AsyncIterator[tuple[Any, Any, ChildExit, Process]]:
    """Start ``command`` and yield ``(read_stream, write_stream, exit_info, process)``.

    Every stderr line is logged and appended to ``stderr_tail`` (scrubbed). The tail is complete when
    the block has exited: the child's last output is drained (for at most a second) before returning.
    Raises OSError (e.g. FileNotFoundError) if the command cannot be started.
    """
    # "python"/"python3" mean mcp-guard's own interpreter (its venv has the SDK and the first-party
    # connectors); anything else is looked up on the child's PATH.
    exe = (
        sys.executable if command in ("python", "python3") else (shutil.which(command, path=env.get("PATH")) or command)
    )
    process = await anyio.open_process(
        [exe, *args], stdin=PIPE, stdout=PIPE, stderr=PIPE, env=dict(env), cwd=cwd, start_new_session=True
    )
    read_stream = _ChildReadStream(process, name, max_line_bytes)
    write_stream = _ChildWriteStream(process, read_stream)
    # Forwarded requests, beside the SDK session (raw_lane).
    read_stream.lane = RawLane(write_stream.send_bytes, write_stream.send_nowait)
    exit_info = ChildExit()
    tail = stderr_tail if stderr_tail is not None else StderrTail()
    stderr_done = anyio.Event()

    def emit(raw: bytes) -> None:
        if raw.strip():
            line = scrub(raw.decode(errors="replace").rstrip())[:_STDERR_LINE_MAX]
            tail.append(line)
            log.info("upstream.stderr", upstream=name, line=line)

    async def stderr_pump() -> None:
        assert process.stderr is not None
        buf = b""
        try:
            with suppress(anyio.ClosedResourceError, anyio.BrokenResourceError, anyio.EndOfStream):
                async for chunk in process.stderr:
                    buf += chunk
                    *lines, buf = buf.split(b"\n")
                    for line in lines:
                        emit(line)
                    if len(buf) > 65536:
                        buf = b""
            emit(buf)  # a last line without a newline
        finally:
            stderr_done.set()

    async def waiter() -> None:
        exit_info.returncode = await process.wait()
        exit_info.event.set()
        # stdout may stay open in a grandchild; the session must still see the end.
        await read_stream.end()

    async with anyio.create_task_group() as tg:
        tg.start_soon(stderr_pump)
        tg.start_soon(waiter)
        try:
            yield read_stream, write_stream, exit_info, process
        finally:
            with anyio.CancelScope(shield=True):
                await write_stream.aclose()
                await _terminate(process, exit_info)
                # The child is gone: what it said last (often why it died) is still in the pipe.
                with anyio.move_on_after(_STDERR_DRAIN_S):
                    await stderr_done.wait()
            tg.cancel_scope.cancel()


class _ChildReadStream(LineReadStream):
    """The SDK's ``ReadStream`` over the child's stdout: the session's read loop reads, frames and parses
    in its own task (no reader task, no memory stream in between). A line over ``max_line_bytes`` is
    discarded and surfaced as a ``ValueError`` item. Each line is offered to ``lane`` first (the answers to
    requests sent by :class:`~mcp_guard.upstream.raw_lane.RawLane`); the rest is parsed for the session."""

    def __init__(self, process: Process, name: str, max_line_bytes: int) -> None:
        assert process.stdout is not None
        self._stdout = process.stdout
        self._name = name
        self._max = max_line_bytes
        self._buf = bytearray()
        self._pending: deque[SessionMessage | Exception | _LaneAnswer] = deque()
        self._discarding = False
        self._eof = False
        self.lane: RawLane | None = None

    async def receive(self) -> SessionMessage | Exception:
        pending = self._pending
        while True:
            while not pending:
                if self._eof:
                    self._close_lane()  # answers read before the end were handed over above
                    raise anyio.EndOfStream
                try:
                    chunk = await self._stdout.receive()
                except (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError):
                    self._eof = True
                    continue
                self._feed(chunk)
            item = pending.popleft()
            if not isinstance(item, _LaneAnswer):
                return item
            # The session has taken everything read before this answer: the lane's call may end now.
            if self.lane is not None:
                self.lane.offer(item.message)

    def _feed(self, chunk: bytes) -> None:
        buf, start = self._buf, 0
        while True:
            nl = chunk.find(b"\n", start)
            if nl < 0:
                if not self._discarding:
                    buf += chunk[start:]
                    if len(buf) > self._max:
                        self._emit(self._too_large(bytes(buf[:ID_SCAN_CHARS])))
                        buf.clear()
                        self._discarding = True
                return
            if self._discarding:
                self._discarding = False
            elif buf:
                buf += chunk[start:nl]
                if len(buf) > self._max:
                    self._emit(self._too_large(bytes(buf[:ID_SCAN_CHARS])))
                elif buf.strip():
                    self._line(bytes(buf))
                buf.clear()
            elif nl - start > self._max:
                self._emit(self._too_large(chunk[start : start + ID_SCAN_CHARS]))
            else:
                line = chunk[start:nl]
                if line.strip():
                    self._line(line)
            start = nl + 1

    def _line(self, line: bytes) -> None:
        lane = self.lane
        answer = lane.claim(line) if lane is not None else None
        if answer is not None:
            self._pending.append(_LaneAnswer(answer))
        else:
            self._emit(_parse(line, self._name))

    def _emit(self, item: SessionMessage | Exception) -> None:
        """Queue ``item`` for the session, or the transport's error answer to a lane request for the lane."""
        lane = self.lane
        if (
            lane is not None
            and isinstance(item, SessionMessage)
            and isinstance(item.message, types.JSONRPCError)
            and item.message.id in lane.waiting_ids
        ):
            self._pending.append(_LaneAnswer(item.message.model_dump(by_alias=True, mode="json", exclude_none=True)))
            return
        self._pending.append(item)

    def _too_large(self, head: bytes) -> SessionMessage | Exception:
        reason = f"a message larger than {self._max} bytes (max_response_bytes), discarded"
        log.warning("upstream.message_too_large", upstream=self._name, limit=self._max)
        return _failed_answer(head, reason) or ValueError(f"{self._name}: {reason}")

    async def end(self) -> None:
        """No more messages (the child exited or its stdin broke): wake a pending ``receive``."""
        if not self._eof:
            self._eof = True
            with suppress(Exception):
                await self._stdout.aclose()

    async def aclose(self) -> None:
        self._close_lane()  # the session's read loop is over: nothing will hand an answer over any more
        await self.end()

    def _close_lane(self) -> None:
        if self.lane is not None:
            self.lane.close()


@dataclass(frozen=True, slots=True)
class _LaneAnswer:
    """An answer to a lane request, queued in line with the session's messages (handed over when reached)."""

    message: Mapping[str, Any]


class _ChildWriteStream(LineWriteStream):
    """The SDK's ``WriteStream`` onto the child's stdin: serialise and write in the sender's task, waiting
    only under back-pressure. If the child's stdin is gone the message is dropped and the read side
    ends, so the session sees the upstream close (in-flight calls fail fast) rather than hang."""

    def __init__(self, process: Process, reader: _ChildReadStream) -> None:
        assert process.stdin is not None
        self._stdin = process.stdin
        # anyio's wrapper yields to the loop after every write; the asyncio writer underneath does not
        # need to (its write() is one non-blocking os.write when the pipe has room).
        self._raw: asyncio.StreamWriter | None = getattr(process.stdin, "_stream", None)
        if not isinstance(self._raw, asyncio.StreamWriter):
            self._raw = None
        self._reader = reader
        self._closed = False
        self._broken = False

    async def send(self, item: SessionMessage) -> None:
        await self.send_bytes(encode_line(item))

    async def send_bytes(self, data: bytes) -> None:
        """Write one whole line (already encoded): the session's messages and the raw lane's alike."""
        if self._closed:
            raise anyio.ClosedResourceError
        if self._broken:
            return
        raw = self._raw
        try:
            if raw is None:
                await self._stdin.send(data)
            elif raw.transport.is_closing():
                raise BrokenPipeError("the upstream's stdin is closed")
            else:
                raw.write(data)
                if raw.transport.get_write_buffer_size():
                    await raw.drain()
        except (anyio.ClosedResourceError, anyio.BrokenResourceError, OSError, RuntimeError):
            self._broken = True
            await self._reader.end()

    def send_nowait(self, data: bytes) -> bool:
        """Hand one whole line to the pipe's transport when that needs no wait: True when written; False when
        nothing was written (closed, broken, a transport without a writer we can reach, or output still queued
        from earlier writes: back-pressure) and :meth:`send_bytes` must take it. A line the transport has to
        buffer is not waited for here; the next write then finds the queue and waits in :meth:`send_bytes`."""
        raw = self._raw
        if self._closed or self._broken or raw is None:
            return False
        transport = raw.transport
        if transport.is_closing() or transport.get_write_buffer_size():
            return False
        try:
            raw.write(data)
        except (OSError, RuntimeError):  # nothing written: send_bytes meets the same error and ends the stream
            return False
        return True

    async def aclose(self) -> None:
        self._closed = True


async def _terminate(process: Process, exit_info: ChildExit) -> None:
    """Close stdin, then SIGTERM, then SIGKILL the child's process group, 2 s apart, until it is gone.

    Waits on the process itself (not on ``exit_info``): this runs while the transport's task group is
    being cancelled, so the task that fills ``exit_info`` may already be gone.
    """
    if exit_info.event.is_set() or process.returncode is not None:
        return
    with suppress(OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
        if process.stdin is not None:
            await process.stdin.aclose()
    with anyio.move_on_after(2):
        await process.wait()
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, sig)
        with anyio.move_on_after(2):
            await process.wait()
            return


def _parse(line: bytes, name: str) -> SessionMessage | Exception:
    try:
        return SessionMessage(types.jsonrpc_message_adapter.validate_json(line, by_name=False))
    except ValueError as exc:
        # The parser's text quotes the line (a token in it included): say what was wrong in our own words.
        reason = describe_invalid(exc)
        log.warning("upstream.bad_message", upstream=name, error=reason)
        return _failed_answer(line[:ID_SCAN_CHARS], f"an answer that is not valid JSON-RPC ({reason})") or exc


# An undecodable answer that names the id of a request is turned into an error answer to that request, so the
# call fails now rather than at its timeout. It is marked with this process's nonce (an upstream cannot forge
# the mark), and UpstreamConnection.request turns it into mcp-guard's own UpstreamError.
_UNDECODABLE_KEY = "mcp-guard/undecodable"
_UNDECODABLE_NONCE = secrets.token_hex(16)


def _failed_answer(head: bytes, reason: str) -> SessionMessage | None:
    rid = top_level_id(head)
    if rid is None:
        return None
    error = types.ErrorData(code=types.INTERNAL_ERROR, message=reason, data={_UNDECODABLE_KEY: _UNDECODABLE_NONCE})
    return SessionMessage(types.JSONRPCError(jsonrpc="2.0", id=rid, error=error))


def undecodable_reason(error: types.ErrorData) -> str | None:
    """What was wrong with an answer this transport could not decode (None: a real error of the upstream)."""
    data = error.data
    if isinstance(data, dict) and data.get(_UNDECODABLE_KEY) == _UNDECODABLE_NONCE:
        return error.message
    return None
