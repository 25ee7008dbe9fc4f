"""The stdio session loop alone, in-process: what a ``tools/call`` costs between the read stream and its handler and
between its result and the write stream.

    python bench/bench_stdio_plumbing.py --calls 2000 --blocks 12

A trivial low-level ``Server`` (one tool answering a fixed text: no upstream, no policy, no audit) served as
``Guard.serve_streams`` serves a stdio client (the SDK's lifespan and ``serve_dual_era_loop`` over
``DirectReads``/``DirectWrites``); one sequential client feeds it ``tools/call`` messages over memory streams and
waits for each answer. Blocks alternate in one session between the direct path (``frontend/stdio_direct.py``) and
the SDK's era loop (as ``bench/ablate.py sdk-stdio-dispatch`` switches it); reported: the process's CPU per call of
each path, median and spread over the blocks, and the median of the paired differences. The line reader and writer
are left out (the same on both paths); the whole proxy's figures come from bench_breakdown.py.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import anyio

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import mcp_types as types
from mcp.server.lowlevel import Server
from mcp.server.models import InitializationOptions
from mcp.server.runner import serve_dual_era_loop
from mcp.shared.message import SessionMessage

from mcp_guard.frontend.stdio_direct import DirectReads, DirectWrites, StdioDirect

_SCHEMA = {"type": "object", "properties": {"text": {"type": "string"}}}


class _Sessions:
    """The front's session table, as far as the direct path reads it."""

    def __init__(self) -> None:
        self.live: dict[str, Any] = {}


class _Known:
    def __init__(self, connection: Any) -> None:
        self.connection = connection


class _Switched(StdioDirect):
    on = True

    def take(self, item: SessionMessage | Exception) -> bool:
        return self.on and super().take(item)


def _server(sessions: _Sessions) -> Server[Any]:
    async def list_tools(ctx: Any, params: Any) -> types.ListToolsResult:
        sessions.live["s"] = _Known(ctx.session._connection)  # as SessionTable.for_request keeps it
        return types.ListToolsResult(tools=[types.Tool(name="echo", input_schema=_SCHEMA)])

    async def call_tool(ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
        return types.CallToolResult(content=[types.TextContent(type="text", text="ok")])

    server: Server[Any] = Server(
        "plumbing", on_list_tools=list_tools, on_call_tool=call_tool, get_tool_input_schema=lambda _name: _SCHEMA
    )
    server.middleware = []
    return server


def _message(rid: int | str, method: str, params: dict[str, Any] | None = None) -> SessionMessage:
    body: dict[str, Any] = {"jsonrpc": "2.0", "id": rid, "method": method}
    if params is not None:
        body["params"] = params
    return SessionMessage(types.jsonrpc_message_adapter.validate_python(body))


async def _run(calls: int, blocks: int) -> dict[str, list[float]]:
    sessions = _Sessions()
    server = _server(sessions)
    to_server, reads = anyio.create_memory_object_stream[SessionMessage | Exception](1)
    writes, from_server = anyio.create_memory_object_stream[SessionMessage](1)
    wrapped = DirectWrites(writes)
    cpu: dict[str, list[float]] = {"direct": [], "sdk": []}
    async with anyio.create_task_group() as tg, server.lifespan(server) as state:
        direct = _Switched(server, sessions, wrapped, state)
        wrapped.direct = direct
        options = InitializationOptions(
            server_name="plumbing", server_version="1", capabilities=types.ServerCapabilities()
        )
        tg.start_soon(
            lambda: serve_dual_era_loop(
                server, DirectReads(reads, direct), wrapped, lifespan_state=state, init_options=options
            )
        )
        init = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "b", "version": "1"}}
        await to_server.send(_message("i", "initialize", init))
        await from_server.receive()
        await to_server.send(
            SessionMessage(types.JSONRPCNotification(jsonrpc="2.0", method="notifications/initialized"))
        )
        await to_server.send(_message("l", "tools/list"))
        await from_server.receive()
        rid = 0
        for block in range(blocks * 2):
            path = ("direct", "sdk")[block % 2]
            direct.on = path == "direct"
            start = time.process_time()
            for _ in range(calls):
                rid += 1
                await to_server.send(_message(rid, "tools/call", {"name": "echo", "arguments": {"text": "x"}}))
                await from_server.receive()
            cpu[path].append((time.process_time() - start) / calls * 1e6)
        await to_server.aclose()
        tg.cancel_scope.cancel()
    return cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000, help="calls per block")
    parser.add_argument("--blocks", type=int, default=12, help="block pairs")
    args = parser.parse_args()
    cpu = anyio.run(_run, args.calls, args.blocks)
    for path, values in cpu.items():
        median, low, high = statistics.median(values), min(values), max(values)
        print(f"{path:7s} CPU/call median {median:6.1f} µs  (range {low:.1f}–{high:.1f})")
    diffs = [d - s for d, s in zip(cpu["direct"], cpu["sdk"], strict=True)]
    lower = sum(d < 0 for d in diffs)
    q = statistics.quantiles(diffs, n=4)
    spread = f"median {statistics.median(diffs):+.1f} µs [{q[0]:+.1f}, {q[2]:+.1f}]"
    print(f"direct − sdk per block pair: {spread}; lower in {lower}/{len(diffs)}")


if __name__ == "__main__":
    main()
