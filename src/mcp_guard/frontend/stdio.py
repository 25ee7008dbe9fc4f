"""An asyncio-native stdio transport for the client-facing server.

The SDK's ``stdio_server`` reads and writes through worker threads, which costs a thread hop (and
~0.5 ms of CPU) per message each way. Here stdin and stdout are registered with the event loop directly
(``connect_read_pipe``/``connect_write_pipe``) and there is no task or memory stream in between
either: the server's read loop parses the next newline-framed message in its own task
(:class:`_LineReadStream`), and a message sent is serialised and handed to the pipe in the sender's
task (:class:`_LineWriteStream`), which waits only when the pipe's buffer is over its high-water
mark. Anything but a pipe or a socket on stdin or stdout (a regular file, ``/dev/null``, a terminal) takes
worker threads instead (:func:`_threaded`): uvloop aborts the process on some of them. A line that does not
decode is answered by the transport itself (:mod:`mcp_guard.frontend.undecodable`).
"""

from __future__ import annotations

import asyncio
import os
import stat
import sys
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from typing import Any

import anyio
import mcp_types as types
import structlog
from mcp.shared.message import SessionMessage

from mcp_guard.frontend.undecodable import ID_SCAN_CHARS, answer_for, oversized_answer
from mcp_guard.streams import LineReadStream, LineWriteStream, encode_line

__all__ = ["MAX_LINE_BYTES", "stdio_transport"]

log = structlog.get_logger("mcp_guard.frontend")

MAX_LINE_BYTES = 64 * 1024 * 1024

_validate = types.jsonrpc_message_adapter.validate_json


class _LineReadStream(LineReadStream):
    """The SDK's ``ReadStream`` over an asyncio ``StreamReader``: one JSON-RPC message per line."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        max_line_bytes: int,
        answer: Callable[[types.JSONRPCError], None] = lambda _e: None,
    ) -> None:
        self._reader = reader
        self._max = max_line_bytes
        self._answer = answer  # writes the error for a line that does not decode (frontend/undecodable.py)
        self._closed = False
        self._eof = False

    async def receive(self) -> SessionMessage | Exception:
        while True:
            if self._closed:
                raise anyio.ClosedResourceError
            if self._eof:
                raise anyio.EndOfStream
            try:
                line = await self._reader.readuntil(b"\n")
            except asyncio.IncompleteReadError as e:
                self._eof = True
                line = e.partial
            except asyncio.LimitOverrunError:
                # Oversized message: drop it (bounded memory), answer it, keep serving.
                log.warning("stdio.message_too_large", limit=self._max)
                self._answer(oversized_answer(await _discard_line(self._reader), self._max))
                continue
            if not line.strip():
                continue
            try:
                return SessionMessage(_validate(line, by_name=False))
            except ValueError as exc:
                # Not JSON, nested too deep, not JSON-RPC: the SDK would drop it unanswered and its sender
                # would wait for ever; answer it here instead, and read on.
                log.warning("stdio.message_undecodable", bytes=len(line))
                self._answer(answer_for(line, exc))

    async def aclose(self) -> None:
        self._closed = True


class _LineWriteStream(LineWriteStream):
    """The SDK's ``WriteStream`` onto an asyncio pipe transport: serialise, write, wait only under
    back-pressure. ``write`` appends a whole line to the transport at once, so concurrent senders
    never interleave."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer
        self._transport = writer.transport
        self._closed = False

    async def send(self, item: SessionMessage) -> None:
        if self._closed:
            raise anyio.ClosedResourceError
        data = encode_line(item)
        if self._transport.is_closing():
            return  # the client is gone; what it would have got is dropped, as a closed pipe would
        self._writer.write(data)
        if self._transport.get_write_buffer_size():
            with suppress(ConnectionError):
                await self._writer.drain()

    def answer_now(self, message: types.JSONRPCError) -> None:
        """Write one message at once, outside the session (the answer to an undecodable line)."""
        if not self._closed and not self._transport.is_closing():
            self._writer.write(encode_line(SessionMessage(message)))

    async def aclose(self) -> None:
        self._closed = True


