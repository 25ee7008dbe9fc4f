"""An asyncio-native stdio transport for upstream MCP servers.

Differs from the SDK's ``stdio_client`` where a proxy needs it to:

* the child gets a *minimal* environment (a few safe variables) plus what the config gives it —
  never the proxy's own environment, which may hold other upstreams' credentials;
* a line longer than ``max_line_bytes`` is discarded (bounded memory) and surfaced as an error;
* the child's stderr is forwarded to our structured log, line by line, through a scrubber;
* ``exited`` tells the owner when (and with what code) the child died, so in-flight calls can fail
  fast and the upstream can be restarted.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
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

__all__ = ["MINIMAL_ENV_VARS", "ChildExit", "minimal_environment", "open_stdio_transport"]

log = structlog.get_logger("mcp_guard.upstream")

# What a child may inherit from the proxy's environment without being told to.
MINIMAL_ENV_VARS = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "TZ", "SYSTEMROOT", "USER", "LOGNAME", "TERM")


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
) -> AsyncIterator[tuple[Any, Any, ChildExit, Process]]:
    """Start ``command`` and yield ``(read_stream, write_stream, exit_info, process)``.

    Raises OSError (e.g. FileNotFoundError) if the command cannot be started.
    """
    # "python"/"python3" mean mcp-guard's own interpreter (its venv has the SDK and the first-party
    # connectors); anything else is looked up on the child's PATH.
    exe = sys.executable if command in ("python", "python3") else (shutil.which(command, path=env.get("PATH"))
                                                                  or command)
    process = await anyio.open_process(
        [exe, *args], stdin=PIPE, stdout=PIPE, stderr=PIPE, env=dict(env), cwd=cwd, start_new_session=True
    )
    read_send, read_recv = anyio.create_memory_object_stream[SessionMessage | Exception](64)
    write_send, write_recv = anyio.create_memory_object_stream[SessionMessage](64)
    exit_info = ChildExit()

    async def reader() -> None:
        assert process.stdout is not None
        buf = bytearray()
        discarding = False
        try:
            async for chunk in process.stdout:
                start = 0
                while True:
                    nl = chunk.find(b"\n", start)
                    if nl < 0:
                        if not discarding:
                            buf += chunk[start:]
                            if len(buf) > max_line_bytes:
                                buf.clear()
                                discarding = True
                                await read_send.send(
                                    ValueError(f"{name}: message larger than {max_line_bytes} bytes discarded")
                                )
                        break
                    if discarding:
                        discarding = False
                    else:
                        buf += chunk[start:nl]
                        if len(buf) > max_line_bytes:
                            await read_send.send(
                                ValueError(f"{name}: message larger than {max_line_bytes} bytes discarded")
                            )
                        elif buf.strip():
                            await read_send.send(_parse(bytes(buf), name))
                    buf.clear()
                    start = nl + 1
        except (anyio.ClosedResourceError, anyio.BrokenResourceError, anyio.EndOfStream):
            pass
        finally:
            read_send.close()

    async def writer() -> None:
        assert process.stdin is not None
        try:
            async for msg in write_recv:
                data = msg.message.model_dump_json(by_alias=True, exclude_unset=True).encode() + b"\n"
                await process.stdin.send(data)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError, OSError):
            read_send.close()

    async def stderr_pump() -> None:
        assert process.stderr is not None
        buf = b""
        with suppress(anyio.ClosedResourceError, anyio.BrokenResourceError, anyio.EndOfStream):
            async for chunk in process.stderr:
                buf += chunk
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    if line.strip():
                        log.info("upstream.stderr", upstream=name, line=scrub(line.decode(errors="replace"))[:2000])
                if len(buf) > 65536:
                    buf = b""

    async def waiter() -> None:
        exit_info.returncode = await process.wait()
        exit_info.event.set()
        # stdout may stay open in a grandchild; the session must still see the end.
        read_send.close()

    async with anyio.create_task_group() as tg:
        tg.start_soon(reader)
        tg.start_soon(writer)
        tg.start_soon(stderr_pump)
        tg.start_soon(waiter)
        try:
            yield read_recv, write_send, exit_info, process
        finally:
            with anyio.CancelScope(shield=True):
                write_send.close()
                await _terminate(process, exit_info)
            tg.cancel_scope.cancel()


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
        log.warning("upstream.bad_message", upstream=name, error=str(exc)[:300])
        return exc
