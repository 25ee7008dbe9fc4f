"""An asyncio-native stdio transport for the client-facing server.

The SDK's ``stdio_server`` reads and writes through worker threads, which costs a thread hop (and
~1 ms) per message each way. Here stdin and stdout are registered with the event loop directly
(``connect_read_pipe``/``connect_write_pipe``), messages are framed by newlines and parsed in the
loop. Falls back to the SDK transport where the loop cannot watch the descriptors (e.g. a regular
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

__all__ = ["MAX_LINE_BYTES", "stdio_transport"]

log = structlog.get_logger("mcp_guard.frontend")

MAX_LINE_BYTES = 64 * 1024 * 1024


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

    read_send, read_recv = anyio.create_memory_object_stream[SessionMessage | Exception](64)
    write_send, write_recv = anyio.create_memory_object_stream[SessionMessage](64)

    async def read_loop() -> None:
        async with read_send:
            while True:
                try:
                    line = await reader.readuntil(b"\n")
                except asyncio.IncompleteReadError as e:
                    line = e.partial
                    if not line.strip():
                        return
                except asyncio.LimitOverrunError:
                    # Oversized message: drop it (bounded memory), tell the log, keep serving.
                    log.warning("stdio.message_too_large", limit=max_line_bytes)
                    await _discard_line(reader)
                    continue
                if not line.strip():
                    continue
                try:
                    msg = types.jsonrpc_message_adapter.validate_json(line, by_name=False)
                except ValueError as exc:
                    await read_send.send(exc)
                    continue
                await read_send.send(SessionMessage(msg))

    async def write_loop() -> None:
        async with write_recv:
            async for sm in write_recv:
                writer.write(sm.message.model_dump_json(by_alias=True, exclude_unset=True).encode() + b"\n")
                with suppress(ConnectionError):
                    await writer.drain()

    async with anyio.create_task_group() as tg:
        tg.start_soon(read_loop)
        tg.start_soon(write_loop)
        try:
            yield read_recv, write_send
        finally:
            tg.cancel_scope.cancel()
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