@asynccontextmanager
async def stdio_transport(max_line_bytes: int = MAX_LINE_BYTES) -> AsyncIterator[tuple[Any, Any]]:
    loop = asyncio.get_running_loop()
    stdin_fd, stdout_fd = sys.stdin.fileno(), sys.stdout.fileno()
    reader = asyncio.StreamReader(limit=max_line_bytes)
    if not (_pipe_or_socket(stdin_fd) and _pipe_or_socket(stdout_fd)):
        # A regular file, /dev/null or a terminal: the loop's pipe transports refuse some of these and uvloop
        # aborts the process on others (SIGABRT, nothing printed), so they are read and written in threads.
        async with _threaded(stdin_fd, stdout_fd, reader, max_line_bytes) as streams:
            yield streams
        return
    try:
        r_transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(os.dup(stdin_fd), "rb", buffering=0)
        )
        w_transport, w_protocol = await loop.connect_write_pipe(
            asyncio.streams.FlowControlMixin, os.fdopen(os.dup(stdout_fd), "wb", buffering=0)
        )
    except ValueError:
        # The loop refused the descriptors after all: read and write them in threads.
        async with _threaded(stdin_fd, stdout_fd, reader, max_line_bytes) as streams:
            yield streams
        return
    writer = asyncio.StreamWriter(w_transport, w_protocol, None, loop)
    write_stream = _LineWriteStream(writer)
    try:
        yield _LineReadStream(reader, max_line_bytes, write_stream.answer_now), write_stream
    finally:
        r_transport.close()
        with suppress(Exception):
            w_transport.close()


class _FdWriteStream(LineWriteStream):
    """Whole lines written to a descriptor the loop cannot watch (a file, ``/dev/null``, a terminal) from a
    worker thread; a lock keeps concurrent lines whole."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._lock = threading.Lock()
        self._closed = False

    async def send(self, item: SessionMessage) -> None:
        if self._closed:
            raise anyio.ClosedResourceError
        await anyio.to_thread.run_sync(self._write, encode_line(item))

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        with self._lock:
            while view:
                view = view[os.write(self._fd, view) :]

    def answer_now(self, message: types.JSONRPCError) -> None:
        if not self._closed:
            with suppress(OSError):
                self._write(encode_line(SessionMessage(message)))

    async def aclose(self) -> None:
        self._closed = True


@asynccontextmanager
async def _threaded(
    stdin_fd: int, stdout_fd: int, reader: asyncio.StreamReader, max_line_bytes: int
) -> AsyncIterator[tuple[Any, Any]]:
    """The same line streams over descriptors read and written in worker threads."""

    async def pump() -> None:
        while chunk := await anyio.to_thread.run_sync(os.read, stdin_fd, 1 << 16, abandon_on_cancel=True):
            reader.feed_data(chunk)
        reader.feed_eof()

    write_stream = _FdWriteStream(stdout_fd)
    async with anyio.create_task_group() as tg:
        tg.start_soon(pump)
        try:
            yield _LineReadStream(reader, max_line_bytes, write_stream.answer_now), write_stream
        finally:
            tg.cancel_scope.cancel()


def _pipe_or_socket(fd: int) -> bool:
    """Whether the event loop may watch ``fd`` as a pipe: a FIFO or a socket, nothing else."""
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)


async def _discard_line(reader: asyncio.StreamReader) -> bytes:
    """Skip the rest of an oversized line; its first :data:`ID_SCAN_CHARS` bytes (where its id is)."""
    head = b""
    while True:
        try:
            rest = await reader.readuntil(b"\n")
        except asyncio.LimitOverrunError as e:
            rest = await reader.readexactly(e.consumed)
        except asyncio.IncompleteReadError as e:
            return (head + e.partial)[:ID_SCAN_CHARS]
        else:
            return (head + rest)[:ID_SCAN_CHARS]
        if len(head) < ID_SCAN_CHARS:
            head += rest[: ID_SCAN_CHARS - len(head)]
