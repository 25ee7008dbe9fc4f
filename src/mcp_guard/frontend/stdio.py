"""An asyncio-native stdio transport for the client-facing server.

The SDK's ``stdio_server`` reads and writes through worker threads, which costs a thread hop (and
~0.5 ms of CPU) per message each way. Here stdin and stdout are registered with the event loop directly
(``connect_read_pipe``/``connect_write_pipe``) and there is no task or memory stream in between
either: the server's read loop parses the next newline-framed message in its own task
(:class:`_LineReadStream`), and a message sent is serialised and handed to the pipe in the sender's
task (:class:`_LineWriteStream`), which waits only when the pipe's buffer is over its high-water
mark. Falls back to the SDK transport where the loop cannot watch the descriptors (e.g. a regular
file on stdin).
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Any

import anyio
import mcp_types as types
import structlog
from mcp.server.stdio import stdio_server
from mcp.shared.message import SessionMessage

from mcp_guard.streams import LineReadStream, LineWriteStream, encode_line

__all__ = ["MAX_LINE_BYTES", "stdio_transport"]

log = structlog.get_logger("mcp_guard.frontend")

MAX_LINE_BYTES = 64 * 1024 * 1024

_validate = types.jsonrpc_message_adapter.validate_json


class _LineReadStream(LineReadStream):
    """The SDK's ``ReadStream`` over an asyncio ``StreamReader``: one JSON-RPC message per line."""

    def __init__(self, reader: asyncio.StreamReader, max_line_bytes: int) -> None:
        self._reader = reader
        self._max = max_line_bytes
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
                # Oversized message: drop it (bounded memory), tell the log, keep serving.
                log.warning("stdio.message_too_large", limit=self._max)
                await _discard_line(self._reader)
                continue
            if not line.strip():
                continue
            try:
                return SessionMessage(_validate(line, by_name=False))
            except ValueError as exc:
                return exc

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

    async def aclose(self) -> None:
        self._closed = True


@asynccontextmanager
async def stdio_transport(max_line_bytes: int = MAX_LINE_BYTES) -> AsyncIterator[tuple[Any, Any]]:
    loop = asyncio.get_running_loop()
    stdin_fd, stdout_fd = sys.stdin.fileno(), sys.stdout.fileno()
    reader = asyncio.StreamReader(limit=max_line_bytes)
    try:
        r_transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(os.dup(stdin_fd), "rb", buffering=0)
        )
        w_transport, w_protocol = await loop.connect_write_pipe(
            asyncio.streams.FlowControlMixin, os.fdopen(os.dup(stdout_fd), "wb", buffering=0)
        )
    except ValueError:
        # Not a pipe, socket or character device: use the SDK's threaded transport.
        async with stdio_server() as streams:
            yield streams
        return
    writer = asyncio.StreamWriter(w_transport, w_protocol, None, loop)
    try:
        yield _LineReadStream(reader, max_line_bytes), _LineWriteStream(writer)
    finally:
        r_transport.close()
        with suppress(Exception):
            w_transport.close()


async def _discard_line(reader: asyncio.StreamReader) -> None:
    while True:
        try:
            await reader.readuntil(b"\n")
            return
        except asyncio.LimitOverrunError as e:
            await reader.readexactly(e.consumed)
        except asyncio.IncompleteReadError:
            return
